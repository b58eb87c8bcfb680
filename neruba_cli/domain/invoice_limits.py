"""What an invoice must fit before it is stored or posted, and why a customer cannot be billed.

The invoice columns are DECIMAL(38, 12) (26 integer digits; `money.MAX_AMOUNT`) and the
ledger keeps integer minor units in 64 bits (`ledger.MAX_MINOR`). A meter that reads a huge
value (one event with `"tokens": "1e39"`, stored before ingest checked property values) would
price a line no column can hold: PostgreSQL aborts the whole transaction on the overflow,
MariaDB refuses the row, SQLite stores text the ledger later cannot post. So the bounds are
checked here, on plain values, before anything is written: a run skips the one customer
(`Unbillable`) and bills the others.

- A meter's reading (its aggregated value, or a percentage model's per-event value) must have
  fewer than 26 integer digits: an invoice line's quantity is stored in such a column.
- Every line amount, the subtotal and the total must fit the ledger: at most 2^63 - 1 minor
  units, which is also well inside the invoice columns (USD: about 9.2e16).
- The revenue of each line kind of one invoice must fit too (the ledger posts it as one entry).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Context, Decimal
from typing import Any

from neruba_cli.domain.aggregation import NUMERIC_STRING
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.events import MAX_INTEGER_DIGITS
from neruba_cli.domain.ledger import MAX_MINOR
from neruba_cli.domain.money import MAX_AMOUNT, exponent

MAX_READING_DIGITS = MAX_INTEGER_DIGITS  # of DECIMAL(38, 12); the bound ingest checks too
_SHORT = Context(prec=7)


class Unbillable(InvalidInput):
    """An invoice that cannot be priced exactly or does not fit the store: the customer is
    skipped by a run (and reported), and is a clear error anywhere else. `meter` names the
    meter whose reading caused it, when one did."""

    kind = "unbillable"

    def __init__(self, message: str, *, meter: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.meter = meter


def reading_problem(value: Decimal) -> str | None:
    """Why one value a meter reads (an event's quantity or property, or their aggregate)
    cannot be billed (`more than 26 integer digits`), or None. Decided from the exponent
    alone, so `1e999999999` is cheap."""
    if not value.is_finite():
        return "not a finite number"
    if value.is_zero():
        return None
    if value.adjusted() >= MAX_READING_DIGITS:
        return f"more than the {MAX_READING_DIGITS} integer digits an invoice line holds"
    return None


def check_reading(
    meter: str, value: Decimal, transactions: Sequence[Decimal] | None = None
) -> None:
    """Refuse a meter's reading no invoice line can hold (before pricing it)."""
    for read in (value, *(transactions or ())):
        problem = reading_problem(read)
        if problem is not None:
            raise Unbillable(f"meter {meter!r} reads {short(read)}: {problem}", meter=meter)


def amount_problem(amount: Decimal, currency: str) -> str | None:
    """Why an amount does not fit the invoice columns or the ledger's 64-bit minor units."""
    if not amount.is_finite():
        return f"{amount} is not a finite amount"
    if amount.is_zero():
        return None
    # Past 19 digits of minor units nothing fits 2^63 - 1; at 19, decide exactly.
    too_large = amount.copy_abs() >= MAX_AMOUNT or (
        amount.adjusted() + exponent(currency) >= 18 and _minor(amount, currency) > MAX_MINOR
    )
    if too_large:
        return (
            f"{short(amount)} {currency} exceeds the ledger's 64-bit range "
            f"(at most {MAX_MINOR} minor units)"
        )
    return None


def check_document(content: Mapping[str, Any], currency: str) -> None:
    """Refuse an invoice document (lines and totals as decimal strings) that cannot be
    stored and posted; the error names the meter of the first line that does not fit."""
    revenue: dict[str, Decimal] = {}
    for line in content["lines"]:
        amount = Decimal(line["amount"])
        meter = line.get("meter")
        problem = amount_problem(amount, currency)
        if problem is None and line.get("quantity") is not None:
            quantity = Decimal(line["quantity"])
            problem = reading_problem(quantity)
            if problem is not None:
                problem = f"quantity {short(quantity)}: {problem}"
        if problem is not None:
            where = f"the {meter!r} line" if meter else f"the {line['kind']} line"
            raise Unbillable(f"{where}: {problem}", meter=meter)
        revenue[line["kind"]] = revenue.get(line["kind"], Decimal(0)) + amount
    for kind, amount in sorted(revenue.items()):
        problem = amount_problem(amount, currency)
        if problem is not None:
            raise Unbillable(f"the {kind} revenue: {problem}", meter=_only_meter(content))
    for name in ("subtotal", "total"):
        problem = amount_problem(Decimal(content[name]), currency)
        if problem is not None:
            raise Unbillable(f"the {name}: {problem}", meter=_only_meter(content))


def check_totals(amounts: Iterable[Decimal], currency: str, number: str) -> None:
    """Refuse to post an invoice (by its stored totals) that the ledger cannot hold."""
    for amount in amounts:
        problem = amount_problem(amount, currency)
        if problem is not None:
            raise Unbillable(f"invoice {number} cannot be posted: {problem}")


def _minor(amount: Decimal, currency: str) -> int:
    return abs(int(amount.scaleb(exponent(currency)).to_integral_value()))


def _only_meter(content: Mapping[str, Any]) -> str | None:
    """The largest usage line's meter: the likeliest cause of a total that does not fit."""
    usage = [line for line in content["lines"] if line.get("meter")]
    if not usage:
        return None
    return str(max(usage, key=lambda line: Decimal(line["amount"]).copy_abs())["meter"])


def short(value: Decimal) -> str:
    """A value as written, shortened past 32 characters: `1E+39` rather than forty digits."""
    text = str(value)
    return text if len(text) <= 32 else str(value.normalize(_SHORT))


def reading_of(raw: object) -> Decimal | None:
    """A property value as a meter reads it (a JSON number, or a string of digits), unrounded;
    None when the meter would skip it. The caller parses JSON numbers as Decimal."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, Decimal):
        return raw
    if isinstance(raw, int):
        return Decimal(raw)
    if isinstance(raw, str) and NUMERIC_STRING.fullmatch(raw):
        return Decimal(raw)
    return None
