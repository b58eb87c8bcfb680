"""Idempotency keys of requests: a request's work and the record of its answer, in one
transaction.

`run` does a unit of work once per (project, key). The record is claimed first, in the
transaction that then does the work, and holds the answer when that transaction commits: a
crash leaves neither the work nor the record, never one without the other. A second request
with the same key waits on the claim (the unique index holds its insert until the first
commits or rolls back) and then replays the stored answer, so the work is done exactly once;
on SQLite the write lock taken at BEGIN serializes them the same way. Only answers of work
that committed are stored: a refused request (its transaction rolled back) leaves no record
and may be sent again with the same key.

A record is kept for `RETENTION` after it was written; an expired one no longer names its
key (the key is free again) and `sweep` deletes expired records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from neruba_cli.db.engine import begin_write
from neruba_cli.db.ids import new_id
from neruba_cli.db.retry import retrying
from neruba_cli.db.schema import Project
from neruba_cli.db.tables import idempotency_records_t
from neruba_cli.domain.errors import NerubaError

RETENTION = timedelta(hours=24)  # a key replays its answer at least this long
MAX_KEY_LENGTH = 255
CLAIM_ATTEMPTS = 3  # a lost race for a key is settled by the next look, which replays

# The work of a request in the caller's transaction: (status, JSON body).
Work = Callable[[Connection], tuple[int, Any]]


@dataclass(frozen=True)
class Request:
    """What identifies a request for its key: where it went and what it said."""

    key: str
    method: str
    path: str
    fingerprint: str  # of the body, e.g. `fingerprint(body)`


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    replayed: bool


class IdempotencyConflict(NerubaError):
    """The key was used for another request (another body or another route)."""

    kind = "idempotency_conflict"
    param = "Idempotency-Key"


class _Claimed(Exception):
    """Another transaction inserted the key between our look and our claim."""


def fingerprint(body: Any) -> str:
    """The body as canonical JSON (keys sorted), hashed: the same document however it was
    spaced or its keys ordered."""
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def run(
    engine: Engine,
    project: Project,
    request: Request | None,
    work: Work,
    *,
    actor: str,
    now: datetime,
) -> Answer:
    """`work` in one write transaction with the record of its answer, or the answer stored
    for this key. Without a request (no key), the work alone."""
    if request is None:

        def plain() -> Answer:
            with begin_write(engine) as conn:
                status, body = work(conn)
            return Answer(status, body, replayed=False)

        return retrying(plain)

    def attempt() -> Answer:
        with begin_write(engine) as conn:
            return _once(conn, project, request, work, actor=actor, now=now)

    for tries in range(1, CLAIM_ATTEMPTS + 1):
        try:
            return retrying(attempt)
        except _Claimed:
            if tries == CLAIM_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _once(
    conn: Connection, project: Project, request: Request, work: Work, *, actor: str, now: datetime
) -> Answer:
    found = _find(conn, project, request.key)
    if found is not None and found.expires_at > now:
        return _replay(found, request)
    if found is not None:  # expired: the key is free again
        conn.execute(delete(idempotency_records_t).where(idempotency_records_t.c.id == found.id))
    record_id = new_id("idm")
    try:  # the claim: a concurrent insert of the key waits here until we commit or roll back
        conn.execute(
            insert(idempotency_records_t).values(
                id=record_id,
                project_id=project.id,
                idempotency_key=request.key,
                method=request.method,
                path=request.path,
                fingerprint=request.fingerprint,
                status=0,
                response=None,
                actor=actor,
                created_at=now,
                expires_at=now + RETENTION,
            )
        )
    except IntegrityError:
        raise _Claimed() from None  # rolls this transaction back; the next look replays
    status, body = work(conn)
    conn.execute(
        update(idempotency_records_t)
        .where(idempotency_records_t.c.id == record_id)
        .values(status=status, response=orjson.dumps(body).decode())
    )
    return Answer(status, body, replayed=False)


def _find(conn: Connection, project: Project, key: str) -> Row[Any] | None:
    return conn.execute(
        select(idempotency_records_t).where(
            idempotency_records_t.c.project_id == project.id,
            idempotency_records_t.c.idempotency_key == key,
        )
    ).first()


def _replay(found: Row[Any], request: Request) -> Answer:
    if (found.method, found.path) != (request.method, request.path):
        raise IdempotencyConflict(
            f"Idempotency-Key {request.key!r} was already used for {found.method} {found.path}; "
            "nothing was done",
            hint="a key names one request; use a new key for a new request",
        )
    if found.fingerprint != request.fingerprint:
        raise IdempotencyConflict(
            f"Idempotency-Key {request.key!r} was already used with another body; nothing was done",
            hint="a key names one request; use a new key for a new request",
        )
    body = orjson.loads(found.response) if found.response is not None else None
    return Answer(int(found.status), body, replayed=True)


def sweep(engine: Engine, *, now: datetime) -> int:
    """Delete the records that expired (every project's); how many."""
    with engine.begin() as conn:
        result = conn.execute(
            delete(idempotency_records_t).where(idempotency_records_t.c.expires_at <= now)
        )
    return int(result.rowcount or 0)
