"""Meter aggregations: the pure reference on worked examples, then the SQL builder against it
on random events on every database."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, insert

from neruba_cli.db import usage_sql
from neruba_cli.db.schema import Customer, Event, Project
from neruba_cli.domain.aggregation import (
    AGGREGATIONS,
    GAUGES,
    EventRecord,
    Gauge,
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


# -- the SQL builder on every database ----------------------------------------------------------

PROJECT = "prj_agg"
CUSTOMERS = ("cus_a", "cus_b", "cus_c")


@pytest.fixture
def usage_engine(engine: Engine) -> Engine:
    """The engine with one project and three customers (events are added per test)."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(Project).values(
                id=PROJECT,
                slug="agg",
                name="Aggregations",
                currency="USD",
                timezone="UTC",
                rounding="half_even",
                created_at=now,
            )
        )
        conn.execute(
            insert(Customer),
            [
                {
                    "id": customer,
                    "project_id": PROJECT,
                    "external_id": customer,
                    "currency": "USD",
                    "timezone": "UTC",
                    "created_at": now,
                    "updated_at": now,
                }
                for customer in CUSTOMERS
            ],
        )
    return engine


def store(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """Replace the events table's content with these rows (id, customer, meter, ts, ...)."""
    with engine.begin() as conn:
        conn.execute(delete(Event))
        if rows:
            conn.execute(
                insert(Event),
                [
                    {
                        "project_id": PROJECT,
                        # Keys sort like the ids: ties in time break by key.
                        "idempotency_key": f"evt_{row['id']:012d}",
                        "payload_hash": "0" * 64,
                        "received_at": START,
                        "properties": "{}",
                        **row,
                    }
                    for row in rows
                ],
            )


def records(rows: list[dict[str, Any]], customer: str, meter: str) -> list[EventRecord]:
    """The rows as the reference sees them: properties parsed with exact decimals."""
    return [
        EventRecord(
            row["ts"],
            row["quantity"],
            json.loads(row["properties"], parse_float=Decimal),
            row["id"],
        )
        for row in rows
        if row["customer_id"] == customer and row["meter"] == meter
    ]


def parse_properties(text: str) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(text, parse_float=Decimal)
    return parsed


def usage(engine: Engine, meter: MeterSpec, **kwargs: Any) -> dict[str, Decimal]:
    with engine.connect() as conn:
        return usage_sql.aggregate_usage(conn, meter, project_id=PROJECT, **kwargs)


def assert_canonical(values: Mapping[str, Decimal]) -> None:
    for value in values.values():
        assert value.as_tuple() == canonical(value).as_tuple(), value


def test_sql_seats_example_on_every_database(usage_engine: Engine) -> None:
    store(
        usage_engine,
        [
            {"id": 1, "customer_id": "cus_a", "meter": "seats", "ts": START, "quantity": D(10)},
            {"id": 2, "customer_id": "cus_a", "meter": "seats", "ts": START + 10 * DAY,
             "quantity": D(10)},
            {"id": 3, "customer_id": "cus_b", "meter": "seats", "ts": START + 15 * DAY,
             "quantity": D(4)},
        ],
    )  # fmt: skip
    delta = MeterSpec("seats", "weighted_sum", recurring=True)
    result = usage(usage_engine, delta, start=START, end=END, openings={"cus_c": D("2.5")})
    assert result == {"cus_a": D("16.666666666667"), "cus_b": D(2), "cus_c": D("2.5")}
    assert_canonical(result)
    with usage_engine.connect() as conn:
        levels = usage_sql.closing_levels(
            conn, delta, project_id=PROJECT, start=START, end=END, openings={"cus_c": D("2.5")}
        )
    assert levels == {"cus_a": D(20), "cus_b": D(4), "cus_c": D("2.5")}


def test_sql_sums_stay_exact_past_28_digits(usage_engine: Engine) -> None:
    quantity = D("9999999999999999.999999999999")
    store(
        usage_engine,
        [
            {"id": i, "customer_id": "cus_a", "meter": "q", "ts": START, "quantity": quantity,
             "properties": json.dumps({"n": str(quantity)})}
            for i in range(1, 21)
        ],
    )  # fmt: skip
    expected = D("199999999999999999.99999999998")
    assert usage(usage_engine, MeterSpec("q", "sum"), start=START, end=END) == {"cus_a": expected}
    by_property = MeterSpec("q", "sum", "properties.n")
    assert usage(usage_engine, by_property, start=START, end=END) == {"cus_a": expected}


def test_sql_filters_and_keys_are_exact_strings(usage_engine: Engine) -> None:
    values: list[object] = ['é"x\\y😀', 'É"x\\y😀', 'é"x\\y😀 ', "1.5", "1.50", D("1.50"), 2]
    store(
        usage_engine,
        [
            {"id": i, "customer_id": "cus_a", "meter": "m", "ts": START, "quantity": D(1),
             "properties": json_text({"k": value, "region": value})}
            for i, value in enumerate(values, start=1)
        ],
    )  # fmt: skip
    unique = MeterSpec("m", "unique_count", "properties.k")
    assert usage(usage_engine, unique, start=START, end=END) == {"cus_a": D(6)}
    filtered = MeterSpec("m", "count", filters=(("region", 'é"x\\y😀'),))
    assert usage(usage_engine, filtered, start=START, end=END) == {"cus_a": D(1)}


TRICKY_VALUES: list[object] = [
    "3\n", " 1", "+2", "1e3", "1,5", "1.", ".5", "", "abc", "٣", True, False, None, [1], {"a": 1},
    "-0", "007", "-12.50", 0, -7, 12345678901234567890123, ("number", D("1.5E+2"), True),
    ("number", D("-0.0000000000005"), False), ("number", D("0.0000000000015"), False),
    "0.0000000000005", "-0.00000000000049", ("number", D("1E-20"), True), "1.5", 1.5,
]  # fmt: skip


def test_sql_number_rules_match_the_reference(usage_engine: Engine) -> None:
    """Every edge of "is this property a number, and which" gives the reference's answer."""
    rows = [
        {"id": i, "customer_id": "cus_a", "meter": "m1", "ts": START + i * MICROSECOND,
         "quantity": D(1), "properties": json_text({"n": value})}
        for i, value in enumerate(TRICKY_VALUES, start=1)
    ]  # fmt: skip
    store(usage_engine, rows)
    events = records(rows, "cus_a", "m1")
    for aggregation in AGGREGATIONS:
        meter = MeterSpec("m1", aggregation, "properties.n")
        expected = aggregate(meter, events, START, END)
        assert usage(usage_engine, meter, start=START, end=END) == {"cus_a": expected}, meter
    meter = MeterSpec("m1", "sum", "properties.n")
    with usage_engine.connect() as conn:
        streamed = tuple(
            usage_sql.transaction_values(
                conn, meter, project_id=PROJECT, customer_id="cus_a", start=START, end=END
            )
        )
    assert streamed == transaction_values(meter, events, START, END)
    assert streamed[:4] == (D(-0), D(7), D("-12.5"), D(0))


# -- property test: SQL == reference on random events -----------------------------------------


def json_text(properties: Mapping[str, object]) -> str:
    """JSON with Decimals written as JSON numbers, digit for digit (sometimes with exponents)."""
    parts: list[str] = []
    for name, value in properties.items():
        if isinstance(value, tuple):  # ("number", Decimal, use_exponent)
            _, number, exponent = value
            text = format(number, "e") if exponent else format(number, "f")
        elif isinstance(value, Decimal):
            text = format(value, "f")
        else:
            text = json.dumps(value, ensure_ascii=bool(len(parts) % 2))
        parts.append(f"{json.dumps(name)}: {text}")
    return "{" + ", ".join(parts) + "}"


decimals = st.decimals(
    min_value=-(10**10) + 1, max_value=10**10 - 1, places=12, allow_nan=False, allow_infinity=False
)
small_decimals = st.decimals(min_value=-1000, max_value=1000, places=14, allow_nan=False)
json_numbers = st.one_of(
    st.tuples(st.just("number"), st.one_of(decimals, small_decimals), st.booleans()),
    st.integers(min_value=-(10**10), max_value=10**10),
    # Around SQLite's 64-bit integers: its JSON reads the larger ones as floats.
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**20, -0]),
)
token_values = st.one_of(
    json_numbers,
    decimals.map(lambda d: format(d, "f")),  # numeric strings
    st.sampled_from(["abc", "", " 1", "1e3", "+2", "3\n", "1,5", True, False, None, [1], {"a": 1}]),
)
user_values = st.one_of(
    st.sampled_from(["alice", "Alice", "alice ", "é", "1.5", "1.50", "0", True, None]),
    st.sampled_from([D("1.5"), D("1.50"), D("-0.0"), D("0"), 2, D("2.000")]).map(
        lambda d: ("number", d, False) if isinstance(d, Decimal) else d
    ),
)
properties = st.fixed_dictionaries(
    {},
    optional={
        "region": st.sampled_from(["eu", "us", "EU", "eu ", "1", 1, True, "true"]),
        "tokens": token_values,
        "user": user_values,
    },
)
PERIODS = [timedelta(microseconds=7), timedelta(seconds=1), timedelta(hours=5), 30 * DAY, 31 * DAY]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[datetime, datetime, list[dict[str, Any]]]:
    start = START + timedelta(microseconds=draw(st.integers(0, 10**12)))
    length = draw(st.sampled_from(PERIODS))
    end = start + length
    span = length // MICROSECOND
    edges = [start, end, start - MICROSECOND, end - MICROSECOND, start + length / 2]
    times = st.one_of(
        st.sampled_from(edges),
        st.integers(-span // 4, span + span // 4).map(lambda us: start + us * MICROSECOND),
    )
    count = draw(st.integers(0, 24))
    ids = draw(st.permutations(list(range(1, count + 1))))
    rows = []
    for event_id in ids:
        rows.append(
            {
                "id": event_id,
                "customer_id": draw(st.sampled_from(CUSTOMERS)),
                "meter": draw(st.sampled_from(["m1", "m1", "m2"])),
                "ts": draw(times),
                "quantity": draw(decimals),
                "properties": json_text(draw(properties)),
            }
        )
    return start, end, rows


def meters() -> Iterator[MeterSpec]:
    # Filters whose value is also the text of a number or a boolean, and two filters at once.
    yield MeterSpec("m1", "count", filters=(("region", "1"),))
    yield MeterSpec("m1", "count", filters=(("region", "true"),))
    yield MeterSpec("m1", "count", filters=(("region", "eu"), ("user", "alice")))
    filters: list[tuple[tuple[str, str], ...]] = [(), (("region", "eu"),)]
    for aggregation in AGGREGATIONS:
        fields = ["quantity", "properties.tokens"]
        if aggregation == "unique_count":
            fields.append("properties.user")
        gauges: tuple[Gauge, ...] = GAUGES if aggregation == "weighted_sum" else ("delta",)
        for field in fields:
            for where in filters:
                for gauge in gauges:
                    yield MeterSpec("m1", aggregation, field, where, gauge=gauge)


openings_strategy = st.dictionaries(
    st.sampled_from(CUSTOMERS), st.one_of(st.just(D(0)), decimals), max_size=3
)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios(), openings=openings_strategy)
def test_sql_equals_the_reference(
    usage_engine: Engine,
    scenario: tuple[datetime, datetime, list[dict[str, Any]]],
    openings: dict[str, Decimal],
) -> None:
    start, end, rows = scenario
    store(usage_engine, rows)
    with usage_engine.connect() as conn:
        for meter in meters():
            given_openings = openings if meter.aggregation == "weighted_sum" else None
            got = usage_sql.aggregate_usage(
                conn, meter, project_id=PROJECT, start=start, end=end, openings=given_openings
            )
            assert_canonical(got)
            for customer in CUSTOMERS:
                opening = (given_openings or {}).get(customer, D(0))
                events = records(rows, customer, "m1")
                expected = aggregate(meter, events, start, end, opening=opening)
                assert got.get(customer, D(0)) == expected, (meter, customer)
                if meter.aggregation == "weighted_sum" and opening != 0:
                    assert customer in got
            if meter.aggregation == "weighted_sum":
                levels = usage_sql.closing_levels(
                    conn, meter, project_id=PROJECT, start=start, end=end, openings=openings
                )
                assert_canonical(levels)
                for customer in CUSTOMERS:
                    events = records(rows, customer, "m1")
                    opening = openings.get(customer, D(0))
                    expected = closing_level(meter, events, start, end, opening=opening)
                    assert levels.get(customer, D(0)) == expected, (meter, customer)
            if meter.aggregation == "sum":
                for customer in CUSTOMERS:
                    streamed = usage_sql.transaction_values(
                        conn, meter, project_id=PROJECT, customer_id=customer, start=start, end=end
                    )
                    expected_values = transaction_values(
                        meter, records(rows, customer, "m1"), start, end
                    )
                    assert tuple(streamed) == expected_values, (meter, customer)
        only_b = usage_sql.aggregate_usage(
            conn, MeterSpec("m1", "count"), project_id=PROJECT, start=start, end=end,
            customer_ids=["cus_b"],
        )  # fmt: skip
        assert set(only_b) <= {"cus_b"}
