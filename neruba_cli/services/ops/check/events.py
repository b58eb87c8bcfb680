"""Events sweep (`events.billed`), per customer-period with a live (non-void) invoice.

An invoice's `event_count` is how many of the customer's event versions in its period the run
that wrote it saw: its events, voided ones too, and the superseded versions corrections kept
(`usage_sql.event_counts`), a number that only grows. The rules (domain/consistency.py)
hold after any sequence of ingests, corrections, runs, finalizations and reruns under every
`late_events` policy, and fail when an event is counted twice or dropped:
- at most one live plain invoice per period (two would each bill its events);
- no live invoice counts more events than the period holds now (events are append-only; a
  void or an amendment adds a version);
- no live invoice counts fewer than were committed before it was computed (the first
  revision with its fingerprint: settlement's later versions reuse it; an event's commit time
  is its import's `finished_at`, or its `received_at` without a receipt; events of a running
  import are never held against it);
- no usage line counts more events of its meter than the period holds (carried lines: than
  the period they came from), one subscription's pieces together neither, and no line twice.
Events stored after the latest invoice of a period was computed are a *note*, not a fault:
the next run of the month prices them, or under `ignore` books them without billing, or under
`next_invoice` the next month's invoice carries them (the note names it). A period's lines
are not held to the stored counts, since a correction only repeats lines whose amount moved.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, and_, case, func, select

from neruba_cli.db.schema import Project
from neruba_cli.db.tables import (
    customers_t,
    event_versions_t,
    events_t,
    import_batches_t,
    invoice_revisions_t,
    invoices_t,
)
from neruba_cli.domain import consistency
from neruba_cli.domain.consistency import InvoiceFacts, WindowEvents
from neruba_cli.services.ops.check.invoices import document_chunks, invoice_facts
from neruba_cli.services.ops.check.result import CheckResult, Sweep

Window = tuple[str, Any, Any]  # customer id, period start, period end


def events_billed(conn: Connection, project: Project, result: CheckResult) -> None:
    facts = invoice_facts(conn, project)
    live = [invoice for invoice in facts if invoice.status != "void"]
    by_meter = _window_meter_counts(conn, project)
    settled = _settled_counts(conn, project)
    windows: dict[Window, list[InvoiceFacts]] = {}
    for invoice in sorted(live, key=lambda i: i.revision):
        windows.setdefault(invoice.window, []).append(invoice)
    for invoices in windows.values():
        for problem in consistency.live_invoices_problems(invoices):
            result.fail(problem)
    superseded = _window_superseded_counts(conn, project)
    stored: dict[str, WindowEvents] = {}
    for invoice in live:
        meters = by_meter.get(invoice.window, {})
        total = sum(meters.values()) + superseded.get(invoice.window, 0)
        stored[invoice.id] = WindowEvents(total, meters, settled.get(invoice.id, 0))
        for problem in consistency.event_count_problems(invoice, stored[invoice.id]):
            result.fail(f"invoice {invoice.number}: {problem}")
    by_number = {invoice.number: invoice for invoice in facts}
    carried_from = {
        number: by_meter.get(invoice.window, {}) for number, invoice in by_number.items()
    }
    carried_onto: dict[str, list[str]] = {}
    by_id = {invoice.id: invoice for invoice in live}
    for chunk in document_chunks(conn, project, live_only=True):
        for row in chunk:
            invoice = by_id[row.id]
            lines = orjson.loads(row.content)["lines"]
            for problem in consistency.line_count_problems(
                lines, stored[invoice.id].by_meter, carried_from
            ):
                result.fail(f"invoice {invoice.number}: {problem}")
            for source in sorted({line["late_from"] for line in lines if line.get("late_from")}):
                carried_onto.setdefault(source, []).append(invoice.number)
    for invoices in sorted(windows.values(), key=lambda i: (i[-1].customer, i[-1].period_start)):
        latest = invoices[-1]
        onto = sorted({n for i in invoices for n in carried_onto.get(i.number, [])})
        note = consistency.awaiting_note(latest, stored[latest.id], project.late_events, onto)
        if note is not None:
            result.note(note)
    result.checked = len(live)


def _window_meter_counts(conn: Connection, project: Project) -> dict[Window, dict[str, int]]:
    """The events stored in every invoiced period, by meter: one grouped join."""
    windows = (
        select(invoices_t.c.customer_id, invoices_t.c.period_start, invoices_t.c.period_end)
        .where(invoices_t.c.project_id == project.id)
        .distinct()
        .subquery()
    )
    rows = conn.execute(
        select(
            windows.c.customer_id,
            windows.c.period_start,
            windows.c.period_end,
            events_t.c.meter,
            func.count().label("n"),
        )
        .select_from(windows)
        .join(events_t, _in_window(windows.c))
        .where(events_t.c.project_id == project.id)
        .group_by(
            windows.c.customer_id, windows.c.period_start, windows.c.period_end, events_t.c.meter
        )
    ).all()
    counts: dict[Window, dict[str, int]] = {}
    for row in rows:
        window = (row.customer_id, row.period_start, row.period_end)
        counts.setdefault(window, {})[row.meter] = int(row.n)
    return counts


def _window_superseded_counts(conn: Connection, project: Project) -> dict[Window, int]:
    """The superseded event versions (voids, amendments) kept for every invoiced period."""
    windows = (
        select(invoices_t.c.customer_id, invoices_t.c.period_start, invoices_t.c.period_end)
        .where(invoices_t.c.project_id == project.id)
        .distinct()
        .subquery()
    )
    versions = event_versions_t.c
    rows = conn.execute(
        select(
            windows.c.customer_id,
            windows.c.period_start,
            windows.c.period_end,
            func.count().label("n"),
        )
        .select_from(windows)
        .join(
            event_versions_t,
            and_(
                versions.customer_id == windows.c.customer_id,
                versions.ts >= windows.c.period_start,
                versions.ts < windows.c.period_end,
            ),
        )
        .where(versions.project_id == project.id)
        .group_by(windows.c.customer_id, windows.c.period_start, windows.c.period_end)
    ).all()
    return {(row.customer_id, row.period_start, row.period_end): int(row.n) for row in rows}


def _settled_counts(conn: Connection, project: Project) -> dict[str, int]:
    """Per live invoice: the events of its period committed before it was computed. It was
    computed when its fingerprint was first written (settlement adds versions at
    finalization with the same fingerprint, later than the count). An import's events count
    as committed when the import finished (its `finished_at` comes after its last commit);
    events of a running import never do."""
    computed = (
        select(
            invoice_revisions_t.c.invoice_id, func.min(invoice_revisions_t.c.created_at).label("at")
        )
        .join(
            invoices_t,
            and_(
                invoices_t.c.id == invoice_revisions_t.c.invoice_id,
                invoices_t.c.fingerprint == invoice_revisions_t.c.fingerprint,
            ),
        )
        .where(invoices_t.c.project_id == project.id, invoices_t.c.status != "void")
        .group_by(invoice_revisions_t.c.invoice_id)
        .subquery()
    )
    committed = case(
        (import_batches_t.c.id.is_(None), events_t.c.received_at),
        else_=import_batches_t.c.finished_at,
    )
    before = case((committed <= computed.c.at, 1), else_=0)
    rows = conn.execute(
        select(invoices_t.c.id, func.sum(before).label("settled"))
        .select_from(invoices_t)
        .join(computed, computed.c.invoice_id == invoices_t.c.id)
        .join(events_t, _in_window(invoices_t.c))
        .outerjoin(import_batches_t, import_batches_t.c.id == events_t.c.batch_id)
        .where(
            invoices_t.c.project_id == project.id,
            invoices_t.c.status != "void",
            events_t.c.project_id == project.id,
        )
        .group_by(invoices_t.c.id)
    ).all()
    return {row.id: int(row.settled or 0) for row in rows}


def _in_window(columns: Any) -> Any:
    return and_(
        events_t.c.customer_id == columns.customer_id,
        events_t.c.ts >= columns.period_start,
        events_t.c.ts < columns.period_end,
    )


def events_customers(conn: Connection, project: Project, result: CheckResult) -> None:
    """Every event names a customer of its own project: the rule the events table's foreign
    keys enforced until revision 0014 (ingest keeps it; this sweep proves it). Each event
    that breaks it is a fault, named with its key and the customer id it carries."""
    known = customers_t.alias("known")
    orphans = (
        select(events_t.c.idempotency_key, events_t.c.customer_id)
        .select_from(
            events_t.outerjoin(
                known,
                and_(known.c.id == events_t.c.customer_id, known.c.project_id == project.id),
            )
        )
        .where(events_t.c.project_id == project.id, known.c.id.is_(None))
        .order_by(events_t.c.id)
    )
    for key, customer_id in conn.execute(orphans):
        result.fail(f"event {key!r} names customer {customer_id}, not one of this project's")
    result.checked = int(
        conn.execute(
            select(func.count()).select_from(events_t).where(events_t.c.project_id == project.id)
        ).scalar_one()
    )


SWEEPS: list[tuple[str, str, Sweep]] = [
    ("events.billed", "invoices count each stored event of their period once", events_billed),
    ("events.customers", "every event names a customer of its project", events_customers),
]
