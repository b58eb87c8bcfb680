"""`Idempotency-Key` on POST routes, as Stripe does it.

A route takes `idempotent: Idempotent = Depends(idempotency)` after its `requires(...)` and
answers with `idempotent.respond(caller, work)`, where `work(conn, project)` does the route's
work in the given write transaction and returns (status, JSON body) (`with_session(work)` for
work on an ORM session). Without the header the
work simply runs. With it (services/tenancy/idempotency.py):

- a new key: the work runs and its answer is stored in the same transaction;
- the same key, route and body again: the stored answer (status and body) with
  `Idempotent-Replayed: true`, and nothing is done again;
- the same key with another body or on another route: 409 with `param` `Idempotency-Key`;
- the same key while its first request is still running: the second waits for the first to
  commit, then replays its answer.

Keys are per project (the API key's project) and kept `RETENTION` (24 hours). Expired records
are deleted by a sweep that a worker runs after storing a record, at most every
`SWEEP_SECONDS`. The event ingest routes do not use this: an event's own `idempotency_key`
already makes ingest idempotent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Header, Request
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from neruba_cli.api.auth import Caller
from neruba_cli.api.body import read_body
from neruba_cli.api.errors import ApiError, ErrorResponse
from neruba_cli.api.responses import JsonResponse
from neruba_cli.db.schema import Project
from neruba_cli.services.tenancy import idempotency as records

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
SWEEP_SECONDS = 600.0

# Route work in the request's write transaction: (status, JSON body).
RouteWork = Callable[[Connection, Project], tuple[int, Any]]
SessionWork = Callable[[Session, Project], tuple[int, Any]]

# For the `responses` of an idempotent route.
IDEMPOTENCY_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorResponse,
        "description": "The Idempotency-Key was used with another body or on another route",
    }
}


@dataclass(frozen=True)
class Idempotent:
    """The request's key, route and body fingerprint (None without the header)."""

    request: records.Request | None

    def respond(self, caller: Caller, work: RouteWork) -> JsonResponse:
        with caller.transaction() as session:
            project = caller.project(session)
        answer = records.run(
            caller.engine,
            project,
            self.request,
            lambda conn: work(conn, project),
            actor=caller.access.actor.id,
            now=caller.now(),
        )
        if self.request is not None and not answer.replayed:
            _sweeper.maybe(caller.engine)
        headers = {REPLAYED: "true"} if answer.replayed else None
        return JsonResponse(answer.body, status_code=answer.status, headers=headers)


async def idempotency(
    request: Request,
    key: str | None = Header(
        default=None,
        alias=HEADER,
        description="Send the request at most once: a repeat with the same key and body "
        "replays the first answer (kept 24 hours); another body with the key is a 409.",
    ),
) -> Idempotent:
    if key is None:
        return Idempotent(None)
    if (
        not 0 < len(key) <= records.MAX_KEY_LENGTH
        or not key.isascii()
        or not key.isprintable()
        or key != key.strip()
    ):
        raise ApiError(
            400,
            f"{HEADER} must be 1 to {records.MAX_KEY_LENGTH} printable ASCII characters "
            "without surrounding spaces",
            param=HEADER,
        )
    raw = await read_body(request, request.app.state.neruba.settings.max_body_bytes)
    request._body = raw  # what Starlette keeps once read, so the route reads the body again
    return Idempotent(records.Request(key, request.method, request.url.path, _fingerprint(raw)))


def _fingerprint(raw: bytes) -> str:
    """The same JSON document gives the same fingerprint however it is spaced or ordered."""
    try:
        return records.fingerprint(orjson.loads(raw) if raw.strip() else None)
    except orjson.JSONDecodeError:  # e.g. an integer beyond 64 bits: compare the bytes
        return records.fingerprint(raw.decode("utf-8", errors="replace"))


def with_session(work: SessionWork) -> RouteWork:
    """Work written for an ORM session, run in the request's transaction."""

    def run(conn: Connection, project: Project) -> tuple[int, Any]:
        with Session(bind=conn, expire_on_commit=False) as session:
            answer = work(session, project)
            session.flush()
            return answer

    return run


class _Sweeper:
    """At most one sweep of expired records per `SWEEP_SECONDS` in a worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = float("-inf")

    def maybe(self, engine: Engine) -> None:
        with self._lock:
            if time.monotonic() - self._last < SWEEP_SECONDS:
                return
            self._last = time.monotonic()
        try:
            records.sweep(engine, now=datetime.now(UTC))
        except Exception:  # the request's own answer is already decided
            logging.getLogger("neruba.api").exception("idempotency sweep failed")


_sweeper = _Sweeper()
