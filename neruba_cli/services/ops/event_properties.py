"""Rewrite the `properties` of a selection of events, a batch per transaction.

Shared by `customer forget` (drop the personal keys of one customer's events) and `retention
apply` (keep only the keys a meter reads, for the customers of a billing window). Only the
`properties` column changes: quantity, timestamp, idempotency key and payload hash stay, so
aggregation is unchanged and re-importing the original line is still a duplicate. Only events
whose properties actually change are written, so a rewrite that was interrupted is finished by
running it again, and running it twice changes nothing the second time.

Paging follows the events index (project_id, customer_id, meter, voided, ts): for each
customer, the meters it has events of are found one index seek at a time (the next meter after
the last), and each meter's current events, then its voided ones, are read by keyset on
(ts, id) from where the previous page stopped,
inside the optional [start, end) window. Every read is an index range that starts where the
last one ended; no page rescans what an earlier page read. A batch gathers up to `batch_size`
events, across customers and meters, and is rewritten in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Select, bindparam, false, or_, select, true, update

from neruba_cli.db.tables import event_versions_t, events_t

BATCH = 2000  # events per transaction


KeyFilter = Callable[[Mapping[str, Any]], tuple[dict[str, Any], int]]
"""Properties in, (the properties to keep, how many keys were removed) out."""


@dataclass(frozen=True)
class Selection:
    """The events of these customers of a project, inside [start, end) when given."""

    project_id: str
    customer_ids: Sequence[str]
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class Batch:
    """One committed transaction (or, for a dry run, one counted page)."""

    scanned: int  # events read
    events: int  # events whose properties changed (or would)
    removed: int  # property keys removed


BeforeCommit = Callable[[Connection, Batch], None]


def rewrite(
    engine: Engine,
    selection: Selection,
    key_filter: KeyFilter,
    *,
    write: bool,
    batch_size: int = BATCH,
    before_commit: BeforeCommit | None = None,
    transaction: Callable[[], AbstractContextManager[Connection]] | None = None,
) -> Iterator[Batch]:
    """Rewrite the selected events' properties through `key_filter`; yields each batch once it
    is committed. `before_commit` runs inside each writing transaction that changed events
    (to keep a run's counters in step with the events it changed). `transaction` opens each
    batch's transaction (default `engine.begin`; a lease holder passes its fenced one)."""
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    pages = _Pages(selection)
    begin = transaction or engine.begin
    while not pages.done:
        with begin() as conn:
            rows = pages.read(conn, batch_size)
            changes = []
            removed = 0
            for event_id, text in rows:
                if text in ("{}", ""):
                    continue
                remaining, dropped = key_filter(orjson.loads(text))
                if dropped:
                    removed += dropped
                    changes.append(
                        {"b_id": event_id, "b_properties": orjson.dumps(remaining).decode()}
                    )
            batch = Batch(scanned=len(rows), events=len(changes), removed=removed)
            if changes and write:
                conn.execute(
                    update(events_t)
                    .where(events_t.c.id == bindparam("b_id"))
                    .values(properties=bindparam("b_properties")),
                    changes,
                )
                if before_commit is not None:
                    before_commit(conn, batch)
        if rows:
            yield batch


def rewrite_versions(
    conn: Connection, selection: Selection, key_filter: KeyFilter, *, write: bool
) -> Batch:
    """The same rewrite of the selected events' superseded versions (`event_versions`: kept
    by `events void/amend` and `ingest --replace`; few), in the caller's transaction."""
    versions = event_versions_t.c
    query = select(versions.id, versions.properties).where(
        versions.project_id == selection.project_id,
        versions.customer_id.in_(list(selection.customer_ids)),
    )
    if selection.start is not None:
        query = query.where(versions.ts >= selection.start)
    if selection.end is not None:
        query = query.where(versions.ts < selection.end)
    rows = conn.execute(query).all()
    changes = []
    removed = 0
    for version_id, text in rows:
        if text in ("{}", ""):
            continue
        remaining, dropped = key_filter(orjson.loads(text))
        if dropped:
            removed += dropped
            changes.append({"b_id": version_id, "b_properties": orjson.dumps(remaining).decode()})
    if changes and write:
        conn.execute(
            update(event_versions_t)
            .where(versions.id == bindparam("b_id"))
            .values(properties=bindparam("b_properties")),
            changes,
        )
    return Batch(scanned=len(rows), events=len(changes), removed=removed)


class _Pages:
    """Where the reading stands: customer, meter, current or voided events (`voided` is in
    the index between meter and ts), and the (ts, id) of the last event read."""

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.customers = list(selection.customer_ids)
        self.customer = 0  # index into customers
        self.meter: str | None = None  # None: find the customer's first meter
        self.voided = False  # a meter's current events are read first, then its voided ones
        self.after: tuple[datetime, int] | None = None  # last (ts, id) read of this meter
        self.done = not self.customers

    def read(self, conn: Connection, limit: int) -> list[tuple[int, str]]:
        """Up to `limit` events from where the last read stopped, as (id, properties)."""
        rows: list[tuple[int, str]] = []
        while not self.done and len(rows) < limit:
            if self.meter is None and not self._next_meter(conn):
                continue
            want = limit - len(rows)
            page = conn.execute(self._page(want)).all()
            rows += [(row.id, row.properties) for row in page]
            if len(page) < want:  # this meter is exhausted: its voided events, or the next
                self._advance(conn)
            else:
                self.after = (page[-1].ts, page[-1].id)
        return rows

    def _advance(self, conn: Connection) -> None:
        self.after = None
        if not self.voided:
            self.voided = True
            return
        self.voided = False
        self._next_meter(conn)

    def _next_meter(self, conn: Connection) -> bool:
        """Move to the customer's next meter (one index seek), or to the next customer."""
        customer_id = self.customers[self.customer]
        query = (
            select(events_t.c.meter)
            .where(
                events_t.c.project_id == self.selection.project_id,
                events_t.c.customer_id == customer_id,
            )
            .order_by(events_t.c.meter)
            .limit(1)
        )
        if self.meter is not None:
            query = query.where(events_t.c.meter > self.meter)
        found = conn.execute(query).scalar_one_or_none()
        self.after = None
        if found is None:
            self.meter = None
            self.customer += 1
            self.done = self.customer >= len(self.customers)
            return False
        self.meter = found
        return True

    def _page(self, limit: int) -> Select[Any]:
        sel = self.selection
        query = (
            select(events_t.c.id, events_t.c.ts, events_t.c.properties)
            .where(
                events_t.c.project_id == sel.project_id,
                events_t.c.customer_id == self.customers[self.customer],
                events_t.c.meter == self.meter,
                events_t.c.voided == (true() if self.voided else false()),
            )
            .order_by(events_t.c.ts, events_t.c.id)
            .limit(limit)
        )
        if sel.end is not None:
            query = query.where(events_t.c.ts < sel.end)
        if self.after is not None:
            # ts >= last_ts bounds the index range; the OR only skips the ties already read.
            last_ts, last_id = self.after
            query = query.where(
                events_t.c.ts >= last_ts, or_(events_t.c.ts > last_ts, events_t.c.id > last_id)
            )
        elif sel.start is not None:
            query = query.where(events_t.c.ts >= sel.start)
        return query
