"""Meter aggregations in SQL (db/usage_sql.py) against the pure reference of
domain/aggregation.py, on worked examples and on random events, on every database."""

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
from neruba_cli.db.schema import Event
from neruba_cli.domain.aggregation import (
    AGGREGATIONS,
    GAUGES,
    EventRecord,
    Gauge,
    MeterSpec,
    aggregate,
    closing_level,
    matches,
    reads,
    transaction_values,
)
from neruba_cli.domain.grouping import GroupKey, aggregate_groups, group_key, transaction_groups
from neruba_cli.domain.money import canonical
from neruba_cli.domain.periods import Period
from neruba_cli.domain.prorated_usage import prorated_units, weights
from tests.support.databases import seed_project

START = datetime(2026, 10, 1, tzinfo=UTC)
END = datetime(2026, 10, 31, tzinfo=UTC)  # 30 days
DAY = timedelta(days=1)
MICROSECOND = timedelta(microseconds=1)
D = Decimal


# -- the SQL builder on every database ----------------------------------------------------------

PROJECT = "prj_agg"
CUSTOMERS = ("cus_a", "cus_b", "cus_c")


@pytest.fixture
def usage_engine(engine: Engine) -> Engine:
    """The engine with one project and three customers (events are added per test)."""
    seed_project(engine, PROJECT, "agg", {customer: customer for customer in CUSTOMERS})
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
            row.get("operation") or "add",
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


def test_sql_weighted_sum_divides_by_the_full_period_on_every_database(
    usage_engine: Engine,
) -> None:
    """A window that is part of the billing period (a subscription starting on the 5th of a
    31-day month, a plan change) bills its share of the period, as the reference does."""
    march = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    fifth = datetime(2026, 3, 5, tzinfo=UTC)
    store(
        usage_engine,
        [
            {"id": 1, "customer_id": "cus_a", "meter": "seats", "ts": fifth, "quantity": D(2500)},
            {"id": 2, "customer_id": "cus_b", "meter": "seats", "ts": march[0],
             "quantity": D(2500)},
        ],
    )  # fmt: skip
    seats = MeterSpec("seats", "weighted_sum", recurring=True)
    late = usage(usage_engine, seats, start=fifth, end=march[1], period=march)
    assert late["cus_a"] == D("2177.41935483871")  # 2500 × 27/31
    before = usage(usage_engine, seats, start=march[0], end=fifth, period=march)
    after = usage(
        usage_engine, seats, start=fifth, end=march[1], openings={"cus_b": D(2500)}, period=march
    )
    assert (before["cus_b"], after["cus_b"]) == (D("322.58064516129"), D("2177.41935483871"))
    assert before["cus_b"] + after["cus_b"] == 2500
    reference = aggregate(seats, [EventRecord(fifth, D(2500), {})], fifth, march[1], period=march)
    assert late["cus_a"] == reference
    assert usage(usage_engine, seats, start=fifth, end=march[1])["cus_a"] == 2500  # no period


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
                "operation": draw(st.sampled_from([None, None, None, "remove"])),
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
                if aggregation in ("sum", "unique_count"):
                    yield MeterSpec("m1", aggregation, field, where, recurring=True)


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
            spans = usage_sql.event_stats(
                conn, meter, project_id=PROJECT, start=start, end=end, customer_ids=CUSTOMERS
            )
            for customer in CUSTOMERS:
                read = _read_events(meter, records(rows, customer, "m1"), start, end)
                n, first, last = spans.get(customer, (0, None, None))
                assert n == len(read), (meter, customer)
                if read:
                    assert (first, last) == (read[0].timestamp, read[-1].timestamp), meter
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


def _read_events(
    meter: MeterSpec, events: list[EventRecord], start: datetime, end: datetime
) -> list[EventRecord]:
    """The events of [start, end) an invoice line counts for the meter, oldest first."""
    inside = [e for e in events if start <= e.timestamp < end and matches(meter, e)]
    return sorted((e for e in inside if reads(meter, e)), key=lambda e: e.timestamp)


GROUPINGS: list[tuple[str, ...]] = [("region",), ("region", "user")]


def _nonzero(values: Mapping[GroupKey, Decimal]) -> dict[GroupKey, Decimal]:
    return {key: value for key, value in values.items() if value != 0}


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_sql_groups_equal_the_reference(
    usage_engine: Engine, scenario: tuple[datetime, datetime, list[dict[str, Any]]]
) -> None:
    """Pricing by property value: the meter per group (exact JSON strings; anything else is
    the group without a value) equals domain/grouping.py, with each group's event span and
    per-event values."""
    start, end, rows = scenario
    store(usage_engine, rows)
    with usage_engine.connect() as conn:
        for group_by in GROUPINGS:
            for meter in meters():
                got = usage_sql.aggregate_groups(
                    conn, meter, group_by, project_id=PROJECT, start=start, end=end
                )
                spans = usage_sql.group_event_stats(
                    conn,
                    meter,
                    group_by,
                    project_id=PROJECT,
                    start=start,
                    end=end,
                    customer_ids=list(CUSTOMERS),
                )
                for customer in CUSTOMERS:
                    assert_canonical(got.get(customer, {}))
                    events = records(rows, customer, "m1")
                    expected = aggregate_groups(meter, group_by, events, start, end)
                    mine = got.get(customer, {})
                    assert _nonzero(mine) == _nonzero(expected), (meter, group_by, customer)
                    values = transaction_groups(meter, group_by, events, start, end)
                    counted: dict[GroupKey, int] = {}
                    for event in _read_events(meter, events, start, end):
                        key = group_key(group_by, event.properties)
                        counted[key] = counted.get(key, 0) + 1
                    span_counts = {key: n for key, (n, _, _) in spans.get(customer, {}).items()}
                    assert span_counts == counted, (meter, group_by, customer)
                    if meter.aggregation == "sum":
                        streamed = usage_sql.group_transaction_values(
                            conn,
                            meter,
                            group_by,
                            project_id=PROJECT,
                            customer_id=customer,
                            start=start,
                            end=end,
                        )
                        assert streamed == {k: v for k, v in values.items() if v}, (meter,)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    scenario=scenarios(),
    mode=st.sampled_from(["day", "second"]),
    tz=st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata"]),
    split=st.integers(0, 4),
    ends_service=st.booleans(),
)
def test_sql_prorated_units_equal_the_reference(
    usage_engine: Engine,
    scenario: tuple[datetime, datetime, list[dict[str, Any]]],
    mode: str,
    tz: str,
    split: int,
    ends_service: bool,
) -> None:
    """Prorated units of recurring sum and unique_count meters (domain/prorated_usage.py):
    the SQL's Σ units × weight gives the reference's units, over a whole period and over a
    piece of it (as after a plan change)."""
    start, end, rows = scenario
    store(usage_engine, rows)
    period = Period(start, end)
    windows = [(start, end)]
    if split:  # a piece of the period, as after a plan change
        middle = start + (end - start) * split / 5
        if start < middle < end:
            windows += [(start, middle), (middle, end)]
    recurring = [m for m in meters() if m.aggregation in ("sum", "unique_count") and m.recurring]
    assert recurring
    with usage_engine.connect() as conn:
        for meter in recurring:
            for low, high in windows:
                grid = weights(low, high, period, mode, tz, ends_service=ends_service)
                got = usage_sql.prorated_usage(conn, meter, grid, project_id=PROJECT)
                assert_canonical(got)
                for customer in CUSTOMERS:
                    events = records(rows, customer, "m1")
                    expected = prorated_units(meter, events, grid)
                    assert got.get(customer, D(0)) == expected, (meter, customer, low, high)
