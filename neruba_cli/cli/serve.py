"""`neruba serve`"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Annotated

import typer

from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.config import SERVE_SETTINGS_VARIABLE, ServeSettings, resolve_api_settings

# The app factory each uvicorn worker imports (cli/ never imports api/: see pyproject.toml).
APP_FACTORY = "neruba_cli.api.app:create_app_from_environment"


def register(app: typer.Typer) -> None:
    @command(app, "serve", scope="operator")
    def serve(
        rt: Runtime,
        host: Annotated[
            str | None,
            typer.Option(
                help="Address to listen on (default 127.0.0.1: loopback only).", show_default=False
            ),
        ] = None,
        port: Annotated[
            int | None, typer.Option(help="Port (default 8080).", show_default=False)
        ] = None,
        workers: Annotated[
            int | None,
            typer.Option(help="Worker processes (default 1).", show_default=False),
        ] = None,
        docs: Annotated[
            bool | None,
            typer.Option(
                "--docs/--no-docs",
                help="Serve /openapi.json and the /docs page (off by default).",
                show_default=False,
            ),
        ] = None,
    ) -> int:
        """Serve the HTTP API (ingest, reads, credits, health, metrics) on project keys.

        Settings: these flags, else NERUBA_API_HOST, NERUBA_API_PORT, NERUBA_API_WORKERS,
        NERUBA_API_DOCS (and NERUBA_API_<SETTING> for the others), else [api] in the config
        file. The database must be at the schema's head (`neruba db upgrade`). SIGTERM or
        SIGINT drains: /readyz answers 503, then requests in flight finish, then exit 0."""
        import uvicorn

        settings = resolve_api_settings(
            rt.settings, {"host": host, "port": port, "workers": workers, "docs": docs}
        )
        rt.engine()  # reachable and at head, or a clear error and its exit code now
        # The workers add up their request counts for /metrics through files in this folder.
        metrics_dir = tempfile.mkdtemp(prefix="neruba-serve-metrics-")
        os.environ[SERVE_SETTINGS_VARIABLE] = ServeSettings(
            rt.settings.database_url, settings, metrics_dir
        ).encode()
        rt.out.say(
            f"Serving the Neruba API on http://{settings.host}:{settings.port} "
            f"({settings.workers} worker{'s' if settings.workers != 1 else ''})"
        )
        try:
            uvicorn.run(
                APP_FACTORY,
                factory=True,
                host=settings.host,
                port=settings.port,
                workers=settings.workers,
                log_level="warning",
                access_log=False,
                server_header=False,
                # SIGTERM/SIGINT: the app drains first (api/lifecycle.py), then this long
                timeout_graceful_shutdown=settings.drain_seconds,
            )
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return 0
