"""Usage over HTTP: `POST /v1/events`, `/v1/events/batch` and `/v1/charges` follow
`neruba ingest`'s rules (one code path): accepted, duplicate, conflict (409) and rejected (422)
events, batches whose good events are kept whatever else they hold, a receipt per batch, the
limits (413), the same stored events and invoice as a file, concurrent clients and a killed
server that leave every event stored exactly once."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import catalogs
from tests.support.api import client, key
from tests.support.cli import Cli, ok
from tests.support.events import charge, event, write_jsonl
from tests.support.shops import (
    AS_OF,
    INVOICE_CATALOG,
    PERIOD,
    finalize_month,
    invoice_shop,
    new_project,
)


def shop(cli: Cli, tmp_path: Path, slug: str = "acme") -> None:
    """`slug` with c1 and c2 (USD), meters api_calls (count) and tokens (sum of
    properties.tokens), c1 on plan pro and c2 on plan basic."""
    new_project(cli, "c1", "c2", slug=slug)
    catalogs.apply_catalog(cli, tmp_path, INVOICE_CATALOG, project=slug)
    ok(cli, "subscription", "create", "c1", "pro", "--start", "2026-10-01T00:00:00Z", project=slug)
    ok(
        cli,
        "subscription",
        "create",
        "c2",
        "basic",
        "--start",
        "2026-10-16T00:00:00Z",
        project=slug,
    )


def stored(cli: Cli, slug: str = "acme") -> dict[str, dict[str, Any]]:
    """The project's current events by idempotency key."""
    rows = ok(cli, "events", "list", "--limit", "100000", project=slug)
    keys = [row["idempotency_key"] for row in rows]
    assert len(keys) == len(set(keys))
    return {row["idempotency_key"]: row for row in rows}


def shop_client(cli: Cli, tmp_path: Path, serve: Any) -> httpx.Client:
    """The shop, a server on it and a client holding an `ingest` key."""
    shop(cli, tmp_path)
    return client(serve(cli.db_url), key(cli, "ingest"))


def api_receipts(cli: Cli, slug: str = "acme") -> list[dict[str, Any]]:
    rows = ok(cli, "events", "receipts", "--limit", "10000", project=slug)
    return [row for row in rows if row["source"] == "api"]


def test_one_event_is_accepted_then_a_duplicate_and_other_payloads_are_refused(
    cli: Cli, tmp_path: Path, serve: Any
) -> None:
    with shop_client(cli, tmp_path, serve) as http:
        first = http.post("/v1/events", json=event("e1", quantity="3"))
        assert first.status_code == 200, first.text
        answer = first.json()
        assert answer["status"] == "accepted"
        assert answer["idempotency_key"] == "e1"
        assert answer["stale_invoices"] == []
        assert answer["warnings"][0].startswith("1 event on count meter api_calls")
        assert answer["batch"].startswith("bat_")
        again = http.post("/v1/events", json=event("e1", quantity="3"))
        assert again.status_code == 200
        assert (again.json()["status"], again.json()["batch"]) == ("duplicate", None)
        # the exact JSON number is the same quantity as the string: a duplicate, not a conflict
        number = http.post(
            "/v1/events",
            content=b'{"idempotency_key": "e1", "customer": "c1", "meter": "api_calls", '
            b'"timestamp": "2026-10-03T12:00:00Z", "quantity": 3.0}',
            headers={"Content-Type": "application/json"},
        )
        assert number.json()["status"] == "duplicate", number.text
        conflict = http.post("/v1/events", json=event("e1", quantity="4"))
        assert conflict.status_code == 409
        error = conflict.json()["error"]
        assert error["type"] == "conflict"
        assert error["param"] == "idempotency_key"
        assert error["message"].startswith("conflicts with event 'e1' stored by import bat_")
        assert error["request_id"] == conflict.headers["Request-Id"]
        refused = {
            "meter": event("e2", meter="api_cals"),
            "customer": event("e3", customer="nobody"),
            "timestamp": event("e4", timestamp="2126-01-01T00:00:00Z"),
            "quanity": event("e5", quanity="1"),
            "quantity": event("e6", meter="tokens", quantity="-1"),
            "properties.tokens": event("e7", meter="tokens", properties={"tokens": "many"}),
            "operation": event("e8", operation="remove"),
        }
        for param, body in refused.items():
            answer = http.post("/v1/events", json=body)
            assert answer.status_code == 422, (param, answer.text)
            assert answer.json()["error"]["param"] == param, answer.text
        messages = {
            "meter": "unknown meter 'api_cals' — did you mean 'api_calls'?",
            "customer": "unknown customer 'nobody'",
        }
        for param, message in messages.items():
            answer = http.post("/v1/events", json=refused[param])
            assert answer.json()["error"]["message"].startswith(message), answer.text
        not_json = http.post("/v1/events", content=b"{nope", headers={"Content-Type": "x"})
        assert not_json.status_code == 400
        assert not_json.json()["error"]["message"].startswith("the body is not valid JSON")
        not_object = http.post("/v1/events", json=[event("e9")])
        assert not_object.status_code == 422
        assert not_object.json()["error"]["message"] == "expected a JSON object"
        reader = {"Authorization": f"Bearer {key(cli, 'read')}"}
        assert http.post("/v1/events", json=event("e10"), headers=reader).status_code == 403
    events = stored(cli)
    assert set(events) == {"e1"}
    assert (events["e1"]["quantity"], events["e1"]["customer"]) == ("3", "c1")


def test_one_charge_follows_the_charges_format(cli: Cli, tmp_path: Path, serve: Any) -> None:
    shop(cli, tmp_path)
    server = serve(cli.db_url)
    setup = charge()
    with client(server, key(cli, "ingest")) as http:
        first = http.post("/v1/charges", json=setup)
        assert first.status_code == 200, first.text
        assert first.json()["status"] == "accepted"
        assert http.post("/v1/charges", json=setup).json()["status"] == "duplicate"
        conflict = http.post("/v1/charges", json={**setup, "amount": "30.00"})
        assert conflict.status_code == 409
        assert "conflicts with charge 'setup-c1'" in conflict.json()["error"]["message"]
        places = http.post("/v1/charges", json={**setup, "idempotency_key": "x", "amount": "1.001"})
        assert places.status_code == 422
        assert places.json()["error"]["param"] == "amount"
        unknown = http.post("/v1/charges", json={**setup, "idempotency_key": "y", "customer": "z"})
        assert (unknown.status_code, unknown.json()["error"]["param"]) == (422, "customer")
    invoice = ok(cli, "run", "bill", "--period", "2026-10", "--as-of", "2026-11-02T00:00:00Z")
    assert invoice["invoices"] == 2
    shown = ok(cli, "invoice", "list", "--period", "2026-10")
    c1 = next(row for row in shown if row["customer"] == "c1")
    lines = ok(cli, "invoice", "show", c1["number"])["lines"]
    assert [line["amount"] for line in lines if line.get("description") == "Setup"] == ["25.00"]


def test_an_event_in_a_finalized_period_names_the_stale_invoice(
    cli: Cli, tmp_path: Path, serve: Any
) -> None:
    invoice_shop(cli, tmp_path)
    finalize_month(cli)
    c1 = next(
        row for row in ok(cli, "invoice", "list", "--period", "2026-10") if row["customer"] == "c1"
    )
    server = serve(cli.db_url)
    with client(server, key(cli, "ingest")) as http:
        late = http.post("/v1/events", json=event("late-1", timestamp="2026-10-20T00:00:00Z"))
        assert late.status_code == 200, late.text
        assert late.json()["stale_invoices"] == [
            {
                "number": c1["number"],
                "period": "2026-10",
                "rerun": "neruba run bill --period 2026-10",
            }
        ]
        batch = http.post(
            "/v1/events/batch", json={"events": [event("late-2", timestamp="2026-10-21T00:00:00Z")]}
        )
        assert [s["number"] for s in batch.json()["stale_invoices"]] == [c1["number"]]
        assert batch.json()["periods"] == ["2026-10"]


def test_a_batch_keeps_its_good_events_and_says_what_became_of_each(
    cli: Cli, tmp_path: Path, serve: Any
) -> None:
    with shop_client(cli, tmp_path, serve) as http:
        assert http.post("/v1/events", json=event("old")).json()["status"] == "accepted"
        events: list[Any] = [
            event("b1"),
            event("b2", meter="nope"),
            event("b1"),  # the same line again: a duplicate, as in a file
            event("b1", quantity="2"),  # the same key, another payload: a conflict
            event("old"),  # stored before
            "not an object",
            event("b3", meter="tokens", properties={"tokens": 7}),
            event("old", customer="c2"),
        ]
        answer = http.post("/v1/events/batch", json={"events": events})
        assert answer.status_code == 200, answer.text
        summary = answer.json()
        assert {
            k: summary[k] for k in ("lines", "accepted", "duplicates", "conflicts", "rejected")
        } == {
            "lines": 8,
            "accepted": 2,
            "duplicates": 2,
            "conflicts": 2,
            "rejected": 2,
        }
        results = summary["results"]
        assert [r["index"] for r in results] == list(range(8))
        assert [r["status"] for r in results] == [
            "accepted",
            "rejected",
            "duplicate",
            "conflict",
            "duplicate",
            "rejected",
            "accepted",
            "conflict",
        ]
        assert results[1]["reason"].startswith("unknown meter 'nope'")
        assert results[1]["param"] == "meter"
        batch = summary["batch"]
        assert results[3]["reason"].startswith(
            f"conflicts with event 'b1' stored by import {batch} from api line 1"
        )
        assert results[5]["reason"] == "expected a JSON object"
        assert results[7]["stored"]["customer"] == "c1"
        assert results[0]["reason"] is None
        assert summary["periods"] == ["2026-10"]
        assert summary["source"] == "api"
        # the same batch again: every event a duplicate or the same refusal, the content known
        again = http.post("/v1/events/batch", json={"events": events}).json()
        assert again["accepted"] == 0
        assert again["duplicates"] == 4
        assert again["already_imported"] == [summary["batch"]]
        empty = http.post("/v1/events/batch", json={"events": []}).json()
        assert (empty["lines"], empty["results"]) == (0, [])
        assert empty["warnings"] == ["no events read from api"]
        for body, param in (({"event": []}, "event"), ({"events": {}}, "events"), ({}, "events")):
            refused = http.post("/v1/events/batch", json=body)
            assert refused.status_code == 422, refused.text
            assert refused.json()["error"]["param"] == param
    assert set(stored(cli)) == {"old", "b1", "b3"}
    receipts = api_receipts(cli)
    assert [r["batch"] for r in receipts[::-1]] == [
        summary["batch"],
        again["batch"],
        empty["batch"],
    ]
    first = receipts[-1]
    assert (first["status"], first["lines"], first["accepted"], first["conflicts"]) == (
        "completed",
        8,
        2,
        2,
    )


def test_limits_are_413_in_the_error_shape(cli: Cli, tmp_path: Path, serve: Any) -> None:
    shop(cli, tmp_path)
    secret = key(cli, "ingest")
    default = serve(cli.db_url)
    with client(default, secret) as http:
        many = http.post("/v1/events/batch", json={"events": [event(f"k{i}") for i in range(1001)]})
        assert many.status_code == 413
        assert many.json()["error"]["param"] == "events"
        assert "more than 1000 (max_batch_events)" in many.json()["error"]["message"]
        big = http.post("/v1/events/batch", content=b" " * (5 * 1024 * 1024 + 1))
        assert big.status_code == 413
        assert big.json()["error"]["type"] == "too_large"
    small = serve(
        cli.db_url, env={"NERUBA_API_MAX_BATCH_EVENTS": "3", "NERUBA_API_MAX_BODY_BYTES": "2048"}
    )
    with client(small, secret) as http:
        four = http.post("/v1/events/batch", json={"events": [event(f"k{i}") for i in range(4)]})
        assert four.status_code == 413
        assert http.post("/v1/events/batch", json={"events": [event("k1")] * 3}).status_code == 200
        padded = event("k9", properties={"pad": "x" * 3000})
        assert http.post("/v1/events", json=padded).status_code == 413
        chunked = http.post("/v1/events", content=iter([b'{"pad": "', b"x" * 4000, b'"}']))
        assert chunked.status_code == 413
    assert set(stored(cli)) == {"k1"}


def test_the_same_events_through_http_and_a_file_store_and_bill_the_same(
    cli: Cli, tmp_path: Path, serve: Any
) -> None:
    shop(cli, tmp_path, "acme")
    shop(cli, tmp_path, "twin")
    rng = random.Random(20)
    events = []
    for i in range(60):
        customer = rng.choice(["c1", "c2"])
        stamp = f"2026-10-{rng.randint(16, 31):02d}T{rng.randint(0, 23):02d}:00:00Z"
        if i % 3:
            events.append(event(f"p{i}", customer=customer, timestamp=stamp))
        else:
            tokens = rng.randint(1, 500)
            events.append(
                event(
                    f"p{i}",
                    customer=customer,
                    meter="tokens",
                    timestamp=stamp,
                    properties={"tokens": tokens},
                )
            )
    sent = [*events, events[4], event("p7", quantity="9"), event("bad", meter="nope")]
    write_jsonl(tmp_path / "usage.jsonl", sent)
    by_file = cli("ingest", str(tmp_path / "usage.jsonl"), "--project", "twin", "--json")
    assert by_file.exit_code == 3  # a conflict and a reject
    server = serve(cli.db_url)
    with client(server, key(cli, "ingest")) as http:
        for body in sent[:10]:
            assert http.post("/v1/events", json=body).status_code in (200, 409, 422)
        answer = http.post("/v1/events/batch", json={"events": sent[10:]}).json()
        http.post("/v1/events/batch", json={"events": sent})  # a retry of all: nothing new
    summary = by_file.json()
    assert answer["accepted"] + 10 == summary["accepted"]
    assert (answer["conflicts"], answer["rejected"]) == (summary["conflicts"], summary["rejected"])
    fields = ("customer", "meter", "timestamp", "quantity", "idempotency_key")
    through_http = {k: [row[f] for f in fields] for k, row in stored(cli, "acme").items()}
    through_file = {k: [row[f] for f in fields] for k, row in stored(cli, "twin").items()}
    assert through_http == through_file
    assert len(through_http) == 60
    invoices = {}
    for slug in ("acme", "twin"):
        report = ok(cli, "run", "bill", "--period", PERIOD, "--as-of", AS_OF, project=slug)
        assert report["invoices"] == 2
        shown = []
        for row in sorted(
            ok(cli, "invoice", "list", "--period", "2026-10", project=slug),
            key=lambda r: r["customer"],
        ):
            invoice = ok(cli, "invoice", "show", row["number"], project=slug)
            shown.append(
                (
                    invoice["customer"],
                    invoice["total"],
                    [
                        (x["kind"], x.get("meter"), x["quantity"], x["amount"])
                        for x in invoice["lines"]
                    ],
                )
            )
        invoices[slug] = shown
    assert invoices["acme"] == invoices["twin"]


def _post_batches(
    server_url: str, secret: str, batches: list[list[dict[str, Any]]], answers: list[Any]
) -> None:
    with httpx.Client(
        base_url=server_url, headers={"Authorization": f"Bearer {secret}"}, timeout=120
    ) as http:
        for batch in batches:
            answer = http.post("/v1/events/batch", json={"events": batch})
            answers.append((answer.status_code, answer.json()))


@pytest.mark.slow
def test_eight_clients_with_overlapping_batches_store_each_event_once(
    cli: Cli, tmp_path: Path, serve: Any
) -> None:
    shop(cli, tmp_path)
    secret = key(cli, "ingest")
    server = serve(cli.db_url, "--workers", "2")
    distinct = [
        event(
            f"o{i}",
            customer=f"c{1 + i % 2}",
            timestamp=f"2026-10-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
        )
        for i in range(600)
    ]
    plans: list[list[list[dict[str, Any]]]] = []
    for client_no in range(8):
        rng = random.Random(client_no)
        batches = []
        for _ in range(4):  # overlapping windows of 200, shuffled
            start = rng.randrange(0, 400)
            window = distinct[start : start + 200]
            rng.shuffle(window)
            batches.append(window)
        plans.append(batches)
    plans[0].append(distinct)  # and one client sends them all, so every event is sent
    answers: list[list[Any]] = [[] for _ in plans]
    threads = [
        threading.Thread(target=_post_batches, args=(server.url, secret, plan, answers[n]))
        for n, plan in enumerate(plans)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = [answer for per_client in answers for answer in per_client]
    assert len(flat) == sum(len(plan) for plan in plans)
    assert all(status == 200 for status, _ in flat), [a for a in flat if a[0] != 200][:2]
    accepted = sum(body["accepted"] for _, body in flat)
    assert accepted == len(distinct)
    for _, body in flat:
        assert body["conflicts"] == body["rejected"] == 0
        assert {r["status"] for r in body["results"]} <= {"accepted", "duplicate"}
    assert set(stored(cli)) == {e["idempotency_key"] for e in distinct}
    receipts = api_receipts(cli)
    assert len(receipts) == len(flat)
    assert all(r["status"] == "completed" for r in receipts)
    assert sum(r["accepted"] for r in receipts) == len(distinct)


@pytest.mark.slow
def test_a_server_killed_mid_batch_and_a_retry_store_each_event_once(
    cli: Cli, tmp_path: Path, serve: Any
) -> None:
    shop(cli, tmp_path)
    secret = key(cli, "ingest")
    limits = {"NERUBA_API_MAX_BATCH_EVENTS": "100000", "NERUBA_API_MAX_BODY_BYTES": str(64 << 20)}
    server = serve(cli.db_url, env=limits)
    events = [
        event(
            f"big-{i}",
            customer=f"c{1 + i % 2}",
            meter="tokens",
            timestamp=f"2026-10-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
            properties={"tokens": i % 1000, "note": "x" * 40},
        )
        for i in range(60_000)
    ]
    answers: list[Any] = []
    errors: list[BaseException] = []

    def send() -> None:
        try:
            _post_batches(server.url, secret, [events], answers)
        except httpx.HTTPError as exc:
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 120
    while not any(r["status"] == "running" for r in api_receipts(cli)):
        assert time.monotonic() < deadline and sender.is_alive(), (answers, server.output())
        time.sleep(0.05)
    server.stop(signal.SIGKILL)
    sender.join()
    assert errors and not answers  # the client never got an answer
    again = serve(cli.db_url, env=limits)
    retry: list[Any] = []
    _post_batches(again.url, secret, [events], retry)
    status, body = retry[0]
    assert status == 200, body
    assert body["accepted"] + body["duplicates"] == len(events)
    assert (body["conflicts"], body["rejected"]) == (0, 0)
    assert len(stored(cli)) == len(events)
    receipts = api_receipts(cli)
    assert sorted(r["status"] for r in receipts) == ["completed", "running"]
    assert sum(r["accepted"] for r in receipts) == len(events)
