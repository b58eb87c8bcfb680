"""`neruba audit ...`"""

from __future__ import annotations

from typing import Annotated

import typer

from neruba_cli.cli.output import table
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.timestamps import parse_since
from neruba_cli.services import audit

app = typer.Typer(help="The audit trail of mutating commands.")


@command(app, "list", group="audit", scope="admin")
def list_(
    rt: Runtime,
    since: Annotated[
        str | None, typer.Option(help="A timestamp, a date, or a duration ago such as 7d.")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, help="At most this many records, newest first.")
    ] = 100,
) -> None:
    """List audit records, newest first (of --project when one is selected)."""
    start = parse_since(since, now=rt.now()) if since else None
    with rt.transaction() as session:
        entries = audit.list_records(
            session, project_slug=rt.project_filter, since=start, limit=limit
        )
        rows = [audit.to_dict(entry) for entry in entries]
    columns = ("at", "actor", "project", "command", "outcome", "exit_code", "message")
    rt.out.emit(rows, table(None, columns, [[row[c] for c in columns] for row in rows]))
