"""The token bucket behind the per-key rate limit of `neruba serve` (domain/token_bucket.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain.token_bucket import TokenBucket


def test_a_full_bucket_gives_its_burst_then_refills_at_the_rate() -> None:
    bucket = TokenBucket.full(rate=2, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # one token comes in half a second
    assert bucket.take(100.25) == pytest.approx(0.25)
    assert bucket.take(100.5) == 0.0
    assert bucket.take(200.0) == 0.0  # refilled, never past the burst
    assert bucket.tokens == pytest.approx(2.0)


def test_a_clock_that_goes_back_adds_nothing() -> None:
    bucket = TokenBucket.full(rate=1, burst=1, now=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) == pytest.approx(1.0)
    assert bucket.take(10.5) == pytest.approx(0.5)


def test_a_bucket_needs_a_rate_and_a_burst() -> None:
    with pytest.raises(ValueError):
        TokenBucket.full(rate=0, burst=1, now=0)
    with pytest.raises(ValueError):
        TokenBucket.full(rate=1, burst=0, now=0)


@given(
    rate=st.floats(min_value=0.1, max_value=1000),
    burst=st.integers(min_value=1, max_value=100),
    gaps=st.lists(st.floats(min_value=0, max_value=5), max_size=200),
)
def test_never_more_than_the_burst_plus_the_rate_over_the_elapsed_time(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket.full(rate, burst, now=0.0)
    now, granted = 0.0, 0
    for gap in gaps:
        now += gap
        if bucket.take(now) == 0.0:
            granted += 1
    assert granted <= burst + rate * now + 1e-6
