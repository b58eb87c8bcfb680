"""`neruba serve` in operation: readiness against a database that goes away or falls behind
the schema, metrics summed over workers, the access log, the body and rate limits, and the
drain on SIGTERM and SIGINT with a request in flight."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import Connection, select

from neruba_cli.db import migrate
from neruba_cli.db.engine import WRITE_OPTION, create_db_engine, sqlite_file
from neruba_cli.db.tables import api_keys_t
from tests.support.api import ApiServer, client, key
from tests.support.cli import Cli, ok
from tests.support.databases import sqlite_only
from tests.support.prometheus import Parsed, parse_exposition
from tests.support.shops import new_project
from tests.support.tcp_proxy import proxied

CUSTOMER_ROUTE = "/v1/customers/{external_id:path}"  # the template, as routes/customers.py has it


def wait_for(predicate: Any, timeout: float = 10.0, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(step)


def readiness(server: ApiServer) -> httpx.Response:
    return httpx.get(f"{server.url}/readyz", timeout=10)


def full_log(server: ApiServer) -> str:
    return server.log.read_text(errors="replace")


def scrape(server: ApiServer) -> tuple[dict[str, str], list[Parsed]]:
    answer = httpx.get(f"{server.url}/metrics", timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_exposition(answer.text)


def value(samples: list[Parsed], name: str, **labels: str) -> Decimal:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    return sum(
        (s.value for s in samples if s.name == name and labels.items() <= s.labels.items()),
        Decimal(0),
    )


# --------------------------------------------------------------------------- readiness


def test_readiness_follows_the_database_while_liveness_does_not(  # type: ignore[no-untyped-def]
    cli: Cli, serve
) -> None:
    assert cli.db_url is not None
    served_url, proxy = proxied(cli.db_url)
    server = serve(served_url)
    ready = readiness(server)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ok"
    assert {name: check["status"] for name, check in body["checks"].items()} == {
        "database": "ok",
        "schema": "ok",
        "draining": "ok",
    }
    assert body["checks"]["schema"]["detail"] == f"at head ({migrate.head_revision()})"
    assert ready.headers["Request-Id"].startswith("req_")

    database_file = sqlite_file(served_url)
    moved = Path(f"{database_file}.away")
    try:
        if proxy is not None:
            proxy.stop()  # the server is gone, and every open connection with it
        else:
            assert database_file is not None
            shutil.move(database_file, moved)
        down = readiness(server)
        assert down.status_code == 503, down.text
        assert down.json()["status"] == "unavailable"
        assert down.json()["checks"]["database"]["status"] == "fail"
        assert "127.0.0.1" not in down.text and "sqlite" not in down.text  # no address given out
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive all the same
    finally:
        if proxy is not None:
            proxy.start()
        else:
            assert database_file is not None
            shutil.move(moved, database_file)
    back = wait_for(lambda: (answer := readiness(server)).status_code == 200 and answer)
    assert back.json()["status"] == "ok"
    assert "not ready: database" in full_log(server)  # the reason, in the server's log
    if proxy is not None:
        proxy.stop()


def test_readiness_is_503_while_the_schema_is_behind(empty_db_url: str, serve) -> None:  # type: ignore[no-untyped-def]
    cli = Cli(empty_db_url)
    assert cli("db", "upgrade").exit_code == 0
    server = serve(empty_db_url)
    assert readiness(server).status_code == 200
    head = migrate.head_revision()
    previous = sorted(p.name[:4] for p in (migrate.migrations_path() / "versions").glob("0*.py"))
    older = previous[-2]
    down = cli("db", "downgrade", older, "--yes")
    assert down.exit_code == 0, down.stderr
    behind = readiness(server)
    assert behind.status_code == 503, behind.text
    schema = behind.json()["checks"]["schema"]
    assert schema["status"] == "fail"
    assert f"at {older}" in schema["detail"] and head in schema["detail"]
    assert cli("db", "upgrade").exit_code == 0
    assert readiness(server).status_code == 200


# --------------------------------------------------------------------------- metrics


def test_metrics_count_requests_by_route_and_carry_every_projects_figures(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1")
    new_project(cli, slug="other")
    secret = key(cli, "read")
    server = serve(cli.db_url, env={"NERUBA_API_METRICS_CACHE_SECONDS": "0"})
    types, before = scrape(server)
    assert types["neruba_http_requests_total"] == "counter"
    assert types["neruba_http_request_duration_seconds"] == "histogram"
    with client(server, secret) as http:
        assert http.get("/v1/customers/c1").status_code == 200
        assert http.get("/v1/customers/c1").status_code == 200
        assert http.get("/v1/customers/nobody").status_code == 404
        assert http.get("/no/such/path").status_code == 404
    _types, after = scrape(server)
    route = CUSTOMER_ROUTE
    requests = "neruba_http_requests_total"
    assert value(after, requests, route=route, status="200", method="GET") == 2
    assert value(after, requests, route=route, status="404") == 1
    assert value(after, requests, route="unmatched", status="404") == 1
    assert value(after, requests, route="/metrics") == value(before, requests, route="/metrics") + 1
    routes = {s.labels["route"] for s in after if "route" in s.labels}
    assert not any("c1" in r or "nobody" in r or "/no/such" in r for r in routes), routes

    duration = "neruba_http_request_duration_seconds"
    buckets = [s for s in after if s.name == f"{duration}_bucket" and s.labels["route"] == route]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf"
    assert counts[-1] == value(after, f"{duration}_count", route=route) == 3
    assert Decimal(0) < value(after, f"{duration}_sum", route=route) < 30

    assert value(after, "neruba_stats_up") == 1
    generated = {s.labels["project"] for s in after if s.name.startswith("neruba_stats_generated")}
    assert generated == {"acme", "other"}
    assert types["neruba_events_total"] == "counter"


@sqlite_only
@pytest.mark.slow
def test_metrics_are_summed_over_two_workers(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(cli.db_url, "--workers", "2")
    requests = 60
    for _ in range(requests):  # a new connection each time: the workers share them out
        assert httpx.get(f"{server.url}/readyz", headers={"Connection": "close"}).is_success

    def counted() -> bool:
        _types, samples = scrape(server)
        return value(samples, "neruba_http_requests_total", route="/readyz") >= requests

    wait_for(counted, timeout=10)
    time.sleep(1.5)  # each worker writes its counts for the others once a second
    seen = set()
    for _ in range(8):  # whichever worker answers the scrape, the same sum
        _types, samples = scrape(server)
        seen.add(value(samples, "neruba_http_requests_total", route="/readyz"))
        count = value(samples, "neruba_http_request_duration_seconds_count", route="/readyz")
        assert count == requests
    assert seen == {Decimal(requests)}
    assert server.stop() == 0


# --------------------------------------------------------------------------- access log


@sqlite_only
def test_the_access_log_names_route_status_and_key_never_a_secret(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1")
    made = ok(cli, "key", "create", "--scope", "read")
    secret, key_id = made["secret"], made["id"]
    server = serve(cli.db_url)
    with client(server, secret) as http:
        assert http.get("/v1/customers/c1", params={"note": "x"}).status_code == 200
    with client(server) as http:
        leaked = http.get("/v1/customers/c1", params={"api_key": secret, "token": secret})
        assert leaked.status_code == 401
    with client(server, secret[:-4] + "AAAA") as http:
        assert http.get("/v1/customers/c1").status_code == 401

    def lines() -> list[dict[str, Any]]:
        found = []
        for line in full_log(server).splitlines():
            if line.startswith("{") and '"request_id"' in line:
                found.append(orjson.loads(line))
        return [entry for entry in found if entry["route"] != "/healthz"]

    entries = wait_for(lambda: len(lines()) >= 3 and lines())
    good, leaked_entry, forged = entries[:3]
    assert good["method"] == "GET"
    assert good["route"] == CUSTOMER_ROUTE
    assert good["status"] == 200
    assert good["key"] == key_id and good["project"] == "acme"
    assert isinstance(good["duration_ms"], float | int) and good["duration_ms"] >= 0
    assert good["request_id"].startswith("req_")
    assert leaked_entry["status"] == 401 and leaked_entry["key"] is None
    assert forged["status"] == 401 and forged["key"] is None
    log = full_log(server)
    assert secret not in log and secret[:-4] not in log
    # neither the query string nor the raw path (the route template stands for it); ids are
    # random text, so look for the path and the parameter, not for a bare "c1"
    assert "api_key" not in log and "note=" not in log and "/customers/c1" not in log


# --------------------------------------------------------------------------- limits


@sqlite_only
def test_past_the_burst_a_key_gets_429_with_retry_after(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1")
    first, second = key(cli, "read"), key(cli, "read")
    env = {"NERUBA_API_RATE_LIMIT": "0.5", "NERUBA_API_RATE_BURST": "3"}
    server = serve(cli.db_url, env=env)
    with client(server, first) as http:
        answers = [http.get("/v1/customers/c1") for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        limited = answers[-1]
        error = limited.json()["error"]
        assert error["type"] == "rate_limited"
        assert error["request_id"] == limited.headers["Request-Id"]
        retry = int(limited.headers["Retry-After"])
        assert 1 <= retry <= 2  # one token at 0.5 a second
        with client(server, second) as other:  # another key has its own bucket
            assert other.get("/v1/customers/c1").status_code == 200
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # probes are never limited
        time.sleep(retry)
        assert http.get("/v1/customers/c1").status_code == 200


@sqlite_only
def test_an_oversize_body_is_413_and_never_kept(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli)
    secret = key(cli, "ingest")
    server = serve(cli.db_url, env={"NERUBA_API_MAX_BODY_BYTES": "2048"})
    with client(server, secret) as http:
        refused = http.post("/v1/events", content=b"x" * 5000)
    assert refused.status_code == 413
    error = refused.json()["error"]
    assert error["type"] == "too_large" and "2048 bytes" in error["message"]
    assert error["request_id"] == refused.headers["Request-Id"]
    with client(server, secret) as http:  # under the limit: whatever the route makes of it
        assert http.post("/v1/events", content=b"{}").status_code != 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"external_id": "c9", "currency": "USD", "name": "'
        for _ in range(40):
            yield b"y" * 100
        yield b'"}'

    creator = key(cli, "billing")
    with client(server, creator) as http:
        streamed = http.post("/v1/customers", content=chunks())
    assert streamed.status_code == 413, streamed.text
    assert streamed.json()["error"]["type"] == "too_large"
    assert "c9" not in {c["external_id"] for c in ok(cli, "customer", "list")}


# --------------------------------------------------------------------------- drain


class KeyRowsHeld:
    """A transaction holding the API keys' rows (SQLite: the write lock), so a request that
    records its key's first use waits on the database until `release()`."""

    def __init__(self, db_url: str) -> None:
        self.engine = create_db_engine(db_url)
        self.conn: Connection = self.engine.connect()
        self.conn.execution_options(**{WRITE_OPTION: True})  # SQLite: BEGIN IMMEDIATE
        self.transaction = self.conn.begin()
        self.conn.execute(select(api_keys_t.c.id).with_for_update()).all()

    def release(self) -> None:
        if self.transaction.is_active:
            self.transaction.rollback()  # nothing changed: the waiting request goes on
        self.conn.close()
        self.engine.dispose()


@contextmanager
def slow_request(server: ApiServer, db_url: str, secret: str) -> Iterator[tuple[Any, Any]]:
    """A real request held in flight by a database lock: (its result box, the lock)."""
    held = KeyRowsHeld(db_url)
    result: dict[str, Any] = {}

    def call() -> None:
        with client(server, secret) as http:
            try:
                result["answer"] = http.get("/v1/customers/c1", timeout=60)
            except httpx.HTTPError as exc:
                result["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        assert thread.is_alive() and not result, ("the request was not held", result)
        yield thread, result, held  # type: ignore[misc]
    finally:
        held.release()
        thread.join(30)


def refused(server: ApiServer) -> bool:
    """No longer served: the connection is refused, cut before an answer, or (several
    workers: the supervisor holds the listening socket until they have all ended) left
    unanswered."""
    try:
        httpx.get(f"{server.url}/healthz", timeout=2)
    except httpx.TransportError:
        return True
    return False


def drain_with_request_in_flight(cli: Cli, serve, sig: int, *args: str) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1")
    secret = key(cli, "read")  # never used: its first request writes last_used_at
    env = {"NERUBA_API_DRAIN_DELAY_SECONDS": "2", "NERUBA_API_DRAIN_SECONDS": "20"}
    server = serve(cli.db_url, *args, env=env)
    assert cli.db_url is not None
    with slow_request(server, cli.db_url, secret) as (thread, result, held):
        server.process.send_signal(sig)
        draining = wait_for(lambda: (answer := readiness(server)).status_code == 503 and answer)
        assert draining.json()["checks"]["draining"]["status"] == "fail"
        assert draining.json()["checks"]["database"]["status"] == "ok"
        wait_for(lambda: refused(server), timeout=10)  # then the listener closes
        assert thread.is_alive() and not result  # while the request is still in flight
        held.release()
        thread.join(30)
    assert "error" not in result, result
    answer = result["answer"]
    assert answer.status_code == 200, answer.text
    assert answer.json()["external_id"] == "c1"
    assert server.process.wait(30) == 0
    assert "/readyz answers 503" in full_log(server)  # (workers get SIGTERM from uvicorn)


@pytest.mark.slow
def test_sigterm_drains_a_request_in_flight_then_exits_0(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    drain_with_request_in_flight(cli, serve, signal.SIGTERM)


@sqlite_only
@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "workers"),
    [(signal.SIGTERM, "2"), (signal.SIGINT, "1"), (signal.SIGINT, "2")],
    ids=["sigterm-2-workers", "sigint-1-worker", "sigint-2-workers"],
)
def test_every_stop_signal_drains_with_any_number_of_workers(  # type: ignore[no-untyped-def]
    cli: Cli, serve, sig: int, workers: str
) -> None:
    drain_with_request_in_flight(cli, serve, sig, "--workers", workers)
