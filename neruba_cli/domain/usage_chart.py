"""Usage over time as a chart: bucket boundaries and bar lengths, pure.

`usage show` cuts a period into local days or hours and draws one bar per bucket. The rules:

- **Buckets cover the period exactly.** The first bucket starts at the period start, the last
  ends at the period end, and each one ends where the next begins, so per-bucket sums and
  counts add up to the period's (nothing falls between two buckets, nothing is counted twice).
  A boundary falling outside the period is clipped to it.
- **Local time.** A day starts at local midnight in the given zone (or, when midnight does not
  exist that day, at the first instant of the day, as `domain/periods.py` reads local times),
  so a day is 23 or 25 hours long across a DST change. An hour bucket starts at each instant
  the local clock reads HH:00: a fall-back night has two buckets labelled 01:00 (told apart
  by their UTC offset), a spring-forward night has none labelled 02:00.
- **Bars.** A bar is measured in eighths of a character (the block characters ▏ to █), scaled
  so the largest value gets the full width; the length only grows with the value, and any
  positive value gets at least one eighth so that it never looks like zero. Zero and negative
  values get no bar. The arithmetic is exact (Fractions), never through a float.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from typing import Literal
from zoneinfo import ZoneInfo

from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.timestamps import as_utc, validate_timezone

Granularity = Literal["day", "hour"]
GRANULARITIES: tuple[Granularity, ...] = ("day", "hour")

EIGHTHS = 8
FULL_BLOCK = "█"
PARTIAL_BLOCKS = ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")
_DAY = timedelta(days=1)


@dataclass(frozen=True)
class Bucket:
    """One bar of the chart: [start, end) as aware UTC instants, and its local label."""

    start: datetime
    end: datetime
    label: str


def granularity(text: str) -> Granularity:
    """`--by`: day or hour."""
    value = text.strip().lower()
    for known in GRANULARITIES:
        if value == known:
            return known
    raise InvalidInput(f"--by: {text!r} is not a bucket size", hint="use day or hour")


def buckets(start: datetime, end: datetime, by: Granularity, tz: str) -> tuple[Bucket, ...]:
    """The local days or hours of `tz` that cover [start, end), in order."""
    start, end = as_utc(start), as_utc(end)
    if not start < end:
        raise InvalidInput(f"empty period: {start.isoformat()} is not before {end.isoformat()}")
    zone = ZoneInfo(validate_timezone(tz))
    inner = {b for b in _boundaries(start, end, by, zone) if start < b < end}
    edges = [start, *sorted(inner), end]
    spans = list(pairwise(edges))
    labels = [_label(since, by, zone) for since, _ in spans]
    repeated = {label for label in labels if labels.count(label) > 1}
    return tuple(
        Bucket(since, until, _with_offset(label, since, zone) if label in repeated else label)
        for (since, until), label in zip(spans, labels, strict=True)
    )


def bar_eighths(value: Decimal, largest: Decimal, width: int) -> int:
    """The bar length of `value` in eighths of a character, `largest` filling `width`."""
    if width < 1:
        raise ValueError("a bar needs a width of at least one character")
    if value <= 0 or largest <= 0:
        return 0
    full = width * EIGHTHS
    scaled = Fraction(value) * full / Fraction(largest)
    return min(full, max(1, int(scaled + Fraction(1, 2))))


def bar(eighths: int) -> str:
    """Block characters for a bar of `eighths` eighths of a character."""
    whole, rest = divmod(max(eighths, 0), EIGHTHS)
    return FULL_BLOCK * whole + PARTIAL_BLOCKS[rest]


# -- internals ----------------------------------------------------------------------------


def _local_days(start: datetime, end: datetime, zone: ZoneInfo) -> list[date]:
    """Every local date from the day before `start` to the day after `end` (a margin for
    boundaries that move across midnight), within the calendar: a month at either end of the
    years 1 to 9999 has no day beyond it."""
    first = start.astimezone(zone).date()
    last = end.astimezone(zone).date()
    first = first - _DAY if first > date.min else first
    last = last + _DAY if last < date.max else last
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _instant(wall: datetime) -> datetime | None:
    """The UTC instant of a local wall time, or None past the calendar's range (such a
    margin boundary lies outside every period anyway)."""
    try:
        return wall.astimezone(UTC)
    except OverflowError:
        return None


def _boundaries(start: datetime, end: datetime, by: Granularity, zone: ZoneInfo) -> set[datetime]:
    found: set[datetime] = set()
    for day in _local_days(start, end, zone):
        if by == "day":
            # fold=0 reads a nonexistent midnight with the offset before the change: the
            # instant the clocks jump, which is when that local day begins.
            midnight = _instant(datetime.combine(day, time(), tzinfo=zone))
            if midnight is not None:
                found.add(midnight)
            continue
        for hour in range(24):
            for fold in (0, 1):
                wall = datetime.combine(day, time(hour), tzinfo=zone).replace(fold=fold)
                instant = _instant(wall)
                if instant is None:
                    continue
                local = instant.astimezone(zone)
                if (local.date(), local.hour, local.minute, local.second) == (day, hour, 0, 0):
                    found.add(instant)  # an hour the clock shows (gaps are skipped)
    return found


def _label(since: datetime, by: Granularity, zone: ZoneInfo) -> str:
    local = since.astimezone(zone)
    if by == "day":
        return local.date().isoformat()
    return local.strftime("%Y-%m-%d %H:%M")


def _with_offset(label: str, since: datetime, zone: ZoneInfo) -> str:
    offset = since.astimezone(zone).isoformat()[-6:]  # ±HH:MM
    return f"{label}{offset}"
