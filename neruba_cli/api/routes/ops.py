"""Operations: liveness (no database), readiness and metrics. None of them needs a key:
probes and scrapers carry none (see docs/operations/serve.md for keeping them private)."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from neruba_cli.api import metrics
from neruba_cli.domain.health import Check
from neruba_cli.services.ops import doctor

router = APIRouter(tags=["operations"])
log = logging.getLogger("neruba.api")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class Health(BaseModel):
    status: str


class ReadinessCheck(BaseModel):
    status: Literal["ok", "fail"]
    detail: str


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, ReadinessCheck]


@router.get("/healthz", response_model=Health, summary="The process is alive (no database)")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Ready for traffic: the database answers, its schema is at head, not draining",
    responses={503: {"model": Readiness, "description": "A check failed: its status is fail"}},
)
def readyz(request: Request) -> JSONResponse:
    state = request.app.state.neruba
    try:
        found = doctor.readiness(state.engine, state.database_url, head=state.head)
    except SQLAlchemyError as exc:  # the database went away between two checks
        found = [Check("database", "fail", str(exc).splitlines()[0])]
    checks: dict[str, ReadinessCheck] = {}
    for check in found:
        ok = check.status != "fail"
        if check.name == "database":
            # Where the database lives is not for an unauthenticated caller: the server log
            # has the reason.
            detail = "answers" if ok else "not answering (the server log says why)"
        else:
            detail = check.detail
        checks[check.name] = ReadinessCheck(status="ok" if ok else "fail", detail=detail)
    checks["draining"] = ReadinessCheck(
        status="fail" if state.draining else "ok",
        detail="shutting down: finishing requests in flight" if state.draining else "serving",
    )
    failures = "; ".join(f"{c.name}: {c.detail}" for c in found if c.status == "fail")
    if failures != state.readiness_failure:
        if failures:
            log.warning("not ready: %s", failures)
        state.readiness_failure = failures
    ready = all(check.status == "ok" for check in checks.values())
    body = Readiness(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus text: request counts and latencies, and `neruba stats` per project",
    responses={200: {"content": {PROMETHEUS_TEXT: {}}}},
)
def metrics_text(request: Request) -> PlainTextResponse:
    state = request.app.state.neruba
    read, figures = state.figures.families()
    text = metrics.exposition(state.metrics.total(), read, figures)
    return PlainTextResponse(text, media_type=PROMETHEUS_TEXT)
