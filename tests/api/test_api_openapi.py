"""The OpenAPI document is complete and the docs page works offline, and neither exists unless
docs are turned on (`--docs`, NERUBA_API_DOCS, `[api] docs = true`).

The completeness test walks every operation of the app's document, so a route added without
an operation id, a summary, its scope, its models or its errors fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from neruba_cli.api.app import API_VERSION, create_app
from neruba_cli.api.openapi import operations
from neruba_cli.config import ApiSection
from neruba_cli.domain.keys import SCOPES
from tests.support.api import ApiServer, schema_operations
from tests.support.browser import OFFLINE, chromium, require_chromium
from tests.support.cli import Cli

ERROR_REF = "#/components/schemas/ErrorResponse"
# The routes any caller may use without a key: the operations ones, outside /v1.
PUBLIC_TAG = "operations"


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The document, from the app itself (building it needs no database)."""
    db = tmp_path_factory.mktemp("schema") / "unused.db"
    return create_app(f"sqlite:///{db}", ApiSection(docs=True)).openapi()


def _json_schema(entry: dict[str, Any]) -> dict[str, Any] | None:
    content = entry.get("content", {})
    return content.get("application/json", {}).get("schema") if content else None


def _errors_expected(operation: dict[str, Any], path_parameters: list[str]) -> set[str]:
    """The statuses an operation can answer whatever it does, by what it takes."""
    expected = {"500"}
    if operation.get("x-neruba-scope"):
        expected |= {"401", "403", "429", "503"}
    if operation.get("parameters") or "requestBody" in operation:
        expected.add("422")
    if "requestBody" in operation:
        expected |= {"400", "413"}
    if path_parameters:
        expected.add("404")  # a path names a row, which may not exist in the key's project
    return expected


def test_every_operation_is_described_completely(schema: dict[str, Any]) -> None:
    described_tags = {tag["name"] for tag in schema.get("tags", [])}
    ids: list[str] = []
    problems: list[str] = []
    found = schema_operations(schema)
    assert any(op.path.startswith("/v1/") for op in found)
    for op in found:
        operation = op.operation

        def problem(text: str, op: Any = op) -> None:
            problems.append(f"{op}: {text}")

        ids.append(operation.get("operationId", ""))
        if not re.fullmatch(r"[a-z][a-z0-9_]*", operation.get("operationId", "")):
            problem("no operationId (the route function's name)")
        summary = operation.get("summary", "")
        if not summary or summary == operation.get("operationId", "").replace("_", " ").title():
            problem("no summary= of its own")
        tags = operation.get("tags", [])
        if not tags or not set(tags) <= described_tags:
            problem(f"tags {tags} not all described in the document's tags")
        scope = op.scope
        if scope is None:
            if PUBLIC_TAG not in tags or op.path.startswith("/v1"):
                problem("no scope: only the operations routes outside /v1 need no key")
            if operation.get("security"):
                problem("security without a scope")
        else:
            if scope not in SCOPES:
                problem(f"unknown scope {scope!r}")
            if operation.get("security") != [{"bearer": [scope]}]:
                problem(f"security {operation.get('security')} is not bearer with {scope!r}")
            if f"Scope: `{scope}`." not in operation.get("description", ""):
                problem("the description does not name the scope")
        if "requestBody" in operation:
            body = _json_schema(operation["requestBody"])
            if not body or not ("$ref" in body or "properties" in body):
                problem("the request body is not a model")
        responses: dict[str, Any] = operation.get("responses", {})
        successes = {status: entry for status, entry in responses.items() if status < "400"}
        if not successes:
            problem("no success response")
        for status, entry in successes.items():
            if "application/json" in entry.get("content", {}):
                body = _json_schema(entry) or {}
                if "$ref" not in body and "$ref" not in body.get("items", {}):
                    problem(f"{status}: the answer is not a named model")
            elif not entry.get("content") and status != "204":
                problem(f"{status}: no content declared")
        missing = _errors_expected(operation, op.path_parameters) - set(responses)
        if missing:
            problem(f"undeclared error statuses {sorted(missing)}")
        for status, entry in responses.items():
            if "Request-Id" not in entry.get("headers", {}):
                problem(f"{status}: no Request-Id header")
            if status < "400" or (scope is None and status == "503"):
                continue  # readiness answers 503 with its checks, not an error
            if (_json_schema(entry) or {}).get("$ref") != ERROR_REF:
                problem(f"{status}: not the error shape")
    names = schema["components"]["schemas"]
    problems += [f"model {name}: two models have its name" for name in names if "__" in name]
    assert problems == []
    assert len(ids) == len(set(ids)), "operation ids repeat"


def test_the_document_lists_every_route_with_the_scope_it_checks(schema: dict[str, Any]) -> None:
    app = create_app("sqlite:///unused.db", ApiSection(docs=True))
    served = {(op.path, op.method): op.scope for op in operations(app) if op.in_schema}
    documented = {(op.path, op.method): op.scope for op in schema_operations(schema)}
    assert documented == served
    hidden = {op.path for op in operations(app) if not op.in_schema}
    assert hidden == {"/docs"}


def test_the_document_says_its_version_auth_and_errors(schema: dict[str, Any]) -> None:
    info = schema["info"]
    assert info["version"] == API_VERSION
    assert info["title"] == "Neruba API"
    assert "/v1" in info["description"] and "Request-Id" in info["description"]
    assert schema["servers"] == [{"url": "/", "description": "This server"}]
    bearer = schema["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    error = schema["components"]["schemas"]["ErrorResponse"]
    body = schema["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["error"]
    assert set(body["properties"]) == {"type", "message", "param", "request_id"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # not what we answer


# --------------------------------------------------------------------------- gating


def _docs_are(server: ApiServer, on: bool) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for path in ("/openapi.json", "/docs", "/docs/assets/swagger-ui-bundle.js"):
            answer = http.get(path)
            assert answer.status_code == (200 if on else 404), (path, answer.text[:200])
            if not on:
                assert answer.json()["error"]["type"] == "not_found"
            assert answer.headers["Request-Id"].startswith("req_")


def test_docs_turn_on_by_flag_environment_or_config_file(  # type: ignore[no-untyped-def]
    sqlite_cli: Cli, serve, tmp_path: Path
) -> None:
    db = sqlite_cli.db_url
    _docs_are(serve(db, "--docs"), on=True)
    _docs_are(serve(db, env={"NERUBA_API_DOCS": "true"}), on=True)
    config = tmp_path / "docs-on.toml"
    config.write_text("[api]\ndocs = true\n", encoding="utf-8")
    _docs_are(serve(db, env={"NERUBA_CONFIG": str(config)}), on=True)
    # The flag wins over the environment, which wins over the file.
    _docs_are(serve(db, "--no-docs", env={"NERUBA_API_DOCS": "true"}), on=False)
    _docs_are(serve(db, env={"NERUBA_API_DOCS": "false", "NERUBA_CONFIG": str(config)}), on=False)
    _docs_are(serve(db), on=False)


def test_the_docs_page_renders_offline_in_headless_chromium(  # type: ignore[no-untyped-def]
    sqlite_cli: Cli, serve, tmp_path: Path
) -> None:
    require_chromium()
    server = serve(sqlite_cli.db_url, "--docs")
    page = httpx.get(f"{server.url}/docs", timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    references = re.findall(r"""(?:src|href|url)\s*[:=]\s*["']([^"']+)["']""", page.text)
    assert len(references) >= 4, references  # script, stylesheet, icon, the document
    for reference in references:
        assert reference.startswith("/") and not reference.startswith("//"), reference
        assert httpx.get(f"{server.url}{reference}", timeout=30).status_code == 200, reference
    profile = f"--user-data-dir={tmp_path / 'chromium-profile'}"
    dom = chromium(profile, *OFFLINE, "--virtual-time-budget=20000", "--dump-dom", str(page.url))
    assert dom.returncode == 0, dom.stderr[-2000:]
    schema = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    for op in schema_operations(schema):
        assert f'data-path="{op.path}"' in dom.stdout, op  # Swagger UI drew the operation
    assert 'data-path="/v1/customers/{external_id}"' in dom.stdout
    assert "Neruba API" in dom.stdout and API_VERSION in dom.stdout
    assert "Failed to load API definition" not in dom.stdout


# --------------------------------------------------------------------------- the docs page

API_DOCS = Path(__file__).resolve().parents[2] / "docs" / "api" / "index.md"


def _table(heading: str) -> list[list[str]]:
    """The rows of the first table under `## heading` in docs/api/index.md, as cells."""
    text = API_DOCS.read_text(encoding="utf-8").split(f"\n## {heading}\n", 1)[1]
    section = text.split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_the_docs_scope_table_is_the_routes_declared_scopes() -> None:
    app = create_app("sqlite:///unused.db", ApiSection(docs=True))
    declared = {
        f"{op.method.upper()} {op.path}": op.scope or "none"
        for op in operations(app)
        if op.in_schema
    }
    documented = {
        route.strip("`"): scope.strip("`") for route, scope in _table("Authentication and scopes")
    }
    assert documented == declared


def test_the_docs_status_table_is_the_statuses_the_api_answers() -> None:
    from neruba_cli.api.errors import STATUS_BY_KIND, TYPE_BY_STATUS
    from neruba_cli.domain.errors import NerubaError

    rows = {
        (int(status), kind.strip("`")): exit_code for status, kind, _, exit_code in _table("Errors")
    }
    answered = set(STATUS_BY_KIND.values()) | {
        (status, kind) for status, kind in TYPE_BY_STATUS.items() if status != 415
    }
    assert set(rows) == answered
    classes: list[type[NerubaError]] = [NerubaError]
    exit_codes: dict[str, int] = {}
    while classes:
        found = classes.pop()
        exit_codes[found.kind] = found.exit_code
        classes.extend(found.__subclasses__())
    for kind, status_and_type in STATUS_BY_KIND.items():
        if kind in exit_codes:  # the status says what the CLI's exit code says
            assert str(exit_codes[kind]) in rows[status_and_type], (kind, rows[status_and_type])
