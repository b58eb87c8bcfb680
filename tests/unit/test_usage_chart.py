"""The chart math of `usage show`: local day and hour buckets that cover a period exactly (DST
nights, half-hour zones, a skipped day), and bars that grow with the value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.periods import month_period
from neruba_cli.domain.usage_chart import (
    EIGHTHS,
    bar,
    bar_eighths,
    buckets,
    granularity,
)

ZONES = (
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Pacific/Chatham",
    "Pacific/Apia",
)

instants = st.datetimes(
    min_value=datetime(2010, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)
spans = st.tuples(instants, st.integers(min_value=1, max_value=40 * 24 * 3600))
values = st.decimals(min_value=-10, max_value=10**6, places=3, allow_nan=False)


@given(spans, st.sampled_from(ZONES), st.sampled_from(("day", "hour")))
def test_buckets_cover_the_period_exactly_in_order(
    span: tuple[datetime, int], tz: str, by: str
) -> None:
    start, seconds = span
    end = start + timedelta(seconds=seconds)
    found = buckets(start, end, granularity(by), tz)
    assert found[0].start == start and found[-1].end == end
    for before, after in pairwise(found):
        assert before.end == after.start
    for bucket in found:
        assert bucket.start < bucket.end
        assert bucket.end - bucket.start <= timedelta(hours=25 if by == "day" else 2)
    assert len({bucket.label for bucket in found}) == len(found)


@given(spans, st.sampled_from(ZONES))
def test_inner_boundaries_are_local_midnights_and_local_hours(
    span: tuple[datetime, int], tz: str
) -> None:
    start, seconds = span
    end = start + timedelta(seconds=seconds)
    zone = ZoneInfo(tz)
    days = buckets(start, end, "day", tz)
    for bucket in days[1:]:
        local = bucket.start.astimezone(zone)
        before = (bucket.start - timedelta(microseconds=1)).astimezone(zone)
        assert local.date() != before.date()  # the first instant of a local day
        assert bucket.label == local.date().isoformat()
    for bucket in buckets(start, end, "hour", tz)[1:]:
        local = bucket.start.astimezone(zone)
        assert (local.minute, local.second, local.microsecond) == (0, 0, 0)


@pytest.mark.parametrize(
    ("label", "tz", "days", "hours"),
    [
        ("2026-10", "UTC", 31, 744),
        ("2026-03", "America/New_York", 31, 743),  # spring forward: no 02:00
        ("2026-11", "America/New_York", 30, 721),  # fall back: 01:00 twice
        ("2026-10", "Asia/Kolkata", 31, 744),
        ("2011-12", "Pacific/Apia", 30, 720),  # Samoa skipped December 30th, 2011
    ],
)
def test_a_month_has_its_local_days_and_hours(label: str, tz: str, days: int, hours: int) -> None:
    month = month_period(label, tz)
    found = buckets(month.start, month.end, "day", tz)
    assert len(found) == days
    assert found[0].label == f"{label}-01"
    assert len(buckets(month.start, month.end, "hour", tz)) == hours


def test_a_repeated_hour_is_told_apart_by_its_offset() -> None:
    month = month_period("2026-11", "America/New_York")
    labels = [b.label for b in buckets(month.start, month.end, "hour", "America/New_York")]
    assert labels[:4] == [
        "2026-11-01 00:00",
        "2026-11-01 01:00-04:00",
        "2026-11-01 01:00-05:00",
        "2026-11-01 02:00",
    ]


def test_a_boundary_inside_a_bucket_is_clipped() -> None:
    start = datetime(2026, 10, 3, 10, 30, tzinfo=UTC)
    found = buckets(start, start + timedelta(days=1), "day", "UTC")
    assert [(b.start.hour, b.start.minute, b.label) for b in found] == [
        (10, 30, "2026-10-03"),
        (0, 0, "2026-10-04"),
    ]
    assert found[0].end == datetime(2026, 10, 4, tzinfo=UTC)


def test_bad_input_is_refused() -> None:
    with pytest.raises(InvalidInput, match="day or hour"):
        granularity("week")
    moment = datetime(2026, 10, 1, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="empty period"):
        buckets(moment, moment, "day", "UTC")
    with pytest.raises(InvalidInput):
        buckets(moment, moment + timedelta(days=1), "day", "Mars/Olympus")
    assert granularity(" Hour ") == "hour"


@given(values, values, st.integers(min_value=1, max_value=120))
def test_bars_grow_with_the_value(a: Decimal, b: Decimal, width: int) -> None:
    largest = max(a, b, Decimal(1))
    low, high = sorted((a, b))
    assert bar_eighths(low, largest, width) <= bar_eighths(high, largest, width)


@given(values, st.integers(min_value=1, max_value=120))
def test_the_largest_value_fills_the_width_and_nothing_exceeds_it(
    value: Decimal, width: int
) -> None:
    largest = max(value, Decimal("0.001"))
    assert bar_eighths(largest, largest, width) == width * EIGHTHS
    eighths = bar_eighths(value, largest, width)
    assert 0 <= eighths <= width * EIGHTHS
    assert (eighths > 0) == (value > 0)  # a positive value never looks like zero
    drawn = bar(eighths)
    assert len(drawn) == -(-eighths // EIGHTHS)  # whole blocks plus one partial
    assert len(drawn) <= width


def test_bar_characters() -> None:
    assert bar(0) == ""
    assert bar(1) == "▏"
    assert bar(12) == "█▌"
    assert bar(16) == "██"
    assert bar_eighths(Decimal(5), Decimal(10), 10) == 40
    assert bar_eighths(Decimal(0), Decimal(0), 10) == 0
    with pytest.raises(ValueError):
        bar_eighths(Decimal(1), Decimal(1), 0)


@pytest.mark.parametrize("tz", ["UTC", "America/Los_Angeles", "Pacific/Kiritimati"])
@pytest.mark.parametrize("label", ["0001-01", "9999-11"])
@pytest.mark.parametrize("by", ["day", "hour"])
def test_buckets_at_the_ends_of_the_calendar(tz: str, label: str, by: str) -> None:
    # the day of margin before the first month (or after the last) lies outside the calendar
    month = month_period(label, tz)
    found = buckets(month.start, month.end, by, tz)  # type: ignore[arg-type]
    assert found[0].start == month.start and found[-1].end == month.end
    assert all(a.end == b.start for a, b in pairwise(found))
    assert 28 <= len(found) // (24 if by == "hour" else 1) <= 31
