"""`neruba ingest`: replay-safe import of usage events.

Lines are validated as they stream in and written in batches, one transaction each, by a
writer thread while the next batch is read (see `_Pipeline`). Each line is classified:
stored by this line (accepted), stored before with the same canonical payload (duplicate),
or stored with another payload (conflict, reported with the stored event beside it). The
unique key (project, idempotency_key) decides: a batch's keys found stored are classified
from what is stored, the others are inserted (COPY on PostgreSQL, multi-row INSERT on
MariaDB, `ON CONFLICT DO NOTHING` on SQLite), and whenever that insert cannot vouch that it
stored every one of them, the batch is written with an insert that skips stored keys and
every line classified by reading the batch's keys back. Nothing is assumed across
transactions, so a crashed import simply runs again and converges to the same events.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Table, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.pool import SingletonThreadPool

from neruba_cli.db.schema import Charge, Customer, Event, ImportBatch, Project
from neruba_cli.domain.catalog import MeterDef
from neruba_cli.domain.charges import ChargeInput, check_currency, validate_charge
from neruba_cli.domain.events import EventChecker, EventInput, Rejected, quantity_text
from neruba_cli.domain.ids import new_id
from neruba_cli.domain.money import decimal_text
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.billing import run as billing_run
from neruba_cli.services.ingest.readers import LineError, Source, parsed_lines
from neruba_cli.services.ingest.rejects import Reject, RejectsWriter, keep

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
    stale_invoices: list[dict[str, str]] = field(default_factory=list)
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
            "stale_invoices": self.stale_invoices,
            "seconds": round(self.seconds, 3),
        }


@dataclass(slots=True)
class _Pending:
    line: int
    raw: bytes
    record: EventInput | ChargeInput
    digest: str
    stamp: str = ""  # events: the UTC timestamp's isoformat (CheckedEvent.stamp)
    quantity: str = ""  # events: the quantity's canonical text


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
    if summary.batch is not None and summary.accepted:
        with engine.connect() as conn:
            summary.stale_invoices = billing_run.stale_invoices(
                conn, project.id, summary.batch, summary.first_event, summary.last_event
            )
    summary.seconds = (datetime.now(UTC) - started).total_seconds()
    if summary.batch is not None:
        _close_receipt(engine, summary, rejects)
        _refresh_statistics(engine, summary)
    if on_progress is not None:
        on_progress(source.bytes_read, summary.lines)
    return summary


ANALYZE_AFTER = 10_000  # accepted events that make PostgreSQL's statistics worth refreshing


def _refresh_statistics(engine: Engine, summary: IngestSummary) -> None:
    """PostgreSQL plans from table statistics that autovacuum refreshes only later; right
    after a bulk import a billing run would otherwise read the events table with a plan made
    for an empty one (seconds per query instead of milliseconds). PostgreSQL's own advice
    after a bulk load is to ANALYZE, so a large import does. MariaDB refreshes InnoDB's
    statistics itself; SQLite plans from its indexes."""
    if engine.dialect.name != "postgresql" or summary.accepted < ANALYZE_AFTER:
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE events")
        conn.commit()


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
    validate = _Validator(meters, options, now)
    lines = 0  # read so far: the summary counts them only as the writer takes them in
    with _Pipeline(writer) as pipeline:
        part = _Part()
        for number, raw, obj in parsed_lines(source, options.fmt):
            lines += 1
            part.lines += 1
            item = validate(number, raw, obj)
            if type(item) is not _Pending:
                part.refused.append(item)
                part.refused_size += len(item.raw)
                if len(part.refused) >= _REFUSED_HELD or part.refused_size >= _REFUSED_BYTES:
                    pipeline.put(part)
                    part = _Part()
            else:
                part.pending.append(item)
                if len(part.pending) >= options.batch_size:
                    pipeline.put(part)
                    part = _Part()
            if on_progress is not None and lines % 1000 == 0:
                on_progress(source.bytes_read, lines)
        pipeline.put(part)


@dataclass(slots=True)
class _Part:
    """Consecutive lines for the writer: how many, the refused ones, the valid ones (a batch
    to write when there are any)."""

    lines: int = 0
    refused: list[Reject] = field(default_factory=list)
    refused_size: int = 0
    pending: list[_Pending] = field(default_factory=list)


_REFUSED_HELD = 1000  # refused lines held before they go to the writer (and rejects file)
_REFUSED_BYTES = 8 << 20


class _Pipeline:
    """Writes batches in a thread of its own while the next ones are read and validated, so
    that waiting for the database (the server, or SQLite's fsyncs, which release the GIL)
    overlaps with the parsing. The writer takes the parts in order and counts them into the
    summary only as it takes them, so each batch's transaction saves the same counts, and
    the rejects file gets the same lines in the same order, as writing in line order did."""

    def __init__(self, writer: _BatchWriter) -> None:
        self.writer = writer
        self.parts: queue.Queue[_Part | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.abandoned = False
        # An in-memory SQLite database is one connection per thread: write it inline.
        threaded = not isinstance(writer.engine.pool, SingletonThreadPool)
        # SQLite runs in this process and takes the GIL back for every row it inserts: the
        # reading side waits until the rows are in and overlaps only the commit (its fsync).
        self.commit_only = writer.sqlite
        self.written = threading.Semaphore(0)
        self.thread = (
            threading.Thread(target=self._work, name="ingest-writer", daemon=True)
            if threaded
            else None
        )

    def __enter__(self) -> _Pipeline:
        if self.thread is not None:
            self.thread.start()
        return self

    def put(self, part: _Part) -> None:
        if self.thread is None:
            self._take(part)
            return
        if self.error is not None:
            raise self.error
        self.parts.put(part)
        if self.commit_only:
            self.written.acquire()

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if self.thread is None:
            return
        if kind is not None and not issubclass(kind, Exception):  # interrupted: stop soon
            self.abandoned = True
        self.parts.put(None)  # the parts already handed over are written first
        self.thread.join()
        if kind is None and self.error is not None:
            raise self.error

    def _work(self) -> None:
        while (part := self.parts.get()) is not None:
            released = False

            def written() -> None:
                nonlocal released
                if self.commit_only and not released:
                    released = True
                    self.written.release()

            try:
                if self.error is None and not self.abandoned:  # else drain
                    self._take(part, written)
            except BaseException as exc:  # handed to the reading side
                self.error = exc
            finally:
                written()

    def _take(self, part: _Part, written: Callable[[], None] | None = None) -> None:
        writer = self.writer
        summary = writer.summary
        summary.lines += part.lines
        for refused in part.refused:
            summary.reject(refused, writer.rejects)
        if part.pending:
            writer.flush(part.pending, written)


class _Validator:
    """One line in, a valid event or charge (with its payload hash) or a Reject out."""

    def __init__(self, meters: dict[str, MeterDef], options: IngestOptions, now: datetime) -> None:
        self.meters = meters
        self.charges_only = options.fmt == "charges"
        self.limits = {"now": now, "max_future": options.max_future, "assume_tz": options.assume_tz}
        self.check = EventChecker(**self.limits).check

    def __call__(self, number: int, raw: bytes, obj: Any) -> _Pending | Reject:
        if isinstance(obj, LineError):
            return Reject(number, obj.reason, _text(raw))
        try:
            if self.charges_only or (isinstance(obj, dict) and obj.get("type") == "charge"):
                charge = validate_charge(obj, **self.limits)
                return _Pending(number, raw, charge, charge.payload_hash())
            event, digest, stamp, quantity = self.check(obj)
        except Rejected as exc:
            return Reject(number, str(exc), _text(raw))
        meter = self.meters.get(event.meter)
        if meter is None:
            return Reject(number, f"unknown meter {event.meter!r}", _text(raw))
        if quantity[0] == "-" and not meter.allow_negative:  # canonical text: never "-0"
            reason = f"negative quantity, and meter {event.meter} does not allow it"
            return Reject(number, reason, _text(raw))
        return _Pending(number, raw, event, digest, stamp, quantity)


# (payload_hash, batch_id, line) of a stored event or charge, by idempotency key
_Stored = dict[str, tuple[str, str | None, int | None]]


class _BatchWriter:
    """Writes one batch per transaction and classifies every line of it.

    A line is accepted when its own row was stored by this import; otherwise its key was
    already stored (by an earlier import, an earlier line of this one, or a concurrent
    import) and the stored payload hash tells a duplicate from a conflict. To skip most of
    the work, the writer reads the stored keys of a batch before inserting (while batches
    keep finding some: a re-import) and inserts only the keys not found, with an insert that
    stores all of them or fails; when that fails (a key stored meanwhile, or stored while
    the writer was not looking first), it inserts with the skipping insert and classifies
    every line of the batch by reading its keys back, as if it had never looked.
    """

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
        self.sqlite = self.dialect == "sqlite"
        self.mysql = self.dialect in ("mysql", "mariadb")
        self.keeps_receipt = True
        self.look_first = True  # read a batch's stored keys before inserting it
        self.received_at = _db_time(now, True)  # the text of `now` in every dialect

    def flush(self, batch: list[_Pending], written: Callable[[], None] | None = None) -> None:
        """Write and classify one batch in a transaction of its own; `written` is called
        when all of it is done but the commit."""
        with self.engine.begin() as conn:
            self._resolve_customers(conn, {item.record.customer for item in batch})
            events: list[_Pending] = []
            charges: list[_Pending] = []
            customers = self.customers
            for item in batch:
                if item.record.customer in customers and type(item.record) is EventInput:
                    events.append(item)
                    continue
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
            if written is not None:
                written()

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
        if self.options.dry_run:
            self._classify(conn, table, items, self._stored(conn, table, items))
            return
        stored = self._stored(conn, table, items) if self.look_first else {}
        fresh: list[_Pending] = []  # the first line of each key not stored yet
        later: list[_Pending] = []  # lines whose key is stored or earlier in this batch
        firsts: dict[str, _Pending] = {}
        for item in items:
            key = item.record.idempotency_key
            if key in stored or key in firsts:
                later.append(item)
            else:
                firsts[key] = item
                fresh.append(item)
        self.look_first = bool(stored)
        if fresh:
            inserted = self._insert_new(conn, table, fresh)
            if inserted is None:  # nothing stored: some key is stored already
                inserted = self._insert_skipping(conn, table, fresh)
            if inserted != len(fresh):
                self.look_first = True
                self._classify(conn, table, items, self._stored(conn, table, items))
                return
            self._accept(fresh)
        if later:
            batch = self.summary.batch
            for key, item in firsts.items():
                stored.setdefault(key, (item.digest, batch, item.line))
            self._classify(conn, table, later, stored)

    def _stored(self, conn: Connection, table: Table, items: list[_Pending]) -> _Stored:
        """The stored (payload hash, batch, line) of the items' keys."""
        keys = list({item.record.idempotency_key for item in items})
        sql = (
            f"SELECT idempotency_key, payload_hash, batch_id, line FROM {table.name} "
            "WHERE project_id = {mark} AND idempotency_key {match}"
        )
        params: tuple[Any, ...]
        if self.sqlite:  # one JSON array: no limit on the number of host parameters
            match = "IN (SELECT value FROM json_each(?))"
            sql = sql.format(mark="?", match=match)
            params = (self.project.id, orjson.dumps(keys).decode())
        elif self.mysql:
            sql = sql.format(mark="%s", match="IN %s")
            params = (self.project.id, tuple(keys))
        else:
            sql = sql.format(mark="%s", match="= ANY(%s::text[])")
            params = (self.project.id, keys)
        rows = conn.exec_driver_sql(sql, params)
        return {key: (digest, batch, line) for key, digest, batch, line in rows}

    def _insert_new(self, conn: Connection, table: Table, items: list[_Pending]) -> int | None:
        """Store every item, none of whose keys is expected to be stored (nor repeated): the
        number stored (all of them, or fewer if the dialect's insert skips stored keys), or
        None when a key turned out to be stored and nothing was."""
        if self.sqlite:
            return self._insert_skipping(conn, table, items)
        if table is not Event.__table__:
            return self._insert_skipping(conn, table, items)
        try:
            with conn.begin_nested():
                if self.mysql:
                    for statement in self._mysql_inserts(items):
                        conn.exec_driver_sql(statement)
                else:
                    self._postgresql_copy(conn, items)
        except IntegrityError:  # the savepoint is rolled back
            return None
        return len(items)

    def _insert_skipping(self, conn: Connection, table: Table, items: list[_Pending]) -> int:
        """Insert with driver-ready tuples, skipping keys already stored; the number of rows
        stored, exact except on MariaDB (-1), whose driver counts the skipped rows too."""
        columns = _COLUMNS[table.name]
        sql = _insert_sql(self.dialect, table.name, columns)
        if table is Event.__table__:
            rows = self._event_rows(items)
        else:
            rows = [self._charge_row(item) for item in items]
        count = conn.exec_driver_sql(sql, rows).rowcount
        return count if self.dialect in _EXACT_INSERT_COUNTS else -1

    def _event_rows(self, items: list[_Pending]) -> list[tuple[Any, ...]]:
        """The events' column values, all as text (`_COLUMNS` order) except `line`; values are
        converted here once, the way the column types store them (the hot path skips
        per-value type processing)."""
        project = self.project.id
        batch = self.summary.batch
        received = self.received_at
        customers = self.customers
        dumps = orjson.dumps
        rows = []
        for item in items:
            event = item.record
            stamp = item.stamp
            rows.append(
                (
                    project,
                    event.idempotency_key,
                    customers[event.customer][0],
                    event.meter,
                    f"{stamp[:10]} {stamp[11:26]}",  # naive UTC, as UTCDateTime stores it
                    item.quantity,
                    dumps(event.properties).decode(),  # type: ignore[union-attr]
                    item.digest,
                    batch,
                    item.line,
                    received,
                )
            )
        return rows

    def _postgresql_copy(self, conn: Connection, items: list[_Pending]) -> None:
        """COPY the events in (text format: the server parses each value as its column's
        type); a stored key fails it with a unique violation."""
        sql = f"COPY events ({', '.join(_COLUMNS['events'])}) FROM STDIN"
        driver = conn.connection.driver_connection
        assert driver is not None
        try:
            with driver.cursor() as cursor, cursor.copy(sql) as copy:
                write = copy.write_row
                for row in self._event_rows(items):
                    write(row)
        except driver.Error as exc:  # as SQLAlchemy raises them from a statement it ran
            dbapi = conn.dialect.loaded_dbapi
            raise DBAPIError.instance(sql, None, exc, dbapi.Error, dialect=conn.dialect) from exc

    def _mysql_inserts(self, items: list[_Pending]) -> Iterator[str]:
        """Multi-row INSERT statements of up to about 1 MB (as PyMySQL's executemany makes
        them), with the values escaped the way PyMySQL escapes them; a stored key fails one.
        `%` is doubled: a statement run without parameters still goes through `%` formatting."""
        from pymysql.converters import escape_string

        head = f"INSERT INTO events ({', '.join(_COLUMNS['events'])}) VALUES "
        escaped = {value: escape_string(value) for value in (self.project.id, self.summary.batch)}
        parts: list[str] = []
        size = len(head)
        for row in self._event_rows(items):
            project, key, customer, meter, ts, quantity, properties, digest, batch, line, at = row
            part = (
                f"('{escaped[project]}','{escape_string(key)}','{escape_string(customer)}',"
                f"'{escape_string(meter)}','{ts}',{quantity},'{escape_string(properties)}',"
                f"'{digest}','{escaped[batch]}',{line},'{at}')"
            )
            if parts and size + len(part) > _MYSQL_STATEMENT:
                yield (head + ",".join(parts)).replace("%", "%%")
                parts = []
                size = len(head)
            parts.append(part)
            size += len(part) + 1
        if parts:
            yield (head + ",".join(parts)).replace("%", "%%")

    def _charge_row(self, item: _Pending) -> tuple[Any, ...]:
        charge = item.record
        assert isinstance(charge, ChargeInput)
        sqlite = self.sqlite
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

    def _classify(
        self, conn: Connection, table: Table, rows: list[_Pending], stored: _Stored
    ) -> None:
        conflicts: list[_Pending] = []
        first_in_batch: dict[str, _Pending] = {}
        accepted: list[_Pending] = []
        for item in rows:
            key = item.record.idempotency_key
            found = stored.get(key)
            if found is None:  # dry run: not stored yet, so only the batch itself can repeat it
                earlier = first_in_batch.setdefault(key, item)
                if earlier is item:
                    accepted.append(item)
                elif earlier.digest == item.digest:
                    self.summary.duplicates += 1
                else:
                    conflicts.append(item)
            elif found[1] == self.summary.batch and found[2] == item.line:
                accepted.append(item)
            elif found[0] == item.digest:
                self.summary.duplicates += 1
            else:
                conflicts.append(item)
        self._accept(accepted)
        if conflicts:
            self._report_conflicts(conn, table, conflicts)

    def _accept(self, items: list[_Pending]) -> None:
        if not items:
            return
        summary = self.summary
        summary.accepted += len(items)
        moments = [item.record.timestamp for item in items]
        earliest, latest = min(moments), max(moments)
        if summary.first_event is None or earliest < summary.first_event:
            summary.first_event = earliest
        if summary.last_event is None or latest > summary.last_event:
            summary.last_event = latest
        summary.months.update({(moment.year, moment.month) for moment in moments})

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
_MYSQL_STATEMENT = 1_024_000  # characters: PyMySQL executemany's statement size

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


def receipt_dict(batch: ImportBatch, stale: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A stored receipt; `stale` (billing_run.stale_invoices) are the finalized invoices whose
    period its events reached."""
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
        "stale_invoices": stale or [],
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
