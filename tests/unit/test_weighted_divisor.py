"""weighted_sum over part of a billing period: Σ level × time held / the full period's time
(DESIGN: "seconds in the full period"), so a window that is part of a period (a subscription
starting mid-period, a plan change) yields its share, never the window's own average."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neruba_cli.domain.aggregation import (
    EventRecord,
    MeterSpec,
    aggregate,
    weighted_divisor,
)
from neruba_cli.domain.catalog import PlanDef
from neruba_cli.domain.invoice import (
    InvoiceInput,
    MeterUsage,
    PhasePlan,
    SubscriptionTerms,
    UsagePiece,
    inputs_document,
    setup_document,
)
from neruba_cli.domain.periods import Period, Phase
from neruba_cli.domain.pricing import Charge

MARCH = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))  # 31 days
MICROSECOND = timedelta(microseconds=1)
SPAN = (MARCH[1] - MARCH[0]) // MICROSECOND
SEATS = MeterSpec("seats", "weighted_sum")
ABSOLUTE = MeterSpec("seats", "weighted_sum", gauge="absolute")
UNITS = Decimal("0.000000000001")

levels = st.decimals(min_value=-(10**9), max_value=10**9, places=3, allow_nan=False)
offsets = st.integers(0, SPAN)


def at(offset: int) -> datetime:
    return MARCH[0] + offset * MICROSECOND


def window(a: int, b: int) -> tuple[datetime, datetime]:
    low, high = sorted((a, b))
    return at(low), at(high)


def test_the_march_5_example_bills_27_of_31_days() -> None:
    start = datetime(2026, 3, 5, tzinfo=UTC)
    events = [EventRecord(start, Decimal(2500), {})]
    value = aggregate(SEATS, events, start, MARCH[1], period=MARCH)
    assert value == Decimal("2177.41935483871")  # 2500 × 27/31, rounded at 12 places
    assert aggregate(SEATS, events, start, MARCH[1]) == 2500  # the window alone: its average


@settings(max_examples=200)
@given(level=levels, a=offsets, b=offsets)
def test_a_constant_level_over_part_of_the_period_is_its_share(
    level: Decimal, a: int, b: int
) -> None:
    start, end = window(a, b)
    if start == end:
        return
    events = [EventRecord(start, level, {})]
    value = aggregate(SEATS, events, start, end, period=MARCH)
    exact = level * ((end - start) // MICROSECOND) / Decimal(SPAN)
    assert abs(value - exact) <= UNITS / 2 + Decimal("1e-20")


@settings(max_examples=200)
@given(
    changes=st.lists(st.tuples(offsets, levels), max_size=6),
    cut=st.integers(1, SPAN - 1),
    opening=levels,
)
def test_adjacent_windows_add_up_to_the_whole_period(
    changes: list[tuple[int, Decimal]], cut: int, opening: Decimal
) -> None:
    events = [EventRecord(at(offset), value, {}, n) for n, (offset, value) in enumerate(changes)]
    for meter in (SEATS, ABSOLUTE):
        whole = aggregate(meter, events, *MARCH, opening=opening)
        middle = at(cut)
        carried = _level(meter, events, opening, middle)
        first = aggregate(meter, events, MARCH[0], middle, opening=opening, period=MARCH)
        second = aggregate(meter, events, middle, MARCH[1], opening=carried, period=MARCH)
        # each piece rounds once at 12 places: the sum is within one unit of the whole
        assert abs(first + second - whole) <= UNITS


@settings(max_examples=200)
@given(changes=st.lists(st.tuples(offsets, levels), min_size=1, max_size=6), a=offsets, b=offsets)
def test_never_more_than_the_highest_level(
    changes: list[tuple[int, Decimal]], a: int, b: int
) -> None:
    start, end = window(a, b)
    if start == end:
        return
    events = [EventRecord(at(offset), value, {}, n) for n, (offset, value) in enumerate(changes)]
    value = aggregate(ABSOLUTE, events, start, end, period=MARCH)
    highest = max([Decimal(0), *(level for _, level in changes)])
    lowest = min([Decimal(0), *(level for _, level in changes)])
    assert lowest <= value <= highest


def test_the_window_must_lie_inside_the_period() -> None:
    assert weighted_divisor(*MARCH) == SPAN
    assert weighted_divisor(at(10), at(20), MARCH) == SPAN
    with pytest.raises(ValueError, match="not inside the period"):
        weighted_divisor(MARCH[0] - MICROSECOND, MARCH[1], MARCH)
    with pytest.raises(ValueError, match="not inside the period"):
        weighted_divisor(MARCH[0], MARCH[1] + MICROSECOND, MARCH)


@pytest.mark.parametrize(
    ("aggregation", "start_day", "marked"),
    [("weighted_sum", 5, True), ("weighted_sum", 1, False), ("sum", 5, False)],
)
def test_the_setup_marks_partial_weighted_sum_pieces_only(
    aggregation: str, start_day: int, marked: bool
) -> None:
    """Invoices stored before the full-period divisor divided such a piece by itself: the mark
    changes their setup fingerprint so a rerun reprices (and corrects) exactly those, and
    leaves every other invoice's inputs as they were."""
    period = Period(*MARCH)
    start = datetime(2026, 3, start_day, tzinfo=UTC)
    plan = PlanDef("team", "USD", "month", Decimal(0), "arrears", "day", 0,
                   (Charge("seats", "per_unit", unit_amount=Decimal("0.01")),))  # fmt: skip
    terms = SubscriptionTerms(
        id="sub_1",
        start=start,
        end=None,
        trial_end=None,
        phases=(
            PhasePlan(
                Phase(start, None, "team@1"),
                plan,
                "sha256:1",
                {"seats": MeterSpec("seats", aggregation)},  # type: ignore[arg-type]
            ),
        ),
        fee_periods=((period, "arrears"),),
        pieces=(UsagePiece("team@1", start, period.end, {"seats": MeterUsage(Decimal(1), 1)}),),
    )
    inputs = InvoiceInput("c1", "USD", "UTC", "half_even", period, "2026-03", (terms,))
    piece = setup_document(inputs_document(inputs))["subscriptions"][0]["pieces"][0]
    assert ("weighted_divisor" in piece) is marked
    if marked:
        assert piece["weighted_divisor"] == "period"


def _level(
    meter: MeterSpec, events: list[EventRecord], opening: Decimal, until: datetime
) -> Decimal:
    """The gauge's level at `until`: what a recurring meter's next piece opens with."""
    level = opening
    for event in sorted(events, key=lambda e: (e.timestamp, e.sequence)):
        if event.timestamp < until:
            level = level + event.quantity if meter.gauge == "delta" else event.quantity
    return level
