"""`neruba audit ...`"""

from __future__ import annotations

from typing import Annotated

import typer

from neruba_cli.cli import values
from neruba_cli.cli.output import table
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.timestamps import parse_since
from neruba_cli.services.tenancy import audit, projects

app = typer.Typer()


@command(app, "list", group="audit", scope="admin")
def list_(
    rt: Runtime,
    since: Annotated[
        str | None,
        typer.Option(metavar="WHEN", help="A timestamp, a date, or a duration ago such as 7d."),
        values.SINCE,
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, metavar="N", help="At most this many records, newest first.")
    ] = 100,
) -> None:
    """List audit records, newest first (of --project when one is selected).

    Without a project, records of projects that require a key are left out.
    """
    start = parse_since(since, now=rt.now()) if since else None
    with rt.transaction() as session:
        selected = rt.settings.project or rt.key_project
        slug = rt.project(session).slug if selected else None  # tenant checks, require_key
        entries = audit.list_records(
            session,
            project_slug=slug,
            since=start,
            limit=limit,
            hidden_projects=projects.require_key_slugs(session) if slug is None else (),
        )
        rows = [audit.to_dict(entry) for entry in entries]
    columns = ("at", "actor", "project", "command", "outcome", "exit_code", "message")
    shown = [[row[c] for c in columns] for row in rows]
    rt.out.emit(rows, table(None, columns, shown, empty="No audit records."))
