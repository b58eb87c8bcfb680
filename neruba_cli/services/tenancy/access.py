"""The tenant boundary: who is acting, on which project, with which scopes.

Every command goes through `authorize` (scope) and `admit` (project) via the CLI runtime, so
no command can skip the check. The rules:

- Without NERUBA_API_KEY the actor is the local operator (the OS user), who holds every scope.
  Set but empty (or blank) is an error, never the operator.
- With a key, the actor is the key: confined to its project and its scopes. Commands that act
  on the installation rather than on a project ("operator" commands: init, db, project create
  and update) refuse keys outright.
- A project with `require_key` refuses key-less access to its data. Operator commands and
  access administration (keys, members, invites) stay open to the operator, so a leaked key
  can always be revoked.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from neruba_cli.db.schema import ApiKey, Project
from neruba_cli.domain import lock_names
from neruba_cli.domain.errors import NerubaError
from neruba_cli.domain.keys import SCOPES, hash_secret, holds_scope, parse_secret, same_hash
from neruba_cli.domain.timestamps import format_ts

OPERATOR = "operator"  # only the local operator, never a key
PUBLIC = "none"  # needs no scope: the demo, accepting an invite (the token is the credential)
COMMAND_SCOPES = (*SCOPES, OPERATOR, PUBLIC)
LAST_USED_RESOLUTION = timedelta(minutes=5)  # `last_used_at` is written at most this often


class AccessDenied(NerubaError):
    kind = "access_denied"


@dataclass(frozen=True)
class Actor:
    kind: str  # "operator" (a local OS user) or "key"
    id: str


@dataclass(frozen=True)
class KeyGrant:
    key_id: str
    prefix: str
    project_id: str
    project_slug: str
    scopes: frozenset[str]
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Access:
    actor: Actor
    key: KeyGrant | None = None


def current_operator() -> Actor:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return Actor(kind="operator", id=user)


def operator_access() -> Access:
    return Access(actor=current_operator())


def key_from_environment(value: str | None) -> str | None:
    """NERUBA_API_KEY as read from the environment: None when it is not set (the local
    operator). Set but blank is refused, never taken for the operator: a cron job whose key
    file went missing must not run with every right."""
    if value is None:
        return None
    if not value.strip():
        raise AccessDenied(
            "NERUBA_API_KEY is set but empty",
            hint="set it to a key of the project (`neruba key create`), or unset it to run "
            "as the local operator",
        )
    return value


def authenticate(session: Session, secret: str, *, now: datetime) -> Access:
    """Resolve NERUBA_API_KEY to its grant, or refuse with a reason that never echoes it."""
    try:
        parsed = parse_secret(secret)
    except NerubaError as exc:
        raise AccessDenied(f"NERUBA_API_KEY: {exc.message}", hint=exc.hint) from None
    digest = hash_secret(secret)
    candidates = session.execute(
        select(ApiKey, Project.slug)
        .join(Project, Project.id == ApiKey.project_id)
        .where(ApiKey.prefix == parsed.prefix)
    ).all()
    match = next((row for row in candidates if same_hash(row[0].secret_hash, digest)), None)
    if match is None:
        raise AccessDenied(f"API key {parsed.prefix}… is not known to this database")
    key, slug = match
    if key.revoked_at is not None:
        raise AccessDenied(f"API key {key.id} was revoked at {format_ts(key.revoked_at)}")
    if key.expires_at is not None and key.expires_at <= now:
        raise AccessDenied(f"API key {key.id} expired at {format_ts(key.expires_at)}")
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
    grant = KeyGrant(
        key_id=key.id,
        prefix=key.prefix,
        project_id=key.project_id,
        project_slug=slug,
        scopes=frozenset(key.scopes.split(",")),
        expires_at=key.expires_at,
    )
    return Access(actor=Actor(kind="key", id=key.id), key=grant)


def authorize(access: Access, *, scope: str, command: str) -> None:
    """Refuse a command whose scope the actor does not hold."""
    if scope not in COMMAND_SCOPES:
        raise ValueError(f"unknown command scope {scope!r}")
    key = access.key
    if key is None or scope == PUBLIC:
        return
    if scope == OPERATOR:
        raise operator_only(command)
    if not holds_scope(key.scopes, scope):
        raise AccessDenied(
            f"API key {key.key_id} lacks the {scope!r} scope that `neruba {command}` needs",
            hint=f"the key has: {', '.join(sorted(key.scopes))}",
        )


def operator_only(command: str) -> AccessDenied:
    return AccessDenied(
        f"`neruba {command}` is for the local operator, not for API keys",
        hint="unset NERUBA_API_KEY to run it as the operator",
    )


def confine(access: Access, requested: str | None) -> str | None:
    """The project slug the actor may act on: a key's own project, whatever else was asked."""
    key = access.key
    if key is None:
        return requested
    if requested is not None and requested != key.project_slug:
        raise AccessDenied(
            f"API key {key.key_id} belongs to project {key.project_slug!r}, not {requested!r}"
        )
    return key.project_slug


def admit(access: Access, project: Project, *, administers_access: bool = False) -> None:
    """Enforce `require_key` for key-less actors on the project's data."""
    if access.key is not None:
        confine(access, project.slug)
        return
    if project.require_key and not administers_access:
        raise AccessDenied(
            f"project {project.slug!r} requires an API key",
            hint="set NERUBA_API_KEY to a key of this project (`neruba key create`)",
        )


def lock_prefix(access: Access) -> str | None:
    """A project's lock names start with `<slug>:`; a key sees and touches only those."""
    return None if access.key is None else lock_names.project_prefix(access.key.project_slug)


def admit_lock(access: Access, name: str) -> None:
    key = access.key
    if key is not None and not lock_names.belongs_to(name, key.project_slug):
        raise AccessDenied(f"lock {name} does not belong to project {key.project_slug!r}")
