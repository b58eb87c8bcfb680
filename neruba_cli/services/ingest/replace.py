"""`ingest FILE --replace --customer C --meter M --from T1 --to T2`: a backfill that replaces
one customer's stored events of one meter in [T1, T2) with the file's, atomically.

The file is read and checked whole first (a window's backfill, not a month of everything):
every line must be a valid event of that customer and meter inside the window, and a key
given twice must carry the same payload. Any rejected or conflicting line refuses the whole
replacement: nothing is written, no receipt is kept, and the rejects file says why (exit 3).

Then, in one transaction (domain/event_corrections.py has the rules):
- a new key is stored (accepted) with the replacing import's batch;
- a key stored in the window with the same values is a duplicate (it stays as it is);
- a key stored in the window with other values (or voided) is amended: its row takes the new
  values and the replacing import's batch and line, and the version it replaced is kept
  (`event_versions`, change `replace`, with who, when and the reason);
- a key stored elsewhere (another customer, meter or moment) is a conflict, refusing it all;
- the window's stored events the file leaves out are voided (kept, with the same record).

The receipt counts accepted = stored + amended lines (the rows that now carry its batch),
`voided` the events it voided, and `replaced` names the window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
from sqlalchemy import Connection, Engine, insert, select, update

from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import ImportBatch, Project
from neruba_cli.db.tables import customers_t, events_t
from neruba_cli.domain.catalog import MeterDef
from neruba_cli.domain.errors import NotFound
from neruba_cli.domain.event_corrections import REPLACE, ReplaceWindow, same_values
from neruba_cli.domain.events import EventInput, stored_operation
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.ingest.corrections import (
    EventRow,
    load_rows,
    stale_invoices,
    supersede,
    write_version,
)
from neruba_cli.services.ingest.readers import Source, parsed_lines
from neruba_cli.services.ingest.receipts import IngestSummary, running_receipt
from neruba_cli.services.ingest.rejects import Reject, RejectsWriter, raw_text
from neruba_cli.services.ingest.validation import Pending, Validator


@dataclass(frozen=True)
class ReplaceOptions:
    fmt: str
    window: ReplaceWindow
    reason: str
    dry_run: bool = False
    max_future: timedelta = timedelta(hours=1)


def replace(
    engine: Engine,
    project: Project,
    source: Source,
    options: ReplaceOptions,
    *,
    meters: dict[str, MeterDef],
    rejects: RejectsWriter,
    actor: str,
    now: datetime,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    started = datetime.now(UTC)
    if options.window.meter not in meters:
        raise NotFound(f"--meter: no meter {options.window.meter!r} in the catalog")
    with engine.connect() as conn:
        _customer(conn, project, options.window.customer)
    summary = IngestSummary(batch=None, source=source.name)
    summary.replaced = options.window.as_dict()
    lines = _read(source, options, meters, summary, rejects, now)
    summary.sha256 = source.digest.hexdigest()
    if on_progress is not None:
        on_progress(source.bytes_read, summary.lines)
    if summary.rejected + summary.conflicts:
        summary.seconds = (datetime.now(UTC) - started).total_seconds()
        return summary
    batch = None if options.dry_run else new_id("bat")
    with engine.begin() as conn:
        customer_id = _customer(conn, project, options.window.customer)
        plan = _classify(conn, project, customer_id, options.window, lines, summary, rejects)
        if summary.conflicts or options.dry_run:
            conn.rollback()
            summary.seconds = (datetime.now(UTC) - started).total_seconds()
            return summary
        assert batch is not None
        summary.batch = batch
        _write_plan(conn, project, customer_id, plan, options, batch, actor, now)
        summary.stale_invoices = stale_invoices(conn, project.id, plan.touched(customer_id))
        summary.seconds = (datetime.now(UTC) - started).total_seconds()
        _receipt(conn, project, summary, options, actor, started)
    return summary


@dataclass
class _Plan:
    new: list[Pending]
    amended: list[tuple[EventRow, Pending]]
    voided: list[EventRow]

    def touched(self, customer_id: str) -> list[tuple[str, datetime]]:
        moments = [item.record.timestamp for item in self.new]
        moments += [row.stored.timestamp for row, _ in self.amended]
        moments += [row.stored.timestamp for row in self.voided]
        return [(customer_id, moment) for moment in moments]


def _read(
    source: Source,
    options: ReplaceOptions,
    meters: dict[str, MeterDef],
    summary: IngestSummary,
    rejects: RejectsWriter,
    now: datetime,
) -> list[Pending]:
    """The file's valid lines, each key once; every other line is counted and reported."""
    validate = Validator(
        meters, charges_only=False, now=now, max_future=options.max_future, assume_tz=None
    )
    window = options.window
    kept: dict[str, Pending] = {}
    for file, number, raw, obj in parsed_lines(source, options.fmt):
        summary.lines += 1
        item = validate(file, number, raw, obj)
        if isinstance(item, Reject):
            summary.reject(item, rejects)
            continue
        event = item.record
        if not isinstance(event, EventInput):
            reason = "a one-off charge: ingest --replace replaces usage events only"
            summary.reject(Reject(number, reason, raw_text(raw), file=file), rejects)
            continue
        outside = window.outside(event.customer, event.meter, event.timestamp)
        if outside is not None:
            summary.reject(Reject(number, outside, raw_text(raw), file=file), rejects)
            continue
        earlier = kept.get(event.idempotency_key)
        if earlier is None:
            kept[event.idempotency_key] = item
        elif earlier.digest == item.digest:
            summary.duplicates += 1
        else:
            reason = (
                f"conflicts with event {event.idempotency_key!r} earlier in this file "
                f"(line {earlier.line}): same key, different payload"
            )
            summary.reject(Reject(number, reason, raw_text(raw), file=file), rejects, conflict=True)
    summary.warnings += validate.warnings()
    if not summary.lines:
        summary.warnings.append(
            f"no events read from {source.name}: the window's stored events are all voided"
        )
    return list(kept.values())


def _customer(conn: Connection, project: Project, external_id: str) -> str:
    found = conn.execute(
        select(customers_t.c.id).where(
            customers_t.c.project_id == project.id, customers_t.c.external_id == external_id
        )
    ).scalar_one_or_none()
    if found is None:
        raise NotFound(f"--customer: no customer {external_id!r} in project {project.slug}")
    return str(found)


def _classify(
    conn: Connection,
    project: Project,
    customer_id: str,
    window: ReplaceWindow,
    lines: list[Pending],
    summary: IngestSummary,
    rejects: RejectsWriter,
) -> _Plan:
    stored = load_rows(conn, project, [item.record.idempotency_key for item in lines])
    in_window = _window_rows(conn, project, customer_id, window)
    plan = _Plan([], [], [])
    for item in lines:
        event = item.record
        row = stored.get(event.idempotency_key)
        if row is None:
            plan.new.append(item)
            continue
        if row.id not in in_window or row.stored.timestamp != event.timestamp:
            where = (
                f"customer {row.stored.customer!r}, meter {row.stored.meter!r}, "
                f"at {format_ts(row.stored.timestamp)}"
            )
            reason = (
                f"conflicts with stored event {event.idempotency_key!r} ({where}): a stored "
                "event keeps its customer, meter and moment; give the new one another key"
            )
            summary.reject(
                Reject(item.line, reason, raw_text(item.raw), file=item.file),
                rejects,
                conflict=True,
            )
            continue
        quantity = Decimal(item.quantity)
        properties = dict(event.properties)  # type: ignore[union-attr]
        if same_values(row.stored, quantity, properties, event.operation):  # type: ignore[union-attr]
            summary.duplicates += 1
        else:
            plan.amended.append((row, item))
    keys = {item.record.idempotency_key for item in lines}
    plan.voided = [
        row for row in in_window.values() if row.stored.key not in keys and not row.stored.voided
    ]
    summary.voided = len(plan.voided)
    summary.amended = len(plan.amended)
    for item in plan.new + [item for _, item in plan.amended]:
        _count_accepted(summary, item)
    return plan


def _window_rows(
    conn: Connection, project: Project, customer_id: str, window: ReplaceWindow
) -> dict[int, EventRow]:
    """The window's stored events, voided ones too, by row id."""
    keys = conn.execute(
        select(events_t.c.idempotency_key).where(
            events_t.c.project_id == project.id,
            events_t.c.customer_id == customer_id,
            events_t.c.meter == window.meter,
            events_t.c.ts >= window.start,
            events_t.c.ts < window.end,
        )
    ).scalars()
    rows = load_rows(conn, project, list(keys))
    return {row.id: row for row in rows.values()}


def _count_accepted(summary: IngestSummary, item: Pending) -> None:
    summary.accepted += 1
    moment = item.record.timestamp
    if summary.first_event is None or moment < summary.first_event:
        summary.first_event = moment
    if summary.last_event is None or moment > summary.last_event:
        summary.last_event = moment
    summary.months.add((moment.year, moment.month))


def _write_plan(
    conn: Connection,
    project: Project,
    customer_id: str,
    plan: _Plan,
    options: ReplaceOptions,
    batch: str,
    actor: str,
    now: datetime,
) -> None:
    _open_receipt(conn, project, batch, options, actor, now)

    def record(row: EventRow) -> int:
        return supersede(
            conn,
            project,
            row,
            REPLACE,
            reason=options.reason,
            actor=actor,
            now=now,
            change_batch=batch,
        )

    for row in plan.voided:
        write_version(conn, row, {"voided": True}, correction=record(row))
    for row, item in plan.amended:
        correction = record(row)
        write_version(
            conn,
            row,
            {
                "voided": False,
                "quantity": Decimal(item.quantity),
                "properties": orjson.dumps(item.record.properties).decode(),  # type: ignore[union-attr]
                "batch_id": batch,
                "line": item.line,
                "operation": stored_operation(item.record.operation),  # type: ignore[union-attr]
            },
            correction=correction,
        )
    if plan.new:
        conn.execute(
            insert(events_t),
            [
                {
                    "project_id": project.id,
                    "idempotency_key": item.record.idempotency_key,
                    "customer_id": customer_id,
                    "meter": options.window.meter,
                    "ts": item.record.timestamp,
                    "quantity": Decimal(item.quantity),
                    "properties": orjson.dumps(item.record.properties).decode(),  # type: ignore[union-attr]
                    "payload_hash": item.digest,
                    "batch_id": batch,
                    "line": item.line,
                    "received_at": now,
                    "operation": stored_operation(item.record.operation),  # type: ignore[union-attr]
                }
                for item in plan.new
            ],
        )


def _open_receipt(
    conn: Connection,
    project: Project,
    batch: str,
    options: ReplaceOptions,
    actor: str,
    started: datetime,
) -> None:
    replaced = orjson.dumps(options.window.as_dict()).decode()
    conn.execute(
        running_receipt(
            project, batch, "", options.fmt, actor, started, voided=0, replaced=replaced
        )
    )


def _receipt(
    conn: Connection,
    project: Project,
    summary: IngestSummary,
    options: ReplaceOptions,
    actor: str,
    started: datetime,
) -> None:
    conn.execute(
        update(ImportBatch)
        .where(ImportBatch.id == summary.batch)
        .values(
            source=summary.source[:1000],
            sha256=summary.sha256,
            status="completed",
            lines=summary.lines,
            accepted=summary.accepted,
            duplicates=summary.duplicates,
            conflicts=0,
            rejected=0,
            voided=summary.voided,
            first_event_at=summary.first_event,
            last_event_at=summary.last_event,
            periods=orjson.dumps(summary.periods).decode(),
            finished_at=datetime.now(UTC),
        )
    )
