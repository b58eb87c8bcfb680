"""Stripe integer amounts: Stripe's own exponents and steps, per-line rounding, exact returns."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.money import CURRENCY_EXPONENTS, ROUNDING_MODES, RoundingMode
from neruba_cli.domain.stripe_money import (
    STRIPE_THREE_DECIMAL,
    STRIPE_WHOLE_UNITS_AS_CENTS,
    STRIPE_ZERO_DECIMAL,
    StripeUnit,
    from_stripe,
    iso_minor_to_stripe,
    stripe_difference,
    stripe_to_iso_minor,
    stripe_unit,
    to_stripe,
)

currencies = st.sampled_from(sorted(CURRENCY_EXPONENTS))
modes = st.sampled_from(ROUNDING_MODES)
amounts = st.decimals(min_value=-(10**12), max_value=10**12, places=12, allow_nan=False)
whole_steps = st.integers(min_value=-(10**15), max_value=10**15)


# --- Stripe's table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "unit"),
    [
        ("USD", StripeUnit("USD", 2, 1)),
        ("eur", StripeUnit("EUR", 2, 1)),
        ("JPY", StripeUnit("JPY", 0, 1)),
        ("krw", StripeUnit("KRW", 0, 1)),
        # ISO gives MGA two digits; Stripe lists it as zero-decimal.
        ("MGA", StripeUnit("MGA", 0, 1)),
        ("KWD", StripeUnit("KWD", 3, 10)),
        ("bhd", StripeUnit("BHD", 3, 10)),
        ("JOD", StripeUnit("JOD", 3, 10)),
        ("OMR", StripeUnit("OMR", 3, 10)),
        ("TND", StripeUnit("TND", 3, 10)),
        # Whole units written with two decimals that must be 00.
        ("ISK", StripeUnit("ISK", 2, 100)),
        ("UGX", StripeUnit("UGX", 2, 100)),
        # Divisible by 100 only for payouts; charges and invoices take two decimals.
        ("HUF", StripeUnit("HUF", 2, 1)),
        ("TWD", StripeUnit("TWD", 2, 1)),
        # ISO three/four-digit currencies Stripe does not list fall to its two-decimal default.
        ("IQD", StripeUnit("IQD", 2, 1)),
        ("CLF", StripeUnit("CLF", 2, 1)),
    ],
)
def test_stripe_unit_follows_stripes_currency_table(code: str, unit: StripeUnit) -> None:
    assert stripe_unit(code) == unit


def test_stripe_lists_name_only_iso_currencies_and_do_not_overlap() -> None:
    lists = (STRIPE_ZERO_DECIMAL, STRIPE_THREE_DECIMAL, STRIPE_WHOLE_UNITS_AS_CENTS)
    for listed in lists:
        assert listed <= CURRENCY_EXPONENTS.keys()
    assert sum(len(listed) for listed in lists) == len(frozenset().union(*lists))


def test_ugx_is_charged_in_hundreds_even_though_stripe_lists_it_as_zero_decimal() -> None:
    # Reading the zero-decimal list alone would send 5 and charge 0.05 UGX.
    assert to_stripe(Decimal(5), "UGX") == 500
    assert from_stripe(500, "UGX") == Decimal(5)


@pytest.mark.parametrize("code", ["USDX", "", "XXXX", "us"])
def test_unknown_currency_is_invalid_input(code: str) -> None:
    for call in (
        lambda: stripe_unit(code),
        lambda: to_stripe(Decimal(1), code),
        lambda: from_stripe(1, code),
        lambda: iso_minor_to_stripe(1, code),
        lambda: stripe_to_iso_minor(1, code),
    ):
        with pytest.raises(InvalidInput) as caught:
            call()
        assert repr(code) in str(caught.value)


def test_increment_is_the_smallest_amount_stripe_carries() -> None:
    assert stripe_unit("KWD").increment == Decimal("0.010")
    assert stripe_unit("ISK").increment == Decimal(1)
    assert stripe_unit("USD").increment == Decimal("0.01")
    assert stripe_unit("JPY").increment == Decimal(1)


# --- Examples -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "code", "mode", "expected"),
    [
        ("12.34", "USD", "half_even", 1234),
        ("500", "JPY", "half_even", 500),
        ("1.234", "KWD", "half_even", 1230),
        ("1.235", "KWD", "half_even", 1240),
        ("1.235", "KWD", "half_up", 1240),
        ("1.225", "KWD", "half_even", 1220),
        ("1.225", "KWD", "half_up", 1230),
        ("5.124", "KWD", "half_even", 5120),  # Stripe's own example: 5120 or 5130
        ("-1.234", "KWD", "half_even", -1230),
        ("-1.225", "KWD", "half_even", -1220),
        ("-1.225", "KWD", "half_up", -1230),  # half_up is away from zero
        ("-12.345", "USD", "half_up", -1235),
        ("-12.345", "USD", "half_even", -1234),
        ("5", "ISK", "half_even", 500),
        ("4.5", "ISK", "half_even", 400),
        ("4.5", "ISK", "half_up", 500),
        ("10.45", "HUF", "half_even", 1045),
        ("800.45", "TWD", "half_even", 80045),
        ("1.50", "MGA", "half_even", 2),
        ("2.50", "MGA", "half_even", 2),
        ("0.004", "USD", "half_even", 0),
        ("-0.004", "USD", "half_even", 0),
    ],
)
def test_to_stripe_examples(amount: str, code: str, mode: RoundingMode, expected: int) -> None:
    assert to_stripe(Decimal(amount), code, mode) == expected


@pytest.mark.parametrize(
    ("value", "code", "expected"),
    [
        (1230, "KWD", "1.230"),
        (500, "JPY", "500"),
        (1234, "USD", "12.34"),
        (-1234, "usd", "-12.34"),
        (500, "ISK", "5"),
        (0, "KWD", "0.000"),
        (2, "MGA", "2.00"),
        (123, "IQD", "1.230"),
    ],
)
def test_from_stripe_returns_iso_precision(value: int, code: str, expected: str) -> None:
    result = from_stripe(value, code)
    assert result == Decimal(expected)
    assert str(result) == expected


def test_from_stripe_keeps_a_fractional_isk_amount_rather_than_rounding_it() -> None:
    # Only a pre-2023 fractional ISK charge can carry this; it must not silently become 2 ISK.
    assert str(from_stripe(150, "ISK")) == "1.50"


def test_stripe_difference_shows_what_the_step_changed() -> None:
    assert stripe_difference(Decimal("1.234"), "KWD") == Decimal("-0.004")
    assert stripe_difference(Decimal("1.235"), "KWD", "half_up") == Decimal("0.005")
    assert stripe_difference(Decimal("5.5"), "ISK") == Decimal("0.5")
    assert stripe_difference(Decimal("12.34"), "USD") == 0


def test_iso_minor_conversions() -> None:
    assert iso_minor_to_stripe(1234, "KWD") == 1230
    assert iso_minor_to_stripe(1235, "KWD", "half_up") == 1240
    assert iso_minor_to_stripe(5, "ISK") == 500
    assert iso_minor_to_stripe(150, "MGA") == 2
    assert stripe_to_iso_minor(1230, "KWD") == 1230
    assert stripe_to_iso_minor(500, "ISK") == 5
    assert stripe_to_iso_minor(2, "MGA") == 200
    assert stripe_to_iso_minor(-1234, "USD") == -1234


def test_stripe_value_iso_cannot_hold_is_refused_with_amount_and_currency() -> None:
    with pytest.raises(InvalidInput) as caught:
        stripe_to_iso_minor(150, "ISK")
    message = str(caught.value)
    assert "150 ISK" in message and "1.50 ISK" in message and "0 decimal places" in message


@pytest.mark.parametrize("bad", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_non_finite_amounts_are_refused(bad: Decimal) -> None:
    with pytest.raises(InvalidInput):
        to_stripe(bad, "USD")


def test_non_integer_stripe_values_are_refused() -> None:
    with pytest.raises(InvalidInput):
        from_stripe(True, "USD")
    with pytest.raises(InvalidInput):
        from_stripe(12.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        iso_minor_to_stripe(Decimal(1), "USD")  # type: ignore[arg-type]


def test_unknown_rounding_mode_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        to_stripe(Decimal(1), "USD", "up")  # type: ignore[arg-type]
    assert "half_even" in str(caught.value)


# --- Properties for every ISO currency ------------------------------------------------------


@given(code=currencies, steps=whole_steps, mode=modes)
def test_amounts_already_on_the_step_round_trip(code: str, steps: int, mode: RoundingMode) -> None:
    unit = stripe_unit(code)
    value = steps * unit.step
    amount = Decimal(value).scaleb(-unit.exponent)
    assert to_stripe(amount, code, mode) == value
    assert from_stripe(to_stripe(amount, code, mode), code) == amount
    assert stripe_difference(amount, code, mode) == 0


@given(code=currencies, amount=amounts, mode=modes)
def test_rounding_moves_at_most_half_a_step(code: str, amount: Decimal, mode: RoundingMode) -> None:
    assert abs(stripe_difference(amount, code, mode)) <= stripe_unit(code).increment / 2


@given(code=currencies, amount=amounts, mode=modes)
def test_stripe_values_are_always_on_the_step(
    code: str, amount: Decimal, mode: RoundingMode
) -> None:
    assert to_stripe(amount, code, mode) % stripe_unit(code).step == 0


@given(code=currencies, amount=amounts, mode=modes)
def test_signs_are_symmetric(code: str, amount: Decimal, mode: RoundingMode) -> None:
    assert to_stripe(-amount, code, mode) == -to_stripe(amount, code, mode)
    assert stripe_difference(-amount, code, mode) == -stripe_difference(amount, code, mode)


@given(code=currencies, amount=amounts)
def test_half_even_and_half_up_differ_only_on_exact_halves(code: str, amount: Decimal) -> None:
    even, up = to_stripe(amount, code, "half_even"), to_stripe(amount, code, "half_up")
    if even != up:
        assert abs(stripe_difference(amount, code, "half_up")) == stripe_unit(code).increment / 2


@given(code=currencies, steps=whole_steps, mode=modes)
def test_stripe_values_map_back_to_ledger_units_exactly_or_are_refused(
    code: str, steps: int, mode: RoundingMode
) -> None:
    unit = stripe_unit(code)
    value = steps * unit.step
    iso_quantum = Decimal(1).scaleb(-CURRENCY_EXPONENTS[code])
    if unit.increment % iso_quantum == 0:
        assert iso_minor_to_stripe(stripe_to_iso_minor(value, code), code, mode) == value
    elif steps % 100:
        # Only the ISO currencies Stripe does not list (UYI) are finer in Stripe than in ISO.
        with pytest.raises(InvalidInput):
            stripe_to_iso_minor(value, code)


@given(code=currencies, minor=st.integers(min_value=-(10**15), max_value=10**15), mode=modes)
def test_iso_minor_to_stripe_agrees_with_to_stripe(
    code: str, minor: int, mode: RoundingMode
) -> None:
    amount = Decimal(minor).scaleb(-CURRENCY_EXPONENTS[code])
    assert iso_minor_to_stripe(minor, code, mode) == to_stripe(amount, code, mode)
