"""The rating engine: worked examples from public billing docs, edge cases, and properties.

Every worked example names its source. Where a doc gives the configuration but not the total,
or where our semantics go beyond what the doc shows, the comment says the figure is derived
from our rules (DESIGN.md "Pricing semantics" and the module docstring of domain/pricing.py).
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.money import CURRENCY_EXPONENTS, ROUNDING_MODES, quantum, round_to_minor
from neruba_cli.domain.pricing import (
    MODELS,
    ZERO,
    Charge,
    ChargeModel,
    Rating,
    Tier,
    Usage,
    price_lines,
    rate_charge,
)

D = Decimal
INF = None


def tiers(*rows: tuple[object, ...]) -> tuple[Tier, ...]:
    """(up_to, unit_amount[, flat_amount[, rate]]) rows; up_to None is inf."""
    built = []
    for row in rows:
        up_to, unit, *rest = row
        flat = rest[0] if rest else "0"
        rate = rest[1] if len(rest) > 1 else "0"
        built.append(
            Tier(None if up_to is None else D(str(up_to)), D(str(unit)), D(str(flat)), D(str(rate)))
        )
    return tuple(built)


def rate(
    charge: Charge, quantity: object = 0, transactions: tuple[str, ...] | None = None
) -> Rating:
    values = None if transactions is None else tuple(D(v) for v in transactions)
    return rate_charge(charge, Usage(D(str(quantity)), values))


def amount(charge: Charge, quantity: object = 0) -> Decimal:
    return rate(charge, quantity).amount


# --- Stripe: tiered pricing ------------------------------------------------------------------
# Source: Stripe docs, "Set up tiered pricing" (docs.stripe.com/subscriptions/pricing-models/
# tiered-pricing): Typographic's tiers 1-5 at 7 USD, 6-10 at 6.5 USD, 11+ at 6 USD, with the
# documented totals for both modes.
TYPOGRAPHIC = tiers((5, "7"), (10, "6.5"), (INF, "6"))


@pytest.mark.parametrize(
    ("fonts", "total"), [(1, "7"), (5, "35"), (6, "41.5"), (20, "127.5"), (25, "157.5")]
)
def test_stripe_graduated_totals(fonts: int, total: str) -> None:
    charge = Charge("fonts", "graduated", tiers=TYPOGRAPHIC)
    assert amount(charge, fonts) == D(total)


@pytest.mark.parametrize(
    ("fonts", "total"), [(1, "7"), (5, "35"), (6, "39"), (20, "120"), (25, "150")]
)
def test_stripe_volume_totals(fonts: int, total: str) -> None:
    charge = Charge("fonts", "volume", tiers=TYPOGRAPHIC)
    assert amount(charge, fonts) == D(total)


# Source: the same Stripe page, "Add a flat rate": tiers up_to 5/10/15/20/inf at 5/4/3/2/1 USD
# per unit with flat 10/20/30/40/50 USD. Documented: quantity 12 is 66 USD in volume mode and
# 111 USD in graduated mode; quantity 0 is 10 USD in either mode ("Stripe always bills the first
# flat rate tier when quantity=0").
STRIPE_FLAT = tiers(
    (5, "5", "10"), (10, "4", "20"), (15, "3", "30"), (20, "2", "40"), (INF, "1", "50")
)


def test_stripe_flat_rate_per_tier() -> None:
    assert amount(Charge("m", "volume", tiers=STRIPE_FLAT), 12) == D("66")
    graduated = rate(Charge("m", "graduated", tiers=STRIPE_FLAT), 12)
    assert graduated.amount == D("111")
    # The breakdown `explain` shows: (5 x 5 + 10) + (5 x 4 + 20) + (2 x 3 + 30).
    assert [(t.index, t.quantity, t.flat_amount, t.amount) for t in graduated.tiers] == [
        (0, D(5), D(10), D(35)),
        (1, D(5), D(20), D(40)),
        (2, D(2), D(30), D(36)),
    ]
    assert [t.lower for t in graduated.tiers] == [D(0), D(5), D(10)]


@pytest.mark.parametrize("model", ["volume", "graduated"])
def test_stripe_bills_the_first_flat_tier_at_zero(model: ChargeModel) -> None:
    assert amount(Charge("m", model, tiers=STRIPE_FLAT), 0) == D("10")


# --- Stripe: transform_quantity (divide_by + round up) is our package model -------------------
# Source: Stripe docs, "Quantity transformation" (stripe.com/docs/billing/subscriptions/
# quantity-transformation): 10 USD for every 5 users or portion thereof; the documented table
# gives 1, 3, 5 users -> 10 USD and 6, 7 users -> 20 USD.
@pytest.mark.parametrize(
    ("users", "total"), [(1, "10"), (3, "10"), (5, "10"), (6, "20"), (7, "20")]
)
def test_stripe_transform_quantity_per_five_users(users: int, total: str) -> None:
    charge = Charge("users", "package", package_size=D(5), package_amount=D("10"))
    assert amount(charge, users) == D(total)


def test_stripe_transform_quantity_car_rental() -> None:
    # Source: Stripe docs, "Transform quantities" (docs.stripe.com/billing/subscriptions/
    # usage-based/transform-quantities): usage in minutes, 10 USD per started hour; 150 minutes
    # is charged 30 USD (3 hours).
    charge = Charge("minutes", "package", package_size=D(60), package_amount=D("10"))
    assert amount(charge, 150) == D("30")


# --- Lago charge models ----------------------------------------------------------------------
def test_lago_graduated() -> None:
    # Source: Lago docs, charge models / graduated (getlago.com/docs/guide/plans/charges/
    # charge-models/graduated): $1 per unit for the first 100, $0.50 for the next 100, $0.10 for
    # any additional unit. The page gives no total; 250 units -> 100 + 50 + 5 = $155 is derived.
    charge = Charge("api", "graduated", tiers=tiers((100, "1"), (200, "0.50"), (INF, "0.10")))
    assert amount(charge, 250) == D("155")


def test_lago_volume() -> None:
    # Source: Lago docs, charge models / volume: tiers to 10,000 / 50,000 / 100,000 / inf at
    # $0.0010 / $0.0008 / $0.0006 / $0.0004 with a $10 fee each; documented: 65,000 API calls
    # cost 65,000 x $0.0006 + $10 = $49.
    charge = Charge(
        "api",
        "volume",
        tiers=tiers(
            (10_000, "0.0010", "10"),
            (50_000, "0.0008", "10"),
            (100_000, "0.0006", "10"),
            (INF, "0.0004", "10"),
        ),
    )
    rating = rate(charge, 65_000)
    assert rating.amount == D("49")
    assert [(t.index, t.quantity) for t in rating.tiers] == [(2, D(65_000))]


def test_lago_package_with_free_units() -> None:
    # Source: Lago docs, charge models / package: $5 per 100 units, first 100 units free;
    # documented: 201 units cost $0 + $5 + $5 = $10.
    charge = Charge("api", "package", package_size=D(100), package_amount=D("5"), free_units=D(100))
    rating = rate(charge, 201)
    assert rating.amount == D("10")
    assert rating.billable_quantity == D(101)


def test_lago_percentage_with_fixed_fee_and_free_events_or_amount() -> None:
    # Source: Lago docs, charge models / percentage: 1.2 % + $0.10 per transaction, the first 3
    # events or $500 free. Transactions $200, $100, $100 are free; the 4th ($50) exceeds the free
    # events and is documented at $0.10 + 1.2 % of $50 = $0.70.
    charge = Charge(
        "payments",
        "percentage",
        rate=D("1.2"),
        fixed_amount=D("0.10"),
        free_units=D(3),
        free_amount=D("500"),
    )
    rating = rate(charge, 450, ("200", "100", "100", "50"))
    assert rating.amount == D("0.70")
    assert (rating.transactions, rating.free_transactions) == (4, 3)
    assert rating.billable_quantity == D("50")


def test_lago_percentage_free_units_per_total_amount() -> None:
    # Lago's percentage page describes "free units (total amount)"; this case is derived from our
    # allowance rule: $500 free, transactions $200, $250, $100 -> the third crosses $500 and pays
    # 1.2 % of its $50 excess + $0.10 = $0.70; the first two are free.
    charge = Charge(
        "payments", "percentage", rate=D("1.2"), fixed_amount=D("0.10"), free_amount=D("500")
    )
    rating = rate(charge, 550, ("200", "250", "100"))
    assert rating.amount == D("0.70")
    assert rating.free_transactions == 2
    assert rating.billable_quantity == D("50")


def test_lago_percentage_free_units_per_events() -> None:
    # Lago's percentage page describes "free units (per event)"; derived from our rule: the first
    # 2 events are free, later ones pay 1.2 % + $0.10: 1.20 + 0.10 + 0.60 + 0.10 = $2.00.
    charge = Charge(
        "payments", "percentage", rate=D("1.2"), fixed_amount=D("0.10"), free_units=D(2)
    )
    rating = rate(charge, 0, ("1000", "1000", "100", "50"))
    assert rating.amount == D("2.00")
    assert rating.free_transactions == 2


def test_lago_percentage_per_transaction_min_and_max() -> None:
    # Lago's percentage page describes per-transaction spending minimum and maximum without
    # figures; derived: 1.2 % + $0.10, min $0.50, max $5. $10 -> 0.22 raised to 0.50;
    # $100 -> 1.30 as is; $1,000 -> 12.10 capped at 5.00. Total $6.80.
    charge = Charge(
        "payments",
        "percentage",
        rate=D("1.2"),
        fixed_amount=D("0.10"),
        per_transaction_min=D("0.50"),
        per_transaction_max=D("5"),
    )
    assert rate(charge, 1110, ("10", "100", "1000")).amount == D("6.80")


def test_lago_graduated_percentage() -> None:
    # Source: Lago docs, charge models / graduated percentage: tiers to 1,000 / 10,000 / inf at
    # 1 % / 2 % / 3 % with flat fees $200 / $300 / $400. Documented per transaction: $500 costs
    # $205.00, then $550 costs $306.00, then $4,000 costs $80.00; over the cumulative value the
    # period totals are 205, 511 and 591.
    charge = Charge(
        "volume",
        "graduated_percentage",
        tiers=tiers((1000, "0", "200", "1"), (10_000, "0", "300", "2"), (INF, "0", "400", "3")),
    )
    assert amount(charge, 500) == D("205")
    assert amount(charge, 1050) - amount(charge, 500) == D("306")
    assert amount(charge, 5050) - amount(charge, 1050) == D("80")
    rating = rate(charge, 5050, ("500", "550", "4000"))
    assert rating.amount == D("591")
    assert rating.transactions == 3
    assert [(t.quantity, t.rate, t.amount) for t in rating.tiers] == [
        (D(1000), D(1), D(210)),
        (D(4050), D(2), D(381)),
    ]


# --- OpenMeter: flat fee at zero -------------------------------------------------------------
# Source: Kong Konnect Metering & Billing "Pricing models" (the OpenMeter product; page
# app/metering-and-billing/pricing-models.md in Kong/developer.konghq.com), "Flat prices in
# tiers": first tier 0-1,000 at $0 with a $500 flat price, then $0.1 per unit. Documented:
# 2,000 units cost $600; "if you have a flat fee of $500 in the first tier, the total amount
# will be $500 when the quantity is 0" (OpenMeter PR #2119: "Tiered price's first bucket's flat
# fee is always billed"). To bill $0 at zero usage the page uses a first tier up_to 1 at $500
# per unit; we also offer flat_fee_at_zero = false.
OPENMETER_FLAT = tiers((1000, "0", "500"), (INF, "0.1"))


def test_openmeter_flat_price_in_first_tier() -> None:
    charge = Charge("api", "graduated", tiers=OPENMETER_FLAT)
    assert amount(charge, 2000) == D("600")
    assert amount(charge, 0) == D("500")


def test_openmeter_zero_usage_workaround_and_our_option() -> None:
    workaround = Charge("api", "graduated", tiers=tiers((1, "500"), (1000, "0"), (INF, "0.1")))
    assert amount(workaround, 2000) == D("600")
    assert amount(workaround, 0) == D("0")
    ours = Charge("api", "graduated", tiers=OPENMETER_FLAT, flat_fee_at_zero=False)
    assert amount(ours, 0) == D("0")
    assert amount(ours, 2000) == D("600")


def test_openmeter_graduated_and_volume() -> None:
    # Source: the same page: tiers 0-1,000 at $0.3, 1,001-5,000 at $0.2, 5,001+ at $0.1;
    # documented: 6,000 units cost $1,200 graduated and $600 volume.
    table = tiers((1000, "0.3"), (5000, "0.2"), (INF, "0.1"))
    assert amount(Charge("api", "graduated", tiers=table), 6000) == D("1200")
    assert amount(Charge("api", "volume", tiers=table), 6000) == D("600")


@pytest.mark.parametrize(
    ("units", "total"), [("0", "0"), ("20", "10"), ("20.1", "20"), ("98", "50")]
)
def test_openmeter_package(units: str, total: str) -> None:
    # Source: the same page, "Package": 20 units per package at $10; documented table.
    charge = Charge("api", "package", package_size=D(20), package_amount=D("10"))
    assert amount(charge, units) == D(total)


# --- edge cases: bounds ----------------------------------------------------------------------
def test_quantity_exactly_on_a_bound_stays_in_that_tier() -> None:
    assert amount(Charge("m", "graduated", tiers=TYPOGRAPHIC), 5) == D("35")
    volume = rate(Charge("m", "volume", tiers=TYPOGRAPHIC), 5)
    assert volume.amount == D("35")
    assert volume.tiers[0].index == 0


def test_a_fraction_past_a_bound_is_in_the_next_tier() -> None:
    graduated = rate(Charge("m", "graduated", tiers=TYPOGRAPHIC), "5.001")
    assert graduated.amount == D("35.0065")  # 5 x 7 + 0.001 x 6.5
    assert [(t.index, t.quantity) for t in graduated.tiers] == [(0, D(5)), (1, D("0.001"))]
    volume = rate(Charge("m", "volume", tiers=TYPOGRAPHIC), "5.001")
    assert volume.amount == D("32.5065")  # 5.001 x 6.5
    assert volume.tiers[0].index == 1
    assert volume.tiers[0].lower == D(5)


def test_flat_fee_is_charged_once_on_entering_a_tier() -> None:
    table = tiers((10, "1", "5"), (INF, "1", "100"))
    charge = Charge("m", "graduated", tiers=table)
    assert amount(charge, 10) == D("15")  # tier 2 not entered at its lower bound
    assert amount(charge, "10.5") == D("115.5")


@pytest.mark.parametrize("model", ["graduated", "volume", "graduated_percentage"])
def test_zero_quantity_with_and_without_flat_fee_at_zero(model: ChargeModel) -> None:
    table = tiers((10, "1", "3", "1"), (INF, "1", "7", "1"))
    with_fee = rate(Charge("m", model, tiers=table), 0)
    assert with_fee.amount == D("3")
    assert [(t.index, t.quantity, t.flat_amount) for t in with_fee.tiers] == [(0, ZERO, D(3))]
    without = rate(Charge("m", model, tiers=table, flat_fee_at_zero=False), 0)
    assert without.amount == ZERO
    assert [(t.index, t.flat_amount, t.amount) for t in without.tiers] == [(0, ZERO, ZERO)]
    # Any usage at all enters the first tier and charges its flat fee.
    assert amount(Charge("m", model, tiers=table, flat_fee_at_zero=False), "0.5") > D(3)


# --- edge cases: free units ------------------------------------------------------------------
def test_free_units_larger_than_the_quantity() -> None:
    per_unit = rate(Charge("m", "per_unit", unit_amount=D("2"), free_units=D(100)), 50)
    assert (per_unit.amount, per_unit.billable_quantity, per_unit.quantity) == (ZERO, ZERO, D(50))
    package = Charge("m", "package", package_size=D(10), package_amount=D(1), free_units=D(100))
    assert amount(package, 50) == ZERO
    # Tiers apply to the billable quantity: 0 billable still pays the first tier's flat fee
    # unless flat_fee_at_zero is false.
    table = tiers((10, "1", "4"), (INF, "1"))
    assert amount(Charge("m", "graduated", tiers=table, free_units=D(100)), 50) == D("4")
    no_fee = Charge("m", "graduated", tiers=table, free_units=D(100), flat_fee_at_zero=False)
    assert amount(no_fee, 50) == ZERO


def test_free_units_shift_the_tiers() -> None:
    charge = Charge("m", "graduated", tiers=TYPOGRAPHIC, free_units=D(2))
    rating = rate(charge, 8)  # 6 billable: 5 x 7 + 1 x 6.5
    assert (rating.billable_quantity, rating.amount) == (D(6), D("41.5"))


def test_package_minimum_packages() -> None:
    charge = Charge("m", "package", package_size=D(100), package_amount=D("5"), min_packages=1)
    assert amount(charge, 0) == D("5")
    assert amount(charge, 101) == D("10")


# --- edge cases: min and max -----------------------------------------------------------------
def test_minimum_top_up_is_its_own_line() -> None:
    charge = Charge("api", "per_unit", unit_amount=D("0.01"), min_amount=D("20.00"))
    rating = rate(charge, 500)
    assert (rating.amount, rating.minimum_topup) == (D("5.00"), D("15.00"))
    usage, minimum = price_lines(rating, "USD")
    assert (usage.kind, usage.amount, usage.quantity) == ("usage", D("5.00"), D(500))
    assert (minimum.kind, minimum.amount, minimum.quantity) == ("minimum", D("15.00"), D(1))
    assert (minimum.meter, minimum.model, minimum.tiers) == ("api", "per_unit", ())


def test_no_minimum_line_when_usage_reaches_the_minimum() -> None:
    charge = Charge("api", "per_unit", unit_amount=D("0.01"), min_amount=D("5"))
    rating = rate(charge, 500)
    assert rating.minimum_topup == ZERO
    assert [line.kind for line in price_lines(rating, "USD")] == ["usage"]


def test_maximum_caps_the_charge() -> None:
    charge = Charge("api", "per_unit", unit_amount=D("1"), max_amount=D("500"), min_amount=D(10))
    rating = rate(charge, 1000)
    assert (rating.amount, rating.uncapped_amount, rating.minimum_topup) == (D(500), D(1000), ZERO)


def test_usage_and_minimum_lines_sum_to_the_minimum_exactly() -> None:
    # Rounding the usage line and the top-up separately could overshoot (20.00 + 0.01 with
    # half_up); the minimum line is the rounded minimum less the rounded usage line instead.
    charge = Charge("t", "per_unit", unit_amount=D("0.005"), min_amount=D("20.00"))
    rating = rate(charge, 3999)  # 19.995
    for mode in ("half_up", "half_even"):
        assert [line.amount for line in price_lines(rating, "USD", mode)] == [D("20.00")]
    low = rate(charge, 3001)  # 15.005
    lines = price_lines(low, "USD", "half_even")
    assert [(line.kind, line.amount) for line in lines] == [
        ("usage", D("15.00")),
        ("minimum", D("5.00")),
    ]
    assert lines[1].amount_exact == D("4.995")
    assert sum(line.amount for line in price_lines(low, "USD", "half_up")) == D("20.00")


# --- edge cases: percentage allowance --------------------------------------------------------
PCT = Charge(
    "pay", "percentage", rate=D("2"), fixed_amount=D("0.30"), free_units=D(3), free_amount=D(100)
)


def test_event_ending_exactly_on_free_amount_is_fully_free() -> None:
    rating = rate(PCT, 100, ("40", "60", "10"))
    # 40 and 60 are free (cumulative 100 <= 100); 10 pays in full: 0.20 + 0.30.
    assert (rating.free_transactions, rating.amount) == (2, D("0.50"))


def test_crossing_event_pays_the_rate_on_its_excess_plus_the_fixed_fee() -> None:
    rating = rate(PCT, 150, ("40", "70", "40"))
    # 40 free; 70 crosses at 110: pays 2 % of 10 + 0.30 = 0.50; 40 pays 0.80 + 0.30 = 1.10.
    assert rating.amount == D("1.60")
    assert rating.billable_quantity == D("50")
    assert rating.free_transactions == 1


def test_crossing_after_the_free_events_pays_in_full() -> None:
    # Three events fit in $100; the 4th is past free_units, so it pays in full although
    # cumulative value crosses 100 with it.
    rating = rate(PCT, 0, ("10", "10", "10", "80"))
    assert rating.free_transactions == 3
    assert rating.amount == D("1.90")  # 1.60 + 0.30
    assert rating.billable_quantity == D("80")


def test_allowance_ends_at_the_first_event_not_fully_free() -> None:
    # 150 crosses at once and pays on its 50 excess (1.00 + 0.30); the 1 after it is still
    # within the three free events but pays in full (0.02 + 0.30): the allowance is closed.
    rating = rate(PCT, 0, ("150", "1"))
    assert rating.free_transactions == 0
    assert rating.amount == D("1.62")
    assert rating.billable_quantity == D("51")


def test_crossing_event_is_clamped_like_any_paying_event() -> None:
    charge = Charge(
        "pay", "percentage", rate=D("2"), free_amount=D(100), per_transaction_min=D("0.50")
    )
    rating = rate(charge, 0, ("99", "2"))  # excess 1 -> 0.02, raised to the minimum
    assert rating.amount == D("0.50")


def test_free_events_pay_no_minimum() -> None:
    charge = Charge("pay", "percentage", rate=D("2"), free_units=D(2), per_transaction_min=D(1))
    assert rate(charge, 0, ("1", "1", "1")).amount == D("1")


def test_percentage_without_transactions_is_one_transaction_or_none() -> None:
    charge = Charge("pay", "percentage", rate=D("2.5"), fixed_amount=D("0.30"))
    one = rate(charge, 100)
    assert (one.transactions, one.amount) == (1, D("2.80"))
    none = rate(charge, 0)
    assert (none.transactions, none.amount) == (0, ZERO)


# --- precision and rounding ------------------------------------------------------------------
def test_tiny_unit_price_is_exact() -> None:
    charge = Charge("tokens", "per_unit", unit_amount=D("0.0000125"))
    rating = rate(charge, 1_234_567)
    assert rating.amount == D("15.4320875")
    (line,) = price_lines(rating, "USD")
    assert (line.amount, line.amount_exact) == (D("15.43"), D("15.4320875"))
    tie = rate(charge, 1_234_000)  # 15.425 exactly
    assert price_lines(tie, "USD", "half_even")[0].amount == D("15.42")
    assert price_lines(tie, "USD", "half_up")[0].amount == D("15.43")
    assert price_lines(tie, "JPY")[0].amount == D("15")
    assert price_lines(tie, "KWD")[0].amount == D("15.425")


def test_amounts_that_need_more_than_50_digits_are_refused() -> None:
    long = D("1." + "1" * 40)
    with pytest.raises(InvalidInput, match="cannot be priced exactly"):
        rate_charge(Charge("m", "per_unit", unit_amount=long), Usage(long))


def test_not_a_number_is_refused_as_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="cannot be priced exactly"):
        rate_charge(Charge("m", "per_unit", unit_amount=D(1)), Usage(D("NaN")))
    with pytest.raises(InvalidInput, match="cannot be priced exactly"):
        rate_charge(Charge("m", "per_unit", unit_amount=D(1), free_units=D("NaN")), Usage(D(1)))


# --- defensive checks ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("charge", "message"),
    [
        (Charge("m", "graduated"), "at least one tier"),
        (Charge("m", "volume", tiers=tiers((10, "1"))), "last tier must be up_to = inf"),
        (Charge("m", "graduated", tiers=tiers((10, "1"), (5, "1"), (INF, "1"))), "ascend"),
        (Charge("m", "graduated", tiers=tiers((10, "1"), (10, "1"), (INF, "1"))), "ascend"),
        (Charge("m", "graduated", tiers=tiers((0, "1"), (INF, "1"))), "positive"),
        (Charge("m", "volume", tiers=tiers((INF, "1"), (INF, "1"))), "only the last"),
        (Charge("m", "package", package_size=D(0), package_amount=D(1)), "package_size"),
        (Charge("m", "package", package_amount=D(1)), "package_size is required"),
        (Charge("m", "package", package_size=D(1), package_amount=D(1), min_packages=-1), "min_"),
        (Charge("m", "per_unit"), "unit_amount is required"),
        (Charge("m", "percentage"), "rate is required"),
        (
            Charge(
                "m", "percentage", rate=D(1), per_transaction_min=D(2), per_transaction_max=D(1)
            ),
            "per_transaction_min",
        ),
        (Charge("m", "per_unit", unit_amount=D(1), min_amount=D(5), max_amount=D(1)), "exceed"),
        (Charge("m", "per_unit", unit_amount=D(1), max_amount=D(-1)), "max_amount"),
        (Charge("m", "per_unit", unit_amount=D(1), free_units=D(-1)), "free_units"),
        (Charge("m", "flat"), "unknown price model"),  # type: ignore[arg-type]
    ],
)
def test_charges_that_cannot_be_rated(charge: Charge, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        rate_charge(charge, Usage(D(1)))


@pytest.mark.parametrize("model", ["per_unit", "graduated", "volume", "package"])
def test_negative_quantity_is_refused(model: ChargeModel) -> None:
    charge = Charge(
        "m",
        model,
        unit_amount=D(1),
        tiers=tiers((INF, "1")),
        package_size=D(1),
        package_amount=D(1),
    )
    with pytest.raises(InvalidInput, match="negative"):
        rate_charge(charge, Usage(D(-1)))


def test_percentage_rates_refunds_as_negative_values() -> None:
    charge = Charge("pay", "percentage", rate=D("2"))
    assert rate(charge, 0, ("100", "-40")).amount == D("1.20")


def test_models_are_listed_in_order() -> None:
    assert MODELS == (
        "per_unit",
        "graduated",
        "volume",
        "package",
        "percentage",
        "graduated_percentage",
    )


# --- properties ------------------------------------------------------------------------------
quantities = st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False)
prices = st.decimals(min_value=0, max_value=100, places=6, allow_nan=False)
flats = st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False)


@st.composite
def tier_tables(draw: st.DrawFn) -> tuple[Tier, ...]:
    bounds = draw(
        st.lists(
            st.decimals(min_value="0.001", max_value=10**5, places=3, allow_nan=False),
            max_size=5,
            unique=True,
        )
    )
    tops: list[Decimal | None] = [*sorted(bounds), None]
    return tuple(Tier(top, draw(prices), draw(flats)) for top in tops)


@given(tier_tables(), quantities)
def test_graduated_never_exceeds_the_sum_of_tier_maxima(
    table: tuple[Tier, ...], q: Decimal
) -> None:
    total = amount(Charge("m", "graduated", tiers=table), q)
    bound = ZERO
    lower = ZERO
    for tier in table:
        width = q if tier.up_to is None else min(tier.up_to - lower, q)
        bound += width * tier.unit_amount + tier.flat_amount
        lower = tier.up_to if tier.up_to is not None else lower
    assert total <= bound


@given(prices, quantities)
def test_one_unbounded_tier_equals_per_unit(price: Decimal, q: Decimal) -> None:
    expected = amount(Charge("m", "per_unit", unit_amount=price), q)
    single = (Tier(None, price),)
    assert amount(Charge("m", "graduated", tiers=single), q) == expected
    assert amount(Charge("m", "volume", tiers=single), q) == expected


@given(tier_tables(), quantities, quantities)
def test_graduated_is_monotone(table: tuple[Tier, ...], a: Decimal, b: Decimal) -> None:
    low, high = sorted((a, b))
    charge = Charge("m", "graduated", tiers=table)
    assert amount(charge, low) <= amount(charge, high)


@given(
    prices,
    quantities,
    st.sampled_from(sorted(CURRENCY_EXPONENTS)),
    st.sampled_from(ROUNDING_MODES),
    st.none() | flats,
)
def test_priced_lines_are_whole_minor_units_within_half_a_unit(
    price: Decimal, q: Decimal, currency: str, rounding: str, minimum: Decimal | None
) -> None:
    charge = Charge("m", "per_unit", unit_amount=price, min_amount=minimum)
    lines = price_lines(rate(charge, q), currency, rounding)  # type: ignore[arg-type]
    unit = quantum(currency)
    for line in lines:
        assert line.amount % unit == 0
    usage, *topup = lines
    assert abs(usage.amount - usage.amount_exact) <= unit / 2
    if topup:  # the minimum line lifts the rounded usage line to the rounded minimum exactly
        assert minimum is not None
        assert usage.amount + topup[0].amount == round_to_minor(minimum, currency, rounding)  # type: ignore[arg-type]
        assert abs(topup[0].amount - topup[0].amount_exact) <= unit


@given(st.sampled_from(["per_unit", "graduated", "volume", "package"]), quantities, flats, flats)
def test_minimum_and_maximum_hold(model: ChargeModel, q: Decimal, a: Decimal, b: Decimal) -> None:
    low, high = sorted((a, b))
    charge = Charge(
        "m",
        model,
        unit_amount=D("0.37"),
        tiers=tiers((100, "0.5", "3"), (INF, "0.25", "7")),
        package_size=D(10),
        package_amount=D("4.5"),
        min_amount=low,
        max_amount=high,
    )
    rating = rate(charge, q)
    assert rating.amount <= high
    assert rating.amount + rating.minimum_topup >= low
    assert rating.minimum_topup >= 0
    assert rating.amount == min(rating.uncapped_amount, high)


@given(st.lists(st.decimals(min_value=0, max_value=10**4, places=2), max_size=20), flats)
def test_percentage_without_allowance_is_rate_plus_fixed_per_event(
    values: list[Decimal], fixed: Decimal
) -> None:
    charge = Charge("pay", "percentage", rate=D("2.9"), fixed_amount=fixed)
    rating = rate_charge(charge, Usage(sum(values, ZERO), tuple(values)))
    assert rating.amount == sum(values, ZERO) * D("0.029") + fixed * len(values)
    assert rating.free_transactions == 0
