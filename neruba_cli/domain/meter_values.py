"""The value a meter reads from an event, checked the way billing will read it.

An event names its meter; that meter reads `quantity` (checked for every event) or one
property (`field = "properties.tokens"`). Billing reads a property as aggregation.py says: a
JSON number or a numeric string (`-?[0-9]+(.[0-9]+)?`) is a number, anything else is skipped.
A number billing reads must be one the database holds exactly — the same bounds and
exactness as `quantity` (events.parse_quantity: 26 integer digits, 12 decimal places, JSON
numbers from the digits in the file) — or the month's billing fails on it ("numeric field
overflow", "cannot be priced exactly"). So, per meter:

- `count` reads no value: nothing to check.
- `sum`, `max`, `latest`, `weighted_sum` (and percentage charges, which price each value)
  need a number: a present value that is not one (`"abc"`, `"1e3"`, `"1,000"`, `true`, an
  object) would be skipped without a word, so it is refused; a number past the bounds is
  refused. A missing or null property is skipped by billing, as documented, and accepted.
- `unique_count` counts distinct values: strings are values as written, JSON numbers are
  compared as numbers, so only JSON numbers are bounded.

`catalog apply` runs the same check over the stored events of a meter it adds or changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from neruba_cli.domain.aggregation import NUMERIC_STRING, MeterSpec
from neruba_cli.domain.events import Rejected, parse_quantity

_NO_VALUE = frozenset({"count"})


def reads_value(spec: MeterSpec) -> bool:
    """Whether the meter reads a property whose values must be checked."""
    return spec.property_name is not None and spec.aggregation not in _NO_VALUE


def check_meter_value(spec: MeterSpec, properties: Mapping[str, Any]) -> None:
    """Raise Rejected when the property `spec` reads is one billing cannot read exactly."""
    name = spec.property_name
    if name is None or spec.aggregation in _NO_VALUE:
        return
    value = properties.get(name)
    if value is None:
        return
    label = f"properties.{name}"
    if isinstance(value, str):
        if spec.aggregation == "unique_count":  # a string is a value as written
            return
        if not NUMERIC_STRING.fullmatch(value):
            raise Rejected(_not_a_number(spec, label, value))
        parse_quantity(value, label)
        return
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        parse_quantity(value, label)
    elif spec.aggregation != "unique_count":
        raise Rejected(_not_a_number(spec, label, value))


def _not_a_number(spec: MeterSpec, label: str, value: object) -> str:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return (
        f"{label} {shown} is not a number, and meter {spec.code} ({spec.aggregation}) reads it "
        'as one: write digits with an optional - and point, e.g. "1250" or 12.5'
    )
