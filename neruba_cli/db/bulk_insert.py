"""Idempotent bulk inserts of events and charges, in each dialect's fastest form.

Rows are keyed by (project_id, idempotency_key). Ingest writes a batch with one of two
inserts, and reads a batch's stored keys back when it has to classify its lines:

- `insert_new` stores rows none of whose keys is expected to be stored: COPY on PostgreSQL and
  multi-row INSERT statements on MariaDB (events), each inside a savepoint so a stored key
  rolls the whole insert back; elsewhere (SQLite, charges, a few rows on PostgreSQL) the
  skipping insert.
- `insert_skipping` stores rows with driver-ready tuples, skipping keys already stored:
  `ON CONFLICT DO NOTHING` (SQLite, PostgreSQL) and `ON DUPLICATE KEY UPDATE` (MariaDB). Only
  the unique-key conflict is skipped: SQLite's `INSERT OR IGNORE` and MariaDB's `INSERT IGNORE`
  would also swallow other errors, so neither is used.
- `insert_rows` stores driver-ready tuples in any table: the driver's executemany (PyMySQL
  makes multi-row statements itself, SQLite is in-process, psycopg pipelines a statement per
  row), except a few rows on PostgreSQL (the HTTP API's groups of single events and their
  audit records), which go as one multi-row INSERT: one statement for the server to parse,
  plan and run instead of one per row, and less of the client's CPU.
- `stored_keys` reads the (payload hash, batch, line, corrected) of some keys in one
  statement: a JSON array on SQLite (no limit on host parameters), a tuple on MariaDB, an
  array on PostgreSQL (one index probe per key); `stored_lines` their (line digest,
  corrected) the same way.
- `commit_new_async` (PostgreSQL, from an event loop): rows none of whose keys is expected to
  be stored and a query, one statement in one round trip (the HTTP API's groups of single
  events).

Rows are tuples in `COLUMNS` order, values converted once by the caller the way the column
types store them (the hot path skips SQLAlchemy's per-value type processing): `db_time` gives
a moment's stored form.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

Row = tuple[Any, ...]
# A table's name, the columns of its rows, and the rows (driver-ready tuples in that order)
Rows = tuple[str, Sequence[str], Sequence[Row]]
# A SELECT with PostgreSQL's numbered parameters ($1, $2...), and their values in order
Query = tuple[str, Sequence[Any]]
# (payload_hash, batch_id, line, corrected) of a stored event or charge, by idempotency key:
# `corrected` when the event was voided or amended since it was stored (never for a charge)
StoredKeys = dict[str, tuple[str, str | None, int | None, bool]]

COLUMNS = {
    "events": (
        "project_id",
        "idempotency_key",
        "customer_id",
        "meter",
        "ts",
        "quantity",
        "properties",
        "payload_hash",
        "batch_id",
        "line",
        "received_at",
        "operation",
        "line_digest",
    ),
    "charges": (
        "id",
        "project_id",
        "idempotency_key",
        "customer_id",
        "amount",
        "currency",
        "description",
        "at",
        "payload_hash",
        "batch_id",
        "line",
        "created_at",
    ),
}

# Drivers whose executemany rowcount is exactly the rows inserted (MariaDB counts the rows a
# no-op ON DUPLICATE KEY UPDATE found, so its callers always classify).
_EXACT_INSERT_COUNTS = ("sqlite", "postgresql")
# PostgreSQL: fewer rows than this go in with one pipelined executemany, cheaper than a
# savepoint around a COPY (the HTTP API's groups of single events)
_FEW_FOR_COPY = 100
_MYSQL_STATEMENT = 1_024_000  # characters: PyMySQL executemany's statement size
# PostgreSQL: a statement with at most this many parameters is parsed once by psycopg and
# kept (its cache stops there), so a few rows cost less as one multi-row INSERT than as the
# pipelined statement per row of its executemany; past it, executemany costs less
_CACHED_PARAMETERS = 50


def is_mysql(dialect: str) -> bool:
    return dialect in ("mysql", "mariadb")


def db_time(moment: datetime, sqlite: bool) -> Any:
    """Naive UTC, as UTCDateTime stores it; SQLite keeps SQLAlchemy's text layout."""
    naive = moment.astimezone(UTC).replace(tzinfo=None)
    return naive.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else naive


def stored_keys(conn: Connection, table: str, project_id: str, keys: list[str]) -> StoredKeys:
    """The stored (payload hash, batch, line, corrected) of the keys that are stored."""
    corrected = "version > 1" if table == "events" else "1 = 0"
    rows = _by_keys(conn, f"payload_hash, batch_id, line, {corrected}", table, project_id, keys)
    return {key: (digest, batch, line, bool(fixed)) for key, digest, batch, line, fixed in rows}


def stored_lines(conn: Connection, project_id: str, keys: list[str]) -> dict[str, tuple[int, bool]]:
    """The (line digest, corrected) of the keys stored as events with a line digest."""
    rows = _by_keys(conn, "line_digest, version > 1", "events", project_id, keys)
    return {key: (digest, bool(fixed)) for key, digest, fixed in rows if digest is not None}


def _by_keys(
    conn: Connection, columns: str, table: str, project_id: str, keys: list[str]
) -> Iterable[Any]:
    """`idempotency_key, <columns>` of the rows of a project stored under some of `keys`, in
    one statement: a JSON array on SQLite (no limit on the number of host parameters), a
    tuple on MariaDB, an array on PostgreSQL."""
    dialect = conn.dialect.name
    sql = (
        f"SELECT idempotency_key, {columns} FROM {table} "
        "WHERE project_id = {mark} AND idempotency_key {match}"
    )
    params: tuple[Any, ...]
    if dialect == "sqlite":
        match = "IN (SELECT value FROM json_each(?))"
        sql = sql.format(mark="?", match=match)
        params = (project_id, orjson.dumps(keys).decode())
    elif is_mysql(dialect):
        sql = sql.format(mark="%s", match="IN %s")
        params = (project_id, tuple(keys))
    else:
        # One index probe per key (a LATERAL subquery with LIMIT is not flattened into a
        # join): with `= ANY(keys)` the planner chose a parallel scan of the whole events
        # table for a few thousand keys, slower already at 200,000 events (47 against 31 ms
        # for 5,000 keys) and growing with the table.
        sql = (
            "SELECT k.key, e.* FROM unnest(%s::text[]) AS k(key) CROSS JOIN LATERAL "
            f"(SELECT {columns} FROM {table} WHERE project_id = %s AND idempotency_key = k.key "
            "LIMIT 1) AS e"
        )
        params = (keys, project_id)
    return conn.exec_driver_sql(sql, params).all()  # one fetch, not one call per row


def insert_new(conn: Connection, table: str, rows: Sequence[Row]) -> int | None:
    """Store every row, none of whose keys is expected to be stored (nor repeated): the
    number stored (all of them, or fewer if the dialect's insert skips stored keys), or None
    when a key turned out to be stored and nothing was."""
    dialect = conn.dialect.name
    if (
        dialect == "sqlite"
        or table != "events"
        or (len(rows) <= _FEW_FOR_COPY and dialect == "postgresql")
    ):
        return insert_skipping(conn, table, rows)  # its count is exact there
    try:
        with conn.begin_nested():
            if is_mysql(dialect):
                for statement in _mysql_inserts(rows):
                    conn.exec_driver_sql(statement)
            else:
                _postgresql_copy(conn, rows)
    except IntegrityError:  # the savepoint is rolled back
        return None
    return len(rows)


def insert_skipping(conn: Connection, table: str, rows: Sequence[Row]) -> int:
    """Insert, skipping keys already stored; the number of rows stored, exact except on
    MariaDB (-1), whose driver counts the skipped rows too."""
    dialect = conn.dialect.name
    if is_mysql(dialect):
        skip = " ON DUPLICATE KEY UPDATE idempotency_key = idempotency_key"
    else:
        skip = " ON CONFLICT (project_id, idempotency_key) DO NOTHING"
    count = insert_rows(conn, table, COLUMNS[table], rows, skip)
    return count if dialect in _EXACT_INSERT_COUNTS else -1


def insert_rows(
    conn: Connection, table: str, columns: Sequence[str], rows: Sequence[Row], tail: str = ""
) -> int:
    """Insert rows (driver-ready tuples in `columns` order), `tail` ending each statement:
    the driver's row count."""
    if not rows:
        return 0
    dialect = conn.dialect.name
    names = ", ".join(columns)
    if dialect == "postgresql" and len(rows) * len(columns) <= _CACHED_PARAMETERS:
        one = "(" + ", ".join(["%s"] * len(columns)) + ")"
        sql = f"INSERT INTO {table} ({names}) VALUES {', '.join([one] * len(rows))}{tail}"
        params = tuple(value for row in rows for value in row)
        return int(conn.exec_driver_sql(sql, params).rowcount)
    marks = ", ".join(["?" if dialect == "sqlite" else "%s"] * len(columns))
    sql = f"INSERT INTO {table} ({names}) VALUES ({marks}){tail}"
    return int(conn.exec_driver_sql(sql, list(rows)).rowcount)


async def commit_new_async(driver: Any, inserts: Sequence[Rows], query: Query) -> list[Row] | None:
    """PostgreSQL, from an event loop: insert rows none of whose keys is expected to be
    stored, and run `query`, in one statement (`_together`) on a `psycopg.AsyncConnection`
    in autocommit mode (engine.AsyncKeptConnection's): its own transaction, so it is the
    only thing sent, one round trip. The query's rows; or None when some key was stored
    already: then nothing is (the caller writes the rows again the way that classifies each
    one). Any other error is psycopg's own."""
    import psycopg.errors
    from psycopg import AsyncRawCursor

    assert driver.autocommit
    sql, params = _together(inserts, query)
    try:
        async with AsyncRawCursor(driver) as cursor:
            await cursor.execute(sql, params)
            found: list[Row] = await cursor.fetchall()
            return found
    except psycopg.errors.UniqueViolation:
        return None


def _together(inserts: Sequence[Rows], query: Query) -> tuple[str, list[Any]]:
    """One statement: each insert a data-modifying WITH clause of `query` (a SELECT whose
    parameters are PostgreSQL's numbered ones, `$1`...). PostgreSQL runs every such clause
    once, whether or not the query reads it, and all of it is one statement: a stored key
    fails the whole of it."""
    sql, first = query
    params = list(first)
    clauses = []
    for number, (table, columns, rows) in enumerate(inserts):
        insert = _numbered_insert(table, tuple(columns), len(rows), len(params))
        clauses.append(f"new_{number} AS ({insert})")
        params.extend(value for row in rows for value in row)
    return f"WITH {', '.join(clauses)} {sql}", params


@functools.lru_cache(maxsize=256)
def _numbered_insert(table: str, columns: tuple[str, ...], count: int, after: int) -> str:
    """A multi-row INSERT with PostgreSQL's own numbered parameters, from `$after + 1`:
    psycopg's raw cursor sends it as it is (its `%s` statements with more than 50
    parameters are parsed again on every run), and the server runs one statement, not one
    per row."""
    width = len(columns)
    rows = (
        "(" + ", ".join(f"${after + row * width + column + 1}" for column in range(width)) + ")"
        for row in range(count)
    )
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join(rows)}"


def refresh_statistics(engine: Engine, table: str) -> None:
    """PostgreSQL plans from table statistics that autovacuum refreshes only later; right
    after a bulk import a billing run would otherwise read the events table with a plan made
    for an empty one (seconds per query instead of milliseconds). PostgreSQL's own advice
    after a bulk load is to ANALYZE. MariaDB refreshes InnoDB's statistics itself; SQLite
    plans from its indexes."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as conn:
        conn.exec_driver_sql(f"ANALYZE {table}")
        conn.commit()


def _postgresql_copy(conn: Connection, rows: Iterable[Row]) -> None:
    """COPY the events in (text format: the server parses each value as its column's type);
    a stored key fails it with a unique violation."""
    sql = f"COPY events ({', '.join(COLUMNS['events'])}) FROM STDIN"
    driver = conn.connection.driver_connection
    assert driver is not None
    try:
        with driver.cursor() as cursor, cursor.copy(sql) as copy:
            write = copy.write_row
            for row in rows:
                write(row)
    except driver.Error as exc:  # as SQLAlchemy raises them from a statement it ran
        dbapi = conn.dialect.loaded_dbapi
        raise DBAPIError.instance(sql, None, exc, dbapi.Error, dialect=conn.dialect) from exc


def _mysql_inserts(rows: Iterable[Row]) -> Iterator[str]:
    """Multi-row INSERT statements of up to about 1 MB (as PyMySQL's executemany makes them),
    with the values escaped the way PyMySQL escapes them; a stored key fails one. `%` is
    doubled: a statement run without parameters still goes through `%` formatting."""
    from pymysql.converters import escape_string

    head = f"INSERT INTO events ({', '.join(COLUMNS['events'])}) VALUES "
    escaped: dict[str, str] = {}  # the project and batch, the same on every row
    parts: list[str] = []
    size = len(head)
    for row in rows:
        project, key, customer, meter, ts, quantity, properties, digest, batch, line = row[:10]
        at, op, lined = row[10:]
        if not escaped:
            escaped = {value: escape_string(value) for value in (project, batch)}
        part = (
            f"('{escaped[project]}','{escape_string(key)}','{escape_string(customer)}',"
            f"'{escape_string(meter)}','{ts}',{quantity},'{escape_string(properties)}',"
            f"'{digest}','{escaped[batch]}',{line},'{at}',{'NULL' if op is None else repr(op)},"
            f"{'NULL' if lined is None else int(lined)})"
        )
        if parts and size + len(part) > _MYSQL_STATEMENT:
            yield (head + ",".join(parts)).replace("%", "%%")
            parts = []
            size = len(head)
        parts.append(part)
        size += len(part) + 1
    if parts:
        yield (head + ",".join(parts)).replace("%", "%%")
