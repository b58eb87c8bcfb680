"""What an invoice must fit (domain/invoice_limits.py): a meter's reading below 26 integer
digits, every amount within the ledger's 64-bit minor units; the builder refuses the rest with
an error naming the meter, before anything could be written."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from neruba_cli.domain.aggregation import MeterSpec
from neruba_cli.domain.catalog import PlanDef
from neruba_cli.domain.invoice import (
    InvoiceInput,
    MeterUsage,
    PhasePlan,
    SubscriptionTerms,
    UsagePiece,
    build_invoice,
)
from neruba_cli.domain.invoice_limits import (
    Unbillable,
    amount_problem,
    check_document,
    reading_of,
    reading_problem,
)
from neruba_cli.domain.ledger import MAX_MINOR
from neruba_cli.domain.periods import Period, Phase
from neruba_cli.domain.pricing import Charge

OCTOBER = Period(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("value", "fits"),
    [
        ("0", True),
        ("99999999999999999999999999.999999999999", True),  # 26 integer digits
        ("100000000000000000000000000", False),  # 27
        ("-1e26", False),
        ("1e308", False),
        ("1e999999999", False),  # decided from the exponent, at once
        ("1e-308", True),  # rounds to 0 like any reading past 12 places
        ("Infinity", False),
        ("NaN", False),
    ],
)
def test_a_reading_fits_below_26_integer_digits(value: str, fits: bool) -> None:
    assert (reading_problem(Decimal(value)) is None) is fits


@pytest.mark.parametrize(
    ("amount", "currency", "fits"),
    [
        (Decimal(MAX_MINOR).scaleb(-2), "USD", True),
        ((Decimal(MAX_MINOR) + 1).scaleb(-2), "USD", False),
        (-(Decimal(MAX_MINOR) + 1).scaleb(-2), "USD", False),
        (Decimal(MAX_MINOR), "JPY", True),
        (Decimal(MAX_MINOR) + 1, "JPY", False),
        ((Decimal(MAX_MINOR) + 1).scaleb(-3), "KWD", False),
        (Decimal("1.25E+34"), "USD", False),
        (Decimal("92233720368547758.07"), "USD", True),
    ],
)
def test_an_amount_fits_the_ledgers_64_bit_minor_units(
    amount: Decimal, currency: str, fits: bool
) -> None:
    assert (amount_problem(amount, currency) is None) is fits


def test_a_meter_reads_numbers_and_digit_strings_only() -> None:
    assert reading_of(Decimal("1E+308")) == Decimal("1E+308")
    assert reading_of("1000000000000000000000000000000000000000") == Decimal(10) ** 39
    assert reading_of(7) == Decimal(7)
    assert [reading_of(raw) for raw in ("1e39", "abc", True, None, [1])] == [None] * 5


def tokens_invoice(value: Decimal, unit_amount: str = "0.0003") -> InvoiceInput:
    plan = PlanDef(
        code="ai",
        currency="USD",
        interval="month",
        base_fee=Decimal("20"),
        base_fee_timing="arrears",
        proration="day",
        trial_days=0,
        charges=(Charge("tokens", "per_unit", unit_amount=Decimal(unit_amount)),),
    )
    key = "ai@1"
    spec = MeterSpec("tokens", "sum", field="properties.tokens")
    return InvoiceInput(
        customer="c1",
        currency="USD",
        timezone="UTC",
        rounding="half_even",
        period=OCTOBER,
        label="2026-10",
        subscriptions=(
            SubscriptionTerms(
                id="sub_1",
                start=OCTOBER.start,
                end=None,
                trial_end=None,
                phases=(PhasePlan(Phase(OCTOBER.start, None, key), plan, "sha256:1", {"t": spec}),),
                fee_periods=((OCTOBER, "arrears"),),
                pieces=(
                    UsagePiece(key, OCTOBER.start, OCTOBER.end, {"tokens": MeterUsage(value, 1)}),
                ),
            ),
        ),
    )


@pytest.mark.parametrize("value", ["1e39", "1e308"])
def test_the_builder_refuses_a_reading_no_line_can_hold(value: str) -> None:
    with pytest.raises(Unbillable) as refused:
        build_invoice(tokens_invoice(Decimal(value)))
    assert refused.value.meter == "tokens"
    assert "meter 'tokens' reads 1E+" in refused.value.message


def test_the_builder_refuses_an_amount_beyond_the_ledger() -> None:
    """25 integer digits fit a line's quantity, but at 1.00 each not the ledger."""
    with pytest.raises(Unbillable) as refused:
        build_invoice(tokens_invoice(Decimal("1e24"), unit_amount="1.00"))
    assert refused.value.meter == "tokens"
    assert "exceeds the ledger's 64-bit range" in refused.value.message


def test_an_invoice_within_the_limits_is_built_as_before() -> None:
    built = build_invoice(tokens_invoice(Decimal(1000)))
    assert built.content["total"] == "20.30"
    check_document(built.content, "USD")


def test_the_revenue_of_one_kind_must_fit_too() -> None:
    half = str((Decimal(MAX_MINOR) // 2 + 1).scaleb(-2))
    lines = [{"kind": "usage", "meter": m, "amount": half, "quantity": "1"} for m in ("a", "b")]
    document = {"lines": lines, "subtotal": "0", "total": "0"}
    with pytest.raises(Unbillable, match="the usage revenue"):
        check_document(document, "USD")
