"""The writer of a billing run: what each built invoice means for the stored ones, and the
writes that follow. Kept apart from planning, which only reads, so that every invoice a run
writes goes through one fenced path.

**Decide**: create a draft, recompute a draft in place (a new version), leave it (same
fingerprint), or — once the period's invoice is finalized — apply the project's late-event
policy: a linked correction (`correct`), nothing (`ignore`), or the difference carried to the
customer's next invoice (`next_invoice`; the following month's run carries it,
services/billing/run.py).

**Write** whole invoices, a batch per transaction, each transaction fenced by the run's lease
token: a run that lost its lease (paused, expired, taken over) cannot write. The run record is
created only once an invoice changes, so a run that changed nothing leaves none. Invoice
numbers are taken inside the invoice's transaction, so a rollback gives them back and they stay
gapless.

The run's options, outcomes and report live here because the writer reads and records them;
services/billing/run.py re-exports them, and this module imports nothing from it (no cycle).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from neruba_cli.db import locks
from neruba_cli.db.ids import new_id
from neruba_cli.db.retry import retrying
from neruba_cli.db.schema import (
    Customer,
    Invoice,
    Project,
)
from neruba_cli.db.tables import (
    billing_runs_t,
    customers_t,
    invoice_lines_t,
    invoice_revisions_t,
    invoice_sequences_t,
    invoices_t,
)
from neruba_cli.domain import invoice_numbers
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.invoice import (
    FINAL,
    BuiltInvoice,
    canonical_json,
    correction_kind,
    correction_lines,
    invoice_content,
)
from neruba_cli.domain.invoice_limits import Unbillable, check_document
from neruba_cli.domain.late_events import Treatment, treatment
from neruba_cli.domain.periods import Period
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.billing.plan import (
    WorkItem,
    documents,
    same_invoice,
    terms_changed,
    with_stored_ids,
)
from neruba_cli.services.invoices import settlement

WRITE_BATCH = 100  # whole invoices per transaction
RECORDED_BYTES = 40_000  # failures kept in the run record (a TEXT column on MariaDB: 64 KiB)
DEFAULT_LEASE = timedelta(minutes=10)


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class RunOptions:
    label: str  # YYYY-MM, previous or current
    as_of: datetime
    customers: tuple[str, ...] = ()
    dry_run: bool = False
    finalize: bool = False
    wait: float = 0.0
    lease: timedelta = DEFAULT_LEASE
    allow_future: bool = False  # bill a month that has not started (fees in advance)


@dataclass
class Outcome:
    customer: str
    period: Period
    action: str  # created | updated | unchanged | corrected | voided | ignored | carried
    number: str | None = None
    total: Decimal | None = None
    currency: str | None = None
    late_events: int = 0
    landed: str | None = None  # where late events went: a correction number, next, ignored
    fingerprint: str | None = None
    content: dict[str, Any] | None = None  # for --dry-run and previews


@dataclass
class Failure:
    """A customer the run could not bill (or finalize): skipped, nothing of it written, and
    reported with the stored events that caused it."""

    customer: str  # external id
    customer_id: str
    period: Period
    reason: str
    number: str | None = None  # its stored invoice, left as it was
    events: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "customer": self.customer,
            "period_start": format_ts(self.period.start),
            "period_end": format_ts(self.period.end),
            "reason": self.reason,
            "invoice": self.number,
            "events": list(self.events),
        }


@dataclass
class RunReport:
    period: str
    run: str | None = None
    status: str = "completed"
    outcomes: list[Outcome] = field(default_factory=list)
    finalized: list[str] = field(default_factory=list)
    fingerprint: str | None = None
    dry_run: bool = False
    failed: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # shown on stderr, not in the JSON

    def count(self, *actions: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.action in actions)

    @property
    def late_events(self) -> int:
        return sum(outcome.late_events for outcome in self.outcomes)

    @property
    def changed(self) -> bool:
        return bool(self.finalized) or self.count("created", "updated", "corrected", "voided") > 0


def run_summary(report: RunReport) -> dict[str, Any]:
    return {
        "invoices": report.count("created", "updated"),
        "created": report.count("created"),
        "updated": report.count("updated"),
        "corrections": report.count("corrected"),
        "voided": report.count("voided"),
        "unchanged": report.count("unchanged", "ignored"),
        "late_events": report.late_events,
        "finalized": len(report.finalized),
    }


# --------------------------------------------------------------------------- writing


Write = Callable[[Connection], None]


class InvoiceWriter:
    """Decides what each built invoice means for the stored ones and writes it, whole
    invoices a batch per transaction, every transaction fenced by the run's lease."""

    def __init__(
        self,
        engine: Engine,
        project: Project,
        label: str,
        lease: locks.Lease | None,
        options: RunOptions,
        *,
        actor: str,
        now: datetime,
    ) -> None:
        self.engine, self.project, self.label = engine, project, label
        self.lease, self.options = lease, options
        self.actor, self.now = actor, now
        self.pending: list[Write] = []
        self.creates: list[_NewInvoice] = []
        self.run_id: str | None = None
        self.renewed = time.monotonic()

    # -- decisions

    def settle(self, item: WorkItem, built: BuiltInvoice) -> Outcome:
        finals = [inv for inv in item.existing if inv.status in FINAL]
        draft = next((inv for inv in item.existing if inv.status == "draft"), None)
        outcome = Outcome(
            item.customer.external_id,
            item.period,
            "unchanged",
            total=built.total,
            currency=item.customer.currency,
            fingerprint=built.fingerprint,
            content=built.content if self.options.dry_run else None,  # kept for display only
        )
        if not finals:
            if item.orphan:
                return self._settle_orphan(draft, outcome)
            return self._settle_open(item, built, draft, outcome)
        late = max(item.raw_count - finals[-1].event_count, 0)
        outcome.late_events = late
        changed = not built.same_setup(finals[-1].setup_fingerprint)
        if changed:
            with self.engine.connect() as conn:
                changed = terms_changed(conn, built, finals[-1])
        decided = treatment(
            self.project.late_events,
            final=True,
            terms_changed=changed,
            can_carry=not item.fallback,
        )
        if decided is Treatment.CORRECT:
            return self._settle_correction(item, built, finals, draft, outcome)
        # CARRY: the following month's run carries the difference (billing.run._late_carry).
        ignored = decided is Treatment.IGNORE
        outcome.action = "ignored" if late and ignored else "unchanged"
        outcome.landed = ("ignored" if ignored else "next_invoice") if late else None
        outcome.number, outcome.total = finals[-1].number, finals[-1].total
        if ignored:
            self._queue_bookkeeping(finals[-1], item, built)
        return outcome

    def _settle_orphan(self, draft: Invoice | None, outcome: Outcome) -> Outcome:
        """A draft for a period the month no longer bills: void it (its number stays)."""
        if draft is not None:
            outcome.action, outcome.number, outcome.total = "voided", draft.number, Decimal(0)
            self._queue_void(draft, "no longer billed: the customer's billing periods changed")
        return outcome

    def _settle_open(
        self, item: WorkItem, built: BuiltInvoice, draft: Invoice | None, outcome: Outcome
    ) -> Outcome:
        if draft is None:
            outcome.action = "created"
            self._queue_create(item, built, built.content, outcome, corrects=None)
        elif self._same_invoice(draft, built):
            outcome.number = draft.number
            self._queue_bookkeeping(draft, item, built)
        else:
            outcome.action, outcome.number = "updated", draft.number
            self._queue_update(draft, item, built, built.content)
        return outcome

    def _settle_correction(
        self,
        item: WorkItem,
        built: BuiltInvoice,
        finals: list[Invoice],
        draft: Invoice | None,
        outcome: Outcome,
    ) -> Outcome:
        currency = item.customer.currency
        with self.engine.connect() as conn:
            billed = documents(conn, finals) + item.carried_elsewhere
            built = with_stored_ids(conn, built, finals, billed)
        lines = correction_lines(built.content["lines"], billed, currency)
        if not lines:
            outcome.number, outcome.total = finals[-1].number, finals[-1].total
            if draft is not None:
                outcome.action = "voided"
                self._queue_void(draft, "superseded: nothing is left to correct")
            else:
                outcome.landed = "unchanged" if outcome.late_events else None
                self._queue_bookkeeping(finals[-1], item, built)
            return outcome
        total = sum((Decimal(line["amount"]) for line in lines), Decimal(0))
        content = invoice_content(
            correction_kind(total), currency, item.period, built.content["period"]["label"], lines
        )
        check_document(content, currency)
        outcome.total = total
        if self.options.dry_run:
            outcome.content = content
        if draft is None:
            outcome.action = "corrected"
            self._queue_create(item, built, content, outcome, corrects=finals[0])
        elif self._same_invoice(draft, built):
            outcome.number = draft.number
            outcome.landed = draft.number
            self._queue_bookkeeping(draft, item, built)
        else:
            outcome.action, outcome.number, outcome.landed = "corrected", draft.number, draft.number
            self._queue_update(draft, item, built, content)
        return outcome

    def _same_invoice(self, stored: Invoice, built: BuiltInvoice) -> bool:
        """`plan.same_invoice`, connecting only where it has to read the stored inputs."""
        if built.same_fingerprint(stored.fingerprint):
            return True
        if built.same_setup(stored.setup_fingerprint):
            return False
        with self.engine.connect() as conn:
            return same_invoice(conn, built, stored)

    # -- queued writes

    def _queue_create(
        self,
        item: WorkItem,
        built: BuiltInvoice,
        content: dict[str, Any],
        outcome: Outcome,
        *,
        corrects: Invoice | None,
    ) -> None:
        if self.options.dry_run:
            return
        revision = max((inv.revision for inv in item.existing), default=-1) + 1
        self._ensure_run()
        self.creates.append(_NewInvoice(item, built, content, outcome, corrects, revision))
        if len(self.creates) + len(self.pending) >= WRITE_BATCH:
            self.flush()

    def _queue_update(
        self, draft: Invoice, item: WorkItem, built: BuiltInvoice, content: dict[str, Any]
    ) -> None:
        if self.options.dry_run:
            return
        version = draft.version + 1

        def write(conn: Connection) -> None:
            changed = conn.execute(
                update(invoices_t)
                .where(invoices_t.c.id == draft.id)
                .where(invoices_t.c.status == "draft")
                .where(invoices_t.c.version == draft.version)
                .values(
                    kind=content["kind"],
                    subtotal=Decimal(content["subtotal"]),
                    credits_applied=Decimal(content["credits_applied"]),
                    total=Decimal(content["total"]),
                    run_id=self.run_id,
                    version=version,
                    fingerprint=built.fingerprint,
                    setup_fingerprint=built.setup_fingerprint,
                    event_count=item.raw_count,
                    content=canonical_json(content).decode(),
                    inputs=canonical_json(built.inputs).decode(),
                    updated_at=self.now,
                )
            ).rowcount
            if changed != 1:
                raise InvalidInput(
                    f"invoice {draft.number} changed while this run computed it; run again"
                )
            conn.execute(delete(invoice_lines_t).where(invoice_lines_t.c.invoice_id == draft.id))
            self._write_lines(conn, draft.id, content)
            self._write_revision(conn, draft.id, version, built.fingerprint, content)

        self._queue(write)

    def _queue_bookkeeping(self, invoice: Invoice, item: WorkItem, built: BuiltInvoice) -> None:
        """The invoice stands as it is, but events arrived that change nothing on it (another
        meter, a free tier, or late events the policy ignores): remember how many events and
        which terms the run saw, so the next run neither prices it again nor reports those
        events as late a second time. Only these two bookkeeping columns change; a finalized
        invoice's document, totals and fingerprint never do."""
        if self.options.dry_run or (
            invoice.event_count == item.raw_count and built.same_setup(invoice.setup_fingerprint)
        ):
            return

        def write(conn: Connection) -> None:
            conn.execute(
                update(invoices_t)
                .where(invoices_t.c.id == invoice.id, invoices_t.c.status != "void")
                .values(event_count=item.raw_count, setup_fingerprint=built.setup_fingerprint)
            )

        self._queue(write, needs_run=False)

    def _queue_void(self, draft: Invoice, reason: str) -> None:
        if self.options.dry_run:
            return

        def write(conn: Connection) -> None:
            conn.execute(
                update(invoices_t)
                .where(invoices_t.c.id == draft.id, invoices_t.c.status == "draft")
                .values(status="void", voided_at=self.now, void_reason=reason, run_id=self.run_id)
            )

        self._queue(write)

    def _write_lines(self, conn: Connection, invoice_id: str, content: dict[str, Any]) -> None:
        rows = _line_rows(invoice_id, content)
        if rows:
            conn.execute(insert(invoice_lines_t), rows)

    def _write_revision(
        self,
        conn: Connection,
        invoice_id: str,
        version: int,
        fingerprint: str,
        content: dict[str, Any],
    ) -> None:
        row = _revision_row(invoice_id, version, self.run_id, fingerprint, content, self.now)
        conn.execute(insert(invoice_revisions_t).values(**row))

    def _queue(self, write: Write, *, needs_run: bool = True) -> None:
        if needs_run:
            self._ensure_run()
        self.pending.append(write)
        if len(self.pending) >= WRITE_BATCH:
            self.flush()

    # -- transactions

    def transaction(self) -> Any:
        return _Fenced(self)

    def flush(self) -> None:
        if not self.pending and not self.creates:
            return
        writes, self.pending = self.pending, []
        creates, self.creates = self.creates, []
        with self.transaction() as conn:
            for write in writes:
                write(conn)
            if creates:
                self._insert_invoices(conn, creates)

    def _insert_invoices(self, conn: Connection, creates: list[_NewInvoice]) -> None:
        """New invoices in a few statements: numbers taken as one block, then one multi-row
        insert each for invoices, lines and revisions."""
        numbers = reserve_numbers(conn, self.project, len(creates))
        invoices, lines, revisions = [], [], []
        for new, number in zip(creates, numbers, strict=True):
            invoice_id = new_id("inv")
            new.outcome.number = number
            if new.corrects is not None:
                new.outcome.landed = number
            content, built, item = new.content, new.built, new.item
            invoices.append(
                {
                    "id": invoice_id,
                    "project_id": self.project.id,
                    "number": number,
                    "customer_id": item.customer.id,
                    "period": item.label,
                    "period_start": item.period.start,
                    "period_end": item.period.end,
                    "revision": new.revision,
                    "kind": content["kind"],
                    "status": "draft",
                    "currency": item.customer.currency,
                    "subtotal": Decimal(content["subtotal"]),
                    "credits_applied": Decimal(content["credits_applied"]),
                    "total": Decimal(content["total"]),
                    "corrects_id": None if new.corrects is None else new.corrects.id,
                    "run_id": self.run_id,
                    "version": 1,
                    "fingerprint": built.fingerprint,
                    "setup_fingerprint": built.setup_fingerprint,
                    "event_count": item.raw_count,
                    "content": canonical_json(content).decode(),
                    "inputs": canonical_json(built.inputs).decode(),
                    "created_at": self.now,
                    "updated_at": self.now,
                }
            )
            lines += _line_rows(invoice_id, content)
            revisions.append(
                _revision_row(invoice_id, 1, self.run_id, built.fingerprint, content, self.now)
            )
        conn.execute(insert(invoices_t), invoices)
        if lines:
            conn.execute(insert(invoice_lines_t), lines)
        conn.execute(insert(invoice_revisions_t), revisions)

    def _ensure_run(self) -> None:
        if self.run_id is not None or self.lease is None:
            return
        run_id = new_id("run")
        with self.transaction() as conn:
            conn.execute(
                insert(billing_runs_t).values(
                    id=run_id,
                    project_id=self.project.id,
                    period=self.label,
                    status="running",
                    actor=self.actor,
                    holder=self.lease.holder,
                    lock_token=self.lease.token,
                    as_of=self.options.as_of,
                    started_at=self.now,
                )
            )
        self.run_id = run_id

    def finalize_period(
        self, skip_customers: Collection[str] = ()
    ) -> tuple[list[str], list[tuple[Any, Unbillable]]]:
        """Finalize this month's drafts (of the selected customers) whose period has ended,
        and the corrections of earlier months this run wrote: (the numbers finalized, the
        drafts left because the ledger cannot hold them, with why). The drafts of
        `skip_customers` (internal ids: customers this run could not bill) are left too."""
        mine = invoices_t.c.period == self.label
        if self.run_id is not None:
            mine = or_(mine, invoices_t.c.run_id == self.run_id)
        query = (
            select(
                invoices_t.c.id,
                invoices_t.c.number,
                invoices_t.c.customer_id,
                invoices_t.c.period_start,
                invoices_t.c.period_end,
                invoices_t.c.currency,
                invoices_t.c.subtotal,
                invoices_t.c.total,
            )
            .where(invoices_t.c.project_id == self.project.id)
            .where(mine)
            .where(invoices_t.c.status == "draft")
            .where(invoices_t.c.period_end <= min(self.options.as_of, self.now))
            .order_by(invoices_t.c.number)
        )
        if self.options.customers:
            query = query.join(customers_t, Customer.id == invoices_t.c.customer_id).where(
                Customer.external_id.in_(list(self.options.customers))
            )
        with self.engine.connect() as conn:
            found = [row for row in conn.execute(query) if row.customer_id not in skip_customers]
        unpostable: list[tuple[Any, Unbillable]] = []
        done: list[str] = []
        for start in range(0, len(found), WRITE_BATCH):
            chunk = self._postable(found[start : start + WRITE_BATCH], unpostable)
            if chunk:
                self._ensure_run()
                done += retrying(partial(self._finalize_chunk, [row.id for row in chunk]))
        return done, unpostable

    def _postable(self, rows: list[Any], unpostable: list[tuple[Any, Unbillable]]) -> list[Any]:
        """The drafts of `rows` the ledger can hold; the others go to `unpostable` (stored
        before amounts were checked), so one of them never stops a chunk's transaction."""
        ids = [row.id for row in rows]
        with self.engine.connect() as conn:
            contents = dict(
                conn.execute(
                    select(invoices_t.c.id, invoices_t.c.content).where(invoices_t.c.id.in_(ids))
                ).all()
            )
        postable = []
        for row in rows:
            try:
                settlement.check_postable(row, orjson.loads(contents[row.id]))
            except Unbillable as exc:
                unpostable.append((row, exc))
                continue
            postable.append(row)
        return postable

    def _finalize_chunk(self, ids: list[str]) -> list[str]:
        with self.transaction() as conn:
            return settlement.finalize(conn, self.project, ids, now=self.now, actor=self.actor)

    def record(self) -> None:
        """Make sure the run leaves a record, although it may change no invoice: a run that
        failed customers (or billed ones an earlier run failed) is what `check` reads."""
        self._ensure_run()

    def close_run(self, report: RunReport) -> None:
        summary: dict[str, Any] = run_summary(report)
        if self.options.customers:
            summary["customers"] = sorted(self.options.customers)
        summary["failed"] = _recorded(report.failed)
        summary["failed_count"] = len(report.failed)
        with self.transaction() as conn:
            conn.execute(
                update(billing_runs_t)
                .where(billing_runs_t.c.id == self.run_id)
                .values(
                    status="completed",
                    finished_at=datetime.now(UTC),
                    fingerprint=report.fingerprint,
                    summary=canonical_json(summary).decode(),
                )
            )


def _recorded(failures: list[Failure]) -> list[dict[str, Any]]:
    """The failures the run record keeps: the first ones, within the column's size (the
    record's `failed_count` is exact)."""
    kept: list[dict[str, Any]] = []
    size = 0
    for failure in failures:
        entry = failure.as_dict()
        size += len(canonical_json(entry))
        if size > RECORDED_BYTES:
            break
        kept.append(entry)
    return kept


@dataclass
class _NewInvoice:
    item: WorkItem
    built: BuiltInvoice
    content: dict[str, Any]
    outcome: Outcome
    corrects: Invoice | None
    revision: int


def _line_rows(invoice_id: str, content: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "invoice_id": invoice_id,
            "position": position,
            "kind": line["kind"],
            "description": line["description"][:500],
            "meter": line.get("meter"),
            "quantity": None if line.get("quantity") is None else Decimal(line["quantity"]),
            "amount": Decimal(line["amount"]),
            "event_count": (line.get("events") or {}).get("count"),
        }
        for position, line in enumerate(content["lines"], start=1)
    ]


def _revision_row(
    invoice_id: str,
    version: int,
    run_id: str | None,
    fingerprint: str,
    content: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    return {
        "invoice_id": invoice_id,
        "version": version,
        "run_id": run_id,
        "fingerprint": fingerprint,
        "content": canonical_json(content).decode(),
        "created_at": now,
    }


class _Fenced:
    """A write transaction of the run: its lease renewed first when due (in a transaction of
    its own), and the fence as the transaction's last statement (db/locks.py), so a run paused
    inside it holds no lock on the lease row and cannot commit once the lease is gone."""

    def __init__(self, writer: InvoiceWriter) -> None:
        self.writer = writer
        self.context: AbstractContextManager[Connection] | None = None

    def __enter__(self) -> Connection:
        writer = self.writer
        if writer.lease is not None and time.monotonic() - writer.renewed > (
            writer.options.lease.total_seconds() / 3
        ):
            writer.lease = locks.renew(writer.engine, writer.lease, ttl=writer.options.lease)
            writer.renewed = time.monotonic()
        if writer.lease is None:
            self.context = writer.engine.begin()
        else:
            self.context = locks.fenced(writer.engine, writer.lease)
        return self.context.__enter__()

    def __exit__(self, *exc: Any) -> bool | None:
        assert self.context is not None, "entered before exiting"
        return self.context.__exit__(*exc)


def next_number(conn: Connection, project: Project) -> str:
    """The next invoice number, gapless: the counter moves inside the invoice's transaction."""
    return reserve_numbers(conn, project, 1)[0]


def reserve_numbers(conn: Connection, project: Project, count: int) -> list[str]:
    """`count` consecutive invoice numbers. The counter row is updated in the caller's
    transaction: its row lock orders concurrent writers, and a rollback gives the numbers
    back, so numbers stay gapless."""
    for _attempt in range(3):
        bumped = conn.execute(
            update(invoice_sequences_t)
            .where(invoice_sequences_t.c.project_id == project.id)
            .values(last_number=invoice_sequences_t.c.last_number + count)
        ).rowcount
        if bumped == 1:
            last = int(
                conn.execute(
                    select(invoice_sequences_t.c.last_number).where(
                        invoice_sequences_t.c.project_id == project.id
                    )
                ).scalar_one()
            )
            return [
                invoice_numbers.format_number(project.slug, n)
                for n in range(last - count + 1, last + 1)
            ]
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(invoice_sequences_t).values(project_id=project.id, last_number=count)
                )
            return [invoice_numbers.format_number(project.slug, n) for n in range(1, count + 1)]
        except IntegrityError:
            continue  # another transaction created the counter first; bump it
    raise InvalidInput("could not take an invoice number; run again")
