"""Which billing periods a run for a month bills, for one subscription.

A run is named by a month (`2026-10`, or `previous` / `current` relative to `--as-of` in the
project's time zone). For each customer the month is read in the customer's own time zone, and
the run bills every billing period of the customer's subscriptions that **ends** within that
local month: `month.start < period.end <= month.end`. For calendar monthly plans that is the
month itself; a weekly plan gets each week that ends in the month; an anniversary plan started
on the 15th gets the period that ends on the 15th of the month; a yearly plan is billed in the
month its year ends. A period that has not ended by `--as-of` is billed as an open draft (it
cannot be finalized until it has ended).

A cancelled subscription's last period is billed in the run of the month its service ends in
(the month of the last instant before the cancellation, in the customer's time zone), not the
month the full period would have ended in. When those months differ, that invoice covers the
period up to the cancellation only (`final_window`): a quarterly plan cancelled on June 20 is
billed in the June run for Apr 1 – Jun 20 instead of in the July run. When they are the same
month, the invoice keeps the whole period's dates (a monthly plan cancelled on the 20th is
billed for the month, prorated to the 20th, as it always was), so invoices stored before keep
their periods. A cancellation exactly on a period boundary ends the period before it in full.
The run of a later month bills nothing more for the subscription.

Base fees in arrears are billed on the invoice of the period they pay for. Base fees in
advance are billed one period ahead: the invoice of a period carries the fee of the next period
(when the subscription still runs then), and a subscription's first invoice also carries the
fee of its first period, which no earlier invoice could.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.periods import Anchor, Interval, Period, month_period, periods_between
from neruba_cli.domain.timestamps import as_utc, validate_timezone

_LABEL = re.compile(r"\d{4}-\d{2}")
RELATIVE_LABELS = ("previous", "current")
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Schedule:
    """A subscription's billing grid and active span."""

    interval: Interval
    anchor: Anchor
    start: datetime
    end: datetime | None  # cancellation; None while it runs
    tz: str


def check_label(label: str, *, field: str = "period", relative: bool = True) -> str:
    """A month as written on a command line: `YYYY-MM` (month 01 to 12), or with `relative`
    also `previous` or `current`; returned stripped and lower-cased."""
    text = label.strip().lower() if isinstance(label, str) else ""
    if relative and text in RELATIVE_LABELS:
        return text
    if not _LABEL.fullmatch(text) or not 1 <= int(text[5:]) <= 12 or int(text[:4]) < 1:
        raise InvalidInput(
            f"{field}: {label!r} is not a month",
            hint="YYYY-MM, previous or current" if relative else "YYYY-MM, e.g. 2026-10",
        )
    return text


def resolve_label(label: str, *, as_of: datetime, tz: str) -> str:
    """`YYYY-MM`, `previous` or `current` (months as seen in `tz` at `as_of`) → `YYYY-MM`."""
    text = check_label(label)
    if text in RELATIVE_LABELS:
        month = month_period(month_label(as_of, tz), tz)
        moment = month.start if text == "current" else month.start - _MICROSECOND
        return month_label(moment, tz)
    month_period(text, tz)  # the month must lie within the calendar's range in `tz`
    return text


def month_label(moment: datetime, tz: str) -> str:
    """The YYYY-MM that `moment` falls in, in time zone `tz`."""
    local = as_utc(moment).astimezone(ZoneInfo(validate_timezone(tz)))
    return f"{local.year:04d}-{local.month:02d}"


def billed_windows(schedule: Schedule, label: str) -> list[tuple[Period, Period]]:
    """(period, window) for each period month `label` bills: the period as on the
    subscription's grid (proration counts against it), and the span its invoice covers — the
    period itself, or up to the cancellation (`final_window`)."""
    tz = schedule.tz
    candidates = list(
        _ending_in(label, schedule.interval, schedule.anchor, _grid_anchor(schedule), tz)
    )
    end = schedule.end
    if end is not None and final_run(end, tz) == label:
        last = _following(
            end - _MICROSECOND,
            schedule.interval,
            schedule.anchor,
            _grid_anchor(schedule),
            tz,
        )
        if last not in candidates:
            candidates.append(last)
    found = []
    for period in sorted(candidates):
        if not _overlaps(schedule, period):
            continue
        window = final_window(schedule, period)
        if month_label(window.end - _MICROSECOND, tz) == label:
            found.append((period, window))
    return found


def final_run(end: datetime, tz: str) -> str:
    """The month whose run bills the last period of a subscription ending at `end`."""
    return month_label(end - _MICROSECOND, tz)


def final_window(schedule: Schedule, period: Period) -> Period:
    """The span the invoice of `period` covers: up to the cancellation when the subscription
    ends inside the period in an earlier month than the period's own end, else the period."""
    end = schedule.end
    if end is None or not period.start < end < period.end:
        return period
    if final_run(end, schedule.tz) == final_run(period.end, schedule.tz):
        return period
    return Period(period.start, end)


def next_period(schedule: Schedule, period: Period) -> Period | None:
    """The period after `period`, when the subscription still runs at its start."""
    if schedule.end is not None and schedule.end <= period.end:
        return None
    return _following(
        period.end, schedule.interval, schedule.anchor, _grid_anchor(schedule), schedule.tz
    )


_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _grid_anchor(schedule: Schedule) -> datetime:
    """Calendar grids do not depend on the start: one key serves every such subscription."""
    return schedule.start if schedule.anchor == "anniversary" else _EPOCH


@lru_cache(maxsize=4096)
def _ending_in(
    label: str, interval: Interval, anchor: Anchor, anchor_at: datetime, tz: str
) -> tuple[Period, ...]:
    month = month_period(label, tz)
    candidates = periods_between(
        month.start,
        month.end + _MICROSECOND,
        interval=interval,
        anchor=anchor,
        anchor_at=anchor_at,
        tz=tz,
    )
    return tuple(p for p in candidates if month.start < p.end <= month.end)


@lru_cache(maxsize=4096)
def _following(
    boundary: datetime, interval: Interval, anchor: Anchor, anchor_at: datetime, tz: str
) -> Period:
    following = periods_between(
        boundary,
        boundary + _MICROSECOND,
        interval=interval,
        anchor=anchor,
        anchor_at=anchor_at,
        tz=tz,
    )
    return following[0]


def is_first_period(schedule: Schedule, period: Period) -> bool:
    return period.start <= schedule.start < period.end


def _overlaps(schedule: Schedule, period: Period) -> bool:
    if schedule.start >= period.end:
        return False
    return schedule.end is None or schedule.end > period.start
