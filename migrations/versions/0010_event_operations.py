"""Event operations: a unique_count event may remove its value (NULL is add)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable and without a default: every stored event stays an add, and adding the column
    # rewrites no row (instant on MariaDB and PostgreSQL).
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("operation", sa.String(length=8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("operation")
