"""Base fees over a period: full, prorated by day/second/none, trials, plan changes, cancels."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain.base_fee import PhaseFee, base_fee_lines, fee_period
from neruba_cli.domain.periods import Phase, month_period

OCTOBER = month_period("2026-10", "UTC")  # 31 days
D = Decimal


def at(day: int, hour: int = 0, month: int = 10) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def fee(key: str, start: datetime, end: datetime | None, amount: str, mode="day") -> PhaseFee:
    return PhaseFee(Phase(start, end, key), D(amount), mode)


def amounts(lines) -> list[tuple[str, Decimal]]:
    return [(line.plan, line.amount) for line in lines]


def test_a_full_period_is_the_whole_fee() -> None:
    lines = base_fee_lines(OCTOBER, [fee("pro@1", at(1), None, "49.00")], tz="UTC", currency="USD")
    assert amounts(lines) == [("pro@1", D("49.00"))]
    assert lines[0].fraction == 1


def test_a_mid_period_start_counts_its_first_day() -> None:
    # Oct 15 10:00 to Oct 31: 17 of 31 days; 31.00 x 17/31 = 17.00
    lines = base_fee_lines(
        OCTOBER, [fee("pro@1", at(15, 10), None, "31.00")], tz="UTC", currency="USD"
    )
    assert lines[0].fraction == Fraction(17, 31) and lines[0].amount == D("17.00")


def test_a_cancel_counts_the_partial_last_day() -> None:
    phases = [fee("pro@1", at(1), at(20, 12), "31.00")]
    lines = base_fee_lines(OCTOBER, phases, tz="UTC", currency="USD", subscription_end=at(20, 12))
    assert lines[0].fraction == Fraction(20, 31) and lines[0].amount == D("20.00")
    midnight = [fee("pro@1", at(1), at(20), "31.00")]
    lines = base_fee_lines(OCTOBER, midnight, tz="UTC", currency="USD", subscription_end=at(20))
    assert lines[0].fraction == Fraction(19, 31)


def test_a_plan_change_splits_the_period_without_double_counting() -> None:
    phases = [fee("starter@1", at(1), at(20, 12), "31.00"), fee("pro@1", at(20, 12), None, "62.00")]
    lines = base_fee_lines(OCTOBER, phases, tz="UTC", currency="USD")
    assert [(line.plan, line.fraction) for line in lines] == [
        ("starter@1", Fraction(19, 31)),
        ("pro@1", Fraction(12, 31)),
    ]
    assert amounts(lines) == [("starter@1", D("19.00")), ("pro@1", D("24.00"))]


def test_trial_days_are_not_charged() -> None:
    phases = [fee("pro@1", at(10), None, "31.00")]
    lines = base_fee_lines(OCTOBER, phases, tz="UTC", currency="USD", trial_end=at(24))
    assert lines[0].service_start == at(24) and lines[0].fraction == Fraction(8, 31)
    assert base_fee_lines(OCTOBER, phases, tz="UTC", currency="USD", trial_end=at(1, 0, 11)) == []


def test_proration_modes() -> None:
    start = at(16, 12)  # 15.5 days of 31 remain
    second = base_fee_lines(
        OCTOBER, [fee("p", start, None, "31.00", "second")], tz="UTC", currency="USD"
    )
    assert second[0].fraction == Fraction(31, 62) and second[0].amount == D("15.50")
    none = base_fee_lines(
        OCTOBER, [fee("p", start, None, "31.00", "none")], tz="UTC", currency="USD"
    )
    assert none[0].amount == D("31.00")


def test_time_zone_days() -> None:
    # Oct 15 23:30 UTC is Oct 16 in Tokyo: 16 of 31 Tokyo days
    tokyo = month_period("2026-10", "Asia/Tokyo")
    lines = base_fee_lines(
        tokyo, [fee("p", at(15, 23), None, "3100", "day")], tz="Asia/Tokyo", currency="JPY"
    )
    assert lines[0].fraction == Fraction(16, 31) and lines[0].amount == D("1600")


def test_fee_period_follows_the_timing() -> None:
    september, october = month_period("2026-09", "UTC"), OCTOBER
    assert fee_period("advance", ended=september, starting=october) == october
    assert fee_period("arrears", ended=september, starting=october) == september


@given(
    st.lists(st.integers(min_value=1, max_value=31 * 24 - 1), max_size=5, unique=True),
    st.sampled_from(["day", "second", "none"]),
    st.sampled_from(["100.00", "49.99", "0.01", "12345.67"]),
)
def test_pieces_of_a_covered_period_sum_to_one_period_within_a_minor_unit(
    hours, mode, price
) -> None:
    cuts = [at(1) + (at(2) - at(1)) * (h / 24) for h in sorted(hours)]
    bounds = [at(1), *cuts, None]
    phases = [
        fee(f"plan{i}", bounds[i], bounds[i + 1], price, mode) for i in range(len(bounds) - 1)
    ]
    lines = base_fee_lines(OCTOBER, phases, tz="UTC", currency="USD")
    assert sum(line.fraction for line in lines) == 1
    assert abs(sum(line.amount_exact for line in lines) - D(price)) < D("1e-20")
    assert abs(sum(line.amount for line in lines) - D(price)) <= D("0.005")
    assert all(abs(line.amount - line.amount_exact) <= D("0.01") for line in lines)


def test_no_proration_charges_a_period_once() -> None:
    phases = [
        fee("basic@1", at(1), at(15), "10.00", "none"),
        fee("pro@1", at(15), None, "100.00", "none"),
    ]
    lines = base_fee_lines(OCTOBER, phases, tz="UTC", currency="USD")
    assert amounts(lines) == [("basic@1", D("10.00"))]
    late = [fee("pro@1", at(15), None, "100.00", "none")]
    assert amounts(base_fee_lines(OCTOBER, late, tz="UTC", currency="USD")) == [
        ("pro@1", D("100.00"))
    ]
