"""ledger (accounts, transactions, entries), credit grants, payments and refunds; invoice
amounts due and paid; the project's credit-return policy

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from neruba_cli.db.ids import new_id
from neruba_cli.domain.ledger import (
    AccountRef,
    InvoiceFacts,
    Posting,
    credit_note_settled,
    invoice_finalized,
    settle_credit_note,
)
from neruba_cli.domain.money import to_minor_units

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
ID = sa.String(length=40)
MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
APPEND_ONLY = ("ledger_entries", "ledger_transactions")
MESSAGE = "the ledger is append-only: post a reversing transaction instead"


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}")
    )


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(
            sa.Column(
                "credit_returns", sa.String(length=16), server_default="restore", nullable=False
            )
        )
    with op.batch_alter_table("invoices") as batch:
        batch.add_column(
            sa.Column("amount_due_minor", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("amount_paid_minor", sa.BigInteger(), server_default="0", nullable=False)
        )
    op.create_table(
        "ledger_accounts",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("holder", ID, nullable=False),
        sa.Column("customer_id", ID, nullable=True),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        _fk("ledger_accounts", "customer_id", "customers"),
        _fk("ledger_accounts", "project_id", "projects"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_accounts")),
        sa.UniqueConstraint(
            "project_id",
            "holder",
            "code",
            "currency",
            name=op.f("uq_ledger_accounts_project_id_holder_code_currency"),
        ),
        **MYSQL_TABLE,
    )
    op.create_table(
        "ledger_transactions",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("reference", sa.String(length=64), nullable=False),
        sa.Column("content_hash", sa.String(length=71), nullable=False),
        sa.Column("memo", sa.String(length=500), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("effective_at", UTC_DATETIME, nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        _fk("ledger_transactions", "project_id", "projects"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_transactions")),
        sa.UniqueConstraint(
            "project_id",
            "idempotency_key",
            name=op.f("uq_ledger_transactions_project_id_idempotency_key"),
        ),
        **MYSQL_TABLE,
    )
    op.create_index(
        op.f("ix_ledger_transactions_project_id_effective_at"),
        "ledger_transactions",
        ["project_id", "effective_at"],
    )
    op.create_index(
        op.f("ix_ledger_transactions_project_id_reference"),
        "ledger_transactions",
        ["project_id", "reference"],
    )
    op.create_table(
        "credit_grants",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("customer_id", ID, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("remaining_minor", sa.BigInteger(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("expires_at", UTC_DATETIME, nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_ref", sa.String(length=64), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("args_hash", sa.String(length=71), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("revoked_at", UTC_DATETIME, nullable=True),
        sa.Column("revoke_reason", sa.String(length=500), nullable=True),
        sa.Column("expired_at", UTC_DATETIME, nullable=True),
        _fk("credit_grants", "customer_id", "customers"),
        _fk("credit_grants", "project_id", "projects"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_grants")),
        sa.UniqueConstraint(
            "project_id",
            "idempotency_key",
            name=op.f("uq_credit_grants_project_id_idempotency_key"),
        ),
        **MYSQL_TABLE,
    )
    op.create_index(
        op.f("ix_credit_grants_project_id_customer_id"),
        "credit_grants",
        ["project_id", "customer_id"],
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", SERIAL, autoincrement=True, nullable=False),
        sa.Column("transaction_id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("account_id", ID, nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("grant_id", ID, nullable=True),
        sa.Column("invoice_id", ID, nullable=True),
        sa.Column("effective_at", UTC_DATETIME, nullable=False),
        _fk("ledger_entries", "account_id", "ledger_accounts"),
        _fk("ledger_entries", "grant_id", "credit_grants"),
        _fk("ledger_entries", "invoice_id", "invoices"),
        _fk("ledger_entries", "project_id", "projects"),
        _fk("ledger_entries", "transaction_id", "ledger_transactions"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
        **MYSQL_TABLE,
    )
    op.create_index(
        op.f("ix_ledger_entries_account_id_effective_at"),
        "ledger_entries",
        ["account_id", "effective_at"],
    )
    op.create_index(op.f("ix_ledger_entries_grant_id"), "ledger_entries", ["grant_id"])
    op.create_index(op.f("ix_ledger_entries_invoice_id"), "ledger_entries", ["invoice_id"])
    op.create_index(op.f("ix_ledger_entries_transaction_id"), "ledger_entries", ["transaction_id"])
    op.create_table(
        "payments",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("invoice_id", ID, nullable=False),
        sa.Column("customer_id", ID, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("applied_minor", sa.BigInteger(), nullable=False),
        sa.Column("refunded_minor", sa.BigInteger(), nullable=False),
        sa.Column("overpayment_grant_id", ID, nullable=True),
        sa.Column("reference", sa.String(length=255), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("args_hash", sa.String(length=71), nullable=False),
        sa.Column("received_at", UTC_DATETIME, nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        _fk("payments", "customer_id", "customers"),
        _fk("payments", "invoice_id", "invoices"),
        _fk("payments", "project_id", "projects"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint(
            "project_id", "idempotency_key", name=op.f("uq_payments_project_id_idempotency_key")
        ),
        **MYSQL_TABLE,
    )
    op.create_index(op.f("ix_payments_invoice_id"), "payments", ["invoice_id"])
    op.create_table(
        "refunds",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("payment_id", ID, nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("args_hash", sa.String(length=71), nullable=False),
        sa.Column("refunded_at", UTC_DATETIME, nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        _fk("refunds", "payment_id", "payments"),
        _fk("refunds", "project_id", "projects"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
        sa.UniqueConstraint(
            "project_id", "idempotency_key", name=op.f("uq_refunds_project_id_idempotency_key")
        ),
        **MYSQL_TABLE,
    )
    op.create_index(op.f("ix_refunds_payment_id"), "refunds", ["payment_id"])
    _post_finalized_invoices()
    for table in APPEND_ONLY:
        _create_append_only_triggers(table)


def _post_finalized_invoices() -> None:
    """Invoices finalized before the ledger existed get their `invoice_finalized` posting
    (effective when they were finalized) and their amount due, as finalization posts them
    now; a credit note among them is settled against the invoice it corrects (what that still
    owes, the rest as paid credit in the wallet, as under the `keep` policy). Payments, voids
    and `neruba check` then treat them like any other."""
    bind = op.get_bind()
    invoices = sa.table(
        "invoices",
        *(sa.column(name) for name in ("id", "project_id", "number", "customer_id", "currency")),
        *(sa.column(name) for name in ("status", "content", "corrects_id", "amount_due_minor")),
        sa.column("finalized_at", sa.DateTime()),
    )
    rows = bind.execute(
        sa.select(invoices)
        .where(invoices.c.status.in_(("finalized", "paid")))
        .order_by(invoices.c.number)
    ).all()
    if not rows:
        return
    book = _Book(datetime.now(UTC).replace(tzinfo=None))  # the columns hold naive UTC
    facts: dict[str, InvoiceFacts] = {}
    due: dict[str, int] = {}
    for row in rows:
        revenue: dict[str, int] = {}
        for line in orjson.loads(row.content)["lines"]:
            units = to_minor_units(Decimal(line["amount"]), row.currency)
            revenue[line["kind"]] = revenue.get(line["kind"], 0) + units
        invoice = facts[row.id] = InvoiceFacts(
            row.id, row.number, row.customer_id, row.currency, revenue
        )
        effective = row.finalized_at or book.now
        book.post(row.project_id, invoice_finalized(invoice), effective)
        due[row.id] = invoice.subtotal
        if invoice.subtotal >= 0:
            continue
        corrected = facts.get(row.corrects_id) if row.corrects_id else None
        outstanding = max(due.get(corrected.id, 0), 0) if corrected else 0
        settlement = settle_credit_note(
            -invoice.subtotal, outstanding=outstanding, returnable=(), policy="keep"
        )
        grant_id = None
        if settlement.to_wallet:
            grant_id = book.grant(row, settlement.to_wallet)
        posting = credit_note_settled(invoice, corrected, settlement, wallet_grant=grant_id)
        book.post(row.project_id, posting, effective)
        due[row.id] = 0
        if corrected is not None:
            due[corrected.id] -= settlement.to_invoice
    for invoice_id, amount in due.items():
        values: dict[str, Any] = {"amount_due_minor": amount}
        if amount <= 0 < facts[invoice_id].subtotal:
            values["status"] = "paid"  # a credit note settled all it owed
        bind.execute(sa.update(invoices).where(invoices.c.id == invoice_id).values(**values))
    book.write(bind)


class _Book:
    """The rows the data migration writes, with the running balances they imply."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.accounts: dict[tuple[str, AccountRef], str] = {}
        self.balances: dict[str, int] = {}
        self.transactions: list[dict[str, object]] = []
        self.entries: list[dict[str, object]] = []
        self.grants: list[dict[str, object]] = []

    def post(self, project_id: str, posting: Posting | None, effective: datetime) -> None:
        if posting is None:
            return
        txn_id = new_id("txn")
        self.transactions.append(
            {
                "id": txn_id,
                "project_id": project_id,
                "idempotency_key": posting.key,
                "kind": posting.kind,
                "reference": posting.reference[:64],
                "content_hash": posting.content_hash,
                "memo": "posted by migration 0006",
                "actor": "migration 0006",
                "effective_at": effective,
                "created_at": self.now,
            }
        )
        for entry in posting.entries:
            slot = (project_id, entry.account)
            account_id = self.accounts.setdefault(slot, new_id("acc"))
            self.balances[account_id] = self.balances.get(account_id, 0) + entry.amount
            self.entries.append(
                {
                    "transaction_id": txn_id,
                    "project_id": project_id,
                    "account_id": account_id,
                    "amount": entry.amount,
                    "grant_id": entry.grant,
                    "invoice_id": entry.invoice,
                    "effective_at": effective,
                }
            )

    def grant(self, note: Any, amount: int) -> str:
        grant_id = new_id("grt")
        self.grants.append(
            {
                "id": grant_id,
                "project_id": note.project_id,
                "customer_id": note.customer_id,
                "currency": note.currency,
                "amount_minor": amount,
                "remaining_minor": amount,
                "priority": 1,
                "category": "paid",
                "expires_at": None,
                "reason": f"credit note {note.number}",
                "source": "credit_note",
                "source_ref": note.number,
                "idempotency_key": None,
                "args_hash": "",
                "created_at": self.now,
            }
        )
        return grant_id

    def write(self, bind: Any) -> None:
        accounts = [
            {
                "id": account_id,
                "project_id": project_id,
                "code": ref.code,
                "currency": ref.currency,
                "holder": ref.customer or "",
                "customer_id": ref.customer,
                "balance": self.balances.get(account_id, 0),
                "version": 0,
                "created_at": self.now,
            }
            for (project_id, ref), account_id in self.accounts.items()
        ]
        metadata = sa.MetaData()
        for name, rows in (
            ("ledger_accounts", accounts),
            ("credit_grants", self.grants),
            ("ledger_transactions", self.transactions),
            ("ledger_entries", self.entries),
        ):
            table = sa.Table(name, metadata, autoload_with=bind)
            for start in range(0, len(rows), 1000):
                bind.execute(sa.insert(table), rows[start : start + 1000])


def _create_append_only_triggers(table: str) -> None:
    """UPDATE and DELETE on the ledger refused by the database itself. SQLite, MariaDB/MySQL
    and PostgreSQL have triggers; an engine without them keeps the rule in code only."""
    bind = op.get_bind()
    dialect = bind.dialect.name
    if dialect == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
            )
    elif dialect in ("mysql", "mariadb"):
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                f"FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{MESSAGE}'"
            )
    elif dialect == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION neruba_ledger_append_only() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{MESSAGE}'; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE PROCEDURE neruba_ledger_append_only()"
        )


def downgrade() -> None:
    op.drop_table("refunds")
    op.drop_table("payments")
    op.drop_table("ledger_entries")  # its triggers go with it
    op.drop_table("credit_grants")
    op.drop_table("ledger_transactions")
    op.drop_table("ledger_accounts")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS neruba_ledger_append_only()")
    with op.batch_alter_table("invoices") as batch:
        batch.drop_column("amount_paid_minor")
        batch.drop_column("amount_due_minor")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("credit_returns")
