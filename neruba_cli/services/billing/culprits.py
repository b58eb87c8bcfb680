"""Which stored events made a customer's invoice unbillable: what a run reports beside the
customer it skipped, and what `neruba check` names.

Only read when something failed (or by the check sweep), so the events are read and judged
one by one in Python with the domain's rule (domain/invoice_limits.py), never in SQL whose
numbers each dialect bounds differently (MariaDB clamps, PostgreSQL refuses, SQLite has none).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select

from neruba_cli.db.tables import events_t
from neruba_cli.db.usage_sql import CURRENT
from neruba_cli.domain.aggregation import EventRecord, MeterSpec, matches
from neruba_cli.domain.invoice_limits import reading_of, reading_problem, short
from neruba_cli.domain.periods import Period

MAX_REPORTED = 5  # events named per failure


@dataclass(frozen=True)
class Culprit:
    """One stored event and the value its meter reads."""

    idempotency_key: str
    meter: str
    field: str  # quantity or properties.<name>
    value: str  # as stored
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {
            "idempotency_key": self.idempotency_key,
            "meter": self.meter,
            "property": self.field,
            "value": self.value,
            "reason": self.reason,
        }


def readings(
    conn: Connection,
    project_id: str,
    spec: MeterSpec,
    *,
    customer_id: str | None = None,
    period: Period | None = None,
) -> Iterator[tuple[str, str, Decimal]]:
    """(customer id, idempotency key, value) of each stored event the meter reads a number
    from, in index order; values unrounded, exactly as stored."""
    name = spec.property_name
    query = select(
        events_t.c.customer_id,
        events_t.c.idempotency_key,
        events_t.c.ts,
        events_t.c.quantity,
        events_t.c.properties,
    ).where(events_t.c.project_id == project_id, events_t.c.meter == spec.code, CURRENT)
    if customer_id is not None:
        query = query.where(events_t.c.customer_id == customer_id)
    if period is not None:
        query = query.where(events_t.c.ts >= period.start, events_t.c.ts < period.end)
    if name is not None:
        query = query.where(events_t.c.properties.like(f'%"{name}"%'))
    # `with`: a caller that stops early closes the streamed result (MariaDB otherwise warns of
    # an unbuffered result left incomplete, and the connection reads it to the end).
    with conn.execution_options(stream_results=True, yield_per=2000).execute(query) as result:
        for row in result:
            properties = _properties(row.properties) if (name or spec.filters) else {}
            if spec.filters and not matches(
                spec, EventRecord(row.ts, Decimal(row.quantity), properties)
            ):
                continue
            value = Decimal(row.quantity) if name is None else reading_of(properties.get(name))
            if value is not None:
                yield row.customer_id, row.idempotency_key, value


def find(
    conn: Connection,
    project_id: str,
    customer_id: str,
    period: Period,
    specs: Iterable[MeterSpec],
) -> list[Culprit]:
    """The customer's events of the period whose values no invoice can hold; where none is
    out of range on its own (a sum of large values), the largest value each meter read."""
    found: list[Culprit] = []
    largest: list[Culprit] = []
    for spec in specs:
        top: tuple[Decimal, str] | None = None
        for _customer, key, value in readings(
            conn, project_id, spec, customer_id=customer_id, period=period
        ):
            problem = reading_problem(value)
            if problem is not None and len(found) < MAX_REPORTED:
                found.append(Culprit(key, spec.code, spec.field, value_text(value), problem))
            if top is None or value.copy_abs() > top[0].copy_abs():
                top = (value, key)
        if top is not None:
            value, key = top
            largest.append(
                Culprit(key, spec.code, spec.field, value_text(value), "the largest value it read")
            )
    return found or largest[:MAX_REPORTED]


def _properties(text: str) -> dict[str, Any]:
    try:
        loaded = json.loads(text, parse_float=Decimal, parse_int=Decimal)
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def value_text(value: Decimal) -> str:
    """A value as stored, shortened past 64 characters."""
    text = str(value)
    return text if len(text) <= 64 else short(value)
