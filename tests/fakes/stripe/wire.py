"""The HTTP side: a threaded server on 127.0.0.1 and Stripe's request protocol."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import secrets
import socket
import threading
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.fakes.stripe.errors import FakeStripeError
from tests.fakes.stripe.params import Obj, Params, mask_key, parse_form
from tests.fakes.stripe.store import Store, random_token

if TYPE_CHECKING:
    from tests.fakes.stripe.server import FakeStripe

API_VERSION = "2026-10-28.endive"


@dataclass
class RequestLog:
    """One request as the server saw it. ``status`` is 0 until a response is sent and stays 0
    when a fault closes the connection without one; ``fault`` names the fault that hit it."""

    method: str
    path: str
    idempotency_key: str | None
    status: int = 0
    replayed: bool = False
    fault: str | None = None


@dataclass
class Reply:
    status: int
    body: bytes
    replayed: bool = False
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class IdempotencyRecord:
    fingerprint: tuple[str, str, str]
    status: int
    body: bytes


def dump_json(payload: Obj) -> bytes:
    return json.dumps(payload, indent=2).encode()


class StripeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeStripe) -> None:
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Unblock handler threads idling on keep-alive connections so stop() leaves none."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like api.stripe.com; the SDK pools connections
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms ACK stalls
    server: StripeHTTPServer

    def _handle(self) -> None:
        self.server.fake._serve(self)

    do_GET = _handle
    do_POST = _handle
    do_DELETE = _handle
    do_PUT = _handle
    do_PATCH = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is FakeStripe.requests."""


class WireProtocol(Store):
    """Request handling: authentication, form decoding, idempotency keys, dispatch and
    the response, as Stripe's API does them."""

    def _serve(self, handler: RequestHandler) -> None:
        method = handler.command
        url = urlsplit(handler.path)
        path = url.path
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length > 0 else b""
        if len(body) < length:
            # The client went away before it had sent the whole body (a process killed
            # mid-request): Stripe acts on no request it did not receive whole, and neither
            # keeps its idempotency key nor answers.
            handler.close_connection = True
            return
        key = handler.headers.get("Idempotency-Key") if method == "POST" else None
        log = RequestLog(method, path, key)
        with self._control:
            self.requests.append(log)
        fault = self._take_fault(method, path)
        if fault is not None and fault.call is not None:  # run it, then answer as usual
            if not fault.after_apply:
                fault.call()
            reply = self._process(
                handler.headers.get("Authorization"), method, path, url.query, body, key
            )
            if fault.after_apply:
                fault.call()
            self._send(handler, log, reply, key)
            return
        if fault is not None and not fault.after_apply:
            self._inject(handler, log, fault, key)
            return
        reply = self._process(
            handler.headers.get("Authorization"), method, path, url.query, body, key
        )
        if fault is not None:
            self._inject(handler, log, fault, key)
            return
        self._send(handler, log, reply, key)

    def _process(
        self, auth: str | None, method: str, path: str, query: str, body: bytes, key: str | None
    ) -> Reply:
        try:
            api_key = self._authenticate(auth)
            try:
                raw = body.decode("utf-8") if method == "POST" else query
            except UnicodeDecodeError:
                raise FakeStripeError(400, "The request body is not valid UTF-8.") from None
            params = parse_form(parse_qsl(raw, keep_blank_values=True))
        except FakeStripeError as error:
            return Reply(error.status, dump_json(error.body()))
        if key is None:
            return self._execute(method, path, params)
        slot = (api_key, key)
        with self._keys_guard:
            key_lock = self._key_locks.setdefault(slot, threading.Lock())
        with key_lock:  # concurrent requests with one key: the second waits, then replays
            fingerprint = (method, path, json.dumps(params, sort_keys=True))
            record = self._idempotency.get(slot)
            if record is not None:
                if record.fingerprint == fingerprint:
                    return Reply(record.status, record.body, replayed=True)
                return self._idempotency_conflict(key, record.fingerprint, fingerprint)
            reply = self._execute(method, path, params)
            if reply.status < 500:  # Stripe keeps 4xx results too, so they replay
                self._idempotency[slot] = IdempotencyRecord(fingerprint, reply.status, reply.body)
            return reply

    @staticmethod
    def _idempotency_conflict(
        key: str, first: tuple[str, str, str], second: tuple[str, str, str]
    ) -> Reply:
        if first[:2] != second[:2]:
            message = (
                "Keys for idempotent requests can only be used for the same endpoint they were "
                f"first used for ('{first[0]} {first[1]}' vs '{second[0]} {second[1]}'). Try "
                f"using a key other than '{key}' if you meant to execute a different request."
            )
        else:
            message = (
                "Keys for idempotent requests can only be used with the same parameters they were "
                f"first used with. Try using a key other than '{key}' if you meant to execute a "
                "different request."
            )
        error = FakeStripeError(400, message, error_type="idempotency_error")
        return Reply(400, dump_json(error.body()))

    def _authenticate(self, header: str | None) -> str:
        if not header:
            raise FakeStripeError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, "
                "or we can help at https://support.stripe.com/.",
            )
        scheme, _, value = header.partition(" ")
        key = ""
        if scheme.lower() == "bearer":
            key = value.strip()
        elif scheme.lower() == "basic":  # curl -u sk_test_...:
            try:
                key = base64.b64decode(value.strip()).decode().partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                key = ""
        if not secrets.compare_digest(key.encode(), self.api_key.encode()):
            raise FakeStripeError(401, f"Invalid API Key provided: {mask_key(key)}")
        return key

    def _execute(self, method: str, path: str, params: Params) -> Reply:
        try:
            for route_method, pattern, handler in self._routes:
                match = pattern.fullmatch(path)
                if match is not None and route_method == method:
                    ids = [unquote(group) for group in match.groups()]
                    with self._lock:
                        result = handler(params, *ids)
                        result = self._expand(result, params)
                    return Reply(200, dump_json(result))
            raise FakeStripeError(
                404,
                f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
                "or we can help at https://support.stripe.com/.",
            )
        except FakeStripeError as error:
            return Reply(error.status, dump_json(error.body()))
        except Exception as error:  # a bug in this fake: say so, and tell the SDK not to retry
            traceback.print_exc()
            body = {
                "error": {
                    "type": "api_error",
                    "message": f"FakeStripe bug: {type(error).__name__}: {error}",
                }
            }
            return Reply(500, dump_json(body), headers={"Stripe-Should-Retry": "false"})

    def _send(
        self, handler: RequestHandler, log: RequestLog, reply: Reply, key: str | None
    ) -> None:
        # Log before writing: the client may look at the log as soon as it has the response.
        log.status = reply.status
        log.replayed = reply.replayed
        try:
            handler.send_response(reply.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(reply.body)))
            handler.send_header("Request-Id", f"req_{random_token(14)}")
            handler.send_header("Stripe-Version", API_VERSION)
            if key is not None:
                handler.send_header("Idempotency-Key", key)
            if reply.replayed:
                handler.send_header("Idempotent-Replayed", "true")
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(reply.body)
        except OSError:  # the client gave up (e.g. its timeout fired)
            handler.close_connection = True
