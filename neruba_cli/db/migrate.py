"""Alembic, run from code: the scripts ship inside the package, so an installed wheel migrates."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from neruba_cli.domain.errors import DatabaseError

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic (with Mako and Pygments) is imported only to migrate: checking that a database is at
# head, which every command does, reads the version table and the scripts' revision lines.
VERSION_TABLE = "alembic_version"
_REVISION_LINE = re.compile(r"^(revision|down_revision)\b[^=\n]*=(.*)$", re.MULTILINE)
_QUOTED = re.compile(r"[\"']([^\"']+)[\"']")


def migrations_path() -> Path:
    return Path(str(files("neruba_cli.migrations")))


def alembic_config(connection: Connection | None = None) -> Config:
    """A Config built in code; the connection is shared through `attributes`, never a URL."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration: the one revision no script names as its `down_revision`. Read
    from the scripts' own lines, as Alembic reads them (tests/test_migrations.py checks that
    both agree)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (migrations_path() / "versions").glob("*.py"):
        for name, value in _REVISION_LINE.findall(script.read_text(encoding="utf-8")):
            (revisions if name == "revision" else parents).update(_QUOTED.findall(value))
    heads = sorted(revisions - parents)
    if len(heads) != 1:
        raise DatabaseError(f"migrations have {len(heads)} heads; expected exactly one")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    """The revision recorded in the database, None when it has no Neruba schema."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return None
        rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()
        versions = list(rows)
    if len(versions) > 1:
        raise DatabaseError(f"the database records {len(versions)} schema heads: {versions}")
    return versions[0] if versions else None


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    with engine.connect() as connection, _sqlite_batch_mode(connection):
        command.upgrade(alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

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
