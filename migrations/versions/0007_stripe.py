"""Stripe link: pushed invoices, the mirror of Stripe objects, pull cursors, webhook events

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
ID = sa.String(length=40)
STRIPE_ID = sa.String(length=255)
MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}")
    )


def upgrade() -> None:
    op.create_table(
        "stripe_links",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("invoice_id", ID, nullable=False),
        sa.Column("stripe_object", sa.String(length=32), nullable=False),
        sa.Column("stripe_id", STRIPE_ID, nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("pushed_at", UTC_DATETIME, nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        _fk("stripe_links", "invoice_id", "invoices"),
        _fk("stripe_links", "project_id", "projects"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_links")),
        sa.UniqueConstraint(
            "project_id", "invoice_id", name=op.f("uq_stripe_links_project_id_invoice_id")
        ),
        **MYSQL_TABLE,
    )
    op.create_table(
        "stripe_objects",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("stripe_id", STRIPE_ID, nullable=False),
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column("stripe_customer", STRIPE_ID, nullable=True),
        sa.Column("stripe_invoice", STRIPE_ID, nullable=True),
        sa.Column("payment_intent", STRIPE_ID, nullable=True),
        sa.Column("charge", STRIPE_ID, nullable=True),
        sa.Column("neruba_project", sa.String(length=64), nullable=True),
        sa.Column("neruba_invoice", sa.String(length=64), nullable=True),
        sa.Column("neruba_period", sa.String(length=16), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("amount_paid", sa.BigInteger(), nullable=True),
        sa.Column("amount_refunded", sa.BigInteger(), nullable=True),
        sa.Column("stripe_created", UTC_DATETIME, nullable=True),
        sa.Column("deleted", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("data", LONG_TEXT, nullable=False),
        sa.Column("sweep", sa.String(length=40), nullable=True),
        sa.Column("observed_at", UTC_DATETIME, nullable=False),
        _fk("stripe_objects", "project_id", "projects"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_objects")),
        sa.UniqueConstraint(
            "project_id", "stripe_id", name=op.f("uq_stripe_objects_project_id_stripe_id")
        ),
        **MYSQL_TABLE,
    )
    op.create_index(
        op.f("ix_stripe_objects_project_id_object_neruba_period"),
        "stripe_objects",
        ["project_id", "object", "neruba_period"],
    )
    op.create_index(
        op.f("ix_stripe_objects_project_id_neruba_invoice"),
        "stripe_objects",
        ["project_id", "neruba_invoice"],
    )
    op.create_index(
        op.f("ix_stripe_objects_project_id_payment_intent"),
        "stripe_objects",
        ["project_id", "payment_intent"],
    )
    op.create_table(
        "stripe_cursors",
        sa.Column("project_id", ID, nullable=False),
        sa.Column("object", sa.String(length=32), nullable=False),
        sa.Column("sweep", sa.String(length=40), nullable=True),
        sa.Column("since", UTC_DATETIME, nullable=True),
        sa.Column("cursor", STRIPE_ID, nullable=True),
        sa.Column("seen", sa.BigInteger(), nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=True),
        sa.Column("completed_at", UTC_DATETIME, nullable=True),
        _fk("stripe_cursors", "project_id", "projects"),
        sa.PrimaryKeyConstraint("project_id", "object", name=op.f("pk_stripe_cursors")),
        **MYSQL_TABLE,
    )
    op.create_table(
        "stripe_webhook_events",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("event_id", STRIPE_ID, nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("payload", LONG_TEXT, nullable=False),
        sa.Column("stripe_created", UTC_DATETIME, nullable=True),
        sa.Column("received_at", UTC_DATETIME, nullable=False),
        sa.Column("processed_at", UTC_DATETIME, nullable=True),
        _fk("stripe_webhook_events", "project_id", "projects"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_webhook_events")),
        sa.UniqueConstraint(
            "project_id", "event_id", name=op.f("uq_stripe_webhook_events_project_id_event_id")
        ),
        **MYSQL_TABLE,
    )
    op.create_index(
        op.f("ix_stripe_webhook_events_project_id_status"),
        "stripe_webhook_events",
        ["project_id", "status"],
    )


def downgrade() -> None:
    op.drop_table("stripe_webhook_events")
    op.drop_table("stripe_cursors")
    op.drop_table("stripe_objects")
    op.drop_table("stripe_links")
