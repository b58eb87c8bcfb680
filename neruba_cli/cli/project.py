"""`neruba project ...`"""

from __future__ import annotations

from typing import Annotated

import typer

from neruba_cli.cli.output import fields, table
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.tenancy import project_spec
from neruba_cli.services import projects

app = typer.Typer(help="Projects (tenants): each has its own customers, catalog and invoices.")


@command(app, "create", group="project", mutating=True)
def create(
    rt: Runtime,
    slug: Annotated[str, typer.Argument(help="Short id used in invoice numbers, e.g. acme.")],
    name: Annotated[str | None, typer.Option(help="Display name (default: the slug).")] = None,
    currency: Annotated[str, typer.Option(help="Default ISO 4217 currency.")] = "USD",
    timezone: Annotated[str, typer.Option(help="Default IANA time zone.")] = "UTC",
    rounding: Annotated[str, typer.Option(help="half_even or half_up.")] = "half_even",
) -> None:
    """Create a project."""
    rt.audited_project = slug
    spec = project_spec(slug, name, currency, timezone, rounding)
    with rt.transaction() as session:
        project = projects.create_project(session, spec, now=rt.now())
    rt.out.emit(projects.to_dict(project))
    rt.out.say(f"Created project [bold]{project.slug}[/bold] ({project.id}).")


@command(app, "list", group="project")
def list_(rt: Runtime) -> None:
    """List projects."""
    with rt.transaction() as session:
        rows = [projects.to_dict(project) for project in projects.list_projects(session)]
    columns = ("slug", "name", "currency", "timezone", "rounding", "created_at")
    rt.out.emit(rows, table(None, columns, [[row[c] for c in columns] for row in rows]))


@command(app, "show", group="project")
def show(
    rt: Runtime,
    slug: Annotated[str | None, typer.Argument(help="Project slug (default: --project).")] = None,
) -> None:
    """Show one project."""
    with rt.transaction() as session:
        project = projects.get_project(session, slug or rt.project_slug)
        data = projects.to_dict(project)
    rt.out.emit(data, fields(data))
