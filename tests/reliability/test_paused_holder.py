"""A billing run stopped with SIGSTOP inside its write transaction blocks nobody, and once its
lease is released it cannot write.

A real `neruba run bill --finalize` process over enough customers to be mid-run is stopped
and resumed until it is caught inside one of its write transactions: the test sees the
transaction in the server's own views (PostgreSQL `pg_stat_activity.backend_xid`, MariaDB
`information_schema.innodb_trx` with rows modified). Then:

- the run's lease row is not locked (a `FOR UPDATE NOWAIT` probe gets it): the fence is the
  transaction's last statement, so a holder paused before it holds no lock on that row. A stop
  can land in the instant between the fence and the COMMIT; the run is then resumed and
  stopped again, and five such stops in a row fail the test;
- a second `run bill` exits 5 within 10 s, naming the holder;
- `locks release --yes` returns at once;
- resumed, the stale run exits 5 ("no longer ours") and nothing it had in flight commits: the
  invoices are exactly those seen while it was stopped;
- a rerun bills and finalizes the rest, numbers gapless, and `neruba check` agrees.

On SQLite a transaction that writes locks the whole database, so nothing else can write (or
release) while the run is stopped inside one; the promise there is that a contender still
exits 5 within 10 s instead of queueing behind it, and that the run, resumed while its lease
lasts, completes.

docs/operations/locks.md describes the lease, the fence and the lock-wait bounds.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError

from neruba_cli.db.engine import is_lock_timeout, sqlite_file
from neruba_cli.db.tables import billing_runs_t, invoices_t
from tests.support.cli import Cli, ok
from tests.support.events import ingest, write_jsonl
from tests.support.processes import ENV, assert_check_ok, logs, neruba_argv, spawn
from tests.support.workload import AFTER_OCTOBER, assert_gapless, generate, population, shop_for

pytestmark = pytest.mark.slow

PERIOD = "2026-10"
AS_OF = AFTER_OCTOBER.isoformat().replace("+00:00", "Z")
LOCK = f"acme:bill:{PERIOD}"
CUSTOMERS = 400  # four write transactions of 100 drafts, then four of 100 finalizations
LOCKED_STOPS = 5
BILL = ("run", "bill", "--period", PERIOD, "--as-of", AS_OF, "--finalize")
# What "within seconds" means for a contender: its lease row waits at most 3 s and a blocked
# statement 30 s (db/locks.py, db/engine.py). A contender that ended before 25 s did not wait
# out a row lock; the rest of the margin is a loaded machine starting a Python process.
BOUNDED = 25.0


def in_write_transaction(engine: Engine, dialect: str) -> bool:
    """Whether another session of this database has a transaction that already wrote."""
    if dialect == "sqlite":  # a writer holds the database's write lock
        path = sqlite_file(str(engine.url))
        assert path is not None
        probe = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc), exc
            return True
        finally:
            probe.close()
    if dialect == "postgresql":
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
        )
    else:
        query = (
            "SELECT count(*) FROM information_schema.innodb_trx t "
            "JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
            "WHERE p.db = DATABASE() AND p.id <> CONNECTION_ID() AND t.trx_rows_modified > 0"
        )
    with engine.connect() as conn:
        return int(conn.execute(text(query)).scalar_one()) > 0


def lease_row_free(engine: Engine) -> bool:
    """Whether the lease row can be locked right now, without waiting."""
    try:
        with engine.begin() as conn:
            conn.execute(
                text("SELECT name FROM locks WHERE name = :name FOR UPDATE NOWAIT"), {"name": LOCK}
            )
            conn.rollback()
    except DBAPIError as exc:
        if is_lock_timeout(exc):
            return False
        raise
    return True


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "T"


def stop_inside_write_transaction(
    process: subprocess.Popen[bytes], engine: Engine, dialect: str, rng: random.Random
) -> None:
    """SIGSTOP the run, SIGCONT and again until it is stopped inside a write transaction
    with its lease row unlocked; fail after LOCKED_STOPS stops in a row with the row locked."""
    deadline = time.monotonic() + 120
    locked = 0
    while True:
        assert process.poll() is None, f"the run ended (exit {process.returncode}) first"
        assert time.monotonic() < deadline, "never caught the run inside a write transaction"
        time.sleep(rng.uniform(0, 0.05))
        os.kill(process.pid, signal.SIGSTOP)
        while not stopped(process.pid):  # a run that ended meanwhile is a zombie, never "T"
            assert process.poll() is None, f"the run ended (exit {process.returncode}) first"
            assert time.monotonic() < deadline, "the run never stopped on SIGSTOP"
            time.sleep(0.005)
        if in_write_transaction(engine, dialect):
            if dialect == "sqlite" or lease_row_free(engine):
                return
            locked += 1
            assert locked < LOCKED_STOPS, (
                f"stopped inside its write transaction {locked} times in a row, the run held "
                "its lease row locked each time"
            )
        else:
            locked = 0
        os.kill(process.pid, signal.SIGCONT)


def invoice_state(engine: Engine) -> set[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(invoices_t.c.id, invoices_t.c.number, invoices_t.c.status, invoices_t.c.run_id)
        ).all()
    return {tuple(row) for row in rows}


def timed(db_url: str, *args: str, limit: float) -> tuple[int, str, float]:
    """A `neruba` process run to its end (killed after `limit` * 3 s, so that a hang fails
    the test instead of stalling it): exit code, stderr, seconds taken."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            neruba_argv(db_url, *args),
            capture_output=True,
            text=True,
            env={**os.environ, **ENV},
            timeout=limit * 3,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`neruba {' '.join(args)}` still waiting after {limit * 3:.0f} s")
    return done.returncode, done.stderr, time.monotonic() - started


def shop(cli: Cli, tmp_path: Path) -> list[str]:
    names, starts = population(CUSTOMERS)
    shop_for(cli, tmp_path, names, starts)
    ingest(cli, write_jsonl(tmp_path / "usage.jsonl", generate(names, seed=18, starts=starts)))
    return names


def wait_for_first_invoice(process: subprocess.Popen[bytes], engine: Engine, log: Path) -> None:
    deadline = time.monotonic() + 120
    while not invoice_state(engine):  # its first write transaction has committed
        assert process.poll() is None, logs(log)
        assert time.monotonic() < deadline, "no invoice written in 2 minutes"
        time.sleep(0.01)


@pytest.mark.parametrize("dialect", ["mariadb", "postgresql"], indirect=True)
def test_a_run_stopped_inside_its_write_transaction_blocks_nobody_and_cannot_commit(
    cli: Cli, db_url: str, engine: Engine, tmp_path: Path, dialect: str
) -> None:
    names = shop(cli, tmp_path)
    rng = random.Random(f"paused-holder-{dialect}")
    process = spawn(db_url, *BILL, "--quiet", log=tmp_path / "paused")
    try:
        wait_for_first_invoice(process, engine, tmp_path / "paused")
        stop_inside_write_transaction(process, engine, dialect, rng)
        with engine.connect() as conn:
            (run_id,) = conn.execute(
                select(billing_runs_t.c.id).where(billing_runs_t.c.status == "running")
            ).one()
        seen = invoice_state(engine)
        mine = sum(1 for row in seen if row[3] == run_id)
        assert 0 < mine < 2 * CUSTOMERS, mine

        code, err, took = timed(db_url, *BILL, limit=BOUNDED)
        assert code == 5 and took < BOUNDED, (code, took, err)
        assert "held by" in err and f":{process.pid}" in err, err

        code, err, took = timed(db_url, "locks", "release", LOCK, "--yes", limit=BOUNDED)
        assert code == 0 and took < BOUNDED, (code, took, err)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
    try:
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    context = logs(tmp_path / "paused")
    assert code == 5, context
    assert "no longer ours" in context, context
    after = invoice_state(engine)
    assert after == seen, (len(after - seen), len(seen - after))  # nothing of it committed
    assert sum(1 for row in after if row[3] == run_id) == mine
    assert_gapless(engine)
    assert_check_ok(cli, f"after the stale run; {context}")

    report = ok(cli, *BILL)
    assert report["status"] == "completed", report
    rows = ok(cli, "invoice", "list", "--period", PERIOD)
    assert Counter(row["customer"] for row in rows) == dict.fromkeys(names, 1)
    assert {row["status"] for row in rows} == {"finalized"}, Counter(r["status"] for r in rows)
    assert_gapless(engine)
    assert_check_ok(cli, "after the rerun")


@pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)
def test_on_sqlite_a_contender_of_a_run_stopped_while_writing_exits_5_within_seconds(
    cli: Cli, db_url: str, engine: Engine, tmp_path: Path, dialect: str
) -> None:
    names = shop(cli, tmp_path)
    rng = random.Random(f"paused-holder-{dialect}")
    process = spawn(db_url, *BILL, "--quiet", log=tmp_path / "paused")
    try:
        wait_for_first_invoice(process, engine, tmp_path / "paused")
        stop_inside_write_transaction(process, engine, dialect, rng)
        code, err, took = timed(db_url, *BILL, limit=BOUNDED)
        assert code == 5 and took < BOUNDED, (code, took, err)
        assert "held by" in err and f":{process.pid}" in err, err
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
    try:
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, logs(tmp_path / "paused")  # its lease lasted: it finished the month
    rows = ok(cli, "invoice", "list", "--period", PERIOD)
    assert Counter(row["customer"] for row in rows) == dict.fromkeys(names, 1)
    assert {row["status"] for row in rows} == {"finalized"}, Counter(r["status"] for r in rows)
    assert_gapless(engine)
    assert_check_ok(cli, "after the run")
