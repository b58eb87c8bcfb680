"""Meter aggregations: the pure reference on worked examples (tests/integration/test_usage_sql.py
checks the SQL builder against it on every database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from neruba_cli.domain.aggregation import (
    EventRecord,
    MeterSpec,
    aggregate,
    closing_level,
    field_value,
    matches,
    transaction_values,
)
from neruba_cli.domain.money import canonical

START = datetime(2026, 10, 1, tzinfo=UTC)
END = datetime(2026, 10, 31, tzinfo=UTC)  # 30 days
DAY = timedelta(days=1)
MICROSECOND = timedelta(microseconds=1)
D = Decimal


def ev(at: datetime, quantity: str = "1", seq: int = 0, **properties: object) -> EventRecord:
    return EventRecord(at, Decimal(quantity), properties, seq)


def agg(meter: MeterSpec, events: list[EventRecord], **kwargs: Any) -> Decimal:
    return aggregate(meter, events, START, END, **kwargs)


# -- the pure reference on worked examples ----------------------------------------------------


def test_count_counts_matching_events_without_reading_the_field() -> None:
    meter = MeterSpec("calls", "count", "properties.tokens", filters=(("region", "eu"),))
    events = [
        ev(START, region="eu"),  # no tokens at all: still counted
        ev(START + DAY, region="eu", tokens="abc"),
        ev(START + DAY, region="us", tokens=5),
        ev(START + DAY, tokens=5),
    ]
    assert agg(meter, events) == 2


def test_lago_sum_example() -> None:
    # Lago, "SUM" aggregation, calculation example: total_requests 20 and 10 → 30 units.
    # https://getlago.com/docs/guide/billable-metrics/aggregation-types/sum
    meter = MeterSpec("api_requests", "sum", "properties.total_requests")
    events = [
        ev(datetime(2022, 3, 16, tzinfo=UTC), total_requests=20),
        ev(datetime(2022, 3, 17, tzinfo=UTC), total_requests=10),
    ]
    march = (datetime(2022, 3, 1, tzinfo=UTC), datetime(2022, 4, 1, tzinfo=UTC))
    assert aggregate(meter, events, *march) == 30


def test_lago_latest_example() -> None:
    # Lago changelog, "LATEST aggregation": 5 GB, then 7 GB, then 6 GB → 6.
    # https://getlago.com/changelog/latest-aggregation-type
    meter = MeterSpec("storage", "latest", "properties.gb")
    events = [ev(START, gb=5), ev(START + DAY, gb=7), ev(START + 2 * DAY, gb=6)]
    assert agg(meter, events) == 6


def test_sum_skips_missing_and_non_numeric_values() -> None:
    meter = MeterSpec("tokens", "sum", "properties.tokens")
    events = [
        ev(START, tokens=10),
        ev(START, tokens="2.5"),  # a numeric string is a number
        ev(START, tokens=D("0.25")),
        ev(START, tokens=0.125),  # a float through its shortest repr
        ev(START, tokens=True),  # booleans are not numbers
        ev(START, tokens="1e3"),  # no exponents in strings
        ev(START, tokens=" 4"),  # no spaces
        ev(START, tokens="+4"),
        ev(START, tokens="4\n"),
        ev(START, tokens="1,000"),
        ev(START, tokens=None),
        ev(START, tokens={"n": 1}),
        ev(START),  # missing
    ]
    assert agg(meter, events) == D("12.875")
    assert agg(MeterSpec("q", "sum"), events) == 13  # quantity defaults to 1


def test_values_round_to_twelve_places_half_away_from_zero() -> None:
    meter = MeterSpec("tokens", "sum", "properties.tokens")
    assert field_value(meter, ev(START, tokens=D("0.0000000000005"))) == D("1E-12")
    assert field_value(meter, ev(START, tokens=D("-0.0000000000005"))) == D("-1E-12")
    assert field_value(meter, ev(START, tokens="0.00000000000049")) == 0
    assert field_value(meter, ev(START, tokens=D("1.5E+2"))) == 150


def test_sums_never_round_to_a_decimal_context() -> None:
    quantity = "9999999999999999.999999999999"  # 28 digits: the default context's limit
    events = [ev(START, quantity) for _ in range(20)]
    total = agg(MeterSpec("q", "sum"), events)
    assert str(total) == "199999999999999999.99999999998"


def test_max_is_zero_without_values_and_keeps_negatives() -> None:
    meter = MeterSpec("peak", "max")
    assert agg(meter, []) == 0
    assert agg(meter, [ev(START, "-3"), ev(START, "-1.5")]) == D("-1.5")
    assert agg(meter, [ev(START, "2"), ev(START + DAY, "7.25"), ev(START, "7")]) == D("7.25")


def test_unique_count_by_canonical_text() -> None:
    meter = MeterSpec("users", "unique_count", "properties.user")
    events = [
        ev(START, user="alice"),
        ev(START, user="Alice"),  # case matters
        ev(START, user="alice "),  # so do trailing spaces
        ev(START, user="alice"),
        ev(START, user=D("1.50")),  # the number 1.5 ...
        ev(START, user="1.5"),  # ... and the string "1.5" are one value
        ev(START, user="1.50"),  # but the string "1.50" is another
        ev(START, user=0),
        ev(START, user=D("-0.0")),  # canonical "0"
        ev(START, user=True),  # skipped
        ev(START, user=None),
        ev(START),
    ]
    assert agg(meter, events) == 6
    quantities = [ev(START, "1.5"), ev(START, "1.50"), ev(START, "2")]
    assert agg(MeterSpec("q", "unique_count"), quantities) == 2


def test_latest_orders_by_timestamp_then_sequence() -> None:
    meter = MeterSpec("level", "latest")
    events = [ev(START + DAY, "5", seq=2), ev(START + DAY, "9", seq=1), ev(START, "7", seq=3)]
    assert agg(meter, events) == 5
    assert agg(meter, []) == 0
    skipping = MeterSpec("level", "latest", "properties.n")
    assert agg(skipping, [ev(START, n=4), ev(START + DAY, n="x")]) == 4


def test_period_includes_its_start_and_excludes_its_end() -> None:
    meter = MeterSpec("calls", "count")
    events = [
        ev(START - MICROSECOND),
        ev(START),
        ev(END - MICROSECOND),
        ev(END),
    ]
    assert agg(meter, events) == 2


def test_filters_compare_json_strings_exactly() -> None:
    meter = MeterSpec("calls", "count", filters=(("region", "eu"), ("tier", "1")))
    assert matches(meter, ev(START, region="eu", tier="1"))
    assert not matches(meter, ev(START, region="eu", tier=1))  # a number is not "1"
    assert not matches(meter, ev(START, region="EU", tier="1"))
    assert not matches(meter, ev(START, region="eu ", tier="1"))
    assert not matches(meter, ev(START, region="eu"))
    assert not matches(meter, ev(START, region=None, tier="1"))


def test_weighted_sum_of_deltas_seats_example() -> None:
    # 10 seats for the first 10 days of a 30-day period, then 20: (10×10 + 20×20) / 30.
    meter = MeterSpec("seats", "weighted_sum")
    events = [ev(START, "10", seq=1), ev(START + 10 * DAY, "10", seq=2)]
    assert agg(meter, events) == D("16.666666666667")
    assert closing_level(meter, events, START, END) == 20


def test_weighted_sum_of_absolute_levels() -> None:
    meter = MeterSpec("seats", "weighted_sum", gauge="absolute")
    events = [ev(START, "10", seq=1), ev(START + 10 * DAY, "20", seq=2)]
    assert agg(meter, events) == D("16.666666666667")
    # One day at 30 from day 15: the level before is the absolute 20, not 20 + 30.
    more = [*events, ev(START + 15 * DAY, "30", seq=3), ev(START + 16 * DAY, "20", seq=4)]
    assert agg(meter, more) == 17  # (10×10 + 20×5 + 30×1 + 20×14) / 30 = 510 / 30
    assert closing_level(meter, more, START, END) == 20


def test_weighted_sum_opening_level_carries_over() -> None:
    # Recurring: 10 seats open the period; +10 on day 10 gives the seats example again.
    meter = MeterSpec("seats", "weighted_sum", recurring=True)
    events = [ev(START + 10 * DAY, "10")]
    assert agg(meter, events, opening=D(10)) == D("16.666666666667")
    assert agg(meter, [], opening=D("2.5")) == D("2.5")
    assert closing_level(meter, events, START, END, opening=D(10)) == 20
    # Absolute gauge: the opening holds until the first event sets a new level.
    absolute = MeterSpec("seats", "weighted_sum", recurring=True, gauge="absolute")
    assert agg(absolute, [ev(START + 15 * DAY, "4")], opening=D(2)) == 3
    assert closing_level(absolute, [], START, END, opening=D(2)) == 2


def test_weighted_sum_rounds_once_half_away_from_zero() -> None:
    meter = MeterSpec("gb", "weighted_sum")
    second = datetime(2026, 1, 1, tzinfo=UTC)
    window = (second, second + timedelta(microseconds=8))
    # 1e-12 held for 4 of 8 µs: exactly half a unit of the 12th place rounds away from zero.
    half = [ev(second + 4 * MICROSECOND, "0.000000000001")]
    assert aggregate(meter, half, *window) == D("1E-12")
    negative = [ev(second + 4 * MICROSECOND, "-0.000000000001")]
    assert aggregate(meter, negative, *window) == D("-1E-12")
    under = [ev(second + 5 * MICROSECOND, "0.000000000001")]  # 3/8 of a unit
    assert aggregate(meter, under, *window) == 0


def test_weighted_sum_ignores_events_before_the_period_unless_given_as_opening() -> None:
    meter = MeterSpec("seats", "weighted_sum")
    assert agg(meter, [ev(START - DAY, "10")]) == 0


def test_transaction_values_in_event_order() -> None:
    meter = MeterSpec("payments", "sum", "properties.amount", filters=(("kind", "card"),))
    events = [
        ev(START + DAY, seq=2, kind="card", amount="20"),
        ev(START + DAY, seq=1, kind="card", amount="15.50"),
        ev(START, seq=9, kind="card", amount=5),
        ev(START, seq=3, kind="bank", amount=100),
        ev(START, seq=4, kind="card", amount="n/a"),
    ]
    assert transaction_values(meter, events, START, END) == (D(5), D("15.5"), D(20))


def test_results_are_canonical_decimals() -> None:
    assert str(agg(MeterSpec("q", "sum"), [ev(START, "1.500"), ev(START, "98.5")])) == "100"
    assert str(agg(MeterSpec("q", "sum"), [ev(START, "1.250"), ev(START, "0.25")])) == "1.5"
    assert str(canonical(D("1E+2"))) == "100"
    assert str(canonical(D("-0.000"))) == "0"
    assert str(canonical(D("12345678901234567890123456.123456789010"))) == (
        "12345678901234567890123456.12345678901"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aggregation": "avg"}, "unknown aggregation"),
        ({"aggregation": "sum", "field": "tokens"}, "must be 'quantity'"),
        ({"aggregation": "sum", "field": "properties.1x"}, "must be 'quantity'"),
        ({"aggregation": "sum", "field": "properties.a-b"}, "must be 'quantity'"),
        ({"aggregation": "sum", "field": "properties.a'"}, "must be 'quantity'"),
        ({"aggregation": "sum", "filters": (("a.b", "x"),)}, "is not a name"),
        ({"aggregation": "sum", "filters": (("a", "x"), ("a", "y"))}, "appears twice"),
        ({"aggregation": "weighted_sum", "gauge": "level"}, "gauge"),
    ],
)
def test_meter_spec_rejects_bad_definitions(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MeterSpec("m", **kwargs)


def test_meter_spec_sorts_filters_and_periods_must_be_aware_and_ordered() -> None:
    meter = MeterSpec("m", "count", filters=(("z", "1"), ("a", "2")))
    assert meter.filters == (("a", "2"), ("z", "1"))
    with pytest.raises(ValueError, match="empty period"):
        aggregate(meter, [], END, START)
    with pytest.raises(ValueError, match="aware"):
        aggregate(meter, [], START.replace(tzinfo=None), END)


def test_closing_level_is_only_for_weighted_sum() -> None:
    with pytest.raises(ValueError, match="weighted_sum"):
        closing_level(MeterSpec("m", "sum"), [], START, END)
