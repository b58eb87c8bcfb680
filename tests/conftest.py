"""Shared fixtures: a database URL per dialect, an isolated working folder, a CLI runner.

Server databases come from NERUBA_TEST_MYSQL_URL / NERUBA_TEST_PG_URL (defaulting to the local
MariaDB and PostgreSQL). Each test session creates its own database on each server and drops
it at the end, so concurrent runs never see each other's data. Where no server answers, the
case is skipped, unless NERUBA_REQUIRE_SERVERS=1, where that is a failure.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, create_engine, delete, text, update
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from neruba_cli.cli.app import app
from neruba_cli.db import migrate
from neruba_cli.db.engine import create_db_engine, parse_database_url
from neruba_cli.db.schema import Base, Invoice

DIALECTS = ("sqlite", "mariadb", "postgresql")
SERVER_DEFAULTS = {
    "mariadb": ("NERUBA_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
    "postgresql": ("NERUBA_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
}
APPEND_ONLY = ("ledger_entries", "ledger_transactions")
REQUIRE_SERVERS = os.environ.get("NERUBA_REQUIRE_SERVERS") == "1"


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
            _unavailable(dialect, self.unavailable[dialect])
        name = f"neruba_test_{self.run_id}_{label}"
        engine = self.admin_engine(dialect)
        try:
            with engine.connect() as conn:
                suffix = " CHARACTER SET utf8mb4" if dialect == "mariadb" else ""
                conn.execute(text(f"CREATE DATABASE {name}{suffix}"))
        except Exception as exc:
            self.unavailable[dialect] = str(exc).splitlines()[0]
            _unavailable(dialect, self.unavailable[dialect])
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


def _unavailable(dialect: str, reason: str) -> None:
    message = f"{dialect} server not available: {reason}"
    if REQUIRE_SERVERS:
        pytest.fail(f"{message} (NERUBA_REQUIRE_SERVERS=1)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def servers() -> Iterator[ServerDatabases]:
    registry = ServerDatabases()
    yield registry
    registry.drop_all()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in its own folder with no Neruba settings from the outside world."""
    for variable in ("NERUBA_DATABASE_URL", "NERUBA_PROJECT", "NERUBA_CONFIG", "NERUBA_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(dialect: str, servers: ServerDatabases, tmp_path: Path) -> str:
    """A database at head with no rows, on each dialect."""
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'neruba.db'}"
        engine = create_db_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        return url
    url = servers.migrated_url(dialect)
    engine = create_db_engine(url)
    with engine.begin() as conn:
        # Corrections point at the invoice they correct: unlink them first (MariaDB checks a
        # self-referencing key row by row while it deletes).
        conn.execute(update(Invoice.__table__).values(corrects_id=None))
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
    return url


@pytest.fixture
def empty_db_url(
    dialect: str, servers: ServerDatabases, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A database with no schema at all, on each dialect."""
    if dialect == "sqlite":
        (tmp_path / "empty.db").touch()  # an empty file is an empty SQLite database
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    label = f"e{secrets.token_hex(3)}"
    url = servers.create(dialect, label)
    yield url
    servers.drop(dialect, make_url(url).database or "")
    servers.created.remove((dialect, make_url(url).database or ""))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    db_engine = create_db_engine(db_url)
    yield db_engine
    db_engine.dispose()


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return orjson.loads(self.stdout)

    def error(self) -> dict[str, Any]:
        return dict(orjson.loads(self.stderr.strip().splitlines()[-1])["error"])


class Cli:
    """Runs `neruba` in-process with a pinned terminal: no colour, 120 columns."""

    def __init__(self, db_url: str | None) -> None:
        self.db_url = db_url
        self.runner = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "120", "TERM": "dumb"})

    def __call__(
        self,
        *args: str,
        db: bool = True,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Outcome:
        argv = [*args]
        if db and self.db_url is not None:
            argv += ["--db", self.db_url]
        result = self.runner.invoke(app, argv, input=input, env=env, catch_exceptions=False)
        return Outcome(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def cli(db_url: str) -> Cli:
    return Cli(db_url)


@pytest.fixture
def bare_cli() -> Cli:
    """A runner that passes no --db: for settings resolution and sqlite defaults."""
    return Cli(None)
