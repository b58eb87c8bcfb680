"""The ASGI app of `neruba serve`: state, middleware, error handlers and routes, wired once.

`neruba serve` resolves its settings (flags > NERUBA_API_* > [api] > defaults), checks the
database, and hands them to each uvicorn worker through `SETTINGS_VARIABLE`; the workers build
the app with `create_app_from_environment`. `uvicorn --factory
neruba_cli.api.app:create_app_from_environment` works too: it then resolves the settings itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import orjson
from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from sqlalchemy import Engine

from neruba_cli.api import errors
from neruba_cli.api.auth import KeyCache
from neruba_cli.api.catalogs import CatalogCache
from neruba_cli.api.middleware import RequestContext
from neruba_cli.api.routes import credits, customers, events, invoices, ops
from neruba_cli.config import ApiSection, resolve_api_settings, resolve_settings
from neruba_cli.db.engine import create_db_engine

SETTINGS_VARIABLE = "NERUBA_SERVE_SETTINGS"  # set by `neruba serve` (cli/serve.py) for workers
API_VERSION = "2026-12-01"


@dataclass
class ApiState:
    """What every request of one worker shares."""

    engine: Engine
    settings: ApiSection
    database_url: str
    keys: KeyCache = field(default_factory=KeyCache)
    catalogs: CatalogCache = field(default_factory=CatalogCache)
    draining: bool = False


def create_app(database_url: str, settings: ApiSection) -> FastAPI:
    app = FastAPI(
        title="Neruba API",
        version=API_VERSION,
        summary="Usage ingest, billing reads and credits over HTTP, on project API keys.",
        default_response_class=ORJSONResponse,
        docs_url="/docs" if settings.docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs else None,
    )
    app.state.neruba = ApiState(
        engine=create_db_engine(database_url), settings=settings, database_url=database_url
    )
    errors.install(app)
    for module in (ops, events, customers, invoices, credits):
        app.include_router(module.router)
    app.add_middleware(RequestContext)
    return app


def create_app_from_environment() -> FastAPI:
    given = os.environ.get(SETTINGS_VARIABLE)
    if given:
        data = orjson.loads(given)
        return create_app(data["database_url"], ApiSection.model_validate(data["api"]))
    settings = resolve_settings()
    return create_app(settings.database_url, resolve_api_settings(settings, {}))
