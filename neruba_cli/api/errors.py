"""One error shape for every failure: `{"error": {"type", "message", "param", "request_id"}}`.

The status of a service error follows its kind (`NerubaError.kind`), so a rule that refuses
something in the CLI with an exit code refuses it over HTTP with the matching status, from the
same raise. Nothing but this module decides a status from an exception.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from neruba_cli.api.responses import JsonResponse
from neruba_cli.domain.errors import InvalidInput, NerubaError

# (status, type) by the kind of a service error.
STATUS_BY_KIND: dict[str, tuple[int, str]] = {
    "invalid_input": (422, "invalid_request"),
    "usage_error": (400, "invalid_request"),
    "not_found": (404, "not_found"),
    "already_exists": (409, "conflict"),
    "idempotency_conflict": (409, "conflict"),
    "access_denied": (403, "forbidden"),
    "lock_held": (409, "busy"),
    "lock_lost": (409, "busy"),
    "database_error": (503, "unavailable"),
}
# The type of an error by its status, for errors raised by the framework itself.
TYPE_BY_STATUS = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "invalid_request",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ErrorBody(BaseModel):
    type: str
    message: str
    param: str | None = None
    request_id: str


class ErrorResponse(BaseModel):
    """What every 4xx and 5xx answer carries."""

    error: ErrorBody


class ApiError(Exception):
    """A refusal decided in the API layer (authentication, limits, idempotency)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type or TYPE_BY_STATUS.get(status, "error")
        self.message = message
        self.param = param
        self.headers = headers or {}


@contextmanager
def naming(param: str) -> Iterator[None]:
    """Within the block, a value the services refuse (InvalidInput) is a 422 naming `param`:
    the query parameter or field the value came from."""
    try:
        yield
    except InvalidInput as exc:
        raise ApiError(422, str(exc), param=param) from exc


def not_found(what: str) -> dict[int | str, dict[str, Any]]:
    """The 404 of a route that looks something up, for its `responses=`."""
    return {404: {"model": ErrorResponse, "description": f"No such {what} in the key's project"}}


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


def error_response(
    request: Request,
    status: int,
    type: str,
    message: str,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JsonResponse:
    body = {
        "error": {
            "type": type,
            "message": message,
            "param": param,
            "request_id": request_id(request),
        }
    }
    return JsonResponse(body, status_code=status, headers=headers)


async def send_error(
    send: Send,
    status: int,
    type: str,
    message: str,
    request_id: str,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """The error shape sent straight on an ASGI channel, for the middleware that answers
    before (or instead of) the app."""
    body = orjson.dumps(
        {"error": {"type": type, "message": message, "param": None, "request_id": request_id}}
    )
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def from_service_error(request: Request, exc: NerubaError) -> JsonResponse:
    status, type = STATUS_BY_KIND.get(exc.kind, (422, "invalid_request"))
    return error_response(request, status, type, str(exc), param=getattr(exc, "param", None))


def _validation_param(error: dict[str, Any]) -> str | None:
    """`events.3.quantity` for a field of the body, `limit` for a query parameter."""
    location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")]
    return ".".join(location) or None


async def _api_error(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, ApiError)
    return error_response(
        request, exc.status, exc.type, exc.message, param=exc.param, headers=exc.headers
    )


async def _service_error(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, NerubaError)
    return from_service_error(request, exc)


async def _invalid(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = errors[0] if errors else {}
    param = _validation_param(first)
    message = str(first.get("msg", "invalid request"))
    if first.get("type") == "extra_forbidden":
        message = f"unknown field {param!r}"
    elif first.get("type") == "json_invalid":
        message = "the body is not valid JSON"
    elif param and not message.startswith(f"{param}:"):
        message = f"{param}: {message[:1].lower()}{message[1:]}"
    status = 400 if first.get("type") == "json_invalid" else 422
    return error_response(request, status, "invalid_request", message, param=param)


async def _http(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, StarletteHTTPException)
    type = TYPE_BY_STATUS.get(exc.status_code, "error")
    headers = dict(exc.headers or {})
    return error_response(request, exc.status_code, type, str(exc.detail), headers=headers)


async def _database(request: Request, exc: Exception) -> JsonResponse:
    logging.getLogger("neruba.api").warning(
        "request %s: the database failed: %s", request_id(request), exc
    )
    return error_response(request, 503, "unavailable", "the database is not answering")


Handler = Callable[[Request, Exception], Awaitable[JsonResponse]]
# The answer to each kind of failure; any other exception is the 500 of middleware.py.
HANDLERS: dict[type[Exception], Handler] = {
    ApiError: _api_error,
    NerubaError: _service_error,
    RequestValidationError: _invalid,
    StarletteHTTPException: _http,
    SQLAlchemyError: _database,
}


def handler_for(exc: Exception) -> Handler | None:
    """The handler of `exc`'s nearest class in HANDLERS, as Starlette would pick it."""
    for cls in type(exc).__mro__:
        handler = HANDLERS.get(cls)
        if handler is not None:
            return handler
    return None


def install(app: FastAPI) -> None:
    """Register the handlers that give every failure the one shape (an unexpected exception
    becomes the 500 of middleware.py, which sees it first)."""
    for cls, handler in HANDLERS.items():
        app.add_exception_handler(cls, handler)


# Documented on every route: the error answers any request may get.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Malformed request (not JSON, bad header)"),
        (401, "Missing, unknown, revoked, expired or forged key"),
        (403, "The key lacks the route's scope"),
        (413, "Body or batch over the limit"),
        (422, "A field failed validation"),
        (429, "Rate limit of the key reached; see Retry-After"),
        (503, "The database is not answering, or the server is draining"),
    )
}
