"""Events and charges handed over already parsed (the HTTP API's): through the same Validator
and BatchWriter as `neruba ingest`, so the rules, the idempotency and the conflicts are the
file's.

- `record_one`: one event or charge, written in one transaction with no receipt (like
  `neruba charge add`: a batch id of its own tells it apart), its late-event check in the same
  transaction; the project's meters come from the caller, which may keep them a while.
- `ingest_objects`: a batch, as an import of its objects: a receipt (`source` = `api`), the
  ingest summary, and each object's outcome (`summary.outcomes`, by line = index + 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import Project
from neruba_cli.domain.catalog import MeterDef
from neruba_cli.domain.events import reason_field
from neruba_cli.services.billing import run as billing_run
from neruba_cli.services.ingest import pipeline
from neruba_cli.services.ingest.readers import Objects
from neruba_cli.services.ingest.receipts import IngestSummary, LineOutcome
from neruba_cli.services.ingest.rejects import Reject, RejectsWriter
from neruba_cli.services.ingest.validation import Pending, Validator
from neruba_cli.services.ingest.writer import BatchWriter

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


def record_one(
    engine: Engine,
    project: Project,
    obj: Any,
    *,
    meters: dict[str, MeterDef],
    now: datetime,
    charge: bool = False,
    conn: Connection | None = None,
    customers: dict[str, tuple[str, str]] | None = None,
) -> Recorded:
    """One event (or, with `charge`, one `--format charges` line), checked and written (in
    `conn`'s write transaction when one is given, see `write_one`). `customers` (external id
    → id and currency) are ones the caller has seen resolved: an event naming one of them is
    written without looking it up, and the ones looked up are added (charges check the
    customer's currency: they always read it)."""
    validate = Validator(
        meters, charges_only=charge, now=now, max_future=MAX_FUTURE, assume_tz=None
    )
    item = validate(None, 1, b"", obj)
    key = obj.get("idempotency_key") if isinstance(obj, dict) else None
    key = key if isinstance(key, str) else None
    if isinstance(item, Reject):
        return Recorded("rejected", key, item.reason, reason_field(item.reason))
    outcome, summary = write_one(
        engine,
        project,
        item,
        now=now,
        late_events=not charge,
        conn=conn,
        customers=None if charge else customers,
    )
    return Recorded(
        outcome.status,
        item.record.idempotency_key,
        outcome.reason,
        None if outcome.reason is None else reason_field(outcome.reason),
        outcome.stored,
        summary.batch,
        summary.stale_invoices,
        validate.warnings(),
    )


def write_one(
    engine: Engine,
    project: Project,
    item: Pending,
    *,
    now: datetime,
    source: str = SOURCE,
    late_events: bool = False,
    conn: Connection | None = None,
    customers: dict[str, tuple[str, str]] | None = None,
) -> tuple[LineOutcome, IngestSummary]:
    """One valid line in a transaction of its own, without a receipt: its outcome, and the
    summary (with `late_events`, the finalized invoices an accepted event made stale). With
    `conn`, in the caller's write transaction instead (one that also stores the request's
    Idempotency-Key), which the caller runs again if the database aborts it. `customers` as
    in `record_one` (the ones looked up exist whatever becomes of the transaction)."""
    summary = IngestSummary(batch=new_id("bat"), source=source, outcomes={})
    writer = BatchWriter(engine, project, summary, RejectsWriter(None), now)
    if customers:
        writer.customers.update(customers)
    writer.keeps_receipt = False
    writer.look_first = False  # a new key is the common case: insert, and look only if stored
    writer.concurrent = True

    def late(conn: Connection) -> None:
        if late_events and summary.accepted and summary.batch is not None:
            summary.stale_invoices = billing_run.stale_invoices(
                conn, project.id, summary.batch, summary.first_event, summary.last_event
            )

    if conn is None:
        writer.flush([item], then=late)
    else:
        writer.write_in(conn, [item], then=late)
    if customers is not None:
        customers.update(writer.customers)  # and the ones it looked up
    assert summary.outcomes is not None
    return summary.outcomes[item.line], summary


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
