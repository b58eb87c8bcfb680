"""Unix times as Stripe sends them: whole seconds within the years 1 to 9999, or refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.unix_time import from_unix_seconds, optional_unix_seconds


def test_whole_seconds_become_utc_times() -> None:
    assert from_unix_seconds(0, field="created") == datetime(1970, 1, 1, tzinfo=UTC)
    assert from_unix_seconds(1_790_000_000, field="created").year == 2026
    assert optional_unix_seconds(None, field="created") is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1e20, "created: 1e+20 is not a whole number of Unix seconds"),
        (1.5, "created: 1.5 is not a whole number of Unix seconds"),
        ("yesterday", "created: 'yesterday' is not a whole number of Unix seconds"),
        ("1790000000", "created: '1790000000' is not a whole number of Unix seconds"),
        (False, "created: False is not a whole number of Unix seconds"),
        ({"a": 1}, "created: {'a': 1} is not a whole number of Unix seconds"),
        (10**15, "created: 1000000000000000 Unix seconds is outside the years 1 to 9999"),
        (-(10**12), "created: -1000000000000 Unix seconds is outside the years 1 to 9999"),
        ("x" * 100, "created: '" + "x" * 38 + "… is not a whole number of Unix seconds"),
    ],
)
def test_anything_else_is_refused_by_name(value: object, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        optional_unix_seconds(value, field="created")
    assert caught.value.message == message
