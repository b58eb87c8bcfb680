"""Amounts to and from the integers Stripe accepts, which are not always ISO 4217 minor units.

Neruba's ledger counts ISO minor units; Stripe's `amount` fields count "the currency's smallest
unit" by Stripe's own table (https://docs.stripe.com/currencies), and the two disagree:

* zero-decimal currencies (JPY, KRW, CLP, XOF, ... and MGA, which ISO gives two digits) take
  whole units;
* three-decimal currencies (BHD, JOD, KWD, OMR, TND) take thousandths, but Stripe's payment
  partners need the last digit to be 0, so an integration must round to the nearest ten
  (KWD 5.124 goes out as 5120 or 5130);
* ISK and UGX "transitioned to a zero-decimal currency, but backwards compatibility requires"
  a two-decimal value whose decimals are always 00 (5 ISK is 500), so the integer must be a
  multiple of 100 even though ISO gives them no minor unit at all. UGX is also in Stripe's
  zero-decimal list; the special case is the more specific statement and is about charges, and
  reading the list instead would bill every UGX line at a hundredth of its amount;
* HUF and TWD are two-decimal for charges and invoices. Stripe requires multiples of 100 only
  for *payouts* in them, which Neruba never creates, so that rule is deliberately not applied;
* every other currency is two-decimal ("unless otherwise specified"), including the few ISO
  currencies Stripe does not list (IQD, LYD, CLF, UYW, UYI). Stripe refuses those at the API,
  so the conversion never reaches money; it is defined only so that no code path has to guess.

Why the rounding happens per line: each invoice line is sent to Stripe as its own invoice item,
each with its own integer amount, and Stripe adds those integers. Rounding once on the invoice
total would produce a figure Stripe never shows the customer, so a three-decimal or ISK/UGX
invoice is converted line by line, and `stripe_difference` reports what each line gained or
lost so a reconcile report can show it instead of hiding it in the total.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal

from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.money import ROUNDING_MODES, RoundingMode, exponent, normalize_currency

# Stripe's zero-decimal list, less UGX, whose special case overrides the list (see above).
STRIPE_ZERO_DECIMAL: frozenset[str] = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF VND VUV XAF XOF XPF".split()
)
STRIPE_THREE_DECIMAL: frozenset[str] = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
# Whole units written with two decimals that must be 00.
STRIPE_WHOLE_UNITS_AS_CENTS: frozenset[str] = frozenset({"ISK", "UGX"})

# Same meaning as in money.py: half_up rounds half away from zero, so signs are symmetric.
_ROUNDING: dict[str, str] = {"half_even": ROUND_HALF_EVEN, "half_up": ROUND_HALF_UP}
# Wide enough that dividing or scaling any stored amount never rounds behind our back.
_WIDE = Context(prec=80)


@dataclass(frozen=True)
class StripeUnit:
    """How Stripe writes one currency: `exponent` decimals, and only multiples of `step`."""

    currency: str
    exponent: int
    step: int

    @property
    def increment(self) -> Decimal:
        """The smallest major-unit amount Stripe can carry (KWD 0.010, ISK 1.00, JPY 1)."""
        return Decimal(self.step).scaleb(-self.exponent).quantize(_places(self.exponent))


def stripe_unit(currency: str) -> StripeUnit:
    """Stripe's exponent and divisibility step for a currency code in any case."""
    code = normalize_currency(currency)
    if code in STRIPE_ZERO_DECIMAL:
        return StripeUnit(code, 0, 1)
    if code in STRIPE_THREE_DECIMAL:
        return StripeUnit(code, 3, 10)
    if code in STRIPE_WHOLE_UNITS_AS_CENTS:
        return StripeUnit(code, 2, 100)
    return StripeUnit(code, 2, 1)


def to_stripe(amount: Decimal, currency: str, rounding: RoundingMode = "half_even") -> int:
    """The integer Stripe accepts for one line's major-unit amount, rounded to Stripe's step.

    Rounding here is expected, not an error: ISO lets KWD end in any digit and ISK carries no
    decimals, yet Stripe wants KWD in tens of fils and ISK in hundreds. Callers that must not
    lose money compare with `stripe_difference` rather than forbid the rounding.
    """
    unit = stripe_unit(currency)
    mode = _rounding(rounding)
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise InvalidInput(f"{amount!r} {unit.currency} is not a finite Decimal amount")
    steps = _WIDE.divide(amount.scaleb(unit.exponent, context=_WIDE), Decimal(unit.step))
    whole_steps = steps.quantize(Decimal(1), rounding=mode, context=_WIDE)
    return int(whole_steps) * unit.step


def from_stripe(value: int, currency: str) -> Decimal:
    """The major-unit Decimal of a Stripe integer, at ISO precision where that is exact.

    ISO precision keeps the value comparable with ledger amounts (`Decimal("1.230")` for KWD
    1230, `Decimal("5")` for ISK 500). A value ISO cannot hold, such as ISK 150 from an old
    fractional charge, keeps Stripe's two decimals instead of being rounded on the way in.
    """
    unit = stripe_unit(currency)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"Stripe amount {value!r} {unit.currency} is not an integer")
    major = Decimal(value).scaleb(-unit.exponent, context=_WIDE)
    at_iso = major.quantize(_places(exponent(unit.currency)), context=_WIDE)
    if at_iso == major:
        return at_iso
    return major.quantize(_places(unit.exponent), context=_WIDE)


def stripe_difference(
    amount: Decimal, currency: str, rounding: RoundingMode = "half_even"
) -> Decimal:
    """What Stripe's rounding adds to one line (negative when it takes away)."""
    sent = from_stripe(to_stripe(amount, currency, rounding), currency)
    return _WIDE.subtract(sent, amount)


def iso_minor_to_stripe(minor: int, currency: str, rounding: RoundingMode = "half_even") -> int:
    """A ledger amount in ISO minor units as the integer Stripe accepts for it."""
    code = normalize_currency(currency)
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise InvalidInput(f"ledger amount {minor!r} {code} is not an integer of minor units")
    return to_stripe(Decimal(minor).scaleb(-exponent(code), context=_WIDE), code, rounding)


def stripe_to_iso_minor(value: int, currency: str) -> int:
    """A Stripe integer as ISO minor units, refusing a value the ledger cannot hold exactly.

    Rounding here would book an amount Stripe never charged, so an ISK 150 (1.50 ISK, which
    only a pre-2023 fractional charge can carry) is an error for the operator to look at.
    """
    code = normalize_currency(currency)
    major = from_stripe(value, code)
    digits = exponent(code)
    scaled = major.scaleb(digits, context=_WIDE)
    if scaled != scaled.to_integral_value(context=_WIDE):
        raise InvalidInput(
            f"Stripe amount {value} {code} is {major} {code}, which is not a whole number of "
            f"ISO minor units ({code} has {digits} decimal places)",
            hint="book it by hand; Neruba will not round an amount Stripe actually moved",
        )
    return int(scaled)


def _places(digits: int) -> Decimal:
    """The quantize template for `digits` decimal places (2 -> Decimal("0.01"))."""
    return Decimal(1).scaleb(-digits)


def _rounding(rounding: str) -> str:
    if rounding not in _ROUNDING:
        raise InvalidInput(
            f"unknown rounding mode {rounding!r}", hint=f"use one of {', '.join(ROUNDING_MODES)}"
        )
    return _ROUNDING[rounding]
