"""The fast lane: the request applications send most — one usage event — served without
FastAPI's routing, dependency injection and middleware stack, which cost more per request
than checking and storing the event.

A fast route is a route declared like any other (`@router.post`: its OpenAPI entry, its
scope dependency, its name in the access log and the metrics); `NerubaApi` serves its method
and exact path by calling its `Lane` function directly, behind the same `RequestContext`
(request id, access log, metrics, audit, the one 500) and with the same key check
(`auth.authorize`, for the scope the declared route's dependency names), body limit
(`body.read_body`) and error answers (`errors.handler_for`). Any other method or path (a
trailing slash, a HEAD) goes the usual way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from neruba_cli.api import errors
from neruba_cli.api.auth import Caller, authorize, bearer
from neruba_cli.api.middleware import RequestContext
from neruba_cli.api.openapi import operations

Lane = Callable[[Request, Caller], Awaitable[Response]]


@dataclass(frozen=True)
class RouteName:
    """What the access log and the metrics read of `scope["route"]`."""

    path: str


class _FastRoute:
    def __init__(self, path: str, scope: str, lane: Lane) -> None:
        self.route = RouteName(path)
        self.scope = scope
        self.lane = lane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route
        request = Request(scope, receive)
        try:
            caller = await authorize(request, self.scope, await bearer(request))
            response = await self.lane(request, caller)
        except Exception as exc:
            handler = errors.handler_for(exc)
            if handler is None:
                raise  # RequestContext's 500
            response = await handler(request, exc)
        await response(scope, receive, send)


class NerubaApi(FastAPI):
    """FastAPI, with the fast lane in front of it."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._lanes: dict[tuple[str, str], ASGIApp] = {}

    def add_fast_route(self, method: str, path: str, lane: Lane) -> None:
        """Serve `method path`, a route already declared, by `lane`, with the scope its
        declaration checks."""
        found = [op for op in operations(self) if op.method == method.lower() and op.path == path]
        if len(found) != 1 or found[0].scope is None:
            raise ValueError(f"{method} {path}: not one declared route that needs a key")
        self._lanes[(method.upper(), path)] = RequestContext(_FastRoute(path, found[0].scope, lane))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            lane = self._lanes.get((scope["method"], scope["path"]))
            if lane is not None:
                scope["app"] = self
                await lane(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
