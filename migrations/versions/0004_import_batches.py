"""import batches (the receipts of usage imports) and one-off charges

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
ID = sa.String(length=40)
MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
EXACT_DECIMAL = sa.Numeric(38, 12).with_variant(sa.String(64), "sqlite")


def upgrade() -> None:
    op.create_table(
        "import_batches",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("source", sa.String(length=1000), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("duplicates", sa.Integer(), nullable=False),
        sa.Column("conflicts", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("first_event_at", UTC_DATETIME, nullable=True),
        sa.Column("last_event_at", UTC_DATETIME, nullable=True),
        sa.Column("periods", sa.Text(), nullable=False),
        sa.Column("rejects_path", sa.String(length=1000), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=False),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_import_batches_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_import_batches")),
        **MYSQL_TABLE,
    )
    op.create_index(
        op.f("ix_import_batches_project_id_started_at"),
        "import_batches",
        ["project_id", "started_at"],
    )
    op.create_index(op.f("ix_import_batches_sha256"), "import_batches", ["sha256"])
    op.create_table(
        "charges",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("customer_id", ID, nullable=False),
        sa.Column("amount", EXACT_DECIMAL, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.Column("payload_hash", sa.String(length=64), nullable=False),
        sa.Column("batch_id", ID, nullable=True),
        sa.Column("line", sa.Integer(), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_charges_customer_id_customers")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_charges_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_charges")),
        sa.UniqueConstraint(
            "project_id", "idempotency_key", name=op.f("uq_charges_project_id_idempotency_key")
        ),
        **MYSQL_TABLE,
    )
    op.create_index(
        op.f("ix_charges_project_id_customer_id_at"), "charges", ["project_id", "customer_id", "at"]
    )


def downgrade() -> None:
    op.drop_table("charges")
    op.drop_table("import_batches")
