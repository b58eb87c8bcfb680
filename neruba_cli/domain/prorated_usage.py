"""Prorated usage: each unit of a recurring meter billed for the share of the period it existed.

A charge with `prorated = true` on a recurring `sum` or `unique_count` meter (seats, licences)
bills each unit for the part of the billing period it was there, by the plan's `proration`
mode, with the rule base fees use (domain/periods.py `service_fraction`):

- **day** (the default): local calendar days in the customer's time zone over the days of the
  full period (`date(period.end) - date(period.start)`). A unit added at instant `t` counts its
  first day whole and every day to the end of the window: `date(end) - date(t)` days, i.e. the
  local day starts `m` with `t < m <= end` (a seat added at any time on Jan 15 counts 17 of
  January's 31 days). A unit removed at instant `r` still counts the day of the removal (as a
  cancelled service counts its last day): it stops counting from the next local day, so it
  gives back `max(#{m : r <= m <= end} - 1, 0)` days. A seat added and removed on the same day
  counts one day. A period that crosses no local midnight falls back to `second`.
- **second**: exact microseconds: a unit added at `t` counts `end - t`, one removed at `r`
  gives back `end - r`, over the period's microseconds.
- `none` cannot prorate (the catalog refuses `prorated = true` on such a plan).

A window that ends where the service ends (a cancellation mid-day) counts the units present
on that last day for the day, as a cancelled base fee counts its last day.

Units carried in (events before the window: a recurring meter reads everything before its
end) count the whole window, `date(end) - date(start)` days (`end - start` in second mode).

- **sum**: each event's value `v` is units added (`v > 0`, weight of an add) or removed
  (`v < 0`, weight of a removal).
- **unique_count**: each value's events, in (timestamp, sequence) order, add it when it is
  absent and remove it when it is present (`operation`); an add of a value already present or
  a remove of one absent changes nothing.

The prorated units are Σ units × weight / the period's size, rounded up (toward +∞) to 5
decimal places, as Lago rounds them. Pieces of a period split by a plan change use the full
period's size, so their shares add up. The same numerator comes from billing's SQL
(db/usage_sql.py `prorated_usage`) and from `prorated_units` here; `prorated_from_area` turns
it into units for both.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from neruba_cli.domain.aggregation import (
    SCALE,
    EventRecord,
    MeterSpec,
    field_value,
    matches,
    rounded_units,
    value_key,
)
from neruba_cli.domain.periods import Period, local_day_starts, period_days

PLACES = 5
"""Decimal places of prorated units (rounded up)."""

ProratedMode = Literal["day", "second"]
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Weights:
    """How much of the period a unit added or removed at an instant of [start, end) counts,
    as an integer (days or microseconds) over `total`."""

    mode: ProratedMode
    start: datetime
    end: datetime
    total: int  # the full period's days (day) or microseconds (second)
    day_starts: tuple[datetime, ...] = ()  # day: the local day starts in [start, end]

    @property
    def whole(self) -> int:
        """The weight of a unit present through the whole window (carried in)."""
        return self.added(self.start)

    def added(self, moment: datetime) -> int:
        if moment < self.start:
            return self.whole
        if self.mode == "second":
            return (self.end - moment) // _MICROSECOND
        return len(self.day_starts) - bisect_right(self.day_starts, moment)

    def removed(self, moment: datetime) -> int:
        if moment < self.start:
            return self.whole
        if self.mode == "second":
            return (self.end - moment) // _MICROSECOND
        return max(len(self.day_starts) - bisect_left(self.day_starts, moment) - 1, 0)


def weights(
    start: datetime,
    end: datetime,
    period: Period,
    mode: str,
    tz: str,
    *,
    ends_service: bool = False,
) -> Weights:
    """The weights of the window [start, end) inside `period` for `mode` (day or second).

    `ends_service`: the service ends at `end` (a cancellation), so when `end` is not a local
    day start the units present on its day count that day too, as a cancelled base fee does
    (`service_fraction(..., ends_service=True)`): `end` is then one more boundary."""
    if mode not in ("day", "second"):
        raise ValueError(f"usage cannot be prorated with proration {mode!r} (use day or second)")
    if start < period.start or end > period.end or not start < end:
        raise ValueError(
            f"window {start.isoformat()}–{end.isoformat()} is not inside the period "
            f"{period.start.isoformat()}–{period.end.isoformat()}"
        )
    days = period_days(period, tz)
    if mode == "second" or days <= 0:
        total = (period.end - period.start) // _MICROSECOND
        return Weights("second", start, end, total)
    starts = local_day_starts(start, end, tz)
    if ends_service and end < period.end and (not starts or starts[-1] != end):
        starts.append(end)  # the last, partial day of a service that ends mid-day
    return Weights("day", start, end, days, tuple(starts))


def prorated_from_area(area_units: int, total: int) -> Decimal:
    """Σ units × weight (in 10⁻¹² units) over the period's size, rounded up to 5 places."""
    denominator = total * 10 ** (SCALE - PLACES)
    ceiling = -((-area_units) // denominator)
    return _canonical(Decimal(ceiling).scaleb(-PLACES))


def prorated_units(meter: MeterSpec, events: Iterable[EventRecord], grid: Weights) -> Decimal:
    """The reference: the meter's prorated units over the grid's window (every matching event
    before its end is read, as a recurring meter reads them)."""
    return prorated_from_area(prorated_area(meter, events, grid), grid.total)


def prorated_area(meter: MeterSpec, events: Iterable[EventRecord], grid: Weights) -> int:
    """Σ units × weight in 10⁻¹² units: the exact numerator billing's SQL computes too."""
    if not meter.carried:
        raise ValueError(f"meter {meter.code!r}: only recurring sum and unique_count prorate")
    chosen = sorted(
        (e for e in events if e.timestamp < grid.end and matches(meter, e)),
        key=lambda e: (e.timestamp, e.sequence),
    )
    area = 0
    if meter.aggregation == "sum":
        for event in chosen:
            value = field_value(meter, event)
            if value is None:
                continue
            units = rounded_units(value)
            weight = grid.added(event.timestamp) if units >= 0 else grid.removed(event.timestamp)
            area += units * weight
        return area
    present: set[str] = set()
    unit = 10**SCALE
    for event in chosen:
        key = value_key(meter, event)
        if key is None:
            continue
        if event.operation == "remove":
            if key in present:
                present.discard(key)
                area -= unit * grid.removed(event.timestamp)
        elif key not in present:
            present.add(key)
            area += unit * grid.added(event.timestamp)
    return area


def _canonical(value: Decimal) -> Decimal:
    """`Decimal("12.74194")`, `Decimal("15")`: no exponent, no trailing zeros."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return Decimal(text or "0")
