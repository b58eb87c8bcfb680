"""Events without foreign keys: the events table is written in bulk and read by range, and its
two foreign keys cost more than anything else in storing an event

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

Each row of a COPY or a multi-row INSERT into `events` had the database look its project and
customer up (PostgreSQL: a trigger per row, about 40% of the server's time in a bulk import;
MariaDB: also an index of its own on `customer_id`, kept in random order, that no query reads).
What they guarded is kept without them: ingest writes only customers it resolved in the
event's project, projects and customers are never deleted, and `neruba check` sweeps every
event for a customer of its own project (`events.customers`).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FOREIGN_KEYS = (
    ("fk_events_project_id_projects", "project_id", "projects"),
    ("fk_events_customer_id_customers", "customer_id", "customers"),
)
INNODB_INDEX = "fk_events_customer_id_customers"  # the index InnoDB made for the foreign key


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        for name, _, _ in FOREIGN_KEYS:
            batch.drop_constraint(name, type_="foreignkey")
    bind = op.get_bind()
    if bind.dialect.name in ("mysql", "mariadb"):
        indexes = {index["name"] for index in sa.inspect(bind).get_indexes("events")}
        if INNODB_INDEX in indexes:
            op.drop_index(INNODB_INDEX, table_name="events")


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        for name, column, table in FOREIGN_KEYS:
            batch.create_foreign_key(name, table, [column], ["id"])
