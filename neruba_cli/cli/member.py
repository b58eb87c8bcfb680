"""`neruba member ...` and `neruba invite ...`: people and their roles in a project."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from neruba_cli.cli import values
from neruba_cli.cli.output import table
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.keys import ROLES
from neruba_cli.domain.timestamps import parse_expiry
from neruba_cli.services.tenancy import members
from neruba_cli.services.tenancy.access import PUBLIC

members_app = typer.Typer()
invites_app = typer.Typer()

ROLE_HELP = "; ".join(f"{role}: {','.join(sorted(scopes))}" for role, scopes in ROLES.items())


@command(members_app, "add", group="member", scope="admin", mutating=True, administers_access=True)
def add(
    rt: Runtime,
    email: Annotated[str, typer.Argument(help="The member's e-mail."), values.EMAIL],
    role: Annotated[str, typer.Option(help=ROLE_HELP), values.one_of(ROLES)],
) -> None:
    """Add a member with a role."""
    with rt.transaction() as session:
        member = members.add_member(session, rt.project(session), email, role, now=rt.now())
        data = members.member_dict(member)
    rt.out.emit(data)
    rt.out.say(f"Added {member.email} as {member.role}.")


@command(members_app, "list", group="member", scope="admin", administers_access=True)
def list_(rt: Runtime) -> None:
    """List members with their roles and the scopes those roles grant."""
    with rt.transaction() as session:
        found = members.list_members(session, rt.project(session))
        rows = [members.member_dict(member) for member in found]
    rendered = [(r["email"], r["role"], ",".join(r["scopes"]), r["created_at"]) for r in rows]
    columns = ("email", "role", "scopes", "created_at")
    rt.out.emit(rows, table(None, columns, rendered, empty="No members."))


@command(
    members_app, "remove", group="member", scope="admin", mutating=True, administers_access=True
)
def remove(
    rt: Runtime,
    email: Annotated[str, typer.Argument(help="The member's e-mail.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm without asking.")] = False,
) -> None:
    """Remove a member; the keys made for them are revoked."""
    with rt.transaction() as session:
        project = rt.project(session)
        rt.confirm(f"Remove {email} from {project.slug} and revoke their keys?", yes=yes)
        revoked = members.remove_member(session, project, email, now=rt.now())
    rt.out.emit({"email": email, "keys_revoked": revoked})
    rt.out.say(f"Removed {email}; {revoked} key(s) revoked.")


@command(
    invites_app, "create", group="invite", scope="admin", mutating=True, administers_access=True
)
def invite_create(
    rt: Runtime,
    email: Annotated[str, typer.Argument(help="Who is invited."), values.EMAIL],
    role: Annotated[str, typer.Option(help=ROLE_HELP), values.one_of(ROLES)],
    expires: Annotated[
        str,
        typer.Option(metavar="WHEN", help="A duration such as 7d, or a timestamp."),
        values.EXPIRY,
    ] = "7d",
) -> None:
    """Create an invitation; the token is printed once, on stdout."""
    now = rt.now()
    with rt.transaction() as session:
        project = rt.project(session)
        created = members.create_invite(
            session,
            project,
            email,
            role,
            expires_at=parse_expiry(expires, now=now),
            created_by=rt.actor.id,
            now=now,
        )
        data = members.invite_dict(created.invite, token=created.token)
    rt.out.emit(data, lambda console: console.print(created.token, markup=False), essential=True)
    rt.out.say(
        f"Invited {created.invite.email} as {created.invite.role} to {project.slug} until "
        f"{data['expires_at']}. Send them the token: `neruba invite accept TOKEN`."
    )


@command(invites_app, "accept", group="invite", scope=PUBLIC, mutating=True)
def invite_accept(
    rt: Runtime,
    token: Annotated[str, typer.Argument(help="The invite token, or - to read it from stdin.")],
) -> None:
    """Accept an invitation: become a member of its project with its role."""
    secret = sys.stdin.readline().strip() if token == "-" else token
    with rt.transaction() as session:
        member, project = members.accept_invite(session, secret, now=rt.now())
        rt.audited_project = project.slug
        data = {**members.member_dict(member), "project": project.slug}
    rt.out.emit(data)
    rt.out.say(f"{member.email} joined {project.slug} as {member.role}.")
