"""Lease locks with fencing tokens, on every database: the library and `neruba locks`."""

from __future__ import annotations

import multiprocessing
import os
import re
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from neruba_cli.db import locks
from neruba_cli.db.engine import create_db_engine
from neruba_cli.domain.errors import LockHeld, LockLost

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
CONTENDERS = 4


def at(moment: datetime) -> locks.Clock:
    return lambda: moment


# -- acquire, release, renew --------------------------------------------------------------------


def test_acquire_gives_token_one_and_records_the_holder(engine: Engine) -> None:
    lease = locks.acquire(engine, "billing", holder="alice@host:1", ttl=MINUTE, clock=at(T0))

    assert (lease.name, lease.holder, lease.token) == ("billing", "alice@host:1", 1)
    assert lease.acquired_at == T0
    assert lease.expires_at == T0 + MINUTE
    state = locks.get(engine, "billing")
    assert state == locks.LockState("billing", "alice@host:1", 1, T0, T0 + MINUTE)


def test_second_holder_gets_lock_held_naming_the_holder(engine: Engine) -> None:
    locks.acquire(engine, "billing", holder="alice@host:1", ttl=MINUTE, clock=at(T0))

    with pytest.raises(LockHeld) as caught:
        locks.acquire(engine, "billing", holder="bob@host:2", clock=at(T0 + 30 * SECOND))

    assert caught.value.exit_code == 5
    assert "alice@host:1" in str(caught.value)
    assert "billing" in str(caught.value)
    state = locks.get(engine, "billing")
    assert state is not None
    assert (state.holder, state.token) == ("alice@host:1", 1)


def test_same_holder_cannot_acquire_twice(engine: Engine) -> None:
    """A lease is not re-entrant: the holder string is not a key to get in again."""
    locks.acquire(engine, "billing", holder="alice@host:1", clock=at(T0))
    with pytest.raises(LockHeld):
        locks.acquire(engine, "billing", holder="alice@host:1", clock=at(T0))


def test_locks_with_different_names_are_independent(engine: Engine) -> None:
    first = locks.acquire(engine, "billing", holder="alice", clock=at(T0))
    second = locks.acquire(engine, "ingest", holder="bob", clock=at(T0))
    assert (first.token, second.token) == (1, 1)
    assert [state.name for state in locks.list_held(engine)] == ["billing", "ingest"]


def test_release_then_reacquire_gives_a_higher_token(engine: Engine) -> None:
    first = locks.acquire(engine, "billing", holder="alice", clock=at(T0))
    assert locks.release(engine, first) is True
    freed = locks.get(engine, "billing")
    assert freed == locks.LockState("billing", None, 1, None, None)
    assert locks.list_held(engine) == []

    second = locks.acquire(engine, "billing", holder="bob", clock=at(T0 + MINUTE))
    assert second.token == 2
    assert locks.release(engine, second) is True
    third = locks.acquire(engine, "billing", holder="alice", clock=at(T0 + 2 * MINUTE))
    assert third.token == 3


def test_renew_extends_the_expiry(engine: Engine) -> None:
    lease = locks.acquire(engine, "billing", holder="alice", ttl=MINUTE, clock=at(T0))

    renewed = locks.renew(engine, lease, ttl=5 * MINUTE, clock=at(T0 + 30 * SECOND))

    assert renewed.expires_at == T0 + 30 * SECOND + 5 * MINUTE
    assert (renewed.token, renewed.holder, renewed.acquired_at) == (1, "alice", T0)
    state = locks.get(engine, "billing")
    assert state is not None
    assert state.expires_at == renewed.expires_at
    # The renewed lease is still good past the original expiry.
    with engine.begin() as conn:
        locks.fence(conn, renewed, clock=at(T0 + 2 * MINUTE))


def test_renew_after_expiry_raises_lock_lost(engine: Engine) -> None:
    lease = locks.acquire(engine, "billing", holder="alice", ttl=MINUTE, clock=at(T0))
    with pytest.raises(LockLost) as caught:
        locks.renew(engine, lease, clock=at(T0 + 2 * MINUTE))
    assert caught.value.exit_code == 5
    state = locks.get(engine, "billing")
    assert state is not None
    assert state.expires_at == T0 + MINUTE  # renewal did not resurrect it


def test_renew_after_takeover_raises_lock_lost(engine: Engine) -> None:
    old = locks.acquire(engine, "billing", holder="alice", ttl=MINUTE, clock=at(T0))
    new = locks.acquire(engine, "billing", holder="bob", ttl=MINUTE, clock=at(T0 + 2 * MINUTE))
    assert new.token == 2

    with pytest.raises(LockLost):
        # Even with a clock that says the old lease would still be valid.
        locks.renew(engine, old, clock=at(T0 + 2 * MINUTE + SECOND))
    with pytest.raises(LockLost):
        locks.renew(engine, old, clock=at(T0 + 30 * SECOND))
    state = locks.get(engine, "billing")
    assert state is not None
    assert (state.holder, state.token, state.expires_at) == ("bob", 2, T0 + 3 * MINUTE)


def test_renew_after_release_raises_lock_lost(engine: Engine) -> None:
    lease = locks.acquire(engine, "billing", holder="alice", clock=at(T0))
    locks.release(engine, lease)
    with pytest.raises(LockLost):
        locks.renew(engine, lease, clock=at(T0))


# -- expiry, takeover and fencing ---------------------------------------------------------------


def test_expired_lease_is_taken_over_and_the_old_holder_is_fenced(engine: Engine) -> None:
    old = locks.acquire(engine, "billing", holder="alice", ttl=MINUTE, clock=at(T0))

    # Not yet expired: still held.
    with pytest.raises(LockHeld):
        locks.acquire(engine, "billing", holder="bob", clock=at(T0 + MINUTE - SECOND))

    later = T0 + MINUTE  # expires_at <= now: the lease has run out
    new = locks.acquire(engine, "billing", holder="bob", ttl=MINUTE, clock=at(later))
    assert new.token > old.token
    assert new.token == 2

    # The old holder wakes up and tries to write: fenced off, and its write rolls back.
    with pytest.raises(LockLost), engine.begin() as conn:
        conn.execute(text("DELETE FROM locks WHERE name = 'does-not-matter'"))
        locks.fence(conn, old, clock=at(later))
    # Even a clock that claims the old lease is unexpired does not help: the token is stale.
    with pytest.raises(LockLost), engine.begin() as conn:
        locks.fence(conn, old, clock=at(T0))

    # The new holder's fence passes.
    with engine.begin() as conn:
        locks.fence(conn, new, clock=at(later + SECOND))

    # Releasing the old lease is a no-op that leaves the new holder in place.
    assert locks.release(engine, old) is False
    state = locks.get(engine, "billing")
    assert state == locks.LockState("billing", "bob", 2, later, later + MINUTE)
    with engine.begin() as conn:
        locks.fence(conn, new, clock=at(later + SECOND))

    assert locks.release(engine, new) is True
    assert locks.get(engine, "billing") == locks.LockState("billing", None, 2, None, None)


def test_fence_fails_after_own_lease_expired_without_takeover(engine: Engine) -> None:
    lease = locks.acquire(engine, "billing", holder="alice", ttl=MINUTE, clock=at(T0))
    with engine.begin() as conn:
        locks.fence(conn, lease, clock=at(T0 + MINUTE - SECOND))
    with pytest.raises(LockLost), engine.begin() as conn:
        locks.fence(conn, lease, clock=at(T0 + MINUTE))


def test_fence_fails_after_release(engine: Engine) -> None:
    lease = locks.acquire(engine, "billing", holder="alice", ttl=MINUTE, clock=at(T0))
    locks.release(engine, lease)
    with pytest.raises(LockLost), engine.begin() as conn:
        locks.fence(conn, lease, clock=at(T0))


def test_fence_fails_after_force_release(engine: Engine) -> None:
    lease = locks.acquire(engine, "billing", holder="alice", ttl=MINUTE, clock=at(T0))
    released = locks.force_release(engine, "billing")
    assert (released.holder, released.token) == ("alice", 1)
    with pytest.raises(LockLost), engine.begin() as conn:
        locks.fence(conn, lease, clock=at(T0))


def test_stale_lock_is_reported_stale(engine: Engine) -> None:
    locks.acquire(engine, "billing", holder="alice", ttl=MINUTE, clock=at(T0))
    (state,) = locks.list_held(engine)
    assert not state.is_stale(T0 + MINUTE - SECOND)
    assert state.is_stale(T0 + MINUTE)


def test_holder_alive_reads_only_this_hosts_processes() -> None:
    here = socket.gethostname()
    assert locks.holder_alive(f"me@{here}:{os.getpid()}") is True
    assert locks.holder_alive(f"me@{here}:{_dead_pid()}") is False
    assert locks.holder_alive("me@some-other-host:1") is None
    assert locks.holder_alive("tests") is None


def _dead_pid() -> int:
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


def test_a_dead_local_holders_lease_is_taken_over_before_it_expires(engine: Engine) -> None:
    dead = f"cron@{socket.gethostname()}:{_dead_pid()}"
    old = locks.acquire(engine, "billing", holder=dead, ttl=MINUTE, clock=at(T0))
    lease = locks.acquire(engine, "billing", holder="bob", ttl=MINUTE, clock=at(T0 + SECOND))
    assert (lease.holder, lease.token) == ("bob", old.token + 1)
    with pytest.raises(LockLost), engine.begin() as conn:  # the dead holder is fenced off
        locks.fence(conn, old, clock=at(T0 + SECOND))


def test_a_live_or_remote_holders_lease_is_not_taken_over(engine: Engine) -> None:
    for holder in (f"cron@{socket.gethostname()}:{os.getpid()}", "cron@elsewhere:1"):
        locks.acquire(engine, holder, holder=holder, ttl=MINUTE, clock=at(T0))
        with pytest.raises(LockHeld):
            locks.acquire(engine, holder, holder="bob", ttl=MINUTE, clock=at(T0 + SECOND))


# -- waiting ------------------------------------------------------------------------------------


def test_acquire_waits_for_the_holder_to_release(engine: Engine) -> None:
    held = locks.acquire(engine, "billing", holder="alice")
    failures: list[BaseException] = []

    def release_soon() -> None:
        try:
            time.sleep(0.4)
            assert locks.release(engine, held)
        except BaseException as exc:
            failures.append(exc)

    releaser = threading.Thread(target=release_soon)
    started = time.monotonic()
    releaser.start()
    try:
        lease = locks.acquire(engine, "billing", holder="bob", wait=5.0, poll_interval=0.05)
    finally:
        releaser.join(timeout=10)
    elapsed = time.monotonic() - started

    assert failures == []
    assert (lease.holder, lease.token) == ("bob", 2)
    assert 0.3 <= elapsed < 4.0


def test_acquire_with_wait_gives_up_with_lock_held(engine: Engine) -> None:
    locks.acquire(engine, "billing", holder="alice")
    started = time.monotonic()
    with pytest.raises(LockHeld) as caught:
        locks.acquire(engine, "billing", holder="bob", wait=0.3, poll_interval=0.05)
    elapsed = time.monotonic() - started
    assert "alice" in str(caught.value)
    assert 0.3 <= elapsed < 3.0


# -- processes contending -----------------------------------------------------------------------


def _contend(url: str, name: str, holder: str, barrier: Any, results: Any) -> None:
    """Child process: connect, wait for the others, then all try to take `name` at once."""
    try:
        engine = create_db_engine(url)
        with engine.connect():
            pass  # open the pooled connection before the start line
        barrier.wait(timeout=60)
        try:
            lease = locks.acquire(engine, name, holder=holder)
        except LockHeld as exc:
            results.put((holder, "held", str(exc)))
        else:
            results.put((holder, "won", lease.token))
        engine.dispose()
    except BaseException as exc:
        results.put((holder, "error", f"{type(exc).__name__}: {exc}"))


def _race(url: str, name: str) -> list[tuple[str, str, Any]]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(CONTENDERS)
    results = context.Queue()
    processes = [
        context.Process(target=_contend, args=(url, name, f"proc-{i}", barrier, results))
        for i in range(CONTENDERS)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=120) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert all(process.exitcode == 0 for process in processes)
    return outcomes


@pytest.mark.slow
def test_processes_contending_exactly_one_wins(db_url: str, engine: Engine) -> None:
    # Round 1: no row yet, so the contenders race on the INSERT.
    outcomes = _race(db_url, "billing")
    assert [o for o in outcomes if o[1] == "error"] == []
    winners = [o for o in outcomes if o[1] == "won"]
    losers = [o for o in outcomes if o[1] == "held"]
    assert len(winners) == 1, outcomes
    assert len(losers) == CONTENDERS - 1, outcomes
    winner, _, token = winners[0]
    assert token == 1
    for _, _, message in losers:
        assert winner in message
    state = locks.get(engine, "billing")
    assert state is not None
    assert (state.holder, state.token) == (winner, 1)

    # Round 2: the row exists and is free, so the contenders race on the conditional UPDATE.
    locks.force_release(engine, "billing")
    outcomes = _race(db_url, "billing")
    assert [o for o in outcomes if o[1] == "error"] == []
    winners = [o for o in outcomes if o[1] == "won"]
    assert len(winners) == 1, outcomes
    assert len([o for o in outcomes if o[1] == "held"]) == CONTENDERS - 1, outcomes
    winner, _, token = winners[0]
    assert token == 2
    state = locks.get(engine, "billing")
    assert state is not None
    assert (state.holder, state.token) == (winner, 2)


# -- CLI ----------------------------------------------------------------------------------------


def test_cli_list_shows_held_locks_as_json(cli: Any, engine: Engine) -> None:
    lease = locks.acquire(engine, "billing", holder="alice@host:1", ttl=timedelta(hours=1))

    result = cli("locks", "list", "--json")

    assert result.exit_code == 0, result.stderr
    rows = result.json()
    assert isinstance(rows, list)
    assert len(rows) == 1
    row = rows[0]
    assert {"name", "holder", "token", "acquired_at", "expires_at"} <= set(row)
    assert row["name"] == "billing"
    assert row["holder"] == "alice@host:1"
    assert row["token"] == lease.token == 1
    assert RFC3339_Z.match(row["acquired_at"]), row["acquired_at"]
    assert RFC3339_Z.match(row["expires_at"]), row["expires_at"]
    assert datetime.fromisoformat(row["acquired_at"].replace("Z", "+00:00")) == lease.acquired_at
    assert datetime.fromisoformat(row["expires_at"].replace("Z", "+00:00")) == lease.expires_at
    assert row["stale"] is False


def test_cli_list_is_empty_without_held_locks(cli: Any, engine: Engine) -> None:
    lease = locks.acquire(engine, "billing", holder="alice")
    locks.release(engine, lease)
    result = cli("locks", "list", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == []


def test_cli_list_marks_a_stale_lock(cli: Any, engine: Engine) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    locks.acquire(engine, "stuck", holder="gone@host:9", ttl=MINUTE, clock=at(past))
    locks.acquire(engine, "fresh", holder="alive@host:8", ttl=timedelta(hours=1))

    result = cli("locks", "list", "--json")

    assert result.exit_code == 0, result.stderr
    rows = {row["name"]: row for row in result.json()}
    assert rows["stuck"]["stale"] is True
    assert rows["stuck"]["holder"] == "gone@host:9"
    assert rows["fresh"]["stale"] is False

    human = cli("locks", "list")
    assert human.exit_code == 0, human.stderr
    assert "stuck" in human.stdout
    assert "gone@host:9" in human.stdout


def test_cli_release_without_yes_off_a_terminal_is_refused(cli: Any, engine: Engine) -> None:
    locks.acquire(engine, "billing", holder="alice@host:1")

    result = cli("locks", "release", "billing")

    assert result.exit_code == 2
    assert "--yes" in result.stderr
    state = locks.get(engine, "billing")
    assert state is not None
    assert (state.holder, state.token) == ("alice@host:1", 1)

    as_json = cli("locks", "release", "billing", "--json")
    assert as_json.exit_code == 2
    assert as_json.error()["type"] == "usage_error"
    assert locks.get(engine, "billing").holder == "alice@host:1"  # type: ignore[union-attr]


def test_cli_release_with_yes_frees_the_lock(cli: Any, engine: Engine) -> None:
    lease = locks.acquire(engine, "billing", holder="alice@host:1")

    result = cli("locks", "release", "billing", "--yes", "--json")

    assert result.exit_code == 0, result.stderr
    released = result.json()
    assert (released["name"], released["holder"], released["token"]) == (
        "billing",
        "alice@host:1",
        1,
    )
    assert locks.get(engine, "billing") == locks.LockState("billing", None, 1, None, None)
    assert cli("locks", "list", "--json").json() == []
    # The holder whose lock was released by force can no longer write...
    with pytest.raises(LockLost), engine.begin() as conn:
        locks.fence(conn, lease)
    # ...and the next holder gets a higher token.
    assert locks.acquire(engine, "billing", holder="bob").token == 2


def test_cli_release_human_output(cli: Any, engine: Engine) -> None:
    locks.acquire(engine, "billing", holder="alice@host:1")
    result = cli("locks", "release", "billing", "--yes")
    assert result.exit_code == 0, result.stderr
    assert "Released billing" in result.stderr
    assert "alice@host:1" in result.stderr


def test_cli_release_unknown_lock_is_an_error(cli: Any, engine: Engine) -> None:
    result = cli("locks", "release", "nope", "--yes")
    assert result.exit_code == 1
    assert "lock nope is not held" in result.stderr

    as_json = cli("locks", "release", "nope", "--json")
    assert as_json.exit_code == 1
    error = as_json.error()
    assert error["type"] == "not_found"
    assert "nope" in error["message"]


def test_cli_release_of_a_free_lock_is_an_error(cli: Any, engine: Engine) -> None:
    lease = locks.acquire(engine, "billing", holder="alice")
    locks.release(engine, lease)
    result = cli("locks", "release", "billing", "--yes")
    assert result.exit_code == 1
    assert "not held" in result.stderr


def test_release_after_force_release_reports_the_lease_lost(engine: Engine) -> None:
    lease = locks.acquire(engine, "job", holder="a@host:1")
    locks.force_release(engine, "job")
    assert locks.release(engine, lease) is False


def test_a_lease_needs_a_positive_ttl(engine: Engine) -> None:
    with pytest.raises(ValueError, match="positive ttl"):
        locks.acquire(engine, "job", ttl=timedelta(0))
