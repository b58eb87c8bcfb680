"""API keys: create (the secret is returned once), list, revoke."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import ApiKey, Member, Project
from neruba_cli.domain.errors import InvalidInput, NotFound
from neruba_cli.domain.keys import (
    KEY_KINDS,
    KEY_PATTERN,
    format_scopes,
    hash_secret,
    lookup_prefix,
    parse_secret,
    redact_secrets,
    role_scopes,
)
from neruba_cli.domain.tenancy import validate_name
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.tenancy.access import Access, AccessDenied
from neruba_cli.services.tenancy.members import get_member
from neruba_cli.services.tenancy.tokens import new_secret


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    secret: str


def create_key(
    session: Session,
    project: Project,
    *,
    scopes: frozenset[str],
    name: str | None,
    expires_at: datetime | None,
    member_email: str | None,
    creator: Access,
    now: datetime,
) -> CreatedKey:
    """A key never holds more than its creator: a key cannot mint a stronger key, and a key
    made for a member stays within that member's role."""
    if creator.key is not None and not scopes <= creator.key.scopes:
        extra = format_scopes(scopes - creator.key.scopes)
        raise AccessDenied(f"API key {creator.key.key_id} cannot grant scopes it lacks: {extra}")
    member: Member | None = None
    if member_email is not None:
        member = get_member(session, project, member_email)
        allowed = role_scopes(member.role)
        if not scopes <= allowed:
            extra = format_scopes(scopes - allowed)
            raise InvalidInput(f"role {member.role!r} of {member.email} does not allow: {extra}")
    secret = new_secret(KEY_KINDS[project.mode])
    key = ApiKey(
        id=new_id("key"),
        project_id=project.id,
        member_id=member.id if member else None,
        name=validate_name(name or ""),
        prefix=lookup_prefix(secret),
        secret_hash=hash_secret(secret),
        scopes=format_scopes(scopes),
        created_at=now,
        created_by=creator.actor.id,
        expires_at=expires_at,
    )
    session.add(key)
    session.flush()
    return CreatedKey(key=key, secret=secret)


def list_keys(session: Session, project: Project) -> list[ApiKey]:
    return list(
        session.scalars(
            select(ApiKey)
            .where(ApiKey.project_id == project.id)
            .order_by(ApiKey.created_at, ApiKey.id)
        )
    )


def get_key(session: Session, project: Project, ident: str) -> ApiKey:
    """By id (`key_...`), by the visible prefix `key list` shows, or by the secret itself
    (what an operator holding a leaked key has to hand)."""
    ident = ident.strip()
    if KEY_PATTERN.match(ident):
        parse_secret(ident)
        match = ApiKey.secret_hash == hash_secret(ident)
    else:
        match = or_(ApiKey.id == ident, ApiKey.prefix == ident)
    key = session.scalar(
        select(ApiKey).where(ApiKey.project_id == project.id).where(match).limit(1)
    )
    if key is None:
        shown = redact_secrets(ident)
        raise NotFound(f"API key {shown!r} does not exist in project {project.slug!r}")
    return key


def revoke_key(session: Session, project: Project, ident: str, *, now: datetime) -> ApiKey:
    key = get_key(session, project, ident)
    if key.revoked_at is not None:
        raise InvalidInput(f"API key {key.id} was already revoked at {format_ts(key.revoked_at)}")
    key.revoked_at = now
    return key


def to_dict(key: ApiKey, *, member_email: str | None = None) -> dict[str, Any]:
    return {
        "id": key.id,
        "prefix": key.prefix,
        "name": key.name,
        "scopes": key.scopes.split(","),
        "member": member_email,
        "created_at": format_ts(key.created_at),
        "created_by": key.created_by,
        "last_used_at": format_ts(key.last_used_at),
        "expires_at": format_ts(key.expires_at),
        "revoked_at": format_ts(key.revoked_at),
    }
