"""What every request goes through: a request id, the one error shape for an unexpected
failure, the access log line and the audit record of a mutating request.

A pure ASGI middleware (not `BaseHTTPMiddleware`), so a streamed body is not buffered and the
`Request-Id` header reaches every answer, a 500 included. Audit records are written by the
worker's audit thread, many a transaction (api/audits.py), unless the route wrote its own
in its transaction (api/single_events.py).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from neruba_cli.api.errors import send_error
from neruba_cli.db.ids import new_id
from neruba_cli.services.tenancy import audit
from neruba_cli.services.tenancy.access import Actor

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class AccessLog:
    """One JSON line per request on stderr, whatever uvicorn's own logging does. The lines of
    the requests that end in one turn of the event loop are written together, at its end:
    under load, one write for many requests instead of one each."""

    def __init__(self) -> None:
        self._lines: list[bytes] = []

    def add(self, line: dict[str, Any]) -> None:
        self._lines.append(orjson.dumps(line))
        if len(self._lines) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            sys.stderr.write(b"\n".join(lines).decode() + "\n")
            sys.stderr.flush()


access_log = AccessLog()


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, _flushing_at_shutdown(scope, send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_id("req")
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 500
        response_started = False
        audited = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started, audited
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((b"request-id", rid.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # the audit record is written before the answer ends: a client that has its
                # answer finds the record, and no write of this request follows its answer
                audited = True
                await self._audit(scope, status)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logging.getLogger("neruba.api").exception("request %s failed", rid)
            if not response_started:
                await _internal_error(rid, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            await self._after(scope, status, seconds, rid)
            if not audited:
                await self._audit(scope, status)

    async def _after(self, scope: Scope, status: int, seconds: float, rid: str) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        state: dict[str, Any] = scope.get("state", {})
        method = scope["method"]
        api_state = _api_state(scope)
        if api_state is not None:
            api_state.metrics.observe(method, route, status, seconds)
        access_log.add(
            {
                "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "request_id": rid,
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "key": state.get("key_id"),
                "project": state.get("project"),
            }
        )

    async def _audit(self, scope: Scope, status: int) -> None:
        """A mutating request's audit record, written by the worker's audit thread (unless
        the route wrote it in its own transaction)."""
        if scope.get("state", {}).get("audited"):
            return
        entry = audit_entry(scope, status)
        if entry is not None:
            await _api_state(scope).audits.submit(entry)


def _api_state(scope: Scope) -> Any:
    """The worker's ApiState (api/app.py), None outside the app."""
    return getattr(getattr(scope.get("app"), "state", None), "neruba", None)


def _flushing_at_shutdown(scope: Scope, send: Send) -> Send:
    """`send` for the lifespan: the queued events and audit records are written before the
    app says it has shut down (uvicorn may then end the process by its signal, without
    atexit)."""

    async def send_after_flush(message: Message) -> None:
        state = _api_state(scope)
        if message["type"] == "lifespan.shutdown.complete" and state is not None:
            await anyio.to_thread.run_sync(state.events.close)
            await anyio.to_thread.run_sync(state.audits.close)
        await send(message)

    return send_after_flush


def audit_entry(scope: Scope, status: int) -> audit.Entry | None:
    """The audit record of a mutating request answered with `status`; None for a request that
    is not audited (a read, or one refused before its key was known). A route that writes the
    record itself, in its own transaction, sets `state["audited"]`."""
    state = scope.get("state", {})
    caller = state.get("caller")
    method = scope["method"]
    if method not in MUTATING or caller is None:
        return None
    route = getattr(scope.get("route"), "path", None) or "unmatched"
    arguments = {
        **scope.get("path_params", {}),
        "request_id": state["request_id"],
        "status": status,
    }
    return audit.Entry(
        actor=Actor(kind="key", id=caller.key.key_id),
        project_slug=caller.key.project_slug,
        command=f"{method} {route}",
        arguments=arguments,
        outcome=audit.Outcome(0 if status < 400 else 1, _outcome(status)),
        now=datetime.now(UTC),
    )


def _outcome(status: int) -> str | None:
    return None if status < 400 else f"HTTP {status}"


async def _internal_error(rid: str, send: Send) -> None:
    message = "internal error; the request id is in the server log"
    await send_error(send, 500, "internal_error", message, rid)
