"""`neruba doctor`"""

from __future__ import annotations

import typer
from rich.text import Text

from neruba_cli.cli.output import table
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.services.ops.doctor import diagnose
from neruba_cli.services.tenancy import access

EXIT_UNHEALTHY = 1
_STYLE = {"ok": "green", "warn": "yellow", "fail": "red"}


def register(app: typer.Typer) -> None:
    @command(app, "doctor", scope="read")
    def doctor(rt: Runtime) -> int:
        """Check configuration, database, schema, locks, stuck billing runs and imports,
        failed Stripe webhooks, the Stripe key and clock skew. Exit 1 when a check fails;
        warnings keep exit 0."""
        prefix = access.lock_prefix(rt.access)
        report = diagnose(lambda: rt.settings, now=rt.now(), lock_prefix=prefix)
        rows = [
            (check.name, Text(check.status, style=_STYLE[check.status]), check.detail)
            for check in report.checks
        ]
        rt.out.emit(report.as_dict(), table(None, ("check", "status", "detail"), rows))
        return 0 if report.healthy else EXIT_UNHEALTHY
