"""Limits on what one caller can make the server do: the size of a request body, and the rate
of requests per key.

- **Body size** (`max_body_bytes`): a `Content-Length` over the limit is refused with 413
  without keeping any of the body; a body sent without one (chunked) is counted as it
  arrives and refused as soon as it passes the limit, so an oversize body never sits in
  memory whole.
- **Rate** (`rate_limit` per second, `rate_burst` at once): a token bucket per key
  (domain/token_bucket.py), checked once the key is known (auth.py); an empty bucket is a
  429 with `Retry-After` in whole seconds. Each worker process keeps its own buckets: with
  N workers a key may get up to N times the rate, depending on which worker takes each
  connection.
"""

from __future__ import annotations

import math
import threading
import time

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from neruba_cli.api import body
from neruba_cli.api.errors import ApiError, send_error
from neruba_cli.domain.token_bucket import TokenBucket

MAX_BUCKETS = 100_000  # keys remembered per worker before the buckets start over


class BodyTooLarge(HTTPException):
    """Raised while the app reads the body: an HTTP error, so the framework's body parsing
    passes it on (rather than calling it malformed) and the error handlers answer 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, body.too_large(max_bytes).message)


class BodyLimit:
    """A pure ASGI middleware: 413 in the error shape for a body over `max_bytes`, on every
    route (api/body.py applies the same limit, with the same message, where a route reads
    its body itself). The rest of an oversize body is read and dropped (up to
    `body.DRAIN_BYTES`), never kept, so the client gets its 413 rather than a broken
    connection."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _drop_rest(receive, 0, more=True)
            await self._refuse(scope, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    await _drop_rest(receive, received, more=message.get("more_body", False))
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = body.too_large(self.max_bytes).message
        rid = scope.get("state", {}).get("request_id", "")
        await send_error(send, 413, "too_large", message, rid)


async def _drop_rest(receive: Receive, received: int, *, more: bool) -> None:
    while more and received <= body.DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        received += len(message.get("body", b""))
        more = bool(message.get("more_body", False))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RateLimiter:
    """One token bucket per key id, in this worker; off when `rate` is 0."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, key_id: str) -> None:
        """Take a token for `key_id`, or refuse with 429 and when to try again."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(key_id)
            if bucket is None:
                if len(self._buckets) >= MAX_BUCKETS:
                    self._buckets.clear()
                bucket = self._buckets[key_id] = TokenBucket.full(self.rate, self.burst, now)
            wait = bucket.take(now)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise ApiError(
                429,
                f"rate limit of {self.rate:g} requests per second for this key reached; "
                f"retry in {retry} s",
                headers={"Retry-After": str(retry)},
            )
