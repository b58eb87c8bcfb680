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

import threading

from tests.fakes.stripe.credit_notes import CreditNotes
from tests.fakes.stripe.customers import Customers
from tests.fakes.stripe.errors import FakeStripeError
from tests.fakes.stripe.faults import ArmedFault, FaultInjection
from tests.fakes.stripe.invoice_items import InvoiceItems
from tests.fakes.stripe.invoices import Invoices
from tests.fakes.stripe.params import Obj
from tests.fakes.stripe.payments import Payments
from tests.fakes.stripe.refunds import Refunds
from tests.fakes.stripe.routes import Routes
from tests.fakes.stripe.store import KINDS
from tests.fakes.stripe.wire import IdempotencyRecord, RequestLog, StripeHTTPServer, WireProtocol


class FakeStripe(
    Customers,
    InvoiceItems,
    Invoices,
    Payments,
    Refunds,
    CreditNotes,
    Routes,
    WireProtocol,
    FaultInjection,
):
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
        self._idempotency: dict[tuple[str, str], IdempotencyRecord] = {}
        self._faults: list[ArmedFault] = []
        self._gate = threading.Event()
        self._stopping = threading.Event()
        self._httpd: StripeHTTPServer | None = None
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

    def start(self) -> FakeStripe:
        if self._httpd is not None or self._stopping.is_set():
            raise RuntimeError("FakeStripe can be started once")
        self._httpd = StripeHTTPServer(self)
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
