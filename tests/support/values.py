"""Small conversions the tests write by hand rather than borrow from the code under test."""

from __future__ import annotations

from decimal import Decimal

CENTS = Decimal(100)


def minor(amount: str) -> int:
    """A two-decimal amount in minor units ("12.34" → 1234), as Stripe counts it."""
    return int(Decimal(amount) * CENTS)


def cents(text: str) -> int:
    """An amount in cents that must be exact ("1.25" → 125; "1.255" fails)."""
    value = Decimal(text) * CENTS
    assert value == int(value), text
    return int(value)


def after(month: str) -> str:
    """The second day of the month after `month` ("2026-10" → "2026-11-02T00:00:00Z")."""
    year, number = int(month[:4]), int(month[5:])
    year, number = (year + 1, 1) if number == 12 else (year, number + 1)
    return f"{year}-{number:02d}-02T00:00:00Z"
