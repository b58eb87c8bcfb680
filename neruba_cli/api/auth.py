"""Bearer keys: the project's API keys, the same ones `NERUBA_API_KEY` carries for the CLI.

`Authorization: Bearer nrb_...` is checked by `services/tenancy/access.authenticate` (hashed,
compared in constant time, revoked and expired keys refused). Any failure is one 401 with the
same message, whatever the reason, so a caller cannot probe which keys exist. A key that was
accepted is remembered for `KEY_CACHE_SECONDS`: a revocation or expiry takes effect within
that many seconds on every worker. A scope the key lacks is a 403 naming the scope.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from neruba_cli.api.errors import ApiError
from neruba_cli.api.shared_reads import SharedReads
from neruba_cli.db.engine import write_session
from neruba_cli.db.schema import Project
from neruba_cli.domain.errors import NerubaError
from neruba_cli.domain.keys import SCOPES, holds_scope
from neruba_cli.services.tenancy import access, projects
from neruba_cli.services.tenancy.access import Access, KeyGrant

KEY_CACHE_SECONDS = 5.0  # a revoked or expired key is refused within this long
UNAUTHORIZED = "missing or invalid API key"

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A project API key (`neruba key create`): `Authorization: Bearer nrb_...`.",
)


class KeyCache:
    """Accepted keys by the SHA-256 of their secret, each until its cache deadline or its own
    expiry, whichever comes first. Only accepted keys are kept: a forged key is looked up
    every time, and never fills the cache."""

    def __init__(self, seconds: float = KEY_CACHE_SECONDS) -> None:
        self.seconds = seconds
        self._entries: dict[str, tuple[float, datetime | None, Access]] = {}
        self._lock = threading.Lock()
        self.reads = SharedReads()  # a key looked up once for the requests that wait on it

    def get(self, digest: str, now: datetime) -> Access | None:
        with self._lock:
            entry = self._entries.get(digest)
        if entry is None:
            return None
        deadline, expires_at, found = entry
        if time.monotonic() >= deadline or (expires_at is not None and expires_at <= now):
            with self._lock:
                self._entries.pop(digest, None)
            return None
        return found

    def put(self, digest: str, found: Access, expires_at: datetime | None) -> None:
        with self._lock:
            if len(self._entries) > 10_000:  # many keys: start over rather than grow
                self._entries.clear()
            self._entries[digest] = (time.monotonic() + self.seconds, expires_at, found)


@dataclass(frozen=True)
class Caller:
    """The authenticated side of one request: its key, the project it is confined to, and the
    database to act on."""

    access: Access
    engine: Engine

    @property
    def key(self) -> KeyGrant:
        assert self.access.key is not None
        return self.access.key

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: committed when the block ends, rolled back on any error."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def project(self, session: Session) -> Project:
        """The key's project, read in the request's own session."""
        return projects.get_project(session, self.key.project_slug)

    def now(self) -> datetime:
        return datetime.now(UTC)


class ApiStateLike(Protocol):
    engine: Engine
    keys: KeyCache


async def authenticate(request: Request, secret: str) -> Access:
    """The key's access: a kept one at once, else looked up in a worker thread."""
    state: ApiStateLike = request.app.state.neruba
    now = datetime.now(UTC)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    cached = state.keys.get(digest, now)
    if cached is not None:
        return cached
    return await state.keys.reads.read(digest, _look_up, state, secret, digest, now)


def _look_up(state: ApiStateLike, secret: str, digest: str, now: datetime) -> Access:
    try:
        # A write transaction: authenticating may note the key's `last_used_at`, and a SQLite
        # reader that then writes fails at once if another worker wrote in between.
        with write_session(state.engine) as session:
            found = access.authenticate(session, secret, now=now)
    except NerubaError:
        raise ApiError(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"}) from None
    assert found.key is not None
    state.keys.put(digest, found, found.key.expires_at)
    return found


async def authorize(
    request: Request, scope: str, credentials: HTTPAuthorizationCredentials | None
) -> Caller:
    """The caller of a request that needs `scope`: 401 without a valid key, 429 past the key's
    rate, 403 without the scope. The caller is kept on the request for the access log and the
    audit trail."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    found = await authenticate(request, credentials.credentials.strip())
    request.state.key_id = found.actor.id
    request.state.project = found.key.project_slug if found.key else None
    assert found.key is not None
    request.app.state.neruba.limiter.check(found.key.key_id)  # 429 past the key's rate
    if not holds_scope(found.key.scopes, scope):
        raise ApiError(
            403,
            f"API key {found.key.key_id} lacks the {scope!r} scope this route needs",
            param="Authorization",
        )
    caller = Caller(access=found, engine=request.app.state.neruba.engine)
    request.state.caller = caller
    return caller


def requires(scope: str) -> Callable[..., Awaitable[Caller]]:
    """The dependency of a route that needs `scope` (`authorize`)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> Caller:
        return await authorize(request, scope, credentials)

    dependency.__name__ = f"requires_{scope}"
    _SCOPE_OF[dependency] = scope
    return dependency


_SCOPE_OF: dict[Callable[..., Awaitable[Caller]], str] = {}


def scope_of(dependency: Callable[..., object]) -> str | None:
    """The scope a `requires(scope)` dependency checks; None for any other callable."""
    return _SCOPE_OF.get(dependency)  # type: ignore[arg-type]
