"""`POST /v1/events`: the events of one worker's concurrent requests, written together.

Each request checks its event itself (`posted.check`, in the event loop: a rejected event is
answered at once) and queues the valid one. Whatever requests have queued meanwhile is written
in one transaction, one per project. A request is answered once that transaction has
committed, with its own outcome: accepted, duplicate (of an earlier request, or of one in the
same transaction) or conflict, exactly as if it had been written alone in the order queued.
Events written together share a batch id. Each request's audit record is written in the same
transaction as its event (the middleware then writes none): one stands or falls with the other.

Who writes a group:

- On PostgreSQL, the worker's event loop, when all its keys are new and its customers known
  (`posted.Group.new`): one statement, its own transaction (`bulk_insert.commit_new_async`),
  on a connection the loop keeps, while the loop goes on reading requests. A thread would take
  turns with the loop at the interpreter lock, which about doubled the CPU of a group.
- Any other group, on every database, and a group the loop's statement did not store (a key
  already stored, any error): the worker's event threads (api/group_commit.py,
  `posted.write_group`), which classify each event. On MariaDB two threads write at once (a
  group waiting for its commit does not hold up the next one); elsewhere one (`WRITERS` says
  why). Each thread keeps its database connection from one transaction to the next.

A group whose kept connection turns out to be gone is written again on a new one. Should a
group's transaction fail for anything else but a deadlock (which the writer runs again), each
of its events is written alone, so that one event's failure is its request's only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from neruba_cli.api.group_commit import GroupWorker
from neruba_cli.db import bulk_insert
from neruba_cli.db.engine import AsyncKeptConnection, KeptConnection
from neruba_cli.db.schema import Project
from neruba_cli.services.ingest import posted
from neruba_cli.services.ingest.receipts import LineOutcome
from neruba_cli.services.ingest.validation import Pending
from neruba_cli.services.tenancy import audit

MOST = 500  # events per transaction at most
# Transactions under way at once per worker. MariaDB: two, so a group waiting for its commit
# does not hold up the next. PostgreSQL: one; with two, groups were smaller and cost more CPU
# per event, and `bench/api.py` answered about 15% fewer requests/s (2,013-2,042 against
# 2,325-2,373 in alternating runs). SQLite: one, as it takes one writer at a time.
WRITERS = {"mysql": 2, "mariadb": 2}

Written = tuple[LineOutcome, str, list[dict[str, str]]]  # outcome, batch, stale invoices
log = logging.getLogger("neruba.api")


@dataclass(frozen=True)
class Posted:
    """One request's valid event, and where it goes."""

    engine: Engine
    project: Project
    item: Pending
    now: datetime
    customers: dict[str, tuple[str, str]]  # the project's customers the worker has resolved
    audit: Callable[[LineOutcome], audit.Entry | None]  # the request's record, for its outcome


class SingleEvents:
    """One worker's event writers: on PostgreSQL its event loop, which sends each group of
    new keys itself; its event threads, for the other databases and for every group the
    loop could not store that way. Each keeps its connection."""

    def __init__(self, engine: Engine) -> None:
        threads = WRITERS.get(engine.dialect.name, 1)
        self._worker: GroupWorker[Posted, Written | Exception] = GroupWorker(
            "neruba-events", self._write, MOST, threads
        )
        self._connections: dict[tuple[Engine, int], KeptConnection] = {}
        self._in_loop = engine.dialect.name == "postgresql"
        self._queued: list[tuple[Posted, asyncio.Future[Written | Exception]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._loop_connections: dict[Engine, AsyncKeptConnection] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def write(self, event: Posted) -> Written:
        """The event's outcome, the batch it is stored with and the invoices it made stale,
        once its transaction has committed."""
        if self._in_loop:
            written = await self._queue(event)
        else:
            written = await self._worker.submit(event)
        if isinstance(written, Exception):
            raise written
        return written

    def close(self) -> None:
        """Stop the threads and close the connections (from a thread other than the loop's,
        while the loop runs: the ASGI lifespan's shutdown)."""
        self._worker.close()
        for kept in self._connections.values():
            kept.close()
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            for in_loop in self._loop_connections.values():
                with contextlib.suppress(Exception):  # a loop that stopped meanwhile
                    asyncio.run_coroutine_threadsafe(in_loop.close(), loop).result(5.0)

    # ---------------------------------------------------------------- in the event loop

    async def _queue(self, event: Posted) -> Written | Exception:
        """Queued for the loop's sender: while it sends a group, the events that arrive
        wait, and go together in its next one."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        future: asyncio.Future[Written | Exception] = loop.create_future()
        self._queued.append((event, future))
        if self._sender is None:
            self._sender = loop.create_task(self._send())
        return await future

    async def _send(self) -> None:
        try:
            while self._queued:
                taken, self._queued = self._queued[:MOST], self._queued[MOST:]
                for indexes in _by_project([event for event, _ in taken]):
                    entries = [taken[index] for index in indexes]
                    try:
                        results = await self._send_group([event for event, _ in entries])
                    except Exception as exc:  # each request of the group gets the error
                        results = [exc] * len(entries)
                    for (_, future), result in zip(entries, results, strict=True):
                        if not future.done():  # not cancelled: its client is still there
                            future.set_result(result)
        finally:
            self._sender = None

    async def _send_group(self, events: list[Posted]) -> list[Written | Exception]:
        """A group of new keys sent by the loop (`posted.Group.new`); any other, or one the
        database refused, written by the threads, each event classified."""
        first = events[0]
        group = posted.Group(
            first.engine,
            first.project,
            [event.item for event in events],
            max(event.now for event in events),
            first.customers,
            _audits(events),
        )
        new = group.new()
        if new is not None:
            rows = await self._commit(first.engine, new)
            if rows is not None:
                return list(group.accepted(new, rows))
        return list(await asyncio.gather(*(self._worker.submit(event) for event in events)))

    async def _commit(self, engine: Engine, new: posted.NewGroup) -> list[Any] | None:
        """The rows of `new`'s query once committed; None when a key was stored, or on any
        error (then the threads write the group again, and report what still fails)."""
        kept = self._loop_connections.get(engine)
        if kept is None:
            kept = self._loop_connections[engine] = AsyncKeptConnection(engine)
        try:
            conn = await kept.get()
            return await bulk_insert.commit_new_async(conn, new.inserts, new.query)
        except Exception:  # a broken connection is replaced at the next `get`
            log.debug("a group of new events sent by the event loop failed", exc_info=True)
            return None

    # ---------------------------------------------------------------- in the threads

    def _write(self, events: list[Posted]) -> list[Written | Exception]:
        results: list[Written | Exception] = [RuntimeError("not written")] * len(events)
        for indexes in _by_project(events):
            group = [events[index] for index in indexes]
            for index, written in zip(indexes, self._write_group(group), strict=True):
                results[index] = written
        return results

    def _write_group(self, group: list[Posted]) -> list[Written | Exception]:
        """One project's events in one transaction; again on a new connection when the kept
        one turns out to be gone (the database restarted, a proxy cut it), as the pool's
        ping spares the other routes; each event alone when the group fails otherwise."""
        for attempt in (1, 2):
            try:
                return self._write_together(group)
            except DBAPIError as exc:
                if not (exc.connection_invalidated and attempt == 1):
                    failed: Exception = exc
                    break
            except Exception as exc:
                failed = exc
                break
        if len(group) == 1:
            return [failed]
        return [written for event in group for written in self._write_group([event])]

    def _write_together(self, group: list[Posted]) -> list[Written | Exception]:
        first = group[0]
        mine = (first.engine, threading.get_ident())
        kept = self._connections.get(mine)
        if kept is None:
            kept = self._connections[mine] = KeptConnection(first.engine)
        return list(
            posted.write_group(
                first.engine,
                first.project,
                [event.item for event in group],
                now=max(event.now for event in group),
                customers=first.customers,
                transaction=kept.begin,
                audits=_audits(group),
            )
        )


def _by_project(events: list[Posted]) -> list[list[int]]:
    """The events' places, one list per project (a group is one project's events)."""
    by_project: dict[str, list[int]] = {}
    for index, event in enumerate(events):
        by_project.setdefault(event.project.id, []).append(index)
    return list(by_project.values())


def _audits(events: list[Posted]) -> Callable[[list[LineOutcome]], list[audit.Entry]]:
    """The requests' audit records, for the outcomes of their events in order."""

    def records(outcomes: list[LineOutcome]) -> list[audit.Entry]:
        entries = [event.audit(outcome) for event, outcome in zip(events, outcomes, strict=True)]
        return [entry for entry in entries if entry is not None]

    return records
