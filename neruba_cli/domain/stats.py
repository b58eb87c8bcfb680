"""Small statistics over money, exactly: nearest-rank percentiles and percentages of Decimals.

Nearest rank, the textbook definition (no interpolation, so the answer is always one of the
values and always a real amount someone was billed): sort the n values ascending; the P-th
percentile (0 < P <= 100) is the value at rank ⌈P × n / 100⌉ (1-based). P = 0 gives the
smallest value. With n = 20, p50 is the 10th value and p95 the 19th.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal

HUNDRED = Decimal(100)
PERCENT_PLACES = Decimal("0.01")


def nearest_rank(values: Sequence[Decimal], percent: int) -> Decimal | None:
    """The `percent`-th percentile of `values` by nearest rank; None when there are none."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percentile {percent} is not between 0 and 100")
    if not values:
        return None
    ordered = sorted(values)
    rank = -(-(percent * len(ordered)) // 100)  # ceil, in integers
    return ordered[max(rank, 1) - 1]


def percent_of(part: Decimal, whole: Decimal) -> Decimal | None:
    """`part` as a percentage of |`whole`| (exact); None when `whole` is zero."""
    if whole == 0:
        return None
    return part * HUNDRED / abs(whole)


def percent_text(value: Decimal | None) -> str | None:
    """A percentage as shown: two decimals, half-even ("12.35")."""
    if value is None:
        return None
    return str(value.quantize(PERCENT_PLACES, rounding=ROUND_HALF_EVEN))
