"""Billing runs in competing processes: one lease per project and month, fenced writes.

Each test starts real `run_bill` processes (the RUNNER of tests/support/workload.py) against
the same database and checks what the database holds afterwards.
"""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from neruba_cli.db import locks
from neruba_cli.db.schema import BillingRun, InvoiceLine, InvoiceRevision
from tests.support.cli import Cli
from tests.support.events import ingest, write_jsonl
from tests.support.workload import (
    assert_gapless,
    generate,
    invoices,
    population,
    project_of,
    shop_for,
    spawn,
)

pytestmark = pytest.mark.slow
CUSTOMERS = 400


@pytest.fixture
def busy(cli: Cli, tmp_path: Path) -> Cli:
    names, starts = population(CUSTOMERS)
    shop_for(cli, tmp_path, names, starts)
    ingest(cli, write_jsonl(tmp_path / "usage.jsonl", generate(names, seed=8, starts=starts)))
    return cli


def start_together(db_url: str, *args: str) -> list[subprocess.Popen[str]]:
    processes = [spawn(db_url, *args, "gate") for _ in range(2)]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    return processes


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = process.communicate(timeout=180)
    last = out.strip().splitlines()[-1] if out.strip() else ""
    assert process.returncode in (0, 5), err
    return process.returncode, last


def assert_whole(engine: Engine) -> None:
    """Every stored invoice has all its lines and its first revision."""
    with engine.connect() as conn:
        for inv in invoices(engine):
            lines = conn.execute(
                select(func.count()).where(InvoiceLine.invoice_id == inv.id)
            ).scalar_one()
            revisions = conn.execute(
                select(func.count()).where(InvoiceRevision.invoice_id == inv.id)
            ).scalar_one()
            assert (lines, revisions) == (len(inv.doc["lines"]), 1), inv.number


def test_two_runs_at_once_one_works_the_other_is_refused(
    busy: Cli, engine: Engine, db_url: str
) -> None:
    results = sorted(finish(p) for p in start_together(db_url, "600", "0", "50"))
    worked = [last for code, last in results if code == 0 and last.startswith("done completed")]
    assert worked == [f"done completed {CUSTOMERS} 0"], results
    # started together: the other is refused at once with "lock held" and who holds it
    other_code, other = results[1]
    assert other_code == 5 and other.startswith("error LockHeld"), results
    assert "held by" in other and "since" in other, other
    assert len(invoices(engine)) == CUSTOMERS
    assert_gapless(engine)
    assert_whole(engine)
    with engine.connect() as conn:
        assert conn.execute(select(BillingRun.status)).scalars().all() == ["completed"]


def test_with_wait_the_second_run_finds_nothing_to_do(
    busy: Cli, engine: Engine, db_url: str
) -> None:
    results = sorted(finish(p) for p in start_together(db_url, "600", "120", "50"))
    assert [code for code, _ in results] == [0, 0], results
    assert sorted(last for _, last in results) == [
        f"done completed {CUSTOMERS} 0",
        f"done unchanged 0 {CUSTOMERS}",
    ]
    assert len(invoices(engine)) == CUSTOMERS
    assert_gapless(engine)
    assert_whole(engine)


def test_a_paused_run_whose_lease_expired_cannot_write(
    busy: Cli, engine: Engine, db_url: str
) -> None:
    # lease 3 s (planning under load must not outlast it), whole invoices 50 at a time, a
    # 1 s breath after each 50
    process = spawn(db_url, "3", "0", "50", "-", "1")
    assert process.stdout is not None
    seen = []
    while not (line := process.stdout.readline()).startswith("step"):
        assert line, (seen, process.stderr.read() if process.stderr else "")
        seen.append(line)
    process.send_signal(signal.SIGSTOP)
    try:
        written = {inv.id: inv for inv in invoices(engine)}
        assert len(written) == 50
        time.sleep(5)  # its lease expires
        name = locks.get(engine, f"{project_of(engine).slug}:bill:2026-10")
        assert name is not None and name.is_stale(locks.utcnow())
        intruder = locks.acquire(engine, name.name, holder="intruder", ttl=timedelta(minutes=5))
        assert intruder.token == name.token + 1
    finally:
        process.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 5, (out, err)
    assert "error LockLost" in out, out
    # nothing more was written, and what was written is whole
    assert {inv.id: inv for inv in invoices(engine)} == written
    assert_whole(engine)
    with engine.connect() as conn:
        runs = conn.execute(select(BillingRun.status, BillingRun.message)).all()
    assert len(runs) == 1 and runs[0].status == "failed", runs
    # the new holder can work; after it, a run completes the rest, numbers stay gapless
    assert locks.release(engine, intruder)
    rerun = spawn(db_url, "600", "0")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert out.strip().splitlines()[-1] == f"done completed {CUSTOMERS - 50} 50"
    assert len(invoices(engine)) == CUSTOMERS
    assert_gapless(engine)
    assert_whole(engine)
