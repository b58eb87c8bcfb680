"""Event line digests: a JSON line an import repeats byte for byte is a duplicate without
being parsed and checked again

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

Events stored before this revision have none: a line repeating one of them is checked as
before (and still counted a duplicate).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("line_digest", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("line_digest")
