"""`neruba ingest`: replay-safe import of usage events.

Lines are validated as they stream in and written in batches, one transaction each: an
`INSERT` that skips keys already stored (`ON CONFLICT DO NOTHING` / `INSERT OR IGNORE` / a
no-op `ON DUPLICATE KEY UPDATE`), then one query that reads back the batch's keys and
classifies every line: stored by this line (accepted), stored before with the same canonical
payload (duplicate), or stored with another payload (conflict, reported with the stored
event beside it). The unique key (project, idempotency_key) decides; nothing is checked
before writing, so a crashed import simply runs again and converges to the same events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Table, insert, select, update
from sqlalchemy.orm import Session

from neruba_cli.db.schema import Charge, Customer, Event, ImportBatch, Project
from neruba_cli.domain.catalog import MeterDef
from neruba_cli.domain.charges import ChargeInput, check_currency, validate_charge
from neruba_cli.domain.events import EventInput, Rejected, quantity_text, validate_event
from neruba_cli.domain.ids import new_id
from neruba_cli.domain.money import decimal_text
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.event_input import LineError, Source, parsed_lines
from neruba_cli.services.rejects import Reject, RejectsWriter, keep

BATCH = 5000
DEFAULT_MAX_FUTURE = timedelta(minutes=5)


@dataclass(frozen=True)
class IngestOptions:
    fmt: str
    dry_run: bool = False
    assume_tz: tzinfo | None = None
    create_customers: bool = False
    max_future: timedelta = DEFAULT_MAX_FUTURE
    batch_size: int = BATCH


@dataclass
class IngestSummary:
    batch: str | None
    source: str
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    first_event: datetime | None = None
    last_event: datetime | None = None
    months: set[tuple[int, int]] = field(default_factory=set)
    sha256: str | None = None
    already_imported: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def periods(self) -> list[str]:
        """The months (UTC) that received new events, as YYYY-MM."""
        return [f"{year:04d}-{month:02d}" for year, month in sorted(self.months)]

    def reject(self, item: Reject, writer: RejectsWriter, *, conflict: bool = False) -> None:
        if conflict:
            self.conflicts += 1
        else:
            self.rejected += 1
        keep(self.rejects, item, writer)

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "rejected": self.rejected,
            "batch": self.batch,
            "source": self.source,
            "sha256": self.sha256,
            "first_event": format_ts(self.first_event),
            "last_event": format_ts(self.last_event),
            "periods": self.periods,
            "already_imported": self.already_imported,
            "seconds": round(self.seconds, 3),
        }


@dataclass(slots=True)
class _Pending:
    line: int
    raw: bytes
    record: EventInput | ChargeInput
    digest: str


def ingest(
    engine: Engine,
    project: Project,
    source: Source,
    options: IngestOptions,
    *,
    meters: dict[str, MeterDef],
    rejects: RejectsWriter,
    actor: str,
    now: datetime,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Import every line of `source`; the receipt is stored unless this is a dry run."""
    started = datetime.now(UTC)
    summary = IngestSummary(batch=None if options.dry_run else new_id("bat"), source=source.name)
    if summary.batch is not None:
        _open_receipt(engine, project, summary, options, actor, started)
    try:
        _run(engine, project, source, options, summary, meters, rejects, now, on_progress)
    except BaseException:
        if summary.batch is not None:
            _fail_receipt(engine, summary)
        raise
    summary.sha256 = source.digest.hexdigest()
    summary.already_imported = _earlier_imports(engine, project, summary)
    summary.seconds = (datetime.now(UTC) - started).total_seconds()
    if summary.batch is not None:
        _close_receipt(engine, summary, rejects)
    if on_progress is not None:
        on_progress(source.bytes_read, summary.lines)
    return summary


def _run(
    engine: Engine,
    project: Project,
    source: Source,
    options: IngestOptions,
    summary: IngestSummary,
    meters: dict[str, MeterDef],
    rejects: RejectsWriter,
    now: datetime,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    writer = _BatchWriter(engine, project, summary, options, rejects, now)
    pending: list[_Pending] = []
    for number, raw, obj in parsed_lines(source, options.fmt):
        summary.lines += 1
        item = _validate(number, raw, obj, meters, options, now)
        if isinstance(item, Reject):
            summary.reject(item, rejects)
        else:
            pending.append(item)
            if len(pending) >= options.batch_size:
                writer.flush(pending)
                pending = []
        if on_progress is not None and summary.lines % 1000 == 0:
            on_progress(source.bytes_read, summary.lines)
    if pending:
        writer.flush(pending)


def _validate(
    number: int,
    raw: bytes,
    obj: Any,
    meters: dict[str, MeterDef],
    options: IngestOptions,
    now: datetime,
) -> _Pending | Reject:
    if isinstance(obj, LineError):
        return Reject(number, obj.reason, _text(raw))
    limits = {"now": now, "max_future": options.max_future, "assume_tz": options.assume_tz}
    try:
        if options.fmt == "charges" or (isinstance(obj, dict) and obj.get("type") == "charge"):
            charge = validate_charge(obj, **limits)
            return _Pending(number, raw, charge, charge.payload_hash())
        event = validate_event(obj, **limits)
    except Rejected as exc:
        return Reject(number, str(exc), _text(raw))
    meter = meters.get(event.meter)
    if meter is None:
        return Reject(number, f"unknown meter {event.meter!r}", _text(raw))
    if event.quantity < 0 and not meter.allow_negative:
        reason = f"negative quantity, and meter {event.meter} does not allow it"
        return Reject(number, reason, _text(raw))
    return _Pending(number, raw, event, event.payload_hash())


class _BatchWriter:
    """Writes one batch per transaction and classifies every line of it."""

    def __init__(
        self,
        engine: Engine,
        project: Project,
        summary: IngestSummary,
        options: IngestOptions,
        rejects: RejectsWriter,
        now: datetime,
    ) -> None:
        self.engine = engine
        self.project = project
        self.summary = summary
        self.options = options
        self.rejects = rejects
        self.now = now
        self.customers: dict[str, tuple[str, str]] = {}  # external id -> (id, currency)
        self.dialect = engine.dialect.name
        self.keeps_receipt = True

    def flush(self, batch: list[_Pending]) -> None:
        with self.engine.begin() as conn:
            self._resolve_customers(conn, {item.record.customer for item in batch})
            events: list[_Pending] = []
            charges: list[_Pending] = []
            for item in batch:
                reason = self._customer_problem(item)
                if reason is not None:
                    self.summary.reject(Reject(item.line, reason, _text(item.raw)), self.rejects)
                else:
                    (charges if isinstance(item.record, ChargeInput) else events).append(item)
            for table, rows in ((Event.__table__, events), (Charge.__table__, charges)):
                if rows:
                    self._write(conn, table, rows)
            if self.summary.batch is not None and self.keeps_receipt:
                _save_counts(conn, self.summary)

    def _customer_problem(self, item: _Pending) -> str | None:
        found = self.customers.get(item.record.customer)
        if found is None:
            return f"unknown customer {item.record.customer!r}"
        if isinstance(item.record, ChargeInput):
            try:
                check_currency(item.record, found[1])
            except Rejected as exc:
                return str(exc)
        return None

    def _resolve_customers(self, conn: Connection, names: set[str]) -> None:
        missing = [name for name in names if name not in self.customers]
        if not missing:
            return
        found = conn.execute(
            select(Customer.external_id, Customer.id, Customer.currency)
            .where(Customer.project_id == self.project.id)
            .where(Customer.external_id.in_(missing))
        ).all()
        self.customers.update({external: (ident, cur) for external, ident, cur in found})
        unknown = [name for name in missing if name not in self.customers]
        if unknown and self.options.create_customers:
            if self.options.dry_run:  # would be created: count their lines as accepted
                self.customers.update(dict.fromkeys(unknown, ("", self.project.currency)))
            else:
                self._create_customers(conn, unknown)

    def _create_customers(self, conn: Connection, names: list[str]) -> None:
        rows = [
            {
                "id": new_id("cus"),
                "project_id": self.project.id,
                "external_id": name,
                "name": None,
                "email": None,
                "currency": self.project.currency,
                "timezone": self.project.timezone,
                "stripe_id": None,
                "created_at": self.now,
                "updated_at": self.now,
            }
            for name in names
        ]
        conn.execute(insert(Customer), rows)
        self.customers.update({row["external_id"]: (row["id"], row["currency"]) for row in rows})

    def _write(self, conn: Connection, table: Table, items: list[_Pending]) -> None:
        """Insert with driver-ready tuples (the hot path skips per-value type processing, so
        values are converted here once, the way the column types store them), then classify
        — unless every line stored itself, which the driver's row count tells."""
        inserted = -1
        if not self.options.dry_run:
            build = self._event_row if table is Event.__table__ else self._charge_row
            columns = _COLUMNS[table.name]
            sql = _insert_sql(self.dialect, table.name, columns)
            sqlite = self.dialect == "sqlite"
            rows = [build(item, sqlite) for item in items]
            inserted = conn.exec_driver_sql(sql, rows).rowcount
        if inserted == len(items) and self.dialect in _EXACT_INSERT_COUNTS:
            for item in items:
                self._accept(item)
        else:
            self._classify(conn, table, items)

    def _event_row(self, item: _Pending, sqlite: bool) -> tuple[Any, ...]:
        event = item.record
        assert isinstance(event, EventInput)
        return (
            self.project.id,
            event.idempotency_key,
            self.customers[event.customer][0],
            event.meter,
            _db_time(event.timestamp, sqlite),
            quantity_text(event.quantity) if sqlite else event.quantity,
            orjson.dumps(event.properties).decode(),
            item.digest,
            self.summary.batch,
            item.line,
            _db_time(self.now, sqlite),
        )

    def _charge_row(self, item: _Pending, sqlite: bool) -> tuple[Any, ...]:
        charge = item.record
        assert isinstance(charge, ChargeInput)
        customer_id, currency = self.customers[charge.customer]
        return (
            new_id("chg"),
            self.project.id,
            charge.idempotency_key,
            customer_id,
            decimal_text(charge.amount) if sqlite else charge.amount,
            currency,
            charge.description,
            _db_time(charge.timestamp, sqlite),
            item.digest,
            self.summary.batch,
            item.line,
            _db_time(self.now, sqlite),
        )

    def _classify(self, conn: Connection, table: Table, rows: list[_Pending]) -> None:
        keys = list({item.record.idempotency_key for item in rows})
        columns = table.c
        stored = {
            key: (digest, batch, line)
            for key, digest, batch, line in conn.execute(
                select(
                    columns.idempotency_key, columns.payload_hash, columns.batch_id, columns.line
                )
                .where(columns.project_id == self.project.id)
                .where(columns.idempotency_key.in_(keys))
            )
        }
        conflicts: list[_Pending] = []
        first_in_batch: dict[str, _Pending] = {}
        for item in rows:
            key = item.record.idempotency_key
            found = stored.get(key)
            if found is None:  # dry run: not stored yet, so only the batch itself can repeat it
                earlier = first_in_batch.setdefault(key, item)
                if earlier is item:
                    self._accept(item)
                elif earlier.digest == item.digest:
                    self.summary.duplicates += 1
                else:
                    conflicts.append(item)
            elif found[1] == self.summary.batch and found[2] == item.line:
                self._accept(item)
            elif found[0] == item.digest:
                self.summary.duplicates += 1
            else:
                conflicts.append(item)
        if conflicts:
            self._report_conflicts(conn, table, conflicts)

    def _accept(self, item: _Pending) -> None:
        summary = self.summary
        summary.accepted += 1
        moment = item.record.timestamp
        if summary.first_event is None or moment < summary.first_event:
            summary.first_event = moment
        if summary.last_event is None or moment > summary.last_event:
            summary.last_event = moment
        summary.months.add((moment.year, moment.month))

    def _report_conflicts(self, conn: Connection, table: Table, conflicts: list[_Pending]) -> None:
        keys = [item.record.idempotency_key for item in conflicts]
        stored = {
            row.idempotency_key: row
            for row in conn.execute(
                select(table, Customer.external_id)
                .join(Customer, Customer.id == table.c.customer_id)
                .where(table.c.project_id == self.project.id)
                .where(table.c.idempotency_key.in_(keys))
            )
        }
        kind = "charge" if table is Charge.__table__ else "event"
        for item in conflicts:
            row = stored.get(item.record.idempotency_key)
            where = "earlier in this import"
            payload: dict[str, Any] | None = None
            if row is not None:
                where = f"stored by import {row.batch_id} line {row.line}"
                payload = _stored_payload(row, kind)
            reason = (
                f"conflicts with {kind} {item.record.idempotency_key!r} {where}: same key, "
                "different payload"
            )
            reject = Reject(item.line, reason, _text(item.raw), stored=payload)
            self.summary.reject(reject, self.rejects, conflict=True)


def _stored_payload(row: Any, kind: str) -> dict[str, Any]:
    if kind == "charge":
        return {
            "type": "charge",
            "idempotency_key": row.idempotency_key,
            "customer": row.external_id,
            "amount": decimal_text(Decimal(row.amount)),
            "description": row.description,
            "timestamp": format_ts(row.at),
        }
    return {
        "idempotency_key": row.idempotency_key,
        "customer": row.external_id,
        "meter": row.meter,
        "timestamp": format_ts(row.ts),
        "quantity": quantity_text(Decimal(row.quantity)),
        "properties": orjson.loads(row.properties),
    }


# Drivers whose executemany rowcount is exactly the rows inserted (MariaDB counts the rows a
# no-op ON DUPLICATE KEY UPDATE found, so it always classifies).
_EXACT_INSERT_COUNTS = ("sqlite", "postgresql")

_COLUMNS = {
    "events": (
        "project_id",
        "idempotency_key",
        "customer_id",
        "meter",
        "ts",
        "quantity",
        "properties",
        "payload_hash",
        "batch_id",
        "line",
        "received_at",
    ),
    "charges": (
        "id",
        "project_id",
        "idempotency_key",
        "customer_id",
        "amount",
        "currency",
        "description",
        "at",
        "payload_hash",
        "batch_id",
        "line",
        "created_at",
    ),
}


def _insert_sql(dialect: str, table: str, columns: tuple[str, ...]) -> str:
    """An INSERT that skips keys already stored, in each driver's own SQL.

    Only the unique-key conflict is skipped: SQLite's `INSERT OR IGNORE` and MariaDB's
    `INSERT IGNORE` would also swallow other errors, so neither is used.
    """
    marks = ", ".join(["?" if dialect == "sqlite" else "%s"] * len(columns))
    statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
    if dialect in ("mysql", "mariadb"):
        return f"{statement} ON DUPLICATE KEY UPDATE idempotency_key = idempotency_key"
    return f"{statement} ON CONFLICT (project_id, idempotency_key) DO NOTHING"


def _db_time(moment: datetime, sqlite: bool) -> Any:
    """Naive UTC, as UTCDateTime stores it; SQLite keeps SQLAlchemy's text layout."""
    naive = moment.astimezone(UTC).replace(tzinfo=None)
    return naive.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else naive


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _open_receipt(
    engine: Engine,
    project: Project,
    summary: IngestSummary,
    options: IngestOptions,
    actor: str,
    started: datetime,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(ImportBatch).values(
                id=summary.batch,
                project_id=project.id,
                source=summary.source[:1000],
                format=options.fmt,
                sha256=None,
                status="running",
                lines=0,
                accepted=0,
                duplicates=0,
                conflicts=0,
                rejected=0,
                periods="[]",
                actor=actor,
                started_at=started,
            )
        )


def _save_counts(conn: Connection, summary: IngestSummary) -> None:
    conn.execute(
        update(ImportBatch)
        .where(ImportBatch.id == summary.batch)
        .values(
            lines=summary.lines,
            accepted=summary.accepted,
            duplicates=summary.duplicates,
            conflicts=summary.conflicts,
            rejected=summary.rejected,
            first_event_at=summary.first_event,
            last_event_at=summary.last_event,
            periods=orjson.dumps(summary.periods).decode(),
        )
    )


def _close_receipt(engine: Engine, summary: IngestSummary, rejects: RejectsWriter) -> None:
    with engine.begin() as conn:
        _save_counts(conn, summary)
        conn.execute(
            update(ImportBatch)
            .where(ImportBatch.id == summary.batch)
            .values(
                sha256=summary.sha256,
                status="completed",
                rejects_path=str(rejects.path) if rejects.count and rejects.path else None,
                finished_at=datetime.now(UTC),
            )
        )


def _fail_receipt(engine: Engine, summary: IngestSummary) -> None:
    """Best effort: a killed process leaves its receipt `running`, an error marks it `failed`."""
    try:
        with engine.begin() as conn:
            conn.execute(
                update(ImportBatch)
                .where(ImportBatch.id == summary.batch)
                .values(status="failed", finished_at=datetime.now(UTC))
            )
    except Exception:
        return


def _earlier_imports(engine: Engine, project: Project, summary: IngestSummary) -> list[str]:
    earlier = imports_with_digest(engine, project, summary.sha256)
    return [batch for batch in earlier if batch != summary.batch]


def imports_with_digest(engine: Engine, project: Project, sha256: str | None) -> list[str]:
    """Completed imports of exactly this content (by SHA-256), oldest first."""
    if sha256 is None:
        return []
    with engine.connect() as conn:
        rows = conn.execute(
            select(ImportBatch.id)
            .where(ImportBatch.project_id == project.id)
            .where(ImportBatch.sha256 == sha256)
            .where(ImportBatch.status == "completed")
            .order_by(ImportBatch.started_at)
        ).all()
    return [row[0] for row in rows]


def list_events(
    session: Session,
    project: Project,
    *,
    customer: str | None = None,
    meter: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Stored events, newest first, as plain values."""
    query = (
        select(Event, Customer.external_id)
        .join(Customer, Customer.id == Event.customer_id)
        .where(Event.project_id == project.id)
    )
    if customer:
        query = query.where(Customer.external_id == customer)
    if meter:
        query = query.where(Event.meter == meter)
    if since is not None:
        query = query.where(Event.ts >= since)
    rows = session.execute(query.order_by(Event.ts.desc(), Event.id.desc()).limit(limit))
    return [
        {
            "idempotency_key": event.idempotency_key,
            "customer": external,
            "meter": event.meter,
            "timestamp": format_ts(event.ts),
            "quantity": quantity_text(event.quantity),
            "properties": orjson.loads(event.properties),
            "batch": event.batch_id,
            "line": event.line,
        }
        for event, external in rows
    ]


def list_receipts(session: Session, project: Project, limit: int = 50) -> list[ImportBatch]:
    return list(
        session.scalars(
            select(ImportBatch)
            .where(ImportBatch.project_id == project.id)
            .order_by(ImportBatch.started_at.desc(), ImportBatch.id.desc())
            .limit(limit)
        )
    )


def receipt_dict(batch: ImportBatch) -> dict[str, Any]:
    return {
        "batch": batch.id,
        "source": batch.source,
        "format": batch.format,
        "sha256": batch.sha256,
        "status": batch.status,
        "lines": batch.lines,
        "accepted": batch.accepted,
        "duplicates": batch.duplicates,
        "conflicts": batch.conflicts,
        "rejected": batch.rejected,
        "first_event": format_ts(batch.first_event_at),
        "last_event": format_ts(batch.last_event_at),
        "periods": orjson.loads(batch.periods),
        "rejects_file": batch.rejects_path,
        "actor": batch.actor,
        "started_at": format_ts(batch.started_at),
        "finished_at": format_ts(batch.finished_at),
    }


def record_charge(
    engine: Engine, project: Project, charge: ChargeInput, *, now: datetime
) -> tuple[str, IngestSummary]:
    """One charge through the same path as imported ones: accepted, duplicate or conflict."""
    summary = IngestSummary(batch=new_id("bat"), source="charge add")
    writer = _BatchWriter(
        engine, project, summary, IngestOptions(fmt="charges"), RejectsWriter(None), now
    )
    writer.keeps_receipt = False  # a single charge has a batch id to tell it apart, no receipt
    writer.flush([_Pending(1, b"", charge, charge.payload_hash())])
    if summary.accepted:
        return "accepted", summary
    if summary.duplicates:
        return "duplicate", summary
    if summary.conflicts:
        return "conflict", summary
    return "rejected", summary
