"""`events void` and `events amend`: correcting stored events, one transaction per command.

The rules are domain/event_corrections.py's. Each correction copies the event's current
version into `event_versions` (with the change, who, when and why), then updates the event's
row in place: `voided` set for a void, the new quantity and properties for an amendment, and
`version` one higher either way. The update names the version it read, so a correction that
raced another one fails instead of losing it. Nothing is written when any key is unknown.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Select,
    String,
    any_,
    bindparam,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.compiler import SQLCompiler

from neruba_cli.db.schema import Project
from neruba_cli.db.tables import customers_t, event_versions_t, events_t, invoices_t
from neruba_cli.db.types import UTCDateTime
from neruba_cli.domain import exact_json
from neruba_cli.domain.catalog import MeterDef
from neruba_cli.domain.errors import InvalidInput, NotFound
from neruba_cli.domain.event_corrections import (
    AMEND,
    VOID,
    StoredVersion,
    amended_line,
    same_values,
)
from neruba_cli.domain.events import quantity_text, read_operation
from neruba_cli.domain.invoice import FINAL
from neruba_cli.domain.late_events import stale_entry
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.ingest.rejects import Reject
from neruba_cli.services.ingest.validation import Pending, Validator

_KEYS_PER_QUERY = 500


@dataclass
class CorrectionReport:
    """What one correction command changed."""

    action: str  # void | amend
    reason: str
    changed: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[dict[str, Any]] = field(default_factory=list)  # already voided / same
    stale_invoices: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        done = "voided" if self.action == VOID else "amended"
        return {
            "action": self.action,
            "reason": self.reason,
            done: len(self.changed),
            "unchanged": len(self.unchanged),
            "events": self.changed + self.unchanged,
            "stale_invoices": self.stale_invoices,
        }


@dataclass(frozen=True)
class EventRow:
    """A stored event's row: its current version, and its columns for the version copy."""

    id: int
    customer_id: str
    stored: StoredVersion
    payload: dict[str, Any]  # every column of the row, for its version copy


def void_events(
    engine: Engine,
    project: Project,
    keys: Sequence[str],
    *,
    reason: str,
    actor: str,
    now: datetime,
) -> CorrectionReport:
    """Void the events of `keys` (all of them, or none when one is unknown)."""
    report = CorrectionReport(VOID, reason)
    with engine.begin() as conn:
        rows = _load(conn, project, keys)
        touched: list[tuple[str, datetime]] = []
        for key in keys:
            row = rows[key]
            if row.stored.voided:
                report.unchanged.append(_describe(row.stored, "already voided"))
                continue
            correction = supersede(conn, project, row, VOID, reason=reason, actor=actor, now=now)
            write_version(conn, row, {"voided": True}, correction=correction)
            report.changed.append(_describe(row.stored, "voided", version=row.stored.version + 1))
            touched.append((row.customer_id, row.stored.timestamp))
        report.stale_invoices = stale_invoices(conn, project.id, touched)
    return report


def amend_event(
    engine: Engine,
    project: Project,
    key: str,
    *,
    quantity: str | None,
    properties: Mapping[str, Any],
    reason: str,
    meters: dict[str, MeterDef],
    actor: str,
    now: datetime,
) -> CorrectionReport:
    """Give the event of `key` a new quantity and/or properties (validated as an ingested
    line would be). The same values again write nothing."""
    report = CorrectionReport(AMEND, reason)
    with engine.begin() as conn:
        row = _load(conn, project, [key])[key]
        line = amended_line(row.stored, quantity, properties)
        checked = _validate(line, meters, now)
        event = checked.record
        new_quantity = Decimal(checked.quantity)
        new_properties = dict(event.properties)  # type: ignore[union-attr]
        if same_values(row.stored, new_quantity, new_properties, event.operation):  # type: ignore[union-attr]
            report.unchanged.append(_describe(row.stored, "unchanged"))
            return report
        correction = supersede(conn, project, row, AMEND, reason=reason, actor=actor, now=now)
        write_version(
            conn,
            row,
            {
                "quantity": new_quantity,
                "properties": orjson.dumps(new_properties).decode(),
            },
            correction=correction,
        )
        described = _describe(row.stored, "amended", version=row.stored.version + 1)
        described["before"] = {
            "quantity": quantity_text(row.stored.quantity),
            "properties": dict(row.stored.properties),
        }
        described["quantity"] = checked.quantity
        described["properties"] = new_properties
        report.changed.append(described)
        report.stale_invoices = stale_invoices(
            conn, project.id, [(row.customer_id, row.stored.timestamp)]
        )
    return report


def _validate(line: dict[str, Any], meters: dict[str, MeterDef], now: datetime) -> Pending:
    """The amended event checked by ingest's own rules; a failure names the key."""
    validate = Validator(
        meters, charges_only=False, now=now, max_future=timedelta(days=3660), assume_tz=None
    )
    raw = orjson.dumps(line, default=str)
    checked = validate(None, 1, raw, line)
    if isinstance(checked, Reject):
        raise InvalidInput(f"event {line['idempotency_key']!r} cannot be amended: {checked.reason}")
    return checked


# --------------------------------------------------------------------------- rows


def load_rows(conn: Connection, project: Project, keys: Sequence[str]) -> dict[str, EventRow]:
    """The stored events of `keys` (those stored) with their customers' external ids."""
    found: dict[str, EventRow] = {}
    unique = list(dict.fromkeys(keys))
    for first in range(0, len(unique), _KEYS_PER_QUERY):
        chunk = unique[first : first + _KEYS_PER_QUERY]
        query = (
            select(events_t, customers_t.c.external_id)
            .join(customers_t, customers_t.c.id == events_t.c.customer_id)
            .where(events_t.c.project_id == project.id, events_t.c.idempotency_key.in_(chunk))
        )
        for row in conn.execute(query):
            found[row.idempotency_key] = _row(row)
    return found


def _load(conn: Connection, project: Project, keys: Sequence[str]) -> dict[str, EventRow]:
    """The events of `keys`; every key must be stored."""
    unique = list(dict.fromkeys(keys))
    found = load_rows(conn, project, unique)
    missing = [key for key in unique if key not in found]
    if missing:
        shown = ", ".join(repr(key) for key in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        noun = "event" if len(missing) == 1 else "events"
        raise NotFound(
            f"no stored {noun} with key {shown}{more}; nothing was changed",
            hint="`neruba events list --customer ID` shows the stored keys",
        )
    return found


def _row(row: Any) -> EventRow:
    stored = StoredVersion(
        key=row.idempotency_key,
        customer=row.external_id,
        meter=row.meter,
        timestamp=row.ts,
        quantity=Decimal(row.quantity),
        properties=exact_json.loads(row.properties),
        voided=bool(row.voided),
        version=int(row.version),
        operation=read_operation(row.operation),
    )
    payload = {
        "event_id": row.id,
        "idempotency_key": row.idempotency_key,
        "version": int(row.version),
        "customer_id": row.customer_id,
        "meter": row.meter,
        "ts": row.ts,
        "quantity": Decimal(row.quantity),
        "properties": row.properties,
        "operation": row.operation,
        "voided": bool(row.voided),
        "batch_id": row.batch_id,
        "line": row.line,
    }
    return EventRow(row.id, row.customer_id, stored, payload)


def supersede(
    conn: Connection,
    project: Project,
    row: EventRow,
    change: str,
    *,
    reason: str,
    actor: str,
    now: datetime,
    change_batch: str | None = None,
) -> int:
    """Keep the event's current version, with the change that supersedes it; the id of the
    copy is the correction's place in the change sequence (`write_version` stamps it)."""
    result = conn.execute(
        insert(event_versions_t).values(
            project_id=project.id,
            **row.payload,
            change=change,
            change_batch=change_batch,
            changed_at=now,
            changed_by=actor,
            reason=reason,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def write_version(
    conn: Connection, row: EventRow, values: Mapping[str, Any], *, correction: int
) -> None:
    """The event's next version, if nobody wrote one since it was read, stamped with the
    correction (`supersede`'s id) that made it: what a named events export watermarks."""
    changed = conn.execute(
        update(events_t)
        .where(events_t.c.id == row.id, events_t.c.version == row.stored.version)
        .values(**values, version=row.stored.version + 1, correction=correction)
    ).rowcount
    if changed != 1:
        raise InvalidInput(
            f"event {row.stored.key!r} was corrected by someone else meanwhile; nothing was "
            "changed, run the command again"
        )


def _describe(stored: StoredVersion, outcome: str, *, version: int | None = None) -> dict[str, Any]:
    return {
        "idempotency_key": stored.key,
        "outcome": outcome,
        "customer": stored.customer,
        "meter": stored.meter,
        "timestamp": format_ts(stored.timestamp),
        "quantity": quantity_text(stored.quantity),
        "properties": dict(stored.properties),
        "version": stored.version if version is None else version,
    }


# --------------------------------------------------------------------------- invoices


def stale_invoices(
    conn: Connection, project_id: str, touched: Iterable[tuple[str, datetime]]
) -> list[dict[str, str]]:
    """Finalized invoices whose period holds a corrected event: the run of their month
    applies the project's late-event policy to them."""
    found = {
        invoice.number: invoice.period
        for invoices in stale_by_event(conn, project_id, touched).values()
        for invoice in invoices
    }
    return [stale_entry(number, period) for number, period in sorted(found.items())]


@dataclass(frozen=True)
class FinalInvoice:
    """A finalized invoice, as the events stored in its period see it."""

    number: str
    period: str
    customer_id: str
    start: datetime
    end: datetime


def _final_overlapping(customers: Any) -> Select[Any]:
    """The finalized invoices of a project whose periods overlap [first, last], of the
    customers the `customers` condition names."""
    return (
        select(
            invoices_t.c.number,
            invoices_t.c.period,
            invoices_t.c.customer_id,
            invoices_t.c.period_start,
            invoices_t.c.period_end,
        )
        .where(invoices_t.c.project_id == bindparam("project_id"))
        .where(invoices_t.c.status.in_([literal(status) for status in FINAL]))
        .where(customers)
        .where(invoices_t.c.period_end > bindparam("first", type_=invoices_t.c.period_end.type))
        .where(invoices_t.c.period_start <= bindparam("last", type_=invoices_t.c.period_start.type))
        .order_by(invoices_t.c.number)
    )


# Built once: the HTTP API runs it with every group of single events it writes. PostgreSQL
# takes the customers as one array, a statement compiled once; elsewhere an expanding IN.
_FINAL_OVERLAPPING = {
    "postgresql": _final_overlapping(
        invoices_t.c.customer_id == any_(bindparam("customers", type_=postgresql.ARRAY(String)))
    ),
    "other": _final_overlapping(
        invoices_t.c.customer_id.in_(bindparam("customers", expanding=True))
    ),
}


def stale_by_event(
    conn: Connection, project_id: str, touched: Iterable[tuple[str, datetime]]
) -> dict[tuple[str, datetime], list[FinalInvoice]]:
    """For each (customer id, event moment), the finalized invoices of that customer whose
    period [start, end) holds the moment: the invoices a new or corrected event there makes
    stale. One query per `_KEYS_PER_QUERY` customers, bounded by the moments' range (the
    open month's events find no finalized invoice, and cost one index probe)."""
    moments = sorted(set(touched))
    if not moments:
        return {}
    customers = sorted({customer for customer, _ in moments})
    first, last = _range(moments)
    rows: list[Any] = []
    for offset in range(0, len(customers), _KEYS_PER_QUERY):
        rows.extend(
            conn.execute(
                _FINAL_OVERLAPPING.get(conn.dialect.name, _FINAL_OVERLAPPING["other"]),
                {
                    "project_id": project_id,
                    "customers": customers[offset : offset + _KEYS_PER_QUERY],
                    "first": first,
                    "last": last,
                },
            )
        )
    return _covering(moments, [FinalInvoice(*row) for row in rows])


@dataclass(frozen=True)
class StaleQuery:
    """`stale_by_event` as one PostgreSQL statement for a caller that sends it itself, with
    other statements (`bulk_insert.commit_new_async`): the same query, its text compiled once."""

    sql: str  # with PostgreSQL's numbered parameters: $1, $2...
    params: list[Any]
    moments: list[tuple[str, datetime]]

    def found(
        self, rows: Iterable[Sequence[Any]]
    ) -> dict[tuple[str, datetime], list[FinalInvoice]]:
        """What `stale_by_event` answers, from the rows the statement returned."""
        aware = _UTC.process_result_value
        invoices = [
            FinalInvoice(number, period, customer, aware(start, _PG), aware(end, _PG))  # type: ignore[arg-type]
            for number, period, customer, start, end in rows
        ]
        return _covering(self.moments, invoices)


def stale_query(project_id: str, touched: Iterable[tuple[str, datetime]]) -> StaleQuery | None:
    """The PostgreSQL statement of `stale_by_event`; None when it would take more than one."""
    moments = sorted(set(touched))
    customers = sorted({customer for customer, _ in moments})
    if not moments or len(customers) > _KEYS_PER_QUERY:
        return None
    first, last = (_UTC.process_bind_param(moment, _PG) for moment in _range(moments))
    compiled = _pg_final_overlapping()
    values = {"project_id": project_id, "customers": customers, "first": first, "last": last}
    by_name = compiled.construct_params(values) or {}  # with the statuses' literals
    params = [by_name[name] for name in compiled.positiontup or ()]
    return StaleQuery(compiled.string, params, moments)


_PG = postgresql.psycopg.dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
_UTC = UTCDateTime()


@functools.cache
def _pg_final_overlapping() -> SQLCompiler:
    compiled = _FINAL_OVERLAPPING["postgresql"].compile(dialect=_PG)
    assert isinstance(compiled, SQLCompiler)
    return compiled


def _range(moments: Sequence[tuple[str, datetime]]) -> tuple[datetime, datetime]:
    return min(m for _, m in moments), max(m for _, m in moments)


def _covering(
    moments: Iterable[tuple[str, datetime]], invoices: Iterable[FinalInvoice]
) -> dict[tuple[str, datetime], list[FinalInvoice]]:
    by_customer: dict[str, list[FinalInvoice]] = {}
    for invoice in invoices:
        by_customer.setdefault(invoice.customer_id, []).append(invoice)
    found: dict[tuple[str, datetime], list[FinalInvoice]] = {}
    for customer, moment in moments:
        covering = [
            invoice
            for invoice in by_customer.get(customer, ())
            if invoice.start <= moment < invoice.end
        ]
        if covering:
            found[(customer, moment)] = covering
    return found
