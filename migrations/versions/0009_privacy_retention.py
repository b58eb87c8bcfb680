"""Privacy and retention: forgotten customers and the record of retention runs

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
ID = sa.String(length=40)
MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("forgotten_at", UTC_DATETIME, nullable=True))
        batch.add_column(sa.Column("forgotten_by", sa.String(length=200), nullable=True))
    op.create_table(
        "retention_runs",
        sa.Column("id", ID, nullable=False),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("older_than", sa.String(length=16), nullable=False),
        sa.Column("as_of", UTC_DATETIME, nullable=False),
        sa.Column("periods", sa.Text(), nullable=False),
        sa.Column("kept_properties", sa.Text(), nullable=False),
        sa.Column("events_touched", sa.BigInteger(), nullable=False),
        sa.Column("properties_dropped", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=False),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_retention_runs_project_id_projects"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retention_runs")),
        **MYSQL_TABLE,
    )
    op.create_index(
        op.f("ix_retention_runs_project_id_started_at"),
        "retention_runs",
        ["project_id", "started_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_table("retention_runs")
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("forgotten_by")
        batch.drop_column("forgotten_at")
