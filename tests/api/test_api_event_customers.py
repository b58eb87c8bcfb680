"""A worker keeps the ids of the customers single events named (api/catalogs.py), never the
names it did not find: a customer created after an event for it was refused is found at once,
and every event is stored against the right customer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support import catalogs
from tests.support.api import client, key
from tests.support.cli import Cli, ok
from tests.support.shops import new_project

CATALOG = catalogs.catalog(meters=[catalogs.meter("api_calls", "count")])


def event(number: int, customer: str) -> dict[str, Any]:
    return {
        "idempotency_key": f"evt-{number}",
        "customer": customer,
        "meter": "api_calls",
        "timestamp": "2026-11-02T10:00:00Z",
    }


def test_a_customer_created_after_a_refused_event_is_found_at_once(
    cli: Cli, tmp_path: Path, serve: Any
) -> None:
    new_project(cli, "c1", "c2")
    catalogs.apply_catalog(cli, tmp_path, CATALOG)
    secret = key(cli, "ingest")
    server = serve(cli.db_url)
    with client(server, secret) as http:
        for number, customer in enumerate(("c1", "c2", "c1")):
            answer = http.post("/v1/events", json=event(number, customer))
            assert answer.json()["status"] == "accepted", answer.text
        refused = http.post("/v1/events", json=event(10, "late-comer"))
        assert refused.status_code == 422, refused.text
        assert "unknown customer" in refused.json()["error"]["message"]
        ok(cli, "customer", "create", "late-comer", "--currency", "USD")
        accepted = http.post("/v1/events", json=event(10, "late-comer"))
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["status"] == "accepted"
        again = http.post("/v1/events", json=event(11, "c2"))
        assert again.json()["status"] == "accepted", again.text
    stored = {row["idempotency_key"]: row["customer"] for row in ok(cli, "events", "list")}
    assert stored == {
        "evt-0": "c1",
        "evt-1": "c2",
        "evt-2": "c1",
        "evt-10": "late-comer",
        "evt-11": "c2",
    }
