"""The late-event policy: what a billing rerun does with usage that arrives after the invoice
of its period was finalized (DESIGN.md promise 3: a finalized invoice never changes).

A project chooses one policy (`project update --late-events`):

- `correct` (the default): a linked correction — a credit note or a supplemental invoice
  carrying the difference — written by the rerun of the late events' own month;
- `next_invoice`: the difference goes on the customer's next invoice, as lines marked
  `late_from`, written by the run of the following month;
- `ignore`: the events are booked (the invoice's event count moves) but never billed.

The policies are about late *events*. Whatever the policy, a draft is simply recomputed (it is
not final yet), and a change of terms — a one-off charge added, a backdated plan change or
cancellation — is always corrected: only usage can be waved through or carried. Under
`next_invoice`, late usage that no open invoice can take any more (the customer's next
invoice is final too, or there is none) is corrected instead.

`treatment` is the one decision; the billing run, its writer, `invoice verify` and
`neruba check` ask it rather than compare policy names themselves.
"""

from __future__ import annotations

from enum import StrEnum

from neruba_cli.domain.errors import InvalidInput

CORRECT = "correct"
NEXT_INVOICE = "next_invoice"
IGNORE = "ignore"
POLICIES = (CORRECT, NEXT_INVOICE, IGNORE)
DEFAULT = CORRECT


class Treatment(StrEnum):
    """What becomes of a period's late events."""

    RECOMPUTE = "recompute"  # the invoice is a draft: the rerun prices them into it
    CORRECT = "correct"  # a linked correction of the final invoice
    CARRY = "carry"  # the customer's next invoice takes them (the next month's run)
    IGNORE = "ignore"  # booked on the final invoice, never billed


def parse_policy(text: str) -> str:
    """A policy name as given to `project update --late-events`."""
    if text not in POLICIES:
        raise InvalidInput(
            f"late events: {text!r} is not a late-event policy",
            hint="use correct (a linked correction), next_invoice or ignore",
        )
    return text


def treatment(
    policy: str, *, final: bool, terms_changed: bool = False, can_carry: bool = True
) -> Treatment:
    """What to do with an invoice's late events.

    `final`: the period's invoice is finalized (or paid); `terms_changed`: what changed since
    it was computed is more than usage (its setup fingerprint differs); `can_carry`: under
    `next_invoice`, an open invoice of the customer's next period can still take them. A
    policy name this version does not know is treated as `correct`, the one that never loses
    money and never changes a final invoice."""
    if not final:
        return Treatment.RECOMPUTE
    if terms_changed:
        return Treatment.CORRECT
    if policy == IGNORE:
        return Treatment.IGNORE
    if policy == NEXT_INVOICE and can_carry:
        return Treatment.CARRY
    return Treatment.CORRECT


def carries_forward(policy: str) -> bool:
    """Under this policy, does the run of a month look for late usage of the month before to
    carry onto its invoices?"""
    return treatment(policy, final=True) is Treatment.CARRY


def stale_entry(number: str, period: str) -> dict[str, str]:
    """How a finalized invoice made stale by new or corrected events is reported (ingest,
    corrections, the HTTP API): its number, its period, and the run that applies the policy."""
    return {"number": number, "period": period, "rerun": f"neruba run bill --period {period}"}
