"""Billing periods and proration (domain/periods.py): pure values, no database."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal, localcontext
from fractions import Fraction
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neruba_cli.domain.billing_periods import check_label
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.periods import (
    ANCHORS,
    INTERVALS,
    Anchor,
    Interval,
    Period,
    Phase,
    month_period,
    period_containing,
    periods_between,
    prorate,
    service_fraction,
    split_period,
    trial_end,
)

PARIS = "Europe/Paris"
NEW_YORK = "America/New_York"
KOLKATA = "Asia/Kolkata"
# Property tests also cover a 30-minute DST (Lord Howe), a +12:45 offset (Chatham), and zones
# whose DST changes happen at midnight (Santiago: midnight skipped; Havana: midnight repeated).
ZONES = [
    "UTC",
    PARIS,
    NEW_YORK,
    KOLKATA,
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/Santiago",
    "America/Havana",
]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def at(tz: str, *args: int, fold: int = 0) -> datetime:
    """A local wall-clock time in tz, as aware UTC."""
    return datetime(*args, tzinfo=ZoneInfo(tz), fold=fold).astimezone(UTC)  # type: ignore[misc]


def wall(moment: datetime, tz: str) -> datetime:
    """The naive local wall-clock time of an instant."""
    return moment.astimezone(ZoneInfo(tz)).replace(tzinfo=None)


def containing(
    moment: datetime,
    interval: Interval,
    tz: str,
    anchor: Anchor = "calendar",
    anchor_at: datetime | None = None,
) -> Period:
    return period_containing(
        moment, interval=interval, anchor=anchor, anchor_at=anchor_at or moment, tz=tz
    )


def anniversaries(anchor_at: datetime, count: int, interval: Interval, tz: str) -> list[datetime]:
    periods = periods_between(
        anchor_at,
        anchor_at + timedelta(days=1),
        interval=interval,
        anchor="anniversary",
        anchor_at=anchor_at,
        tz=tz,
    )
    starts = [periods[0].start]
    while len(starts) < count:
        starts.append(
            containing(starts[-1] + timedelta(days=1), interval, tz, "anniversary", anchor_at).end
        )
    return starts


# --------------------------------------------------------------------------- calendar periods


def test_calendar_month_in_paris_across_the_autumn_change() -> None:
    october = month_period("2026-10", PARIS)
    assert october == Period(utc(2026, 9, 30, 22), utc(2026, 10, 31, 23))  # CEST in, CET out
    assert october.end - october.start == timedelta(days=31, hours=1)
    assert wall(october.start, PARIS) == datetime(2026, 10, 1)
    assert wall(october.end, PARIS) == datetime(2026, 11, 1)
    march = month_period("2026-03", PARIS)
    assert march == Period(utc(2026, 2, 28, 23), utc(2026, 3, 31, 22))
    assert march.end - march.start == timedelta(days=30, hours=23)


def test_calendar_months_in_new_york_move_in_utc_not_locally() -> None:
    march = month_period("2026-03", NEW_YORK)  # clocks spring forward on March 8
    assert march == Period(utc(2026, 3, 1, 5), utc(2026, 4, 1, 4))
    assert march.end - march.start == timedelta(days=31) - timedelta(hours=1)
    november = month_period("2026-11", NEW_YORK)  # clocks fall back on November 1, 02:00
    assert november == Period(utc(2026, 11, 1, 4), utc(2026, 12, 1, 5))
    assert november.end - november.start == timedelta(days=30, hours=1)
    for period in (march, november):
        assert wall(period.start, NEW_YORK).time() == time(0)
        assert wall(period.end, NEW_YORK).time() == time(0)


def test_calendar_month_with_a_half_hour_offset_and_in_utc() -> None:
    assert month_period("2026-10", KOLKATA) == Period(
        utc(2026, 9, 30, 18, 30), utc(2026, 10, 31, 18, 30)
    )
    assert month_period("2026-02", "UTC") == Period(utc(2026, 2, 1), utc(2026, 3, 1))
    assert month_period("2028-02", "UTC") == Period(utc(2028, 2, 1), utc(2028, 3, 1))
    assert month_period("2026-12", "UTC") == Period(utc(2026, 12, 1), utc(2027, 1, 1))
    assert month_period(" 2026-10 ", "UTC") == month_period("2026-10", "UTC")


@pytest.mark.parametrize("tz", ZONES)
def test_every_month_of_the_year_starts_at_local_midnight_on_the_first(tz: str) -> None:
    for month in range(1, 13):
        period = month_period(f"2026-{month:02d}", tz)
        assert wall(period.start, tz).date().day == 1
        assert wall(period.start, tz).date().month == month
        assert period == containing(period.start, "month", tz)
        assert period.start.tzinfo is UTC and period.end.tzinfo is UTC


@pytest.mark.parametrize("label", ["2026-13", "Oct 2026", "2026-00", "2026-1", "", "0000-05"])
def test_month_period_rejects_bad_labels(label: str) -> None:
    with pytest.raises(InvalidInput, match="not a month") as caught:
        month_period(label, "UTC")
    assert caught.value.hint == "write YYYY-MM, e.g. 2026-10"


@pytest.mark.parametrize(
    ("label", "relative", "expected"),
    [
        ("2026-10", True, "2026-10"),
        (" Previous ", True, "previous"),
        ("current", True, "current"),
        ("2026-12", False, "2026-12"),
        ("0001-01", False, "0001-01"),
    ],
)
def test_check_label_reads_a_command_line_month(label: str, relative: bool, expected: str) -> None:
    assert check_label(label, relative=relative) == expected


@pytest.mark.parametrize("label", ["2026-13", "2026-00", "0000-05", "2026-1", "october", ""])
def test_check_label_names_the_field(label: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_label(label, field="--period")
    assert caught.value.message == f"--period: {label!r} is not a month"
    assert caught.value.hint == "YYYY-MM, previous or current"
    with pytest.raises(InvalidInput, match="not a month"):
        check_label("previous", relative=False)


def test_unknown_time_zone_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="unknown time zone"):
        month_period("2026-10", "Mars/Olympus")


def test_weeks_start_on_monday_at_local_midnight() -> None:
    thursday = at(PARIS, 2026, 10, 8, 12)
    week = containing(thursday, "week", PARIS)
    assert week == Period(at(PARIS, 2026, 10, 5), at(PARIS, 2026, 10, 12))
    assert week == Period(utc(2026, 10, 4, 22), utc(2026, 10, 11, 22))
    assert containing(at(PARIS, 2026, 10, 11, 23, 59, 59), "week", PARIS) == week
    assert containing(at(PARIS, 2026, 10, 12), "week", PARIS).start == week.end
    # The week of the autumn change is an hour longer in UTC.
    change = containing(at(PARIS, 2026, 10, 25, 12), "week", PARIS)
    assert change == Period(utc(2026, 10, 18, 22), utc(2026, 10, 25, 23))
    # Weeks ignore year ends: Jan 1 2026 is a Thursday.
    assert containing(utc(2026, 1, 1), "week", "UTC") == Period(utc(2025, 12, 29), utc(2026, 1, 5))


def test_quarters_and_years() -> None:
    q2 = containing(at(PARIS, 2026, 5, 15, 9), "quarter", PARIS)
    assert q2 == Period(at(PARIS, 2026, 4, 1), at(PARIS, 2026, 7, 1))
    assert q2 == Period(utc(2026, 3, 31, 22), utc(2026, 6, 30, 22))
    q4 = containing(at(NEW_YORK, 2026, 11, 15), "quarter", NEW_YORK)
    assert q4 == Period(utc(2026, 10, 1, 4), utc(2027, 1, 1, 5))
    assert containing(q4.start, "quarter", NEW_YORK) == q4  # a boundary belongs to what it starts
    assert containing(q4.start - timedelta(microseconds=1), "quarter", NEW_YORK).end == q4.start
    year = containing(at(KOLKATA, 2026, 7, 1), "year", KOLKATA)
    assert year == Period(utc(2025, 12, 31, 18, 30), utc(2026, 12, 31, 18, 30))
    assert containing(utc(2028, 12, 31, 23), "year", "UTC") == Period(
        utc(2028, 1, 1), utc(2029, 1, 1)
    )


def test_calendar_anchor_ignores_anchor_at() -> None:
    moment = utc(2026, 10, 8, 12)
    for anchor_at in (utc(2020, 3, 17, 5), utc(2031, 1, 31, 23)):
        assert containing(moment, "month", "UTC", "calendar", anchor_at) == month_period(
            "2026-10", "UTC"
        )


def test_periods_between_lists_overlapping_periods_in_order() -> None:
    periods = periods_between(
        utc(2026, 10, 15),
        utc(2027, 1, 1),
        interval="month",
        anchor="calendar",
        anchor_at=utc(2026, 10, 15),
        tz="UTC",
    )
    assert [p.start.month for p in periods] == [10, 11, 12]
    assert (
        periods_between(
            utc(2026, 10, 15),
            utc(2026, 10, 15),
            interval="month",
            anchor="calendar",
            anchor_at=utc(2026, 10, 15),
            tz="UTC",
        )
        == []
    )
    one_microsecond = periods_between(
        utc(2026, 10, 31, 23, 59, 59, 999999),
        utc(2026, 11, 1),
        interval="month",
        anchor="calendar",
        anchor_at=utc(2026, 1, 1),
        tz="UTC",
    )
    assert one_microsecond == [month_period("2026-10", "UTC")]


# --------------------------------------------------------------------------- anniversary periods


def test_anniversary_on_january_31_clamps_from_the_original_day() -> None:
    starts = anniversaries(utc(2026, 1, 31, 10), 6, "month", "UTC")
    assert [s.date().isoformat() for s in starts] == [
        "2026-01-31",
        "2026-02-28",
        "2026-03-31",
        "2026-04-30",
        "2026-05-31",
        "2026-06-30",
    ]
    assert all(s.time() == time(10) for s in starts)
    leap = anniversaries(utc(2028, 1, 31, 10), 3, "month", "UTC")
    assert [s.date().isoformat() for s in leap] == ["2028-01-31", "2028-02-29", "2028-03-31"]


def test_anniversary_periods_extend_before_the_anchor() -> None:
    anchor_at = utc(2026, 1, 31, 10)
    before = containing(utc(2026, 1, 10), "month", "UTC", "anniversary", anchor_at)
    assert before == Period(utc(2025, 12, 31, 10), anchor_at)
    assert containing(anchor_at, "month", "UTC", "anniversary", anchor_at).start == anchor_at


def test_quarterly_anniversary_clamps_to_month_end() -> None:
    starts = anniversaries(utc(2026, 8, 31, 9), 5, "quarter", "UTC")
    assert [s.date().isoformat() for s in starts] == [
        "2026-08-31",
        "2026-11-30",
        "2027-02-28",
        "2027-05-31",
        "2027-08-31",
    ]


def test_yearly_anniversary_on_february_29() -> None:
    starts = anniversaries(utc(2028, 2, 29, 12), 5, "year", "UTC")
    assert [s.date().isoformat() for s in starts] == [
        "2028-02-29",
        "2029-02-28",
        "2030-02-28",
        "2031-02-28",
        "2032-02-29",
    ]


def test_anniversary_at_half_past_midnight_keeps_local_time_across_dst() -> None:
    anchor_at = at(NEW_YORK, 2026, 2, 15, 0, 30)
    starts = anniversaries(anchor_at, 10, "month", NEW_YORK)
    assert all(wall(s, NEW_YORK) == datetime(s.year, s.month, 15, 0, 30) for s in starts)
    february = containing(anchor_at, "month", NEW_YORK, "anniversary", anchor_at)
    assert february == Period(utc(2026, 2, 15, 5, 30), utc(2026, 3, 15, 4, 30))
    assert february.end - february.start == timedelta(days=28) - timedelta(hours=1)
    october = containing(utc(2026, 10, 20), "month", NEW_YORK, "anniversary", anchor_at)
    assert october == Period(utc(2026, 10, 15, 4, 30), utc(2026, 11, 15, 5, 30))
    # Weekly, in Paris, over the autumn change.
    paris_anchor = at(PARIS, 2026, 10, 19, 0, 30)
    week = containing(paris_anchor, "week", PARIS, "anniversary", paris_anchor)
    assert week == Period(utc(2026, 10, 18, 22, 30), utc(2026, 10, 25, 23, 30))


def test_anniversary_in_the_spring_gap_resolves_forward() -> None:
    anchor_at = at(NEW_YORK, 2026, 2, 8, 2, 30)  # March 8 02:30 does not exist in New York
    period = containing(anchor_at, "month", NEW_YORK, "anniversary", anchor_at)
    assert period == Period(utc(2026, 2, 8, 7, 30), utc(2026, 3, 8, 7, 30))
    assert wall(period.end, NEW_YORK) == datetime(2026, 3, 8, 3, 30)  # forward by the gap
    following = containing(period.end, "month", NEW_YORK, "anniversary", anchor_at)
    assert wall(following.end, NEW_YORK) == datetime(2026, 4, 8, 2, 30)  # back on the anchor


def test_anniversary_on_a_repeated_hour_takes_the_anchors_occurrence() -> None:
    first = at(NEW_YORK, 2026, 10, 1, 1, 30)
    assert containing(first, "month", NEW_YORK, "anniversary", first).end == utc(2026, 11, 1, 5, 30)
    second = at(NEW_YORK, 2026, 11, 1, 1, 30, fold=1)  # the second 01:30 (EST)
    assert second == utc(2026, 11, 1, 6, 30)
    period = containing(second, "month", NEW_YORK, "anniversary", second)
    assert period == Period(second, utc(2026, 12, 1, 6, 30))
    assert (
        containing(second - timedelta(seconds=1), "month", NEW_YORK, "anniversary", second).end
        == second
    )


def test_unknown_interval_and_anchor_are_invalid_input() -> None:
    bad: Any = "fortnight"
    with pytest.raises(InvalidInput, match="unknown interval"):
        period_containing(
            utc(2026, 1, 1), interval=bad, anchor="calendar", anchor_at=utc(2026, 1, 1), tz="UTC"
        )
    with pytest.raises(InvalidInput, match="unknown anchor"):
        period_containing(
            utc(2026, 1, 1), interval="month", anchor=bad, anchor_at=utc(2026, 1, 1), tz="UTC"
        )


def test_period_values_are_normalized_and_validated() -> None:
    naive = Period(datetime(2026, 10, 1), datetime(2026, 11, 1))
    assert naive == month_period("2026-10", "UTC")
    assert naive.start.tzinfo is UTC
    offset = Period(at(PARIS, 2026, 10, 1), at(PARIS, 2026, 11, 1))
    assert offset.start.tzinfo is UTC
    assert utc(2026, 10, 1) in naive and utc(2026, 11, 1) not in naive
    with pytest.raises(InvalidInput, match="not after start"):
        Period(utc(2026, 11, 1), utc(2026, 10, 1))
    with pytest.raises(InvalidInput, match="not after start"):
        Period(utc(2026, 11, 1), utc(2026, 11, 1))
    assert sorted([month_period("2026-11", "UTC"), naive])[0] == naive


# --------------------------------------------------------------------------- proration

OCTOBER = month_period("2026-10", PARIS)  # 31 local days, 745 hours


def fraction(
    start: datetime,
    end: datetime,
    *,
    mode: Any = "day",
    ends: bool = False,
    period: Period = OCTOBER,
    tz: str = PARIS,
) -> Fraction:
    return service_fraction(start, end, period, mode=mode, tz=tz, ends_service=ends)


def test_start_mid_period_counts_the_first_day_whole() -> None:
    start = at(PARIS, 2026, 10, 15, 10)
    assert fraction(start, OCTOBER.end) == Fraction(17, 31)
    assert fraction(start, utc(2027, 3, 1)) == Fraction(17, 31)  # clipped to the period
    assert fraction(start, utc(2027, 3, 1), ends=True) == Fraction(17, 31)
    assert fraction(at(PARIS, 2026, 10, 15, 23, 59), OCTOBER.end) == Fraction(17, 31)
    assert fraction(at(PARIS, 2026, 10, 15), OCTOBER.end) == Fraction(17, 31)
    assert fraction(utc(2026, 1, 1), utc(2027, 1, 1)) == 1


def test_cancel_at_local_midnight_versus_mid_day() -> None:
    start = OCTOBER.start
    assert fraction(start, at(PARIS, 2026, 10, 20), ends=True) == Fraction(19, 31)
    assert fraction(start, at(PARIS, 2026, 10, 20, 12), ends=True) == Fraction(20, 31)
    # Counting both the first and the last day of service:
    assert fraction(
        at(PARIS, 2026, 10, 15, 10), at(PARIS, 2026, 10, 20, 12), ends=True
    ) == Fraction(6, 31)
    assert fraction(
        at(PARIS, 2026, 10, 15, 10), at(PARIS, 2026, 10, 15, 11), ends=True
    ) == Fraction(1, 31)
    # A piece cut by a plan change leaves the day of the change to the next piece.
    assert fraction(start, at(PARIS, 2026, 10, 20, 12), ends=False) == Fraction(19, 31)
    assert fraction(start, at(PARIS, 2026, 10, 20), ends=False) == Fraction(19, 31)
    # Cancelling exactly at the period's end is the whole period, never more.
    assert fraction(start, OCTOBER.end, ends=True) == 1


def test_plan_change_mid_day_splits_into_pieces_that_sum_to_one() -> None:
    change = at(PARIS, 2026, 10, 20, 12)
    phases = [
        Phase(utc(2026, 9, 15), change, "basic@1"),
        Phase(change, None, "pro@2"),
    ]
    pieces = split_period(OCTOBER, phases)
    assert pieces == [
        (phases[0], OCTOBER.start, change),
        (phases[1], change, OCTOBER.end),
    ]
    day = [fraction(s, e, ends=False) for _, s, e in pieces]
    assert day == [Fraction(19, 31), Fraction(12, 31)]
    assert sum(day) == 1
    second = [fraction(s, e, mode="second") for _, s, e in pieces]
    assert second[0] == Fraction(19 * 24 + 12, 745)  # 19.5 local days, all in CEST
    assert sum(second) == 1


def test_second_mode_is_exact_and_counts_the_dst_hour() -> None:
    utc_october = month_period("2026-10", "UTC")
    got = fraction(
        utc(2026, 10, 15, 12), utc(2027, 1, 1), mode="second", period=utc_october, tz="UTC"
    )
    assert got == Fraction(17 * 24 - 12, 31 * 24)
    last_week = fraction(at(PARIS, 2026, 10, 25), OCTOBER.end, mode="second")
    assert last_week == Fraction(7 * 24 + 1, 745)  # Oct 25 has 25 hours in Paris
    tiny = fraction(OCTOBER.start, OCTOBER.start + timedelta(microseconds=1), mode="second")
    assert tiny == Fraction(1, 745 * 3600 * 10**6)


def test_none_mode_is_all_or_nothing() -> None:
    one_second = OCTOBER.end - timedelta(seconds=1)
    assert fraction(one_second, utc(2027, 1, 1), mode="none") == 1
    assert (
        fraction(OCTOBER.start, OCTOBER.start + timedelta(seconds=1), mode="none", ends=True) == 1
    )
    assert fraction(utc(2026, 1, 1), OCTOBER.start, mode="none") == 0


@pytest.mark.parametrize("mode", ["day", "second", "none"])
@pytest.mark.parametrize("ends", [True, False])
def test_no_overlap_is_zero(mode: str, ends: bool) -> None:
    assert fraction(utc(2026, 1, 1), OCTOBER.start, mode=mode, ends=ends) == 0
    assert fraction(OCTOBER.end, utc(2027, 1, 1), mode=mode, ends=ends) == 0
    assert fraction(at(PARIS, 2026, 10, 5), at(PARIS, 2026, 10, 5), mode=mode, ends=ends) == 0
    assert fraction(at(PARIS, 2026, 10, 6), at(PARIS, 2026, 10, 5), mode=mode, ends=ends) == 0


def test_day_mode_on_an_anniversary_period() -> None:
    anchor_at = utc(2026, 1, 15, 14)
    period = containing(anchor_at, "month", "UTC", "anniversary", anchor_at)
    assert period == Period(anchor_at, utc(2026, 2, 15, 14))
    kw: dict[str, Any] = {"period": period, "tz": "UTC"}
    assert fraction(period.start, period.end, **kw) == 1
    assert fraction(utc(2026, 2, 14), period.end, **kw) == Fraction(1, 31)
    assert fraction(period.start, utc(2026, 2, 14), ends=True, **kw) == Fraction(30, 31)
    # Cancelled on the period's last (partial) date: clamped to the whole period.
    assert fraction(period.start, utc(2026, 2, 15, 10), ends=True, **kw) == 1


def test_unknown_proration_mode_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="unknown mode"):
        fraction(OCTOBER.start, OCTOBER.end, mode="hour")


def test_prorate_is_exact_decimal_arithmetic() -> None:
    result = prorate(Decimal("49.00"), Fraction(19, 31))
    with localcontext() as ctx:
        ctx.prec = 60
        exact = Decimal(49 * 19) / Decimal(31)
    assert abs(result - exact) < Decimal("1e-30")
    assert result.quantize(Decimal("0.01")) == Decimal("30.03")
    assert str(prorate(Decimal("49.00"), Fraction(1))) == "49.00"
    assert prorate(Decimal("10"), Fraction(1, 4)) == Decimal("2.5")
    assert prorate(Decimal("49.00"), Fraction(0)) == 0
    assert prorate(Decimal("-12.34"), Fraction(1, 2)) == Decimal("-6.17")
    tiny = prorate(Decimal("0.0000125"), Fraction(1, 3))
    assert abs(Fraction(tiny) - Fraction(Decimal("0.0000125")) / 3) < Fraction(1, 10**40)
    huge = prorate(Decimal("123456789012345678901234.567890123456"), Fraction(2, 3))
    exact_huge = Fraction(Decimal("123456789012345678901234.567890123456")) * Fraction(2, 3)
    assert abs(Fraction(huge) - exact_huge) / exact_huge < Fraction(1, 10**30)
    with pytest.raises(InvalidInput, match="not a finite number"):
        prorate(Decimal("NaN"), Fraction(1, 2))


# --------------------------------------------------------------------------- phases, trials


def test_split_period_clips_skips_and_leaves_gaps() -> None:
    period = month_period("2026-10", "UTC")
    early = Phase(utc(2026, 1, 1), utc(2026, 9, 1), "old@1")
    zero = Phase(utc(2026, 9, 1), utc(2026, 9, 1), "blink@1")
    a = Phase(utc(2026, 9, 20), utc(2026, 10, 5), "a@1")
    b = Phase(utc(2026, 10, 10), utc(2026, 10, 20), "b@1")
    c = Phase(utc(2026, 10, 20), utc(2026, 10, 20), "c@1")
    d = Phase(utc(2026, 10, 25), None, "d@1")
    assert split_period(period, [early, zero, a, b, c, d]) == [
        (a, period.start, utc(2026, 10, 5)),
        (b, utc(2026, 10, 10), utc(2026, 10, 20)),
        (d, utc(2026, 10, 25), period.end),
    ]
    assert split_period(period, []) == []
    assert split_period(period, [Phase(utc(2026, 11, 1), None, "later@1")]) == []


def test_split_period_refuses_overlapping_or_unsorted_phases() -> None:
    period = month_period("2026-10", "UTC")
    with pytest.raises(InvalidInput, match="must not overlap"):
        split_period(
            period, [Phase(utc(2026, 10, 1), None, "a"), Phase(utc(2026, 10, 5), None, "b")]
        )
    with pytest.raises(InvalidInput, match="must not overlap"):
        split_period(
            period,
            [
                Phase(utc(2026, 10, 10), utc(2026, 10, 20), "a"),
                Phase(utc(2026, 10, 1), utc(2026, 10, 5), "b"),
            ],
        )
    with pytest.raises(InvalidInput, match="before start"):
        Phase(utc(2026, 10, 10), utc(2026, 10, 1), "backwards")


def test_trial_end_keeps_local_wall_clock_across_dst() -> None:
    start = at(NEW_YORK, 2026, 3, 1, 15)
    assert start == utc(2026, 3, 1, 20)
    assert trial_end(start, 14, NEW_YORK) == utc(2026, 3, 15, 19)  # 15:00 EDT
    assert trial_end(at(PARIS, 2026, 10, 20, 9), 10, PARIS) == utc(2026, 10, 30, 8)  # 09:00 CET
    assert trial_end(start, 0, NEW_YORK) == start
    assert trial_end(datetime(2026, 3, 1, 20), 14, NEW_YORK) == utc(2026, 3, 15, 19)  # naive = UTC
    # Ending in the spring gap resolves forward: 02:30 -> 03:30 EDT.
    assert trial_end(at(NEW_YORK, 2026, 3, 1, 2, 30), 7, NEW_YORK) == utc(2026, 3, 8, 7, 30)
    with pytest.raises(InvalidInput, match="negative"):
        trial_end(start, -1, NEW_YORK)
    with pytest.raises(InvalidInput, match="unknown time zone"):
        trial_end(start, 1, "Nowhere/Special")


# --------------------------------------------------------------------------- properties

moments = st.datetimes(
    min_value=datetime(1975, 1, 1), max_value=datetime(2070, 1, 1), timezones=st.just(UTC)
)
zones = st.sampled_from(ZONES)
intervals = st.sampled_from(INTERVALS)
anchor_kinds = st.sampled_from(ANCHORS)


def _exists(local: datetime, tz: str) -> bool:
    aware = local.replace(tzinfo=ZoneInfo(tz))
    return aware.astimezone(UTC).astimezone(ZoneInfo(tz)).replace(tzinfo=None) == local


@settings(deadline=None)
@given(moments, intervals, anchor_kinds, moments, zones)
def test_period_containing_contains_the_moment(
    moment: datetime, interval: Interval, anchor: Anchor, anchor_at: datetime, tz: str
) -> None:
    period = period_containing(moment, interval=interval, anchor=anchor, anchor_at=anchor_at, tz=tz)
    assert period.start <= moment < period.end
    assert period.start.tzinfo is UTC and period.end.tzinfo is UTC
    start = wall(period.start, tz)
    if anchor == "calendar":
        natural = start.date()
        if interval == "week":
            assert natural.weekday() == 0
        else:
            assert natural.day == 1
            assert (natural.month - 1) % {"month": 1, "quarter": 3, "year": 12}[interval] == 0
        assert period.start == at(tz, natural.year, natural.month, natural.day)
    else:
        origin = wall(anchor_at, tz)
        if _exists(datetime.combine(start.date(), origin.time()), tz):
            assert start.time() == origin.time()
            if interval == "week":
                assert (start.date() - origin.date()).days % 7 == 0
            else:
                month_length = calendar.monthrange(start.year, start.month)[1]
                assert start.day == min(origin.day, month_length)  # clamped at month end


@settings(deadline=None)
@given(moments, st.integers(1, 400 * 86400), intervals, anchor_kinds, moments, zones)
def test_periods_between_tile_without_gaps_or_overlaps(
    start: datetime, seconds: int, interval: Interval, anchor: Anchor, anchor_at: datetime, tz: str
) -> None:
    end = start + timedelta(seconds=seconds)
    periods = periods_between(
        start, end, interval=interval, anchor=anchor, anchor_at=anchor_at, tz=tz
    )
    assert periods
    assert periods[0].start <= start < periods[0].end
    assert periods[-1].start < end <= periods[-1].end
    for previous, following in pairwise(periods):
        assert previous.end == following.start
    for period in periods:
        again = period_containing(
            period.start, interval=interval, anchor=anchor, anchor_at=anchor_at, tz=tz
        )
        assert again == period


@st.composite
def covered_periods(draw: st.DrawFn) -> tuple[Period, list[Phase], str, bool]:
    """A period, phases that cover all of it with random cuts, the zone, and last ends_service."""
    tz = draw(zones)
    interval = draw(intervals)
    anchor = draw(anchor_kinds)
    period = period_containing(
        draw(moments), interval=interval, anchor=anchor, anchor_at=draw(moments), tz=tz
    )
    span = (period.end - period.start) // timedelta(microseconds=1)
    days = (wall(period.end, tz).date() - wall(period.start, tz).date()).days
    cut_strategy = st.one_of(
        st.integers(1, span - 1).map(lambda us: period.start + timedelta(microseconds=us)),
        st.integers(0, days).map(
            lambda d: at(tz, *(wall(period.start, tz).date() + timedelta(days=d)).timetuple()[:3])
        ),
    )
    cuts = sorted({c for c in draw(st.lists(cut_strategy, max_size=6)) if c in period})
    before = period.start - timedelta(days=draw(st.integers(0, 40)))
    bounds = [before, *[c for c in cuts if c > period.start]]
    open_ended = draw(st.booleans())
    last_end = None if open_ended else period.end + timedelta(hours=draw(st.integers(0, 1000)))
    phases = [
        Phase(lo, hi, f"plan@{i}")
        for i, (lo, hi) in enumerate(zip(bounds, [*bounds[1:], last_end], strict=True))
    ]
    return period, phases, tz, draw(st.booleans())


@settings(deadline=None)
@given(covered_periods())
def test_pieces_of_a_covered_period_sum_to_exactly_one(
    case: tuple[Period, list[Phase], str, bool],
) -> None:
    period, phases, tz, last_ends = case
    pieces = split_period(period, phases)
    assert pieces[0][1] == period.start and pieces[-1][2] == period.end
    for (_, _, end), (_, start, _) in pairwise(pieces):
        assert end == start
    for mode in ("day", "second"):
        parts = [
            service_fraction(
                start,
                end,
                period,
                mode=mode,
                tz=tz,
                ends_service=last_ends and i == len(pieces) - 1,
            )
            for i, (_, start, end) in enumerate(pieces)
        ]
        assert all(0 <= part <= 1 for part in parts)
        assert sum(parts) == 1


@settings(deadline=None)
@given(
    covered_periods(),
    st.decimals(
        min_value=Decimal("-1000000000"),
        max_value=Decimal("1000000000"),
        places=12,
        allow_nan=False,
        allow_infinity=False,
    ),
)
def test_prorated_pieces_sum_back_to_the_amount(
    case: tuple[Period, list[Phase], str, bool], amount: Decimal
) -> None:
    period, phases, tz, _ = case
    for mode in ("day", "second"):
        parts = [
            prorate(amount, service_fraction(s, e, period, mode=mode, tz=tz, ends_service=False))
            for _, s, e in split_period(period, phases)
        ]
        with localcontext() as ctx:
            ctx.prec = 80
            total = sum(parts, Decimal(0))
            assert abs(total - amount) <= Decimal("1e-20")


@settings(deadline=None)
@given(
    moments,
    moments,
    moments,
    intervals,
    anchor_kinds,
    zones,
    st.sampled_from(["day", "second", "none"]),
    st.booleans(),
)
def test_service_fraction_stays_between_zero_and_one(
    a: datetime,
    b: datetime,
    moment: datetime,
    interval: Interval,
    anchor: Anchor,
    tz: str,
    mode: Any,
    ends: bool,
) -> None:
    start, end = min(a, b), max(a, b)
    period = period_containing(moment, interval=interval, anchor=anchor, anchor_at=a, tz=tz)
    got = service_fraction(start, end, period, mode=mode, tz=tz, ends_service=ends)
    assert 0 <= got <= 1
    overlaps = max(start, period.start) < min(end, period.end)
    assert (got > 0) <= overlaps
    if mode in ("second", "none"):
        assert (got > 0) == overlaps
    if mode == "day":
        ended = service_fraction(start, end, period, mode="day", tz=tz, ends_service=True)
        cut = service_fraction(start, end, period, mode="day", tz=tz, ends_service=False)
        assert cut <= ended


@settings(deadline=None)
@given(moments, st.integers(0, 800), zones)
def test_trial_end_keeps_the_local_time_when_it_exists(start: datetime, days: int, tz: str) -> None:
    end = trial_end(start, days, tz)
    local = wall(start, tz)
    target = local + timedelta(days=days)
    assert end.tzinfo is UTC
    assert end >= start
    if _exists(target, tz):
        assert wall(end, tz) == target
