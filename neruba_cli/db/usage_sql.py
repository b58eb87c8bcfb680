"""Meter aggregations as SQL: the same results as neruba_cli.domain.aggregation, per customer.

Billing never loops over events in Python: `usage_query` builds one SELECT (customer_id, value)
grouped by customer, and the database does the work. The rules are the domain module's; this
module only spells them in each dialect's SQL:

- **Exact numbers.** PostgreSQL: NUMERIC (unbounded; property values ROUND(…, 12)). MariaDB:
  DECIMAL(65,12), so sums keep 53 integer digits (CAST rounds half away from zero, like the
  reference). SQLite: no decimal type, so exact Python functions registered on every
  connection (db/sqlite_functions.py: `neruba_sum`, `neruba_max`, `neruba_json_number`, …)
  carry decimals as canonical text.
- **JSON properties.** PostgreSQL: `CAST(properties AS jsonb) ->> name` with `jsonb_typeof`.
  MariaDB: `JSON_UNQUOTE(JSON_EXTRACT(properties, path))` with `JSON_TYPE` (JSON_VALUE
  would return `1` for `true` and `"1"` for `1` alike, in a case-insensitive collation), and
  strings compared as BINARY (no case folding, no PAD SPACE). SQLite: `json_type` /
  `json_extract` for string filters, and the registered functions for numbers (json_extract
  reads JSON numbers as floats). Property names are validated identifiers (MeterSpec) and
  travel as bound parameters (`name`, or the path `$.name`) on every dialect.
- **unique_count** ranks each customer's events per value (ROW_NUMBER by ts, key, newest
  first) and counts the values whose last event is not a `remove`.
- **recurring sum and unique_count** drop the lower bound: every matching event before the
  window's end counts (the value carried since the first event). Event spans (`event_stats`)
  and transaction values keep the window.
- **prorated usage** (`prorated_query`): Σ units × weight, where the weight of a unit added
  or removed at an instant is a CASE over the window's local day starts (or microseconds to
  the end), exactly as domain/prorated_usage.py; a unique_count's changes come from LAG over
  each value's events (an add counts when the value was absent, a remove when present).
- **weighted_sum.** A running SUM (delta gauges) or the value itself (absolute gauges) gives
  the level after each event; LEAD(ts) gives how long it was held, in integer microseconds
  (PostgreSQL EXTRACT(EPOCH …) × 10⁶, MariaDB TIMESTAMPDIFF(MICROSECOND, …), SQLite
  `neruba_epoch_us`); the opening level enters as one extra row at the period start. The
  divisor is the full billing period's microseconds (`weighted_divisor`: a window that is
  part of a period, after a mid-period start or plan change, gives its share). The
  final division is integer arithmetic rounded half away from zero at 12 places: PostgreSQL
  `div`, MariaDB `(X - MOD(X, Y)) / Y` (both exact), SQLite `neruba_weighted`.

Results are canonical Decimals (`Decimal("1.5")`), like `canonical_decimal`.

Limits (ingest should keep property numbers within DECIMAL(38,12), as it does quantities):
MariaDB clamps values past 53 integer digits; PostgreSQL fails the query on a JSON number
beyond NUMERIC's range or a string holding \u0000 (jsonb refuses both). MySQL 8 (tested here:
MariaDB 10.11 only) parses JSON numbers in text as doubles, so property numbers past 15
significant digits are not exact there; numeric strings and quantities are. Opening levels
travel as one UNION ALL row each: pass the customers of a batch, not thousands at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Select,
    String,
    Text,
    and_,
    case,
    cast,
    extract,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import Numeric, TypeDecorator

from neruba_cli.db.tables import event_versions_t, events_t
from neruba_cli.db.types import UTCDateTime
from neruba_cli.domain.aggregation import (
    MeterSpec,
    rounded_units,
    units_text,
    weighted_divisor,
)
from neruba_cli.domain.grouping import GroupKey
from neruba_cli.domain.money import canonical
from neruba_cli.domain.prorated_usage import Weights, prorated_from_area

# The numeric-string rule of the domain (NUMERIC_STRING), anchored at both ends. `\z`, not
# `$`: MariaDB's PCRE lets `$` match before a final newline.
_NUMERIC_STRING_PCRE = r"^-?[0-9]+([.][0-9]+)?\z"
_NUMERIC_STRING_POSIX = r"^-?[0-9]+([.][0-9]+)?$"
_PICO = Decimal("0.000000000001")

CURRENT = events_t.c.voided == false()
"""The events billing reads: not voided (an amended event's row holds its current version;
superseded versions live in `event_versions`). `voided` is in the events index, before `ts`."""
_TEN_TO_12 = 10**12


class UsageValue(TypeDecorator[Decimal]):
    """A usage result as a canonical Decimal, whatever the driver returned (Decimal, text or
    an integer): `Decimal("1.5")`, never `Decimal("1.500000000000")`."""

    impl = String
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        return None if value is None else _to_decimal(value)


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, float):
        raise TypeError(f"usage value {value!r} came back as a float")
    return canonical(Decimal(value))


# -- dialects -----------------------------------------------------------------------------


class _Dialect:
    """How one database spells the pieces every aggregation is built from."""

    def quantity(self) -> ColumnElement[Any]:
        raise NotImplementedError

    def quantity_key(self) -> ColumnElement[Any]:
        raise NotImplementedError

    def property_number(self, name: str) -> ColumnElement[Any]:
        """The property as an exact number rounded to 12 places, NULL if not a number."""
        raise NotImplementedError

    def property_key(self, name: str) -> ColumnElement[Any]:
        """unique_count's identity: a string as-is, a number as canonical text, else NULL."""
        raise NotImplementedError

    def in_key_order(self, key: ColumnElement[Any]) -> ColumnElement[Any]:
        """Idempotency keys compared byte by byte: events at the same instant are taken in
        key order, never in arrival order, so the same events give the same result whatever
        order they were imported in (SQLite compares bytes, MariaDB tables use utf8mb4_bin)."""
        return key

    def property_equals(self, name: str, value: str) -> ColumnElement[bool]:
        """The property is a JSON string equal to `value`, code point for code point."""
        raise NotImplementedError

    def distinct(self, key: ColumnElement[Any]) -> ColumnElement[Any]:
        return key

    def property_string(self, name: str) -> ColumnElement[Any]:
        """A group's value: the property when it is a JSON string, else NULL; grouped and
        compared code point for code point, like `property_equals`."""
        raise NotImplementedError

    def sum(self, value: ColumnElement[Any]) -> Any:
        return func.sum(value)

    def max(self, value: ColumnElement[Any]) -> Any:
        return func.max(value)

    def zero(self) -> ColumnElement[Any]:
        return literal(0)

    def negative(self, value: ColumnElement[Any]) -> ColumnElement[bool]:
        return value < 0

    def decimal(self, value: Decimal) -> ColumnElement[Any]:
        return literal(value, Numeric())

    def timestamp(self, value: datetime) -> ColumnElement[Any]:
        return literal(value, UTCDateTime())

    def microseconds(self, since: ColumnElement[Any], until: ColumnElement[Any]) -> Any:
        raise NotImplementedError

    def times(self, level: ColumnElement[Any], microseconds: ColumnElement[Any]) -> Any:
        return level * microseconds

    def weighted(self, area: ColumnElement[Any], total_microseconds: int) -> Any:
        raise NotImplementedError


class _SQLite(_Dialect):
    def quantity(self) -> ColumnElement[Any]:
        return func.neruba_decimal(events_t.c.quantity)

    def quantity_key(self) -> ColumnElement[Any]:
        return func.neruba_decimal(events_t.c.quantity)

    def property_number(self, name: str) -> ColumnElement[Any]:
        # JSON integers that fit 64 bits are exact in SQLite: their text is already canonical.
        # Strings only need the numeric-string check; the rest (JSON decimals, which SQLite
        # would read as floats, and integers past 64 bits) is parsed exactly in Python.
        path = literal(f"$.{name}", String)
        extracted = func.json_extract(events_t.c.properties, path)
        return case(
            (func.json_type(events_t.c.properties, path).is_(None), literal(None, String)),
            (
                and_(
                    func.json_type(events_t.c.properties, path) == "integer",
                    func.typeof(extracted) == "integer",
                ),
                cast(extracted, Text),
            ),
            (
                func.json_type(events_t.c.properties, path) == "text",
                func.neruba_numeric_text(extracted),
            ),
            else_=func.neruba_json_number(events_t.c.properties, literal(name, String)),
        )

    def property_key(self, name: str) -> ColumnElement[Any]:
        return func.neruba_json_key(events_t.c.properties, literal(name, String))

    def property_equals(self, name: str, value: str) -> ColumnElement[bool]:
        path = literal(f"$.{name}", String)
        return and_(
            func.json_type(events_t.c.properties, path) == "text",
            func.json_extract(events_t.c.properties, path) == literal(value, String),
        )

    def property_string(self, name: str) -> ColumnElement[Any]:
        path = literal(f"$.{name}", String)
        return case(
            (
                func.json_type(events_t.c.properties, path) == "text",
                func.json_extract(events_t.c.properties, path),
            )
        )

    def sum(self, value: ColumnElement[Any]) -> Any:
        return func.neruba_sum(value)

    def max(self, value: ColumnElement[Any]) -> Any:
        return func.neruba_max(value)

    def zero(self) -> ColumnElement[Any]:
        return literal("0", String)

    def negative(self, value: ColumnElement[Any]) -> ColumnElement[bool]:
        # values are canonical text here: a number is negative when it starts with "-"
        return func.substr(value, 1, 1) == "-"

    def decimal(self, value: Decimal) -> ColumnElement[Any]:
        return literal(units_text(rounded_units(value)), String)

    def microseconds(self, since: ColumnElement[Any], until: ColumnElement[Any]) -> Any:
        return func.neruba_epoch_us(until) - func.neruba_epoch_us(since)

    def times(self, level: ColumnElement[Any], microseconds: ColumnElement[Any]) -> Any:
        return func.neruba_mul(level, microseconds)

    def weighted(self, area: ColumnElement[Any], total_microseconds: int) -> Any:
        return func.neruba_weighted(area, literal(total_microseconds, BigInteger))


class _MariaDB(_Dialect):
    DECIMAL = mysql.DECIMAL(65, 12)
    # MariaDB says INTEGER or DOUBLE (even for 1e-20); MySQL 8 also DECIMAL and UNSIGNED INTEGER.
    NUMBER_TYPES = ("INTEGER", "DOUBLE", "DECIMAL", "UNSIGNED INTEGER")

    def _extract(self, name: str) -> ColumnElement[Any]:
        return func.JSON_EXTRACT(events_t.c.properties, literal(f"$.{name}", String))

    def _text(self, name: str) -> ColumnElement[Any]:
        return func.JSON_UNQUOTE(self._extract(name))

    def _canonical_text(self, number: ColumnElement[Any]) -> ColumnElement[Any]:
        # DECIMAL(65,12) prints 12 decimals: drop the trailing zeros, and the point if bare.
        return func.REGEXP_REPLACE(cast(number, mysql.CHAR()), literal(r"\.?0+$"), literal(""))

    def quantity(self) -> ColumnElement[Any]:
        return cast(events_t.c.quantity, self.DECIMAL)

    def quantity_key(self) -> ColumnElement[Any]:
        return self._canonical_text(self.quantity())

    def _is_number(self, name: str) -> ColumnElement[bool]:
        return func.JSON_TYPE(self._extract(name)).in_(self.NUMBER_TYPES)

    def _is_string(self, name: str) -> ColumnElement[bool]:
        return func.JSON_TYPE(self._extract(name)) == "STRING"

    def property_number(self, name: str) -> ColumnElement[Any]:
        numeric_string = and_(
            self._is_string(name),
            self._text(name).op("REGEXP")(literal(_NUMERIC_STRING_PCRE, String)),
        )
        return case(
            (or_(self._is_number(name), numeric_string), cast(self._text(name), self.DECIMAL))
        )

    def property_key(self, name: str) -> ColumnElement[Any]:
        return case(
            (self._is_string(name), self._text(name)),
            (
                self._is_number(name),
                self._canonical_text(cast(self._text(name), self.DECIMAL)),
            ),
        )

    def property_equals(self, name: str, value: str) -> ColumnElement[bool]:
        return and_(
            self._is_string(name),
            cast(self._text(name), mysql.BINARY()) == cast(literal(value, String), mysql.BINARY()),
        )

    def distinct(self, key: ColumnElement[Any]) -> ColumnElement[Any]:
        return cast(key, mysql.BINARY())

    def property_string(self, name: str) -> ColumnElement[Any]:
        # BINARY: grouped byte by byte (no case folding, no PAD SPACE); read back as UTF-8
        return case((self._is_string(name), cast(self._text(name), mysql.BINARY())))

    def decimal(self, value: Decimal) -> ColumnElement[Any]:
        return cast(literal(units_text(rounded_units(value)), String), self.DECIMAL)

    def timestamp(self, value: datetime) -> ColumnElement[Any]:
        return cast(literal(value, UTCDateTime()), mysql.DATETIME(fsp=6))

    def microseconds(self, since: ColumnElement[Any], until: ColumnElement[Any]) -> Any:
        return func.TIMESTAMPDIFF(literal_column("MICROSECOND"), since, until)

    def weighted(self, area: ColumnElement[Any], total_microseconds: int) -> Any:
        # area has at most 12 decimals: in 10⁻¹² units it is an integer. Round the quotient
        # half away from zero with exact DECIMAL arithmetic: (X - MOD(X, Y)) / Y divides
        # evenly, so no digit depends on div_precision_increment.
        units = cast(area * _TEN_TO_12, mysql.DECIMAL(65, 0))
        total = literal(total_microseconds, BigInteger)
        doubled = 2 * func.ABS(units) + total
        quotient = (doubled - func.MOD(doubled, 2 * total)) / (2 * total)
        return cast(func.SIGN(units) * quotient * literal(_PICO, Numeric()), self.DECIMAL)


class _PostgreSQL(_Dialect):
    def in_key_order(self, key: ColumnElement[Any]) -> ColumnElement[Any]:
        return key.collate("C")  # the database's default collation may be a locale's

    def _props(self) -> ColumnElement[Any]:
        return cast(events_t.c.properties, JSONB)

    def _json(self, name: str) -> ColumnElement[Any]:
        return self._props().op("->")(literal(name, Text))

    def _text(self, name: str) -> ColumnElement[Any]:
        return self._props().op("->>")(literal(name, Text))

    def _type(self, name: str) -> ColumnElement[Any]:
        return func.jsonb_typeof(self._json(name))

    def _number(self, name: str) -> ColumnElement[Any]:
        return func.round(cast(self._text(name), Numeric()), 12)

    def quantity(self) -> ColumnElement[Any]:
        return type_coerce(events_t.c.quantity, Numeric())

    def quantity_key(self) -> ColumnElement[Any]:
        return cast(func.trim_scale(self.quantity()), Text)

    def property_number(self, name: str) -> ColumnElement[Any]:
        numeric_string = and_(
            self._type(name) == "string",
            self._text(name).op("~")(literal(_NUMERIC_STRING_POSIX, Text)),
        )
        return case((or_(self._type(name) == "number", numeric_string), self._number(name)))

    def property_key(self, name: str) -> ColumnElement[Any]:
        return case(
            (self._type(name) == "string", self._text(name)),
            (self._type(name) == "number", cast(func.trim_scale(self._number(name)), Text)),
        )

    def property_equals(self, name: str, value: str) -> ColumnElement[bool]:
        return and_(self._type(name) == "string", self._text(name) == literal(value, Text))

    def property_string(self, name: str) -> ColumnElement[Any]:
        return case((self._type(name) == "string", self._text(name)))

    def microseconds(self, since: ColumnElement[Any], until: ColumnElement[Any]) -> Any:
        seconds = extract("epoch", until) - extract("epoch", since)
        return cast(seconds * 1_000_000, BigInteger)

    def weighted(self, area: ColumnElement[Any], total_microseconds: int) -> Any:
        # Exact: area × 10¹² is an integer; div() truncates, so adding half the divisor
        # before dividing rounds half away from zero.
        units = area * _TEN_TO_12
        total = literal(total_microseconds, BigInteger)
        quotient = func.div(2 * func.abs(units) + total, 2 * total)
        return func.sign(units) * quotient * literal(_PICO, Numeric())


_DIALECTS: dict[str, _Dialect] = {
    "sqlite": _SQLite(),
    "mysql": _MariaDB(),
    "mariadb": _MariaDB(),
    "postgresql": _PostgreSQL(),
}


def _dialect(name: str) -> _Dialect:
    try:
        return _DIALECTS[name]
    except KeyError:
        raise ValueError(f"usage SQL does not support the {name!r} dialect") from None


# -- the pieces every aggregation shares ----------------------------------------------------


class _Usage:
    """One meter over one period for some customers: the conditions and the field, in SQL."""

    def __init__(
        self,
        meter: MeterSpec,
        sql: _Dialect,
        project_id: str,
        start: datetime,
        end: datetime,
        customer_ids: Sequence[str] | None,
        openings: Mapping[str, Decimal] | None,
        period: tuple[datetime, datetime] | None = None,
        *,
        carried: bool = False,
        group_by: Sequence[str] = (),
    ) -> None:
        if group_by and openings:
            raise ValueError(f"meter {meter.code!r}: opening levels cannot be grouped")
        self.group_by = tuple(group_by)
        # weighted_sum's divisor: the full billing period's µs (also checks the window)
        self.total_microseconds = weighted_divisor(start, end, period)
        self.meter, self.sql = meter, sql
        self.start, self.end = start, end
        self.customer_ids = None if customer_ids is None else list(customer_ids)
        self.openings = dict(openings or {})
        self.conditions: list[ColumnElement[bool]] = [
            events_t.c.project_id == project_id,
            events_t.c.meter == meter.code,
            events_t.c.ts < end,
            CURRENT,
        ]
        if not carried:  # a recurring sum or unique_count reads everything before `end`
            self.conditions.append(events_t.c.ts >= start)
        if self.customer_ids is not None:
            self.conditions.append(events_t.c.customer_id.in_(self.customer_ids))
        self.conditions += [sql.property_equals(name, value) for name, value in meter.filters]

    def groups(self) -> list[ColumnElement[Any]]:
        """The group columns `g0`, `g1`, … (one per group_by property) over the events."""
        return [
            self.sql.property_string(name).label(f"g{index}")
            for index, name in enumerate(self.group_by)
        ]

    def keys_of(self, rows: Any) -> list[ColumnElement[Any]]:
        """A subquery's partition: customer_id and the group columns."""
        return [rows.c.customer_id, *(rows.c[f"g{i}"] for i in range(len(self.group_by)))]

    def value(self) -> ColumnElement[Any]:
        """The field's exact value per event (NULL when missing or not a number)."""
        name = self.meter.property_name
        return self.sql.quantity() if name is None else self.sql.property_number(name)

    def key(self) -> ColumnElement[Any]:
        name = self.meter.property_name
        return self.sql.quantity_key() if name is None else self.sql.property_key(name)

    def counted(self) -> list[ColumnElement[bool]]:
        """What makes a matching event one the meter reads: any event for `count`, a value
        it can tell apart for `unique_count` (strings included), a number for the rest."""
        if self.meter.aggregation == "count":
            return []
        if self.meter.aggregation == "unique_count":
            return [self.key().is_not(None)]
        return [self.value().is_not(None)]

    def valued(self) -> Any:
        """The matching events that have a field value: (customer_id, ts, seq, v)."""
        rows = select(
            events_t.c.customer_id,
            *self.groups(),
            events_t.c.ts,
            self.sql.in_key_order(events_t.c.idempotency_key).label("seq"),
            self.value().label("v"),
        ).where(*self.conditions)
        every = rows.subquery("matching")
        return select(every).where(every.c.v.is_not(None))

    def points(self) -> Any:
        """weighted_sum's level changes: the valued events and, first, the opening levels."""
        rows: list[Select[Any]] = [self.valued()]
        for customer_id, opening in sorted(self.openings.items()):
            if opening == 0 or (
                self.customer_ids is not None and customer_id not in self.customer_ids
            ):
                continue
            rows.append(
                select(
                    literal(customer_id, String).label("customer_id"),
                    self.sql.timestamp(self.start).label("ts"),
                    self.sql.in_key_order(literal("", String)).label("seq"),
                    self.sql.decimal(opening).label("v"),
                )
            )
        return union_all(*rows).subquery("points")


def _result(
    customer_id: ColumnElement[Any], value: Any, groups: Sequence[ColumnElement[Any]] = ()
) -> list[ColumnElement[Any]]:
    return [
        customer_id.label("customer_id"),
        type_coerce(value, UsageValue()).label("value"),
        *(group.label(f"g{index}") for index, group in enumerate(groups)),
    ]


def _per_event(usage: _Usage, value: Any) -> Select[Any]:
    """An aggregate over the matching events, per customer (and group)."""
    groups = usage.groups()
    return (
        select(*_result(events_t.c.customer_id, value, groups))
        .where(*usage.conditions)
        .group_by(events_t.c.customer_id, *groups)
    )


# -- one builder per aggregation ------------------------------------------------------------


def _count(usage: _Usage) -> Select[Any]:
    return _per_event(usage, func.count())


def _sum(usage: _Usage) -> Select[Any]:
    return _per_event(usage, func.coalesce(usage.sql.sum(usage.value()), usage.sql.zero()))


def _max(usage: _Usage) -> Select[Any]:
    return _per_event(usage, func.coalesce(usage.sql.max(usage.value()), usage.sql.zero()))


def _unique_count(usage: _Usage) -> Select[Any]:
    """The values whose last event (by ts, key) is not a remove, counted per customer (and
    group)."""
    key = usage.sql.distinct(usage.key())
    groups = [usage.sql.property_string(name) for name in usage.group_by]
    order = (events_t.c.ts.desc(), usage.sql.in_key_order(events_t.c.idempotency_key).desc())
    rank = func.row_number().over(
        partition_by=(events_t.c.customer_id, *groups, key), order_by=order
    )
    last = (
        select(
            events_t.c.customer_id,
            *(group.label(f"g{index}") for index, group in enumerate(groups)),
            events_t.c.operation.label("operation"),
            rank.label("rank"),
        )
        .where(*usage.conditions, key.is_not(None))
        .subquery("last_events")
    )
    present = or_(last.c.operation.is_(None), last.c.operation != "remove")
    keys = usage.keys_of(last)
    return (
        select(*_result(keys[0], func.count(), keys[1:]))
        .where(last.c.rank == 1, present)
        .group_by(*keys)
    )


def _latest_of(rows: Any, usage: _Usage) -> Select[Any]:
    """The `v` of each customer's (and group's) last row by (ts, seq)."""
    keys = usage.keys_of(rows)
    rank = (
        func.row_number()
        .over(partition_by=keys, order_by=(rows.c.ts.desc(), rows.c.seq.desc()))
        .label("rank")
    )
    ranked = select(*keys, rows.c.v, rank).subquery("ranked")
    ranked_keys = usage.keys_of(ranked)
    return select(*_result(ranked_keys[0], ranked.c.v, ranked_keys[1:])).where(ranked.c.rank == 1)


def _latest(usage: _Usage) -> Select[Any]:
    return _latest_of(usage.valued().subquery("valued"), usage)


def _weighted_sum(usage: _Usage) -> Select[Any]:
    sql, points = usage.sql, usage.points()
    order = (points.c.ts, points.c.seq)
    partition = usage.keys_of(points)
    if usage.meter.gauge == "delta":
        level = sql.sum(points.c.v).over(partition_by=partition, order_by=order, rows=(None, 0))
    else:
        level = points.c.v
    until = func.coalesce(
        func.lead(points.c.ts).over(partition_by=partition, order_by=order),
        sql.timestamp(usage.end),
    )
    held = select(
        *partition,
        level.label("level"),
        sql.microseconds(points.c.ts, until).label("us"),
    ).subquery("held")
    held_keys = usage.keys_of(held)
    areas = (
        select(*held_keys, sql.sum(sql.times(held.c.level, held.c.us)).label("area"))
        .group_by(*held_keys)
        .subquery("areas")
    )
    value = sql.weighted(areas.c.area, usage.total_microseconds)
    area_keys = usage.keys_of(areas)
    return select(*_result(area_keys[0], value, area_keys[1:]))


_BUILDERS = {
    "count": _count,
    "sum": _sum,
    "max": _max,
    "unique_count": _unique_count,
    "latest": _latest,
    "weighted_sum": _weighted_sum,
}


def _closing(usage: _Usage) -> Select[Any]:
    """weighted_sum: each customer's level at the period end."""
    points = usage.points()
    if usage.meter.gauge == "absolute":
        return _latest_of(points, usage)
    return select(*_result(points.c.customer_id, usage.sql.sum(points.c.v))).group_by(
        points.c.customer_id
    )


# -- public API ---------------------------------------------------------------------------


def usage_query(
    meter: MeterSpec,
    *,
    dialect: str,
    project_id: str,
    start: datetime,
    end: datetime,
    customer_ids: Sequence[str] | None = None,
    openings: Mapping[str, Decimal] | None = None,
    period: tuple[datetime, datetime] | None = None,
    group_by: Sequence[str] = (),
) -> Select[Any]:
    """SELECT customer_id, value: the meter's value per customer for [start, end).

    `openings` (weighted_sum only) are the customers' levels at `start`; `period` is the full
    billing period [start, end) is part of, which weighted_sum divides by (default: the window).
    With `group_by` (property names), one row per customer and group, the group's values in
    columns g0, g1, … (domain/grouping.py); openings cannot be grouped.
    """
    sql = _dialect(dialect)
    usage = _Usage(
        meter,
        sql,
        project_id,
        start,
        end,
        customer_ids,
        openings,
        period,
        carried=meter.carried,
        group_by=group_by,
    )
    return _BUILDERS[meter.aggregation](usage)


def property_group(dialect: str, name: str) -> ColumnElement[Any]:
    """A group's value of property `name` per event, as billing groups it: the JSON string,
    else NULL (read it back with `group_value`)."""
    return _dialect(dialect).property_string(name)


def group_of(row: Any, size: int) -> GroupKey:
    """A result row's group: its g0, g1, … as text (MariaDB returns them as bytes)."""
    return tuple(group_value(row._mapping[f"g{index}"]) for index in range(size))


def group_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8")
    return str(value)


def aggregate_groups(
    conn: Connection,
    meter: MeterSpec,
    group_by: Sequence[str],
    *,
    project_id: str,
    start: datetime,
    end: datetime,
    customer_ids: Sequence[str] | None = None,
    period: tuple[datetime, datetime] | None = None,
) -> dict[str, dict[GroupKey, Decimal]]:
    """customer_id → group → value: `aggregate_usage` per group of `group_by`. Groups without
    events are absent (their value is 0)."""
    query = usage_query(
        meter,
        dialect=conn.dialect.name,
        project_id=project_id,
        start=start,
        end=end,
        customer_ids=customer_ids,
        period=period,
        group_by=group_by,
    )
    found: dict[str, dict[GroupKey, Decimal]] = {}
    for row in conn.execute(query):
        found.setdefault(row.customer_id, {})[group_of(row, len(group_by))] = row.value
    return found


def group_event_stats(
    conn: Connection,
    meter: MeterSpec,
    group_by: Sequence[str],
    *,
    project_id: str,
    start: datetime,
    end: datetime,
    customer_ids: Sequence[str],
) -> dict[str, dict[GroupKey, tuple[int, datetime, datetime]]]:
    """`event_stats` per group: customer_id → group → (count, first ts, last ts)."""
    usage = _Usage(
        meter,
        _dialect(conn.dialect.name),
        project_id,
        start,
        end,
        customer_ids,
        None,
        None,
        group_by=group_by,
    )
    groups = usage.groups()
    query = (
        select(
            events_t.c.customer_id,
            *groups,
            func.count().label("n"),
            func.min(events_t.c.ts).label("first"),
            func.max(events_t.c.ts).label("last"),
        )
        .where(*usage.conditions, *usage.counted())
        .group_by(events_t.c.customer_id, *groups)
    )
    found: dict[str, dict[GroupKey, tuple[int, datetime, datetime]]] = {}
    for row in conn.execute(query):
        key = group_of(row, len(group_by))
        found.setdefault(row.customer_id, {})[key] = (int(row.n), row.first, row.last)
    return found


def group_transaction_values(
    conn: Connection,
    meter: MeterSpec,
    group_by: Sequence[str],
    *,
    project_id: str,
    customer_id: str,
    start: datetime,
    end: datetime,
) -> dict[GroupKey, tuple[Decimal, ...]]:
    """`transaction_values` per group: each group's values in (ts, idempotency key) order."""
    usage = _Usage(
        meter,
        _dialect(conn.dialect.name),
        project_id,
        start,
        end,
        [customer_id],
        None,
        None,
        group_by=group_by,
    )
    value = usage.value()
    query = (
        select(type_coerce(value, UsageValue()).label("value"), *usage.groups())
        .where(*usage.conditions, value.is_not(None))
        .order_by(events_t.c.ts, usage.sql.in_key_order(events_t.c.idempotency_key))
    )
    found: dict[GroupKey, list[Decimal]] = {}
    for row in conn.execute(query, execution_options={"yield_per": 1000}):
        found.setdefault(group_of(row, len(group_by)), []).append(row.value)
    return {key: tuple(values) for key, values in found.items()}


def _weight(grid: Weights, sql: _Dialect, ts: Any, *, removed: bool) -> ColumnElement[Any]:
    """The grid's weight of a unit added (or removed) at `ts`, as SQL (prorated_usage.py):
    the whole window before its start; then microseconds to the end, or the day starts left
    (a linear CASE over them: at most 367 for a yearly period)."""
    before = (ts < grid.start, literal_column(str(grid.whole), BigInteger))
    if grid.mode == "second":
        return case(before, else_=sql.microseconds(ts, sql.timestamp(grid.end)))
    count = len(grid.day_starts)
    whens: list[tuple[Any, Any]] = [before]
    for index, moment in enumerate(grid.day_starts):
        if removed:
            whens.append((ts <= moment, literal_column(str(count - index - 1), BigInteger)))
        else:
            whens.append((ts < moment, literal_column(str(count - index), BigInteger)))
    return case(*whens, else_=literal_column("0", BigInteger))


def prorated_query(
    meter: MeterSpec,
    grid: Weights,
    *,
    dialect: str,
    project_id: str,
    customer_ids: Sequence[str] | None = None,
) -> Select[Any]:
    """SELECT customer_id, area: Σ units × weight of a recurring sum or unique_count meter over
    the grid's window (every matching event before its end), exact (prorated_usage.py)."""
    if not meter.carried:
        raise ValueError(f"meter {meter.code!r}: only recurring sum and unique_count prorate")
    sql = _dialect(dialect)
    usage = _Usage(meter, sql, project_id, grid.start, grid.end, customer_ids, None, carried=True)
    if meter.aggregation == "sum":
        value = usage.value()
        weight = case(
            (sql.negative(value), _weight(grid, sql, events_t.c.ts, removed=True)),
            else_=_weight(grid, sql, events_t.c.ts, removed=False),
        )
        area = func.coalesce(sql.sum(sql.times(value, weight)), sql.zero())
        return (
            select(*_result(events_t.c.customer_id, area))
            .where(*usage.conditions, value.is_not(None))
            .group_by(events_t.c.customer_id)
        )
    key = sql.distinct(usage.key())
    removing = case((events_t.c.operation == "remove", 1), else_=0)
    order = (events_t.c.ts, sql.in_key_order(events_t.c.idempotency_key))
    before = func.lag(removing).over(partition_by=(events_t.c.customer_id, key), order_by=order)
    changes = (
        select(
            events_t.c.customer_id,
            removing.label("removing"),
            before.label("before"),
            _weight(grid, sql, events_t.c.ts, removed=False).label("added"),
            _weight(grid, sql, events_t.c.ts, removed=True).label("removed"),
        )
        .where(*usage.conditions, key.is_not(None))
        .subquery("changes")
    )
    step = case(
        (
            and_(changes.c.removing == 0, or_(changes.c.before.is_(None), changes.c.before == 1)),
            changes.c.added,
        ),
        (and_(changes.c.removing == 1, changes.c.before == 0), -changes.c.removed),
        else_=literal_column("0", BigInteger),
    )
    return select(*_result(changes.c.customer_id, func.sum(step))).group_by(changes.c.customer_id)


def prorated_usage(
    conn: Connection,
    meter: MeterSpec,
    grid: Weights,
    *,
    project_id: str,
    customer_ids: Sequence[str] | None = None,
) -> dict[str, Decimal]:
    """customer_id → prorated units (rounded up to 5 places) of a recurring sum or
    unique_count meter over the grid's window; customers without events are absent (0)."""
    query = prorated_query(
        meter, grid, dialect=conn.dialect.name, project_id=project_id, customer_ids=customer_ids
    )
    return {
        row.customer_id: prorated_from_area(rounded_units(row.value), grid.total)
        for row in conn.execute(query)
    }


def closing_query(
    meter: MeterSpec,
    *,
    dialect: str,
    project_id: str,
    start: datetime,
    end: datetime,
    customer_ids: Sequence[str] | None = None,
    openings: Mapping[str, Decimal] | None = None,
) -> Select[Any]:
    """SELECT customer_id, value: a weighted_sum meter's level at `end` per customer."""
    if meter.aggregation != "weighted_sum":
        raise ValueError(f"meter {meter.code!r}: only weighted_sum meters have a level")
    sql = _dialect(dialect)
    return _closing(_Usage(meter, sql, project_id, start, end, customer_ids, openings))


def aggregate_usage(
    conn: Connection,
    meter: MeterSpec,
    *,
    project_id: str,
    start: datetime,
    end: datetime,
    customer_ids: Sequence[str] | None = None,
    openings: Mapping[str, Decimal] | None = None,
    period: tuple[datetime, datetime] | None = None,
) -> dict[str, Decimal]:
    """customer_id → value. Customers without events may be absent (their value is 0), except
    weighted_sum customers with a non-zero opening level. `period`: as in `usage_query`."""
    query = usage_query(
        meter,
        dialect=conn.dialect.name,
        project_id=project_id,
        start=start,
        end=end,
        customer_ids=customer_ids,
        openings=openings,
        period=period,
    )
    return {row.customer_id: row.value for row in conn.execute(query)}


def closing_levels(
    conn: Connection,
    meter: MeterSpec,
    *,
    project_id: str,
    start: datetime,
    end: datetime,
    customer_ids: Sequence[str] | None = None,
    openings: Mapping[str, Decimal] | None = None,
) -> dict[str, Decimal]:
    """customer_id → the gauge at `end` (the next period's opening for recurring meters).
    Customers with neither events nor an opening level are absent (their level is 0)."""
    query = closing_query(
        meter,
        dialect=conn.dialect.name,
        project_id=project_id,
        start=start,
        end=end,
        customer_ids=customer_ids,
        openings=openings,
    )
    return {row.customer_id: row.value for row in conn.execute(query)}


def transaction_values(
    conn: Connection,
    meter: MeterSpec,
    *,
    project_id: str,
    customer_id: str,
    start: datetime,
    end: datetime,
) -> Iterator[Decimal]:
    """The field values of one customer's matching events, in (ts, idempotency key) order,
    streamed.

    The arguments are checked at once; the query runs when iteration starts. Consume the
    values before using `conn` for anything else (MariaDB and PostgreSQL stream them through
    a server-side cursor).
    """
    usage = _Usage(meter, _dialect(conn.dialect.name), project_id, start, end, [customer_id], None)
    value = usage.value()
    query = (
        select(type_coerce(value, UsageValue()).label("value"))
        .where(*usage.conditions, value.is_not(None))
        .order_by(events_t.c.ts, usage.sql.in_key_order(events_t.c.idempotency_key))
    )
    return _stream(conn, query)


def _stream(conn: Connection, query: Select[Any]) -> Iterator[Decimal]:
    with conn.execute(query, execution_options={"yield_per": 1000}) as result:
        for (amount,) in result:
            yield amount


def event_stats(
    conn: Connection,
    meter: MeterSpec,
    *,
    project_id: str,
    start: datetime,
    end: datetime,
    customer_ids: Sequence[str],
) -> dict[str, tuple[int, datetime, datetime]]:
    """customer_id → (count, first ts, last ts) of the events that count for the meter: those
    it matches that it can read (`_Usage.counted`). What an invoice line says about "which
    events"."""
    found = group_event_stats(
        conn, meter, (), project_id=project_id, start=start, end=end, customer_ids=customer_ids
    )
    return {customer_id: groups[()] for customer_id, groups in found.items()}


def meter_stats(
    conn: Connection,
    *,
    project_id: str,
    start: datetime,
    end: datetime,
    customer_ids: Sequence[str],
) -> dict[tuple[str, str], tuple[int, datetime | None, datetime | None, int]]:
    """(customer_id, meter code) → (count, first ts, last ts, versions) of the events in
    [start, end): one pass that gives both the per-customer versions a rerun compares (with
    `superseded_versions`, see `event_counts`) and the span of the current (not voided) events
    of every meter that reads `quantity` without filters (count 0 and no span when all of a
    meter's events are voided)."""
    current = case((CURRENT, 1), else_=0)
    query = (
        select(
            events_t.c.customer_id,
            events_t.c.meter,
            func.sum(current).label("n"),
            type_coerce(func.min(case((CURRENT, events_t.c.ts))), UTCDateTime()).label("first"),
            type_coerce(func.max(case((CURRENT, events_t.c.ts))), UTCDateTime()).label("last"),
            func.count().label("rows"),
        )
        .where(
            events_t.c.project_id == project_id,
            events_t.c.customer_id.in_(list(customer_ids)),
            events_t.c.ts >= start,
            events_t.c.ts < end,
        )
        .group_by(events_t.c.customer_id, events_t.c.meter)
    )
    return {
        (row.customer_id, row.meter): (
            int(row.n or 0),
            row.first,
            row.last,
            int(row.rows),
        )
        for row in conn.execute(query)
    }


def event_counts(
    conn: Connection,
    *,
    project_id: str,
    start: datetime,
    end: datetime,
    customer_ids: Sequence[str],
) -> dict[str, int]:
    """customer_id → how many event versions it has in [start, end): its events (voided ones
    too) and their superseded versions. A cheap way to see whether anything changed since an
    invoice was computed: a new event, a void and an amendment each add one, and nothing
    ever takes one away (an event never leaves its row, nor its timestamp)."""
    query = (
        select(events_t.c.customer_id, func.count().label("n"))
        .where(
            events_t.c.project_id == project_id,
            events_t.c.customer_id.in_(list(customer_ids)),
            events_t.c.ts >= start,
            events_t.c.ts < end,
        )
        .group_by(events_t.c.customer_id)
    )
    counts = {row.customer_id: int(row.n) for row in conn.execute(query)}
    for customer_id, n in superseded_versions(
        conn, project_id=project_id, start=start, end=end, customer_ids=customer_ids
    ).items():
        counts[customer_id] = counts.get(customer_id, 0) + n
    return counts


def superseded_versions(
    conn: Connection,
    *,
    project_id: str,
    start: datetime,
    end: datetime,
    customer_ids: Sequence[str],
) -> dict[str, int]:
    """customer_id → how many superseded versions of its events in [start, end) are kept
    (one per void or amendment; none for a project that never corrected an event)."""
    query = (
        select(event_versions_t.c.customer_id, func.count().label("n"))
        .where(
            event_versions_t.c.project_id == project_id,
            event_versions_t.c.customer_id.in_(list(customer_ids)),
            event_versions_t.c.ts >= start,
            event_versions_t.c.ts < end,
        )
        .group_by(event_versions_t.c.customer_id)
    )
    return {row.customer_id: int(row.n) for row in conn.execute(query)}
