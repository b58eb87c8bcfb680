"""`POST /v1/customers/{external_id}/credits` grants credit through the same service as
`neruba credits grant`: the same rules, the same grant, the same ledger postings."""

from __future__ import annotations

from typing import Any

from tests.support.api import client, key
from tests.support.cli import Cli, ok
from tests.support.shops import new_project

FUTURE = "2099-01-01T00:00:00Z"


def test_a_grant_over_http_is_in_the_wallet_to_the_cent(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1")
    secret = key(cli, "credits")
    server = serve(cli.db_url)
    with client(server, secret) as http:
        answer = http.post(
            "/v1/customers/c1/credits",
            json={
                "amount": "12.34",
                "expires_at": FUTURE,
                "priority": 2,
                "category": "paid",
                "reason": "welcome",
            },
        )
        assert answer.status_code == 201, answer.text
        other = http.post("/v1/customers/c1/credits", json={"amount": "0.10"})
        assert other.status_code == 201, other.text
    grant = answer.json()
    listed = ok(cli, "credits", "list", "c1")
    assert listed[0] == grant  # the same JSON as `neruba credits list --json`
    assert (grant["amount"], grant["remaining"], grant["currency"]) == ("12.34", "12.34", "USD")
    assert (grant["priority"], grant["category"], grant["reason"]) == (2, "paid", "welcome")
    assert grant["expires_at"] == FUTURE and grant["status"] == "active"
    assert other.json()["category"] == "promotional" and other.json()["priority"] == 1
    wallet = ok(cli, "wallet", "show", "c1")
    assert wallet["balance"] == "12.44"
    assert ok(cli, "check")["ok"]


def test_money_must_be_a_decimal_string(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1")
    secret = key(cli, "credits")
    server = serve(cli.db_url)
    refused: dict[str, Any] = {}
    with client(server, secret) as http:
        for name, body in (
            ("float", {"amount": 12.34}),
            ("integer", {"amount": 12}),
            ("negative", {"amount": "-5.00"}),
            ("zero", {"amount": "0"}),
            ("words", {"amount": "ten"}),
            ("sub-cent", {"amount": "1.234"}),
            ("unknown field", {"amount": "1.00", "colour": "red"}),
            ("priority as text", {"amount": "1.00", "priority": "2"}),
            ("bad expiry", {"amount": "1.00", "expires_at": "tomorrow"}),
            ("past expiry", {"amount": "1.00", "expires_at": "2001-01-01T00:00:00Z"}),
            ("other currency", {"amount": "1.00", "currency": "EUR"}),
        ):
            refused[name] = http.post("/v1/customers/c1/credits", json=body)
        not_json = http.post(
            "/v1/customers/c1/credits",
            content=b"{amount: 1}",
            headers={"Content-Type": "application/json"},
        )
    for name, answer in refused.items():
        assert answer.status_code in (400, 422), (name, answer.text)
        assert answer.json()["error"]["request_id"] == answer.headers["Request-Id"]
    assert not_json.status_code == 400
    error = refused["float"].json()["error"]
    assert error["param"] == "amount"
    assert error["message"].startswith('amount: write money as a decimal string, e.g. "12.34"')
    assert refused["integer"].json()["error"]["param"] == "amount"
    assert "must be positive" in refused["negative"].json()["error"]["message"]
    assert "more decimals than USD" in refused["sub-cent"].json()["error"]["message"]
    assert refused["unknown field"].json()["error"]["message"] == "unknown field 'colour'"
    assert refused["priority as text"].json()["error"]["param"] == "priority"
    assert refused["bad expiry"].json()["error"]["param"] == "expires_at"
    assert "not in the future" in refused["past expiry"].json()["error"]["message"]
    assert "billed in USD, not EUR" in refused["other currency"].json()["error"]["message"]
    assert ok(cli, "credits", "list", "c1") == []
    assert ok(cli, "wallet", "show", "c1")["balance"] == "0.00"


def test_granting_needs_the_credits_scope_and_a_customer_of_the_key_project(
    cli: Cli,
    serve,  # type: ignore[no-untyped-def]
) -> None:
    new_project(cli, "c1")
    new_project(cli, "c9", slug="other")
    reader = key(cli, "read")
    ingest = key(cli, "ingest")
    granter = key(cli, "credits")
    server = serve(cli.db_url)
    for secret in (reader, ingest):
        with client(server, secret) as http:
            answer = http.post("/v1/customers/c1/credits", json={"amount": "5.00"})
        assert answer.status_code == 403, answer.text
        assert "'credits'" in answer.json()["error"]["message"]
    with client(server) as http:
        assert http.post("/v1/customers/c1/credits", json={"amount": "5.00"}).status_code == 401
    with client(server, granter) as http:
        foreign = http.post("/v1/customers/c9/credits", json={"amount": "5.00"})
    assert foreign.status_code == 404
    assert foreign.json()["error"]["type"] == "not_found"
    assert ok(cli, "credits", "list", "c1") == []
    assert ok(cli, "credits", "list", "c9", project="other") == []


def _postings(cli: Cli, customer: str) -> list[dict[str, Any]]:
    """`neruba ledger show --customer` without what names the customer, the grant or when."""
    shown = []
    for transaction in ok(cli, "ledger", "show", "--customer", customer):
        entries = [
            {
                **entry,
                "account": entry["account"].replace(customer, "CUSTOMER"),
                "grant": entry["grant"] is not None,
            }
            for entry in transaction["entries"]
        ]
        shown.append({"kind": transaction["kind"], "entries": entries})
    return shown


def test_a_grant_through_either_door_posts_the_same_ledger_entries(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1", "c2")
    secret = key(cli, "credits")
    for category in ("paid", "promotional"):
        ok(cli, "credits", "grant", "c1", "25.50", "--category", category, "--priority", "3")
    server = serve(cli.db_url)
    with client(server, secret) as http:
        for category in ("paid", "promotional"):
            body = {"amount": "25.50", "category": category, "priority": 3}
            assert http.post("/v1/customers/c2/credits", json=body).status_code == 201
    by_cli, by_http = _postings(cli, "c1"), _postings(cli, "c2")
    assert by_cli == by_http
    assert len(by_http) == 2 and all(t["kind"] == "credit_granted" for t in by_http)
    assert {e["amount_minor"] for t in by_http for e in t["entries"]} == {2550, -2550}
    http_actors = {t["actor"] for t in ok(cli, "ledger", "show", "--customer", "c2")}
    assert len(http_actors) == 1 and http_actors.pop().startswith("key_")
    assert ok(cli, "wallet", "show", "c1")["balance"] == ok(cli, "wallet", "show", "c2")["balance"]
    assert ok(cli, "wallet", "show", "c2")["balance"] == "51.00"
