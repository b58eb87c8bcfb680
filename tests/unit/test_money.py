"""Money rules: exact parsing, ISO 4217 minor units, one rounding, minor-unit round trips."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.money import (
    CURRENCY_EXPONENTS,
    exponent,
    format_amount,
    from_minor_units,
    normalize_currency,
    parse_amount,
    round_to_minor,
    to_minor_units,
)

currencies = st.sampled_from(sorted(CURRENCY_EXPONENTS))
amounts = st.decimals(min_value=-(10**12), max_value=10**12, places=12, allow_nan=False)


@pytest.mark.parametrize(
    ("code", "digits"), [("JPY", 0), ("USD", 2), ("eur", 2), ("KWD", 3), ("IQD", 3), ("CLF", 4)]
)
def test_exponents_follow_iso_4217(code: str, digits: int) -> None:
    assert exponent(code) == digits


def test_unknown_currency_names_the_code_and_the_fix() -> None:
    with pytest.raises(InvalidInput) as caught:
        normalize_currency("usdx")
    assert "'usdx'" in str(caught.value) and "ISO 4217" in str(caught.value)


def test_floats_are_refused_with_the_string_to_write_instead() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_amount(0.002, field="unit_amount")
    assert str(caught.value).startswith('unit_amount: write money as a string, e.g. "0.002"')


@pytest.mark.parametrize("bad", [True, "NaN", "Infinity", "-inf", "abc", "", None, "1e-13"])
def test_non_amounts_are_refused(bad: object) -> None:
    with pytest.raises(InvalidInput):
        parse_amount(bad)


def test_parse_keeps_exact_digits() -> None:
    assert parse_amount(" 0.000000000001 ") == Decimal("0.000000000001")
    assert parse_amount(12) == Decimal(12)


@pytest.mark.parametrize(
    ("amount", "currency", "mode", "expected"),
    [
        ("0.125", "USD", "half_even", "0.12"),
        ("0.125", "USD", "half_up", "0.13"),
        ("-0.125", "USD", "half_up", "-0.13"),
        ("2.5", "JPY", "half_even", "2"),
        ("2.5", "JPY", "half_up", "3"),
        ("1.0005", "KWD", "half_even", "1.000"),
    ],
)
def test_rounding_modes(amount: str, currency: str, mode: str, expected: str) -> None:
    assert str(round_to_minor(Decimal(amount), currency, mode)) == expected  # type: ignore[arg-type]


@given(amounts, currencies, st.sampled_from(["half_even", "half_up"]))
def test_rounding_is_idempotent_and_within_half_a_minor_unit(
    amount: Decimal, currency: str, mode: str
) -> None:
    once = round_to_minor(amount, currency, mode)  # type: ignore[arg-type]
    assert round_to_minor(once, currency, mode) == once  # type: ignore[arg-type]
    assert abs(once - amount) <= Decimal(1).scaleb(-exponent(currency)) / 2


@given(st.integers(min_value=-(10**15), max_value=10**15), currencies)
def test_minor_units_round_trip(units: int, currency: str) -> None:
    major = from_minor_units(units, currency)
    assert to_minor_units(major, currency) == units
    assert parse_amount(format_amount(major, currency)) == major


@given(amounts, currencies)
def test_to_minor_units_refuses_unrounded_amounts(amount: Decimal, currency: str) -> None:
    rounded = round_to_minor(amount, currency)
    assert to_minor_units(rounded, currency) == int(rounded.scaleb(exponent(currency)))
    if rounded != amount:
        with pytest.raises(InvalidInput):
            to_minor_units(amount, currency)
