from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.timestamps import add_months, format_ts, parse_since, parse_ts

NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)


def test_parse_requires_an_offset() -> None:
    with pytest.raises(InvalidInput, match="no time-zone offset"):
        parse_ts("2026-10-03T12:00:00")
    assert parse_ts("2026-10-03T14:00:00+02:00") == datetime(2026, 10, 3, 12, tzinfo=UTC)


def test_format_is_rfc3339_utc_with_z() -> None:
    assert format_ts(datetime(2026, 10, 3, 12, tzinfo=UTC)) == "2026-10-03T12:00:00Z"
    assert format_ts(None) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", datetime(2026, 3, 24, 12, tzinfo=UTC)),
        ("1m", datetime(2026, 2, 28, 12, tzinfo=UTC)),
        ("13m", datetime(2025, 2, 28, 12, tzinfo=UTC)),
        ("2026-01-02", datetime(2026, 1, 2, tzinfo=UTC)),
        ("2026-01-02T00:00:00Z", datetime(2026, 1, 2, tzinfo=UTC)),
    ],
)
def test_since_accepts_durations_dates_and_timestamps(text: str, expected: datetime) -> None:
    assert parse_since(text, now=NOW) == expected


def test_since_rejects_garbage() -> None:
    with pytest.raises(InvalidInput):
        parse_since("yesterday", now=NOW)


@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2400, 1, 1)),
    st.integers(-600, 600),
)
def test_add_months_lands_in_the_right_month_and_never_overflows(
    moment: datetime, months: int
) -> None:
    shifted = add_months(moment, months)
    assert (shifted.year * 12 + shifted.month) - (moment.year * 12 + moment.month) == months
    assert shifted.day <= moment.day
    assert shifted.time() == moment.time()
