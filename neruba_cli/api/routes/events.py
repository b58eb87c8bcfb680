"""Usage ingest over HTTP: the same validation, idempotency and conflict rules as
`neruba ingest`, through the same code path (services/ingest/posted.py).

- `POST /v1/events`: one event (a JSONL line's object) → 200 accepted or duplicate, 409 for a
  conflict, 422 for a rejected event (the reason, and the field in `param`).
- `POST /v1/events/batch`: `{"events": [...]}` → 200 with the ingest summary and one result
  per event, in request order; a receipt like an import's (`neruba events receipts`).
- `POST /v1/charges`: one one-off charge (a `--format charges` line) → as one event; it also
  honours an `Idempotency-Key` header (api/idempotency.py), which the event routes do not
  take: an event's own `idempotency_key` is its idempotency.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from sqlalchemy import Connection

from neruba_cli.api.auth import Caller, requires
from neruba_cli.api.body import json_body, read_body
from neruba_cli.api.body import parse as parse_json
from neruba_cli.api.errors import COMMON_ERRORS, ApiError, ErrorResponse
from neruba_cli.api.idempotency import Idempotent, idempotency
from neruba_cli.api.middleware import audit_entry
from neruba_cli.api.openapi import PER_ITEM_EXTENSION
from neruba_cli.api.responses import JsonResponse
from neruba_cli.api.single_events import Posted
from neruba_cli.db.schema import Project
from neruba_cli.domain import charges as charge_rules
from neruba_cli.domain import events as event_rules
from neruba_cli.services.ingest import posted
from neruba_cli.services.ingest.posted import Recorded
from neruba_cli.services.ingest.receipts import LineOutcome
from neruba_cli.services.tenancy import audit

router = APIRouter(prefix="/v1", tags=["usage"], responses=COMMON_ERRORS)


class Outcome(BaseModel):
    """What became of one event or charge."""

    status: str  # accepted | duplicate
    idempotency_key: str
    batch: str | None = None  # accepted: the batch id the event is stored with
    stale_invoices: list[dict[str, str]] = []  # finalized invoices the event made stale
    warnings: list[str] = []


class Result(BaseModel):
    index: int
    status: str  # accepted | duplicate | conflict | rejected
    reason: str | None = None
    param: str | None = None
    stored: dict[str, Any] | None = None  # a conflict: what the key holds


class BatchSummary(BaseModel):
    lines: int
    accepted: int
    duplicates: int
    conflicts: int
    rejected: int
    duplicates_of_corrected: int
    batch: str
    source: str
    sha256: str | None
    first_event: str | None
    last_event: str | None
    periods: list[str]
    already_imported: list[str]
    stale_invoices: list[dict[str, str]]
    warnings: list[str]
    seconds: float
    results: list[Result]


_QUANTITY = {"oneOf": [{"type": "string"}, {"type": "number"}], "default": "1"}
EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One usage event, exactly a line of `neruba ingest` (JSONL).",
    "properties": {
        "idempotency_key": {"type": "string", "maxLength": event_rules.MAX_KEY},
        "customer": {"type": "string", "description": "The customer's external id"},
        "meter": {"type": "string"},
        "timestamp": {"type": "string", "description": "RFC 3339, with a time-zone offset"},
        "quantity": _QUANTITY,
        "properties": {"type": "object"},
        "operation": {"type": "string", "enum": list(event_rules.OPERATIONS)},
        "type": {"type": "string", "enum": ["event"]},
    },
    "required": ["idempotency_key", "customer", "meter", "timestamp"],
    "additionalProperties": False,
}
CHARGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One one-off charge, exactly a line of `neruba ingest --format charges`.",
    "properties": {
        "idempotency_key": {"type": "string", "maxLength": event_rules.MAX_KEY},
        "customer": {"type": "string", "description": "The customer's external id"},
        "amount": {"type": "string", "description": "In the customer's currency, > 0"},
        "description": {"type": "string", "maxLength": charge_rules.MAX_DESCRIPTION},
        "timestamp": {"type": "string", "description": "RFC 3339 (default: now)"},
        "type": {"type": "string", "enum": ["charge"]},
    },
    "required": ["idempotency_key", "customer", "amount", "description"],
    "additionalProperties": False,
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_ONE_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "Conflict: the key holds another payload"},
    422: {"model": ErrorResponse, "description": "Rejected: the reason, the field in `param`"},
}


@router.post(
    "/events",
    summary="Send one usage event",
    response_model=None,
    responses={200: {"model": Outcome}, **_ONE_ERRORS},
    openapi_extra=_body(EVENT_SCHEMA),
)
async def post_event(
    request: Request, caller: Caller = Depends(requires("ingest"))
) -> JsonResponse:
    return await post_one(request, caller)


_CHARGE_CONFLICT = {
    "model": ErrorResponse,
    "description": "Conflict: the key holds another payload, or the Idempotency-Key was used "
    "with another body or on another route",
}


@router.post(
    "/charges",
    summary="Add one one-off charge",
    response_model=None,
    responses={200: {"model": Outcome}, **_ONE_ERRORS, 409: _CHARGE_CONFLICT},
    openapi_extra=_body(CHARGE_SCHEMA),
)
async def post_charge(
    request: Request,
    caller: Caller = Depends(requires("ingest")),
    idempotent: Idempotent = Depends(idempotency),
) -> JsonResponse:
    state = request.app.state.neruba
    obj = await json_body(request, state.settings.max_body_bytes)
    return await run_in_threadpool(_record_charge, state, caller, obj, idempotent)


async def post_one(request: Request, caller: Caller) -> JsonResponse:
    """One event: checked here, written with the other requests' of this worker that arrive
    meanwhile, its audit record in the same transaction (api/single_events.py). Served by the
    fast lane (api/fast_lane.py): `post_event` declares the route."""
    state = request.app.state.neruba
    obj = await json_body(request, state.settings.max_body_bytes)
    meter = obj.get("meter") if isinstance(obj, dict) else None
    project, meters = await state.catalogs.fresh(caller, (meter,))
    now = caller.now()
    item, warnings = posted.check(obj, meters=meters, now=now)
    if isinstance(item, Recorded):
        return JsonResponse(_answer(item))

    def audit_of(outcome: LineOutcome) -> audit.Entry | None:
        return audit_entry(request.scope, STATUS[outcome.status])

    customers = state.catalogs.customers(project)
    outcome, batch, stale = await state.events.write(
        Posted(caller.engine, project, item, now, customers, audit_of)
    )
    request.state.audited = True
    return JsonResponse(_answer(posted.recorded(item, outcome, batch, stale, warnings)))


STATUS = {"accepted": 200, "duplicate": 200, "conflict": 409, "rejected": 422}


def _answer(recorded: Recorded) -> dict[str, Any]:
    """The 200 of an accepted or duplicate event or charge; the error of any other."""
    status = STATUS[recorded.status]
    if status != 200:
        raise ApiError(status, str(recorded.reason), param=recorded.param)
    return {
        "status": recorded.status,
        "idempotency_key": recorded.idempotency_key,
        "batch": recorded.batch if recorded.status == "accepted" else None,
        "stale_invoices": recorded.stale_invoices,
        "warnings": recorded.warnings,
    }


def _record_charge(state: Any, caller: Caller, obj: Any, idempotent: Idempotent) -> JsonResponse:
    """A charge, in one transaction with the record of its Idempotency-Key when it has one
    (a conflict or a rejection rolls the record back with the rest)."""
    _project, meters = state.catalogs.get(caller, ())
    now = caller.now()

    def work(conn: Connection, project: Project) -> tuple[int, Any]:
        recorded = posted.record_one(
            caller.engine, project, obj, meters=meters, now=now, charge=True, conn=conn
        )
        return 200, _answer(recorded)

    return idempotent.respond(caller, work)


_BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"events": {"type": "array", "items": EVENT_SCHEMA}},
    "required": ["events"],
    "additionalProperties": False,
}


@router.post(
    "/events/batch",
    summary="Send a batch of usage events",
    response_model=None,
    responses={200: {"model": BatchSummary}},
    openapi_extra={**_body(_BATCH_SCHEMA), PER_ITEM_EXTENSION: True},  # bad events: 200
)
async def post_batch(
    request: Request, caller: Caller = Depends(requires("ingest"))
) -> JsonResponse:
    state = request.app.state.neruba
    body = await read_body(request, state.settings.max_body_bytes)
    events = _events(parse_json(body), state.settings.max_batch_events)
    answer = await run_in_threadpool(_ingest_batch, state, caller, events, body)
    return JsonResponse(answer)


def _events(data: Any, limit: int) -> list[Any]:
    if not isinstance(data, dict):
        raise ApiError(422, 'expected a JSON object: {"events": [...]}')
    for name in data:
        if name != "events":
            raise ApiError(422, f"unknown field {name!r}", param=name)
    events = data.get("events")
    if not isinstance(events, list):
        message = "events is required" if events is None else "events must be a JSON array"
        raise ApiError(422, message, param="events")
    if len(events) > limit:
        raise ApiError(
            413,
            f"the batch holds {len(events)} events, more than {limit} (max_batch_events)",
            param="events",
        )
    return events


def _ingest_batch(state: Any, caller: Caller, events: list[Any], body: bytes) -> dict[str, Any]:
    names = {event.get("meter") for event in events if isinstance(event, dict)}
    project, meters = state.catalogs.get(caller, names)
    summary = posted.ingest_objects(
        caller.engine,
        project,
        events,
        body=body,
        meters=meters,
        actor=caller.access.actor.id,
        now=caller.now(),
    )
    outcomes = summary.outcomes or {}
    results = []
    for index in range(len(events)):
        outcome = outcomes[index + 1]
        result: dict[str, Any] = {
            "index": index,
            "status": outcome.status,
            "reason": outcome.reason,
            "param": None if outcome.reason is None else event_rules.reason_field(outcome.reason),
        }
        if outcome.stored is not None:
            result["stored"] = outcome.stored
        results.append(result)
    return {**summary.as_dict(), "results": results}
