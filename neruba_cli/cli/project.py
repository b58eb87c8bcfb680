"""`neruba project ...`"""

from __future__ import annotations

from typing import Annotated

import typer

from neruba_cli.cli import values
from neruba_cli.cli.output import fields, table
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain import late_events as late_event_policy
from neruba_cli.domain.money import ROUNDING_MODES
from neruba_cli.domain.tenancy import MODES, project_spec, validate_mode, validate_rounding
from neruba_cli.services.tenancy import projects
from neruba_cli.services.tenancy.access import OPERATOR

app = typer.Typer()


@command(app, "create", group="project", scope=OPERATOR, mutating=True)
def create(
    rt: Runtime,
    slug: Annotated[
        str, typer.Argument(help="Short id used in invoice numbers, e.g. acme."), values.SLUG
    ],
    name: Annotated[
        str | None, typer.Option(help="Display name (default: the slug)."), values.NAME
    ] = None,
    currency: Annotated[
        str, typer.Option(help="Default ISO 4217 currency."), values.CURRENCY
    ] = "USD",
    timezone: Annotated[
        str, typer.Option(metavar="ZONE", help="Default IANA time zone."), values.TIMEZONE
    ] = "UTC",
    rounding: Annotated[
        str, typer.Option(help="half_even or half_up."), values.one_of(ROUNDING_MODES)
    ] = "half_even",
    mode: Annotated[
        str, typer.Option(help="live, or test (keys start nrb_test_)."), values.one_of(MODES)
    ] = "live",
) -> None:
    """Create a project."""
    rt.audited_project = slug
    spec = project_spec(slug, name, currency, timezone, rounding)
    with rt.transaction() as session:
        project = projects.create_project(session, spec, mode=validate_mode(mode), now=rt.now())
    rt.out.emit(projects.to_dict(project))
    rt.out.say(f"Created project {project.slug} ({project.id}).")


@command(app, "list", group="project", scope="read")
def list_(rt: Runtime) -> None:
    """List projects."""
    with rt.transaction() as session:
        found = projects.list_projects(session, only=rt.key_project)
        rows = [projects.to_dict(project) for project in found]
    columns = ("slug", "name", "currency", "timezone", "rounding", "mode", "require_key")
    shown = [[row[c] for c in columns] for row in rows]
    rt.out.emit(rows, table(None, columns, shown, empty="No projects."))


@command(app, "show", group="project", scope="read")
def show(
    rt: Runtime,
    slug: Annotated[str | None, typer.Argument(help="Project slug (default: --project).")] = None,
) -> None:
    """Show one project."""
    with rt.transaction() as session:
        data = projects.to_dict(rt.project(session, slug))
    rt.out.emit(data, fields(data))


@command(app, "update", group="project", scope=OPERATOR, mutating=True)
def update(
    rt: Runtime,
    slug: Annotated[str, typer.Argument(help="Project slug.")],
    name: Annotated[str | None, typer.Option(help="New display name."), values.NAME] = None,
    rounding: Annotated[
        str | None, typer.Option(help="half_even or half_up."), values.one_of(ROUNDING_MODES)
    ] = None,
    require_key: Annotated[
        bool | None,
        typer.Option(
            "--require-key/--no-require-key",
            help="Refuse key-less access to the project's data.",
            show_default=False,
        ),
    ] = None,
    late_events: Annotated[
        str | None,
        typer.Option(
            "--late-events",
            metavar="POLICY",
            help="Events after finalization: correct (linked correction), next_invoice, ignore.",
        ),
        values.one_of(late_event_policy.POLICIES),
    ] = None,
    credit_returns: Annotated[
        str | None,
        typer.Option(
            "--credit-returns",
            metavar="POLICY",
            help="Credit notes: restore (give consumed credits back first) or keep.",
        ),
        values.one_of(projects.CREDIT_RETURN_POLICIES),
    ] = None,
) -> None:
    """Change a project's settings."""
    rt.audited_project = slug
    with rt.transaction() as session:
        project = projects.update_project(
            session,
            slug,
            name=name,
            rounding=validate_rounding(rounding) if rounding else None,
            require_key=require_key,
            late_events=late_events,
            credit_returns=credit_returns,
        )
        data = projects.to_dict(project)
    rt.out.emit(data)
    rt.out.say(f"Updated project {slug}.")
