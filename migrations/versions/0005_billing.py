"""billing runs, invoices (with their lines and revisions), invoice numbering, late-event policy

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
ID = sa.String(length=40)
MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
EXACT_DECIMAL = sa.Numeric(38, 12).with_variant(sa.String(64), "sqlite")
LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(
            sa.Column("late_events", sa.String(length=16), server_default="correct", nullable=False)
        )
    op.create_table(
        "billing_runs",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("lock_token", sa.BigInteger(), nullable=False),
        sa.Column("as_of", UTC_DATETIME, nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=False),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
        sa.Column("fingerprint", sa.String(length=71), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_billing_runs_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_runs")),
        **MYSQL_TABLE,
    )
    op.create_index(
        op.f("ix_billing_runs_project_id_period_started_at"),
        "billing_runs",
        ["project_id", "period", "started_at"],
    )
    op.create_table(
        "invoice_sequences",
        sa.Column("project_id", ID, nullable=False),
        sa.Column("last_number", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_invoice_sequences_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_invoice_sequences")),
        **MYSQL_TABLE,
    )
    op.create_table(
        "invoices",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("number", sa.String(length=64), nullable=False),
        sa.Column("customer_id", ID, nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("period_start", UTC_DATETIME, nullable=False),
        sa.Column("period_end", UTC_DATETIME, nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("subtotal", EXACT_DECIMAL, nullable=False),
        sa.Column("credits_applied", EXACT_DECIMAL, nullable=False),
        sa.Column("total", EXACT_DECIMAL, nullable=False),
        sa.Column("corrects_id", ID, nullable=True),
        sa.Column("run_id", ID, nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=71), nullable=False),
        sa.Column("setup_fingerprint", sa.String(length=71), nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.Column("content", LONG_TEXT, nullable=False),
        sa.Column("inputs", LONG_TEXT, nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.Column("finalized_at", UTC_DATETIME, nullable=True),
        sa.Column("voided_at", UTC_DATETIME, nullable=True),
        sa.Column("void_reason", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["corrects_id"], ["invoices.id"], name=op.f("fk_invoices_corrects_id_invoices")
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_invoices_customer_id_customers")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_invoices_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoices")),
        sa.UniqueConstraint(
            "project_id",
            "customer_id",
            "period_start",
            "period_end",
            "revision",
            name="uq_invoices_customer_period_revision",
        ),
        sa.UniqueConstraint("project_id", "number", name=op.f("uq_invoices_project_id_number")),
        **MYSQL_TABLE,
    )
    op.create_index(
        op.f("ix_invoices_project_id_period_status"), "invoices", ["project_id", "period", "status"]
    )
    op.create_table(
        "invoice_lines",
        sa.Column("id", SERIAL, autoincrement=True, nullable=False),
        sa.Column("invoice_id", ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("meter", sa.String(length=64), nullable=True),
        sa.Column("quantity", EXACT_DECIMAL, nullable=True),
        sa.Column("amount", EXACT_DECIMAL, nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_invoice_lines_invoice_id_invoices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice_lines")),
        sa.UniqueConstraint(
            "invoice_id", "position", name=op.f("uq_invoice_lines_invoice_id_position")
        ),
        **MYSQL_TABLE,
    )
    op.create_table(
        "invoice_revisions",
        sa.Column("id", SERIAL, autoincrement=True, nullable=False),
        sa.Column("invoice_id", ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("run_id", ID, nullable=True),
        sa.Column("fingerprint", sa.String(length=71), nullable=False),
        sa.Column("content", LONG_TEXT, nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_invoice_revisions_invoice_id_invoices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice_revisions")),
        sa.UniqueConstraint(
            "invoice_id", "version", name=op.f("uq_invoice_revisions_invoice_id_version")
        ),
        **MYSQL_TABLE,
    )
    op.create_index(op.f("ix_invoice_revisions_run_id"), "invoice_revisions", ["run_id"])


def downgrade() -> None:
    op.drop_table("invoice_revisions")
    op.drop_table("invoice_lines")
    op.drop_table("invoices")
    op.drop_table("invoice_sequences")
    op.drop_table("billing_runs")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("late_events")
