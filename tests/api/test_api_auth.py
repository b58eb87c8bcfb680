"""`neruba serve` authenticates with the project keys: the key decides the project, each route
names its scope, and any bad key is one 401 that does not say why."""

from __future__ import annotations

import time

import orjson

from tests.support.api import client, key
from tests.support.cli import Cli, ok
from tests.support.shops import new_project

UNAUTHORIZED = "missing or invalid API key"


def test_a_key_reads_its_own_project_only(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1")
    new_project(cli, "c2", slug="other")
    secret = key(cli, "read")
    server = serve(cli.db_url)
    with client(server, secret) as http:
        found = http.get("/v1/customers/c1")
        assert found.status_code == 200, found.text
        assert found.json()["external_id"] == "c1"
        assert found.headers["Request-Id"].startswith("req_")
        foreign = http.get("/v1/customers/c2")  # the other project's customer does not exist here
        assert foreign.status_code == 404
        error = foreign.json()["error"]
        assert error["type"] == "not_found"
        assert error["request_id"] == foreign.headers["Request-Id"]
        assert "c2" in error["message"]


def test_bad_keys_are_one_401_and_a_missing_scope_is_403(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1")
    reader = key(cli, "read")
    ingest_only = key(cli, "ingest")
    revoked = key(cli, "read")
    expired = key(cli, "read", extra=("--expires", "1s"))
    ok(cli, "key", "revoke", revoked)
    forged = reader[:-6] + ("AAAAAA" if not reader.endswith("AAAAAA") else "BBBBBB")
    time.sleep(1.2)
    server = serve(cli.db_url)
    answers = {}
    for name, secret in (
        ("missing", None),
        ("forged", forged),
        ("garbage", "not-a-key"),
        ("revoked", revoked),
        ("expired", expired),
    ):
        with client(server, secret) as http:
            answers[name] = http.get("/v1/customers/c1")
    for name, answer in answers.items():
        assert answer.status_code == 401, (name, answer.text)
        assert answer.json()["error"]["message"] == UNAUTHORIZED, name
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    with client(server, ingest_only) as http:
        refused = http.get("/v1/customers/c1")
    assert refused.status_code == 403
    assert "'read'" in refused.json()["error"]["message"]


def test_revocation_takes_effect_within_the_cache_time(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    new_project(cli, "c1")
    secret = key(cli, "read")
    server = serve(cli.db_url)
    with client(server, secret) as http:
        assert http.get("/v1/customers/c1").status_code == 200
        ok(cli, "key", "revoke", secret)
        deadline = time.monotonic() + 5.0 + 2.0  # KEY_CACHE_SECONDS, and some slack
        while http.get("/v1/customers/c1").status_code == 200:
            assert time.monotonic() < deadline, "a revoked key still works"
            time.sleep(0.2)
        assert http.get("/v1/customers/c1").status_code == 401


def test_health_needs_no_key_and_docs_are_off_by_default(cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(cli.db_url)
    with client(server) as http:
        health = http.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        for path in ("/openapi.json", "/docs"):
            hidden = http.get(path)
            assert hidden.status_code == 404, path
            assert orjson.loads(hidden.content)["error"]["type"] == "not_found"
