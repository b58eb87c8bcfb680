"""Writing an import's valid lines: one batch per transaction, every line classified.

Each line is classified: stored by this line (accepted), stored before with the same
canonical payload (duplicate), or stored with another payload (conflict, reported with the
stored event beside it). The unique key (project, idempotency_key) decides: a batch's keys
found stored are classified from what is stored, the others are inserted with the dialect's
bulk insert (db/bulk_insert.py), and whenever that insert cannot vouch that it stored every
one of them, the batch is written with an insert that skips stored keys and every line
classified by reading the batch's keys back. Nothing is assumed across transactions, so a
crashed import simply runs again and converges to the same events.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import fields, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Table, insert, select

from neruba_cli.db import bulk_insert, retry
from neruba_cli.db.bulk_insert import StoredKeys, db_time
from neruba_cli.db.engine import begin_write
from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import Customer, ImportBatch, Project
from neruba_cli.db.tables import charges_t, events_t
from neruba_cli.domain import exact_json
from neruba_cli.domain.charges import ChargeInput, check_currency
from neruba_cli.domain.events import (
    EventInput,
    Rejected,
    quantity_text,
    read_operation,
    stored_operation,
)
from neruba_cli.domain.money import decimal_text
from neruba_cli.domain.suggest import did_you_mean
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.ingest.receipts import IngestSummary, LineOutcome, save_counts
from neruba_cli.services.ingest.rejects import Reject, RejectsWriter, raw_text
from neruba_cli.services.ingest.validation import HINTED_NAMES, Pending
from neruba_cli.services.tenancy.customer_hints import ids_for_hints

ACCEPTED = LineOutcome("accepted")


class BatchWriter:
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
        rejects: RejectsWriter,
        now: datetime,
        *,
        dry_run: bool = False,
        create_customers: bool = False,
    ) -> None:
        self.engine = engine
        self.project = project
        self.summary = summary
        self.dry_run = dry_run
        self.create_customers = create_customers
        self.rejects = rejects
        self.now = now
        self.customers: dict[str, tuple[str, str]] = {}  # external id -> (id, currency)
        self.sqlite = engine.dialect.name == "sqlite"
        self.keeps_receipt = True
        self.look_first = True  # read a batch's stored keys before inserting it
        self.received_at = db_time(now, True)  # the text of `now` in every dialect
        self.unknown_customers: dict[str, str] = {}  # name -> the reject's reason, with a hint
        self.customer_names: list[str] | None = None  # the project's, for near-miss hints
        # Other writers may store the same keys at the same time (the HTTP API's requests):
        # new keys are inserted in key order, so two such writers never wait on each other in
        # a cycle, and a batch the database still aborts to break a deadlock runs again.
        self.concurrent = False
        # Where each batch's write transaction comes from (the HTTP API's event writers keep
        # their connection: db/engine.KeptConnection).
        self.transaction: Callable[[], AbstractContextManager[Connection]] = lambda: begin_write(
            engine
        )

    def flush(
        self,
        batch: list[Pending],
        written: Callable[[], None] | None = None,
        *,
        then: Callable[[Connection], None] | None = None,
    ) -> None:
        """Write and classify one batch in a transaction of its own; `written` is called
        when all of it is done but the commit, and `then` in the transaction after the
        writes. A `concurrent` writer runs a transaction the database aborted to break a
        deadlock again, from the counts it began with; only a writer without a rejects file
        may (a file cannot take lines back)."""
        if not self.concurrent:
            self._flush(batch, written, then)
            return
        assert self.rejects.path is None
        saved = self._checkpoint()
        attempts = 0

        def once() -> None:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                self._restore(saved)
            self._flush(batch, written, then)

        retry.retrying(once)

    def _checkpoint(self) -> tuple[IngestSummary, dict[str, tuple[str, str]] | None, int]:
        """What a transaction run again starts from. The customers resolved so far are kept
        as they are (a lookup stays true when its transaction rolls back), unless this writer
        creates customers: those it created in a rolled-back transaction are gone."""
        summary = self.summary
        copied = replace(
            summary,
            months=set(summary.months),
            rejects=list(summary.rejects),
            outcomes=None if summary.outcomes is None else dict(summary.outcomes),
        )
        customers = dict(self.customers) if self.create_customers else None
        return copied, customers, self.rejects.count

    def _restore(self, saved: tuple[IngestSummary, dict[str, tuple[str, str]] | None, int]) -> None:
        copied, customers, self.rejects.count = saved
        if customers is not None:
            self.customers = customers
        for name in (item.name for item in fields(IngestSummary)):
            setattr(self.summary, name, getattr(copied, name))
        self.look_first = True

    def _flush(
        self,
        batch: list[Pending],
        written: Callable[[], None] | None,
        then: Callable[[Connection], None] | None,
    ) -> None:
        # It reads the batch's customers and keys, then writes: on SQLite, a transaction that
        # took the write lock at BEGIN, which another writer's commit cannot invalidate.
        with self.transaction() as conn:
            self.write_in(conn, batch, written, then)

    def write_in(
        self,
        conn: Connection,
        batch: list[Pending],
        written: Callable[[], None] | None = None,
        then: Callable[[Connection], None] | None = None,
    ) -> None:
        """`flush` in the caller's write transaction (`begin_write`), which the caller runs
        again, with a new writer, when the database aborts it."""
        self._resolve_customers(conn, {item.record.customer for item in batch})
        events: list[Pending] = []
        charges: list[Pending] = []
        customers = self.customers
        for item in batch:
            if item.record.customer in customers and type(item.record) is EventInput:
                events.append(item)
                continue
            reason = self._customer_problem(conn, item)
            if reason is not None:
                reject = Reject(item.line, reason, raw_text(item.raw), file=item.file)
                self.summary.reject(reject, self.rejects)
            else:
                (charges if isinstance(item.record, ChargeInput) else events).append(item)
        for table, rows in ((events_t, events), (charges_t, charges)):
            if rows:
                self._write(conn, table, rows)
        if then is not None:
            then(conn)
        if self.summary.batch is not None and self.keeps_receipt:
            save_counts(conn, self.summary)
        if written is not None:
            written()

    def _customer_problem(self, conn: Connection, item: Pending) -> str | None:
        found = self.customers.get(item.record.customer)
        if found is None:
            return self._unknown_customer(conn, item.record.customer)
        if isinstance(item.record, ChargeInput):
            try:
                check_currency(item.record, found[1])
            except Rejected as exc:
                return str(exc)
        return None

    def _unknown_customer(self, conn: Connection, name: str) -> str:
        """The reason, with the near customer when there is one (worked out once per name,
        for the first HINTED_NAMES names; a project with too many customers to compare is
        compared with the customers this import has seen)."""
        reason = self.unknown_customers.get(name)
        if reason is None:
            if len(self.unknown_customers) >= HINTED_NAMES:
                return f"unknown customer {name!r}"
            if self.customer_names is None:
                known = ids_for_hints(conn, self.project)
                self.customer_names = list(self.customers) if known is None else known
            hint = did_you_mean(name, self.customer_names)
            reason = f"unknown customer {name!r}" + (f" — {hint}" if hint else "")
            self.unknown_customers[name] = reason
        return reason

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
        if unknown and self.create_customers:
            if self.dry_run:  # would be created: count their lines as accepted
                self.customers.update(dict.fromkeys(unknown, ("", self.project.currency)))
            else:
                self._create_customers(conn, unknown)

    def _create_customers(self, conn: Connection, names: list[str]) -> None:
        rows: list[dict[str, Any]] = [
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

    def _write(self, conn: Connection, table: Table, items: list[Pending]) -> None:
        if self.dry_run:
            self._classify(conn, table, items, self._stored(conn, table, items))
            return
        stored = self._stored(conn, table, items) if self.look_first else {}
        fresh: list[Pending] = []  # the first line of each key not stored yet
        later: list[Pending] = []  # lines whose key is stored or earlier in this batch
        firsts: dict[str, Pending] = {}
        for item in items:
            key = item.record.idempotency_key
            if key in stored or key in firsts:
                later.append(item)
            else:
                firsts[key] = item
                fresh.append(item)
        self.look_first = bool(stored)
        if fresh:
            if self.concurrent:
                fresh.sort(key=_key)
            rows = self._rows(table, fresh)
            inserted = bulk_insert.insert_new(conn, table.name, rows)
            if inserted is None:  # nothing stored: some key is stored already
                inserted = bulk_insert.insert_skipping(conn, table.name, rows)
            if inserted != len(fresh):
                self.look_first = True
                self._classify(conn, table, items, self._stored(conn, table, items))
                return
            self.accept(fresh)
        if later:
            batch = self.summary.batch
            for key, item in firsts.items():
                stored.setdefault(key, (item.digest, batch, item.line, False))
            self._classify(conn, table, later, stored)

    def _stored(self, conn: Connection, table: Table, items: list[Pending]) -> StoredKeys:
        """The stored (payload hash, batch, line) of the items' keys."""
        keys = list({item.record.idempotency_key for item in items})
        return bulk_insert.stored_keys(conn, table.name, self.project.id, keys)

    def _rows(self, table: Table, items: list[Pending]) -> list[bulk_insert.Row]:
        if table is events_t:
            return self.event_rows(items)
        return [self._charge_row(item) for item in items]

    def event_rows(self, items: list[Pending]) -> list[bulk_insert.Row]:
        """The events' column values, all as text (`bulk_insert.COLUMNS` order) except
        `line` and `line_digest`; values are converted here once, the way the column types
        store them (the hot path skips per-value type processing)."""
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
                    event.meter,  # type: ignore[union-attr]
                    f"{stamp[:10]} {stamp[11:26]}",  # naive UTC, as UTCDateTime stores it
                    item.quantity,
                    dumps(event.properties).decode(),  # type: ignore[union-attr]
                    item.digest,
                    batch,
                    item.line,
                    received,
                    stored_operation(event.operation),  # type: ignore[union-attr]
                    item.line_digest,
                )
            )
        return rows

    def _charge_row(self, item: Pending) -> bulk_insert.Row:
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
            db_time(charge.timestamp, sqlite),
            item.digest,
            self.summary.batch,
            item.line,
            db_time(self.now, sqlite),
        )

    def _classify(
        self, conn: Connection, table: Table, rows: list[Pending], stored: StoredKeys
    ) -> None:
        conflicts: list[Pending] = []
        first_in_batch: dict[str, Pending] = {}
        accepted: list[Pending] = []
        repeated: list[str] = []  # keys of lines that repeat a stored event
        for item in rows:
            key = item.record.idempotency_key
            found = stored.get(key)
            if found is None:  # dry run: not stored yet, so only the batch itself can repeat it
                earlier = first_in_batch.setdefault(key, item)
                if earlier is item:
                    accepted.append(item)
                elif earlier.digest == item.digest:
                    self.summary.duplicate(item.line)
                else:
                    conflicts.append(item)
            elif found[1] == self.summary.batch and found[2] == item.line:
                accepted.append(item)
            elif found[0] == item.digest:
                self.summary.duplicate(item.line)
                repeated.append(key)
            else:
                conflicts.append(item)
        self.accept(accepted)
        # a repeated line holds the payload first stored (a key's payload hash never
        # changes), so it is a duplicate even when the event was voided or amended since:
        # the correction stands, and the receipt counts it
        self.summary.corrected_duplicates += sum(1 for key in repeated if stored[key][3])
        if conflicts:
            self._report_conflicts(conn, table, conflicts)

    def accept(self, items: list[Pending]) -> None:
        """Count the items as accepted: stored by this writer."""
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
        if summary.outcomes is not None:
            summary.outcomes.update((item.line, ACCEPTED) for item in items)

    def _report_conflicts(self, conn: Connection, table: Table, conflicts: list[Pending]) -> None:
        keys = [item.record.idempotency_key for item in conflicts]
        stored = {
            row.idempotency_key: row
            for row in conn.execute(
                select(table, Customer.external_id, ImportBatch.source)
                .join(Customer, Customer.id == table.c.customer_id)
                .outerjoin(ImportBatch, ImportBatch.id == table.c.batch_id)
                .where(table.c.project_id == self.project.id)
                .where(table.c.idempotency_key.in_(keys))
            )
        }
        kind = "charge" if table is charges_t else "event"
        for item in conflicts:
            row = stored.get(item.record.idempotency_key)
            if row is not None and kind == "event" and _repeats_current(row, item):
                self.summary.duplicate(item.line)
                self.summary.corrected_duplicates += 1
                continue
            where = "earlier in this import"
            payload: dict[str, Any] | None = None
            if row is not None:
                where = f"stored by import {row.batch_id}{_of(row.source)} line {row.line}"
                payload = _stored_payload(row, kind)
            reason = (
                f"conflicts with {kind} {item.record.idempotency_key!r} {where}: same key, "
                "different payload"
            )
            reject = Reject(item.line, reason, raw_text(item.raw), stored=payload, file=item.file)
            self.summary.reject(reject, self.rejects, conflict=True)


def _key(item: Pending) -> str:
    return item.record.idempotency_key


def _repeats_current(row: Any, item: Pending) -> bool:
    """The line holds the current version of a corrected event (an amendment, or the line of
    an `ingest --replace` that amended it): a duplicate, like a line holding its first one."""
    if int(row.version) == 1 or row.voided:
        return False
    event = item.record
    assert isinstance(event, EventInput)
    return (
        row.external_id == event.customer
        and row.meter == event.meter
        and row.ts == event.timestamp
        and Decimal(row.quantity) == Decimal(item.quantity)
        and exact_json.loads(row.properties) == event.properties
        and read_operation(row.operation) == event.operation
    )


def _of(source: str | None) -> str:
    """Which file the stored line is in: `from a.jsonl`, or `(a.jsonl, b.jsonl)` when the
    import read several (its line numbers are per file)."""
    if source is None:
        return ""
    return f" ({source})" if ", " in source else f" from {source}"


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
        **({"operation": "remove"} if getattr(row, "operation", None) == "remove" else {}),
    }
