"""Every mutating request is audited with its key as the actor, like a CLI command: the records
are written by the worker's audit thread, and a worker that stops writes what it still holds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.support import catalogs
from tests.support.api import client, key
from tests.support.cli import Cli, ok
from tests.support.shops import new_project

CATALOG = catalogs.catalog(meters=[catalogs.meter("api_calls", "count")])


def audited(cli: Cli, command: str) -> list[dict[str, Any]]:
    rows = ok(cli, "audit", "list", "--limit", "1000")
    return [row for row in rows if row["command"] == command]


def one_event(number: int) -> dict[str, Any]:
    return {
        "idempotency_key": f"evt-{number}",
        "customer": "c1",
        "meter": "api_calls",
        "timestamp": "2026-11-02T10:00:00Z",
    }


def test_each_posted_event_is_audited_with_its_key_and_status(
    cli: Cli, tmp_path: Path, serve: Any
) -> None:
    new_project(cli, "c1")
    catalogs.apply_catalog(cli, tmp_path, CATALOG)
    secret = key(cli, "ingest")
    key_id = next(row["id"] for row in ok(cli, "key", "list"))
    server = serve(cli.db_url)
    request_ids = {}
    with client(server, secret) as http:
        for number in range(3):
            answer = http.post("/v1/events", json=one_event(number))
            assert answer.status_code == 200, answer.text
            request_ids[answer.headers["Request-Id"]] = 200
        rejected = http.post("/v1/events", json={**one_event(9), "meter": "nope"})
        assert rejected.status_code == 422, rejected.text
        request_ids[rejected.headers["Request-Id"]] = 422
    deadline = time.monotonic() + 10.0  # written by the audit thread, soon after the answers
    while len(records := audited(cli, "POST /v1/events")) < 4:
        assert time.monotonic() < deadline, records
        time.sleep(0.1)
    assert len(records) == 4
    by_request = {row["arguments"]["request_id"]: row for row in records}
    assert set(by_request) == set(request_ids)
    for request_id, status in request_ids.items():
        row = by_request[request_id]
        assert row["actor"] == key_id
        assert row["actor_kind"] == "key"
        assert row["project"] == "acme"
        assert row["arguments"]["status"] == status
        assert row["outcome"] == ("ok" if status == 200 else "error")


def test_a_stopping_server_writes_the_records_it_still_holds(
    cli: Cli, tmp_path: Path, serve: Any
) -> None:
    new_project(cli, "c1")
    catalogs.apply_catalog(cli, tmp_path, CATALOG)
    secret = key(cli, "ingest")
    server = serve(cli.db_url)
    with client(server, secret) as http:
        for number in range(40):
            assert http.post("/v1/events", json=one_event(number)).status_code == 200
    server.stop()  # SIGTERM right after the last answer
    assert len(audited(cli, "POST /v1/events")) == 40
