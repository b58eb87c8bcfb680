"""A Stripe-compatible in-memory HTTP server for tests.

Neruba talks to Stripe through the real ``stripe`` SDK. Pointing the SDK at this server
(``NERUBA_STRIPE_API_BASE=http://127.0.0.1:PORT``) runs the real wire protocol - form-encoded
bodies in bracket notation, JSON responses, Stripe's error objects and HTTP statuses,
idempotency keys, cursor pagination - without a network or a Stripe account. Faults (429, 500,
timeouts, dropped and hung connections) can be injected per route, so the retry and recovery
paths of the code under test run for real.

Only the part of the API Neruba uses is implemented (customers, invoice items, invoices,
invoice payments, payment intents, charges, refunds, credit notes). Where the server has to
choose, it does what Stripe does. Parameters it does not implement are refused with Stripe's
"Received unknown parameter" error rather than silently ignored, so a test fails loudly when the
code under test starts relying on something this fake does not model.

How the SDK's retries meet the faults (stripe 16, ``HTTPClient._should_retry``): a
``Stripe-Should-Retry`` response header decides when present; otherwise the SDK retries 409 and
every status >= 500, and connection errors and timeouts (``APIConnectionError.should_retry``),
never 429. A "500" fault therefore sends ``Stripe-Should-Retry: true``: nothing was applied and
nothing was stored, so a retry is safe and useful, which is exactly when Stripe sends ``true``.
A "429" fault sends no such header, like a real rate limit, so the SDK does not retry it. Every
POST the SDK sends carries an ``Idempotency-Key`` (its own when the caller gives none), and its
retries reuse it, so a retry after an applied-then-lost request replays the stored response.

Simplifications, so nobody mistakes them for Stripe's behaviour: payments always succeed (no
payment methods, no declines; ``/pay`` with or without ``paid_out_of_band`` takes the same path as
``FakeStripe.pay_invoice``); finalizing creates no open default invoice payment, only payments
taken create invoice payments (``is_default`` on an invoice's first); no taxes, discounts or
automatic collection; a credit note's ``credit_amount`` only moves ``customer.balance``; deleting
an invoice deletes its invoice items.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import re
import secrets
import socket
import string
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

Obj = dict[str, Any]
Params = dict[str, Any]

API_VERSION = "2026-10-28.endive"
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())
# Object kind -> Stripe id prefix. The kind is also the object's "object" field.
KINDS: dict[str, str] = {
    "customer": "cus",
    "invoice": "in",
    "invoiceitem": "ii",
    "payment_intent": "pi",
    "charge": "ch",
    "refund": "re",
    "credit_note": "cn",
    "invoice_payment": "inpay",
}
FAULT_ACTIONS = frozenset({"429", "500", "timeout", "drop", "hang"})
FAULT_METHODS = frozenset({"GET", "POST", "DELETE", "*"})
INVOICE_STATUSES = ("draft", "open", "paid", "uncollectible", "void")
EMBEDDED_LINES = 10  # Stripe embeds the first page of lines in an invoice
_LIST_PARAMS = frozenset({"limit", "starting_after", "ending_before", "expand"})
_ALNUM = string.ascii_letters + string.digits
_INTEGER = re.compile(r"-?\d+")
_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_KEY_PART = re.compile(r"\[([^\[\]]*)\]")
_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}


class FakeStripeError(Exception):
    """A Stripe API error. Handlers raise it and it is rendered the way Stripe renders errors;
    the back-office helpers raise it too when asked for something Stripe would refuse."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param

    def body(self) -> Obj:
        error: Obj = {"type": self.error_type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


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
class Fault:
    """A failure to inject into the next matching requests (see the module docstring)."""

    method: str
    path: str
    action: str
    times: int = 1
    skip: int = 0
    after_apply: bool = False
    delay: float = 3.0

    def __post_init__(self) -> None:
        # Fail at add_fault time rather than with a silently unmatched fault.
        self.method = self.method.upper()
        if self.method not in FAULT_METHODS:
            raise ValueError(f"Fault.method must be one of {sorted(FAULT_METHODS)}")
        if self.action not in FAULT_ACTIONS:
            raise ValueError(f"Fault.action must be one of {sorted(FAULT_ACTIONS)}")
        if self.times < 1 or self.skip < 0 or self.delay < 0:
            raise ValueError("Fault needs times >= 1, skip >= 0 and delay >= 0")
        re.compile(self.path)


@dataclass
class _ArmedFault:
    fault: Fault
    pattern: re.Pattern[str]
    skip_left: int
    times_left: int


@dataclass
class _Reply:
    status: int
    body: bytes
    replayed: bool = False
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _IdempotencyRecord:
    fingerprint: tuple[str, str, str]
    status: int
    body: bytes


def _dump(payload: Obj) -> bytes:
    return json.dumps(payload, indent=2).encode()


def _token(length: int = 24) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(length))


def _now() -> int:
    return int(time.time())


# --- form parameters ----------------------------------------------------------------------


def parse_form(pairs: Iterable[tuple[str, str]]) -> Params:
    """Decode Stripe's bracket notation (``a[b][0]=x``) into nested dicts of strings.

    Arrays stay dicts keyed "0", "1", ... (``a[]`` appends); handlers turn them into lists where a
    list is expected, because only they know whether ``metadata[0]`` is a key or an index.
    """
    root: Params = {}
    for key, value in pairs:
        match = _KEY.fullmatch(key)
        parts = [match.group(1), *_KEY_PART.findall(match.group(2))] if match else [key]
        node = root
        for depth, raw_part in enumerate(parts):
            part = str(len(node)) if raw_part == "" else raw_part
            if depth == len(parts) - 1:
                if isinstance(node.get(part), dict):
                    raise FakeStripeError(400, f"Invalid hash for parameter {key}", param=key)
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise FakeStripeError(400, f"Invalid value for parameter {key}", param=key)
                node = child
    return root


def _label(where: str, name: str) -> str:
    return f"{where}[{name}]" if where else name


def _missing(param: str) -> FakeStripeError:
    return FakeStripeError(
        400, f"Missing required param: {param}.", code="parameter_missing", param=param
    )


def _allow(params: Params, allowed: Iterable[str], where: str = "") -> None:
    """Refuse parameters this server does not implement, as Stripe refuses unknown ones."""
    allowed = set(allowed)
    for name in params:
        if name not in allowed:
            param = _label(where, name)
            raise FakeStripeError(
                400,
                f"Received unknown parameter: {param}",
                code="parameter_unknown",
                param=param,
            )


def _str(params: Params, name: str, *, required: bool = False, where: str = "") -> str | None:
    value = params.get(name)
    param = _label(where, name)
    if value is None:
        if required:
            raise _missing(param)
        return None
    if not isinstance(value, str):
        raise FakeStripeError(400, f"Invalid string: {param} must be a string", param=param)
    if required and value == "":
        raise FakeStripeError(
            400,
            f"You passed an empty string for '{param}'. We assume empty values are an attempt to "
            f"unset a parameter; however '{param}' cannot be unset. You should remove '{param}' "
            "from your request or supply a non-empty value.",
            code="parameter_invalid_empty",
            param=param,
        )
    return value


def _int(
    params: Params,
    name: str,
    *,
    required: bool = False,
    minimum: int | None = None,
    maximum: int | None = None,
    where: str = "",
) -> int | None:
    value = _str(params, name, required=required, where=where)
    if value is None:
        return None
    param = _label(where, name)
    if not _INTEGER.fullmatch(value):
        raise FakeStripeError(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param
        )
    number = int(value)
    if minimum is not None and number < minimum:
        raise FakeStripeError(
            400, f"This value must be greater than or equal to {minimum}.", param=param
        )
    if maximum is not None and number > maximum:
        raise FakeStripeError(
            400, f"This value must be less than or equal to {maximum}.", param=param
        )
    return number


def _bool(params: Params, name: str) -> bool | None:
    value = _str(params, name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise FakeStripeError(400, f"Invalid boolean: {value}", param=name)
    return value == "true"


def _enum(
    params: Params, name: str, choices: Iterable[str], *, required: bool = False, where: str = ""
) -> str | None:
    value = _str(params, name, required=required, where=where)
    choices = tuple(choices)
    if value is not None and value not in choices:
        param = _label(where, name)
        raise FakeStripeError(
            400, f"Invalid {param}: must be one of {', '.join(choices)}", param=param
        )
    return value


def _currency(params: Params) -> str | None:
    value = _str(params, "currency")
    if value is None:
        return None
    if not re.fullmatch(r"[A-Za-z]{3}", value):
        raise FakeStripeError(400, f"Invalid currency: {value}", param="currency")
    return value.lower()


def _as_list(value: Any, param: str) -> list[Any]:
    if isinstance(value, dict) and all(key.isdigit() for key in value):
        return [value[key] for key in sorted(value, key=int)]
    raise FakeStripeError(400, f"Invalid array: {param} must be an array", param=param)


def _metadata(params: Params, current: dict[str, str] | None = None) -> dict[str, str]:
    """Merge ``metadata`` into ``current`` like Stripe: an empty value deletes the key and
    ``metadata=`` (empty) clears everything."""
    result = dict(current or {})
    raw = params.get("metadata")
    if raw is None:
        return result
    if raw == "":
        return {}
    if not isinstance(raw, dict):
        raise FakeStripeError(400, "Invalid object: metadata must be a hash", param="metadata")
    for key, value in raw.items():
        param = f"metadata[{key}]"
        if not isinstance(value, str):
            raise FakeStripeError(400, f"Invalid string: {param} must be a string", param=param)
        if len(key) > 40:
            raise FakeStripeError(400, "Metadata keys can have up to 40 characters.", param=param)
        if value == "":
            result.pop(key, None)
        elif len(value) > 500:
            raise FakeStripeError(
                400, "Metadata values can have up to 500 characters.", param=param
            )
        else:
            result[key] = value
    if len(result) > 50:
        raise FakeStripeError(400, "Metadata can have up to 50 keys.", param="metadata")
    return result


def _check_amount(amount: int, currency: str, param: str) -> None:
    """Stripe takes three-decimal currencies in thousandths but only whole hundredths."""
    if currency in THREE_DECIMAL and amount % 10 != 0:
        raise FakeStripeError(
            400,
            f"Invalid {param}: {currency} is a three-decimal currency and Stripe only accepts "
            f"amounts in it that are divisible by 10 (the last digit must be 0); got {amount}.",
            code="amount_invalid",
            param=param,
        )


def _money(amount: int, currency: str) -> str:
    digits = 0 if currency in ZERO_DECIMAL else 3 if currency in THREE_DECIMAL else 2
    value = f"{amount / 10**digits:.{digits}f}"
    symbol = _SYMBOLS.get(currency)
    return f"{symbol}{value}" if symbol else f"{value} {currency.upper()}"


def _created_filter(params: Params, name: str = "created") -> Callable[[Obj], bool]:
    """``created=T`` or ``created[gt|gte|lt|lte]=T``, as Stripe list endpoints take it."""
    raw = params.get(name)
    if raw is None:
        return lambda obj: True
    if isinstance(raw, str):
        exact = _int(params, name)
        return lambda obj: _created(obj) == exact
    _allow(raw, ("gt", "gte", "lt", "lte"), where=name)
    bounds = {op: _int(raw, op, where=name) for op in raw}

    def keep(obj: Obj) -> bool:
        created = _created(obj)
        return all(
            (op == "gt" and created > bound)
            or (op == "gte" and created >= bound)
            or (op == "lt" and created < bound)
            or (op == "lte" and created <= bound)
            for op, bound in bounds.items()
            if bound is not None
        )

    return keep


def _created(obj: Obj) -> int:
    value = obj["created"] if "created" in obj else obj["date"]
    return int(value)


def _mask(key: str) -> str:
    """Stripe shows a rejected key with everything but its type prefix and last 4 masked."""
    match = re.match(r"(?:sk|rk|pk)_(?:test|live)_", key)
    prefix = match.group(0) if match else ""
    rest = len(key) - len(prefix)
    if rest <= 8:
        return prefix + "*" * rest
    return prefix + "*" * (rest - 4) + key[-4:]


# --- HTTP plumbing ------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeStripe) -> None:
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like api.stripe.com; the SDK pools connections
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms ACK stalls
    server: _HTTPServer

    def _handle(self) -> None:
        self.server.fake._serve(self)

    do_GET = _handle
    do_POST = _handle
    do_DELETE = _handle
    do_PUT = _handle
    do_PATCH = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is FakeStripe.requests."""


# --- the server ---------------------------------------------------------------------------


class FakeStripe:
    """A Stripe API in memory, served over HTTP on 127.0.0.1 for the real SDK to talk to.

    All state changes happen under one lock, so concurrent clients see atomic operations.
    ``objects``, ``get`` and the back-office helpers return copies: change state through the
    API or the helpers, never by editing a returned dict.
    """

    def __init__(self, *, api_key: str = "sk_test_neruba") -> None:
        self.api_key = api_key
        self.requests: list[RequestLog] = []
        self.hung = threading.Event()
        self._lock = threading.RLock()  # all object state
        self._control = threading.Lock()  # request log, faults, the hang gate
        self._keys_guard = threading.Lock()
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}
        self._idempotency: dict[tuple[str, str], _IdempotencyRecord] = {}
        self._faults: list[_ArmedFault] = []
        self._gate = threading.Event()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None
        # Objects are stored as their wire dicts; invoices get their lines when rendered.
        self._store: dict[str, Obj] = {}
        self._ids_by_kind: dict[str, list[str]] = {kind: [] for kind in KINDS}
        self._kind_of: dict[str, str] = {}
        self._seq: dict[str, int] = {}
        self._next_seq = 0
        self._deleted: set[str] = set()
        self._items_of: dict[str, list[str]] = {}  # invoice id -> invoice item ids, in order
        self._line_of: dict[str, str] = {}  # invoice item id -> its line item id
        self._credit_of: dict[str, int] = {}  # credit note id -> credit_amount it granted
        self._issued_ids: set[str] = set()  # every id handed out, line items included
        self._routes = self._build_routes()

    # lifecycle

    def start(self) -> FakeStripe:
        if self._httpd is not None or self._stopping.is_set():
            raise RuntimeError("FakeStripe can be started once")
        self._httpd = _HTTPServer(self)
        port = self._httpd.server_address[1]
        self._url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-stripe-{port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()  # wakes "timeout" sleepers
        self.release()  # and hung requests
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeStripe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("FakeStripe is not started")
        return self._url

    # faults

    def add_fault(self, fault: Fault) -> None:
        armed = _ArmedFault(fault, re.compile(fault.path), fault.skip, fault.times)
        with self._control:
            self._faults.append(armed)

    def release(self) -> None:
        """Let every hung request go (each then closes its connection without a response)."""
        with self._control:
            self._gate.set()
            self._gate = threading.Event()
            self.hung.clear()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._control:
            for armed in self._faults:
                fault = armed.fault
                if armed.times_left <= 0 or fault.method not in ("*", method):
                    continue
                if not armed.pattern.fullmatch(path):
                    continue
                if armed.skip_left > 0:
                    armed.skip_left -= 1
                    return None
                armed.times_left -= 1
                return fault
        return None

    # inspection

    def objects(self, kind: str) -> list[Obj]:
        """Live (not deleted) objects of a kind, oldest first."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KINDS)}")
        with self._lock:
            live = [self._store[i] for i in self._ids_by_kind[kind] if i not in self._deleted]
            return [self._render(obj) for obj in sorted(live, key=self._order_key)]

    def get(self, object_id: str) -> Obj | None:
        with self._lock:
            obj = self._store.get(object_id)
            if obj is None or object_id in self._deleted:
                return None
            return self._render(obj)

    # back-office helpers: what a person would do in the Dashboard, without HTTP

    def pay_invoice(self, invoice_id: str, amount: int | None = None) -> Obj:
        """Pay an open or uncollectible invoice in full (default) or in part."""
        with self._lock:
            invoice = self._find("invoice", invoice_id)
            self._pay(invoice, amount)
            return self._render(invoice)

    def void_invoice(self, invoice_id: str) -> Obj:
        with self._lock:
            invoice = self._find("invoice", invoice_id)
            self._void(invoice)
            return self._render(invoice)

    def set_invoice_total(self, invoice_id: str, total: int) -> Obj:
        """Tamper with an invoice's amounts, even once finalized (nothing else changes)."""
        with self._lock:
            invoice = self._find("invoice", invoice_id)
            invoice["total"] = invoice["subtotal"] = total
            invoice["total_excluding_tax"] = invoice["subtotal_excluding_tax"] = total
            self._settle(invoice)
            return self._render(invoice)

    def delete_invoice(self, invoice_id: str) -> None:
        """Remove any invoice, whatever its status, with its invoice items."""
        with self._lock:
            invoice = self._find("invoice", invoice_id)
            self._delete_invoice(invoice)

    def refund_charge(self, charge_id: str, amount: int | None = None) -> Obj:
        with self._lock:
            charge = self._find("charge", charge_id)
            return self._render(self._refund(charge, amount))

    def set_created(self, object_id: str, created: int) -> Obj:
        """Backdate (or postdate) an object, to test ``created`` filters and ordering."""
        with self._lock:
            obj = self._store.get(object_id)
            if obj is None:
                raise FakeStripeError(404, f"No such object: '{object_id}'", param="id")
            obj["created" if "created" in obj else "date"] = created
            return self._render(obj)

    # request handling

    def _serve(self, handler: _Handler) -> None:
        method = handler.command
        url = urlsplit(handler.path)
        path = url.path
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length > 0 else b""
        key = handler.headers.get("Idempotency-Key") if method == "POST" else None
        log = RequestLog(method, path, key)
        with self._control:
            self.requests.append(log)
        fault = self._take_fault(method, path)
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
    ) -> _Reply:
        try:
            api_key = self._authenticate(auth)
            try:
                raw = body.decode("utf-8") if method == "POST" else query
            except UnicodeDecodeError:
                raise FakeStripeError(400, "The request body is not valid UTF-8.") from None
            params = parse_form(parse_qsl(raw, keep_blank_values=True))
        except FakeStripeError as error:
            return _Reply(error.status, _dump(error.body()))
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
                    return _Reply(record.status, record.body, replayed=True)
                return self._idempotency_conflict(key, record.fingerprint, fingerprint)
            reply = self._execute(method, path, params)
            if reply.status < 500:  # Stripe keeps 4xx results too, so they replay
                self._idempotency[slot] = _IdempotencyRecord(fingerprint, reply.status, reply.body)
            return reply

    @staticmethod
    def _idempotency_conflict(
        key: str, first: tuple[str, str, str], second: tuple[str, str, str]
    ) -> _Reply:
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
        return _Reply(400, _dump(error.body()))

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
            raise FakeStripeError(401, f"Invalid API Key provided: {_mask(key)}")
        return key

    def _execute(self, method: str, path: str, params: Params) -> _Reply:
        try:
            for route_method, pattern, handler in self._routes:
                match = pattern.fullmatch(path)
                if match is not None and route_method == method:
                    ids = [unquote(group) for group in match.groups()]
                    with self._lock:
                        result = handler(params, *ids)
                        result = self._expand(result, params)
                    return _Reply(200, _dump(result))
            raise FakeStripeError(
                404,
                f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
                "or we can help at https://support.stripe.com/.",
            )
        except FakeStripeError as error:
            return _Reply(error.status, _dump(error.body()))
        except Exception as error:  # a bug in this fake: say so, and tell the SDK not to retry
            traceback.print_exc()
            body = {
                "error": {
                    "type": "api_error",
                    "message": f"FakeStripe bug: {type(error).__name__}: {error}",
                }
            }
            return _Reply(500, _dump(body), headers={"Stripe-Should-Retry": "false"})

    def _send(self, handler: _Handler, log: RequestLog, reply: _Reply, key: str | None) -> None:
        # Log before writing: the client may look at the log as soon as it has the response.
        log.status = reply.status
        log.replayed = reply.replayed
        try:
            handler.send_response(reply.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(reply.body)))
            handler.send_header("Request-Id", f"req_{_token(14)}")
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

    def _inject(self, handler: _Handler, log: RequestLog, fault: Fault, key: str | None) -> None:
        log.fault = fault.action
        if fault.action == "429":
            error = FakeStripeError(
                429,
                "Too many requests hit the API too quickly. We recommend an exponential backoff "
                "of your requests.",
                code="rate_limit",
            )
            self._send(handler, log, _Reply(429, _dump(error.body())), key)
            return
        if fault.action == "500":
            error = FakeStripeError(
                500,
                "An unknown error occurred while processing your request (injected fault).",
                error_type="api_error",
            )
            reply = _Reply(500, _dump(error.body()), headers={"Stripe-Should-Retry": "true"})
            self._send(handler, log, reply, key)
            return
        if fault.action == "timeout":
            self._stopping.wait(fault.delay)
        elif fault.action == "hang":
            with self._control:
                gate = self._gate
                self.hung.set()
            gate.wait()
        handler.close_connection = True  # no response: the server closes the socket

    # routing

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], Callable[..., Obj]]]:
        one = "([^/]+)"
        table: list[tuple[str, str, Callable[..., Obj]]] = [
            ("POST", "/v1/customers", self._create_customer),
            ("GET", "/v1/customers", self._list_customers),
            ("GET", f"/v1/customers/{one}", self._getter("customer")),
            ("POST", f"/v1/customers/{one}", self._update_customer),
            ("DELETE", f"/v1/customers/{one}", self._delete_customer),
            ("POST", "/v1/invoiceitems", self._create_invoiceitem),
            ("GET", "/v1/invoiceitems", self._list_invoiceitems),
            ("GET", f"/v1/invoiceitems/{one}", self._getter("invoiceitem")),
            ("POST", f"/v1/invoiceitems/{one}", self._update_invoiceitem),
            ("DELETE", f"/v1/invoiceitems/{one}", self._delete_invoiceitem),
            ("POST", "/v1/invoices", self._create_invoice),
            ("GET", "/v1/invoices", self._list_invoices),
            ("GET", f"/v1/invoices/{one}", self._getter("invoice")),
            ("POST", f"/v1/invoices/{one}", self._update_invoice),
            ("DELETE", f"/v1/invoices/{one}", self._delete_draft_invoice),
            ("GET", f"/v1/invoices/{one}/lines", self._list_invoice_lines),
            ("POST", f"/v1/invoices/{one}/finalize", self._finalize_invoice),
            ("POST", f"/v1/invoices/{one}/pay", self._pay_invoice_api),
            ("POST", f"/v1/invoices/{one}/void", self._void_invoice_api),
            ("POST", f"/v1/invoices/{one}/mark_uncollectible", self._mark_uncollectible),
            ("GET", "/v1/invoice_payments", self._list_invoice_payments),
            ("GET", f"/v1/invoice_payments/{one}", self._getter("invoice_payment")),
            ("GET", "/v1/payment_intents", self._list_payment_intents),
            ("GET", f"/v1/payment_intents/{one}", self._getter("payment_intent")),
            ("GET", "/v1/charges", self._list_charges),
            ("GET", f"/v1/charges/{one}", self._getter("charge")),
            ("POST", "/v1/refunds", self._create_refund),
            ("GET", "/v1/refunds", self._list_refunds),
            ("GET", f"/v1/refunds/{one}", self._getter("refund")),
            ("POST", "/v1/credit_notes", self._create_credit_note),
            ("GET", "/v1/credit_notes", self._list_credit_notes),
            ("GET", f"/v1/credit_notes/{one}", self._getter("credit_note")),
            ("GET", f"/v1/credit_notes/{one}/lines", self._list_credit_note_lines),
            ("POST", f"/v1/credit_notes/{one}/void", self._void_credit_note),
        ]
        return [(method, re.compile(path), handler) for method, path, handler in table]

    # storage

    def _new(self, kind: str, fields: Obj, *, stamp: str = "created") -> Obj:
        object_id = self._unique_id(KINDS[kind])
        obj: Obj = {"id": object_id, "object": kind, stamp: _now()}
        if kind != "refund":  # the one kind here without the field
            obj["livemode"] = False
        obj.update(fields)
        self._store[object_id] = obj
        self._ids_by_kind[kind].append(object_id)
        self._kind_of[object_id] = kind
        self._seq[object_id] = self._next_seq
        self._next_seq += 1
        return obj

    def _unique_id(self, prefix: str) -> str:
        while True:
            candidate = f"{prefix}_{_token()}"
            if candidate not in self._store and candidate not in self._issued_ids:
                self._issued_ids.add(candidate)
                return candidate

    def _order_key(self, obj: Obj) -> tuple[int, int]:
        return (_created(obj), self._seq[obj["id"]])

    def _find(self, kind: str, object_id: str | None, *, param: str | None = None) -> Obj:
        """The live object, or Stripe's resource_missing: 404 for the path id, 400 for a
        parameter that names an object."""
        obj = self._store.get(object_id or "")
        if obj is None or object_id in self._deleted or self._kind_of.get(object_id or "") != kind:
            raise FakeStripeError(
                400 if param else 404,
                f"No such {kind}: '{object_id}'",
                code="resource_missing",
                param=param or "id",
            )
        return obj

    def _render(self, obj: Obj) -> Obj:
        out = copy.deepcopy(obj)
        if obj["object"] == "invoice":
            lines = self._invoice_lines(obj)
            out["lines"] = {
                "object": "list",
                "data": lines[:EMBEDDED_LINES],
                "has_more": len(lines) > EMBEDDED_LINES,
                "total_count": len(lines),
                "url": f"/v1/invoices/{obj['id']}/lines",
            }
        return out

    def _getter(self, kind: str) -> Callable[[Params, str], Obj]:
        def retrieve(params: Params, object_id: str) -> Obj:
            _allow(params, ("expand",))
            return self._render(self._find(kind, object_id))

        return retrieve

    def _expand(self, result: Obj, params: Params) -> Obj:
        """Stripe's ``expand[]``: replace named id fields with the objects they point to."""
        raw = params.get("expand")
        if raw is None:
            return result
        for index, path in enumerate(_as_list(raw, "expand")):
            if not isinstance(path, str):
                raise FakeStripeError(400, "Invalid expand", param=f"expand[{index}]")
            self._expand_path(result, path.split("."), path)
        return result

    def _expand_path(self, node: Obj, parts: list[str], path: str) -> None:
        head, rest = parts[0], parts[1:]
        if node.get("object") == "list" and head == "data" and rest:
            for item in node["data"]:
                self._expand_path(item, rest, path)
            return
        if head == "payments" and node.get("object") == "invoice":
            payments = [
                self._render(p) for p in self._live("invoice_payment") if p["invoice"] == node["id"]
            ]
            node["payments"] = {
                "object": "list",
                "data": payments[::-1],
                "has_more": False,
                "url": f"/v1/invoice_payments?invoice={node['id']}",
            }
            value = node["payments"]
        else:
            value = node.get(head)
            if value is None and head in node:
                return  # expanding a null field gives null
            if isinstance(value, str) and value in self._store:
                value = node[head] = self._render(self._store[value])
            elif not isinstance(value, dict):
                raise FakeStripeError(
                    400, f"This property cannot be expanded ({path}).", param="expand"
                )
        if rest:
            self._expand_path(value, rest, path)

    def _live(self, kind: str) -> list[Obj]:
        return [self._store[i] for i in self._ids_by_kind[kind] if i not in self._deleted]

    # pagination

    def _page(
        self,
        ordered: list[Obj],
        keep: Callable[[Obj], bool],
        params: Params,
        url: str,
        missing: Callable[[str, str], FakeStripeError],
        render: Callable[[Obj], Obj] | None = None,
    ) -> Obj:
        """Cursor pagination over ``ordered`` (display order), as Stripe pages lists."""
        limit = _int(params, "limit", minimum=1, maximum=100)
        limit = 10 if limit is None else limit
        after = _str(params, "starting_after")
        before = _str(params, "ending_before")
        if after and before:
            raise FakeStripeError(
                400,
                "Received both starting_after and ending_before parameters. Please pass in only "
                "one.",
            )
        position = {obj["id"]: index for index, obj in enumerate(ordered)}
        rows = [(index, obj) for index, obj in enumerate(ordered) if keep(obj)]
        if after:
            if after not in position:
                raise missing(after, "starting_after")
            rows = [row for row in rows if row[0] > position[after]]
            page, has_more = rows[:limit], len(rows) > limit
        elif before:
            if before not in position:
                raise missing(before, "ending_before")
            rows = [row for row in rows if row[0] < position[before]]
            page, has_more = rows[-limit:], len(rows) > limit
        else:
            page, has_more = rows[:limit], len(rows) > limit
        render = render or self._render
        data = [render(obj) for _, obj in page]
        return {"object": "list", "data": data, "has_more": has_more, "url": url}

    def _page_top(self, kind: str, params: Params, url: str, keep: Callable[[Obj], bool]) -> Obj:
        """A top-level list: newest first. Deleted objects still work as cursors."""
        everything = sorted(
            (self._store[i] for i in self._ids_by_kind[kind]), key=self._order_key, reverse=True
        )

        def missing(cursor: str, param: str) -> FakeStripeError:
            return FakeStripeError(
                400, f"No such {kind}: '{cursor}'", code="resource_missing", param=param
            )

        return self._page(
            everything,
            lambda obj: obj["id"] not in self._deleted and keep(obj),
            params,
            url,
            missing,
        )

    # customers

    def _create_customer(self, params: Params) -> Obj:
        _allow(params, ("name", "email", "description", "metadata", "invoice_prefix", "expand"))
        prefix = _str(params, "invoice_prefix")
        if prefix is not None and not re.fullmatch(r"[A-Z0-9]{3,12}", prefix):
            raise FakeStripeError(
                400,
                "Invoice prefix must be 3 to 12 uppercase letters or numbers.",
                param="invoice_prefix",
            )
        customer = self._new(
            "customer",
            {
                "name": _str(params, "name"),
                "email": _str(params, "email"),
                "description": _str(params, "description"),
                "metadata": _metadata(params),
                "balance": 0,
                "currency": None,
                "delinquent": False,
                "invoice_prefix": prefix or secrets.token_hex(4).upper(),
                "next_invoice_sequence": 1,
            },
        )
        return self._render(customer)

    def _update_customer(self, params: Params, customer_id: str) -> Obj:
        _allow(params, ("name", "email", "description", "metadata", "expand"))
        customer = self._find("customer", customer_id)
        for name in ("name", "email", "description"):
            if name in params:
                value = _str(params, name)
                customer[name] = value or None  # "" unsets, as in Stripe
        customer["metadata"] = _metadata(params, customer["metadata"])
        return self._render(customer)

    def _delete_customer(self, params: Params, customer_id: str) -> Obj:
        _allow(params, ())
        customer = self._find("customer", customer_id)
        self._deleted.add(customer["id"])
        return {"id": customer["id"], "object": "customer", "deleted": True}

    def _list_customers(self, params: Params) -> Obj:
        _allow(params, _LIST_PARAMS | {"email", "created"})
        email = _str(params, "email")
        created = _created_filter(params)
        return self._page_top(
            "customer",
            params,
            "/v1/customers",
            lambda c: (email is None or c["email"] == email) and created(c),
        )

    # invoice items

    def _create_invoiceitem(self, params: Params) -> Obj:
        _allow(
            params,
            (
                "customer",
                "amount",
                "currency",
                "description",
                "invoice",
                "metadata",
                "period",
                "quantity",
                "discountable",
                "expand",
            ),
        )
        customer = self._find("customer", _str(params, "customer", required=True), param="customer")
        invoice = None
        invoice_id = _str(params, "invoice")
        if invoice_id:
            invoice = self._find("invoice", invoice_id, param="invoice")
            if invoice["customer"] != customer["id"]:
                raise FakeStripeError(
                    400,
                    f"The invoice {invoice_id} belongs to customer {invoice['customer']}, not "
                    f"{customer['id']}.",
                    param="invoice",
                )
            self._require_draft(invoice, "add invoice items to", param="invoice")
        currency = _currency(params)
        if currency is None:
            if invoice is None:
                raise _missing("currency")
            currency = invoice["currency"]
        if invoice is not None and currency != invoice["currency"]:
            raise FakeStripeError(
                400,
                f"The currency of an invoice item ({currency}) must match the currency of its "
                f"invoice ({invoice['currency']}).",
                param="currency",
            )
        amount = _int(params, "amount", required=True)
        assert amount is not None
        _check_amount(amount, currency, "amount")
        now = _now()
        period = self._period(params, now)
        item = self._new(
            "invoiceitem",
            {
                "amount": amount,
                "currency": currency,
                "customer": customer["id"],
                "description": _str(params, "description"),
                "discountable": _bool(params, "discountable") is not False,
                "invoice": None,
                "metadata": _metadata(params),
                "period": period,
                "proration": False,
                "quantity": _int(params, "quantity", minimum=1) or 1,
            },
            stamp="date",
        )
        if invoice is not None:
            self._attach(item, invoice)
            self._recalc(invoice)
        return self._render(item)

    @staticmethod
    def _period(params: Params, default: int) -> dict[str, int]:
        raw = params.get("period")
        if raw is None:
            return {"start": default, "end": default}
        if not isinstance(raw, dict):
            raise FakeStripeError(400, "Invalid object: period must be a hash", param="period")
        _allow(raw, ("start", "end"), where="period")
        start = _int(raw, "start", required=True, where="period")
        end = _int(raw, "end", required=True, where="period")
        assert start is not None and end is not None
        if end < start:
            raise FakeStripeError(400, "The period end must be after its start.", param="period")
        return {"start": start, "end": end}

    def _update_invoiceitem(self, params: Params, item_id: str) -> Obj:
        _allow(params, ("amount", "description", "metadata", "period", "quantity", "expand"))
        item = self._find("invoiceitem", item_id)
        invoice = self._store[item["invoice"]] if item["invoice"] else None
        if invoice is not None:
            self._require_draft(invoice, "update invoice items of")
        amount = _int(params, "amount")
        if amount is not None:
            _check_amount(amount, item["currency"], "amount")
        period = self._period(params, 0) if "period" in params else item["period"]
        quantity = _int(params, "quantity", minimum=1)
        metadata = _metadata(params, item["metadata"])
        if amount is not None:
            item["amount"] = amount
        if "description" in params:
            item["description"] = _str(params, "description") or None
        item["period"], item["metadata"] = period, metadata
        if quantity is not None:
            item["quantity"] = quantity
        if invoice is not None:
            self._recalc(invoice)
        return self._render(item)

    def _delete_invoiceitem(self, params: Params, item_id: str) -> Obj:
        _allow(params, ())
        item = self._find("invoiceitem", item_id)
        invoice = self._store[item["invoice"]] if item["invoice"] else None
        if invoice is not None:
            self._require_draft(invoice, "delete invoice items of")
        self._deleted.add(item["id"])
        if invoice is not None:
            self._recalc(invoice)
        return {"id": item["id"], "object": "invoiceitem", "deleted": True}

    def _list_invoiceitems(self, params: Params) -> Obj:
        _allow(params, _LIST_PARAMS | {"customer", "invoice", "pending", "created"})
        customer = _str(params, "customer")
        invoice = _str(params, "invoice")
        pending = _bool(params, "pending")
        created = _created_filter(params)

        def keep(item: Obj) -> bool:
            return (
                (customer is None or item["customer"] == customer)
                and (invoice is None or item["invoice"] == invoice)
                and (pending is None or (item["invoice"] is None) == pending)
                and created(item)
            )

        return self._page_top("invoiceitem", params, "/v1/invoiceitems", keep)

    # invoices

    def _create_invoice(self, params: Params) -> Obj:
        _allow(
            params,
            (
                "customer",
                "currency",
                "auto_advance",
                "collection_method",
                "days_until_due",
                "due_date",
                "description",
                "footer",
                "metadata",
                "number",
                "pending_invoice_items_behavior",
                "expand",
            ),
        )
        customer = self._find("customer", _str(params, "customer", required=True), param="customer")
        currency = _currency(params) or "usd"  # Stripe falls back to the account's currency
        method = _enum(params, "collection_method", ("charge_automatically", "send_invoice"))
        method = method or "charge_automatically"
        now = _now()
        due_date = self._terms(params, method, now)
        behavior = _enum(params, "pending_invoice_items_behavior", ("include", "exclude"))
        number = _str(params, "number") or None
        invoice = self._new(
            "invoice",
            {
                "created": now,
                "customer": customer["id"],
                "customer_email": customer["email"],
                "customer_name": customer["name"],
                "currency": currency,
                "status": "draft",
                "billing_reason": "manual",
                "collection_method": method,
                "auto_advance": _bool(params, "auto_advance") is True,
                "due_date": due_date,
                "description": _str(params, "description") or None,
                "footer": _str(params, "footer") or None,
                "metadata": _metadata(params),
                "number": number,
                "subtotal": 0,
                "subtotal_excluding_tax": 0,
                "total": 0,
                "total_excluding_tax": 0,
                "starting_balance": 0,
                "amount_due": 0,
                "amount_paid": 0,
                "amount_remaining": 0,
                "pre_payment_credit_notes_amount": 0,
                "post_payment_credit_notes_amount": 0,
                "attempted": False,
                "effective_at": None,
                "period_start": now,
                "period_end": now,
                "status_transitions": {
                    "finalized_at": None,
                    "marked_uncollectible_at": None,
                    "paid_at": None,
                    "voided_at": None,
                },
            },
        )
        if behavior == "include":  # Stripe's default for this API version is "exclude"
            for item in self._live("invoiceitem"):
                if (
                    item["invoice"] is None
                    and item["customer"] == customer["id"]
                    and item["currency"] == currency
                ):
                    self._attach(item, invoice)
            self._recalc(invoice)
        return self._render(invoice)

    @staticmethod
    def _terms(params: Params, method: str, created: int) -> int | None:
        """The due date: only send_invoice invoices have one; days count from creation."""
        days = _int(params, "days_until_due", minimum=0)
        due_date = _int(params, "due_date")
        if method == "charge_automatically" and (days is not None or due_date is not None):
            param = "days_until_due" if days is not None else "due_date"
            raise FakeStripeError(
                400,
                f"Invoices with `collection_method=charge_automatically` cannot have `{param}`.",
                param=param,
            )
        if method == "send_invoice" and due_date is None:
            days = 30 if days is None else days  # 30: the account's default payment terms
            due_date = created + days * 86400
        return due_date

    def _require_draft(self, invoice: Obj, action: str, *, param: str | None = None) -> None:
        if invoice["status"] != "draft":
            raise FakeStripeError(
                400,
                f"You can only {action} a draft invoice; invoice {invoice['id']} is "
                f"{invoice['status']}. Consider creating a credit note instead.",
                code="invoice_not_editable",
                param=param,
            )

    def _attach(self, item: Obj, invoice: Obj) -> None:
        item["invoice"] = invoice["id"]
        self._items_of.setdefault(invoice["id"], []).append(item["id"])
        self._line_of[item["id"]] = self._unique_id("il")

    def _invoice_items(self, invoice: Obj) -> list[Obj]:
        ids = self._items_of.get(invoice["id"], [])
        return [self._store[i] for i in ids if i not in self._deleted]

    def _invoice_lines(self, invoice: Obj) -> list[Obj]:
        return [
            {
                "id": self._line_of[item["id"]],
                "object": "line_item",
                "amount": item["amount"],
                "currency": item["currency"],
                "description": item["description"],
                "discountable": item["discountable"],
                "invoice": invoice["id"],
                "livemode": False,
                "metadata": dict(item["metadata"]),
                "parent": {
                    "type": "invoice_item_details",
                    "invoice_item_details": {
                        "invoice_item": item["id"],
                        "proration": False,
                        "subscription": None,
                    },
                    "subscription_item_details": None,
                },
                "period": dict(item["period"]),
                "quantity": item["quantity"],
            }
            for item in self._invoice_items(invoice)
        ]

    def _recalc(self, invoice: Obj) -> None:
        """A draft's totals follow its items; a finalized invoice's are frozen."""
        if invoice["status"] != "draft":
            return
        total = sum(item["amount"] for item in self._invoice_items(invoice))
        invoice["subtotal"] = invoice["subtotal_excluding_tax"] = total
        invoice["total"] = invoice["total_excluding_tax"] = total
        self._settle(invoice)

    @staticmethod
    def _settle(invoice: Obj) -> None:
        """amount_due/amount_remaining from the total, pre-payment credit and payments (a
        negative total owes nothing; Stripe would credit the customer's balance)."""
        due = max(0, invoice["total"]) - invoice["pre_payment_credit_notes_amount"]
        invoice["amount_due"] = max(0, due)
        invoice["amount_remaining"] = max(0, invoice["amount_due"] - invoice["amount_paid"])

    def _update_invoice(self, params: Params, invoice_id: str) -> Obj:
        _allow(
            params,
            (
                "metadata",
                "description",
                "footer",
                "auto_advance",
                "collection_method",
                "days_until_due",
                "due_date",
                "number",
                "expand",
            ),
        )
        invoice = self._find("invoice", invoice_id)
        draft_only = {"collection_method", "days_until_due", "due_date", "number"}
        if draft_only & set(params):
            self._require_draft(invoice, f"update {sorted(draft_only & set(params))[0]} of")
        if "auto_advance" in params and invoice["status"] not in ("draft", "open"):
            self._require_draft(invoice, "update auto_advance of")
        metadata = _metadata(params, invoice["metadata"])
        updates: Obj = {}
        if "collection_method" in params or "days_until_due" in params or "due_date" in params:
            method = _enum(params, "collection_method", ("charge_automatically", "send_invoice"))
            method = method or invoice["collection_method"]
            due_date = self._terms(params, method, invoice["created"])
            updates.update(collection_method=method, due_date=due_date)
        for name in ("description", "footer", "number"):
            if name in params:
                updates[name] = _str(params, name) or None
        if "auto_advance" in params:
            updates["auto_advance"] = _bool(params, "auto_advance")
        invoice.update(updates)
        invoice["metadata"] = metadata
        return self._render(invoice)

    def _finalize_invoice(self, params: Params, invoice_id: str) -> Obj:
        _allow(params, ("auto_advance", "expand"))
        invoice = self._find("invoice", invoice_id)
        auto_advance = _bool(params, "auto_advance")
        self._finalize(invoice)
        if auto_advance is not None:
            invoice["auto_advance"] = auto_advance
        return self._render(invoice)

    def _finalize(self, invoice: Obj) -> None:
        if invoice["status"] != "draft":
            raise FakeStripeError(
                400,
                "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                code="invoice_not_editable",
            )
        customer = self._store[invoice["customer"]]
        now = _now()
        if invoice["number"] is None:
            sequence = customer["next_invoice_sequence"]
            invoice["number"] = f"{customer['invoice_prefix']}-{sequence:04d}"
            customer["next_invoice_sequence"] = sequence + 1
        invoice["status"] = "open"
        invoice["status_transitions"]["finalized_at"] = now
        invoice["effective_at"] = now
        self._settle(invoice)
        if invoice["amount_remaining"] == 0:  # nothing to collect: Stripe marks it paid
            self._mark_paid(invoice, now)

    @staticmethod
    def _mark_paid(invoice: Obj, now: int) -> None:
        invoice["status"] = "paid"
        invoice["status_transitions"]["paid_at"] = now

    def _pay_invoice_api(self, params: Params, invoice_id: str) -> Obj:
        _allow(params, ("paid_out_of_band", "forgive", "off_session", "expand"))
        invoice = self._find("invoice", invoice_id)
        _bool(params, "paid_out_of_band")  # either way the same path as FakeStripe.pay_invoice
        _bool(params, "forgive")
        _bool(params, "off_session")
        if invoice["status"] == "draft":  # Stripe finalizes a draft before paying it
            self._finalize(invoice)
            if invoice["status"] == "paid":
                return self._render(invoice)
        self._pay(invoice, None)
        return self._render(invoice)

    def _pay(self, invoice: Obj, amount: int | None) -> None:
        """Take a payment on an invoice: a succeeded payment intent, its charge and an invoice
        payment, then amount_paid/amount_remaining and, once nothing remains, status paid."""
        status = invoice["status"]
        if status == "paid" or (
            status in ("open", "uncollectible") and invoice["amount_remaining"] == 0
        ):
            raise FakeStripeError(400, "Invoice is already paid", code="invoice_already_paid")
        if status not in ("open", "uncollectible"):
            raise FakeStripeError(
                400,
                f"You can't pay an invoice with status {status}; only open or uncollectible "
                "invoices can be paid.",
            )
        remaining = invoice["amount_remaining"]
        amount = remaining if amount is None else amount
        if not 0 < amount <= remaining:
            raise FakeStripeError(
                400,
                f"The payment amount ({amount}) must be between 1 and the invoice's amount "
                f"remaining ({remaining}).",
                param="amount",
            )
        currency = invoice["currency"]
        _check_amount(amount, currency, "amount")
        now = _now()
        intent = self._new(
            "payment_intent",
            {
                "amount": amount,
                "amount_capturable": 0,
                "amount_received": amount,
                "capture_method": "automatic",
                "currency": currency,
                "customer": invoice["customer"],
                "description": f"Payment for Invoice {invoice['number']}",
                "latest_charge": None,
                "metadata": {},
                "payment_method": None,
                "status": "succeeded",
            },
        )
        charge = self._new(
            "charge",
            {
                "amount": amount,
                "amount_captured": amount,
                "amount_refunded": 0,
                "captured": True,
                "currency": currency,
                "customer": invoice["customer"],
                "description": intent["description"],
                "disputed": False,
                "metadata": {},
                "paid": True,
                "payment_intent": intent["id"],
                "refunded": False,
                "status": "succeeded",
            },
        )
        intent["latest_charge"] = charge["id"]
        first = not any(p["invoice"] == invoice["id"] for p in self._live("invoice_payment"))
        self._new(
            "invoice_payment",
            {
                "amount_paid": amount,
                "amount_requested": amount,
                "currency": currency,
                "invoice": invoice["id"],
                "is_default": first,
                "payment": {"type": "payment_intent", "payment_intent": intent["id"]},
                "status": "paid",
                "status_transitions": {"canceled_at": None, "paid_at": now},
            },
        )
        invoice["amount_paid"] += amount
        invoice["attempted"] = True
        self._settle(invoice)
        if invoice["amount_remaining"] == 0:
            self._mark_paid(invoice, now)

    def _void_invoice_api(self, params: Params, invoice_id: str) -> Obj:
        _allow(params, ("expand",))
        invoice = self._find("invoice", invoice_id)
        self._void(invoice)
        return self._render(invoice)

    @staticmethod
    def _void(invoice: Obj) -> None:
        if invoice["status"] not in ("open", "uncollectible"):
            raise FakeStripeError(
                400,
                f"You can only void open or uncollectible invoices; invoice {invoice['id']} is "
                f"{invoice['status']}.",
            )
        invoice["status"] = "void"
        invoice["status_transitions"]["voided_at"] = _now()

    def _mark_uncollectible(self, params: Params, invoice_id: str) -> Obj:
        _allow(params, ("expand",))
        invoice = self._find("invoice", invoice_id)
        if invoice["status"] != "open":
            raise FakeStripeError(
                400,
                f"You can only mark open invoices uncollectible; invoice {invoice['id']} is "
                f"{invoice['status']}.",
            )
        invoice["status"] = "uncollectible"
        invoice["status_transitions"]["marked_uncollectible_at"] = _now()
        return self._render(invoice)

    def _delete_draft_invoice(self, params: Params, invoice_id: str) -> Obj:
        _allow(params, ())
        invoice = self._find("invoice", invoice_id)
        if invoice["status"] != "draft":
            raise FakeStripeError(
                400,
                "You can only delete draft invoices. Finalized invoices can be voided instead.",
                code="invoice_not_editable",
            )
        self._delete_invoice(invoice)
        return {"id": invoice["id"], "object": "invoice", "deleted": True}

    def _delete_invoice(self, invoice: Obj) -> None:
        self._deleted.add(invoice["id"])
        self._deleted.update(self._items_of.get(invoice["id"], []))

    def _list_invoices(self, params: Params) -> Obj:
        _allow(params, _LIST_PARAMS | {"customer", "status", "collection_method", "created"})
        customer = _str(params, "customer")
        status = _enum(params, "status", INVOICE_STATUSES)
        method = _enum(params, "collection_method", ("charge_automatically", "send_invoice"))
        created = _created_filter(params)

        def keep(invoice: Obj) -> bool:
            return (
                (customer is None or invoice["customer"] == customer)
                and (status is None or invoice["status"] == status)
                and (method is None or invoice["collection_method"] == method)
                and created(invoice)
            )

        return self._page_top("invoice", params, "/v1/invoices", keep)

    def _list_invoice_lines(self, params: Params, invoice_id: str) -> Obj:
        _allow(params, _LIST_PARAMS)
        invoice = self._find("invoice", invoice_id)

        def missing(cursor: str, param: str) -> FakeStripeError:
            return FakeStripeError(
                400,
                f"Invoice {invoice_id} does not have a line item {cursor}",
                code="resource_missing",
                param=param,
            )

        url = f"/v1/invoices/{invoice_id}/lines"
        lines = self._invoice_lines(invoice)
        return self._page(lines, lambda line: True, params, url, missing, lambda line: line)

    # invoice payments, payment intents, charges

    def _list_invoice_payments(self, params: Params) -> Obj:
        _allow(params, _LIST_PARAMS | {"invoice", "payment", "status", "created"})
        invoice = _str(params, "invoice")
        status = _enum(params, "status", ("canceled", "open", "paid"))
        created = _created_filter(params)
        payment = params.get("payment")
        kind = intent = None
        if payment is not None:
            if not isinstance(payment, dict):
                raise FakeStripeError(
                    400, "Invalid object: payment must be a hash", param="payment"
                )
            _allow(payment, ("type", "payment_intent"), where="payment")
            # Stripe requires payment[type] with any payment filter.
            kind = _enum(
                payment,
                "type",
                ("payment_intent", "payment_record"),
                required=True,
                where="payment",
            )
            intent = _str(payment, "payment_intent", where="payment")

        def keep(record: Obj) -> bool:
            return (
                (invoice is None or record["invoice"] == invoice)
                and (status is None or record["status"] == status)
                and (kind is None or record["payment"]["type"] == kind)
                and (intent is None or record["payment"]["payment_intent"] == intent)
                and created(record)
            )

        return self._page_top("invoice_payment", params, "/v1/invoice_payments", keep)

    def _list_payment_intents(self, params: Params) -> Obj:
        _allow(params, _LIST_PARAMS | {"customer", "created"})
        customer = _str(params, "customer")
        created = _created_filter(params)
        return self._page_top(
            "payment_intent",
            params,
            "/v1/payment_intents",
            lambda pi: (customer is None or pi["customer"] == customer) and created(pi),
        )

    def _list_charges(self, params: Params) -> Obj:
        _allow(params, _LIST_PARAMS | {"customer", "payment_intent", "created"})
        customer = _str(params, "customer")
        intent = _str(params, "payment_intent")
        created = _created_filter(params)

        def keep(charge: Obj) -> bool:
            return (
                (customer is None or charge["customer"] == customer)
                and (intent is None or charge["payment_intent"] == intent)
                and created(charge)
            )

        return self._page_top("charge", params, "/v1/charges", keep)

    # refunds

    def _create_refund(self, params: Params) -> Obj:
        _allow(params, ("charge", "payment_intent", "amount", "reason", "metadata", "expand"))
        charge_id = _str(params, "charge")
        intent_id = _str(params, "payment_intent")
        if not charge_id and not intent_id:
            raise FakeStripeError(
                400,
                "One of `charge` or `payment_intent` is required.",
                code="parameter_missing",
                param="charge",
            )
        if intent_id:
            intent = self._find("payment_intent", intent_id, param="payment_intent")
            if charge_id and charge_id != intent["latest_charge"]:
                raise FakeStripeError(
                    400,
                    f"Charge {charge_id} does not belong to payment intent {intent_id}.",
                    param="charge",
                )
            charge_id = intent["latest_charge"]
        charge = self._find("charge", charge_id, param="charge")
        amount = _int(params, "amount", minimum=1)
        reason = _enum(params, "reason", ("duplicate", "fraudulent", "requested_by_customer"))
        refund = self._refund(charge, amount, reason=reason, metadata=_metadata(params))
        return self._render(refund)

    def _refund(
        self,
        charge: Obj,
        amount: int | None,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Obj:
        refundable = charge["amount"] - charge["amount_refunded"]
        if refundable <= 0:
            raise FakeStripeError(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        currency = charge["currency"]
        amount = refundable if amount is None else amount
        if amount <= 0:
            raise FakeStripeError(400, "Invalid positive integer", param="amount")
        if amount > refundable:
            if charge["amount_refunded"] == 0:
                message = (
                    f"Refund amount ({_money(amount, currency)}) is greater than charge amount "
                    f"({_money(charge['amount'], currency)})"
                )
            else:
                message = (
                    f"Refund amount ({_money(amount, currency)}) is greater than unrefunded "
                    f"amount on charge ({_money(refundable, currency)})"
                )
            raise FakeStripeError(400, message, param="amount")
        _check_amount(amount, currency, "amount")
        refund = self._new(
            "refund",
            {
                "amount": amount,
                "charge": charge["id"],
                "currency": currency,
                "metadata": metadata or {},
                "payment_intent": charge["payment_intent"],
                "reason": reason,
                "status": "succeeded",
            },
        )
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        return refund

    def _list_refunds(self, params: Params) -> Obj:
        _allow(params, _LIST_PARAMS | {"charge", "payment_intent", "created"})
        charge = _str(params, "charge")
        intent = _str(params, "payment_intent")
        created = _created_filter(params)

        def keep(refund: Obj) -> bool:
            return (
                (charge is None or refund["charge"] == charge)
                and (intent is None or refund["payment_intent"] == intent)
                and created(refund)
            )

        return self._page_top("refund", params, "/v1/refunds", keep)

    # credit notes

    def _create_credit_note(self, params: Params) -> Obj:
        _allow(
            params,
            (
                "invoice",
                "amount",
                "lines",
                "credit_amount",
                "out_of_band_amount",
                "refund_amount",
                "memo",
                "metadata",
                "reason",
                "expand",
            ),
        )
        invoice = self._find("invoice", _str(params, "invoice", required=True), param="invoice")
        if invoice["status"] not in ("open", "paid"):
            raise FakeStripeError(
                400,
                f"Credit notes can only be issued for open or paid invoices; invoice "
                f"{invoice['id']} is {invoice['status']}.",
                param="invoice",
            )
        currency = invoice["currency"]
        amount = _int(params, "amount")
        if amount is not None:
            _check_amount(amount, currency, "amount")
        lines = self._credit_lines(params, invoice)
        if amount is None and not lines:
            raise FakeStripeError(
                400,
                "You must pass either `amount` or `lines`.",
                code="parameter_missing",
                param="amount",
            )
        total = sum(line["amount"] for line in lines) if lines else amount
        assert total is not None
        if amount is not None and lines and amount != total:
            raise FakeStripeError(
                400,
                f"The amount ({amount}) must equal the sum of the lines ({total}).",
                param="amount",
            )
        if total <= 0:
            raise FakeStripeError(
                400, "The credit note total must be greater than 0.", param="amount"
            )
        creditable = (
            max(0, invoice["total"])
            - invoice["pre_payment_credit_notes_amount"]
            - invoice["post_payment_credit_notes_amount"]
        )
        if total > creditable:
            raise FakeStripeError(
                400,
                f"The credit note total ({total}) is greater than the amount that can still be "
                f"credited on invoice {invoice['id']} ({creditable}).",
                param="amount",
            )
        # Up to amount_remaining of an open invoice lowers what is owed (pre-payment); the rest
        # credits money already paid and must be allocated (post-payment), as in Stripe.
        pre = min(total, invoice["amount_remaining"]) if invoice["status"] == "open" else 0
        post = total - pre
        allocation = {}
        for name in ("credit_amount", "out_of_band_amount", "refund_amount"):
            value = _int(params, name, minimum=0) or 0
            _check_amount(value, currency, name)
            allocation[name] = value
        allocated = sum(allocation.values())
        if allocated != post:
            what = "the credit note total" if pre == 0 else "the post-payment part of the note"
            raise FakeStripeError(
                400,
                f"The sum of credit_amount, out_of_band_amount and refund_amount ({allocated}) "
                f"must equal {what} ({post}).",
                param="credit_amount",
            )
        charges = self._refundable_charges(invoice, allocation["refund_amount"])
        memo = _str(params, "memo")
        reason = _enum(
            params,
            "reason",
            ("duplicate", "fraudulent", "order_change", "product_unsatisfactory"),
        )
        metadata = _metadata(params)
        # Everything is validated: apply.
        refunds = []
        to_refund = allocation["refund_amount"]
        for charge in charges:
            if to_refund == 0:
                break
            part = min(to_refund, charge["amount"] - charge["amount_refunded"])
            refund = self._refund(charge, part)
            refunds.append({"refund": refund["id"], "amount_refunded": part, "type": "refund"})
            to_refund -= part
        count = sum(1 for note in self._live("credit_note") if note["invoice"] == invoice["id"])
        now = _now()
        note = self._new(
            "credit_note",
            {
                "invoice": invoice["id"],
                "customer": invoice["customer"],
                "currency": currency,
                "amount": total,
                "amount_shipping": 0,
                "discount_amount": 0,
                "subtotal": total,
                "subtotal_excluding_tax": total,
                "total": total,
                "total_excluding_tax": total,
                "pre_payment_amount": pre,
                "post_payment_amount": post,
                "out_of_band_amount": allocation["out_of_band_amount"] or None,
                "refunds": refunds,
                "status": "issued",
                "type": "mixed" if pre and post else "pre_payment" if pre else "post_payment",
                "memo": memo,
                "metadata": metadata,
                "reason": reason,
                "number": f"{invoice['number']}-CN-{count + 1:02d}",
                "effective_at": now,
                "voided_at": None,
            },
        )
        note["lines"] = {
            "object": "list",
            "data": [
                {"id": self._unique_id("cnli"), "object": "credit_note_line_item", **line}
                for line in lines
            ],
            "has_more": False,
            "url": f"/v1/credit_notes/{note['id']}/lines",
        }
        self._credit_of[note["id"]] = allocation["credit_amount"]
        self._store[invoice["customer"]]["balance"] -= allocation["credit_amount"]
        invoice["pre_payment_credit_notes_amount"] += pre
        invoice["post_payment_credit_notes_amount"] += post
        self._settle(invoice)
        if invoice["status"] == "open" and invoice["amount_remaining"] == 0:
            self._mark_paid(invoice, now)
        return self._render(note)

    def _credit_lines(self, params: Params, invoice: Obj) -> list[Obj]:
        raw = params.get("lines")
        if raw is None:
            return []
        invoice_lines = {line["id"]: line for line in self._invoice_lines(invoice)}
        lines = []
        for index, line in enumerate(_as_list(raw, "lines")):
            where = f"lines[{index}]"
            if not isinstance(line, dict):
                raise FakeStripeError(400, f"Invalid object: {where} must be a hash", param=where)
            _allow(
                line,
                ("type", "unit_amount", "quantity", "description", "invoice_line_item", "amount"),
                where=where,
            )
            kind = _enum(
                line, "type", ("custom_line_item", "invoice_line_item"), required=True, where=where
            )
            quantity = _int(line, "quantity", minimum=1, where=where) or 1
            if kind == "custom_line_item":
                unit = _int(line, "unit_amount", required=True, minimum=0, where=where)
                description = _str(line, "description", required=True, where=where)
                assert unit is not None
                _check_amount(unit, invoice["currency"], f"{where}[unit_amount]")
                lines.append(
                    {
                        "type": kind,
                        "amount": unit * quantity,
                        "unit_amount": unit,
                        "quantity": quantity,
                        "description": description,
                        "invoice_line_item": None,
                        "discount_amount": 0,
                        "livemode": False,
                    }
                )
            else:
                line_id = _str(line, "invoice_line_item", required=True, where=where)
                if line_id not in invoice_lines:
                    raise FakeStripeError(
                        400,
                        f"Invoice {invoice['id']} does not have a line item {line_id}",
                        code="resource_missing",
                        param=f"{where}[invoice_line_item]",
                    )
                source = invoice_lines[line_id]
                amount = _int(line, "amount", minimum=0, where=where)
                amount = source["amount"] if amount is None else amount
                _check_amount(amount, invoice["currency"], f"{where}[amount]")
                lines.append(
                    {
                        "type": kind,
                        "amount": amount,
                        "unit_amount": None,
                        "quantity": quantity,
                        "description": source["description"],
                        "invoice_line_item": line_id,
                        "discount_amount": 0,
                        "livemode": False,
                    }
                )
        return lines

    def _refundable_charges(self, invoice: Obj, amount: int) -> list[Obj]:
        """The invoice's charges, newest first, checked to cover a refund of ``amount``."""
        charges = []
        for record in reversed(self._live("invoice_payment")):
            if record["invoice"] == invoice["id"]:
                intent = self._store[record["payment"]["payment_intent"]]
                charges.append(self._store[intent["latest_charge"]])
        refundable = sum(c["amount"] - c["amount_refunded"] for c in charges)
        if amount > refundable:
            raise FakeStripeError(
                400,
                f"The refund_amount ({amount}) is greater than what can be refunded on invoice "
                f"{invoice['id']} ({refundable}).",
                param="refund_amount",
            )
        return charges

    def _void_credit_note(self, params: Params, note_id: str) -> Obj:
        _allow(params, ("expand",))
        note = self._find("credit_note", note_id)
        if note["status"] == "void":
            raise FakeStripeError(400, f"Credit note {note_id} has already been voided.")
        if note["refunds"]:
            raise FakeStripeError(
                400, f"Credit note {note_id} refunded a payment and can't be voided."
            )
        invoice = self._store[note["invoice"]]
        invoice["pre_payment_credit_notes_amount"] -= note["pre_payment_amount"]
        invoice["post_payment_credit_notes_amount"] -= note["post_payment_amount"]
        self._store[note["customer"]]["balance"] += self._credit_of.pop(note["id"], 0)
        self._settle(invoice)
        if invoice["status"] == "paid" and invoice["amount_remaining"] > 0:
            invoice["status"] = "open"  # the note had settled it; now it is owed again
            invoice["status_transitions"]["paid_at"] = None
        note["status"] = "void"
        note["voided_at"] = _now()
        return self._render(note)

    def _list_credit_notes(self, params: Params) -> Obj:
        _allow(params, _LIST_PARAMS | {"invoice", "customer", "created"})
        invoice = _str(params, "invoice")
        customer = _str(params, "customer")
        created = _created_filter(params)

        def keep(note: Obj) -> bool:
            return (
                (invoice is None or note["invoice"] == invoice)
                and (customer is None or note["customer"] == customer)
                and created(note)
            )

        return self._page_top("credit_note", params, "/v1/credit_notes", keep)

    def _list_credit_note_lines(self, params: Params, note_id: str) -> Obj:
        _allow(params, _LIST_PARAMS)
        note = self._find("credit_note", note_id)

        def missing(cursor: str, param: str) -> FakeStripeError:
            return FakeStripeError(
                400,
                f"No such credit note line item: '{cursor}'",
                code="resource_missing",
                param=param,
            )

        lines = copy.deepcopy(note["lines"]["data"])
        url = note["lines"]["url"]
        return self._page(lines, lambda line: True, params, url, missing, lambda line: line)
