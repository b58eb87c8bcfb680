"""`neruba check`: the consistency sweep. Every figure Neruba keeps beside the ledger — an
account's balance, a grant's remaining credit, an invoice's totals, amount due and amount paid
— is recomputed from the ledger entries and compared. Each sweep is a few grouped queries, so
it runs in one pass over the entries however large the ledger is.

Ledger sweeps:
- every transaction has at least two entries and sums to zero per currency;
- every account's balance equals the sum of its entries;
- every wallet's balance equals its grants' remaining credit;
- every grant's remaining credit equals its entries, between zero and what was granted;
- every finalized invoice's subtotal and credits applied equal its postings, its amount due
  the sum of its receivable entries and its amount paid its payments net of refunds; drafts
  have no postings and a void invoice owes nothing;
- every invoice's lines add up to its subtotal, its total is the subtotal less the credits
  applied, and its row says what its document says.

Invoice sweeps:
- numbers run 1..N without a gap and the project's counter stands at N;
- `invoices.lines`: every invoice's `invoice_lines` rows are its document's lines, one row per
  line in order (kind, description, meter, quantity, amount, event count), and add up to its
  subtotal (the document's own totals are `ledger.invoices`' business);
- `invoices.corrections`: every credit note and supplemental invoice is linked to the
  period's plain invoice (same customer, currency, month and period), at a lower revision,
  final unless both are void; plain invoices link to nothing; no revision repeats
  (domain/consistency.correction_problems).

Events sweep (`events.billed`), per customer-period with a live (non-void) invoice. An
invoice's `event_count` is how many of the customer's events in its period the run that
wrote it saw. The rules hold after any sequence of ingests, runs, finalizations and reruns
under every `late_events` policy, and fail when an event is counted twice or dropped:
- at most one live plain invoice per period (two would each bill its events);
- no live invoice counts more events than the period holds now (events are append-only);
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

Ingest sweep (`ingest.batches`): a completed import's `accepted` equals the events and
one-off charges rows carrying its batch id, and its lines are accepted + duplicates +
conflicts + rejected; a running (killed) or failed one never claims more than it stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, case, func, select

from neruba_cli.db.schema import (
    Charge,
    CreditGrant,
    Customer,
    Event,
    ImportBatch,
    Invoice,
    InvoiceLine,
    InvoiceRevision,
    InvoiceSequence,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Payment,
    Project,
    Refund,
)
from neruba_cli.domain import consistency
from neruba_cli.domain.consistency import BatchFacts, InvoiceFacts, LineRow, WindowEvents
from neruba_cli.domain.money import format_amount, format_minor, to_minor_units

accounts_t = LedgerAccount.__table__
entries_t = LedgerEntry.__table__
transactions_t = LedgerTransaction.__table__
grants_t = CreditGrant.__table__
invoices_t = Invoice.__table__
payments_t = Payment.__table__
refunds_t = Refund.__table__
customers_t = Customer.__table__
sequences_t = InvoiceSequence.__table__
lines_t = InvoiceLine.__table__
revisions_t = InvoiceRevision.__table__
events_t = Event.__table__
charges_t = Charge.__table__
batches_t = ImportBatch.__table__
CHUNK = 500  # invoices whose documents are read at a time
MAX_LISTED = 50  # problems listed per check; the count is always exact


@dataclass
class CheckResult:
    name: str
    description: str
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    count: int = 0
    notes: list[str] = field(default_factory=list)  # worth knowing, not a discrepancy
    note_count: int = 0

    def fail(self, problem: str) -> None:
        self.count += 1
        if len(self.problems) < MAX_LISTED:
            self.problems.append(problem)

    def note(self, note: str) -> None:
        self.note_count += 1
        if len(self.notes) < MAX_LISTED:
            self.notes.append(note)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "status": "ok" if not self.count else "fail",
            "checked": self.checked,
            "problems": self.count,
            "details": self.problems,
            "notes": self.notes,
            "noted": self.note_count,
        }


@dataclass
class CheckReport:
    project: str
    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(not result.count for result in self.results)

    def as_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "ok": self.ok,
            "problems": sum(result.count for result in self.results),
            "checks": [result.as_dict() for result in self.results],
        }


Sweep = Callable[[Connection, Project, CheckResult], None]


def run_consistent(engine: Engine, project: Project) -> CheckReport:
    """The sweep inside one snapshot of the database, so a grant or a payment committed while
    it runs cannot make two of its queries disagree (REPEATABLE READ on MariaDB and
    PostgreSQL; a SQLite read transaction is a snapshot already)."""
    with engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            if conn.dialect.name in ("mysql", "mariadb"):
                conn.exec_driver_sql("SELECT 1")  # InnoDB takes the snapshot at the first read
            return run(conn, project)


def run(conn: Connection, project: Project) -> CheckReport:
    results = []
    for name, description, sweep in SWEEPS:
        result = CheckResult(name, description)
        sweep(conn, project, result)
        results.append(result)
    return CheckReport(project.slug, results)


def _transactions_balance(conn: Connection, project: Project, result: CheckResult) -> None:
    per_currency = (
        select(
            entries_t.c.transaction_id,
            accounts_t.c.currency,
            func.sum(entries_t.c.amount).label("total"),
            func.count().label("entries"),
        )
        .join(accounts_t, accounts_t.c.id == entries_t.c.account_id)
        .where(entries_t.c.project_id == project.id)
        .group_by(entries_t.c.transaction_id, accounts_t.c.currency)
        .subquery()
    )
    rows = conn.execute(
        select(
            transactions_t.c.id,
            transactions_t.c.idempotency_key,
            per_currency.c.currency,
            per_currency.c.total,
            per_currency.c.entries,
        )
        .outerjoin(per_currency, per_currency.c.transaction_id == transactions_t.c.id)
        .where(transactions_t.c.project_id == project.id)
    ).all()
    entries: dict[str, int] = {}
    for row in rows:
        entries[row.id] = entries.get(row.id, 0) + int(row.entries or 0)
        if row.total is not None and int(row.total) != 0:
            result.fail(
                f"transaction {row.id} ({row.idempotency_key}) sums to "
                f"{format_minor(int(row.total), row.currency)} {row.currency}, not zero"
            )
    for txn, count in entries.items():
        if count < 2:
            result.fail(f"transaction {txn} has {count} entries; a posting needs at least two")
    result.checked = len(entries)


def _account_balances(conn: Connection, project: Project, result: CheckResult) -> None:
    sums = (
        select(entries_t.c.account_id, func.sum(entries_t.c.amount).label("total"))
        .where(entries_t.c.project_id == project.id)
        .group_by(entries_t.c.account_id)
        .subquery()
    )
    rows = conn.execute(
        select(accounts_t, sums.c.total, customers_t.c.external_id)
        .outerjoin(sums, sums.c.account_id == accounts_t.c.id)
        .outerjoin(customers_t, customers_t.c.id == accounts_t.c.customer_id)
        .where(accounts_t.c.project_id == project.id)
    ).all()
    for row in rows:
        entries = int(row.total or 0)
        if entries != row.balance:
            name = row.code if row.external_id is None else f"{row.code}:{row.external_id}"
            result.fail(
                f"account {name} ({row.currency}) has balance "
                f"{format_minor(row.balance, row.currency)} but its entries sum to "
                f"{format_minor(entries, row.currency)}"
            )
    result.checked = len(rows)


def _grants(conn: Connection, project: Project, result: CheckResult) -> None:
    sums = (
        select(entries_t.c.grant_id, func.sum(entries_t.c.amount).label("total"))
        .where(entries_t.c.project_id == project.id, entries_t.c.grant_id.is_not(None))
        .group_by(entries_t.c.grant_id)
        .subquery()
    )
    rows = conn.execute(
        select(grants_t, sums.c.total)
        .outerjoin(sums, sums.c.grant_id == grants_t.c.id)
        .where(grants_t.c.project_id == project.id)
    ).all()
    for row in rows:
        posted = -int(row.total or 0)
        currency = row.currency
        if posted != row.remaining_minor:
            result.fail(
                f"grant {row.id} shows {format_minor(row.remaining_minor, currency)} {currency} "
                f"remaining but its entries leave {format_minor(posted, currency)}"
            )
        ended = row.revoked_at is not None or row.expired_at is not None
        if ended and row.remaining_minor:
            state = "revoked" if row.revoked_at is not None else "expired"
            result.fail(
                f"grant {row.id} is {state} but still holds "
                f"{format_minor(row.remaining_minor, currency)} {currency}"
            )
        if not 0 <= row.remaining_minor <= row.amount_minor:
            result.fail(
                f"grant {row.id} has {format_minor(row.remaining_minor, currency)} {currency} "
                f"remaining of {format_minor(row.amount_minor, currency)} granted"
            )
    result.checked = len(rows)


def _wallets(conn: Connection, project: Project, result: CheckResult) -> None:
    remaining = dict(
        (
            (row.customer_id, row.currency),
            int(row.total or 0),
        )
        for row in conn.execute(
            select(
                grants_t.c.customer_id,
                grants_t.c.currency,
                func.sum(grants_t.c.remaining_minor).label("total"),
            )
            .where(grants_t.c.project_id == project.id)
            .group_by(grants_t.c.customer_id, grants_t.c.currency)
        ).all()
    )
    wallets = conn.execute(
        select(accounts_t, customers_t.c.external_id)
        .join(customers_t, customers_t.c.id == accounts_t.c.customer_id)
        .where(accounts_t.c.project_id == project.id, accounts_t.c.code == "wallet")
    ).all()
    seen = set()
    for row in wallets:
        key = (row.customer_id, row.currency)
        seen.add(key)
        held = -row.balance
        if held != remaining.get(key, 0):
            result.fail(
                f"wallet of {row.external_id} holds {format_minor(held, row.currency)} "
                f"{row.currency} but its grants have "
                f"{format_minor(remaining.get(key, 0), row.currency)} left"
            )
        if held < 0:
            result.fail(f"wallet of {row.external_id} is overdrawn ({row.currency})")
    for key, left in remaining.items():
        if key not in seen and left:
            result.fail(f"grants of customer {key[0]} hold credit but no wallet was posted")
    result.checked = len(wallets)


def _receivables(conn: Connection, project: Project) -> dict[str, dict[str, int]]:
    """Per invoice: receivable entries by the kind of transaction that posted them."""
    rows = conn.execute(
        select(
            entries_t.c.invoice_id,
            transactions_t.c.kind,
            func.sum(entries_t.c.amount).label("total"),
        )
        .join(transactions_t, transactions_t.c.id == entries_t.c.transaction_id)
        .where(entries_t.c.project_id == project.id, entries_t.c.invoice_id.is_not(None))
        .group_by(entries_t.c.invoice_id, transactions_t.c.kind)
    ).all()
    found: dict[str, dict[str, int]] = {}
    for row in rows:
        found.setdefault(row.invoice_id, {})[row.kind] = int(row.total)
    return found


def _paid(conn: Connection, project: Project) -> dict[str, int]:
    paid: dict[str, int] = {}
    for invoice_id, total in conn.execute(
        select(payments_t.c.invoice_id, func.sum(payments_t.c.applied_minor))
        .where(payments_t.c.project_id == project.id)
        .group_by(payments_t.c.invoice_id)
    ).all():
        paid[invoice_id] = int(total)
    for invoice_id, total in conn.execute(
        select(payments_t.c.invoice_id, func.sum(refunds_t.c.amount_minor))
        .join(refunds_t, refunds_t.c.payment_id == payments_t.c.id)
        .where(payments_t.c.project_id == project.id)
        .group_by(payments_t.c.invoice_id)
    ).all():
        paid[invoice_id] = paid.get(invoice_id, 0) - int(total)
    return paid


def _invoices(conn: Connection, project: Project, result: CheckResult) -> None:
    posted = _receivables(conn, project)
    paid = _paid(conn, project)
    checked = 0
    for row in _invoice_rows(conn, project):
        checked += 1
        for problem in invoice_problems(row, posted.get(row.id, {}), paid.get(row.id, 0)):
            result.fail(f"invoice {row.number}: {problem}")
    result.checked = checked


def _invoice_rows(conn: Connection, project: Project) -> Iterator[Any]:
    query = (
        select(
            invoices_t.c.id,
            invoices_t.c.number,
            invoices_t.c.status,
            invoices_t.c.currency,
            invoices_t.c.subtotal,
            invoices_t.c.credits_applied,
            invoices_t.c.total,
            invoices_t.c.content,
            invoices_t.c.amount_due_minor,
            invoices_t.c.amount_paid_minor,
        )
        .where(invoices_t.c.project_id == project.id)
        .order_by(invoices_t.c.number)
        .execution_options(yield_per=2000)
    )
    yield from conn.execute(query)


def document_problems(row: Any) -> list[str]:
    """The invoice row's totals against its document: lines add up to the subtotal, the total
    is the subtotal less the credits applied, and the row says what the document says."""
    currency = row.currency
    content = orjson.loads(row.content)
    problems = []
    lines = sum((Decimal(line["amount"]) for line in content["lines"]), Decimal(0))
    if format_amount(lines, currency) != content["subtotal"]:
        problems.append(f"its lines add up to {format_amount(lines, currency)}, its subtotal "
                        f"says {content['subtotal']}")  # fmt: skip
    expected = Decimal(content["subtotal"]) - Decimal(content["credits_applied"])
    if format_amount(expected, currency) != content["total"]:
        problems.append(f"total {content['total']} is not subtotal less credits applied")
    for name in ("subtotal", "credits_applied", "total"):
        stored = format_amount(Decimal(getattr(row, name)), currency)
        if stored != content[name]:
            problems.append(f"the row's {name} {stored} differs from its document's "
                            f"{content[name]}")  # fmt: skip
    return problems


def invoice_problems(row: Any, posted: dict[str, int], paid: int) -> list[str]:
    """What disagrees between an invoice row and its receivable postings (by kind)."""
    currency = row.currency
    problems = document_problems(row)
    due = sum(posted.values())
    if row.status == "draft":
        if posted:
            problems.append("a draft has ledger postings")
        return problems
    if row.status == "void":
        if due:
            problems.append(f"void but still owes {format_minor(due, currency)} in the ledger")
        return problems
    subtotal = to_minor_units(Decimal(row.subtotal), currency)
    finalized = posted.get("invoice_finalized", 0)
    if finalized != subtotal:
        problems.append(
            f"subtotal {format_minor(subtotal, currency)} but "
            f"{format_minor(finalized, currency)} posted"
        )
    credits = to_minor_units(Decimal(row.credits_applied), currency)
    if -posted.get("credits_applied", 0) != credits:
        problems.append(
            f"credits applied {format_minor(credits, currency)} but "
            f"{format_minor(-posted.get('credits_applied', 0), currency)} posted"
        )
    if due != row.amount_due_minor:
        problems.append(
            f"amount due {format_minor(row.amount_due_minor, currency)} but the ledger says "
            f"{format_minor(due, currency)}"
        )
    if paid != row.amount_paid_minor:
        problems.append(
            f"amount paid {format_minor(row.amount_paid_minor, currency)} but payments net of "
            f"refunds are {format_minor(paid, currency)}"
        )
    if subtotal < 0 and row.amount_due_minor != 0:
        problems.append(
            f"its negative total was never settled ({format_minor(row.amount_due_minor, currency)} "
            "left against the invoice it corrects or the wallet)"
        )
    if row.status == "paid" and row.amount_due_minor > 0:
        problems.append(f"marked paid but {format_minor(row.amount_due_minor, currency)} is due")
    if row.status == "finalized" and subtotal > 0 and row.amount_due_minor <= 0:
        problems.append("nothing is due but it is not marked paid")
    return problems


def _numbering(conn: Connection, project: Project, result: CheckResult) -> None:
    """Invoice numbers run 1, 2, ... N without a gap (void ones keep theirs), and the
    project's counter stands at N."""
    numbers = sorted(
        _sequence_number(number, project.slug)
        for (number,) in conn.execute(
            select(invoices_t.c.number).where(invoices_t.c.project_id == project.id)
        )
    )
    result.checked = len(numbers)
    counter = conn.execute(
        select(sequences_t.c.last_number).where(sequences_t.c.project_id == project.id)
    ).scalar()
    expected = list(range(1, len(numbers) + 1))
    if numbers != expected:
        missing = sorted(set(expected) - set(numbers))[:10]
        extra = sorted(set(numbers) - set(expected))[:10]
        result.fail(
            f"invoice numbers are not 1..{len(numbers)} without gaps"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
        )
    if (counter or 0) != len(numbers):
        result.fail(f"the invoice counter stands at {counter or 0} for {len(numbers)} invoices")


def _sequence_number(number: str, slug: str) -> int:
    prefix = f"{slug.upper()}-"
    tail = number[len(prefix) :] if number.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else -1


# --------------------------------------------------------------------------- invoice lines


def _line_rows(conn: Connection, project: Project, result: CheckResult) -> None:
    checked = 0
    for chunk in _document_chunks(conn, project):
        rows: dict[str, list[LineRow]] = {row.id: [] for row in chunk}
        for line in conn.execute(
            select(lines_t)
            .where(lines_t.c.invoice_id.in_(list(rows)))
            .order_by(lines_t.c.invoice_id, lines_t.c.position)
        ):
            rows[line.invoice_id].append(
                LineRow(
                    line.position,
                    line.kind,
                    line.description,
                    line.meter,
                    line.quantity,
                    Decimal(line.amount),
                    line.event_count,
                )
            )
        for row in chunk:
            checked += 1
            document = orjson.loads(row.content)
            for problem in consistency.line_row_problems(document, rows[row.id], row.currency):
                result.fail(f"invoice {row.number}: {problem}")
    result.checked = checked


def _document_chunks(
    conn: Connection, project: Project, *, live_only: bool = False
) -> Iterator[list[Any]]:
    """Invoices with their documents, a chunk at a time (keyset on the id), so memory stays
    bounded and no result set stays open while the next query runs (MariaDB's driver
    allows one at a time)."""
    after = ""
    while True:
        query = (
            select(
                invoices_t.c.id, invoices_t.c.number, invoices_t.c.currency, invoices_t.c.content
            )
            .where(invoices_t.c.project_id == project.id, invoices_t.c.id > after)
            .order_by(invoices_t.c.id)
            .limit(CHUNK)
        )
        if live_only:
            query = query.where(invoices_t.c.status != "void")
        chunk = list(conn.execute(query).all())
        if not chunk:
            return
        yield chunk
        after = chunk[-1].id


# --------------------------------------------------------------------------- corrections


def _invoice_facts(conn: Connection, project: Project) -> list[InvoiceFacts]:
    rows = conn.execute(
        select(
            invoices_t.c.id,
            invoices_t.c.number,
            customers_t.c.external_id,
            invoices_t.c.customer_id,
            invoices_t.c.period,
            invoices_t.c.period_start,
            invoices_t.c.period_end,
            invoices_t.c.currency,
            invoices_t.c.kind,
            invoices_t.c.status,
            invoices_t.c.revision,
            invoices_t.c.subtotal,
            invoices_t.c.corrects_id,
            invoices_t.c.event_count,
        )
        .join(customers_t, customers_t.c.id == invoices_t.c.customer_id)
        .where(invoices_t.c.project_id == project.id)
        .order_by(invoices_t.c.number)
    ).all()
    return [
        InvoiceFacts(
            row.id,
            row.number,
            row.external_id,
            row.customer_id,
            row.period,
            row.period_start,
            row.period_end,
            row.currency,
            row.kind,
            row.status,
            int(row.revision),
            Decimal(row.subtotal),
            row.corrects_id,
            int(row.event_count),
        )
        for row in rows
    ]


def _corrections(conn: Connection, project: Project, result: CheckResult) -> None:
    facts = _invoice_facts(conn, project)
    by_id = {invoice.id: invoice for invoice in facts}
    for invoice in facts:
        target = None if invoice.corrects_id is None else by_id.get(invoice.corrects_id)
        for problem in consistency.correction_problems(invoice, target):
            result.fail(f"invoice {invoice.number}: {problem}")
    for problem in consistency.repeated_revisions(facts):
        result.fail(problem)
    result.checked = len(facts)


# --------------------------------------------------------------------------- events billed


Window = tuple[str, Any, Any]  # customer id, period start, period end


def _events_billed(conn: Connection, project: Project, result: CheckResult) -> None:
    facts = _invoice_facts(conn, project)
    live = [invoice for invoice in facts if invoice.status != "void"]
    by_meter = _window_meter_counts(conn, project)
    settled = _settled_counts(conn, project)
    windows: dict[Window, list[InvoiceFacts]] = {}
    for invoice in sorted(live, key=lambda i: i.revision):
        windows.setdefault(invoice.window, []).append(invoice)
    for invoices in windows.values():
        for problem in consistency.live_invoices_problems(invoices):
            result.fail(problem)
    stored: dict[str, WindowEvents] = {}
    for invoice in live:
        meters = by_meter.get(invoice.window, {})
        stored[invoice.id] = WindowEvents(sum(meters.values()), meters, settled.get(invoice.id, 0))
        for problem in consistency.event_count_problems(invoice, stored[invoice.id]):
            result.fail(f"invoice {invoice.number}: {problem}")
    by_number = {invoice.number: invoice for invoice in facts}
    carried_from = {
        number: by_meter.get(invoice.window, {}) for number, invoice in by_number.items()
    }
    carried_onto: dict[str, list[str]] = {}
    by_id = {invoice.id: invoice for invoice in live}
    for chunk in _document_chunks(conn, project, live_only=True):
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


def _settled_counts(conn: Connection, project: Project) -> dict[str, int]:
    """Per live invoice: the events of its period committed before it was computed. It was
    computed when its fingerprint was first written (settlement adds versions at
    finalization with the same fingerprint, later than the count). An import's events count
    as committed when the import finished (its `finished_at` comes after its last commit);
    events of a running import never do."""
    computed = (
        select(revisions_t.c.invoice_id, func.min(revisions_t.c.created_at).label("at"))
        .join(
            invoices_t,
            and_(
                invoices_t.c.id == revisions_t.c.invoice_id,
                invoices_t.c.fingerprint == revisions_t.c.fingerprint,
            ),
        )
        .where(invoices_t.c.project_id == project.id, invoices_t.c.status != "void")
        .group_by(revisions_t.c.invoice_id)
        .subquery()
    )
    committed = case(
        (batches_t.c.id.is_(None), events_t.c.received_at), else_=batches_t.c.finished_at
    )
    before = case((committed <= computed.c.at, 1), else_=0)
    rows = conn.execute(
        select(invoices_t.c.id, func.sum(before).label("settled"))
        .select_from(invoices_t)
        .join(computed, computed.c.invoice_id == invoices_t.c.id)
        .join(events_t, _in_window(invoices_t.c))
        .outerjoin(batches_t, batches_t.c.id == events_t.c.batch_id)
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


# --------------------------------------------------------------------------- import batches


def _batches(conn: Connection, project: Project, result: CheckResult) -> None:
    stored: dict[str, int] = {}
    for table in (events_t, charges_t):
        for batch_id, count in conn.execute(
            select(table.c.batch_id, func.count())
            .where(table.c.project_id == project.id, table.c.batch_id.is_not(None))
            .group_by(table.c.batch_id)
        ):
            stored[batch_id] = stored.get(batch_id, 0) + int(count)
    rows = conn.execute(
        select(batches_t)
        .where(batches_t.c.project_id == project.id)
        .order_by(batches_t.c.started_at, batches_t.c.id)
    ).all()
    for row in rows:
        batch = BatchFacts(
            row.id,
            row.source,
            row.status,
            row.lines,
            row.accepted,
            row.duplicates,
            row.conflicts,
            row.rejected,
            stored.get(row.id, 0),
        )
        for problem in consistency.batch_problems(batch):
            result.fail(f"import {row.id} ({row.source}) {problem}")
        if row.status == "running":
            result.note(
                f"import {row.id} ({row.source}) has been running since "
                f"{row.started_at:%Y-%m-%d %H:%M:%S} UTC with {batch.stored} rows stored: "
                "still going, or killed (importing the file again completes it)"
            )
    result.checked = len(rows)


SWEEPS: list[tuple[str, str, Sweep]] = [
    ("ledger.balanced", "every transaction sums to zero per currency", _transactions_balance),
    ("ledger.accounts", "account balances equal the sum of their entries", _account_balances),
    ("ledger.grants", "grants' remaining credit equals their entries", _grants),
    ("ledger.wallets", "wallet balances equal their grants' remaining credit", _wallets),
    ("ledger.invoices", "invoice totals, amounts due and paid equal their postings", _invoices),
    ("invoices.numbering", "invoice numbers are gapless and match the counter", _numbering),
    ("invoices.lines", "invoice line rows equal their documents' lines", _line_rows),
    ("invoices.corrections", "corrections link to the final invoice they correct", _corrections),
    ("events.billed", "invoices count each stored event of their period once", _events_billed),
    ("ingest.batches", "import receipts count the events they stored", _batches),
]
