"""A month that has not started at a run's as-of instant (domain/future_months.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from neruba_cli.domain.future_months import not_started, refusal

DEC_6 = datetime(2026, 12, 6, 22, 0, tzinfo=UTC)


def test_a_month_of_next_year_is_not_started_and_the_same_month_of_this_year_is_suggested() -> None:
    reason = not_started("2027-05", as_of=DEC_6, project_tz="UTC")
    assert reason is not None
    assert reason.starts == datetime(2027, 5, 1, tzinfo=UTC)
    assert reason.suggestion == "2026-05"
    error = refusal(reason)
    assert error.exit_code == 2
    assert error.message.startswith(
        "period 2027-05 has not started: it starts at 2027-05-01T00:00:00Z, after the run's "
        "as-of instant 2026-12-06T22:00:00Z"
    )
    assert error.hint == "did you mean 2026-05? Or pass --allow-future to bill it in advance"


def test_started_months_and_the_first_instant_are_not_refused() -> None:
    assert not_started("2026-12", as_of=DEC_6, project_tz="UTC") is None  # current
    assert not_started("2026-05", as_of=DEC_6, project_tz="UTC") is None  # past
    start = datetime(2027, 1, 1, tzinfo=UTC)
    assert not_started("2027-01", as_of=start, project_tz="UTC") is None
    last_second = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    just_before = not_started("2027-01", as_of=last_second, project_tz="UTC")
    assert just_before is not None and just_before.suggestion == "2026-01"  # the year typo


def test_the_earliest_start_among_the_time_zones_decides() -> None:
    noon = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # December 1, 01:00 in Auckland
    assert (
        not_started("2026-12", as_of=noon, project_tz="UTC", time_zones=["Pacific/Auckland"])
        is None
    )
    reason = not_started("2026-12", as_of=noon, project_tz="America/New_York", time_zones=["UTC"])
    assert reason is not None and reason.starts == datetime(2026, 12, 1, tzinfo=UTC)
    assert reason.suggestion is None  # same year


def test_no_suggestion_when_the_same_month_of_this_year_has_not_started_either() -> None:
    june = datetime(2026, 6, 1, tzinfo=UTC)
    reason = not_started("2027-09", as_of=june, project_tz="UTC")
    assert reason is not None and reason.suggestion is None
    assert refusal(reason).hint == "pass --allow-future to bill it in advance"
