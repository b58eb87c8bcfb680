"""Engines configured per dialect so that every database behaves the way the core assumes.

- SQLite: WAL, foreign keys on, a busy timeout, and real BEGIN statements (pysqlite's legacy
  transaction handling would otherwise run SELECTs outside the transaction).
- MariaDB/MySQL: utf8mb4, strict SQL mode, READ COMMITTED, UTC session time zone.
- PostgreSQL: UTC session time zone, READ COMMITTED (its default).

Every engine bounds how long a statement waits for a lock another transaction holds:
`LOCK_WAIT_SECONDS` (PostgreSQL `lock_timeout`, MariaDB `innodb_lock_wait_timeout`, SQLite's
busy timeout), so a process paused inside a transaction (SIGSTOP, a debugger, a frozen VM) can
never hang the others: they give up with a lock-wait timeout, which `is_lock_timeout`
recognises and the CLI reports as exit 5. The lease statements (db/locks.py) wait far less,
`LEASE_LOCK_WAIT_SECONDS`, through `short_lock_wait`.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, RootTransaction, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session

from neruba_cli.db import sqlite_functions
from neruba_cli.db.retry import driver_errors
from neruba_cli.domain.errors import DatabaseError, InvalidInput, LockHeld, NerubaError

CONNECT_TIMEOUT_SECONDS = 5
WRITE_OPTION = "neruba_write"
log = logging.getLogger("neruba.db")
# The longest any statement waits for a row (SQLite: the database) another transaction holds
# locked. Longer than any transaction Neruba itself keeps open; see docs "Locks and leases".
LOCK_WAIT_SECONDS = 30
SQLITE_BUSY_TIMEOUT_MS = LOCK_WAIT_SECONDS * 1000
SQLITE_POLL_SECONDS = 0.0005  # KeptConnection's pause between two tries at the write lock
# The longest a lease statement (take, renew, give back, release) waits for the lease's row.
LEASE_LOCK_WAIT_SECONDS = 3

_MYSQL_LOCK_WAIT_TIMEOUT = 1205  # ER_LOCK_WAIT_TIMEOUT
_PG_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired, or NOWAIT

_MYSQL_SQL_MODE = (
    "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
    "NO_ENGINE_SUBSTITUTION"
)

_SCHEME = re.compile(r"^(.*?://)(.*)$", re.DOTALL)  # what a URL has before its authority
# Query parameters that carry a credential (libpq's password/sslpassword, PyMySQL's
# passwd, ODBC's pwd, tokens): matched as parts of the parameter's name, case-insensitively.
_CREDENTIAL_PARAMETERS = ("password", "passwd", "pwd", "secret", "token", "apikey", "api_key")
MASK = "***"

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
    """The URL with every credential hidden: safe for output, logs and the audit trail.

    The one masking rule for database URLs, applied to the text so it holds for URLs no
    parser accepts: the password of the user information (up to the last `@` before the
    query, so an unescaped `@` in a password hides all of it) and the value of every query
    parameter that names a credential (`?password=`, `passwd`, `pwd`, `sslpassword`,
    `token`, ...)."""
    return _scrub(_text(url), MASK)


def display_url(url: str | URL) -> str:
    """The URL as the operator wrote it, for messages: credentials hidden (see `redact`),
    and without the driver Neruba adds (`postgresql://`, not `postgresql+psycopg://`)."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
        bare = parsed.set(drivername=parsed.drivername.split("+")[0])
    except (ArgumentError, ValueError):
        return redact(url)
    return redact(bare)


def without_credentials(url: str) -> tuple[str, bool]:
    """The URL with its credentials left out (not masked), and whether it had any: what
    `init` may write into a config file, which never holds a secret."""
    clean = _scrub(url, None)
    return clean, clean != url


def _text(url: str | URL) -> str:
    if isinstance(url, URL):
        return url.render_as_string(hide_password=False)
    return str(url)


def _scrub(text: str, mask: str | None, found: list[str] | None = None) -> str:
    """`text` with the password and credential parameters replaced by `mask`, or left out
    when `mask` is None; the values hidden are appended to `found`."""
    hidden = [] if found is None else found
    matched = _SCHEME.match(text)
    if matched is None:
        return text
    scheme, rest = matched.groups()
    query_at = rest.find("?")
    head, query = (rest, None) if query_at < 0 else (rest[:query_at], rest[query_at + 1 :])
    at = head.rfind("@")
    if not head.startswith("/") and at >= 0:  # a SQLite path has no user information
        user, colon, password = head[:at].partition(":")
        if colon:
            hidden.append(password)
            head = (f"{user}:{mask}" if mask is not None else user) + head[at:]
    if query is None:
        return scheme + head
    kept: list[str] = []
    for item in query.split("&"):
        name, equals, value = item.partition("=")
        if equals and any(word in name.lower() for word in _CREDENTIAL_PARAMETERS):
            hidden.append(value)
            if mask is None:
                continue
            item = f"{name}={mask}"
        kept.append(item)
    return scheme + head + ("?" + "&".join(kept) if kept else "")


def redact_message(message: str, url: str | URL) -> str:
    """A driver's message with the URL's credentials hidden. A password with an unescaped
    `@` is split by the driver, which then names its tail as part of the host
    (`failed to resolve host 't@127.0.0.1'`): every piece of it is hidden too."""
    found: list[str] = []
    _scrub(_text(url), MASK, found)
    for value in found:
        for secret in {value, unquote(value)}:
            pieces = [secret, *secret.split("@")]
            for piece in sorted({p for p in pieces if p}, key=len, reverse=True):
                message = message.replace(piece + "@", MASK + "@")
                if len(piece) >= 3:
                    message = message.replace(piece, MASK)
    return message


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

    _SQLITE_WRITERS[engine] = threading.RLock()
    return engine


# One lock per SQLite engine that the threads of a process take before `begin_write`'s BEGIN
# IMMEDIATE (see there).
_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()


@contextmanager
def begin_write(engine: Engine) -> Iterator[Connection]:
    """A transaction that reads and then writes what it read (a wallet, an invoice's amount
    due). On SQLite it takes the write lock at BEGIN (waiting up to the busy timeout), because
    a WAL reader that later writes fails outright once another writer has committed since its
    read. The servers lock rows instead (`SELECT ... FOR UPDATE` in the services).

    On SQLite the threads of one process (the API's worker threads) first queue for a lock of
    their own: the next one is woken as soon as the transaction ends, where SQLite's busy
    handler would poll in sleeps of up to 100 ms, the long tail of a server under load. A
    thread that waited the busy timeout for it goes on to BEGIN IMMEDIATE anyway, as before."""
    with _writers_turn(engine), engine.connect() as conn:
        conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            yield conn


@contextmanager
def _writers_turn(engine: Engine) -> Iterator[None]:
    """On SQLite, this process's turn among its threads that write (see `begin_write`); a
    thread that waited the busy timeout for it goes on anyway. Elsewhere, nothing."""
    lock = _SQLITE_WRITERS.get(engine)
    held = lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000) if lock is not None else False
    try:
        yield
    finally:
        if held and lock is not None:
            lock.release()


class KeptConnection:
    """The connection one writer thread keeps for its many short write transactions (the HTTP
    API's grouped writes): `begin_write` without the pool's round trips per transaction
    (check-out with its liveness ping, and the rollback that resets a connection on its
    return). A connection idle longer than `idle_seconds`, or one an error left invalid, is
    closed and a new one opened for the next transaction. Not for several threads at once.

    On SQLite, BEGIN IMMEDIATE is tried again every `SQLITE_POLL_SECONDS` while another
    process holds the write lock (up to the busy timeout), instead of by SQLite's busy
    handler, whose sleeps grow to 100 ms: two `neruba serve` workers each holding the lock for
    a millisecond at a time would otherwise leave it idle most of the time."""

    def __init__(self, engine: Engine, idle_seconds: float = 30.0) -> None:
        self.engine = engine
        self.idle_seconds = idle_seconds
        self._conn: Connection | None = None
        self._used = 0.0

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with _writers_turn(self.engine):
            conn = self._connection()
            try:
                with self._begin(conn):
                    yield conn
            except BaseException:
                if conn.invalidated or conn.closed:
                    self.close()
                raise
            finally:
                self._used = time.monotonic()

    def _begin(self, conn: Connection) -> RootTransaction:
        if self.engine.dialect.name != "sqlite":
            return conn.begin()
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return conn.begin()
            except OperationalError as exc:
                busy = getattr(exc.orig, "sqlite_errorname", None) == "SQLITE_BUSY"
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(SQLITE_POLL_SECONDS)

    def _connection(self) -> Connection:
        conn = self._conn
        if conn is not None and (
            conn.closed or conn.invalidated or time.monotonic() - self._used > self.idle_seconds
        ):
            self.close()
            conn = None
        if conn is None:
            conn = self.engine.connect()
            conn.execution_options(**{WRITE_OPTION: True})
            if self.engine.dialect.name == "sqlite":  # _begin waits instead (outside a transaction)
                driver = conn.connection.driver_connection
                assert driver is not None
                driver.execute("PRAGMA busy_timeout = 0")
            self._conn = conn
        return conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # a connection that broke: nothing left to give back
                log.debug("closing a kept connection failed", exc_info=True)


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """An ORM unit of work that reads and then writes, in `begin_write`'s transaction:
    committed when the block ends, rolled back on any error. A write committed by someone else
    since it read (another command, a request of `neruba serve`) makes it wait on SQLite
    rather than fail."""
    with (
        begin_write(engine) as conn,
        Session(bind=conn, expire_on_commit=False) as session,
        session.begin(),
    ):
        yield session


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
            "init_command": (
                f"SET SESSION sql_mode='{_MYSQL_SQL_MODE}', time_zone='+00:00', "
                f"innodb_lock_wait_timeout={LOCK_WAIT_SECONDS}"
            ),
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
        url, isolation_level="READ COMMITTED", pool_pre_ping=True, connect_args=_POSTGRES_CONNECT
    )


_POSTGRES_CONNECT = {
    "connect_timeout": CONNECT_TIMEOUT_SECONDS,
    # A statement run five times on a connection is prepared on the server (psycopg's
    # default `prepare_threshold`): the server parses it once, not on every run; for the
    # API's small inserts that is most of their cost there. Each run is still planned for
    # its own values (`force_custom_plan`): a generic plan made once for every value would
    # scan the whole project for the ingest's stored-key lookups once the events table is
    # large.
    "options": (
        f"-c timezone=UTC -c lock_timeout={LOCK_WAIT_SECONDS}s -c plan_cache_mode=force_custom_plan"
    ),
}


class AsyncKeptConnection:
    """A PostgreSQL connection of psycopg's own, in autocommit mode, for an event loop's
    one-statement writes (the HTTP API's groups of new single events:
    `bulk_insert.commit_new_async`), made with the engine's URL and the settings of its
    connections. Like `KeptConnection`: kept from one statement to the next, opened again
    after `idle_seconds` idle or once it broke (in autocommit, a statement that failed
    leaves nothing else to undo). Not for several tasks at once."""

    def __init__(self, engine: Engine, idle_seconds: float = 30.0) -> None:
        assert engine.dialect.name == "postgresql"
        self.engine = engine
        self.idle_seconds = idle_seconds
        self._conn: Any = None
        self._used = 0.0

    async def get(self) -> Any:
        """The connection (a `psycopg.AsyncConnection`), opened when there is none fit."""
        conn = self._conn
        if conn is not None and (
            conn.broken or conn.closed or time.monotonic() - self._used > self.idle_seconds
        ):
            await self.close()
            conn = None
        if conn is None:
            import psycopg

            args, params = self.engine.dialect.create_connect_args(self.engine.url)
            conn = await psycopg.AsyncConnection.connect(
                *args, **{**params, **_POSTGRES_CONNECT}, autocommit=True
            )
            self._conn = conn
        self._used = time.monotonic()
        return conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # a connection that broke: nothing left to give back
                log.debug("closing a kept connection failed", exc_info=True)


@contextmanager
def short_lock_wait(engine: Engine, seconds: float) -> Iterator[Connection]:
    """A transaction whose statements wait at most `seconds` for a lock, then fail with a
    lock-wait timeout (`is_lock_timeout`): for the short statements on a lease's row, which
    must answer "busy" at once rather than queue behind a paused process.

    PostgreSQL scopes the bound to the transaction (`SET LOCAL`); MariaDB and SQLite set it on
    the connection, so it is put back before the connection returns to the pool (a connection
    that cannot be put back is discarded)."""
    dialect = engine.dialect.name
    with engine.connect() as conn:
        try:
            with conn.begin():
                if dialect == "postgresql":
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(seconds * 1000)}ms'")
                elif dialect == "mysql":
                    wait = max(int(seconds), 1)  # whole seconds, at least one
                    conn.exec_driver_sql(f"SET SESSION innodb_lock_wait_timeout = {wait}")
                elif dialect == "sqlite":
                    conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
                yield conn
        finally:
            _restore_lock_wait(conn, dialect)


def _restore_lock_wait(conn: Connection, dialect: str) -> None:
    if dialect not in ("mysql", "sqlite"):
        return
    try:
        if dialect == "mysql":
            conn.exec_driver_sql(f"SET SESSION innodb_lock_wait_timeout = {LOCK_WAIT_SECONDS}")
        else:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        conn.commit()
    except Exception:  # the connection broke: never hand it out again with the short bound
        conn.invalidate()


def is_lock_timeout(exc: BaseException) -> bool:
    """Whether a database error (or one it came from) is a lock wait that ran out: PostgreSQL
    SQLSTATE 55P03, MariaDB 1205, SQLite "database is locked" (SQLITE_BUSY)."""
    for orig in driver_errors(exc):
        args = getattr(orig, "args", ())
        if args and args[0] == _MYSQL_LOCK_WAIT_TIMEOUT:
            return True
        if getattr(orig, "sqlstate", None) == _PG_LOCK_NOT_AVAILABLE:
            return True
        if isinstance(orig, sqlite3.OperationalError) and (
            getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
            or "database is locked" in str(orig)
        ):
            return True
    return False


def explain_error(exc: Exception, url: str) -> NerubaError:
    """Turn a driver exception into one line an operator can act on (no traceback). A lock
    wait that ran out is "busy", exit 5 like a held lease, not a broken database: another
    transaction kept the rows this one needed for LOCK_WAIT_SECONDS."""
    reason = getattr(exc, "orig", None) or exc
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    text = redact_message(text, url)
    if is_lock_timeout(exc):
        return LockHeld(
            f"database {display_url(url)}: gave up waiting (at most {LOCK_WAIT_SECONDS} s) "
            f"for a lock another transaction holds ({text})",
            hint="another neruba process may be paused or stuck; `neruba locks list` shows "
            "which job holds which lease; try again when it has finished",
        )
    return DatabaseError(f"database {display_url(url)}: {text}")
