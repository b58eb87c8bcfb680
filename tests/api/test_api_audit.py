"""Every mutating request is audited with its key as the actor, like a CLI command: the records
are written by the worker's audit thread, and a server that stops writes what it still holds."""

from __future__ import annotations

import time
from typing import Any

from tests.support.api import client, key
from tests.support.cli import Cli, ok
from tests.support.shops import new_project

COMMAND = "POST /v1/customers"


def audited(cli: Cli) -> list[dict[str, Any]]:
    rows = ok(cli, "audit", "list", "--limit", "1000")
    return [row for row in rows if row["command"] == COMMAND]


def test_each_mutating_request_is_audited_with_its_key_and_status(cli: Cli, serve: Any) -> None:
    new_project(cli)
    secret = key(cli, "billing")
    key_id = next(row["id"] for row in ok(cli, "key", "list"))
    server = serve(cli.db_url)
    statuses = {}
    with client(server, secret) as http:
        for number in range(3):
            answer = http.post("/v1/customers", json={"external_id": f"c{number}"})
            assert answer.status_code == 201, answer.text
            statuses[answer.headers["Request-Id"]] = 201
        taken = http.post("/v1/customers", json={"external_id": "c0"})
        assert taken.status_code == 409, taken.text
        statuses[taken.headers["Request-Id"]] = 409
    deadline = time.monotonic() + 10.0  # written by the audit thread, soon after the answers
    while len(records := audited(cli)) < 4:
        assert time.monotonic() < deadline, records
        time.sleep(0.1)
    assert len(records) == 4
    by_request = {row["arguments"]["request_id"]: row for row in records}
    assert set(by_request) == set(statuses)
    for request_id, status in statuses.items():
        row = by_request[request_id]
        assert (row["actor"], row["actor_kind"], row["project"]) == (key_id, "key", "acme")
        assert row["arguments"]["status"] == status
        assert row["outcome"] == ("ok" if status == 201 else "error")


def test_a_stopping_server_writes_the_records_it_still_holds(cli: Cli, serve: Any) -> None:
    new_project(cli)
    secret = key(cli, "billing")
    server = serve(cli.db_url)
    with client(server, secret) as http:
        for number in range(40):
            answer = http.post("/v1/customers", json={"external_id": f"c{number}"})
            assert answer.status_code == 201, answer.text
    server.stop()  # SIGTERM right after the last answer
    assert len(audited(cli)) == 40
