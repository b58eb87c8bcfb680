"""The fixtures every test can ask for, registered by the root conftest (`pytest_plugins`).

- `isolated` (automatic): each test in its own folder, with no Neruba settings from outside;
- `dialect`, `db_url`, `engine`: a database at head with no rows, once per dialect;
- `empty_db_url`: a database with no schema at all, once per dialect;
- `cli`: `neruba` in-process against `db_url`; `bare_cli`: the same without `--db`;
- `sqlite_cli`: a migrated SQLite database only, for what does not depend on the dialect;
- `stripe`: the fake Stripe server, with `neruba` pointed at it;
- `serve`: starts `neruba serve` processes (tests/support/api.py), stopped when the test ends.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from neruba_cli.db.engine import create_db_engine
from tests.fakes.stripe import FakeStripe
from tests.support import fake_stripe
from tests.support.api import Servers
from tests.support.cli import Cli
from tests.support.databases import (
    DIALECTS,
    ServerDatabases,
    copy_of,
    empty_tables,
    migrated_sqlite,
)


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


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database at head, migrated once per test process; tests get copies."""
    path = tmp_path_factory.mktemp("template") / "neruba.db"
    migrated_sqlite(path)
    return path


@pytest.fixture
def db_url(dialect: str, servers: ServerDatabases, tmp_path: Path, sqlite_template: Path) -> str:
    """A database at head with no rows, on each dialect."""
    if dialect == "sqlite":
        return copy_of(sqlite_template, tmp_path / "neruba.db")
    url = servers.migrated_url(dialect)
    empty_tables(url, dialect)
    return url


@pytest.fixture
def empty_db_url(dialect: str, servers: ServerDatabases, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all, on each dialect."""
    if dialect == "sqlite":
        (tmp_path / "empty.db").touch()  # an empty file is an empty SQLite database
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    url = servers.create(dialect, f"e{secrets.token_hex(3)}")
    yield url
    name = make_url(url).database or ""
    servers.drop(dialect, name)
    servers.created.remove((dialect, name))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    db_engine = create_db_engine(db_url)
    yield db_engine
    db_engine.dispose()


@pytest.fixture
def cli(db_url: str) -> Cli:
    return Cli(db_url)


@pytest.fixture
def bare_cli() -> Cli:
    """A runner that passes no --db: for settings resolution and sqlite defaults."""
    return Cli(None)


@pytest.fixture
def sqlite_cli(tmp_path: Path, sqlite_template: Path) -> Cli:
    """A migrated SQLite database only: for what does not depend on the dialect."""
    return Cli(copy_of(sqlite_template, tmp_path / "neruba.db"))


@pytest.fixture
def stripe(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStripe]:
    """The fake Stripe server, with `neruba` pointed at it."""
    yield from fake_stripe.serve(monkeypatch)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Servers]:
    """`serve(db_url, *args)` starts `neruba serve` on a free port and waits until it answers;
    every server it started is stopped when the test ends."""
    servers = Servers(tmp_path)
    yield servers
    for server in servers.started:
        server.stop()
