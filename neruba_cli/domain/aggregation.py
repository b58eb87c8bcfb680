"""Meter aggregations: the pure reference that billing's SQL (db/usage_sql.py) must equal.

A meter turns a customer's events of one period into one number. The rules, exactly:

- **Period and filters.** Only events with `start <= timestamp < end` count, and only those
  matching every filter. A filter `name = value` compares the property as a string: a JSON
  string equal to `value` (code point for code point: case and trailing spaces matter)
  matches; a missing property, `null`, a number, a boolean, an object or an array never does.
- **Field values.** `field` is `quantity` or `properties.<name>`. A property is a number when
  it is a JSON number or a numeric string (`-?[0-9]+(.[0-9]+)?`: no sign `+`, exponent,
  spaces or thousands separators); booleans are not numbers. Every value is rounded to 12
  decimal places, half away from zero, the precision of stored quantities (DECIMAL(38,12)).
  Events whose field is missing or not a number are skipped by every aggregation but `count`.
- **count**: the number of matching events (the field is not read).
- **sum**: the sum of the field values (0 when there are none).
- **recurring** (`sum`, `unique_count`; seats, licences, stored objects): the value carries
  over between periods. It is computed over every matching event before `end`, whatever
  its time (no lower bound): a recurring sum is the running total at `end`, a recurring
  unique_count the distinct values present at `end`. Events dated before a subscription
  started count too (the seats a customer had when it subscribed). `count`, `max` and
  `latest` have no recurring form; weighted_sum carries its level through `opening`.
- **max**: the largest field value, 0 when there are none (negative values stay negative).
- **unique_count**: the number of distinct values, each by its canonical text: a string
  property as it is (`"1.50"` is not `"1.5"`), a number by its canonical decimal (`1.50` and
  `"1.5"` are one value); missing, `null`, booleans, objects and arrays are skipped. With
  `field = "quantity"`, the distinct quantities. An event's `operation` adds its value (the
  default) or removes it: a value counts when its last event (by timestamp, sequence) is an
  add, i.e. the values present at the end of the window. Without removes that is every
  distinct value. A value added and removed within a non-recurring window does not count (as
  Lago's unique count does); other aggregations ignore the operation.
- **latest**: the value of the last event by (timestamp, sequence), 0 when there is none.
  `sequence` orders events with equal timestamps: the database uses the idempotency key
  (compared byte by byte), never the arrival order, so results do not depend on import order.
- **weighted_sum** (seats, storage): a gauge starts the period at `opening` (0 unless the
  billing run passes the previous period's closing level of a `recurring` meter). In event
  order, with `gauge = "delta"` each value is added to the level at its timestamp; with
  `gauge = "absolute"` each value becomes the level. The result is
  Σ level × microseconds held over [start, end) / microseconds of the full billing `period`
  that [start, end) is part of (`weighted_divisor`; the window itself when no period is
  given), computed exactly in integers and rounded once to 12 decimal places, half away from
  zero (the opening is rounded to 12 places like any value). So a subscription that starts
  (or a plan that takes over) part-way through a period is billed its share of the period,
  not the window's average: a level of 2500 held Mar 5–Apr 1 in a Mar 1–Apr 1 period is
  2500 × 27/31, and the pieces of a period split by a plan change add up to the whole.
  `closing_level` is the gauge at `end` (opening + Σ deltas, or the last absolute value,
  else the opening).
- **transaction values** (percentage charges): the field values of the matching events in
  (timestamp, sequence) order, skipping events without a numeric value.

Results are `Decimal`s in canonical form: `Decimal("1.5")`, `Decimal("100")`, never
`Decimal("1.500000000000")` or `Decimal("1E+2")`.

Properties are the event's parsed JSON object. Parse it with `parse_float=Decimal` to keep every
digit; a float is read through its shortest representation (`repr`), which is the text that
JSON serializers write for it. No arithmetic here depends on a decimal context: values are
carried as integers of 10⁻¹² units, so sums of any size stay exact.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

Aggregation = Literal["count", "sum", "max", "unique_count", "latest", "weighted_sum"]
AGGREGATIONS: tuple[Aggregation, ...] = (
    "count",
    "sum",
    "max",
    "unique_count",
    "latest",
    "weighted_sum",
)
RECURRING_AGGREGATIONS: tuple[Aggregation, ...] = ("sum", "unique_count", "weighted_sum")
"""The aggregations whose value can carry over between periods (`recurring = true`)."""
Gauge = Literal["delta", "absolute"]
GAUGES: tuple[Gauge, ...] = ("delta", "absolute")

SCALE = 12
"""Decimal places every field value and result is rounded to."""

PROPERTY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
NUMERIC_STRING = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
"""Numeric strings, matched in full (the SQL builders use the same pattern, anchored)."""

_UNIT: int = 10**SCALE
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class MeterSpec:
    """What a meter aggregates; filters are normalized to a tuple sorted by property name."""

    code: str
    aggregation: Aggregation
    field: str = "quantity"
    filters: tuple[tuple[str, str], ...] = ()
    recurring: bool = False
    gauge: Gauge = "delta"

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"meter {self.code!r}: unknown aggregation {self.aggregation!r} "
                f"(use one of {', '.join(AGGREGATIONS)})"
            )
        if self.recurring and self.aggregation not in RECURRING_AGGREGATIONS:
            raise ValueError(
                f"meter {self.code!r}: {self.aggregation} meters cannot be recurring "
                f"(only {', '.join(RECURRING_AGGREGATIONS)})"
            )
        if self.gauge not in GAUGES:
            raise ValueError(f"meter {self.code!r}: gauge must be 'delta' or 'absolute'")
        if self.field != "quantity":
            prefix, _, name = self.field.partition(".")
            if prefix != "properties" or not PROPERTY_NAME.fullmatch(name):
                raise ValueError(
                    f"meter {self.code!r}: field {self.field!r} must be 'quantity' or "
                    "'properties.<name>' (letters, digits and _, not starting with a digit)"
                )
        filters = tuple(sorted((str(name), value) for name, value in self.filters))
        names = [name for name, _ in filters]
        for name, value in filters:
            if not PROPERTY_NAME.fullmatch(name):
                raise ValueError(f"meter {self.code!r}: filter property {name!r} is not a name")
            if not isinstance(value, str):
                raise ValueError(f"meter {self.code!r}: filter {name} must be a string")
        if len(set(names)) != len(names):
            raise ValueError(f"meter {self.code!r}: a filter property appears twice")
        object.__setattr__(self, "filters", filters)

    @property
    def carried(self) -> bool:
        """A recurring sum or unique_count: its value reads every event before the window's
        end (weighted_sum carries its level through an opening instead)."""
        return self.recurring and self.aggregation in ("sum", "unique_count")

    @property
    def property_name(self) -> str | None:
        """The property the field reads, or None for `quantity`."""
        if self.field == "quantity":
            return None
        return self.field.partition(".")[2]


@dataclass(frozen=True)
class EventRecord:
    timestamp: datetime
    quantity: Decimal
    properties: Mapping[str, object]
    sequence: int = 0
    operation: str = "add"  # "add" or "remove" (unique_count)


def matches(meter: MeterSpec, event: EventRecord) -> bool:
    """True when every filter's property is a JSON string equal to the filter's value."""
    for name, value in meter.filters:
        actual = event.properties.get(name)
        if not isinstance(actual, str) or actual != value:
            return False
    return True


def field_value(meter: MeterSpec, event: EventRecord) -> Decimal | None:
    """The field's numeric value rounded to 12 places; None if missing or not a number."""
    units = _field_units(meter, event)
    return None if units is None else _from_units(units)


def aggregate(
    meter: MeterSpec,
    events: Iterable[EventRecord],
    start: datetime,
    end: datetime,
    *,
    opening: Decimal = Decimal(0),
    period: tuple[datetime, datetime] | None = None,
) -> Decimal:
    """The meter's value for [start, end), by the rules in this module's docstring.

    `period` is the full billing period the window is part of (weighted_sum divides by it).
    """
    selected = _selected(meter, events, start, end, carried=meter.carried)
    kind = meter.aggregation
    if kind == "count":
        return Decimal(len(selected))
    if kind == "unique_count":
        return Decimal(len(present_values(meter, selected)))
    values = [units for units in (_field_units(meter, e) for e in selected) if units is not None]
    if kind == "sum":
        return _from_units(sum(values))
    if kind == "max":
        return _from_units(max(values, default=0))
    if kind == "latest":
        return _from_units(values[-1] if values else 0)
    divisor = weighted_divisor(start, end, period)
    return _weighted(meter, selected, start, end, rounded_units(opening), divisor)


def closing_level(
    meter: MeterSpec,
    events: Iterable[EventRecord],
    start: datetime,
    end: datetime,
    *,
    opening: Decimal = Decimal(0),
) -> Decimal:
    """weighted_sum: the gauge's level at `end`, which a recurring meter carries over."""
    if meter.aggregation != "weighted_sum":
        raise ValueError(f"meter {meter.code!r}: only weighted_sum meters have a level")
    level = rounded_units(opening)
    for event in _selected(meter, events, start, end):
        units = _field_units(meter, event)
        if units is not None:
            level = level + units if meter.gauge == "delta" else units
    return _from_units(level)


def reads(meter: MeterSpec, event: EventRecord) -> bool:
    """Whether a matching event is one the meter reads, so an invoice line counts it among
    its events: every event for `count`, one with a value it can tell apart for
    `unique_count` (a string counts), one with a numeric value for the others."""
    if meter.aggregation == "count":
        return True
    if meter.aggregation == "unique_count":
        return _event_key(meter, event) is not None
    return _field_units(meter, event) is not None


def value_key(meter: MeterSpec, event: EventRecord) -> str | None:
    """unique_count's identity of an event's value (None when it has none)."""
    return _event_key(meter, event)


def present_values(meter: MeterSpec, events: Iterable[EventRecord]) -> set[str]:
    """unique_count: the distinct values whose last event (by timestamp, sequence) is an add."""
    last: dict[str, str] = {}
    for event in sorted(events, key=lambda e: (e.timestamp, e.sequence)):
        key = _event_key(meter, event)
        if key is not None:
            last[key] = event.operation
    return {key for key, operation in last.items() if operation != "remove"}


def transaction_values(
    meter: MeterSpec, events: Iterable[EventRecord], start: datetime, end: datetime
) -> tuple[Decimal, ...]:
    """Field values of the matching events in (timestamp, sequence) order."""
    values = (field_value(meter, event) for event in _selected(meter, events, start, end))
    return tuple(value for value in values if value is not None)


def numeric_value(raw: object) -> Decimal | None:
    """A property's value as a number (rounded to 12 places), or None if it is not one."""
    units = _number_units(raw)
    return None if units is None else _from_units(units)


def distinct_key(raw: object) -> str | None:
    """unique_count's identity of a property value: strings as-is, numbers canonical."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool) or not isinstance(raw, int | float | Decimal):
        return None
    units = _number_units(raw)
    return None if units is None else units_text(units)


def rounded_units(value: Decimal) -> int:
    """`value` in 10⁻¹² units, rounded half away from zero (exact for any magnitude)."""
    if not value.is_finite():
        raise ValueError(f"{value} is not a finite number")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    coefficient = int("".join(map(str, digits)) or "0")
    shift = exponent + SCALE
    units: int
    if shift >= 0:
        units = coefficient * 10**shift
    else:
        units = _divide_half_away(coefficient, 10**-shift)
    return -units if sign else units


def weighted_units(numerator_units: int, total_microseconds: int) -> int:
    """Σ level × µs (in 10⁻¹² units) over the period's µs, rounded half away from zero."""
    quotient = _divide_half_away(abs(numerator_units), total_microseconds)
    return -quotient if numerator_units < 0 else quotient


def units_text(units: int) -> str:
    """10⁻¹² units as canonical decimal text (`"1.5"`, `"-0.000000000001"`, `"100"`)."""
    digits = str(abs(units)).rjust(SCALE + 1, "0")
    whole, fraction = digits[:-SCALE], digits[-SCALE:].rstrip("0")
    text = f"{whole}.{fraction}" if fraction else whole
    return f"-{text}" if units < 0 else text


def weighted_divisor(
    start: datetime, end: datetime, period: tuple[datetime, datetime] | None = None
) -> int:
    """weighted_sum's divisor: the microseconds of the full billing period (DESIGN: "seconds
    in the full period"), so a window that covers part of it yields its share, and adjacent
    windows of one period add up to the period's value. Without a period the window is the
    period. Raises ValueError when the window is not inside the period."""
    _check_period(start, end)
    if period is None:
        return period_microseconds(start, end)
    period_start, period_end = period
    total = period_microseconds(period_start, period_end)
    if start < period_start or end > period_end:
        raise ValueError(
            f"window {start.isoformat()}–{end.isoformat()} is not inside the period "
            f"{period_start.isoformat()}–{period_end.isoformat()}"
        )
    return total


def period_microseconds(start: datetime, end: datetime) -> int:
    """Microseconds in [start, end); raises ValueError unless both are aware and start < end."""
    _check_period(start, end)
    return (end - start) // _MICROSECOND


# -- internals ----------------------------------------------------------------------------


def _check_period(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("period bounds must be aware datetimes (UTC)")
    if not start < end:
        raise ValueError(f"empty period: {start.isoformat()} is not before {end.isoformat()}")


def _selected(
    meter: MeterSpec,
    events: Iterable[EventRecord],
    start: datetime,
    end: datetime,
    *,
    carried: bool = False,
) -> list[EventRecord]:
    """The matching events of [start, end) (of everything before `end` when `carried`), in
    (timestamp, sequence) order."""
    _check_period(start, end)
    chosen = [
        e
        for e in events
        if (carried or start <= e.timestamp) and e.timestamp < end and matches(meter, e)
    ]
    chosen.sort(key=lambda e: (e.timestamp, e.sequence))
    return chosen


def _field_units(meter: MeterSpec, event: EventRecord) -> int | None:
    name = meter.property_name
    if name is None:
        return rounded_units(event.quantity)
    return _number_units(event.properties.get(name))


def _event_key(meter: MeterSpec, event: EventRecord) -> str | None:
    name = meter.property_name
    if name is None:
        return units_text(rounded_units(event.quantity))
    return distinct_key(event.properties.get(name))


def _number_units(raw: object) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw * _UNIT
    if isinstance(raw, float):
        return rounded_units(Decimal(repr(raw))) if math.isfinite(raw) else None
    if isinstance(raw, Decimal):
        return rounded_units(raw) if raw.is_finite() else None
    if isinstance(raw, str) and NUMERIC_STRING.fullmatch(raw):
        return rounded_units(Decimal(raw))
    return None


def _weighted(
    meter: MeterSpec,
    events: list[EventRecord],
    start: datetime,
    end: datetime,
    opening: int,
    divisor: int,
) -> Decimal:
    level, since, area = opening, start, 0
    for event in events:
        units = _field_units(meter, event)
        if units is None:
            continue
        area += level * ((event.timestamp - since) // _MICROSECOND)
        level = level + units if meter.gauge == "delta" else units
        since = event.timestamp
    area += level * ((end - since) // _MICROSECOND)
    return _from_units(weighted_units(area, divisor))


def _divide_half_away(numerator: int, denominator: int) -> int:
    """round(numerator / denominator) with ties away from zero, for numerator >= 0."""
    quotient, remainder = divmod(numerator, denominator)
    return quotient + 1 if 2 * remainder >= denominator else quotient


def _from_units(units: int) -> Decimal:
    return Decimal(units_text(units))
