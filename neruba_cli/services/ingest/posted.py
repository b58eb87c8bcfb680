"""Events and charges handed over already parsed (the HTTP API's): through the same Validator
and BatchWriter as `neruba ingest`, so the rules, the idempotency and the conflicts are the
file's.

- `check`: one event or charge against the rules and the project's meters (which the caller
  may keep a while): what to write, or why not.
- `write_group`: events posted one by one that arrived together, written in one transaction
  with no receipt (a batch id of their own tells them apart, as `neruba charge add`'s does),
  each with its own outcome and the finalized invoices it made stale. Grouping only shares the
  cost of a commit: each event is classified exactly as if it had been written alone, in the
  order given.
- `record_one`: one charge (or event) checked and written, in the caller's transaction when it
  has one (the API's charges, with their Idempotency-Key record).
- `ingest_objects`: a batch, as an import of its objects: a receipt (`source` = `api`), the
  ingest summary, and each object's outcome (`summary.outcomes`, by line = index + 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from neruba_cli.db import bulk_insert
from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import Project
from neruba_cli.domain.catalog import MeterDef
from neruba_cli.domain.events import EventInput, reason_field
from neruba_cli.domain.late_events import stale_entry
from neruba_cli.services.ingest import corrections, pipeline
from neruba_cli.services.ingest.readers import Objects
from neruba_cli.services.ingest.receipts import IngestSummary, LineOutcome
from neruba_cli.services.ingest.rejects import Reject, RejectsWriter
from neruba_cli.services.ingest.validation import Pending, Validator
from neruba_cli.services.ingest.writer import ACCEPTED, BatchWriter
from neruba_cli.services.tenancy import audit

_Stale = dict[tuple[str, datetime], list[corrections.FinalInvoice]]
SOURCE = "api"  # the receipts' source, and the summary's
MAX_FUTURE = timedelta(hours=1)  # how far ahead a timestamp may be: `neruba ingest`'s default


@dataclass
class Recorded:
    """What became of one posted event or charge."""

    status: str  # accepted | duplicate | conflict | rejected
    idempotency_key: str | None
    reason: str | None = None
    param: str | None = None  # the input field the reason is about
    stored: dict[str, object] | None = None  # a conflict: what the key holds
    batch: str | None = None
    stale_invoices: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check(
    obj: Any, *, meters: dict[str, MeterDef], now: datetime, charge: bool = False
) -> tuple[Pending | Recorded, list[str]]:
    """One posted object against the rules (`charge`: a `--format charges` line): the item to
    write, or the rejected outcome; and what `neruba ingest` would warn about it."""
    validate = Validator(
        meters, charges_only=charge, now=now, max_future=MAX_FUTURE, assume_tz=None
    )
    item = validate(None, 1, b"", obj)
    if isinstance(item, Reject):
        key = obj.get("idempotency_key") if isinstance(obj, dict) else None
        key = key if isinstance(key, str) else None
        return Recorded("rejected", key, item.reason, reason_field(item.reason)), []
    return item, validate.warnings()


def record_one(
    engine: Engine,
    project: Project,
    obj: Any,
    *,
    meters: dict[str, MeterDef],
    now: datetime,
    charge: bool = False,
    conn: Connection | None = None,
) -> Recorded:
    """One event or charge, checked and written in a transaction of its own, or in `conn`'s
    write transaction when one is given (see `write_one`)."""
    item, warnings = check(obj, meters=meters, now=now, charge=charge)
    if isinstance(item, Recorded):
        return item
    outcome, summary = write_one(engine, project, item, now=now, conn=conn)
    return recorded(item, outcome, summary.batch or "", [], warnings)


Answer = tuple[LineOutcome, str, list[dict[str, str]]]  # outcome, batch, stale invoices
Audits = Callable[[list[LineOutcome]], Sequence[audit.Entry]]


def write_group(
    engine: Engine,
    project: Project,
    items: Sequence[Pending],
    *,
    now: datetime,
    customers: dict[str, tuple[str, str]] | None = None,
    transaction: Callable[[], AbstractContextManager[Connection]] | None = None,
    audits: Audits | None = None,
) -> list[Answer]:
    """Valid events of `project`, written in one write transaction (`transaction()`, by
    default `begin_write(engine)`; the writer runs it again if the database aborts it to
    break a deadlock): for each, in order, its outcome, the batch id they share, and the
    finalized invoices it made stale, checked in the same transaction. `audits` gives the
    records to write in it too, from the outcomes in order (the API's requests'). Each
    item's `line` is set to its place in the group. `customers`: see `_writer`. (On
    PostgreSQL the HTTP API sends a group of new keys itself first: `Group.new`.)"""
    group = Group(engine, project, items, now, customers, audits)
    if transaction is not None:
        group.writer.transaction = transaction
    return group.classified()


@dataclass(frozen=True)
class NewGroup:
    """A group's statements when all its keys are new: its rows and its audit records
    (`bulk_insert.Rows`), and the stale-invoice check, for `bulk_insert.commit_new_async`."""

    inserts: list[bulk_insert.Rows]
    stale: corrections.StaleQuery

    @property
    def query(self) -> bulk_insert.Query:
        return self.stale.sql, self.stale.params


class Group:
    """Events posted one by one that are written together (`write_group`; the HTTP API's
    event loop sends a `NewGroup` itself)."""

    def __init__(
        self,
        engine: Engine,
        project: Project,
        items: Sequence[Pending],
        now: datetime,
        customers: dict[str, tuple[str, str]] | None,
        audits: Audits | None,
    ) -> None:
        for line, item in enumerate(items, start=1):
            item.line = line
        self.items = items
        self.audits = audits
        self.summary = IngestSummary(batch=new_id("bat"), source=SOURCE, outcomes={})
        self.writer = _writer(engine, project, self.summary, now, customers)

    def new(self) -> NewGroup | None:
        """The statements that store the group if all its keys are new; None when it cannot
        go that way (not PostgreSQL, a customer not resolved yet, a key twice in it)."""
        items, writer = self.items, self.writer
        customers = writer.customers
        if (
            writer.engine.dialect.name != "postgresql"
            or len({item.record.idempotency_key for item in items}) != len(items)
            or not all(
                type(item.record) is EventInput and item.record.customer in customers
                for item in items
            )
        ):
            return None
        touched = [(customers[item.record.customer][0], item.record.timestamp) for item in items]
        query = corrections.stale_query(writer.project.id, touched)
        if query is None:
            return None
        inserts: list[bulk_insert.Rows] = [
            ("events", bulk_insert.COLUMNS["events"], writer.event_rows(sorted(items, key=_key)))
        ]
        if self.audits is not None:
            _, records = audit.driver_rows(self.audits([ACCEPTED] * len(items)), sqlite=False)
            inserts.append((audit.TABLE, audit.COLUMNS, records))
        return NewGroup(inserts, query)

    def accepted(self, new: NewGroup, rows: Sequence[Sequence[Any]]) -> list[Answer]:
        """The answers once `new` is committed, `rows` being what its query returned."""
        self.writer.accept(list(self.items))
        return self._answers(new.stale.found(rows))

    def classified(self) -> list[Answer]:
        """The group through the writer, each event classified."""
        items, writer, summary = self.items, self.writer, self.summary
        stale: _Stale = {}

        def finish(conn: Connection) -> None:
            outcomes = summary.outcomes or {}
            touched = [
                (writer.customers[item.record.customer][0], item.record.timestamp)
                for item in items
                if outcomes[item.line].status == "accepted"
            ]
            stale.clear()  # the writer may run the transaction again
            stale.update(corrections.stale_by_event(conn, writer.project.id, touched))
            if self.audits is not None:
                audit.record_in(conn, self.audits([outcomes[item.line] for item in items]))

        writer.flush(list(items), then=finish)
        return self._answers(stale)

    def _answers(self, stale: _Stale) -> list[Answer]:
        summary = self.summary
        assert summary.outcomes is not None and summary.batch is not None
        answers = []
        for item in self.items:
            outcome = summary.outcomes[item.line]
            found = self.writer.customers.get(item.record.customer)
            invoices = stale.get((found[0], item.record.timestamp), []) if found else []
            entries = [stale_entry(invoice.number, invoice.period) for invoice in invoices]
            answers.append((outcome, summary.batch, entries))
        return answers


def _key(item: Pending) -> str:
    return item.record.idempotency_key


def write_one(
    engine: Engine,
    project: Project,
    item: Pending,
    *,
    now: datetime,
    source: str = SOURCE,
    conn: Connection | None = None,
) -> tuple[LineOutcome, IngestSummary]:
    """One valid line in a transaction of its own, without a receipt: its outcome and the
    summary. With `conn`, in the caller's write transaction instead (one that also stores the
    request's Idempotency-Key), which the caller runs again if the database aborts it."""
    summary = IngestSummary(batch=new_id("bat"), source=source, outcomes={})
    writer = _writer(engine, project, summary, now, None)
    if conn is None:
        writer.flush([item])
    else:
        writer.write_in(conn, [item])
    assert summary.outcomes is not None
    return summary.outcomes[item.line], summary


def _writer(
    engine: Engine,
    project: Project,
    summary: IngestSummary,
    now: datetime,
    customers: dict[str, tuple[str, str]] | None,
) -> BatchWriter:
    """A writer for posted lines: no receipt, a new key is the common case (insert, and look
    only if stored), other requests write the same keys at the same time. `customers`
    (external id → id and currency) are ones the caller has seen resolved: an event naming
    one of them is written without looking it up (charges always read their customer's
    currency: they pass None). The writer adds the ones it looks up to that same map, not to
    a copy: the map may hold every customer of a large project."""
    writer = BatchWriter(engine, project, summary, RejectsWriter(None), now)
    if customers is not None:
        writer.customers = customers
    writer.keeps_receipt = False
    writer.look_first = False
    writer.concurrent = True
    return writer


def recorded(
    item: Pending,
    outcome: LineOutcome,
    batch: str,
    stale: list[dict[str, str]],
    warnings: list[str],
) -> Recorded:
    """The answer for one written item."""
    return Recorded(
        outcome.status,
        item.record.idempotency_key,
        outcome.reason,
        None if outcome.reason is None else reason_field(outcome.reason),
        outcome.stored,
        batch,
        stale,
        warnings,
    )


def ingest_objects(
    engine: Engine,
    project: Project,
    objects: Sequence[Any],
    *,
    body: bytes,
    meters: dict[str, MeterDef],
    actor: str,
    now: datetime,
) -> IngestSummary:
    """A batch of event objects, imported as a file of them would be (`body`: the bytes they
    were read from, whose SHA-256 the receipt keeps)."""
    options = pipeline.IngestOptions(fmt="jsonl", max_future=MAX_FUTURE, per_line=True)
    return pipeline.ingest(
        engine,
        project,
        Objects(SOURCE, objects, body),
        options,
        meters=meters,
        rejects=RejectsWriter(None),
        actor=actor,
        now=now,
    )
