"""The fake Stripe server, driven through the real ``stripe`` SDK.

The Neruba suite trusts this server to behave like Stripe on the wire, so these tests go through
the SDK (form encoding, error classes, retries) rather than calling the server's internals.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import stripe

from tests.fakes.stripe import FakeStripe, FakeStripeError, Fault, parse_form

API_KEY = "sk_test_neruba"


@pytest.fixture
def server() -> Iterator[FakeStripe]:
    with FakeStripe(api_key=API_KEY) as fake:
        yield fake


def make_client(
    server: FakeStripe, *, retries: int = 0, timeout: float | None = None, key: str = API_KEY
) -> stripe.StripeClient:
    http_client = stripe.RequestsClient(timeout=timeout) if timeout is not None else None
    return stripe.StripeClient(
        key,
        base_addresses={"api": server.url},
        max_network_retries=retries,
        http_client=http_client,
    )


@pytest.fixture
def client(server: FakeStripe) -> stripe.StripeClient:
    return make_client(server)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK sleeps at least 0.5 s between retries; the logic under test is the same faster."""
    monkeypatch.setattr(stripe.HTTPClient, "INITIAL_DELAY", 0.01)


def customer(client: stripe.StripeClient, **params: Any) -> Any:
    return client.v1.customers.create(params={"name": "Ada", **params})


def draft_invoice(
    client: stripe.StripeClient, customer_id: str, amounts: list[int], currency: str = "usd"
) -> Any:
    invoice = client.v1.invoices.create(params={"customer": customer_id, "currency": currency})
    for amount in amounts:
        client.v1.invoice_items.create(
            params={
                "customer": customer_id,
                "invoice": invoice.id,
                "amount": amount,
                "currency": currency,
            }
        )
    return client.v1.invoices.retrieve(invoice.id)


def open_invoice(client: stripe.StripeClient, customer_id: str, amounts: list[int]) -> Any:
    invoice = draft_invoice(client, customer_id, amounts)
    return client.v1.invoices.finalize_invoice(invoice.id)


def charge_of(server: FakeStripe, invoice_id: str) -> dict[str, Any]:
    payment = next(p for p in server.objects("invoice_payment") if p["invoice"] == invoice_id)
    intent = server.get(payment["payment"]["payment_intent"])
    assert intent is not None
    charge = server.get(intent["latest_charge"])
    assert charge is not None
    return charge


# --- wire format ---------------------------------------------------------------------------


def test_bracket_notation_decodes_to_nested_params() -> None:
    params = parse_form(
        [
            ("metadata[neruba_invoice]", "INV-1"),
            ("lines[0][amount]", "5"),
            ("lines[1][amount]", "7"),
            ("expand[]", "a"),
            ("expand[]", "b"),
            ("memo", "a b"),
        ]
    )
    assert params == {
        "metadata": {"neruba_invoice": "INV-1"},
        "lines": {"0": {"amount": "5"}, "1": {"amount": "7"}},
        "expand": {"0": "a", "1": "b"},
        "memo": "a b",
    }


def test_customer_create_retrieve_update_and_email_filter(client: stripe.StripeClient) -> None:
    created = customer(client, email="ada@example.com", metadata={"neruba_id": "c1", "x": "1"})
    assert created.id.startswith("cus_")
    assert created.object == "customer"
    assert created.livemode is False
    assert isinstance(created.created, int)
    fetched = client.v1.customers.retrieve(created.id)
    assert fetched.to_dict() == created.to_dict()

    updated = client.v1.customers.update(
        created.id, params={"name": "Ada L.", "metadata": {"x": "", "y": "2"}}
    )
    assert updated.name == "Ada L."
    assert updated.metadata.to_dict() == {"neruba_id": "c1", "y": "2"}  # "" deleted x

    customer(client, email="bob@example.com")
    found = client.v1.customers.list(params={"email": "ada@example.com"})
    assert [c.id for c in found.data] == [created.id]
    assert found.url == "/v1/customers"


def test_unknown_ids_routes_and_params(server: FakeStripe, client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.invoices.retrieve("in_missing")
    assert missing.value.http_status == 404
    assert missing.value.code == "resource_missing"
    assert missing.value.param == "id"
    assert "No such invoice: 'in_missing'" in str(missing.value.user_message)

    no_params: Any = {}
    with pytest.raises(stripe.InvalidRequestError) as required:
        client.v1.invoices.create(params=no_params)
    assert (required.value.http_status, required.value.code) == (400, "parameter_missing")
    assert required.value.param == "customer"

    with pytest.raises(stripe.InvalidRequestError) as bad_ref:
        client.v1.invoices.create(params={"customer": "cus_nope"})
    assert (bad_ref.value.http_status, bad_ref.value.param) == (400, "customer")

    unknown_param: Any = {"nickname": "x"}
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.customers.create(params=unknown_param)
    assert unknown.value.code == "parameter_unknown"

    response = requests.get(f"{server.url}/v1/nothing", auth=(API_KEY, ""), timeout=5)
    assert response.status_code == 404
    assert "Unrecognized request URL (GET: /v1/nothing)" in response.json()["error"]["message"]


def test_authentication(server: FakeStripe) -> None:
    wrong = "sk_test_wrong_key_4242"
    with pytest.raises(stripe.AuthenticationError) as info:
        make_client(server, key=wrong).v1.customers.list()
    assert info.value.http_status == 401
    assert wrong not in str(info.value.user_message)
    assert "4242" in str(info.value.user_message)

    anonymous = requests.get(f"{server.url}/v1/customers", timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "invalid_request_error"
    basic = requests.get(f"{server.url}/v1/customers", auth=(API_KEY, ""), timeout=5)
    assert basic.status_code == 200
    assert basic.json() == {"object": "list", "data": [], "has_more": False, "url": "/v1/customers"}


# --- invoices ------------------------------------------------------------------------------


def test_invoice_items_finalize_totals_and_numbers(client: stripe.StripeClient) -> None:
    cus = customer(client, email="ada@example.com")
    invoice = client.v1.invoices.create(
        params={
            "customer": cus.id,
            "currency": "USD",
            "collection_method": "send_invoice",
            "days_until_due": 14,
            "metadata": {"neruba_invoice": "INV-1"},
        }
    )
    assert (invoice.status, invoice.number, invoice.total, invoice.currency) == (
        "draft",
        None,
        0,
        "usd",
    )
    for amount in (1500, 250, -100):
        client.v1.invoice_items.create(
            params={
                "customer": cus.id,
                "invoice": invoice.id,
                "amount": amount,
                "currency": "usd",
                "description": f"line {amount}",
                "metadata": {"neruba_line": str(amount)},
            }
        )
    pending = client.v1.invoice_items.create(
        params={"customer": cus.id, "amount": 999, "currency": "usd"}
    )
    assert pending.invoice is None

    draft = client.v1.invoices.retrieve(invoice.id)
    assert (draft.total, draft.subtotal, draft.amount_due, draft.amount_remaining) == (
        1650,
        1650,
        1650,
        1650,
    )
    assert [line.metadata["neruba_line"] for line in draft.lines.data] == ["1500", "250", "-100"]
    assert all(line.id.startswith("il_") for line in draft.lines.data)

    final = client.v1.invoices.finalize_invoice(invoice.id)
    assert final.status == "open"
    assert re.fullmatch(r"[0-9A-F]{8}-0001", final.number)
    finalized_at = final.status_transitions.finalized_at
    assert isinstance(finalized_at, int)
    assert final.due_date == invoice.created + 14 * 86400
    assert (final.amount_due, final.amount_paid, final.amount_remaining) == (1650, 0, 1650)
    assert final.metadata["neruba_invoice"] == "INV-1"

    lines = client.v1.invoices.line_items.list(invoice.id, params={"limit": 2})
    assert [line.amount for line in lines.data] == [1500, 250]
    assert lines.has_more is True
    rest = client.v1.invoices.line_items.list(
        invoice.id, params={"starting_after": lines.data[-1].id}
    )
    assert [line.amount for line in rest.data] == [-100]

    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.invoices.finalize_invoice(invoice.id)
    assert (again.value.http_status, again.value.code) == (400, "invoice_not_editable")
    with pytest.raises(stripe.InvalidRequestError) as late_item:
        client.v1.invoice_items.create(
            params={"customer": cus.id, "invoice": invoice.id, "amount": 1, "currency": "usd"}
        )
    assert (late_item.value.code, late_item.value.param) == ("invoice_not_editable", "invoice")

    # "include" pulls the customer's pending items in that currency; numbers go on per customer
    client.v1.invoice_items.create(params={"customer": cus.id, "amount": 5, "currency": "eur"})
    second = client.v1.invoices.create(
        params={"customer": cus.id, "currency": "usd", "pending_invoice_items_behavior": "include"}
    )
    parents = [line.parent.invoice_item_details for line in second.lines.data]
    assert [parent.invoice_item for parent in parents if parent] == [pending.id]
    assert second.total == 999
    assert client.v1.invoices.finalize_invoice(second.id).number == final.number[:-4] + "0002"
    still_pending = client.v1.invoice_items.list(params={"customer": cus.id, "pending": True})
    assert [item.currency for item in still_pending.data] == ["eur"]


def test_invoice_items_edit_a_draft_only(client: stripe.StripeClient) -> None:
    cus = customer(client)
    invoice = draft_invoice(client, cus.id, [1000, 500])
    first, second = (line.parent.invoice_item_details.invoice_item for line in invoice.lines.data)
    assert first and second
    client.v1.invoice_items.update(first, params={"amount": 900, "metadata": {"k": "v"}})
    client.v1.invoice_items.delete(second)
    draft = client.v1.invoices.retrieve(invoice.id)
    assert (draft.total, [line.amount for line in draft.lines.data]) == (900, [900])
    listed = client.v1.invoice_items.list(params={"invoice": invoice.id})
    assert [(item.id, item.metadata["k"]) for item in listed.data] == [(first, "v")]

    client.v1.invoices.finalize_invoice(invoice.id)
    with pytest.raises(stripe.InvalidRequestError) as frozen:
        client.v1.invoice_items.update(first, params={"amount": 1})
    assert frozen.value.code == "invoice_not_editable"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoice_items.delete(first)
    with pytest.raises(stripe.InvalidRequestError) as no_currency:
        client.v1.invoice_items.create(params={"customer": cus.id, "amount": 1})
    assert (no_currency.value.code, no_currency.value.param) == ("parameter_missing", "currency")


def test_zero_total_finalizes_to_paid(client: stripe.StripeClient) -> None:
    cus = customer(client)
    invoice = draft_invoice(client, cus.id, [300, -300])
    final = client.v1.invoices.finalize_invoice(invoice.id)
    assert (final.status, final.total, final.amount_due) == ("paid", 0, 0)
    assert final.status_transitions.paid_at is not None


def test_invoice_lifecycle_over_the_api(server: FakeStripe, client: stripe.StripeClient) -> None:
    cus = customer(client)
    draft = draft_invoice(client, cus.id, [100])
    deleted = client.v1.invoices.delete(draft.id)
    assert (deleted.id, deleted.deleted) == (draft.id, True)
    assert server.get(draft.id) is None

    uncollectible = client.v1.invoices.mark_uncollectible(open_invoice(client, cus.id, [100]).id)
    assert uncollectible.status == "uncollectible"
    paid = client.v1.invoices.pay(uncollectible.id, params={"paid_out_of_band": True})
    assert (paid.status, paid.amount_paid, paid.amount_remaining) == ("paid", 100, 0)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.pay(paid.id)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.void_invoice(paid.id)

    opened = open_invoice(client, cus.id, [200])
    with pytest.raises(stripe.InvalidRequestError) as not_draft:
        client.v1.invoices.delete(opened.id)
    assert not_draft.value.http_status == 400
    assert client.v1.invoices.void_invoice(opened.id).status == "void"

    updated = client.v1.invoices.update(
        opened.id, params={"metadata": {"k": "v"}, "description": "voided"}
    )
    assert (updated.metadata["k"], updated.description) == ("v", "voided")
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.update(opened.id, params={"collection_method": "send_invoice"})


def test_three_decimal_and_integer_amounts(client: stripe.StripeClient) -> None:
    cus = customer(client)
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.invoice_items.create(
            params={"customer": cus.id, "amount": 1005, "currency": "kwd"}
        )
    assert (info.value.http_status, info.value.param) == (400, "amount")
    assert "divisible by 10" in str(info.value.user_message)
    assert (
        client.v1.invoice_items.create(
            params={"customer": cus.id, "amount": 1000, "currency": "KWD"}
        ).currency
        == "kwd"
    )
    assert (
        client.v1.invoice_items.create(
            params={"customer": cus.id, "amount": 7, "currency": "jpy"}
        ).amount
        == 7
    )

    fractional_amount: Any = {"customer": cus.id, "amount": "1.5", "currency": "usd"}
    with pytest.raises(stripe.InvalidRequestError) as fractional:
        client.v1.invoice_items.create(params=fractional_amount)
    assert (fractional.value.param, fractional.value.code) == (
        "amount",
        "parameter_invalid_integer",
    )


# --- lists ---------------------------------------------------------------------------------


def test_pagination_visits_every_invoice_once_newest_first(client: stripe.StripeClient) -> None:
    cus = customer(client)
    ids = [client.v1.invoices.create(params={"customer": cus.id}).id for _ in range(25)]

    seen: list[str] = []
    more: list[bool] = []
    params: Any = {"limit": 10}
    while True:
        page = client.v1.invoices.list(params=params)
        seen += [invoice.id for invoice in page.data]
        more.append(page.has_more)
        if not page.has_more:
            break
        params = {"limit": 10, "starting_after": page.data[-1].id}
    assert seen == ids[::-1]
    assert more == [True, True, False]

    auto = client.v1.invoices.list(params={"limit": 7}).auto_paging_iter()
    assert [invoice.id for invoice in auto] == ids[::-1]
    assert len(client.v1.invoices.list().data) == 10  # default limit

    back = client.v1.invoices.list(params={"limit": 10, "ending_before": ids[0]})
    assert [invoice.id for invoice in back.data] == ids[10:0:-1]
    assert back.has_more is True

    for limit in (0, 101):
        with pytest.raises(stripe.InvalidRequestError) as bad_limit:
            client.v1.invoices.list(params={"limit": limit})
        assert bad_limit.value.param == "limit"
    with pytest.raises(stripe.InvalidRequestError) as bad_cursor:
        client.v1.invoices.list(params={"starting_after": "in_nope"})
    assert (bad_cursor.value.http_status, bad_cursor.value.code) == (400, "resource_missing")
    assert bad_cursor.value.param == "starting_after"


def test_created_filters_and_ordering(server: FakeStripe, client: stripe.StripeClient) -> None:
    cus = customer(client)
    old, new, backdated = (client.v1.invoices.create(params={"customer": cus.id}) for _ in "abc")
    now = new.created
    server.set_created(old.id, now - 1000)
    server.set_created(backdated.id, now - 2000)

    def listed(created: Any) -> list[str]:
        page = client.v1.invoices.list(params={"created": created, "customer": cus.id})
        return [invoice.id for invoice in page.data]

    assert listed({"gte": now - 10}) == [new.id]
    assert listed({"lt": now - 10}) == [old.id, backdated.id]  # created desc beats creation order
    assert listed({"gt": now - 2000, "lte": now - 1000}) == [old.id]
    assert listed(now - 2000) == [backdated.id]
    assert [i["id"] for i in server.objects("invoice")] == [backdated.id, old.id, new.id]


# --- idempotency ---------------------------------------------------------------------------


def test_idempotent_replay_and_conflicts(server: FakeStripe, client: stripe.StripeClient) -> None:
    key = "neruba-customer-1"
    first = client.v1.customers.create(params={"name": "Ada"}, options={"idempotency_key": key})
    second = client.v1.customers.create(params={"name": "Ada"}, options={"idempotency_key": key})
    assert second.id == first.id
    assert second.last_response is not None and first.last_response is not None
    assert second.last_response.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.last_response.headers
    assert second.last_response.body == first.last_response.body
    assert len(server.objects("customer")) == 1
    assert [(r.idempotency_key, r.replayed) for r in server.requests] == [
        (key, False),
        (key, True),
    ]

    with pytest.raises(stripe.IdempotencyError) as other_params:
        client.v1.customers.create(params={"name": "Bob"}, options={"idempotency_key": key})
    assert other_params.value.http_status == 400
    assert "same parameters" in str(other_params.value.user_message)
    with pytest.raises(stripe.IdempotencyError) as other_endpoint:
        client.v1.invoices.create(params={"customer": first.id}, options={"idempotency_key": key})
    assert "same endpoint" in str(other_endpoint.value.user_message)
    assert len(server.objects("customer")) == 1
    assert server.objects("invoice") == []


def test_a_request_cut_off_mid_body_is_not_acted_on_nor_its_key_kept(
    server: FakeStripe, client: stripe.StripeClient
) -> None:
    """A client killed after its headers but before its whole body: Stripe never sees that
    request, so the same key with the whole body later creates the object once."""
    key = "neruba-cut-off"
    body = b"name=Ada&email=ada%40example.com"
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/customers HTTP/1.1\r\n"
            + f"Host: {host}\r\nAuthorization: Bearer {API_KEY}\r\n".encode()
            + f"Idempotency-Key: {key}\r\n".encode()
            + b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:8]
        )
        sock.shutdown(socket.SHUT_WR)  # the rest never comes
        assert sock.recv(1024) == b""  # no answer: the connection is just closed
    assert server.objects("customer") == []

    made = client.v1.customers.create(
        params={"name": "Ada", "email": "ada@example.com"}, options={"idempotency_key": key}
    )
    assert made.last_response is not None
    assert "Idempotent-Replayed" not in made.last_response.headers
    assert [c["email"] for c in server.objects("customer")] == ["ada@example.com"]


def test_validation_errors_are_stored_and_replayed(
    server: FakeStripe, client: stripe.StripeClient
) -> None:
    options: Any = {"idempotency_key": "bad-invoice"}
    errors = []
    for _ in range(2):
        with pytest.raises(stripe.InvalidRequestError) as info:
            client.v1.invoices.create(params={"customer": "cus_nope"}, options=options)
        errors.append(info.value.json_body)
    assert errors[0] == errors[1]
    assert [(r.status, r.replayed) for r in server.requests] == [(400, False), (400, True)]


def test_concurrent_requests_with_one_key_apply_once(server: FakeStripe) -> None:
    def create(_: int) -> str:
        sdk = make_client(server)
        options: Any = {"idempotency_key": "shared"}
        return str(sdk.v1.customers.create(params={"name": "Ada"}, options=options).id)

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(create, range(8)))
    assert len(set(ids)) == 1
    assert len(server.objects("customer")) == 1
    assert sum(r.replayed for r in server.requests) == 7


# --- faults and the SDK's retries ----------------------------------------------------------


def test_rate_limit_is_not_retried_by_the_sdk_but_by_a_caller_loop(server: FakeStripe) -> None:
    server.add_fault(Fault("POST", "/v1/customers", "429", times=2))
    sdk = make_client(server, retries=2)  # the SDK never retries 429 without Stripe-Should-Retry
    options: Any = {"idempotency_key": "create-ada"}
    attempts = 0
    while True:
        attempts += 1
        try:
            created = sdk.v1.customers.create(params={"name": "Ada"}, options=options)
            break
        except stripe.RateLimitError as error:
            assert error.http_status == 429
            assert error.json_body is not None  # the SDK does not copy the code onto the error
            assert error.json_body["error"]["code"] == "rate_limit"
            assert error.headers is not None and "Stripe-Should-Retry" not in error.headers
            assert len(server.requests) == attempts  # one request per call: no SDK retry
            assert attempts < 5
    assert attempts == 3
    assert [(r.status, r.fault) for r in server.requests] == [
        (429, "429"),
        (429, "429"),
        (200, None),
    ]
    assert [c["id"] for c in server.objects("customer")] == [created.id]


@pytest.mark.usefixtures("fast_retries")
def test_sdk_retries_a_500_with_the_same_key(server: FakeStripe) -> None:
    server.add_fault(Fault("POST", "/v1/customers", "500"))
    created = make_client(server, retries=2).v1.customers.create(params={"name": "Ada"})
    assert [r.status for r in server.requests] == [500, 200]
    keys = {r.idempotency_key for r in server.requests}
    assert len(keys) == 1 and None not in keys  # the SDK made one key and reused it
    assert [c["id"] for c in server.objects("customer")] == [created.id]

    server.add_fault(Fault("POST", "/v1/customers", "500"))
    with pytest.raises(stripe.APIError) as info:
        make_client(server, retries=0).v1.customers.create(params={"name": "Bob"})
    assert info.value.http_status == 500
    assert info.value.headers is not None
    assert info.value.headers["Stripe-Should-Retry"] == "true"
    assert len(server.objects("customer")) == 1  # the 500 applied nothing


@pytest.mark.usefixtures("fast_retries")
@pytest.mark.parametrize("action", ["timeout", "drop"])
def test_lost_response_after_apply_is_replayed_on_retry(server: FakeStripe, action: str) -> None:
    cus = customer(make_client(server))
    server.add_fault(Fault("POST", "/v1/invoices", action, after_apply=True, delay=2.0))
    sdk = make_client(server, retries=2, timeout=0.5)
    started = time.monotonic()
    invoice = sdk.v1.invoices.create(params={"customer": cus.id})
    assert time.monotonic() - started < 1.5
    assert [i["id"] for i in server.objects("invoice")] == [invoice.id]
    log = [r for r in server.requests if r.path == "/v1/invoices"]
    assert [(r.status, r.replayed, r.fault) for r in log] == [
        (0, False, action),
        (200, True, None),
    ]


def test_drop_before_apply_changes_nothing(server: FakeStripe) -> None:
    server.add_fault(Fault("POST", "/v1/customers", "drop"))
    with pytest.raises(stripe.APIConnectionError):
        make_client(server).v1.customers.create(params={"name": "Ada"})
    assert server.objects("customer") == []
    assert [(r.status, r.fault) for r in server.requests] == [(0, "drop")]


def test_hang_holds_the_request_until_release(server: FakeStripe) -> None:
    server.add_fault(Fault("POST", "/v1/customers", "hang"))
    sdk = make_client(server, timeout=10)
    errors: list[Exception] = []

    def call() -> None:
        try:
            sdk.v1.customers.create(params={"name": "Ada"})
        except stripe.APIConnectionError as error:
            errors.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    assert server.hung.wait(5)
    time.sleep(0.1)
    assert caller.is_alive()
    server.release()
    caller.join(5)
    assert not caller.is_alive()
    assert len(errors) == 1
    assert not server.hung.is_set()
    assert server.objects("customer") == []
    assert [(r.status, r.fault) for r in server.requests] == [(0, "hang")]
    assert customer(sdk).name == "Ada"  # spent: the next request goes through


def test_fault_skip_times_and_validation(server: FakeStripe, client: stripe.StripeClient) -> None:
    cus = customer(client)
    server.add_fault(Fault("GET", r"/v1/customers/[^/]+", "500", skip=1, times=1))
    client.v1.customers.retrieve(cus.id)
    with pytest.raises(stripe.APIError):
        client.v1.customers.retrieve(cus.id)
    client.v1.customers.retrieve(cus.id)
    assert [r.status for r in server.requests if r.method == "GET"] == [200, 500, 200]
    with pytest.raises(ValueError):
        Fault("PUT", "/v1/customers", "500")
    with pytest.raises(ValueError):
        Fault("POST", "/v1/customers", "explode")


# --- payments, refunds, credit notes -------------------------------------------------------


def test_invoice_payments_and_their_filters(
    server: FakeStripe, client: stripe.StripeClient
) -> None:
    cus = customer(client)
    first = open_invoice(client, cus.id, [1000])
    second = open_invoice(client, cus.id, [500])
    server.pay_invoice(first.id, 300)
    server.pay_invoice(first.id)
    server.pay_invoice(second.id)

    payments = client.v1.invoice_payments.list(params={"invoice": first.id})
    assert [p.amount_paid for p in payments.data] == [700, 300]  # newest first
    assert [p.is_default for p in payments.data] == [False, True]
    assert all(p.status == "paid" and p.currency == "usd" for p in payments.data)
    intent_id = payments.data[0].payment.payment_intent
    by_intent = client.v1.invoice_payments.list(
        params={"payment": {"type": "payment_intent", "payment_intent": intent_id}}
    )
    assert [p.id for p in by_intent.data] == [payments.data[0].id]
    assert client.v1.invoice_payments.retrieve(payments.data[1].id).amount_requested == 300

    intent = client.v1.payment_intents.retrieve(intent_id)
    assert (intent.status, intent.amount, intent.amount_received) == ("succeeded", 700, 700)
    charge = client.v1.charges.retrieve(intent.latest_charge)
    assert (charge.paid, charge.amount, charge.payment_intent) == (True, 700, intent_id)
    assert len(client.v1.payment_intents.list(params={"customer": cus.id}).data) == 3
    assert [c.id for c in client.v1.charges.list(params={"payment_intent": intent_id}).data] == [
        charge.id
    ]
    expanded = client.v1.invoices.retrieve(first.id, params={"expand": ["payments"]})
    assert len(expanded.payments.data) == 2
    with_charges = client.v1.payment_intents.list(params={"expand": ["data.latest_charge"]})
    assert {pi.latest_charge.object for pi in with_charges.data} == {"charge"}


def test_refunds(server: FakeStripe, client: stripe.StripeClient) -> None:
    cus = customer(client)
    invoice = open_invoice(client, cus.id, [1000])
    server.pay_invoice(invoice.id)
    charge = charge_of(server, invoice.id)

    partial = client.v1.refunds.create(params={"charge": charge["id"], "amount": 400})
    assert (partial.amount, partial.status, partial.payment_intent) == (
        400,
        "succeeded",
        charge["payment_intent"],
    )
    assert client.v1.charges.retrieve(charge["id"]).amount_refunded == 400
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create(params={"charge": charge["id"], "amount": 700})
    assert too_much.value.http_status == 400
    assert str(too_much.value.user_message).startswith("Refund amount ($7.00) is greater than")

    rest = client.v1.refunds.create(params={"payment_intent": charge["payment_intent"]})
    assert rest.amount == 600
    refunded = client.v1.charges.retrieve(charge["id"])
    assert (refunded.amount_refunded, refunded.refunded) == (1000, True)
    with pytest.raises(stripe.InvalidRequestError) as twice:
        client.v1.refunds.create(params={"charge": charge["id"]})
    assert twice.value.code == "charge_already_refunded"
    listed = client.v1.refunds.list(params={"charge": charge["id"]})
    assert [r.id for r in listed.data] == [rest.id, partial.id]

    other = open_invoice(client, cus.id, [250])
    server.pay_invoice(other.id)
    back_office = server.refund_charge(charge_of(server, other.id)["id"], 50)
    assert back_office["amount"] == 50
    assert client.v1.invoices.retrieve(other.id).status == "paid"  # refunds leave invoices alone


def test_credit_notes_on_an_open_invoice(client: stripe.StripeClient) -> None:
    cus = customer(client)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.credit_notes.create(
            params={"invoice": draft_invoice(client, cus.id, [100]).id, "amount": 10}
        )
    invoice = open_invoice(client, cus.id, [1000])

    note = client.v1.credit_notes.create(
        params={"invoice": invoice.id, "amount": 300, "memo": "goodwill", "reason": "order_change"}
    )
    assert (note.type, note.status, note.total, note.customer) == (
        "pre_payment",
        "issued",
        300,
        cus.id,
    )
    assert note.number == f"{invoice.number}-CN-01"
    lowered = client.v1.invoices.retrieve(invoice.id)
    assert (lowered.status, lowered.amount_due, lowered.amount_remaining) == ("open", 700, 700)
    assert lowered.pre_payment_credit_notes_amount == 300
    assert lowered.total == 1000

    rest = client.v1.credit_notes.create(
        params={
            "invoice": invoice.id,
            "lines": [
                {
                    "type": "custom_line_item",
                    "unit_amount": 350,
                    "quantity": 2,
                    "description": "the rest",
                }
            ],
        }
    )
    assert rest.total == 700
    assert [(line.amount, line.quantity) for line in rest.lines.data] == [(700, 2)]
    settled = client.v1.invoices.retrieve(invoice.id)
    assert (settled.status, settled.amount_remaining, settled.amount_paid) == ("paid", 0, 0)

    with pytest.raises(stripe.InvalidRequestError):
        client.v1.credit_notes.create(
            params={"invoice": invoice.id, "amount": 1, "out_of_band_amount": 1}
        )
    voided = client.v1.credit_notes.void_credit_note(rest.id)
    assert voided.status == "void"
    reopened = client.v1.invoices.retrieve(invoice.id)
    assert (reopened.status, reopened.amount_remaining) == ("open", 700)
    listed = client.v1.credit_notes.list(params={"invoice": invoice.id})
    assert [n.id for n in listed.data] == [rest.id, note.id]


def test_credit_notes_on_a_paid_invoice(server: FakeStripe, client: stripe.StripeClient) -> None:
    cus = customer(client)
    invoice = open_invoice(client, cus.id, [1000])
    server.pay_invoice(invoice.id)

    with pytest.raises(stripe.InvalidRequestError) as unallocated:
        client.v1.credit_notes.create(params={"invoice": invoice.id, "amount": 400})
    assert unallocated.value.http_status == 400
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.credit_notes.create(
            params={"invoice": invoice.id, "amount": 400, "out_of_band_amount": 300}
        )

    oob = client.v1.credit_notes.create(
        params={"invoice": invoice.id, "amount": 400, "out_of_band_amount": 400}
    )
    assert (oob.type, oob.out_of_band_amount) == ("post_payment", 400)
    refund_note = client.v1.credit_notes.create(
        params={"invoice": invoice.id, "amount": 200, "refund_amount": 200}
    )
    assert [r.amount_refunded for r in refund_note.refunds] == [200]
    assert charge_of(server, invoice.id)["amount_refunded"] == 200
    credit = client.v1.credit_notes.create(
        params={"invoice": invoice.id, "amount": 400, "credit_amount": 400}
    )
    assert client.v1.customers.retrieve(cus.id).balance == -400
    with pytest.raises(stripe.InvalidRequestError):  # 1000 of 1000 already credited
        client.v1.credit_notes.create(
            params={"invoice": invoice.id, "amount": 10, "credit_amount": 10}
        )
    after = client.v1.invoices.retrieve(invoice.id)
    assert (after.status, after.post_payment_credit_notes_amount) == ("paid", 1000)

    client.v1.credit_notes.void_credit_note(credit.id)
    assert client.v1.customers.retrieve(cus.id).balance == 0
    assert client.v1.invoices.retrieve(invoice.id).post_payment_credit_notes_amount == 600


# --- back-office helpers -------------------------------------------------------------------


def test_back_office_helpers(server: FakeStripe, client: stripe.StripeClient) -> None:
    cus = customer(client)
    invoice = open_invoice(client, cus.id, [1000])

    partly = server.pay_invoice(invoice.id, 300)
    assert (partly["status"], partly["amount_paid"], partly["amount_remaining"]) == (
        "open",
        300,
        700,
    )
    tampered = server.set_invoice_total(invoice.id, 1234)
    assert (tampered["total"], tampered["amount_due"], tampered["amount_remaining"]) == (
        1234,
        1234,
        934,
    )
    assert client.v1.invoices.retrieve(invoice.id).total == 1234
    paid = server.pay_invoice(invoice.id)
    assert (paid["status"], paid["amount_paid"], paid["amount_remaining"]) == ("paid", 1234, 0)
    assert paid["status_transitions"]["paid_at"] is not None
    with pytest.raises(FakeStripeError):
        server.pay_invoice(invoice.id)

    to_void = open_invoice(client, cus.id, [500])
    assert server.void_invoice(to_void.id)["status"] == "void"
    with pytest.raises(FakeStripeError):
        server.void_invoice(to_void.id)

    server.delete_invoice(to_void.id)  # even a finalized invoice
    assert server.get(to_void.id) is None
    with pytest.raises(stripe.InvalidRequestError) as gone:
        client.v1.invoices.retrieve(to_void.id)
    assert gone.value.http_status == 404
    assert [i.id for i in client.v1.invoices.list().data] == [invoice.id]
    assert [i["id"] for i in server.objects("invoice")] == [invoice.id]
    with pytest.raises(ValueError):
        server.objects("subscription")
