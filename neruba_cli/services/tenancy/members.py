"""Members of a project and the invitations that create them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import ApiKey, Invite, Member, Project
from neruba_cli.db.unique import add_unique
from neruba_cli.domain.errors import InvalidInput, NotFound
from neruba_cli.domain.keys import (
    INVITE_KIND,
    hash_secret,
    parse_secret,
    role_scopes,
)
from neruba_cli.domain.tenancy import validate_email
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.tenancy.tokens import new_secret

DEFAULT_INVITE_TTL = timedelta(days=7)


@dataclass(frozen=True)
class CreatedInvite:
    invite: Invite
    token: str


def _normal_email(email: str) -> str:
    return validate_email(email).lower()


def add_member(
    session: Session, project: Project, email: str, role: str, *, now: datetime
) -> Member:
    role_scopes(role)  # validates the role name
    address = _normal_email(email)
    member = Member(
        id=new_id("mem"), project_id=project.id, email=address, role=role, created_at=now
    )
    add_unique(session, member, f"{address} is already a member of project {project.slug!r}")
    return member


def get_member(session: Session, project: Project, email: str) -> Member:
    address = _normal_email(email)
    member = session.scalar(
        select(Member).where(Member.project_id == project.id).where(Member.email == address)
    )
    if member is None:
        raise NotFound(f"{address} is not a member of project {project.slug!r}")
    return member


def list_members(session: Session, project: Project) -> list[Member]:
    return list(
        session.scalars(
            select(Member).where(Member.project_id == project.id).order_by(Member.email)
        )
    )


def remove_member(session: Session, project: Project, email: str, *, now: datetime) -> int:
    """Remove a member and revoke the keys made for them; returns how many keys were revoked."""
    member = get_member(session, project, email)
    keys = list(session.scalars(select(ApiKey).where(ApiKey.member_id == member.id)))
    revoked = 0
    for key in keys:
        if key.revoked_at is None:
            key.revoked_at = now
            revoked += 1
        key.member_id = None
    session.flush()
    session.delete(member)
    session.flush()
    return revoked


def create_invite(
    session: Session,
    project: Project,
    email: str,
    role: str,
    *,
    expires_at: datetime | None,
    created_by: str,
    now: datetime,
) -> CreatedInvite:
    role_scopes(role)
    token = new_secret(INVITE_KIND)
    invite = Invite(
        id=new_id("ivt"),
        project_id=project.id,
        email=_normal_email(email),
        role=role,
        token_hash=hash_secret(token),
        created_at=now,
        created_by=created_by,
        expires_at=expires_at or now + DEFAULT_INVITE_TTL,
    )
    session.add(invite)
    session.flush()
    return CreatedInvite(invite=invite, token=token)


def accept_invite(session: Session, token: str, *, now: datetime) -> tuple[Member, Project]:
    """Turn a valid, unused, unexpired invite into a membership; the invite is spent."""
    parse_secret(token, what="invite token")
    invite = session.scalar(select(Invite).where(Invite.token_hash == hash_secret(token)))
    if invite is None:
        raise NotFound("the invite token is not known to this database")
    if invite.accepted_at is not None:
        used = format_ts(invite.accepted_at)
        raise InvalidInput(f"invite {invite.id} was already used at {used}")
    if invite.expires_at <= now:
        raise InvalidInput(f"invite {invite.id} expired at {format_ts(invite.expires_at)}")
    project = session.get_one(Project, invite.project_id)
    invite.accepted_at = now
    member = add_member(session, project, invite.email, invite.role, now=now)
    return member, project


def member_dict(member: Member) -> dict[str, Any]:
    return {
        "id": member.id,
        "email": member.email,
        "role": member.role,
        "scopes": sorted(role_scopes(member.role)),
        "created_at": format_ts(member.created_at),
    }


def invite_dict(invite: Invite, *, token: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": invite.id,
        "email": invite.email,
        "role": invite.role,
        "expires_at": format_ts(invite.expires_at),
        "accepted_at": format_ts(invite.accepted_at),
    }
    if token is not None:
        data["token"] = token
    return data
