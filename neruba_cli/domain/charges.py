"""One-off charges: an amount for a customer, once per idempotency key, billed on the next
invoice of their period. They arrive like events (`charge add`, or `"type": "charge"` lines)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any

import orjson

from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.events import MAX_KEY, Rejected, identifier, parse_timestamp
from neruba_cli.domain.money import decimal_text, exponent, parse_amount

FIELDS = frozenset({"type", "idempotency_key", "customer", "amount", "description", "timestamp"})
MAX_DESCRIPTION = 500


@dataclass(frozen=True, slots=True)
class ChargeInput:
    idempotency_key: str
    customer: str
    amount: Decimal
    description: str
    timestamp: datetime  # aware UTC

    def payload_hash(self) -> str:
        stamp = self.timestamp.isoformat(timespec="microseconds")
        body = [self.customer, decimal_text(self.amount), self.description, stamp]
        return hashlib.sha256(orjson.dumps(body)).hexdigest()


def validate_charge(
    raw: Any, *, now: datetime, max_future: timedelta, assume_tz: tzinfo | None = None
) -> ChargeInput:
    if not isinstance(raw, dict):
        raise Rejected("expected a JSON object")
    for name in raw:
        if name not in FIELDS:
            raise Rejected(f"unknown field {name!r} for a charge")
    key = identifier(_text(raw, "idempotency_key"), "idempotency_key")
    if len(key) > MAX_KEY:
        raise Rejected(f"idempotency_key is longer than {MAX_KEY} characters")
    description = _text(raw, "description")
    if len(description) > MAX_DESCRIPTION:
        raise Rejected(f"description is longer than {MAX_DESCRIPTION} characters")
    try:
        amount = parse_amount(raw.get("amount"), field="amount")
    except InvalidInput as exc:
        raise Rejected(exc.message) from None
    if amount <= 0:
        raise Rejected("amount must be greater than 0 (grant credits to give money back)")
    stamp = raw.get("timestamp")
    timestamp = now if stamp is None else parse_timestamp(stamp, assume_tz)
    if timestamp - now > max_future:
        raise Rejected("timestamp is in the future beyond the allowed skew")
    customer = identifier(_text(raw, "customer"), "customer")
    return ChargeInput(key, customer, amount, description, timestamp)


def check_currency(charge: ChargeInput, currency: str) -> None:
    """The customer's currency decides how many decimal places an amount may have."""
    places = exponent(currency)
    value_exponent = charge.amount.normalize().as_tuple().exponent
    assert isinstance(value_exponent, int)
    if -value_exponent > places:
        raise Rejected(
            f"amount {charge.amount} has more decimal places than {currency} allows ({places})"
        )


def _text(raw: dict[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value.strip():
        raise Rejected(
            f"{name} is required" if value is None else f"{name} must be a non-empty string"
        )
    if "\x00" in value:  # PostgreSQL cannot store it in text: refused on every database
        raise Rejected(f"{name} contains a NUL character (\\u0000)")
    return value.strip()
