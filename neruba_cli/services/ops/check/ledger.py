"""Ledger sweeps: every figure kept beside the ledger, recomputed from its entries.

- `ledger.balanced`: every transaction has at least two entries and sums to zero per currency;
- `ledger.accounts`: every account's balance equals the sum of its entries;
- `ledger.grants`: every grant's remaining credit equals its entries, between zero and what
  was granted;
- `ledger.wallets`: every wallet's balance equals its grants' remaining credit;
- `ledger.invoices`: every finalized invoice's subtotal and credits applied equal its
  postings, its amount due the sum of its receivable entries and its amount paid its payments
  net of refunds; drafts have no postings and a void invoice owes nothing; every invoice's
  lines add up to its subtotal, its total is the subtotal less the credits applied, and its
  row says what its document says.

Each sweep is a few grouped queries, so it runs in one pass over the entries however large
the ledger is; the rules are domain/consistency.py's.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, func, select

from neruba_cli.db.schema import (
    Project,
)
from neruba_cli.db.tables import (
    credit_grants_t,
    customers_t,
    invoices_t,
    ledger_accounts_t,
    ledger_entries_t,
    ledger_transactions_t,
    payments_t,
    refunds_t,
)
from neruba_cli.domain import consistency
from neruba_cli.domain.consistency import (
    AccountBalance,
    GrantFacts,
    InvoiceTotals,
    TransactionTotal,
    WalletFacts,
)
from neruba_cli.services.ops.check.result import CheckResult, Sweep


def transactions_balance(conn: Connection, project: Project, result: CheckResult) -> None:
    per_currency = (
        select(
            ledger_entries_t.c.transaction_id,
            ledger_accounts_t.c.currency,
            func.sum(ledger_entries_t.c.amount).label("total"),
            func.count().label("entries"),
        )
        .join(ledger_accounts_t, ledger_accounts_t.c.id == ledger_entries_t.c.account_id)
        .where(ledger_entries_t.c.project_id == project.id)
        .group_by(ledger_entries_t.c.transaction_id, ledger_accounts_t.c.currency)
        .subquery()
    )
    rows = conn.execute(
        select(
            ledger_transactions_t.c.id,
            ledger_transactions_t.c.idempotency_key,
            per_currency.c.currency,
            per_currency.c.total,
            per_currency.c.entries,
        )
        .outerjoin(per_currency, per_currency.c.transaction_id == ledger_transactions_t.c.id)
        .where(ledger_transactions_t.c.project_id == project.id)
    ).all()
    problems, result.checked = consistency.transaction_problems(
        [
            TransactionTotal(
                row.id,
                row.idempotency_key,
                row.currency,
                None if row.total is None else int(row.total),
                int(row.entries or 0),
            )
            for row in rows
        ]
    )
    for problem in problems:
        result.fail(problem)


def account_balances(conn: Connection, project: Project, result: CheckResult) -> None:
    sums = (
        select(ledger_entries_t.c.account_id, func.sum(ledger_entries_t.c.amount).label("total"))
        .where(ledger_entries_t.c.project_id == project.id)
        .group_by(ledger_entries_t.c.account_id)
        .subquery()
    )
    rows = conn.execute(
        select(ledger_accounts_t, sums.c.total, customers_t.c.external_id)
        .outerjoin(sums, sums.c.account_id == ledger_accounts_t.c.id)
        .outerjoin(customers_t, customers_t.c.id == ledger_accounts_t.c.customer_id)
        .where(ledger_accounts_t.c.project_id == project.id)
    ).all()
    for row in rows:
        name = row.code if row.external_id is None else f"{row.code}:{row.external_id}"
        account = AccountBalance(name, row.currency, row.balance, int(row.total or 0))
        for problem in consistency.account_problems(account):
            result.fail(problem)
    result.checked = len(rows)


def grants(conn: Connection, project: Project, result: CheckResult) -> None:
    sums = (
        select(ledger_entries_t.c.grant_id, func.sum(ledger_entries_t.c.amount).label("total"))
        .where(
            ledger_entries_t.c.project_id == project.id, ledger_entries_t.c.grant_id.is_not(None)
        )
        .group_by(ledger_entries_t.c.grant_id)
        .subquery()
    )
    rows = conn.execute(
        select(credit_grants_t, sums.c.total)
        .outerjoin(sums, sums.c.grant_id == credit_grants_t.c.id)
        .where(credit_grants_t.c.project_id == project.id)
    ).all()
    for row in rows:
        grant = GrantFacts(
            row.id,
            row.currency,
            row.amount_minor,
            row.remaining_minor,
            -int(row.total or 0),
            revoked=row.revoked_at is not None,
            expired=row.expired_at is not None,
        )
        for problem in consistency.grant_problems(grant):
            result.fail(problem)
    result.checked = len(rows)


def wallets(conn: Connection, project: Project, result: CheckResult) -> None:
    remaining = {
        (row.customer_id, row.currency): int(row.total or 0)
        for row in conn.execute(
            select(
                credit_grants_t.c.customer_id,
                credit_grants_t.c.currency,
                func.sum(credit_grants_t.c.remaining_minor).label("total"),
            )
            .where(credit_grants_t.c.project_id == project.id)
            .group_by(credit_grants_t.c.customer_id, credit_grants_t.c.currency)
        ).all()
    }
    rows = conn.execute(
        select(ledger_accounts_t, customers_t.c.external_id)
        .join(customers_t, customers_t.c.id == ledger_accounts_t.c.customer_id)
        .where(ledger_accounts_t.c.project_id == project.id, ledger_accounts_t.c.code == "wallet")
    ).all()
    found = [
        WalletFacts(row.customer_id, row.external_id, row.currency, -row.balance) for row in rows
    ]
    for problem in consistency.wallet_problems(found, remaining):
        result.fail(problem)
    result.checked = len(rows)


def invoices(conn: Connection, project: Project, result: CheckResult) -> None:
    posted = _receivables(conn, project)
    paid = _paid(conn, project)
    checked = 0
    for row in _invoice_rows(conn, project):
        checked += 1
        invoice = InvoiceTotals(
            row.status,
            row.currency,
            Decimal(row.subtotal),
            Decimal(row.credits_applied),
            Decimal(row.total),
            orjson.loads(row.content),
            row.amount_due_minor,
            row.amount_paid_minor,
        )
        for problem in consistency.invoice_problems(
            invoice, posted.get(row.id, {}), paid.get(row.id, 0)
        ):
            result.fail(f"invoice {row.number}: {problem}")
    result.checked = checked


def _receivables(conn: Connection, project: Project) -> dict[str, dict[str, int]]:
    """Per invoice: receivable entries by the kind of transaction that posted them."""
    rows = conn.execute(
        select(
            ledger_entries_t.c.invoice_id,
            ledger_transactions_t.c.kind,
            func.sum(ledger_entries_t.c.amount).label("total"),
        )
        .join(
            ledger_transactions_t, ledger_transactions_t.c.id == ledger_entries_t.c.transaction_id
        )
        .where(
            ledger_entries_t.c.project_id == project.id, ledger_entries_t.c.invoice_id.is_not(None)
        )
        .group_by(ledger_entries_t.c.invoice_id, ledger_transactions_t.c.kind)
    ).all()
    found: dict[str, dict[str, int]] = {}
    for row in rows:
        found.setdefault(row.invoice_id, {})[row.kind] = int(row.total)
    return found


def _paid(conn: Connection, project: Project) -> dict[str, int]:
    """Per invoice: what its payments applied, net of their refunds."""
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


SWEEPS: list[tuple[str, str, Sweep]] = [
    ("ledger.balanced", "every transaction sums to zero per currency", transactions_balance),
    ("ledger.accounts", "account balances equal the sum of their entries", account_balances),
    ("ledger.grants", "grants' remaining credit equals their entries", grants),
    ("ledger.wallets", "wallet balances equal their grants' remaining credit", wallets),
    ("ledger.invoices", "invoice totals, amounts due and paid equal their postings", invoices),
]
