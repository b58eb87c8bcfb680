"""The HTTP API's groups of single events, on every database.

`posted.write_group` accepts a group of new keys with one audit record per event, classifies
each event of a group holding a stored key, and names the finalized invoices late events make
stale. On PostgreSQL a worker's event loop sends a group of new keys itself in one round trip
(`bulk_insert.commit_new_async`: nothing through SQLAlchemy), which stores everything it is
given or nothing; a group it could not store goes to the threads, each event classified."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session

from neruba_cli.api.single_events import Posted, SingleEvents
from neruba_cli.db import bulk_insert
from neruba_cli.db.engine import AsyncKeptConnection
from neruba_cli.db.schema import Project
from neruba_cli.db.tables import audit_records_t, events_t, invoices_t
from neruba_cli.domain.aggregation import MeterSpec
from neruba_cli.domain.catalog import MeterDef
from neruba_cli.domain.late_events import stale_entry
from neruba_cli.services.ingest import corrections, posted
from neruba_cli.services.ingest.receipts import LineOutcome
from neruba_cli.services.ingest.validation import Pending
from neruba_cli.services.tenancy import audit
from neruba_cli.services.tenancy.access import Actor
from tests.support.databases import seed_project

PROJECT = "proj_groups"
CUSTOMERS = {"cus_g1": "g1", "cus_g2": "g2"}
RESOLVED = {"g1": ("cus_g1", "USD"), "g2": ("cus_g2", "USD")}
METERS = {"api_calls": MeterDef("api_calls", MeterSpec("api_calls", "sum"))}
NOW = datetime(2026, 12, 20, tzinfo=UTC)
AT = "2026-11-03T04:05:06Z"


@pytest.fixture
def project(engine: Engine) -> Project:
    seed_project(engine, PROJECT, "groups", CUSTOMERS)
    with Session(engine) as session:
        found = session.get(Project, PROJECT)
        assert found is not None
        session.expunge(found)
        return found


def pending(key: str, customer: str = "g1", quantity: int = 1, at: str = AT) -> Pending:
    obj = {
        "idempotency_key": key,
        "customer": customer,
        "meter": "api_calls",
        "timestamp": at,
        "quantity": quantity,
    }
    item, _ = posted.check(obj, meters=METERS, now=NOW)
    assert isinstance(item, Pending), item
    return item


def records(outcomes: list[LineOutcome]) -> list[audit.Entry]:
    """One audit record per request, its status from its outcome (as the API's)."""
    return [
        audit.Entry(
            actor=Actor(kind="key", id="key_groups"),
            project_slug="groups",
            command="POST /v1/events",
            arguments={"status": 409 if outcome.status == "conflict" else 200},
            outcome=audit.Outcome(0, None),
            now=NOW,
        )
        for outcome in outcomes
    ]


@contextmanager
def through_sqlalchemy(engine: Engine) -> Iterator[list[str]]:
    """The statements SQLAlchemy runs meanwhile."""
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def write(engine: Engine, project: Project, items: Sequence[Pending]) -> list[Any]:
    return posted.write_group(
        engine, project, list(items), now=NOW, customers=dict(RESOLVED), audits=records
    )


def stored(engine: Engine) -> tuple[dict[str, tuple[str, int, str]], list[str]]:
    """The events (key → quantity, line, batch) and the audit records' arguments."""
    with engine.connect() as conn:
        events = {
            row.idempotency_key: (str(row.quantity.normalize()), row.line, row.batch_id)
            for row in conn.execute(select(events_t))
        }
        audits = [row.arguments for row in conn.execute(select(audit_records_t))]
    return events, audits


def test_a_group_of_new_events_is_accepted_with_a_record_each(
    engine: Engine, project: Project
) -> None:
    items = [pending("k2", quantity=2), pending("k1", "g2", quantity=1), pending("k3", quantity=3)]
    answers = write(engine, project, items)
    assert [outcome.status for outcome, _, _ in answers] == ["accepted"] * 3
    batch = answers[0][1]
    assert batch.startswith("bat_") and {answer[1] for answer in answers} == {batch}
    assert all(stale == [] for _, _, stale in answers)
    events, audits = stored(engine)
    # each event on the line of its place in the group, whatever order they were inserted in
    assert events == {"k2": ("2", 1, batch), "k1": ("1", 2, batch), "k3": ("3", 3, batch)}
    assert audits == ['{"status":200}'] * 3


def test_a_group_with_a_stored_key_is_written_again_each_event_classified(
    engine: Engine, project: Project
) -> None:
    first = write(engine, project, [pending("k1"), pending("k4", quantity=4)])
    assert [outcome.status for outcome, _, _ in first] == ["accepted", "accepted"]
    again = [pending("k2", quantity=2), pending("k1"), pending("k4", quantity=5)]
    with through_sqlalchemy(engine) as seen:
        answers = write(engine, project, again)
    assert [outcome.status for outcome, _, _ in answers] == ["accepted", "duplicate", "conflict"]
    assert seen  # classified through the writer
    events, audits = stored(engine)
    assert {key: value[:2] for key, value in events.items()} == {
        "k1": ("1", 1),
        "k4": ("4", 2),  # the conflict stored nothing
        "k2": ("2", 1),
    }
    assert events["k2"][2] == answers[0][1] != first[0][1]
    # one record per request, none left from the attempt that found k1 stored
    assert sorted(audits) == sorted(['{"status":200}'] * 4 + ['{"status":409}'])


def test_an_event_in_a_finalized_period_names_its_invoice_from_the_group(
    engine: Engine, project: Project
) -> None:
    with engine.begin() as conn:
        conn.execute(
            invoices_t.insert(),
            [
                invoice_row("INV-1", "cus_g1", "finalized"),
                invoice_row("INV-2", "cus_g2", "draft"),
            ],
        )
    items = [pending("late1"), pending("late2", "g2"), pending("open1", at="2026-12-01T00:00:00Z")]
    answers = write(engine, project, items)
    assert [outcome.status for outcome, _, _ in answers] == ["accepted"] * 3
    assert [stale for _, _, stale in answers] == [
        [stale_entry("INV-1", "2026-11")],
        [],  # a draft is not stale: the next run bills the event
        [],  # December: no invoice holds it
    ]


def invoice_row(number: str, customer: str, status: str) -> dict[str, Any]:
    return {
        "id": f"inv_{number}",
        "project_id": PROJECT,
        "customer_id": customer,
        "number": number,
        "period": "2026-11",
        "period_start": datetime(2026, 11, 1, tzinfo=UTC),
        "period_end": datetime(2026, 12, 1, tzinfo=UTC),
        "revision": 1,
        "kind": "invoice",
        "status": status,
        "currency": "USD",
        "subtotal": Decimal(0),
        "credits_applied": Decimal(0),
        "total": Decimal(0),
        "version": 1,
        "fingerprint": "f" * 64,
        "setup_fingerprint": "s" * 64,
        "event_count": 1,
        "content": "{}",
        "inputs": "{}",
        "created_at": NOW,
        "updated_at": NOW,
    }


def event_row(key: str) -> bulk_insert.Row:
    return (
        PROJECT,
        key,
        "cus_g1",
        "api_calls",
        "2026-11-03 04:05:06",
        "1",
        "{}",
        "ab" * 32,
        "bat_groups",
        1,
        bulk_insert.db_time(NOW, False),
        None,
        None,
    )


def audit_row(key: str) -> bulk_insert.Row:
    return (
        f"aud_{key}",
        NOW.replace(tzinfo=None),
        "key_g",
        "key",
        "groups",
        "POST",
        "{}",
        "ok",
        0,
        None,
    )


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_commit_new_async_stores_everything_or_nothing_and_its_connection_goes_on(
    engine: Engine, project: Project
) -> None:
    def rows(*keys: str) -> list[bulk_insert.Rows]:
        return [
            ("events", bulk_insert.COLUMNS["events"], [event_row(key) for key in keys]),
            (audit.TABLE, audit.COLUMNS, [audit_row(key) for key in keys]),
        ]

    query = corrections.stale_query(PROJECT, [("cus_g1", NOW)])
    assert query is not None
    kept = AsyncKeptConnection(engine)

    async def send(*keys: str) -> list[Any] | None:
        return await bulk_insert.commit_new_async(
            await kept.get(), rows(*keys), (query.sql, query.params)
        )

    async def main() -> list[list[Any] | None]:
        try:
            return [await send("a", "b"), await send("c", "b"), await send("d")]
        finally:
            await kept.close()

    # "b" is stored: neither "c" nor any record of that statement is; "d" goes after
    assert asyncio.run(main()) == [[], None, []]
    with engine.connect() as conn:
        keys = conn.execute(select(events_t.c.idempotency_key)).scalars().all()
        audits = conn.execute(select(func.count()).select_from(audit_records_t)).scalar()
    assert sorted(keys) == ["a", "b", "d"]
    assert audits == 3


def test_the_api_worker_sends_new_events_from_its_event_loop_and_the_rest_from_its_threads(
    engine: Engine, project: Project
) -> None:
    """PostgreSQL: a group of new keys goes by the loop's own connection (nothing through
    SQLAlchemy); one holding a stored key, and every group elsewhere, by the threads."""
    events = SingleEvents(engine)

    def one(key: str, quantity: int = 1) -> Posted:
        return Posted(
            engine, project, pending(key, quantity=quantity), NOW, dict(RESOLVED), audited
        )

    async def send(*posts: Posted) -> list[Any]:
        return list(await asyncio.gather(*(events.write(post) for post in posts)))

    async def main() -> tuple[list[Any], list[str], list[Any], list[str]]:
        try:
            with through_sqlalchemy(engine) as first_seen:
                first = await send(one("k1"), one("k2"))
            with through_sqlalchemy(engine) as then_seen:
                then = await send(one("k3"), one("k1"), one("k2", quantity=9))
        finally:
            await asyncio.to_thread(events.close)  # as the app's shutdown does
        return first, first_seen, then, then_seen

    first, first_seen, then, then_seen = asyncio.run(main())
    assert [outcome.status for outcome, _, _ in first] == ["accepted", "accepted"]
    assert [outcome.status for outcome, _, _ in then] == ["accepted", "duplicate", "conflict"]
    assert (first_seen == []) == (engine.dialect.name == "postgresql")
    assert then_seen  # classified by a thread
    events_stored, audits = stored(engine)
    assert sorted(events_stored) == ["k1", "k2", "k3"]
    assert len(audits) == 5  # one per request, none from the refused attempt


def audited(outcome: LineOutcome) -> audit.Entry:
    return records([outcome])[0]
