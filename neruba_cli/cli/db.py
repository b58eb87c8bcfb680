"""`neruba db ...`: schema migrations, run from the migrations shipped inside the package."""

from __future__ import annotations

from typing import Annotated

import typer

from neruba_cli.cli.output import fields
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.db import migrate
from neruba_cli.db.engine import display_url, redact
from neruba_cli.services.tenancy.access import OPERATOR

app = typer.Typer()


@command(app, "upgrade", group="db", scope=OPERATOR, mutating=True)
def upgrade(
    rt: Runtime,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Bring the database schema up to REVISION (default: head)."""
    engine = rt.engine(check_schema=False)
    before = migrate.current_revision(engine)
    migrate.upgrade(engine, revision)
    after = migrate.current_revision(engine)
    rt.out.emit({"database": redact(engine.url), "from": before, "to": after})
    if before == after:
        rt.out.say(f"Schema already at {after}; nothing to do.")
    else:
        shown = display_url(rt.settings.database_url)
        rt.out.say(f"Upgraded {shown} from {before or 'empty'} to {after}.")


@command(app, "current", group="db", scope="read")
def current(rt: Runtime) -> None:
    """Show the schema revision of the database and whether it is at head."""
    engine = rt.engine(check_schema=False)
    revision = migrate.current_revision(engine)
    head = migrate.head_revision()
    data = {
        "database": redact(engine.url),
        "current": revision,
        "head": head,
        "at_head": revision == head,
    }
    rt.out.emit(data, fields({**data, "database": display_url(rt.settings.database_url)}))


@command(app, "downgrade", group="db", scope=OPERATOR, mutating=True)
def downgrade(
    rt: Runtime,
    revision: Annotated[str, typer.Argument(help="Target revision, or base to drop everything.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm without asking.")] = False,
) -> None:
    """Move the schema down to REVISION. Dropped tables lose their data."""
    engine = rt.engine(check_schema=False)
    before = migrate.current_revision(engine)
    shown = display_url(rt.settings.database_url)
    rt.confirm(f"Downgrade {shown} from {before} to {revision}?", yes=yes)
    migrate.downgrade(engine, revision)
    after = migrate.current_revision(engine)
    rt.out.emit({"database": redact(engine.url), "from": before, "to": after})
    rt.out.say(f"Downgraded from {before} to {after or 'base'}.")
