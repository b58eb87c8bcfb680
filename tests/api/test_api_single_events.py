"""`POST /v1/events` under concurrency: a worker writes the events of the requests that arrive
together in one transaction (api/single_events.py), and each request still gets the answer it
would get alone — one accepted per key, the others duplicates or conflicts, its own late-event
report, its own audit record in the same transaction — and a connection the database dropped
costs no request."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx

from tests.support import catalogs
from tests.support.api import client, key
from tests.support.cli import Cli, ok
from tests.support.events import event
from tests.support.shops import PERIOD, finalize_month, invoice_shop, new_project
from tests.support.tcp_proxy import proxied

CLIENTS = 12
COMMAND = "POST /v1/events"
METERS = catalogs.catalog(meters=[catalogs.meter("api_calls", "count")])


def post_all(url: str, secret: str, plans: list[list[dict[str, Any]]]) -> list[list[Any]]:
    """Each plan posted by a client of its own, all at once: (event, status, body) per post."""
    answers: list[list[Any]] = [[] for _ in plans]
    start = threading.Barrier(len(plans))

    def run(number: int) -> None:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=60
        ) as http:
            start.wait()
            for sent in plans[number]:
                answer = http.post("/v1/events", json=sent)
                answers[number].append((sent, answer.status_code, answer.json(), answer.headers))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(plans))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_concurrent_events_are_answered_as_if_each_were_written_alone(
    cli: Cli, tmp_path: Path, serve: Any
) -> None:
    new_project(cli, "c1", "c2")
    catalogs.apply_catalog(cli, tmp_path, METERS)
    secret = key(cli, "ingest")
    server = serve(cli.db_url, "--workers", "2")
    # every client sends the shared keys (same payload: one accepted, the rest duplicates),
    # the contested keys with a payload of its own (one accepted, the rest conflicts), and
    # keys of its own
    plans = []
    for number in range(CLIENTS):
        plan = [event(f"shared-{i}", customer=f"c{1 + i % 2}") for i in range(10)]
        plan += [
            event(f"contested-{i}", timestamp=f"2026-10-{1 + number:02d}T08:00:00Z")
            for i in range(5)
        ]
        plan += [event(f"own-{number}-{i}", customer="c2") for i in range(10)]
        plans.append(plan[number % 7 :] + plan[: number % 7])  # not all in the same order
    answers = [
        answer for per_client in post_all(server.url, secret, plans) for answer in per_client
    ]

    by_key: dict[str, list[tuple[dict[str, Any], int, dict[str, Any]]]] = {}
    for sent, status, body, _ in answers:
        by_key.setdefault(str(sent["idempotency_key"]), []).append((sent, status, body))
    stored = {row["idempotency_key"]: row for row in ok(cli, "events", "list", "--limit", "10000")}
    assert set(stored) == set(by_key)
    for name, posts in by_key.items():
        accepted = [
            (sent, body) for sent, status, body in posts if body.get("status") == "accepted"
        ]
        assert len(accepted) == 1, (name, posts)
        winner, answer = accepted[0]
        assert stored[name]["timestamp"][:19] == str(winner["timestamp"])[:19]
        assert stored[name]["batch"] == answer["batch"]
        for sent, status, body in posts:
            if body is answer:
                continue
            if sent == winner:
                assert (status, body["status"], body["batch"]) == (200, "duplicate", None)
            else:
                assert status == 409, (name, status, body)
                assert body["error"]["type"] == "conflict"
                assert "different payload" in body["error"]["message"]
    shared = {name for name in by_key if name.startswith("shared-")}
    assert all(len(by_key[name]) == CLIENTS for name in shared)

    # one audit record per request, with the status it was answered with
    records = [
        row for row in ok(cli, "audit", "list", "--limit", "10000") if row["command"] == COMMAND
    ]
    statuses = {headers["Request-Id"]: status for _, status, _, headers in answers}
    assert len(records) == len(answers)
    assert {
        row["arguments"]["request_id"]: row["arguments"]["status"] for row in records
    } == statuses


def test_each_event_of_a_group_names_only_the_invoices_it_made_stale(
    cli: Cli, tmp_path: Path, serve: Any
) -> None:
    invoice_shop(cli, tmp_path)
    finalize_month(cli)
    invoices = {
        row["customer"]: row["number"] for row in ok(cli, "invoice", "list", "--period", PERIOD)
    }
    secret = key(cli, "ingest")
    server = serve(cli.db_url)
    plans = [
        [
            event(f"late-{n}-{i}", customer=f"c{1 + (n + i) % 2}", timestamp="2026-10-25T00:00:00Z")
            if (n + i) % 3 == 0
            else event(
                f"open-{n}-{i}", customer=f"c{1 + (n + i) % 2}", timestamp="2026-11-20T00:00:00Z"
            )
            for i in range(6)
        ]
        for n in range(CLIENTS)
    ]
    answers = [
        answer for per_client in post_all(server.url, secret, plans) for answer in per_client
    ]
    assert {status for _, status, _, _ in answers} == {200}
    for sent, _, body, _ in answers:
        if str(sent["idempotency_key"]).startswith("late-"):
            number = invoices[str(sent["customer"])]
            assert body["stale_invoices"] == [
                {"number": number, "period": PERIOD, "rerun": f"neruba run bill --period {PERIOD}"}
            ], (sent, body)
        else:
            assert body["stale_invoices"] == [], (sent, body)


def test_a_dropped_database_connection_costs_no_request(
    cli: Cli, tmp_path: Path, serve: Any
) -> None:
    new_project(cli, "c1")
    catalogs.apply_catalog(cli, tmp_path, METERS)
    secret = key(cli, "ingest")
    assert cli.db_url is not None
    served_url, proxy = proxied(cli.db_url)
    server = serve(served_url)
    with client(server, secret) as http:
        for round_no in range(3):
            answer = http.post("/v1/events", json=event(f"e{round_no}"))
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "accepted"
            if proxy is not None:  # every open connection cut; the database answers again
                proxy.stop()
                proxy.start()
    assert sorted(row["idempotency_key"] for row in ok(cli, "events", "list")) == ["e0", "e1", "e2"]
