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

Invoice sweep: numbers run 1..N without a gap and the project's counter stands at N.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, func, select

from neruba_cli.db.schema import (
    CreditGrant,
    Customer,
    Invoice,
    InvoiceSequence,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Payment,
    Project,
    Refund,
)
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
MAX_LISTED = 50  # problems listed per check; the count is always exact


@dataclass
class CheckResult:
    name: str
    description: str
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    count: int = 0

    def fail(self, problem: str) -> None:
        self.count += 1
        if len(self.problems) < MAX_LISTED:
            self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "status": "ok" if not self.count else "fail",
            "checked": self.checked,
            "problems": self.count,
            "details": self.problems,
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


SWEEPS: list[tuple[str, str, Sweep]] = [
    ("ledger.balanced", "every transaction sums to zero per currency", _transactions_balance),
    ("ledger.accounts", "account balances equal the sum of their entries", _account_balances),
    ("ledger.grants", "grants' remaining credit equals their entries", _grants),
    ("ledger.wallets", "wallet balances equal their grants' remaining credit", _wallets),
    ("ledger.invoices", "invoice totals, amounts due and paid equal their postings", _invoices),
    ("invoices.numbering", "invoice numbers are gapless and match the counter", _numbering),
]
