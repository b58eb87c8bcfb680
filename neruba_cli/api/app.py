"""The ASGI app of `neruba serve`: state, middleware, error handlers and routes, wired once.

`neruba serve` resolves its settings (flags > NERUBA_API_* > [api] > defaults), checks the
database, and hands them to each uvicorn worker through `config.ServeSettings`; the workers build
the app with `create_app_from_environment`. `uvicorn --factory
neruba_cli.api.app:create_app_from_environment` works too: it then resolves the settings itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy import Engine

from neruba_cli.api import errors, lifecycle, openapi
from neruba_cli.api.audits import AuditWriter
from neruba_cli.api.auth import KeyCache
from neruba_cli.api.catalogs import CatalogCache
from neruba_cli.api.fast_lane import NerubaApi
from neruba_cli.api.limits import BodyLimit, RateLimiter
from neruba_cli.api.metrics import ProjectFigures, RequestMetrics
from neruba_cli.api.middleware import RequestContext
from neruba_cli.api.responses import JsonResponse
from neruba_cli.api.routes import credits, customers, events, invoices, ops
from neruba_cli.api.single_events import SingleEvents
from neruba_cli.config import (
    SERVE_SETTINGS_VARIABLE,
    ApiSection,
    ServeSettings,
    resolve_api_settings,
    resolve_settings,
)
from neruba_cli.db import migrate
from neruba_cli.db.engine import create_db_engine

API_VERSION = "2026-12-01"


@dataclass
class ApiState:
    """What every request of one worker shares."""

    engine: Engine
    settings: ApiSection
    database_url: str
    head: str  # the schema revision this code needs (/readyz)
    metrics: RequestMetrics
    figures: ProjectFigures
    limiter: RateLimiter
    keys: KeyCache = field(default_factory=KeyCache)
    catalogs: CatalogCache = field(default_factory=CatalogCache)
    events: SingleEvents = field(init=False)  # POST /v1/events' writes
    audits: AuditWriter = field(init=False)  # the other mutating requests' audit records
    draining: bool = False  # set on SIGTERM/SIGINT by `neruba serve`: /readyz answers 503
    readiness_failure: str = ""  # the last failures /readyz logged, to log each change once

    def __post_init__(self) -> None:
        self.events = SingleEvents(self.engine)
        self.audits = AuditWriter(self.engine)


def create_app(database_url: str, settings: ApiSection, metrics_dir: str | None = None) -> FastAPI:
    """The app of one worker; `metrics_dir` is the folder its workers share their request
    counts through (api/metrics.py), None for counts of this process only."""
    app = NerubaApi(
        title="Neruba API",
        version=API_VERSION,
        summary="Usage ingest, billing reads and credits over HTTP, on project API keys.",
        default_response_class=JsonResponse,
        docs_url=None,  # openapi.install serves the page from local files when docs are on
        redoc_url=None,
        openapi_url=openapi.OPENAPI_URL if settings.docs else None,
        openapi_tags=openapi.TAGS,
        generate_unique_id_function=openapi.operation_id,
        lifespan=lifecycle.lifespan,
    )
    engine = create_db_engine(database_url)
    app.state.neruba = ApiState(
        engine=engine,
        settings=settings,
        database_url=database_url,
        head=migrate.head_revision(),
        metrics=RequestMetrics(Path(metrics_dir) if metrics_dir else None),
        figures=ProjectFigures(engine, settings.metrics_cache_seconds),
        limiter=RateLimiter(settings.rate_limit, settings.burst),
    )
    errors.install(app)
    for module in (ops, events, customers, invoices, credits):
        app.include_router(module.router)
    openapi.install(app, docs=settings.docs)
    app.add_fast_route("POST", "/v1/events", events.post_one)  # api/fast_lane.py
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContext)  # outermost: every answer, a 413 included, has an id
    return app


def create_app_from_environment() -> FastAPI:
    given = os.environ.get(SERVE_SETTINGS_VARIABLE)
    if given:
        handed = ServeSettings.decode(given)
        return create_app(handed.database_url, handed.api, handed.metrics_dir)
    settings = resolve_settings()
    return create_app(settings.database_url, resolve_api_settings(settings, {}))
