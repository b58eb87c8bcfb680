"""Timestamps and durations as the CLI contract writes them: RFC 3339 in UTC, always aware."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from neruba_cli.domain.errors import InvalidInput

_DURATION = re.compile(r"^\s*(\d+)\s*(s|h|d|w|m|y)\s*$")
_FIXED_SECONDS = {"s": 1, "h": 3600, "d": 86400, "w": 604800}
_DURATION_UNITS = "s (seconds), h (hours), d (days), w (weeks), m (months), y (years)"

RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)
"""An RFC 3339 date-time (section 5.6; `t`, `z` and a space for `T` allowed, as its note
says), the offset optional so that a naive time can be named as such. Python's
`fromisoformat` reads much more of ISO 8601 — week dates (`2026-W40-1`), the basic format
(`20261003T120000Z`), hour-only times (`T12Z`), offsets with seconds (`+01:00:30`) — which no
other tool of a billing pipeline writes the same way: those are refused, not guessed at."""

MIN_YEAR = 1000
"""Earlier years are a typo (`0026` for `2026`) and break calendars downstream (a month
before year 1 does not exist): refused."""


def format_ts(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a `Z`, seconds precision unless there are microseconds."""
    if value is None:
        return None
    utc = as_utc(value)
    text = utc.isoformat(timespec="microseconds" if utc.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def as_utc(value: datetime) -> datetime:
    """Treat naive values as UTC: the database layer stores naive UTC on every dialect."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 date-time as written (aware when it carries an offset, naive otherwise);
    ValueError with the reason for anything else, a year before MIN_YEAR included."""
    if RFC3339.fullmatch(text) is None:
        raise ValueError(f"{text!r} is not RFC 3339 (e.g. 2026-10-03T12:00:00Z)")
    if text[:4] < f"{MIN_YEAR:04d}":
        raise ValueError(f"{text!r} is before the year {MIN_YEAR}")
    if text[-1] == "z" or text[10] == "t":
        text = text.upper()
    try:
        return datetime.fromisoformat(text)
    except ValueError:  # a month 13, a 31 November, an hour 24
        raise ValueError(f"{text!r} is not a valid date and time") from None


def parse_ts(text: str, *, field: str = "timestamp") -> datetime:
    """Parse an RFC 3339 timestamp that carries an offset; refuse naive ones."""
    raw = text.strip()
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"{field}: {text!r} is not an RFC 3339 timestamp", hint="e.g. 2026-10-03T12:00:00Z"
        ) from None
    if value.tzinfo is None:
        raise InvalidInput(
            f"{field}: {text!r} has no time-zone offset", hint="add Z or an offset such as +02:00"
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(f"{field}: {text!r} is outside the years 1 to 9999 in UTC") from None


def parse_duration(text: str, *, field: str = "duration") -> tuple[int, str]:
    """Split `90d` into (90, 'd'); months and years stay calendar units, not fixed seconds."""
    match = _DURATION.match(text)
    if not match:
        raise InvalidInput(f"{field}: {text!r} is not a duration", hint=f"units: {_DURATION_UNITS}")
    return int(match.group(1)), match.group(2)


def parse_fixed_duration(text: str, *, field: str = "duration") -> timedelta:
    """A duration of fixed length (s, h, d, w): months and years have none."""
    amount, unit = parse_duration(text, field=field)
    if unit not in _FIXED_SECONDS:
        raise InvalidInput(f"{field}: use s, h, d or w, e.g. 300s or 1h")
    return timedelta(seconds=amount * _FIXED_SECONDS[unit])


def shift_by_duration(
    moment: datetime, text: str, *, sign: int, field: str = "duration"
) -> datetime:
    """`moment` plus (sign 1) or minus (sign -1) a duration; months and years on the calendar."""
    amount, unit = parse_duration(text, field=field)
    try:
        if unit in ("m", "y"):
            return add_months(moment, sign * amount * (12 if unit == "y" else 1))
        return moment + sign * timedelta(seconds=amount * _FIXED_SECONDS[unit])
    except (OverflowError, ValueError):
        raise InvalidInput(f"{field}: {text!r} reaches past the calendar's range") from None


def parse_expiry(text: str, *, now: datetime, field: str = "--expires") -> datetime:
    """A duration from now (`90d`) or an absolute timestamp; it must lie in the future."""
    raw = text.strip()
    moment = shift_by_duration(now, raw, sign=1, field=field) if _DURATION.match(raw) else None
    if moment is None:
        moment = parse_ts(raw, field=field)
    if moment <= now:
        raise InvalidInput(f"{field}: {text!r} is not in the future")
    return moment


def add_months(moment: datetime, months: int) -> datetime:
    """Shift by calendar months, clamping the day (Jan 31 + 1 month = Feb 28 or 29)."""
    index = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(index, 12)
    day = min(moment.day, _days_in_month(year, month + 1))
    return moment.replace(year=year, month=month + 1, day=day)


def _days_in_month(year: int, month: int) -> int:
    first_next = date(year + (month == 12), month % 12 + 1, 1)
    return (first_next - timedelta(days=1)).day


def parse_since(text: str, *, now: datetime, field: str = "--since") -> datetime:
    """Accept a timestamp with offset, a date (midnight UTC), or a duration ago such as `7d`."""
    raw = text.strip()
    if _DURATION.match(raw):
        return shift_by_duration(now, raw, sign=-1, field=field)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        try:
            return datetime.fromisoformat(raw).replace(tzinfo=UTC)
        except ValueError:
            raise InvalidInput(f"{field}: {text!r} is not a valid date") from None
    return parse_ts(raw, field=field)


def validate_timezone(name: str, *, field: str = "timezone") -> str:
    """Return an IANA zone name that zoneinfo knows, or raise with the fix."""
    cleaned = name.strip()
    try:
        ZoneInfo(cleaned)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"{field}: unknown time zone {name!r}", hint="use an IANA name such as Europe/Paris"
        ) from None
    return cleaned
