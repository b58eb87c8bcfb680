"""The bulk inserts of db/bulk_insert.py on every database: what `insert_rows` stores is what
was given (times, decimals, NULLs; a few rows, or many), `insert_skipping` counts only the rows
it stored, and a value too long for its column is refused, never cut short."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError

from neruba_cli.db import bulk_insert
from neruba_cli.db.tables import audit_records_t, events_t
from neruba_cli.services.tenancy import audit
from tests.support.databases import seed_project

PROJECT = "proj_bulk"
CUSTOMER = "cus_bulk"
AT = datetime(2026, 11, 3, 4, 5, 6, 789012, tzinfo=UTC)


@pytest.fixture
def bulk_engine(engine: Engine) -> Engine:
    seed_project(engine, PROJECT, "bulk", {CUSTOMER: "acme"})
    return engine


def audit_row(number: int, sqlite: bool, message: str | None = None) -> tuple[object, ...]:
    return (
        f"aud_{number:026d}",
        bulk_insert.db_time(AT + timedelta(seconds=number), sqlite),
        "key_x",
        "key",
        "bulk",
        "POST /v1/events",
        '{"status":200}',
        "ok" if message is None else "error",
        0 if message is None else 1,
        message,
    )


# line digests: the extremes of a signed 64-bit integer, and none
LINE_DIGESTS = {"k1": -(1 << 63), "k2": (1 << 63) - 1, "k3": None}


def event_row(key: str, quantity: str, sqlite: bool) -> tuple[object, ...]:
    return (
        PROJECT,
        key,
        CUSTOMER,
        "api_calls",
        "2026-11-03 04:05:06.000001",
        quantity,
        '{"region":"eu"}',
        "ab" * 32,
        "bat_x",
        1,
        bulk_insert.db_time(AT, sqlite),
        None,
        LINE_DIGESTS.get(key, 12345),
    )


@pytest.mark.parametrize("count", [3, 2_345])  # one multi-row statement on PostgreSQL; many
def test_insert_rows_stores_every_row_as_given(bulk_engine: Engine, count: int) -> None:
    sqlite = bulk_engine.dialect.name == "sqlite"
    # NULLs and messages among them
    rows = [audit_row(n, sqlite, "HTTP 409" if n % 7 == 0 else None) for n in range(count)]
    with bulk_engine.begin() as conn:
        stored_count = bulk_insert.insert_rows(conn, "audit_records", audit.COLUMNS, rows)
    with bulk_engine.connect() as conn:
        stored = conn.execute(select(audit_records_t).order_by(audit_records_t.c.id)).all()
    assert stored_count == count
    assert len(stored) == count
    first, second = stored[0], stored[1]
    assert first.at == AT and first.message == "HTTP 409" and first.exit_code == 1
    assert second.at == AT + timedelta(seconds=1)
    assert second.message is None and second.outcome == "ok" and second.exit_code == 0
    assert stored[-1].id == f"aud_{count - 1:026d}"


def test_insert_rows_of_nothing_stores_nothing(bulk_engine: Engine) -> None:
    with bulk_engine.begin() as conn:
        assert bulk_insert.insert_rows(conn, "audit_records", audit.COLUMNS, []) == 0
        assert conn.execute(select(audit_records_t)).all() == []


def test_insert_skipping_counts_only_what_it_stored(bulk_engine: Engine) -> None:
    sqlite = bulk_engine.dialect.name == "sqlite"
    with bulk_engine.begin() as conn:
        first = bulk_insert.insert_skipping(
            conn,
            "events",
            [event_row("k1", "1.5", sqlite), event_row("k2", "0.000000000001", sqlite)],
        )
    with bulk_engine.begin() as conn:
        again = bulk_insert.insert_skipping(
            conn, "events", [event_row("k2", "9", sqlite), event_row("k3", "12345678.25", sqlite)]
        )
    with bulk_engine.connect() as conn:
        stored = {
            row.idempotency_key: row.quantity
            for row in conn.execute(select(events_t.c.idempotency_key, events_t.c.quantity))
        }
    if bulk_insert.is_mysql(bulk_engine.dialect.name):
        assert (first, again) == (-1, -1)  # its driver counts the skipped rows as well
    else:
        assert (first, again) == (2, 1)
    # the stored k2 kept its first quantity; decimals exactly as given
    assert stored == {
        "k1": Decimal("1.5"),
        "k2": Decimal("0.000000000001"),
        "k3": Decimal("12345678.25"),
    }
    # line digests exactly as given; a key without one is not a stored line
    with bulk_engine.connect() as conn:
        lines = bulk_insert.stored_lines(conn, PROJECT, ["k1", "k2", "k3", "k4"])
    assert lines == {"k1": (-(1 << 63), False), "k2": ((1 << 63) - 1, False)}


def test_a_value_too_long_for_its_column_is_refused_not_cut(bulk_engine: Engine) -> None:
    """PostgreSQL and MariaDB refuse the row (the statement, so none of its rows is stored);
    SQLite, which bounds no VARCHAR, stores it whole."""
    sqlite = bulk_engine.dialect.name == "sqlite"
    long_meter = "m" * 65  # the column holds 64
    row = list(event_row("k-long", "1", sqlite))
    row[3] = long_meter
    rows = [event_row("k-ok", "1", sqlite), tuple(row)]
    if sqlite:
        with bulk_engine.begin() as conn:
            assert bulk_insert.insert_skipping(conn, "events", rows) == 2
    else:
        with pytest.raises(DBAPIError), bulk_engine.begin() as conn:
            bulk_insert.insert_skipping(conn, "events", rows)
    with bulk_engine.connect() as conn:
        meters = conn.execute(select(events_t.c.meter).order_by(events_t.c.meter)).scalars().all()
    assert meters == (["api_calls", long_meter] if sqlite else [])
