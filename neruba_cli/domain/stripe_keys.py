"""Idempotency keys derived from Stripe work, written here and read here.

Two families, each with a format version:

- Request keys, sent to Stripe with every request a push makes. Stripe answers a repeated
  request under the same key from its store for 24 hours, so a push killed after Stripe acted
  but before Neruba recorded it does not act twice.
  - Push steps (format 2): `neruba:2:<project id>:<number>:v<invoice version>:g<generation>:<step>`.
    Format 1 (`neruba:<project id>:<number>:v<version>[:g<generation>]:<step>`) was sent
    before; a push never depended on it alone: each step looks at Stripe first (the invoice
    by its metadata, its items by line, a credit note by metadata, finalize and void by the
    invoice's status), so a push repeated across the change creates nothing twice.
  - Customers (format 1): `neruba:<project id>:customer:<customer id>`. Nothing finds a
    Stripe customer Neruba made but could not record, except this key: it stays as it is.
- Ledger keys of money Stripe reports (format 1), stored with the payment or refund:
  `stripe:<Stripe invoice>:paid:<amount paid so far>` and
  `stripe:<charge>:refunded:<amount refunded so far>:<payment id>` (ISO minor units). What was
  recorded so far is summed over the stored keys that start with the object's prefix, so
  these stay as they are; a new format would have to be summed with them.

A format change gets a new number here and leaves every earlier one parsing.
"""

from __future__ import annotations

from dataclasses import dataclass

STEP_KEY_FORMAT = 2
CUSTOMER_KEY_FORMAT = 1
LEDGER_KEY_FORMAT = 1

_REQUEST = "neruba"
_STRIPE = "stripe"
_SEP = ":"
_PROJECT_ID = "proj_"


@dataclass(frozen=True)
class StepKey:
    """One request of one push step for one invoice."""

    project_id: str
    number: str
    version: int  # the invoice version pushed
    generation: int  # grows when the Stripe object is made anew
    step: str  # invoice | item:<line> | finalize | void | credit_note
    format: int = STEP_KEY_FORMAT


@dataclass(frozen=True)
class CustomerKey:
    project_id: str
    customer_id: str
    format: int = CUSTOMER_KEY_FORMAT


@dataclass(frozen=True)
class PaidKey:
    stripe_invoice: str
    paid: int  # what Stripe reported paid so far, ISO minor units
    format: int = LEDGER_KEY_FORMAT


@dataclass(frozen=True)
class RefundedKey:
    charge: str
    refunded: int  # what Stripe reported refunded so far, ISO minor units
    payment_id: str  # the Neruba payment the refund is booked against
    format: int = LEDGER_KEY_FORMAT


StripeKey = StepKey | CustomerKey | PaidKey | RefundedKey


def step_key(project_id: str, number: str, *, version: int, generation: int, step: str) -> str:
    """The request key of one push step, the same for a repeated push of one generation."""
    _plain(project_id, number)
    if not step or version < 0 or generation < 0:
        raise ValueError(f"step {step!r} v{version} g{generation} cannot name a push request")
    return _SEP.join(
        (_REQUEST, str(STEP_KEY_FORMAT), project_id, number, f"v{version}", f"g{generation}", step)
    )


def customer_key(project_id: str, customer_id: str) -> str:
    """The request key that creates a customer's Stripe customer (format 1)."""
    _plain(project_id, customer_id)
    return _SEP.join((_REQUEST, project_id, "customer", customer_id))


def paid_prefix(stripe_invoice: str) -> str:
    """What the ledger keys of one Stripe invoice's payments start with."""
    _plain(stripe_invoice)
    return _SEP.join((_STRIPE, stripe_invoice, "paid", ""))


def paid_key(stripe_invoice: str, paid: int) -> str:
    """The payment recorded when Stripe reports `paid` collected on the invoice so far."""
    if paid < 0:
        raise ValueError(f"paid {paid} is negative")
    return f"{paid_prefix(stripe_invoice)}{paid}"


def refunded_prefix(charge: str) -> str:
    """What the ledger keys of one Stripe charge's refunds start with."""
    _plain(charge)
    return _SEP.join((_STRIPE, charge, "refunded", ""))


def refunded_key(charge: str, refunded: int, payment_id: str) -> str:
    """The refund booked against `payment_id` when Stripe reports `refunded` so far."""
    _plain(payment_id)
    if refunded < 0:
        raise ValueError(f"refunded {refunded} is negative")
    return f"{refunded_prefix(charge)}{refunded}{_SEP}{payment_id}"


def parse(key: str) -> StripeKey:
    """The parts of a key built here, by any format still in use; ValueError otherwise."""
    parts = key.split(_SEP)
    try:
        if parts[0] == _REQUEST:
            return _parse_request(parts)
        if parts[0] == _STRIPE:
            return _parse_ledger(parts)
    except (IndexError, ValueError):
        pass
    raise ValueError(f"{key!r} is not a Neruba idempotency key for Stripe")


def _parse_request(parts: list[str]) -> StepKey | CustomerKey:
    if parts[1] == str(STEP_KEY_FORMAT):
        project_id, number, version, generation = parts[2:6]
        step = _SEP.join(parts[6:])
        if not (step and version[:1] == "v" and generation[:1] == "g"):
            raise ValueError("not a step key")
        return StepKey(project_id, number, _count(version[1:]), _count(generation[1:]), step)
    if not parts[1].startswith(_PROJECT_ID):
        raise ValueError("unknown request key format")
    if parts[2] == "customer" and len(parts) == 4 and parts[3]:
        return CustomerKey(parts[1], parts[3])
    return _parse_step_format_1(parts)


def _parse_step_format_1(parts: list[str]) -> StepKey:
    """`neruba:<project id>:<number>:v<version>[:g<generation>]:<step>`, sent until format 2."""
    project_id, number, version = parts[1:4]
    rest = parts[4:]
    generation = 0
    if rest[:1] and rest[0][:1] == "g" and rest[0][1:].isdigit() and len(rest) > 1:
        generation, rest = _count(rest[0][1:]), rest[1:]
    step = _SEP.join(rest)
    if not (step and version[:1] == "v"):
        raise ValueError("not a step key")
    return StepKey(project_id, number, _count(version[1:]), generation, step, format=1)


def _parse_ledger(parts: list[str]) -> PaidKey | RefundedKey:
    if len(parts) == 4 and parts[2] == "paid" and parts[1]:
        return PaidKey(parts[1], _count(parts[3]))
    if len(parts) == 5 and parts[2] == "refunded" and parts[1] and parts[4]:
        return RefundedKey(parts[1], _count(parts[3]), parts[4])
    raise ValueError("not a ledger key")


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or (len(text) > 1 and text[0] == "0"):
        raise ValueError(f"{text!r} is not a count")
    return int(text)


def _plain(*values: str) -> None:
    for value in values:
        if not value or _SEP in value:
            raise ValueError(f"{value!r} cannot be part of an idempotency key")
