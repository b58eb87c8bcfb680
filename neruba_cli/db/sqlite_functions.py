"""Exact decimal SQL functions for SQLite, registered on every connection by db/engine.py.

SQLite has no decimal type: quantities are stored as canonical text (ExactDecimal), and its
JSON functions read numbers as floats. These functions let SQL aggregate usage exactly, so
usage is aggregated in the database on SQLite as on the servers (db/usage_sql.py). Decimals go
in and out as canonical text (`"1.5"`, never a float); the number rules are the domain's
(neruba_cli.domain.aggregation), so SQLite and the pure reference cannot drift apart.

- `neruba_decimal(text)`: the value rounded to 12 places, as canonical text.
- `neruba_json_number(properties, name)`: the property as a number (a JSON number or a
  numeric string), as canonical text; NULL when missing or not a number.
- `neruba_numeric_text(text)`: a numeric string (the domain's rule) as canonical text, else
  NULL; lets SQL read string properties without parsing the whole document again.
- `neruba_json_key(properties, name)`: unique_count's identity of the property: a string as
  it is, a number as canonical text; NULL otherwise.
- `neruba_sum(text)`: exact sum (an aggregate and a window function); NULL over no values.
- `neruba_max(text)`: exact maximum (an aggregate); NULL over no values.
- `neruba_mul(text, integer)`: exact product, as canonical text.
- `neruba_epoch_us(timestamp)`: a stored naive-UTC timestamp in microseconds since 1970.
- `neruba_weighted(area, microseconds)`: area / microseconds rounded to 12 places, half away
  from zero, as canonical text (weighted_sum's final division).
"""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from neruba_cli.domain.aggregation import (
    NUMERIC_STRING,
    distinct_key,
    numeric_value,
    rounded_units,
    units_text,
    weighted_units,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def register(connection: sqlite3.Connection) -> None:
    """Register Neruba's functions on a raw sqlite3 connection."""
    connection.create_function("neruba_decimal", 1, _decimal, deterministic=True)
    connection.create_function("neruba_json_number", 2, _json_number, deterministic=True)
    connection.create_function("neruba_json_key", 2, _json_key, deterministic=True)
    connection.create_function("neruba_numeric_text", 1, _numeric_text, deterministic=True)
    connection.create_function("neruba_mul", 2, _mul, deterministic=True)
    connection.create_function("neruba_epoch_us", 1, _epoch_us, deterministic=True)
    connection.create_function("neruba_weighted", 2, _weighted, deterministic=True)
    connection.create_window_function("neruba_sum", 1, _Sum)
    connection.create_aggregate("neruba_max", 1, _Max)  # type: ignore[arg-type]


# Plain decimal text with at most 12 decimals: converted with integer arithmetic alone (the
# common case, since stored quantities are canonical text within 12 places).
_PLAIN = re.compile(r"(-?)([0-9]+)(?:\.([0-9]{1,12}))?")
_CANONICAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]{0,11}[1-9])?")
_SCALE = 10**12


def _units(value: Any) -> int | None:
    """SQL value (canonical text, or an integer) → 10⁻¹² units; NULL stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        plain = _PLAIN.fullmatch(value)
        if plain is not None:
            sign, whole, fraction = plain.groups()
            units = int(whole) * _SCALE + (int(fraction.ljust(12, "0")) if fraction else 0)
            return -units if sign else units
    elif isinstance(value, int) and not isinstance(value, bool):
        return value * _SCALE
    if isinstance(value, float):
        raise TypeError("neruba decimal functions take text, not floats")
    return rounded_units(Decimal(value))


def _text(units: int | None) -> str | None:
    return None if units is None else units_text(units)


def _decimal(value: Any) -> str | None:
    if isinstance(value, str) and value != "-0" and _CANONICAL.fullmatch(value):
        return value  # already the canonical text of a value within 12 places
    return _text(_units(value))


def _property(properties: Any, name: Any) -> object:
    """The property's parsed JSON value (numbers as Decimal or int), or None."""
    if not isinstance(properties, str | bytes):
        return None
    try:
        document = json.loads(properties, parse_float=Decimal)
    except ValueError:
        return None
    return document.get(name) if isinstance(document, dict) else None


# PostgreSQL's NUMERIC holds 131072 digits before the point and 16383 after; a JSON number
# past them fails its query there. Here too, rather than spend minutes writing out the digits
# of `1e999999999` (a billing run then isolates the customer whose events hold it).
_NUMERIC_DIGITS = 131072


def _bounded(raw: Any) -> Any:
    if isinstance(raw, Decimal) and raw.is_finite() and abs(raw.adjusted()) > _NUMERIC_DIGITS:
        raise ValueError(f"property value {raw} is beyond any number a meter reads")
    return raw


def _json_number(properties: Any, name: Any) -> str | None:
    value = numeric_value(_bounded(_property(properties, name)))
    return None if value is None else units_text(rounded_units(value))


def _numeric_text(value: Any) -> str | None:
    """A numeric string's value as canonical text (rounded to 12 places); NULL otherwise."""
    if not isinstance(value, str) or not NUMERIC_STRING.fullmatch(value):
        return None
    return _decimal(value)


def _json_key(properties: Any, name: Any) -> str | None:
    return distinct_key(_bounded(_property(properties, name)))


def _mul(value: Any, factor: Any) -> str | None:
    units = _units(value)
    if units is None or factor is None:
        return None
    return units_text(units * int(factor))


def _epoch_us(value: Any) -> int | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(str(value)).replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def _weighted(area: Any, microseconds: Any) -> str | None:
    units = _units(area)
    if units is None or not microseconds:
        return None
    return units_text(weighted_units(units, int(microseconds)))


class _Sum:
    """Exact SUM over canonical decimal text; usable as an aggregate and a window function."""

    def __init__(self) -> None:
        self.total = 0
        self.count = 0

    def step(self, value: Any) -> None:
        units = _units(value)
        if units is not None:
            self.total += units
            self.count += 1

    def inverse(self, value: Any) -> None:
        units = _units(value)
        if units is not None:
            self.total -= units
            self.count -= 1

    def value(self) -> str | None:
        return units_text(self.total) if self.count else None

    def finalize(self) -> str | None:
        return self.value()


class _Max:
    """Exact MAX over canonical decimal text."""

    def __init__(self) -> None:
        self.best: int | None = None

    def step(self, value: Any) -> None:
        units = _units(value)
        if units is not None and (self.best is None or units > self.best):
            self.best = units

    def finalize(self) -> str | None:
        return _text(self.best)
