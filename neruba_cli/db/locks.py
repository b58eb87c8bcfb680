"""Lease locks that work the same on SQLite, MariaDB and PostgreSQL.

A lock is a row in `locks`. Acquiring is one conditional UPDATE (or the first INSERT), so two
contenders can never both win: the database's row lock and unique key decide. Each acquisition
increments the row's fencing token.

Two rules keep a paused holder (SIGSTOP, a frozen VM) from blocking everyone else, and keep it
from writing once its lease is gone:

- **The lease row is locked only for an instant.** Taking, renewing and giving back a lease
  are short transactions of their own (`_lease_transaction`), never part of the work's
  transaction, and they wait at most `LEASE_LOCK_WAIT_SECONDS` for the row: a contender gets
  "held" (exit 5) at once even when the row is locked by a process that stopped.
- **Every write transaction of a holder ends with the fence** (`fenced`, or `fence()` as the
  transaction's last statement): a conditional UPDATE of the lease row by primary key, which
  matches only while the token is still ours and unexpired. The work's statements run before
  it, so a holder paused inside its transaction holds no lock on the lease row; the fence then
  locks the row from its check to the COMMIT, so no new holder can take over in between. A
  holder paused past its expiry, or whose lease an operator released, fails the fence and its
  whole transaction rolls back. The key equality makes InnoDB lock the one record, no gap.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.expression import Update

from neruba_cli.db.engine import (
    LEASE_LOCK_WAIT_SECONDS,
    begin_write,
    is_lock_timeout,
    short_lock_wait,
)
from neruba_cli.db.tables import locks_t
from neruba_cli.domain.errors import LockHeld, LockLost, NotFound
from neruba_cli.domain.timestamps import format_ts

DEFAULT_TTL = timedelta(minutes=10)
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    token: int
    acquired_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class LockState:
    name: str
    holder: str | None
    token: int
    acquired_at: datetime | None
    expires_at: datetime | None

    def is_stale(self, now: datetime) -> bool:
        """Held on paper but past its expiry: its holder died or hung."""
        return self.holder is not None and self.expires_at is not None and self.expires_at <= now


def utcnow() -> datetime:
    return datetime.now(UTC)


def default_holder() -> str:
    """`user@host:pid`: enough for an operator to find the process that holds a lock."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


def holder_alive(holder: str) -> bool | None:
    """Whether a lock holder (`user@host:pid`, `default_holder`) still runs: known only for
    this host; None elsewhere or for a holder of another shape."""
    _user, at, rest = holder.rpartition("@")
    host, _colon, pid_text = rest.rpartition(":")
    if not at or host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    except OSError:
        return None
    return True


def acquire(
    engine: Engine,
    name: str,
    *,
    holder: str | None = None,
    ttl: timedelta = DEFAULT_TTL,
    wait: float = 0.0,
    clock: Clock = utcnow,
    poll_interval: float = 0.5,
) -> Lease:
    """Take the lease or raise LockHeld; with `wait`, retry until that many seconds passed."""
    if ttl <= timedelta(0):
        raise ValueError("a lease needs a positive ttl")
    holder = holder or default_holder()
    deadline = time.monotonic() + wait
    while True:
        try:
            lease = _try_acquire(engine, name, holder, ttl, clock())
            if lease is None:
                lease = _take_from_dead_holder(engine, name, holder, ttl, clock())
        except DBAPIError as exc:
            if not is_lock_timeout(exc):
                raise
            lease = None  # the row is locked by a transaction that does not end: busy
        if lease is not None:
            return lease
        if time.monotonic() >= deadline:
            raise _held_error(engine, name)
        time.sleep(min(poll_interval, max(deadline - time.monotonic(), 0.01)))


def _try_acquire(
    engine: Engine, name: str, holder: str, ttl: timedelta, now: datetime
) -> Lease | None:
    expires = now + ttl
    with _lease_transaction(engine) as conn:
        taken = conn.execute(
            update(locks_t)
            .where(locks_t.c.name == name)
            .where(or_(locks_t.c.holder.is_(None), locks_t.c.expires_at <= now))
            .values(holder=holder, token=locks_t.c.token + 1, acquired_at=now, expires_at=expires)
        ).rowcount
        if taken == 1:
            token = conn.execute(select(locks_t.c.token).where(locks_t.c.name == name)).scalar_one()
            return Lease(name, holder, int(token), now, expires)
    try:
        with _lease_transaction(engine) as conn:
            conn.execute(
                insert(locks_t).values(
                    name=name, holder=holder, token=1, acquired_at=now, expires_at=expires
                )
            )
        return Lease(name, holder, 1, now, expires)
    except IntegrityError:
        return None  # the row exists and is held (or someone inserted it just now)


def _take_from_dead_holder(
    engine: Engine, name: str, holder: str, ttl: timedelta, now: datetime
) -> Lease | None:
    """A lease whose holder is a process of this host that no longer exists (killed, crashed)
    is taken over at once instead of after its expiry, so a cron rerun after a crash just
    works. The takeover is conditional on the exact holder and token read, and it advances the
    fencing token like any acquisition: if that process were somehow still writing, its next
    fenced write fails."""
    state = get(engine, name)
    if state is None or state.holder is None or holder_alive(state.holder) is not False:
        return None
    expires = now + ttl
    with _lease_transaction(engine) as conn:
        taken = conn.execute(
            update(locks_t)
            .where(locks_t.c.name == name)
            .where(locks_t.c.holder == state.holder, locks_t.c.token == state.token)
            .values(holder=holder, token=locks_t.c.token + 1, acquired_at=now, expires_at=expires)
        ).rowcount
        if taken != 1:
            return None
        token = conn.execute(select(locks_t.c.token).where(locks_t.c.name == name)).scalar_one()
    return Lease(name, holder, int(token), now, expires)


def _held_error(engine: Engine, name: str) -> LockHeld:
    state = get(engine, name)
    if state is None or state.holder is None:
        return LockHeld(f"lock {name} is busy; try again")
    return LockHeld(
        f"lock {name} is held by {state.holder} since {format_ts(state.acquired_at)} "
        f"(expires {format_ts(state.expires_at)})",
        hint="wait for it, or `neruba locks release` it if that process is gone",
    )


def _ours(lease: Lease) -> Update:
    """An UPDATE of the lease's row that matches only while this lease (its holder and
    fencing token) still holds it."""
    return (
        update(locks_t)
        .where(locks_t.c.name == lease.name)
        .where(locks_t.c.token == lease.token)
        .where(locks_t.c.holder == lease.holder)
    )


def renew(
    engine: Engine, lease: Lease, *, ttl: timedelta = DEFAULT_TTL, clock: Clock = utcnow
) -> Lease:
    """Extend our lease; raise LockLost if it expired or passed to another holder."""
    now = clock()
    expires = now + ttl
    try:
        with _lease_transaction(engine) as conn:
            changed = conn.execute(
                _ours(lease).where(locks_t.c.expires_at > now).values(expires_at=expires)
            ).rowcount
    except DBAPIError as exc:
        if not is_lock_timeout(exc):
            raise
        raise LockLost(
            f"lease on {lease.name} (token {lease.token}) could not be renewed: its row stayed "
            f"locked by another transaction for {LEASE_LOCK_WAIT_SECONDS} s",
            hint="`neruba locks list` shows who holds it",
        ) from None
    if changed != 1:
        raise LockLost(f"lease on {lease.name} (token {lease.token}) was lost before renewal")
    return Lease(lease.name, lease.holder, lease.token, lease.acquired_at, expires)


@contextmanager
def fenced(engine: Engine, lease: Lease, *, clock: Clock = utcnow) -> Iterator[Connection]:
    """A write transaction of the lease's holder: the block's statements, then the fence as
    the last statement before COMMIT. If the lease is no longer ours, LockLost and nothing of
    the block is written; if the block raises, the fence does not run and all rolls back.

    On SQLite it takes the write lock at BEGIN (`begin_write`): the block reads before it
    writes, and a WAL reader that writes later fails outright once another writer committed
    since its read."""
    with begin_write(engine) as conn:
        yield conn
        fence(conn, lease, clock=clock)


def fence(conn: Connection, lease: Lease, *, clock: Clock = utcnow) -> None:
    """Check, as the LAST statement of the caller's write transaction, that the lease is still
    ours (`fenced` does this for a block).

    The no-op UPDATE (by primary key, so InnoDB locks that record only) takes the lease row's
    write lock until the caller commits, so no new holder can take over between this check
    and the commit. Run earlier, it would keep that lock for the whole transaction and a
    holder paused inside it would block every contender and `locks release`.
    """
    changed = conn.execute(
        update(locks_t)
        .where(locks_t.c.name == lease.name)
        .where(locks_t.c.token == lease.token)
        .where(locks_t.c.expires_at > clock())
        .values(expires_at=locks_t.c.expires_at)
    ).rowcount
    if changed != 1:
        raise LockLost(
            f"lease on {lease.name} (token {lease.token}) is no longer ours; nothing was written"
        )


class Holding:
    """A lease held through long work (a Stripe push or pull, a retention run): every write
    transaction of the work through `write()`, fenced, and the lease renewed first (in a
    transaction of its own) once a third of its ttl has passed, so it never lapses under a
    live holder however long the work takes between two writes. Passed down to the services
    that write for the holder, so none of them opens an unfenced transaction."""

    def __init__(
        self, engine: Engine, lease: Lease, *, ttl: timedelta = DEFAULT_TTL, clock: Clock = utcnow
    ) -> None:
        self.engine, self.lease, self.ttl, self.clock = engine, lease, ttl, clock

    def renew_when_due(self) -> None:
        """Renew once a third of the ttl has passed (LockLost if the lease is gone)."""
        if self.lease.expires_at - self.clock() < self.ttl * 2 / 3:
            self.lease = renew(self.engine, self.lease, ttl=self.ttl, clock=self.clock)

    def write(self) -> AbstractContextManager[Connection]:
        """A write transaction of the holder (`fenced`), the lease renewed first when due."""
        self.renew_when_due()
        return fenced(self.engine, self.lease, clock=self.clock)

    def release(self) -> bool:
        return release(self.engine, self.lease)


def release(engine: Engine, lease: Lease) -> bool:
    """Give the lease back; False when it had already expired and been taken over (or its row
    stayed locked: the lease then ends at its expiry)."""
    try:
        with _lease_transaction(engine) as conn:
            changed = conn.execute(
                _ours(lease).values(holder=None, acquired_at=None, expires_at=None)
            ).rowcount
    except DBAPIError as exc:
        if not is_lock_timeout(exc):
            raise
        return False
    return changed == 1


@contextmanager
def held(engine: Engine, name: str, *, holder: str | None = None) -> Iterator[Lease]:
    """The lease for the duration of a block, given back however the block ends (an error
    inside it must not leave the lock to expire on its own)."""
    lease = acquire(engine, name, holder=holder)
    try:
        yield lease
    finally:
        release(engine, lease)


def force_release(engine: Engine, name: str) -> LockState:
    """Operator override for a lock whose holder is gone or hung; returns what was released.
    The holder, if it ever resumes, fails its next fence: none of its writes commit."""
    try:
        with _lease_transaction(engine) as conn:
            row = conn.execute(select(locks_t).where(locks_t.c.name == name)).first()
            if row is None or row.holder is None:
                raise NotFound(
                    f"lock {name} is not held", hint="`neruba locks list` shows held locks"
                )
            changed = conn.execute(
                update(locks_t)
                .where(locks_t.c.name == name)
                .where(locks_t.c.token == row.token)
                .where(locks_t.c.holder == row.holder)
                .values(holder=None, acquired_at=None, expires_at=None)
            ).rowcount
    except DBAPIError as exc:
        if not is_lock_timeout(exc):
            raise
        raise LockHeld(
            f"lock {name} was not released: a transaction in progress kept its row locked for "
            f"{LEASE_LOCK_WAIT_SECONDS} s (on SQLite, any transaction that writes)",
            hint="try again; a holder stopped inside a transaction must be resumed or killed",
        ) from None
    if changed != 1:
        raise LockHeld(f"lock {name} changed hands while releasing it; nothing was released")
    return _state(row)


def _lease_transaction(engine: Engine) -> AbstractContextManager[Connection]:
    """A short transaction on a lease row alone, waiting at most LEASE_LOCK_WAIT_SECONDS for
    it (a lock-wait timeout, `is_lock_timeout`, past that)."""
    return short_lock_wait(engine, LEASE_LOCK_WAIT_SECONDS)


def get(engine: Engine, name: str) -> LockState | None:
    with engine.connect() as conn:
        row = conn.execute(select(locks_t).where(locks_t.c.name == name)).first()
    return None if row is None else _state(row)


def list_held(engine: Engine, *, prefix: str | None = None) -> list[LockState]:
    query = select(locks_t).where(locks_t.c.holder.is_not(None)).order_by(locks_t.c.name)
    if prefix is not None:
        query = query.where(locks_t.c.name.startswith(prefix, autoescape=True))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [_state(row) for row in rows]


def _state(row: object) -> LockState:
    return LockState(
        name=row.name,  # type: ignore[attr-defined]
        holder=row.holder,  # type: ignore[attr-defined]
        token=int(row.token),  # type: ignore[attr-defined]
        acquired_at=row.acquired_at,  # type: ignore[attr-defined]
        expires_at=row.expires_at,  # type: ignore[attr-defined]
    )
