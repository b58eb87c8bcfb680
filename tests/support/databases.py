"""Databases for the tests: a throwaway database per server per test session, emptied between
tests, and the rule for a server that does not answer.

Server databases come from NERUBA_TEST_MYSQL_URL / NERUBA_TEST_PG_URL (defaulting to the local
MariaDB and PostgreSQL). Each test session creates its own database on each server and drops
it at the end, so concurrent runs never see each other's data. Where no server answers, the
case is skipped, unless NERUBA_REQUIRE_SERVERS=1, where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import pytest
from sqlalchemy import Engine, create_engine, delete, insert, text, update
from sqlalchemy.engine import make_url

from neruba_cli.db import migrate
from neruba_cli.db.engine import create_db_engine, parse_database_url
from neruba_cli.db.schema import Base, Customer, Project
from neruba_cli.db.tables import invoices_t

DIALECTS = ("sqlite", "mariadb", "postgresql")
SERVER_DEFAULTS = {
    "mariadb": ("NERUBA_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
    "postgresql": ("NERUBA_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
}
APPEND_ONLY = ("ledger_entries", "ledger_transactions")
REQUIRE_SERVERS = os.environ.get("NERUBA_REQUIRE_SERVERS") == "1"


def unavailable(dialect: str, reason: str) -> NoReturn:
    """Skip the test, or fail it where every server must answer (CI)."""
    message = f"{dialect} server not available: {reason}"
    if REQUIRE_SERVERS:
        pytest.fail(f"{message} (NERUBA_REQUIRE_SERVERS=1)")
    pytest.skip(message)


class ServerDatabases:
    """Creates throwaway databases on the configured servers and drops them at the end."""

    def __init__(self) -> None:
        self.run_id = secrets.token_hex(4)
        self.created: list[tuple[str, str]] = []
        self.unavailable: dict[str, str] = {}
        self.migrated: dict[str, str] = {}

    def admin_engine(self, dialect: str) -> Engine:
        variable, default = SERVER_DEFAULTS[dialect]
        url = parse_database_url(os.environ.get(variable) or default)
        args: dict[str, Any] = {"connect_timeout": 5}
        return create_engine(url, isolation_level="AUTOCOMMIT", connect_args=args)

    def create(self, dialect: str, label: str) -> str:
        """A new empty database on the server; its URL."""
        if dialect in self.unavailable:
            unavailable(dialect, self.unavailable[dialect])
        name = f"neruba_test_{self.run_id}_{label}"
        engine = self.admin_engine(dialect)
        try:
            with engine.connect() as conn:
                suffix = " CHARACTER SET utf8mb4" if dialect == "mariadb" else ""
                conn.execute(text(f"CREATE DATABASE {name}{suffix}"))
        except Exception as exc:
            self.unavailable[dialect] = str(exc).splitlines()[0]
            unavailable(dialect, self.unavailable[dialect])
        finally:
            engine.dispose()
        self.created.append((dialect, name))
        return (
            make_url(str(engine.url.render_as_string(hide_password=False)))
            .set(database=name)
            .render_as_string(hide_password=False)
        )

    def migrated_url(self, dialect: str) -> str:
        """One database per dialect per session, at head; tests empty its tables between them."""
        if dialect not in self.migrated:
            url = self.create(dialect, "main")
            engine = create_db_engine(url)
            migrate.upgrade(engine)
            engine.dispose()
            self.migrated[dialect] = url
        return self.migrated[dialect]

    def drop(self, dialect: str, name: str) -> None:
        engine = self.admin_engine(dialect)
        force = " WITH (FORCE)" if dialect == "postgresql" else ""
        try:
            with engine.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
        finally:
            engine.dispose()

    def drop_all(self) -> None:
        for dialect, name in self.created:
            self.drop(dialect, name)


def empty_tables(url: str, dialect: str) -> None:
    """Every row gone from a server database at head, the append-only ledger included."""
    engine = create_db_engine(url)
    with engine.begin() as conn:
        # Corrections point at the invoice they correct: unlink them first (MariaDB checks a
        # self-referencing key row by row while it deletes).
        conn.execute(update(invoices_t).values(corrects_id=None))
        # The ledger refuses DELETE (its triggers); TRUNCATE fires no row triggers.
        if dialect == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(APPEND_ONLY)}"))
        else:
            conn.execute(text("SET FOREIGN_KEY_CHECKS = 0"))
            for name in APPEND_ONLY:
                conn.execute(text(f"TRUNCATE TABLE {name}"))
            conn.execute(text("SET FOREIGN_KEY_CHECKS = 1"))
        for table in reversed(Base.metadata.sorted_tables):
            if table.name not in APPEND_ONLY:
                conn.execute(delete(table))
    engine.dispose()


def migrated_sqlite(path: Path) -> str:
    """A SQLite database file at head, its write-ahead log folded in; its URL."""
    url = f"sqlite:///{path}"
    engine = create_db_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return url


def copy_of(template: Path, path: Path) -> str:
    """A database at head for one test: a copy of the migrated template file, much cheaper
    than running every migration again; its URL."""
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


# Tests that do not depend on the database: run on SQLite only, not once per dialect.
sqlite_only = pytest.mark.parametrize("dialect", ["sqlite"])


def seed_project(engine: Engine, project_id: str, slug: str, customers: dict[str, str]) -> None:
    """A USD project in UTC and its customers (id → external id), written directly: for tests
    of the database layer that need rows to point at, without the CLI."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(Project).values(
                id=project_id,
                slug=slug,
                name=slug.title(),
                currency="USD",
                timezone="UTC",
                rounding="half_even",
                created_at=now,
            )
        )
        conn.execute(
            insert(Customer),
            [
                {
                    "id": ident,
                    "project_id": project_id,
                    "external_id": external,
                    "currency": "USD",
                    "timezone": "UTC",
                    "created_at": now,
                    "updated_at": now,
                }
                for ident, external in customers.items()
            ],
        )
