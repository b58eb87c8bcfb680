"""The read routes and customer creation answer what their CLI twins print with `--json`:
invoice list, show and explain, wallet show, invoice preview, customer list and create; lists
page by cursor without repeating or losing a row, even while rows are added."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.support.api import client, key
from tests.support.cli import Cli, ok
from tests.support.shops import invoice_shop, new_project

JSON = {"content-type": "application/json"}
AT = "2026-11-05T00:00:00Z"  # in November, c1's and c2's open period


def _json(answer: httpx.Response, status: int = 200) -> Any:
    assert answer.status_code == status, (answer.status_code, answer.text)
    return answer.json()


def _error(answer: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = _json(answer, status)["error"]
    assert error["request_id"] == answer.headers["Request-Id"]
    if param is not None:
        assert error["param"] == param, error
    return error


def _walk(http: httpx.Client, path: str, limit: int, **query: str) -> list[dict[str, Any]]:
    """Every row of a list, page by page."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {**query, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        page = _json(http.get(path, params=params))
        assert len(page["data"]) <= limit
        rows += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows
        assert page["data"], "a page with a next cursor holds rows"


def test_invoice_reads_answer_the_cli_json(cli: Cli, serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    invoice_shop(cli, tmp_path)
    server = serve(cli.db_url)
    listed = ok(cli, "invoice", "list")
    assert len(listed) == 2
    with client(server, key(cli, "read")) as http:
        everything = _json(http.get("/v1/invoices"))
        assert everything == {"data": listed, "next_cursor": None}
        assert _walk(http, "/v1/invoices", 1) == listed
        for number in (row["number"] for row in listed):
            assert _json(http.get(f"/v1/invoices/{number}")) == ok(cli, "invoice", "show", number)
            explained = _json(http.get(f"/v1/invoices/{number}/explain"))
            assert explained == ok(cli, "invoice", "explain", number)
        for query, flags in (
            ({"customer": "c2"}, ("--customer", "c2")),
            ({"status": "draft", "period": "2026-10"}, ("--status=draft", "--period=2026-10")),
            ({"period": "2026-09"}, ("--period", "2026-09")),
            ({"customer": "nobody"}, ("--customer", "nobody")),
        ):
            found = _json(http.get("/v1/invoices", params=query))["data"]
            assert found == ok(cli, "invoice", "list", *flags), query
        assert [row["customer"] for row in _walk(http, "/v1/invoices", 1, customer="c1")] == ["c1"]
        assert _json(http.get("/v1/invoices", params={"customer": "c\x00"}))["data"] == []
        _error(http.get("/v1/invoices", params={"status": "open"}), 422, "status")
        _error(http.get("/v1/invoices", params={"period": "2026-13"}), 422, "period")
        _error(http.get("/v1/invoices", params={"period": "soon"}), 422, "period")
        missing = _error(http.get("/v1/invoices/ACME-999999"), 404)
        assert missing["type"] == "not_found" and "ACME-999999" in missing["message"]
        for odd in ("a b", "ünïcødé", "a%2Fb", "a%00b", "%F0%9F%92%B8", "x" * 500, "%FF"):
            _error(http.get(f"/v1/invoices/{odd}"), 404)
            _error(http.get(f"/v1/invoices/{odd}/explain"), 404)


def test_usage_and_wallet_answer_preview_and_wallet_show(cli: Cli, serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    invoice_shop(cli, tmp_path)
    ok(cli, "credits", "grant", "c1", "12.50", "--reason", "welcome")
    ok(cli, "credits", "grant", "c1", "3.00", "--category", "paid", "--priority", "2")
    server = serve(cli.db_url)
    with client(server, key(cli, "read")) as http:
        for customer in ("c1", "c2"):
            usage = _json(http.get(f"/v1/customers/{customer}/usage", params={"at": AT}))
            previewed = ok(cli, "invoice", "preview", customer, "--at", AT)
            assert usage == {
                "customer": customer,
                "at": AT,
                "periods": previewed if isinstance(previewed, list) else [previewed],
            }
        now = _json(http.get("/v1/customers/c1/usage"))  # the open period of today
        assert now["periods"] and all(doc["status"] == "preview" for doc in now["periods"])
        for as_of in ("2026-12-01T00:00:00Z", "2020-01-01T00:00:00Z"):
            wallet = _json(http.get("/v1/customers/c1/wallet", params={"as_of": as_of}))
            assert wallet == ok(cli, "wallet", "show", "c1", "--as-of", as_of)
        current = _json(http.get("/v1/customers/c1/wallet"))
        assert (current["balance"], len(current["grants"])) == ("15.50", 2)
        _error(http.get("/v1/customers/c1/usage", params={"at": "yesterday"}), 422, "at")
        _error(http.get("/v1/customers/c1/wallet", params={"as_of": "2026-12-01"}), 422, "as_of")
        unknown = _error(http.get("/v1/customers/c9/usage", params={"at": AT}), 404)
        assert "customer 'c9' does not exist" in unknown["message"]
        _error(http.get("/v1/customers/c9/wallet"), 404)
        for odd in ("a b", "ünïcødé", "a%00b", "%F0%9F%92%B8", "x" * 500, "%FF", "c1%0Ax"):
            for suffix in ("", "/usage", "/wallet"):
                _error(http.get(f"/v1/customers/{odd}{suffix}"), 404)


def test_a_foreign_projects_invoices_and_customers_are_not_found(  # type: ignore[no-untyped-def]
    cli: Cli, serve, tmp_path: Path
) -> None:
    invoice_shop(cli, tmp_path)
    new_project(cli, "d1", slug="other")
    number = ok(cli, "invoice", "list")[0]["number"]
    server = serve(cli.db_url)
    with client(server, key(cli, "read", project="other")) as http:
        assert _json(http.get("/v1/invoices")) == {"data": [], "next_cursor": None}
        assert [c["external_id"] for c in _json(http.get("/v1/customers"))["data"]] == ["d1"]
        for path in (
            f"/v1/invoices/{number}",
            f"/v1/invoices/{number}/explain",
            "/v1/customers/c1",
            "/v1/customers/c1/wallet",
            f"/v1/customers/c1/usage?at={AT}",
        ):
            _error(http.get(path), 404)


def test_pages_walk_every_customer_once_while_customers_are_added(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    first = [f"k{n:02d}" for n in range(1, 12)]
    new_project(cli, *first)
    server = serve(cli.db_url)
    with client(server, key(cli, "read", "billing")) as http:
        assert [c["external_id"] for c in _walk(http, "/v1/customers", 3)] == first
        assert _json(http.get("/v1/customers"))["data"] == ok(cli, "customer", "list")
        seen: list[str] = []
        added: list[str] = []
        cursor = None
        while True:
            params = {"limit": "4", **({"cursor": cursor} if cursor else {})}
            page = _json(http.get("/v1/customers", params=params))
            seen += [c["external_id"] for c in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            # one customer sorting before the page just read, one after it
            for new in (f"a{len(added):02d}", f"z{len(added):02d}"):
                _json(http.post("/v1/customers", json={"external_id": new}), 201)
                added.append(new)
        assert len(seen) == len(set(seen)), "no customer twice"
        assert [s for s in seen if s in first] == first, "every customer of the start, in order"
        assert [s for s in seen if s.startswith("z")] == [a for a in added if a.startswith("z")]
        assert not [s for s in seen if s.startswith("a")], "those sort before the pages read"
        _error(http.get("/v1/customers", params={"limit": "0"}), 422, "limit")
        _error(http.get("/v1/customers", params={"limit": "1001"}), 422, "limit")
        _error(http.get("/v1/customers", params={"limit": "many"}), 422, "limit")
        assert len(_json(http.get("/v1/customers", params={"limit": "1000"}))["data"]) == len(
            first
        ) + len(added)
        for cursor in ("nonsense", "!!!", "eyJ4IjoxfQ", "x" * 5000):
            _error(http.get("/v1/customers", params={"cursor": cursor}), 422, "cursor")
        other_list = _json(http.get("/v1/customers", params={"limit": "1"}))["next_cursor"]
        _error(http.get("/v1/invoices", params={"cursor": other_list}), 422, "cursor")


def test_create_a_customer_as_the_cli_does(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1")
    server = serve(cli.db_url)
    body = {
        "external_id": "team/a1",
        "name": "Ünï Team",
        "email": "billing@example.com",
        "currency": "eur",
        "timezone": "Europe/Paris",
    }
    with client(server, key(cli, "billing", "read")) as http:
        created = _json(http.post("/v1/customers", json=body), 201)
        assert created == ok(cli, "customer", "show", "team/a1")
        assert (created["currency"], created["timezone"], created["stripe_id"]) == (
            "EUR",
            "Europe/Paris",
            None,
        )
        for path in ("/v1/customers/team/a1", "/v1/customers/team%2Fa1"):
            assert _json(http.get(path)) == created
        assert _json(http.get("/v1/customers/team/a1/wallet"))["customer"] == "team/a1"
        plain = _json(http.post("/v1/customers", json={"external_id": "c2"}), 201)
        assert (plain["currency"], plain["timezone"]) == ("USD", "UTC")  # the project's
        again = _error(http.post("/v1/customers", json={"external_id": "c2", "name": "X"}), 409)
        assert again["type"] == "conflict" and "'c2' already exists" in again["message"]
        unknown = _error(http.post("/v1/customers", json={"external_id": "c3", "plan": "x"}), 422)
        assert unknown["param"] == "plan" and "plan" in unknown["message"]
        _error(http.post("/v1/customers", json={"name": "No id"}), 422, "external_id")
        _error(http.post("/v1/customers", json={"external_id": "c3", "name": 5}), 422, "name")
        bad_email = _error(http.post("/v1/customers", json={"external_id": "c", "email": "@"}), 422)
        assert "email" in bad_email["message"]
        _error(http.post("/v1/customers", json={"external_id": "bad id"}), 422)
        surrogate = b'{"external_id": "c3", "name": "\\ud800"}'  # JSON allows it, UTF-8 does not
        _error(http.post("/v1/customers", content=surrogate, headers=JSON), 422, "name")
        _error(http.post("/v1/customers", json={"external_id": "c3", "timezone": "Mars/Base"}), 422)
        _error(
            http.post("/v1/customers", content=b'{"external_id": ', headers=JSON),
            400,
        )
        assert [c["external_id"] for c in ok(cli, "customer", "list")] == ["c1", "c2", "team/a1"]
    with client(server, key(cli, "read")) as http:
        refused = _error(http.post("/v1/customers", json={"external_id": "c4"}), 403)
        assert "'billing'" in refused["message"]
    audit = ok(cli, "audit", "list")
    assert any(entry["command"] == "POST /v1/customers" for entry in audit), audit[:3]
