"""A paused lease holder blocks nobody, on every database (docs/operations/locks.md).

- A holder's write transaction locks the lease row only at its end (the fence is its last
  statement): while its writes are in flight the lease can be released at once, and the
  transaction then refuses to commit (LockLost) and writes nothing.
- A transaction that does keep the lease row (or, on SQLite, the database) locked, like a
  holder stopped between its fence and its COMMIT, makes a contender's `acquire`, a `renew`
  and `force_release` answer exit 5 within seconds instead of queueing behind it.
- Any statement that waits for a lock too long fails with a lock-wait timeout, which the CLI
  reports as exit 5, not as a broken database.

tests/reliability/test_paused_holder.py proves the same with a real `run bill` under SIGSTOP.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import DBAPIError

from neruba_cli.db import locks
from neruba_cli.db.engine import (
    LEASE_LOCK_WAIT_SECONDS,
    begin_write,
    explain_error,
    is_lock_timeout,
    short_lock_wait,
)
from neruba_cli.db.tables import locks_t
from neruba_cli.domain.errors import LockHeld, LockLost

NAME = "acme:bill:2026-10"
# the longest a lease call may take when the row stays locked: its bound plus some slack
PROMPT = LEASE_LOCK_WAIT_SECONDS + 5


@contextmanager
def row_kept_locked(engine: Engine) -> Iterator[Connection]:
    """Another transaction that has written the lease row and does not end: a holder stopped
    between its fence and its COMMIT (on SQLite it holds the database's write lock)."""
    with begin_write(engine) as conn:
        conn.execute(update(locks_t).where(locks_t.c.name == NAME).values(token=locks_t.c.token))
        yield conn


def test_writes_in_flight_do_not_lock_the_lease_row_and_cannot_commit_once_released(
    engine: Engine, dialect: str
) -> None:
    if dialect == "sqlite":
        pytest.skip("one writer at a time: nothing else writes while a transaction does")
    lease = locks.acquire(engine, NAME, holder="paused@host:1")
    with pytest.raises(LockLost), locks.fenced(engine, lease) as conn:
        conn.execute(insert(locks_t).values(name="written-in-flight", token=1))
        started = time.monotonic()
        released = locks.force_release(engine, NAME)
        assert released.token == lease.token
        assert time.monotonic() - started < PROMPT
    with engine.connect() as conn:
        kept = conn.execute(select(func.count()).where(locks_t.c.name == "written-in-flight"))
        assert kept.scalar_one() == 0  # the whole transaction rolled back


def test_a_fenced_transaction_of_the_current_holder_commits(engine: Engine) -> None:
    lease = locks.acquire(engine, NAME, holder="alice@host:1")
    with locks.fenced(engine, lease) as conn:
        conn.execute(insert(locks_t).values(name="written", token=1))
    with engine.connect() as conn:
        kept = conn.execute(select(func.count()).where(locks_t.c.name == "written"))
        assert kept.scalar_one() == 1


def test_a_contender_is_refused_within_seconds_while_the_row_stays_locked(
    engine: Engine,
) -> None:
    locks.acquire(engine, NAME, holder="paused@host:1", ttl=timedelta(minutes=10))
    with row_kept_locked(engine):
        started = time.monotonic()
        with pytest.raises(LockHeld) as caught:
            locks.acquire(engine, NAME, holder="bob@host:2")
        assert time.monotonic() - started < PROMPT
    assert caught.value.exit_code == 5
    assert "paused@host:1" in str(caught.value)


def test_with_wait_a_contender_retries_past_a_locked_row(engine: Engine) -> None:
    first = locks.acquire(engine, NAME, holder="paused@host:1", ttl=timedelta(minutes=10))
    with row_kept_locked(engine), pytest.raises(LockHeld):
        locks.acquire(engine, NAME, holder="bob@host:2", wait=LEASE_LOCK_WAIT_SECONDS + 1)
    locks.release(engine, first)
    assert locks.acquire(engine, NAME, holder="bob@host:2", wait=5).token == first.token + 1


def test_renew_and_release_answer_within_seconds_while_the_row_stays_locked(
    engine: Engine,
) -> None:
    lease = locks.acquire(engine, NAME, holder="alice@host:1", ttl=timedelta(minutes=10))
    with row_kept_locked(engine):
        started = time.monotonic()
        with pytest.raises(LockLost) as lost:
            locks.renew(engine, lease)
        assert lost.value.exit_code == 5
        assert locks.release(engine, lease) is False  # the lease then ends at its expiry
        with pytest.raises(LockHeld):
            locks.force_release(engine, NAME)
        assert time.monotonic() - started < 3 * PROMPT
    # the bound was put back on the pooled connections: a later lease call works as ever
    assert locks.renew(engine, lease).token == lease.token
    assert locks.release(engine, lease) is True


def test_a_lock_wait_that_runs_out_is_exit_5(engine: Engine) -> None:
    locks.acquire(engine, NAME, holder="alice@host:1")
    locked = row_kept_locked(engine)
    with locked, pytest.raises(DBAPIError) as caught, short_lock_wait(engine, 1) as conn:
        conn.execute(update(locks_t).where(locks_t.c.name == NAME).values(token=locks_t.c.token))
    assert is_lock_timeout(caught.value)
    error = explain_error(caught.value, str(engine.url))
    assert error.exit_code == 5
    assert str(error).startswith("database ")
    assert "gave up waiting (at most 30 s) for a lock another transaction holds" in str(error)
