"""Event change feed: each event names the latest correction that changed it

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
INDEX = "ix_events_correction"


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("correction", BIG_ID, nullable=True))
    # Events corrected before this revision: the latest version their corrections kept.
    op.execute(
        "UPDATE events SET correction = (SELECT MAX(event_versions.id) FROM event_versions"
        " WHERE event_versions.event_id = events.id) WHERE version > 1"
    )
    op.create_index(INDEX, "events", ["correction"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("correction")
