"""The two doors into a project: the CLI and the HTTP API, behind one interface.

A door offers what an application does with a scoped key — create customers, send usage and
one-off charges, grant credit, read wallets, current usage and invoices — and answers with
the same plain data (the JSON contract both doors share), so a test is written once and runs
through either:

- `CliDoor`: `neruba ...` in-process with `NERUBA_API_KEY` set to the key, so the command is
  confined to the key's project and scopes exactly like the server; events go through a JSONL
  file and `neruba ingest`.
- `HttpDoor`: a real `neruba serve` and httpx; one event goes to `POST /v1/events`, several
  to `POST /v1/events/batch`; lists are walked page by page.

The operator's own work (catalog, subscriptions, `run bill`, finalizing) is not a door: it
stays with the operator CLI in both cases.

`money_view(invoice)` is an invoice without its ids (number, run, fingerprint, grants,
subscriptions, timestamps): what two shops billed alike must share.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Protocol

import httpx

from tests.support.api import ApiServer, client
from tests.support.cli import Cli
from tests.support.events import write_jsonl

COUNTS = ("accepted", "duplicates", "conflicts", "rejected")
ALL_SCOPES = ("ingest", "read", "billing", "credits")
SINGLE_STATUS = {"accepted": "accepted", "duplicate": "duplicates"}
GRANT_FIELDS = ("customer", "amount", "remaining", "currency", "priority", "category", "status")


class Door(Protocol):
    name: str

    def create_customer(self, external_id: str, currency: str = "USD") -> dict[str, Any]: ...
    def ingest(self, events: list[dict[str, Any]]) -> dict[str, Any]: ...
    def charge(self, customer: str, amount: str, description: str, key: str, at: str) -> str: ...
    def grant(self, customer: str, amount: str, key: str) -> dict[str, Any]: ...
    def wallet(self, customer: str, as_of: str | None = None) -> dict[str, Any]: ...
    def usage(self, customer: str, at: str) -> list[dict[str, Any]]: ...
    def invoices(self, **filters: str) -> list[dict[str, Any]]: ...
    def invoice(self, number: str) -> dict[str, Any]: ...
    def explain(self, number: str) -> dict[str, Any]: ...


def summary(answer: dict[str, Any]) -> dict[str, Any]:
    """What both doors report of an ingest: the counts and the finalized invoices made stale."""
    return {
        **{name: answer[name] for name in COUNTS},
        "stale_invoices": answer["stale_invoices"],
    }


def grant_view(grant: dict[str, Any]) -> dict[str, Any]:
    return {name: grant[name] for name in GRANT_FIELDS}


class CliDoor:
    name = "cli"

    def __init__(self, cli: Cli, secret: str, folder: Path) -> None:
        self.cli = cli
        self.env = {"NERUBA_API_KEY": secret}
        self.folder = folder
        self.files = itertools.count(1)

    def run(self, *args: str, codes: tuple[int, ...] = (0,)) -> Any:
        result = self.cli(*args, "--json", env=self.env)
        assert result.exit_code in codes, (args, result.stdout[-3000:], result.stderr[-3000:])
        return result.json()

    def create_customer(self, external_id: str, currency: str = "USD") -> dict[str, Any]:
        return dict(self.run("customer", "create", external_id, "--currency", currency))

    def ingest(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        path = write_jsonl(self.folder / f"door-{next(self.files)}.jsonl", events)
        # exit 3: some lines were rejected or in conflict, the good ones kept
        return summary(self.run("ingest", str(path), codes=(0, 3)))

    def charge(self, customer: str, amount: str, description: str, key: str, at: str) -> str:
        answer = self.run(
            "charge", "add", customer, "--amount", amount, "--description", description,
            "--idempotency-key", key, "--at", at,
        )  # fmt: skip
        return str(answer["outcome"])

    def grant(self, customer: str, amount: str, key: str) -> dict[str, Any]:
        return grant_view(self.run("credits", "grant", customer, amount, "--idempotency-key", key))

    def wallet(self, customer: str, as_of: str | None = None) -> dict[str, Any]:
        moment = ("--as-of", as_of) if as_of else ()
        return dict(self.run("wallet", "show", customer, *moment))

    def usage(self, customer: str, at: str) -> list[dict[str, Any]]:
        found = self.run("invoice", "preview", customer, "--at", at)
        return found if isinstance(found, list) else [found]

    def invoices(self, **filters: str) -> list[dict[str, Any]]:
        options = [arg for name, value in filters.items() for arg in (f"--{name}", value)]
        return list(self.run("invoice", "list", *options))

    def invoice(self, number: str) -> dict[str, Any]:
        return dict(self.run("invoice", "show", number))

    def explain(self, number: str) -> dict[str, Any]:
        return dict(self.run("invoice", "explain", number))


class HttpDoor:
    name = "http"

    def __init__(self, server: ApiServer, secret: str) -> None:
        self.http = client(server, secret)

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, **params: str) -> Any:
        answer = self.http.get(path, params=params)
        assert answer.status_code == 200, (path, answer.status_code, answer.text)
        return answer.json()

    def post(self, path: str, body: dict[str, Any], *, status: int = 200, **headers: str) -> Any:
        answer = self.http.post(path, json=body, headers=headers)
        assert answer.status_code == status, (path, answer.status_code, answer.text)
        return answer.json()

    def create_customer(self, external_id: str, currency: str = "USD") -> dict[str, Any]:
        body = {"external_id": external_id, "currency": currency}
        return dict(self.post("/v1/customers", body, status=201))

    def send(self, event: dict[str, Any]) -> httpx.Response:
        """`POST /v1/events` with one event."""
        return self.http.post("/v1/events", json=event)

    def batch(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """`POST /v1/events/batch`: the summary, its results in request order."""
        answer = self.post("/v1/events/batch", {"events": events})
        assert [result["index"] for result in answer["results"]] == list(range(len(events)))
        return dict(answer)

    def ingest(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """One event through `POST /v1/events`, several through the batch route."""
        if len(events) != 1:
            return summary(self.batch(events))
        answer = self.send(events[0])
        counts: dict[str, Any] = dict.fromkeys(COUNTS, 0)
        if answer.status_code == 200:
            counts[SINGLE_STATUS[answer.json()["status"]]] = 1
            return {**counts, "stale_invoices": answer.json()["stale_invoices"]}
        assert answer.status_code in (409, 422), answer.text
        assert answer.json()["error"]["request_id"] == answer.headers["Request-Id"]
        counts["conflicts" if answer.status_code == 409 else "rejected"] = 1
        return {**counts, "stale_invoices": []}

    def charge(self, customer: str, amount: str, description: str, key: str, at: str) -> str:
        body = {
            "idempotency_key": key,
            "customer": customer,
            "amount": amount,
            "description": description,
            "timestamp": at,
        }
        return str(self.post("/v1/charges", body)["status"])

    def grant(self, customer: str, amount: str, key: str) -> dict[str, Any]:
        answer = self.post(
            f"/v1/customers/{customer}/credits",
            {"amount": amount},
            status=201,
            **{"Idempotency-Key": key},
        )
        return grant_view(answer)

    def wallet(self, customer: str, as_of: str | None = None) -> dict[str, Any]:
        return dict(
            self.get(f"/v1/customers/{customer}/wallet", **({"as_of": as_of} if as_of else {}))
        )

    def usage(self, customer: str, at: str) -> list[dict[str, Any]]:
        found = self.get(f"/v1/customers/{customer}/usage", at=at)
        assert found["customer"] == customer
        return list(found["periods"])

    def invoices(self, **filters: str) -> list[dict[str, Any]]:
        """Every page of `GET /v1/invoices`, two rows a page (the cursor walked too)."""
        rows: list[dict[str, Any]] = []
        params = {**filters, "limit": "2"}
        while True:
            page = self.get("/v1/invoices", **params)
            rows += page["data"]
            if page["next_cursor"] is None:
                return rows
            params["cursor"] = page["next_cursor"]

    def invoice(self, number: str) -> dict[str, Any]:
        return dict(self.get(f"/v1/invoices/{number}"))

    def explain(self, number: str) -> dict[str, Any]:
        return dict(self.get(f"/v1/invoices/{number}/explain"))


# What two shops that billed alike share: the money, the lines and their quantities. Ids,
# numbers and texts naming the project (explain's commands and notes) are left out.
INVOICE_MONEY = (
    "customer", "kind", "status", "label", "period", "currency", "subtotal", "credits_applied",
    "total", "amount_paid", "amount_due",
)  # fmt: skip
LINE_MONEY = (
    "kind", "description", "plan", "meter", "service", "quantity", "billable_quantity",
    "free_units", "proration", "tiers", "amount_exact", "amount", "credits_applied",
)  # fmt: skip


def money_view(invoice: dict[str, Any]) -> dict[str, Any]:
    """An invoice (show or explain) as its money: totals, what it corrects (whether it does),
    what credit paid, each line's quantities and amounts (and event count)."""
    view = {name: invoice[name] for name in INVOICE_MONEY if name in invoice}
    view["corrects"] = invoice.get("corrects") is not None
    view["credits"] = sorted(paid["amount"] for paid in invoice.get("credits") or [])
    view["lines"] = [
        {
            **{name: line[name] for name in LINE_MONEY if name in line},
            "events": (line.get("events") or {}).get("count"),
        }
        for line in invoice.get("lines", [])
    ]
    return view
