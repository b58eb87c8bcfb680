"""The OpenAPI document and the docs page, both off unless `[api] docs` is on.

The document is FastAPI's, completed from the routes themselves so that a new route is
described like the others without repeating anything:

- the scope a route checks (its `requires(scope)` dependency) is the operation's
  `x-neruba-scope` and the scope of its bearer security requirement (OpenAPI 3.1 lets a
  non-OAuth requirement name roles), and the description says it;
- the errors any request may meet are declared with the one error shape where they apply:
  401/403/429/503 on a keyed route, 422 on a route that takes input, 400/413 on a route that
  takes a body, 500 everywhere; a route declares its own (404, 409, ...) with `responses=`;
- every answer documents the `Request-Id` header.

The docs page is Swagger UI from the `fastapi-offline` package's files, served by this
process under `/docs/assets`: it works without any network access.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.staticfiles import StaticFiles

from neruba_cli.api.auth import KEY_CACHE_SECONDS, scope_of
from neruba_cli.api.errors import ErrorResponse

DOCS_URL = "/docs"
OPENAPI_URL = "/openapi.json"
ASSETS_URL = "/docs/assets"
SCOPE_EXTENSION = "x-neruba-scope"
# Set (`openapi_extra={PER_ITEM_EXTENSION: True}`) on an operation whose body holds items that
# are judged one by one: an invalid item is a `rejected` result in a 200, not a 4xx.
PER_ITEM_EXTENSION = "x-neruba-per-item-results"
SECURITY_SCHEME = "bearer"
ERROR_SCHEMA = "ErrorResponse"

DESCRIPTION = f"""\
Usage ingest, billing reads and credits over HTTP, on the project API keys of the CLI.

**Auth.** `Authorization: Bearer nrb_...` with a key made by `neruba key create`. The key
decides the project; each operation names the scope it needs (`{SCOPE_EXTENSION}`, and the
scope of its `bearer` requirement). A missing, unknown, revoked, expired or forged key is one
401 that does not say which; a key without the scope is a 403. A revocation takes effect
within {KEY_CACHE_SECONDS:g} seconds.

**Errors.** Every 4xx and 5xx answer is `{{"error": {{"type", "message", "param",
"request_id"}}}}`; every answer carries a `Request-Id` header.

**Versioning.** Paths carry the major version (`/v1`); within it, changes only add (new
operations, new optional fields, new fields in answers). `info.version` is the date of the
last change to this document.
"""

TAGS: list[dict[str, str]] = [
    {"name": "usage", "description": "Usage events and one-off charges, as `neruba ingest`."},
    {"name": "customers", "description": "Customers, their current usage and their wallet."},
    {"name": "credits", "description": "Credit grants, as `neruba credit grant`."},
    {"name": "invoices", "description": "Invoices, their JSON and their explanation."},
    {"name": "operations", "description": "Liveness, readiness and metrics: no key needed."},
]

# The errors any request may meet, by what the operation is.
KEYED_ERRORS: dict[str, str] = {
    "401": "Missing, unknown, revoked, expired or forged key (one message for all)",
    "403": "The key lacks the operation's scope",
    "429": "The key's rate limit is reached; see Retry-After",
    "503": "The database is not answering, or the server is draining",
}
INPUT_ERRORS: dict[str, str] = {"422": "A parameter or field failed validation (`param` names it)"}
BODY_ERRORS: dict[str, str] = {
    "400": "The body is not valid JSON",
    "413": "The body or the batch is over the limit",
}
ANY_ERRORS: dict[str, str] = {"500": "Unexpected failure; the request id is in the server log"}
REQUEST_ID_HEADER: dict[str, Any] = {
    "description": "The request's id, also in the error body and the server's access log.",
    "required": True,
    "schema": {"type": "string"},
}
AUTHENTICATE_HEADER: dict[str, Any] = {
    "description": "`Bearer`: the scheme the key goes in.",
    "schema": {"type": "string"},
}
RETRY_AFTER_HEADER: dict[str, Any] = {
    "description": "Seconds to wait before the next request.",
    "schema": {"type": "integer"},
}


@dataclass(frozen=True)
class Operation:
    """One method of one path, as the app serves it."""

    path: str
    method: str
    name: str
    scope: str | None
    tags: tuple[str, ...]
    in_schema: bool


def operations(app: FastAPI) -> list[Operation]:
    """Every operation of the app's API routes (those of included routers too)."""
    found = []
    for context in iter_route_contexts(app.routes):
        if not isinstance(context.original_route, APIRoute):
            continue
        for method in sorted(context.methods or ()):
            found.append(
                Operation(
                    path=str(context.path_format),
                    method=method.lower(),
                    name=str(context.name),
                    scope=_dependency_scope(context.dependant),
                    tags=tuple(str(tag) for tag in context.tags or ()),
                    in_schema=bool(context.include_in_schema),
                )
            )
    return found


def _dependency_scope(dependant: Dependant) -> str | None:
    """The scope a route checks, found among its dependencies (None: no key needed)."""
    pending = list(dependant.dependencies)
    while pending:
        dependant = pending.pop()
        if dependant.call is not None and (scope := scope_of(dependant.call)) is not None:
            return scope
        pending.extend(dependant.dependencies)
    return None


def operation_id(route: Any) -> str:
    """The operation id is the route function's name (`get_customer`): short and stable."""
    return str(route.name)


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}
        },
    }


def _complete_operation(operation: dict[str, Any], scope: str | None) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    errors: dict[str, str] = dict(ANY_ERRORS)
    if scope is not None:
        operation[SCOPE_EXTENSION] = scope
        operation["security"] = [{SECURITY_SCHEME: [scope]}]
        note = f"Scope: `{scope}`."
        description = operation.get("description", "")
        if note not in description:
            operation["description"] = f"{description}\n\n{note}".strip()
        errors.update(KEYED_ERRORS)
    if operation.get("parameters") or "requestBody" in operation:
        errors.update(INPUT_ERRORS)
    if "requestBody" in operation:
        errors.update(BODY_ERRORS)
    for status, description in errors.items():
        responses.setdefault(status, _error_response(description))
    for status, response in responses.items():  # FastAPI's own 422 is not what we answer
        schema = response.get("content", {}).get("application/json", {}).get("schema", {})
        if schema.get("$ref", "").endswith("/HTTPValidationError"):
            responses[status] = _error_response(INPUT_ERRORS["422"])
    for status, response in responses.items():
        headers = response.setdefault("headers", {})
        headers.setdefault("Request-Id", REQUEST_ID_HEADER)
        if status == "401":
            headers.setdefault("WWW-Authenticate", AUTHENTICATE_HEADER)
        if status == "429":
            headers.setdefault("Retry-After", RETRY_AFTER_HEADER)


def build_schema(app: FastAPI) -> dict[str, Any]:
    """The complete document of `app` (what `/openapi.json` serves)."""
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=DESCRIPTION,
        routes=app.routes,
        tags=TAGS,
        servers=[{"url": "/", "description": "This server"}],
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.setdefault(ERROR_SCHEMA, ErrorResponse.model_json_schema(ref_template=_REF))
    for name, definition in (
        ErrorResponse.model_json_schema(ref_template=_REF).get("$defs", {}).items()
    ):
        schemas.setdefault(name, definition)
    schemas[ERROR_SCHEMA].pop("$defs", None)
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A project API key (`neruba key create`): `Authorization: Bearer nrb_...`.",
    }
    scopes = {(op.path, op.method): op.scope for op in operations(app)}
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            _complete_operation(operation, scopes.get((path, method)))
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return schema


_REF = "#/components/schemas/{model}"


def install(app: FastAPI, *, docs: bool) -> None:
    """Serve `/openapi.json` and `/docs` when `docs` is on; without it both are 404 (the app
    is created with `openapi_url=None`, and neither route exists)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_schema(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    if not docs:
        return
    assets = resources.files("fastapi_offline") / "static"
    app.mount(ASSETS_URL, StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{OPENAPI_URL}",
            title=f"{app.title} {app.version}",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False},
        )
