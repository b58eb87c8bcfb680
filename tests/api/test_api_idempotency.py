"""`Idempotency-Key` on POST routes: the same key and body replay the stored answer and do
the work once, whatever the timing (a repeat, concurrent requests, a killed server); another
body or another route with the key is a 409; keys are per project and expire."""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select, update

from neruba_cli.db.engine import create_db_engine
from neruba_cli.db.tables import charges_t, idempotency_records_t
from tests.support.api import client, key
from tests.support.cli import Cli, ok
from tests.support.events import charge
from tests.support.shops import new_project

ROUTE = "/v1/customers/c1/credits"


def post(
    http: httpx.Client, idempotency_key: str | bytes, body: Any, path: str = ROUTE
) -> httpx.Response:
    return http.post(path, json=body, headers={"Idempotency-Key": idempotency_key})


def test_the_same_key_and_body_replay_the_first_answer_and_grant_once(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1")
    secret = key(cli, "credits")
    server = serve(cli.db_url)
    body = {"amount": "10.00", "reason": "sorry", "category": "paid"}
    with client(server, secret) as http:
        first = post(http, "grant-c1-1", body)
        again = post(http, "grant-c1-1", body)
        # The same document spaced and ordered otherwise is the same body.
        reordered = http.post(
            ROUTE,
            content=b'{ "category": "paid",\n "reason": "sorry", "amount": "10.00" }',
            headers={"Idempotency-Key": "grant-c1-1", "Content-Type": "application/json"},
        )
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    for replay in (again, reordered):
        assert replay.status_code == 201, replay.text
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.content == first.content  # the stored body, byte for byte
        assert replay.headers["Request-Id"] != first.headers["Request-Id"]
    assert len(ok(cli, "credits", "list", "c1")) == 1
    assert ok(cli, "wallet", "show", "c1")["balance"] == "10.00"


def test_the_key_with_another_body_or_route_is_a_conflict(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1", "c2")
    new_project(cli, "c1", slug="other")
    secret = key(cli, "credits")
    other_project = key(cli, "credits", project="other")
    server = serve(cli.db_url)
    with client(server, secret) as http:
        assert post(http, "k-1", {"amount": "10.00"}).status_code == 201
        other_body = post(http, "k-1", {"amount": "10.01"})
        other_route = post(http, "k-1", {"amount": "10.00"}, path="/v1/customers/c2/credits")
        bad_keys = [post(http, bad, {"amount": "1.00"}) for bad in ("x" * 256, "clé".encode())]
        empty = post(http, "", {"amount": "1.00"})
    for answer, says in ((other_body, "another body"), (other_route, "/v1/customers/c1/credits")):
        assert answer.status_code == 409, answer.text
        error = answer.json()["error"]
        assert (error["type"], error["param"]) == ("conflict", "Idempotency-Key")
        assert says in error["message"] and "nothing was done" in error["message"]
    for answer in bad_keys:
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == "Idempotency-Key"
    assert empty.status_code == 400
    # Keys are per project: the other project's key may use the same one.
    with client(server, other_project) as http:
        assert post(http, "k-1", {"amount": "3.00"}).status_code == 201
    assert ok(cli, "wallet", "show", "c1")["balance"] == "10.00"
    assert ok(cli, "wallet", "show", "c2")["balance"] == "0.00"
    assert ok(cli, "wallet", "show", "c1", project="other")["balance"] == "3.00"


def test_a_refused_request_stores_nothing_and_may_be_sent_again(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1")
    secret = key(cli, "credits")
    server = serve(cli.db_url)
    with client(server, secret) as http:
        refused = post(http, "k-2", {"amount": "10.00", "currency": "EUR"})
        fixed = post(http, "k-2", {"amount": "10.00"})
    assert refused.status_code == 422, refused.text
    assert fixed.status_code == 201, fixed.text
    assert "Idempotent-Replayed" not in fixed.headers
    assert ok(cli, "wallet", "show", "c1")["balance"] == "10.00"


def test_concurrent_requests_with_one_key_grant_once(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1")
    secret = key(cli, "credits")
    server = serve(cli.db_url, "--workers", "2")
    clients = 8
    start = threading.Barrier(clients)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def send() -> None:
        with client(server, secret) as http:
            start.wait()
            answer = post(http, "race", {"amount": "7.77"})
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=send) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(answers) == clients
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
    assert len({a.content for a in answers}) == 1
    fresh = [a for a in answers if "Idempotent-Replayed" not in a.headers]
    assert len(fresh) == 1
    assert len(ok(cli, "credits", "list", "c1")) == 1
    assert ok(cli, "wallet", "show", "c1")["balance"] == "7.77"
    assert ok(cli, "check")["ok"]


def test_a_stored_answer_survives_a_killed_server(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1")
    secret = key(cli, "credits")
    server = serve(cli.db_url)
    with client(server, secret) as http:
        first = post(http, "k-3", {"amount": "4.20"})
    assert first.status_code == 201
    server.stop(signal.SIGKILL)
    restarted = serve(cli.db_url)
    with client(restarted, secret) as http:
        replay = post(http, "k-3", {"amount": "4.20"})
        conflict = post(http, "k-3", {"amount": "4.21"})
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.content == first.content
    assert conflict.status_code == 409
    assert ok(cli, "wallet", "show", "c1")["balance"] == "4.20"


def test_an_expired_key_is_free_again_and_swept(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1")
    secret = key(cli, "credits")
    engine = create_db_engine(cli.db_url)
    server = serve(cli.db_url)
    with client(server, secret) as http:
        assert post(http, "old", {"amount": "1.00"}).status_code == 201
        assert post(http, "older", {"amount": "2.00"}).status_code == 201
    records = idempotency_records_t
    with engine.connect() as conn:
        stored = {row.idempotency_key: row for row in conn.execute(select(records)).all()}
    assert set(stored) == {"old", "older"}
    assert stored["old"].expires_at - stored["old"].created_at == timedelta(hours=24)
    past = datetime.now(UTC) - timedelta(seconds=1)
    with engine.begin() as conn:
        conn.execute(update(records).values(expires_at=past))
    with client(server, secret) as http:  # expired: another body is a new request
        fresh = post(http, "old", {"amount": "5.00"})
    assert fresh.status_code == 201 and "Idempotent-Replayed" not in fresh.headers
    server.stop()
    # A new worker sweeps expired records after storing its first one.
    with client(serve(cli.db_url), secret) as http:
        assert post(http, "new", {"amount": "0.50"}).status_code == 201
    with engine.connect() as conn:
        left = conn.execute(select(records.c.idempotency_key)).scalars().all()
        assert conn.execute(select(func.count()).select_from(records)).scalar_one() == 2
    assert sorted(left) == ["new", "old"]
    engine.dispose()
    assert ok(cli, "wallet", "show", "c1")["balance"] == "8.50"


def test_creating_a_customer_with_a_key_is_answered_once(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli)
    secret = key(cli, "billing")
    server = serve(cli.db_url)
    body = {"external_id": "acme-eu", "currency": "EUR", "name": "Acme EU"}
    with client(server, secret) as http:
        first = post(http, "signup-1", body, path="/v1/customers")
        again = post(http, "signup-1", body, path="/v1/customers")
        other = post(http, "signup-1", {**body, "name": "Acme"}, path="/v1/customers")
        without_key = http.post("/v1/customers", json=body)
    assert first.status_code == 201, first.text
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert other.status_code == 409
    assert other.json()["error"]["param"] == "Idempotency-Key"
    assert without_key.status_code == 409  # taken: the key is what makes a repeat a replay
    assert without_key.json()["error"]["param"] is None
    shown = ok(cli, "customer", "show", "acme-eu")
    assert shown["id"] == first.json()["id"] and shown["name"] == "Acme EU"


def test_a_charge_with_a_key_is_answered_once_and_events_ignore_the_header(
    cli: Cli,
    serve,  # type: ignore[no-untyped-def]
) -> None:
    new_project(cli, "c1")
    secret = key(cli, "ingest")
    server = serve(cli.db_url)
    setup = charge()
    with client(server, secret) as http:
        first = post(http, "charge-1", setup, path="/v1/charges")
        again = post(http, "charge-1", setup, path="/v1/charges")
        # The charge's own key: a new request with it is a duplicate, as in a file.
        duplicate = post(http, "charge-2", setup, path="/v1/charges")
        other = post(http, "charge-1", {**setup, "amount": "30.00"}, path="/v1/charges")
        refused = post(http, "charge-3", {**setup, "customer": "nobody"}, path="/v1/charges")
        retried = post(http, "charge-3", {**setup, "idempotency_key": "c1-b"}, path="/v1/charges")
    assert first.status_code == 200 and first.json()["status"] == "accepted", first.text
    assert again.headers["Idempotent-Replayed"] == "true" and again.content == first.content
    assert duplicate.json()["status"] == "duplicate"
    assert "Idempotent-Replayed" not in duplicate.headers
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    assert refused.status_code == 422  # refused: nothing stored, the key may be used again
    assert retried.status_code == 200 and retried.json()["status"] == "accepted"
    engine = create_db_engine(cli.db_url)
    with engine.connect() as conn:
        keys = conn.execute(select(charges_t.c.idempotency_key)).scalars().all()
        left = conn.execute(select(func.count()).select_from(idempotency_records_t)).scalar_one()
    engine.dispose()
    assert sorted(keys) == ["c1-b", "setup-c1"]
    assert left == 3  # charge-1, charge-2 and charge-3 (once it was accepted)
    with client(server, secret) as http:  # the event routes do not look at the header
        for _attempt in range(2):
            sent = http.post(
                "/v1/events",
                json={
                    "idempotency_key": "e1",
                    "customer": "c1",
                    "meter": "api_calls",
                    "timestamp": "2026-10-05T00:00:00Z",
                },
                headers={"Idempotency-Key": "charge-1"},
            )
            assert "Idempotent-Replayed" not in sent.headers, sent.text
