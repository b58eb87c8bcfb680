"""Alembic environment: runs on the connection Neruba hands over in `config.attributes`."""

from __future__ import annotations

from alembic import context

from neruba_cli.db.engine import create_db_engine
from neruba_cli.db.schema import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # type: ignore[attr-defined]
        transaction_per_migration=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set sqlalchemy.url or run migrations through `neruba db upgrade`")
    with create_db_engine(url).connect() as own_connection:
        _run(own_connection)
