"""Event corrections: voided and amended events keep their row, superseded versions are kept

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
ID = sa.String(length=40)
MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
EXACT_DECIMAL = sa.Numeric(38, 12).with_variant(sa.String(64), "sqlite")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OLD_INDEX = "ix_events_project_id_customer_id_meter_ts"
NEW_INDEX = "ix_events_project_id_customer_id_meter_voided_ts"


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(
            sa.Column("voided", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("version", sa.Integer(), server_default="1", nullable=False))
    # The new index first: MariaDB keeps an index for the foreign keys at every moment.
    op.create_index(NEW_INDEX, "events", ["project_id", "customer_id", "meter", "voided", "ts"])
    op.drop_index(OLD_INDEX, table_name="events")
    with op.batch_alter_table("import_batches") as batch:
        batch.add_column(sa.Column("voided", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("replaced", sa.Text(), nullable=True))
    op.create_table(
        "event_versions",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("event_id", BIG_ID, nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("customer_id", ID, nullable=False),
        sa.Column("meter", sa.String(length=64), nullable=False),
        sa.Column("ts", UTC_DATETIME, nullable=False),
        sa.Column("quantity", EXACT_DECIMAL, nullable=False),
        sa.Column(
            "properties",
            sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.Column("operation", sa.String(length=8), nullable=True),
        sa.Column("voided", sa.Boolean(), nullable=False),
        sa.Column("batch_id", ID, nullable=True),
        sa.Column("line", sa.Integer(), nullable=True),
        sa.Column("change", sa.String(length=16), nullable=False),
        sa.Column("change_batch", ID, nullable=True),
        sa.Column("changed_at", UTC_DATETIME, nullable=False),
        sa.Column("changed_by", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk_event_versions_customer_id_customers")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_event_versions_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_versions")),
        **MYSQL_TABLE,
    )
    op.create_index(
        op.f("ix_event_versions_project_id_customer_id_ts"),
        "event_versions",
        ["project_id", "customer_id", "ts"],
    )
    op.create_index(
        op.f("ix_event_versions_project_id_idempotency_key_version"),
        "event_versions",
        ["project_id", "idempotency_key", "version"],
    )


def downgrade() -> None:
    op.drop_table("event_versions")
    with op.batch_alter_table("import_batches") as batch:
        batch.drop_column("replaced")
        batch.drop_column("voided")
    op.create_index(OLD_INDEX, "events", ["project_id", "customer_id", "meter", "ts"])
    op.drop_index(NEW_INDEX, table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("version")
        batch.drop_column("voided")
