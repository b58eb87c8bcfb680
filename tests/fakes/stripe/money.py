"""Amounts in minor units: which currencies have 0 or 3 decimals, and how Stripe shows them."""

from __future__ import annotations

from tests.fakes.stripe.errors import FakeStripeError

ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())
SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}


def check_amount(amount: int, currency: str, param: str) -> None:
    """Stripe takes three-decimal currencies in thousandths but only whole hundredths."""
    if currency in THREE_DECIMAL and amount % 10 != 0:
        raise FakeStripeError(
            400,
            f"Invalid {param}: {currency} is a three-decimal currency and Stripe only accepts "
            f"amounts in it that are divisible by 10 (the last digit must be 0); got {amount}.",
            code="amount_invalid",
            param=param,
        )


def format_money(amount: int, currency: str) -> str:
    digits = 0 if currency in ZERO_DECIMAL else 3 if currency in THREE_DECIMAL else 2
    value = f"{amount / 10**digits:.{digits}f}"
    symbol = SYMBOLS.get(currency)
    return f"{symbol}{value}" if symbol else f"{value} {currency.upper()}"
