"""Inserting many rows in few round trips, on every dialect.

`conn.execute(insert(table), rows)` is an executemany: SQLite runs it natively and PyMySQL
rewrites it into multi-row INSERTs, but psycopg 3 sends one statement per row (pipelined),
which made writing a billing run's invoices and ledger entries the larger part of a run on
PostgreSQL. There a multi-row `INSERT ... VALUES (...), (...)` is sent instead, a few hundred
rows at a time (PostgreSQL binds at most 65,535 parameters per statement).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table, insert

MAX_PARAMETERS = 30_000


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(insert(table), list(rows))
        return
    per_statement = max(1, MAX_PARAMETERS // max(len(rows[0]), 1))
    for start in range(0, len(rows), per_statement):
        conn.execute(insert(table).values(list(rows[start : start + per_statement])))
