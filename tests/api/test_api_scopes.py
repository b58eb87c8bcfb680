"""The scope matrix: every operation that needs a key, read from the served OpenAPI document
with the scope it declares (`x-neruba-scope`), against every kind of key.

- no key, a forged, revoked or expired one: 401, one message for all;
- a key of another project: the seeded project's rows are 404 and never in an answer;
- a key holding every scope but that one: 403;
- a key holding that scope only: neither 401 nor 403 (a read answers 200 on the seeded rows).

An operation added to the API is in the matrix without touching this file."""

from __future__ import annotations

import time
from typing import Any

import httpx

from neruba_cli.domain.keys import IMPLIED_BY, SCOPES
from tests.support.api import (
    SchemaOperation,
    Seed,
    client,
    key,
    load_schema,
    schema_operations,
    seed,
)
from tests.support.cli import Cli, ok

UNAUTHORIZED = "missing or invalid API key"


def _strings(value: Any) -> set[str]:
    """Every string in a JSON value, keys and values."""
    if isinstance(value, dict):
        return {str(k) for k in value} | {s for v in value.values() for s in _strings(v)}
    if isinstance(value, list):
        return {s for v in value for s in _strings(v)}
    return {value} if isinstance(value, str) else set()


def _body(op: SchemaOperation, schema: dict[str, Any]) -> Any:
    """A request body for the operation: the example its model gives, else an empty object."""
    if "requestBody" not in op.operation:
        return None
    ref = op.operation["requestBody"]["content"]["application/json"]["schema"].get("$ref", "")
    model = schema["components"]["schemas"].get(ref.rpartition("/")[2], {})
    examples = model.get("examples") or []
    return examples[0] if examples else {}


def _send(http: httpx.Client, op: SchemaOperation, seeded: Seed, body: Any) -> httpx.Response:
    url = op.url(seeded.path_values)
    if body is None:
        return http.request(op.method.upper(), url)
    return http.request(op.method.upper(), url, json=body)


def test_every_keyed_operation_against_every_kind_of_key(  # type: ignore[no-untyped-def]
    cli: Cli, serve, tmp_path
) -> None:
    seeded = seed(cli, tmp_path)
    forged_from = key(cli, *SCOPES)
    revoked = key(cli, *SCOPES)
    ok(cli, "key", "revoke", revoked)
    expired = key(cli, *SCOPES, extra=("--expires", "1s"))
    foreign = key(cli, *SCOPES, project="other")
    only = {scope: key(cli, scope) for scope in SCOPES}
    lacking = {
        scope: key(cli, *[s for s in SCOPES if s != scope and s not in IMPLIED_BY.get(scope, ())])
        for scope in SCOPES
    }
    forged = forged_from[:-6] + ("AAAAAA" if not forged_from.endswith("AAAAAA") else "BBBBBB")
    time.sleep(1.2)  # the expired key is past its expiry
    server = serve(cli.db_url, "--docs")
    schema = load_schema(server)
    keyed = [op for op in schema_operations(schema) if op.scope is not None]
    assert keyed, "no operation needs a key"
    unknown = {name for op in keyed for name in op.path_parameters} - set(seeded.path_values)
    assert not unknown, f"path parameters without a seeded row: {sorted(unknown)}"

    failures: list[str] = []
    for op in keyed:
        scope = op.scope
        assert scope is not None
        body = _body(op, schema)

        for name, secret in (
            ("no key", None),
            ("forged", forged),
            ("garbage", "nrb_live_not-a-key"),
            ("revoked", revoked),
            ("expired", expired),
        ):
            with client(server, secret) as http:
                answer = _send(http, op, seeded, body)
            message = answer.json().get("error", {}).get("message") if answer.content else None
            if answer.status_code != 401 or message != UNAUTHORIZED:
                failures.append(f"{op} {name}: {answer.status_code} {answer.text[:200]}")
            elif answer.headers.get("WWW-Authenticate") != "Bearer":
                failures.append(f"{op} {name}: no WWW-Authenticate")

        with client(server, lacking[scope]) as http:
            answer = _send(http, op, seeded, body)
        if answer.status_code != 403 or f"'{scope}'" not in answer.json()["error"]["message"]:
            failures.append(f"{op} without {scope!r}: {answer.status_code} {answer.text[:200]}")

        with client(server, only[scope]) as http:
            answer = _send(http, op, seeded, body)
        refused = answer.status_code in (401, 403) or answer.status_code >= 500
        if refused or (op.method == "get" and answer.status_code != 200):  # a read sees the row
            failures.append(f"{op} with only {scope!r}: {answer.status_code} {answer.text[:200]}")

        with client(server, foreign) as http:
            answer = _send(http, op, seeded, body)
        if op.path_parameters:
            allowed = {404} if body is None else {404, 422}  # a body may be refused first
            if answer.status_code not in allowed:
                failures.append(f"{op} foreign key: {answer.status_code} {answer.text[:200]}")
        if answer.status_code < 400:
            leaked = _strings(answer.json()) & seeded.identifiers
            if leaked:
                failures.append(f"{op} foreign key sees {sorted(leaked)}")
        elif answer.status_code >= 500:
            failures.append(f"{op} foreign key: {answer.status_code} {answer.text[:200]}")
    assert failures == []


def test_the_public_operations_need_no_key(sqlite_cli: Cli, serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(sqlite_cli.db_url, "--docs")
    schema = load_schema(server)
    public = [op for op in schema_operations(schema) if op.scope is None]
    assert {op.path for op in public} >= {"/healthz"}
    with client(server) as http:
        for op in public:
            answer = http.request(op.method.upper(), op.path)
            assert answer.status_code not in (401, 403), (str(op), answer.text)
