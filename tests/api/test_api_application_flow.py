"""An application bills its customers through `neruba serve` with scoped keys, on each
database: it sends usage with an `ingest` key, reads current usage, the wallet and invoices
with a `read` key and grants credit with a `credits` key, each key refused everything else;
the operator bills with the CLI, and the invoice the application reads over HTTP is the one
`neruba invoice show --json` prints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.support import catalogs
from tests.support.api import client, key
from tests.support.cli import Cli, ok
from tests.support.shops import finalize_month, new_project

# Plan metered: 10.00 a month in arrears, api_calls 0.05 each.
CATALOG = catalogs.catalog(
    meters=[catalogs.meter("api_calls", "count")],
    plans=[catalogs.plan("metered", "10.00", catalogs.per_unit("api_calls", "0.05"))],
)


def calls(first: int, count: int, day: int) -> list[dict[str, Any]]:
    return [
        {
            "idempotency_key": f"req-{n}",
            "customer": "c1",
            "meter": "api_calls",
            "timestamp": f"2026-10-{day:02d}T{n % 24:02d}:00:00Z",
            "properties": {"path": "/search"},
        }
        for n in range(first, first + count)
    ]


def answered(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.request.url, response.text)
    return response.json()


def test_an_application_sends_usage_reads_balances_and_invoices_and_grants_credit(
    cli: Cli, serve: Any, tmp_path: Path
) -> None:
    new_project(cli, "c1")
    catalogs.apply_catalog(cli, tmp_path, CATALOG)
    ok(cli, "subscription", "create", "c1", "metered", "--start", "2026-10-01T00:00:00Z")
    server = serve(cli.db_url)
    ingest, read, credits = (
        client(server, key(cli, scope)) for scope in ("ingest", "read", "credits")
    )
    with ingest, read, credits:
        # each key does only its own part
        assert answered(read.post("/v1/events", json=calls(0, 1, 2)[0]), 403)
        assert answered(ingest.get("/v1/customers/c1/wallet"), 403)
        assert answered(credits.get("/v1/invoices"), 403)
        assert answered(ingest.post("/v1/customers/c1/credits", json={"amount": "1.00"}), 403)

        # usage: a batch, one event, then the batch again after a lost answer
        october = calls(0, 30, 5)
        sent = answered(ingest.post("/v1/events/batch", json={"events": october}))
        assert (sent["accepted"], sent["duplicates"]) == (30, 0)
        one = answered(ingest.post("/v1/events", json=calls(30, 1, 20)[0]))
        assert one["status"] == "accepted"
        again = answered(ingest.post("/v1/events/batch", json={"events": october}))
        assert (again["accepted"], again["duplicates"]) == (0, 30)

        # what the period would bill now, and a usage event of today in the open period
        (preview,) = answered(
            read.get("/v1/customers/c1/usage", params={"at": "2026-10-25T00:00:00Z"})
        )["periods"]
        usage = next(line for line in preview["lines"] if line["meter"] == "api_calls")
        assert (usage["quantity"], usage["amount"]) == ("31", "1.55")
        now = datetime.now(UTC) - timedelta(minutes=1)
        today = {
            "idempotency_key": "today-1",
            "customer": "c1",
            "meter": "api_calls",
            "timestamp": now.isoformat(),
        }
        assert answered(ingest.post("/v1/events", json=today))["status"] == "accepted"
        current = answered(read.get("/v1/customers/c1/usage"))
        assert current["customer"] == "c1"
        (open_period,) = current["periods"]
        assert open_period["status"] == "preview"
        assert (
            open_period["period"]["start"]
            <= now.isoformat().replace("+00:00", "Z")
            < open_period["period"]["end"]
        )
        assert [
            line["quantity"] for line in open_period["lines"] if line["meter"] == "api_calls"
        ] == ["1"]

        # credit: granted once however often the request is retried
        grant = {"amount": "4.00", "reason": "launch offer"}
        headers = {"Idempotency-Key": "offer-c1"}
        granted = answered(
            credits.post("/v1/customers/c1/credits", json=grant, headers=headers), 201
        )
        retried = credits.post("/v1/customers/c1/credits", json=grant, headers=headers)
        assert answered(retried, 201)["id"] == granted["id"]
        wallet = answered(read.get("/v1/customers/c1/wallet"))
        assert (wallet["balance"], [g["id"] for g in wallet["grants"]]) == ("4.00", [granted["id"]])

        # the operator bills October with the CLI
        report = finalize_month(cli)
        (number,) = report["finalized"]

        listed = answered(read.get("/v1/invoices", params={"period": "2026-10", "customer": "c1"}))
        assert [row["number"] for row in listed["data"]] == [number]
        invoice = answered(read.get(f"/v1/invoices/{number}"))
        assert invoice == ok(cli, "invoice", "show", number)
        assert (invoice["subtotal"], invoice["credits_applied"], invoice["total"]) == (
            "11.55",
            "4.00",
            "7.55",
        )
        explained = answered(read.get(f"/v1/invoices/{number}/explain"))
        assert explained == ok(cli, "invoice", "explain", number)
        assert answered(read.get("/v1/customers/c1/wallet"))["balance"] == "0.00"
