"""How a Neruba invoice is written in Stripe: metadata, invoice items and idempotency keys
(whose format lives in domain/stripe_keys.py).

Pure functions over the invoice document, so a dry run, the push itself and reconciliation
agree on what Stripe should hold. Each line becomes one invoice item; credits applied become one
negative item, so Stripe's total is the total Neruba bills (negative when credits for a plan
change or a cancellation exceed what the period owes: Stripe then credits the customer's
balance, which `balance_offset` takes back, as the credit lives in Neruba's wallet). Each item
is converted to Stripe's units on its own (that is what Stripe receives), which is where a
three-decimal currency can lose its last digit: `expected_total` is the sum Stripe will show,
and reconciliation reports any difference to Neruba's total instead of hiding it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from neruba_cli.domain import stripe_keys
from neruba_cli.domain.money import RoundingMode
from neruba_cli.domain.stripe_money import iso_minor_to_stripe, to_stripe

CREDITS_LINE = "credits"


@dataclass(frozen=True)
class PushedInvoice:
    """What the push needs of one Neruba invoice or credit note."""

    project: str  # slug
    project_id: str
    number: str
    kind: str  # invoice | supplemental | credit_note
    period: str
    version: int
    generation: int
    customer: str  # external id
    currency: str
    lines: tuple[tuple[str, Decimal], ...]  # (description, amount) in major units
    credits_applied: Decimal
    total: Decimal
    rounding: RoundingMode
    corrects: str | None = None


@dataclass(frozen=True)
class StripeItem:
    line: str  # "0", "1", ... or CREDITS_LINE: metadata.neruba_line, to find it again
    amount: int  # in Stripe's units
    description: str


def idempotency_key(invoice: PushedInvoice, step: str) -> str:
    """Derived from the invoice number and version and the generation of its Stripe object
    (domain/stripe_keys.py), so a repeated push sends the same key for the same request."""
    return stripe_keys.step_key(
        invoice.project_id,
        invoice.number,
        version=invoice.version,
        generation=invoice.generation,
        step=step,
    )


def metadata(invoice: PushedInvoice) -> dict[str, str]:
    data = {
        "neruba_invoice": invoice.number,
        "neruba_project": invoice.project,
        "neruba_period": invoice.period,
        "neruba_customer": invoice.customer,
        "neruba_version": str(invoice.version),
        "neruba_generation": str(invoice.generation),
    }
    if invoice.corrects is not None:
        data["neruba_corrects"] = invoice.corrects
    return data


def items(invoice: PushedInvoice) -> list[StripeItem]:
    """One item per line, then the credits applied as one negative item."""
    result = [
        StripeItem(str(index), _stripe(amount, invoice), description or f"line {index + 1}")
        for index, (description, amount) in enumerate(invoice.lines)
    ]
    if invoice.credits_applied:
        result.append(
            StripeItem(CREDITS_LINE, -_stripe(invoice.credits_applied, invoice), "Credits applied")
        )
    return result


def expected_total(invoice: PushedInvoice) -> int:
    """The total Stripe computes from the items pushed (Stripe's units)."""
    return sum(item.amount for item in items(invoice))


def balance_offset(invoice: PushedInvoice) -> int:
    """The debit (Stripe's units) that takes back the credit Stripe puts in the customer's
    balance when it finalizes an invoice with a negative total: Neruba settles that credit into
    its own wallet and spends it on the customer's next invoice (as a credits line), so Stripe
    must not apply it to that invoice a second time. 0 when the total is not negative."""
    if invoice.kind == "credit_note":
        return 0
    return max(0, -expected_total(invoice))


def balance_metadata(invoice: PushedInvoice) -> dict[str, str]:
    """The balance transaction's metadata: the invoice's own, to find it again."""
    return {**metadata(invoice), "neruba_step": "balance_offset"}


def credit_note_lines(invoice: PushedInvoice, amount: int) -> list[dict[str, Any]]:
    """The Stripe credit note's lines (Stripe takes positive amounts that credit): the note's
    own lines when they add up to `amount` and all credit, else one line with `amount` (credit
    Neruba restored to grants stays out of Stripe, and Stripe cannot take a line that
    charges)."""
    pushed = [item for item in items(invoice) if item.amount]
    if any(item.amount > 0 for item in pushed) or -sum(i.amount for i in pushed) != amount:
        what = f"Correction of {invoice.corrects or invoice.number}"
        pushed = [StripeItem("net", -amount, what)]
    return [
        {
            "type": "custom_line_item",
            "description": item.description,
            "quantity": 1,
            "unit_amount": -item.amount,
        }
        for item in pushed
    ]


@dataclass(frozen=True)
class CreditNoteSplit:
    """A Stripe credit note's amount in Stripe's units, from how Neruba settled the note:
    `pre_payment` is what it took off the corrected invoice's amount due (Stripe lowers the
    open invoice by as much), `out_of_band` what it put in the customer's wallet (Neruba
    carries that credit and spends it on a later invoice, so Stripe must not credit the
    customer's balance too). Credit restored to grants is Neruba's own and stays out."""

    amount: int
    pre_payment: int
    out_of_band: int


def credit_note_split(invoice: PushedInvoice, to_invoice: int, to_wallet: int) -> CreditNoteSplit:
    """`to_invoice`, `to_wallet`: the settlement's ISO minor units. Depends only on the note,
    so a repeated request carries the same parameters under the same idempotency key."""
    pre = iso_minor_to_stripe(to_invoice, invoice.currency, invoice.rounding)
    out = iso_minor_to_stripe(to_wallet, invoice.currency, invoice.rounding)
    return CreditNoteSplit(pre + out, pre, out)


def missing_items(invoice: PushedInvoice, present: Sequence[Mapping[str, Any]]) -> list[StripeItem]:
    """The items not yet attached to the Stripe invoice (after an interrupted push), found by
    `metadata.neruba_line`."""
    done = {str((item.get("metadata") or {}).get("neruba_line")) for item in present}
    return [item for item in items(invoice) if item.line not in done]


def _stripe(amount: Decimal, invoice: PushedInvoice) -> int:
    return to_stripe(amount, invoice.currency, invoice.rounding)
