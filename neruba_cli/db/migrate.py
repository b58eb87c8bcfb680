"""Alembic, run from code: the scripts ship inside the package, so an installed wheel migrates."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from neruba_cli.domain.errors import DatabaseError


def migrations_path() -> Path:
    return Path(str(files("neruba_cli.migrations")))


def alembic_config(connection: Connection | None = None) -> Config:
    """A Config built in code; the connection is shared through `attributes`, never a URL."""
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise DatabaseError(f"migrations have {len(heads)} heads; expected exactly one")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.connect() as connection, _sqlite_batch_mode(connection):
        command.upgrade(alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str) -> None:
    with engine.connect() as connection, _sqlite_batch_mode(connection):
        command.downgrade(alembic_config(connection), revision)


@contextmanager
def _sqlite_batch_mode(connection: Connection) -> Iterator[None]:
    """SQLite changes a column by copying the table into a new one and dropping the old, which
    its foreign keys would refuse once other tables point at rows: Alembic's batch mode wants
    them off meanwhile (a pragma that only takes effect outside a transaction). Afterwards
    `foreign_key_check` must find nothing, or the migration is reported as failed."""
    if connection.dialect.name != "sqlite":
        yield
        return
    raw = connection.connection.dbapi_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
        broken = raw.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise DatabaseError(f"the migration left rows that break foreign keys: {broken[:5]}")
    finally:
        raw.execute("PRAGMA foreign_keys=ON")


def ensure_at_head(engine: Engine) -> None:
    """Refuse to work on a database whose schema is not the one this code was written for."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise DatabaseError(
            "the database has no Neruba schema yet", hint="run `neruba init` or `neruba db upgrade`"
        )
    raise DatabaseError(
        f"the database schema is at {current}, this neruba needs {head}",
        hint="run `neruba db upgrade`",
    )
