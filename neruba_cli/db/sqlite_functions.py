"""Exact decimal SQL functions for SQLite, registered on every connection by db/engine.py.

SQLite has no decimal type: quantities are stored as canonical text (ExactDecimal) and these
functions let SQL aggregate them exactly, so usage is aggregated in the database on SQLite as
on the servers.
"""

from __future__ import annotations

import sqlite3


def register(connection: sqlite3.Connection) -> None:
    """Register Neruba's functions on a raw sqlite3 connection."""
