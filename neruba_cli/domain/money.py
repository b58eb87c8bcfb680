"""Money rules: ISO 4217 minor units, exact parsing, one rounding per line.

Amounts are `Decimal` in the domain and integer minor units in the ledger. Floats are refused
wherever money is read, because a float literal such as 0.1 is already not the amount the
operator wrote.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Literal

from iso4217 import Currency

from neruba_cli.domain.errors import InvalidInput

RoundingMode = Literal["half_even", "half_up"]
ROUNDING_MODES: tuple[RoundingMode, ...] = ("half_even", "half_up")

# Decimal's ROUND_HALF_UP rounds half away from zero, which is what billers call "half up".
_DECIMAL_ROUNDING: dict[str, str] = {"half_even": ROUND_HALF_EVEN, "half_up": ROUND_HALF_UP}

# ISO 4217 minor units from the `iso4217` package, which ships ISO's own published table.
# (CLDR, and so babel, gives some currencies other digits: IQD 0 instead of 3, for example.)
# Funds, metals and testing codes have no minor unit and are not money we bill in.
CURRENCY_EXPONENTS: dict[str, int] = {
    currency.code: currency.exponent for currency in Currency if currency.exponent is not None
}

# Unit prices keep up to 12 decimal places (DESIGN.md); anything finer is a typo, not a price.
MAX_PRICE_PLACES = 12
MAX_AMOUNT = Decimal(10) ** 26  # DECIMAL(38, 12) keeps 26 integer digits


def normalize_currency(code: str) -> str:
    """Return the upper-case ISO 4217 code, or raise with the offending value."""
    upper = code.strip().upper()
    if upper not in CURRENCY_EXPONENTS:
        raise InvalidInput(
            f"unknown currency {code!r}", hint="use an ISO 4217 code such as USD, EUR or JPY"
        )
    return upper


def exponent(currency: str) -> int:
    """Digits after the decimal point in the currency's minor unit (JPY 0, USD 2, KWD 3)."""
    return CURRENCY_EXPONENTS[normalize_currency(currency)]


def parse_amount(value: object, *, field: str = "amount") -> Decimal:
    """Read money exactly from a string, an int or a Decimal; refuse floats and non-numbers."""
    if isinstance(value, bool):
        raise InvalidInput(f"{field}: expected an amount, got a boolean")
    if isinstance(value, float):
        raise InvalidInput(
            f'{field}: write money as a string, e.g. "{_float_hint(value)}"',
            hint="floats cannot hold most decimal amounts exactly",
        )
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, str):
        try:
            amount = decimal_from_text(value)
        except InvalidOperation:
            raise InvalidInput(f"{field}: {value!r} is not a decimal number") from None
    else:
        raise InvalidInput(f"{field}: expected an amount, got {type(value).__name__}")
    if not amount.is_finite():
        raise InvalidInput(f"{field}: {value!r} is not a finite amount")
    if amount.copy_abs() >= MAX_AMOUNT:  # exact: abs() would overflow on "1e999999999"
        raise InvalidInput(f"{field}: {value!r} is larger than any amount Neruba stores")
    exp = amount.as_tuple().exponent
    if isinstance(exp, int) and -exp > MAX_PRICE_PLACES:
        raise InvalidInput(f"{field}: {value!r} has more than {MAX_PRICE_PLACES} decimal places")
    return amount


def _float_hint(value: float) -> str:
    return repr(value) if abs(value) < 1e15 else "0.00"


def quantum(currency: str) -> Decimal:
    """The value of one minor unit as a Decimal exponent template (USD -> 0.01)."""
    return Decimal(1).scaleb(-exponent(currency))


# Wide enough for any amount the store holds (DECIMAL(38, 12)) and then some, so quantizing
# never fails for lack of digits the way the default 28-digit context would.
_WIDE = Context(prec=80)


def round_to_minor(amount: Decimal, currency: str, rounding: RoundingMode = "half_even") -> Decimal:
    """Round once to the currency's minor unit; called per invoice line, never on partials."""
    return amount.quantize(quantum(currency), rounding=_DECIMAL_ROUNDING[rounding], context=_WIDE)


def to_minor_units(amount: Decimal, currency: str) -> int:
    """Convert an already-rounded amount to integer minor units for the ledger.

    Refuses an amount that is not a whole number of minor units: silently rounding here would
    hide a missing rounding step upstream.
    """
    scaled = amount.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise InvalidInput(f"{amount} {currency} is not a whole number of minor units")
    return int(scaled)


def from_minor_units(units: int, currency: str) -> Decimal:
    """The major-unit Decimal of an integer minor-unit amount, at the currency's precision."""
    return Decimal(units).scaleb(-exponent(currency)).quantize(quantum(currency), context=_WIDE)


def format_minor(units: int, currency: str) -> str:
    """`format_amount` of a ledger amount in minor units (USD 4900 -> "49.00")."""
    return format_amount(from_minor_units(units, currency), currency)


def format_amount(amount: Decimal, currency: str) -> str:
    """The decimal string used in every JSON output: major units at the currency's precision."""
    return str(amount.quantize(quantum(currency), context=_WIDE))


def decimal_from_text(text: str) -> Decimal:
    """A decimal written in ASCII: `Decimal(text)` for `12.5`, `-3`, `1e3` (spaces around
    allowed), but `InvalidOperation` for what Python's Decimal also reads and no other system
    does — `1_000`, full-width `１２`, Arabic-Indic `١٢` — so a value never means one thing here
    and another in the database or a spreadsheet."""
    stripped = text.strip()
    if "_" in stripped or not stripped.isascii():
        raise InvalidOperation(text)
    return Decimal(stripped)


def canonical(value: Decimal) -> Decimal:
    """`Decimal("1.500")` → `Decimal("1.5")`, `Decimal("1E+2")` → `Decimal("100")`, exactly.

    (Decimal.normalize() would round to the context's 28 digits; this never rounds.)
    """
    return Decimal(decimal_text(value))


def decimal_text(value: Decimal) -> str:
    """The plain spelling used in documents and JSON: `1.5`, `1000`, `0.0000125`.

    Formatting with "f" writes every digit the value has (it never rounds); trailing zeros
    after the point are then dropped. This runs once per ingested event, so it stays cheap.
    """
    if not value.is_finite():
        raise ValueError(f"{value} is not a finite number")
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        return "0"
    return text
