"""`neruba key ...`: project API keys."""

from __future__ import annotations

from typing import Annotated

import typer

from neruba_cli.cli import values
from neruba_cli.cli.output import table
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.keys import SCOPES, parse_scopes
from neruba_cli.domain.timestamps import parse_expiry
from neruba_cli.services.tenancy import keys

app = typer.Typer()


@command(app, "create", group="key", scope="admin", mutating=True, administers_access=True)
def create(
    rt: Runtime,
    scope: Annotated[
        list[str],
        typer.Option("--scope", help=f"Repeat or comma-separate: {', '.join(SCOPES)}."),
        values.read_by(lambda text: parse_scopes([text])),
    ],
    expires: Annotated[
        str | None,
        typer.Option(metavar="WHEN", help="A duration such as 90d, or a timestamp."),
        values.EXPIRY,
    ] = None,
    name: Annotated[str | None, typer.Option(help="What the key is for."), values.NAME] = None,
    member: Annotated[
        str | None,
        typer.Option(metavar="EMAIL", help="E-mail of the member it belongs to (scopes ⊆ role)."),
        values.EMAIL,
    ] = None,
) -> None:
    """Create a key. The secret is printed once, on stdout; only its hash is stored."""
    now = rt.now()
    scopes = parse_scopes(scope)
    expires_at = parse_expiry(expires, now=now) if expires else None
    with rt.transaction() as session:
        project = rt.project(session)
        created = keys.create_key(
            session,
            project,
            scopes=scopes,
            name=name,
            expires_at=expires_at,
            member_email=member,
            creator=rt.access,
            now=now,
        )
        data = {**keys.to_dict(created.key, member_email=member), "secret": created.secret}
    rt.out.emit(data, lambda console: console.print(created.secret, markup=False), essential=True)
    rt.out.say(
        f"Created key {created.key.id} ({created.key.prefix}…) for project {project.slug} "
        f"with scopes {created.key.scopes}. Store the secret now: it is not shown again."
    )


@command(app, "list", group="key", scope="admin", administers_access=True)
def list_(rt: Runtime) -> None:
    """List the project's keys (never their secrets)."""
    with rt.transaction() as session:
        project = rt.project(session)
        rows = [keys.to_dict(key) for key in keys.list_keys(session, project)]
    columns = ("id", "prefix", "name", "scopes", "created_at", "last_used_at", "expires_at")
    rendered = [[*(row[c] for c in columns), row["revoked_at"] or ""] for row in rows]
    for row in rendered:
        row[3] = ",".join(row[3])
    rt.out.emit(rows, table(None, (*columns, "revoked_at"), rendered, empty="No API keys."))


@command(app, "revoke", group="key", scope="admin", mutating=True, administers_access=True)
def revoke(
    rt: Runtime,
    key: Annotated[str, typer.Argument(help="Key id (key_...), its prefix, or the secret.")],
) -> None:
    """Revoke a key: every later use of it fails."""
    with rt.transaction() as session:
        revoked = keys.revoke_key(session, rt.project(session), key, now=rt.now())
        data = keys.to_dict(revoked)
    rt.out.emit(data)
    rt.out.say(f"Revoked {revoked.id} ({revoked.prefix}…).")
