"""Billing periods and proration: pure functions over aware datetimes and exact fractions.

Every instant going in or out is an aware UTC `datetime` (naive values are read as UTC, the
convention of `timestamps.as_utc`, because the database stores naive UTC). Period boundaries are
*local wall-clock times* in the customer's IANA time zone, converted to UTC: across a DST change
a monthly period is an hour longer or shorter in UTC, but it still starts and ends at the same
local time.

Local times that do not map to exactly one instant are resolved like this:

- a nonexistent local time (spring-forward gap) is read with the offset in force *before* the
  change (zoneinfo's `fold=0`), which lands it forward by the length of the gap: in New York
  02:30 on the day clocks jump from 02:00 to 03:00 becomes 03:30 EDT;
- a repeated local time (fall-back overlap) is its first occurrence, except for anniversary
  boundaries, which take the same occurrence as the anchor itself (so the period that starts at
  the anchor starts exactly at it, even when the anchor is the second 01:30 of a night).

Proration (`service_fraction`) returns an exact `Fraction`; `prorate` applies it to a Decimal
amount without ever going through a float, leaving the one rounding to the caller.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal
from fractions import Fraction
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.timestamps import add_months, as_utc, validate_timezone

Interval = Literal["week", "month", "quarter", "year"]
Anchor = Literal["calendar", "anniversary"]
ProrationMode = Literal["day", "second", "none"]

INTERVALS: tuple[Interval, ...] = ("week", "month", "quarter", "year")
ANCHORS: tuple[Anchor, ...] = ("calendar", "anniversary")
PRORATION_MODES: tuple[ProrationMode, ...] = ("day", "second", "none")

_MONTHS_PER_INTERVAL = {"month": 1, "quarter": 3, "year": 12}
_MONTH_LABEL = re.compile(r"(\d{4})-(\d{2})")
_MICROSECOND = timedelta(microseconds=1)
# Digits kept beyond the exact product in `prorate`: far more than the 28 the contract asks for.
_EXTRA_DIGITS = 34


@dataclass(frozen=True, order=True)
class Period:
    """A half-open span of time: `start` inclusive, `end` exclusive, both aware UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        start, end = as_utc(self.start), as_utc(self.end)
        if end <= start:
            raise InvalidInput(
                f"period: end {end.isoformat()} is not after start {start.isoformat()}"
            )
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    def __contains__(self, moment: object) -> bool:
        return isinstance(moment, datetime) and self.start <= as_utc(moment) < self.end


@dataclass(frozen=True)
class Phase:
    """A stretch of a subscription on one plan version; `end` None means open-ended."""

    start: datetime
    end: datetime | None
    key: str

    def __post_init__(self) -> None:
        start = as_utc(self.start)
        end = None if self.end is None else as_utc(self.end)
        if end is not None and end < start:
            raise InvalidInput(
                f"phase {self.key!r}: end {end.isoformat()} is before start {start.isoformat()}"
            )
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)


# --------------------------------------------------------------------------- local time


def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(validate_timezone(tz))


def _to_utc(wall: datetime, zone: ZoneInfo, *, fold: int = 0) -> datetime:
    """A naive local wall-clock time in `zone` as an aware UTC instant.

    Gap (nonexistent): the `fold=0` reading, i.e. pushed forward by the gap's length.
    Overlap (repeated): occurrence `fold` (0 = the first, 1 = the second).
    """
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first.astimezone(UTC)
    exists = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall
    if not exists:
        return first.astimezone(UTC)
    return (second if fold else first).astimezone(UTC)


def _local_date(moment: datetime, zone: ZoneInfo) -> date:
    return moment.astimezone(zone).date()


def _day_start(day: date, zone: ZoneInfo) -> datetime:
    """The instant the local day begins (midnight, or the end of a gap covering midnight)."""
    return _to_utc(datetime.combine(day, time()), zone)


def _out_of_range() -> InvalidInput:
    return InvalidInput(
        "period: reaches past the calendar's range", hint="dates must stay within years 1 to 9999"
    )


# --------------------------------------------------------------------------- period grids


@dataclass(frozen=True)
class _Grid:
    """Period boundaries numbered by an integer n: period n is [boundary(n), boundary(n + 1))."""

    interval: Interval
    anchor: Anchor
    zone: ZoneInfo
    origin: datetime  # anniversary: the anchor's naive local wall-clock time
    fold: int  # anniversary: which occurrence of a repeated local time the anchor is

    def boundary(self, n: int) -> datetime:
        try:
            if self.anchor == "calendar":
                if self.interval == "week":
                    # date.fromordinal(1) (0001-01-01) is a Monday.
                    wall = datetime.combine(date.fromordinal(1 + 7 * n), time())
                else:
                    index = n * _MONTHS_PER_INTERVAL[self.interval]
                    wall = datetime(index // 12, index % 12 + 1, 1)
                return _to_utc(wall, self.zone)
            if self.interval == "week":
                wall = self.origin + timedelta(days=7 * n)
            else:
                # Always from the original anchor, so the anchor's day is clamped afresh each
                # time (Jan 31 -> Feb 28 -> Mar 31), never carried over from a clamped month.
                wall = add_months(self.origin, n * _MONTHS_PER_INTERVAL[self.interval])
            return _to_utc(wall, self.zone, fold=self.fold)
        except (OverflowError, ValueError):
            raise _out_of_range() from None

    def guess(self, moment: datetime) -> int:
        """An index close to the period containing `moment` (exact up to DST/clamping)."""
        try:
            local = moment.astimezone(self.zone).replace(tzinfo=None)
        except (OverflowError, ValueError):
            raise _out_of_range() from None
        if self.interval == "week":
            base = 1 if self.anchor == "calendar" else self.origin.toordinal()
            return (local.toordinal() - base) // 7
        step = _MONTHS_PER_INTERVAL[self.interval]
        months = local.year * 12 + local.month - 1
        if self.anchor == "calendar":
            return months // step
        return (months - (self.origin.year * 12 + self.origin.month - 1)) // step

    def index_of(self, moment: datetime) -> int:
        n = self.guess(moment)
        while self.boundary(n) > moment:
            n -= 1
        while self.boundary(n + 1) <= moment:
            n += 1
        return n


def _grid(interval: Interval, anchor: Anchor, anchor_at: datetime, tz: str) -> _Grid:
    if interval not in INTERVALS:
        raise InvalidInput(
            f"interval: unknown interval {interval!r}", hint="use " + ", ".join(INTERVALS)
        )
    if anchor not in ANCHORS:
        raise InvalidInput(f"anchor: unknown anchor {anchor!r}", hint="use calendar or anniversary")
    zone = _zone(tz)
    try:
        local = as_utc(anchor_at).astimezone(zone)
    except (OverflowError, ValueError):
        raise _out_of_range() from None
    return _Grid(interval, anchor, zone, local.replace(tzinfo=None, fold=0), local.fold)


# --------------------------------------------------------------------------- public API


@lru_cache(maxsize=4096)
def month_period(label: str, tz: str) -> Period:
    """'2026-10' -> local midnight Oct 1 to local midnight Nov 1 in tz, as UTC."""
    match = _MONTH_LABEL.fullmatch(label.strip()) if isinstance(label, str) else None
    if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1:
        raise InvalidInput(f"period: {label!r} is not a month", hint="write YYYY-MM, e.g. 2026-10")
    grid = _grid("month", "calendar", datetime(2000, 1, 1, tzinfo=UTC), tz)
    n = int(match.group(1)) * 12 + int(match.group(2)) - 1
    return Period(grid.boundary(n), grid.boundary(n + 1))


def period_containing(
    moment: datetime, *, interval: Interval, anchor: Anchor, anchor_at: datetime, tz: str
) -> Period:
    """The billing period that contains `moment` (periods also extend before `anchor_at`).

    calendar: local midnight of Monday / the 1st / Jan-Apr-Jul-Oct 1st / Jan 1st (anchor_at is
    ignored). anniversary: the local wall-clock time of anchor_at, every interval counted from
    it; months clamp the anchor's original day to the month's end.
    """
    grid = _grid(interval, anchor, anchor_at, tz)
    n = grid.index_of(as_utc(moment))
    return Period(grid.boundary(n), grid.boundary(n + 1))


def periods_between(
    start: datetime,
    end: datetime,
    *,
    interval: Interval,
    anchor: Anchor,
    anchor_at: datetime,
    tz: str,
) -> list[Period]:
    """All periods that overlap [start, end), in order (empty when end <= start)."""
    start, end = as_utc(start), as_utc(end)
    if end <= start:
        return []
    grid = _grid(interval, anchor, anchor_at, tz)
    n = grid.index_of(start)
    lower = grid.boundary(n)
    periods: list[Period] = []
    while lower < end:
        upper = grid.boundary(n + 1)
        periods.append(Period(lower, upper))
        lower, n = upper, n + 1
    return periods


def service_fraction(
    service_start: datetime,
    service_end: datetime,
    period: Period,
    *,
    mode: ProrationMode,
    tz: str,
    ends_service: bool,
) -> Fraction:
    """The share of `period` that [service_start, service_end) covers, exactly, in [0, 1].

    second: microseconds served / microseconds in the period. none: 1 on any overlap.
    day: local calendar days. Each instant belongs to its local date; a piece [s, e) counts
    date(e) - date(s) days, i.e. its first (possibly partial) day and every day up to the one
    containing e, which belongs to whatever starts at e (the next piece or the next period).
    When ends_service is True and the service really ends inside the period at a time that is
    not a local day start, that last partial day is counted too. The period's own size is
    date(period.end) - date(period.start). Results are clamped to [0, 1].
    """
    if mode not in PRORATION_MODES:
        raise InvalidInput(
            f"proration: unknown mode {mode!r}", hint="use " + ", ".join(PRORATION_MODES)
        )
    zone = _zone(tz)
    real_end = as_utc(service_end)
    lower = max(as_utc(service_start), period.start)
    upper = min(real_end, period.end)
    if upper <= lower:
        return Fraction(0)
    if mode == "none":
        return Fraction(1)
    seconds = Fraction((upper - lower) // _MICROSECOND, (period.end - period.start) // _MICROSECOND)
    if mode == "second":
        return seconds
    total = (_local_date(period.end, zone) - _local_date(period.start, zone)).days
    if total <= 0:
        # A period that never crosses a local midnight has no whole day to count.
        return seconds
    days = (_local_date(upper, zone) - _local_date(lower, zone)).days
    partial_last_day = upper != _day_start(_local_date(upper, zone), zone)
    if ends_service and real_end < period.end and partial_last_day:
        days += 1
    return Fraction(min(max(days, 0), total), total)


def service_days(
    service_start: datetime,
    service_end: datetime,
    *,
    mode: ProrationMode,
    tz: str,
    ends_service: bool = False,
    after_end: bool = False,
) -> tuple[date, date] | None:
    """The local calendar days [first, last] (both inclusive) a piece [start, end) of service
    is charged for, as `service_fraction` counts them; None when it covers no day.

    day: the day of `start` to the day before `end`'s, or to `end`'s own day when the service
    really ends inside it (`ends_service`, `end` not a local day start). `after_end`: the piece
    starts where a service ended mid-day, whose day that service was charged, so it starts on
    the next day. second and none: the day of `start` to the day of the last instant before
    `end`.
    """
    zone = _zone(tz)
    start, end = as_utc(service_start), as_utc(service_end)
    if end <= start:
        return None
    first = _local_date(start, zone)
    if mode != "day":
        return first, _local_date(end - _MICROSECOND, zone)
    last_day = _local_date(end, zone)
    partial = end != _day_start(last_day, zone)
    last = last_day if ends_service and partial else last_day - timedelta(days=1)
    if after_end and start != _day_start(first, zone):
        first += timedelta(days=1)
    return (first, last) if first <= last else None


def days_text(first: date, last: date) -> str:
    """'1 Nov – 30 Nov 2026', '16 Nov 2026', '15 Dec 2026 – 14 Jan 2027'."""
    if first == last:
        return _day_text(first, year=True)
    return f"{_day_text(first, year=first.year != last.year)} – {_day_text(last, year=True)}"


def _day_text(day: date, *, year: bool) -> str:
    text = f"{day.day} {_MONTH_NAMES[day.month - 1]}"
    return f"{text} {day.year}" if year else text


_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def period_days(period: Period, tz: str) -> int:
    """The local days of a period, as `day` proration counts them:
    date(period.end) - date(period.start) in the time zone."""
    zone = _zone(tz)
    return (_local_date(period.end, zone) - _local_date(period.start, zone)).days


def local_day_starts(start: datetime, end: datetime, tz: str) -> list[datetime]:
    """The instants local days begin (midnight, or the end of a gap over it) in [start, end],
    in order: the boundaries `day` proration counts."""
    zone = _zone(tz)
    lower, upper = as_utc(start), as_utc(end)
    day, last = _local_date(lower, zone), _local_date(upper, zone)
    found: list[datetime] = []
    while day <= last:
        moment = _day_start(day, zone)
        if lower <= moment <= upper:
            found.append(moment)
        day += timedelta(days=1)
    return found


def prorate(amount: Decimal, fraction: Fraction) -> Decimal:
    """amount * fraction: the product is exact, the one division keeps 34+ significant digits."""
    if not amount.is_finite():
        raise InvalidInput(f"amount: {amount} is not a finite number")
    numerator, denominator = fraction.numerator, fraction.denominator
    digits = len(amount.as_tuple().digits) + len(str(abs(numerator)))
    context = Context(prec=digits + _EXTRA_DIGITS, rounding=ROUND_HALF_EVEN)
    return context.divide(context.multiply(amount, Decimal(numerator)), Decimal(denominator))


def split_period(period: Period, phases: Sequence[Phase]) -> list[tuple[Phase, datetime, datetime]]:
    """The pieces of `period` covered by each phase, in time order, clipped to the period.

    Phases must be sorted and non-overlapping (touching is fine, gaps mean no service);
    otherwise InvalidInput. Phases that miss the period, or have no length, give no piece.
    """
    pieces: list[tuple[Phase, datetime, datetime]] = []
    previous: Phase | None = None
    for phase in phases:
        if previous is not None and (previous.end is None or phase.start < previous.end):
            raise InvalidInput(
                f"phases: {phase.key!r} starts at {phase.start.isoformat()}, before "
                f"{previous.key!r} ends",
                hint="phases must be sorted and must not overlap",
            )
        previous = phase
        lower = max(phase.start, period.start)
        upper = period.end if phase.end is None else min(phase.end, period.end)
        if lower < upper:
            pieces.append((phase, lower, upper))
    return pieces


def trial_end(start: datetime, trial_days: int, tz: str) -> datetime:
    """start + trial_days calendar days at the same local wall-clock time in tz (DST-safe)."""
    if trial_days < 0:
        raise InvalidInput(f"trial days: {trial_days} is negative", hint="use 0 or more days")
    zone = _zone(tz)
    try:
        local = as_utc(start).astimezone(zone)
        wall = local.replace(tzinfo=None, fold=0) + timedelta(days=trial_days)
        return _to_utc(wall, zone, fold=local.fold)
    except (OverflowError, ValueError):
        raise _out_of_range() from None
