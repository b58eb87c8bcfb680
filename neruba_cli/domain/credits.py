"""Which credits pay an invoice, and which come back when it is corrected.

Consumption order (DESIGN.md): priority 1 before 2, then the earliest expiry (a grant that
never expires last), then the oldest grant; a grant that has expired at the moment of use is
never consumed. Credit never pays more than the invoice total.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from neruba_cli.domain.ledger import Allocation, Category

MAX_PRIORITY = 1000


@dataclass(frozen=True)
class GrantState:
    id: str
    currency: str
    remaining: int  # minor units
    priority: int
    expires_at: datetime | None
    created_at: datetime
    category: Category = "promotional"
    revoked: bool = False

    def usable(self, at: datetime) -> bool:
        return (
            not self.revoked
            and self.remaining > 0
            and (self.expires_at is None or self.expires_at > at)
        )


def consumption_order(grants: Iterable[GrantState]) -> list[GrantState]:
    return sorted(
        grants,
        key=lambda g: (
            g.priority,
            g.expires_at is None,
            g.expires_at or g.created_at,
            g.created_at,
            g.id,
        ),
    )


def allocate(
    amount: int, grants: Iterable[GrantState], *, currency: str, at: datetime
) -> list[Allocation]:
    """Spend up to `amount` minor units from the usable grants of `currency`, in order."""
    left = max(amount, 0)
    allocations: list[Allocation] = []
    for grant in consumption_order(g for g in grants if g.currency == currency and g.usable(at)):
        if left == 0:
            break
        take = min(grant.remaining, left)
        allocations.append(Allocation(grant.id, take))
        left -= take
    return allocations


def returnable(applied: Sequence[Allocation], returned: Mapping[str, int]) -> list[Allocation]:
    """What an invoice consumed and has not been given back, most recently consumed first
    (`applied` in consumption order; `returned` per grant)."""
    already = dict(returned)
    left: list[Allocation] = []
    for allocation in applied:
        back = min(already.get(allocation.grant, 0), allocation.amount)
        already[allocation.grant] = already.get(allocation.grant, 0) - back
        if allocation.amount - back > 0:
            left.append(Allocation(allocation.grant, allocation.amount - back, allocation.lapse))
    return list(reversed(left))


def by_line(
    line_amounts: Sequence[int], allocations: Sequence[Allocation]
) -> list[list[Allocation]]:
    """Which credit paid which line, for explanations: credit covers the positive lines in
    invoice order, each grant in the order it was spent. (The ledger applies credit to the
    invoice as a whole; this only says where it landed.)"""
    grants = [a.grant for a in allocations if a.amount > 0]
    left = [a.amount for a in allocations if a.amount > 0]
    current = 0
    result: list[list[Allocation]] = []
    for amount in line_amounts:
        paid: list[Allocation] = []
        need = max(amount, 0)
        while need and current < len(left):
            take = min(need, left[current])
            paid.append(Allocation(grants[current], take))
            need -= take
            left[current] -= take
            if left[current] == 0:
                current += 1
        result.append(paid)
    return result
