"""Engines configured per dialect so that every database behaves the way the core assumes.

- SQLite: WAL, foreign keys on, a busy timeout, and real BEGIN statements (pysqlite's legacy
  transaction handling would otherwise run SELECTs outside the transaction).
- MariaDB/MySQL: utf8mb4, strict SQL mode, READ COMMITTED, UTC session time zone.
- PostgreSQL: UTC session time zone, READ COMMITTED (its default).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from neruba_cli.db import sqlite_functions
from neruba_cli.domain.errors import DatabaseError, InvalidInput

CONNECT_TIMEOUT_SECONDS = 5
WRITE_OPTION = "neruba_write"
SQLITE_BUSY_TIMEOUT_MS = 30_000

_MYSQL_SQL_MODE = (
    "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
    "NO_ENGINE_SUBSTITUTION"
)

_PASSWORD_IN_URL = re.compile(r"://([^:/@]*):[^@]*@")

_DRIVERS = {
    "sqlite": "sqlite",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
}


def parse_database_url(url: str) -> URL:
    """Accept the short forms operators type (mysql://, postgres://) and pick our drivers."""
    examples = "e.g. sqlite:///./neruba.db, mysql://user@host/db, postgresql://user@host/db"
    try:
        parsed = make_url(url)
        _ = parsed.port  # a non-numeric port only fails when read
    except (ArgumentError, ValueError):
        raise InvalidInput(f"database URL {redact(url)!r} is not valid", hint=examples) from None
    backend = parsed.get_backend_name()
    if backend not in _DRIVERS:
        raise InvalidInput(
            f"database URL uses {backend!r}, which Neruba does not support",
            hint="use sqlite, mysql/mariadb or postgresql",
        )
    if backend != "sqlite" and not parsed.database:
        raise InvalidInput(f"database URL {redact(url)!r} names no database", hint=examples)
    if "+" not in parsed.drivername:
        parsed = parsed.set(drivername=_DRIVERS[backend])
    return parsed


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL (None for other databases and in-memory ones)."""
    parsed = parse_database_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):
        return None
    return Path(database).expanduser()


def anchored_sqlite_url(url: str, folder: Path) -> str:
    """A SQLite URL whose file path is relative, made absolute against `folder`; any other
    URL (a server, an absolute or in-memory SQLite database, an unparsable one) unchanged.

    A relative path is otherwise read against the working directory, which differs between
    the operator's shell and cron."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return url
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return url
    if database.startswith("file:") or Path(database).expanduser().is_absolute():
        return url
    absolute = os.path.normpath(folder.absolute() / database)
    return parsed.set(database=absolute).render_as_string(hide_password=False)


def require_sqlite_file(url: str, origin: str) -> None:
    """Refuse a SQLite URL whose file does not exist (only `init` and `db upgrade` create
    one): the error shows the absolute path tried and `origin`, where the URL came from."""
    missing = sqlite_file(url)
    if missing is not None and not missing.exists():
        raise DatabaseError(
            f"SQLite database {os.path.abspath(missing)} does not exist; {origin}",
            hint="run `neruba init`, or point --db at an existing database",
        )


def redact(url: str | URL) -> str:
    """The URL with its password hidden: safe for output, logs and the audit trail."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
        return parsed.render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _PASSWORD_IN_URL.sub(r"://\1:***@", str(url))


def display_url(url: str | URL) -> str:
    """The URL as the operator wrote it, for messages: password hidden, and without the driver
    Neruba adds (`postgresql://`, not `postgresql+psycopg://`)."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
        bare = parsed.set(drivername=parsed.drivername.split("+")[0])
        return bare.render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return redact(url)


def product_name(engine: Engine) -> str:
    """The database server by its name (the `mysql` dialect also serves MariaDB); read once
    the engine has connected."""
    dialect = engine.dialect
    if dialect.name == "mysql":
        return "MariaDB" if getattr(dialect, "is_mariadb", False) else "MySQL"
    return {"postgresql": "PostgreSQL", "sqlite": "SQLite"}.get(dialect.name, dialect.name)


def create_db_engine(url: str) -> Engine:
    parsed = parse_database_url(url)
    dialect = parsed.get_backend_name()
    if dialect == "sqlite":
        return _sqlite_engine(parsed)
    try:
        if dialect in ("mysql", "mariadb"):
            return _mysql_engine(parsed)
        return _postgres_engine(parsed)
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(
            f"no driver for {redact(parsed)}: {exc}",
            hint="leave the driver out of the URL (mysql://, postgresql://) to use Neruba's",
        ) from None


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        folder = Path(database).expanduser().resolve().parent
        if not folder.is_dir():
            raise DatabaseError(f"folder {folder} for the SQLite database does not exist")
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()
        sqlite_functions.register(dbapi_connection)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get(WRITE_OPTION)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@contextmanager
def begin_write(engine: Engine) -> Iterator[Connection]:
    """A transaction that reads and then writes what it read (a wallet, an invoice's amount
    due). On SQLite it takes the write lock at BEGIN (waiting up to the busy timeout), because
    a WAL reader that later writes fails outright once another writer has committed since its
    read. The servers lock rows instead (`SELECT ... FOR UPDATE` in the services)."""
    with engine.connect() as conn:
        conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            yield conn


def _mysql_engine(url: URL) -> Engine:
    query = dict(url.query)
    query.setdefault("charset", "utf8mb4")
    return create_engine(
        url.set(query=query),
        isolation_level="READ COMMITTED",
        pool_pre_ping=True,
        pool_recycle=3600,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "init_command": f"SET SESSION sql_mode='{_MYSQL_SQL_MODE}', time_zone='+00:00'",
        },
    )


# When the server goes away, psycopg logs a warning (a COPY that cannot be ended) and
# SQLAlchemy's pool logs a traceback (the rollback of a connection it takes back fails) to
# stderr through Python's last-resort handler, beside the error that is then raised and
# reported as one line: their own logging stays quiet.
for _library in ("psycopg", "sqlalchemy.pool"):
    logging.getLogger(_library).addHandler(logging.NullHandler())


def _postgres_engine(url: URL) -> Engine:
    return create_engine(
        url,
        isolation_level="READ COMMITTED",
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "options": "-c timezone=UTC",
            # No server-side prepared statements: a cached generic plan for the ingest's
            # `key IN (...)` lookups scans the whole project once the table is large.
            "prepare_threshold": None,
        },
    )


def explain_error(exc: Exception, url: str) -> DatabaseError:
    """Turn a driver exception into one line an operator can act on (no traceback)."""
    reason = getattr(exc, "orig", None) or exc
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    return DatabaseError(f"database {display_url(url)}: {text}")
