"""A database that goes away in the middle of a run: one clear error, and a clean rerun.

`neruba ingest BIGFILE` and `neruba run bill --period P --finalize` run as real subprocesses.
Once the run has committed something (the test polls the database), the test freezes it
(SIGSTOP), takes the database away, and lets it go on (SIGCONT), so the run always meets the
outage with work left to do:

- PostgreSQL and MariaDB: a private server (tests/reliability/servers.py; the shared ones on
  3306/5432 are never touched) is killed: `pg_ctl stop -m immediate`, SIGKILL for mariadbd.
- SQLite has no server. Its honest analogue of "the database is not there for me" is another
  process holding the database's exclusive write lock (`BEGIN EXCLUSIVE`, as a backup tool or a
  stuck writer would) for longer than Neruba's busy timeout. The test takes that lock itself
  while the frozen run holds no transaction, and keeps it until the run has exited. The busy
  timeout (30 s in the product) is shortened to 1 s in the subprocess so that the test does not
  sit through it four times (the write, marking the receipt or run failed, releasing the lease,
  the audit record — each waits once).

The subprocesses also write invoices in batches of 20 instead of 100 (as the runner of
tests/support/workload.py does): more commits to stop between. After the outage the run must
exit 1 (SQLite, locked by another process: exit 5, busy) within a hang guard, with one line of
error on stderr (JSON with --json) that names the database (password hidden) and no traceback.
Then the database comes back and the same command is run again:

- ingest: exit 0; the events are the file's keys exactly once (the rerun accepts exactly what
  the interrupted run had not committed, and counts the rest as duplicates);
- run bill: the interrupted run's lease is still recorded (it could not release it while the
  database was away) under the dead process's name; the rerun takes it over at once, as README
  "Locks" documents for a holder that is a dead process of this host, and exits 0; every invoice
  equals an independent computation, is finalized, and the numbers are gapless.

Finally `neruba check --json` exits 0.
"""

from __future__ import annotations

import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, func, select

from neruba_cli.db import migrate
from neruba_cli.db.engine import create_db_engine, redact
from neruba_cli.db.schema import Event, ImportBatch, Invoice
from tests.reliability.servers import (
    PrivateMariaDB,
    PrivatePostgres,
    PrivateServer,
    ServerUnavailable,
)
from tests.support.cli import Cli
from tests.support.databases import unavailable
from tests.support.events import Ev, ingest, write_jsonl
from tests.support.workload import (
    AFTER_OCTOBER,
    OCTOBER,
    assert_gapless,
    check_against_independent,
    generate,
    invoices,
    population,
    shop_for,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD = 60.0  # seconds: only there to turn a hang into a failure, never a timing claim
BILLED = 60  # customers in the billing scenario: 3 write transactions of 20 invoices
INGESTED = 20_000  # lines in the ingest scenario: 4 batches of 5000

# The real CLI entry point, with a shorter SQLite busy timeout and smaller billing batches.
CLI_MAIN = """
import sys
from neruba_cli.db import engine
from neruba_cli.services.billing import plan as billing_plan
from neruba_cli.services.billing import writer as billing_writer
engine.SQLITE_BUSY_TIMEOUT_MS = 1000
billing_plan.CUSTOMER_BATCH = billing_writer.WRITE_BATCH = 20
from neruba_cli.cli.app import main
sys.argv[0] = "neruba"
main()
"""


# --------------------------------------------------------------------------- outages


class Outage:
    """Takes one database away and brings it back. `exit_code` is what the run meets: a server
    that is gone is an error (1); a SQLite database another process keeps locked past the busy
    timeout is busy (5, like a held lease: try again when the other process is done)."""

    exit_code = 1

    def __init__(self, url: str) -> None:
        self.url = url

    def begin(self, process: subprocess.Popen[str]) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


class ServerOutage(Outage):
    def __init__(self, url: str, server: PrivateServer) -> None:
        super().__init__(url)
        self.server = server

    def begin(self, process: subprocess.Popen[str]) -> None:
        self.server.stop()

    def end(self) -> None:
        self.server.start()


class SQLiteLockOutage(Outage):
    """Another process (this test) holds the write lock; the frozen run is let go a moment at a
    time until the lock is ours, i.e. until it is frozen outside any write transaction."""

    exit_code = 5

    def __init__(self, url: str, path: Path) -> None:
        super().__init__(url)
        self.path = path
        self.holder: sqlite3.Connection | None = None

    def begin(self, process: subprocess.Popen[str]) -> None:
        holder = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        for _attempt in range(2000):
            try:
                holder.execute("BEGIN EXCLUSIVE")
                self.holder = holder
                return
            except sqlite3.OperationalError:  # the run is inside a write: let it finish it
                process.send_signal(signal.SIGCONT)
                time.sleep(0.005)
                process.send_signal(signal.SIGSTOP)
        holder.close()
        raise AssertionError("never got the SQLite write lock between the run's writes")

    def end(self) -> None:
        assert self.holder is not None
        self.holder.execute("ROLLBACK")
        self.holder.close()
        self.holder = None


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def private_servers() -> Iterator[dict[str, PrivateServer | str]]:
    """One private server per dialect for the whole session, made on first use; a string is
    why it could not be made."""
    made: dict[str, PrivateServer | str] = {}
    yield made
    for server in made.values():
        if isinstance(server, PrivateServer):
            server.close()


def private_server(made: dict[str, PrivateServer | str], dialect: str) -> PrivateServer:
    if dialect not in made:
        try:
            made[dialect] = PrivatePostgres() if dialect == "postgresql" else PrivateMariaDB()
        except ServerUnavailable as exc:
            made[dialect] = str(exc)
    server = made[dialect]
    if isinstance(server, str):
        unavailable(dialect, f"private server: {server}")
        raise AssertionError("unreachable")
    return server


@pytest.fixture(params=("sqlite", "mariadb", "postgresql"))
def outage(
    request: pytest.FixtureRequest,
    private_servers: dict[str, PrivateServer | str],
    tmp_path: Path,
) -> Iterator[Outage]:
    """A migrated, empty database and the means to take it away."""
    dialect = str(request.param)
    if dialect == "sqlite":
        path = tmp_path / "neruba.db"
        url = f"sqlite:///{path}"
        made: Outage = SQLiteLockOutage(url, path)
    else:
        server = private_server(private_servers, dialect)
        if not server.running:  # an earlier test failed while its server was away
            server.start()
        url = server.create_database(f"outage_{secrets.token_hex(4)}")
        made = ServerOutage(url, server)
    engine = create_db_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    yield made
    if isinstance(made, SQLiteLockOutage) and made.holder is not None:
        made.end()
    if isinstance(made, ServerOutage) and not made.server.running:
        made.server.start()


@pytest.fixture
def db(outage: Outage) -> Iterator[Engine]:
    engine = create_db_engine(outage.url)
    yield engine
    engine.dispose()


# --------------------------------------------------------------------------- helpers


def spawn(url: str, cwd: Path, *args: str) -> subprocess.Popen[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NERUBA_")} | {
        "PYTHONPATH": str(ROOT),
        "NO_COLOR": "1",
        "COLUMNS": "120",
    }
    return subprocess.Popen(
        [sys.executable, "-c", CLI_MAIN, *args, "--project", "acme", "--db", url, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )


def count(engine: Engine, model: type) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def interrupt(
    process: subprocess.Popen[str], outage: Outage, committed: Any
) -> tuple[int, str, str]:
    """Wait until `committed()` is true, freeze the run, take the database away, let the run go
    on; its exit code, stdout and stderr once it has exited (the database still away)."""
    while not committed():
        assert process.poll() is None, f"the run ended before committing: {process.stderr.read()}"  # type: ignore[union-attr]
        time.sleep(0.01)
    process.send_signal(signal.SIGSTOP)
    try:
        outage.begin(process)
    finally:
        process.send_signal(signal.SIGCONT)
    try:
        out, err = process.communicate(timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the run hung after the database went away; stderr: {err[-2000:]}")
    return process.returncode, out, err


def assert_one_clear_error(err: str, outage: Outage) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    error = orjson.loads(lines[0])["error"]
    assert error["exit_code"] == outage.exit_code, error
    assert error["message"].startswith(f"database {redact(outage.url)}: "), error
    assert "internal error" not in error["message"], error


def check_passes(url: str) -> None:
    checked = Cli(url)("check", "--project", "acme", "--json")
    assert checked.exit_code == 0, (checked.stdout, checked.stderr)


# --------------------------------------------------------------------------- ingest


def test_ingest_when_the_database_goes_away_exits_1_and_a_rerun_completes_it(
    outage: Outage, db: Engine, tmp_path: Path
) -> None:
    cli = Cli(outage.url)
    names, starts = population(8)
    shop_for(cli, tmp_path, names, starts)
    source = tmp_path / "big.jsonl"
    events = [
        Ev(f"k{i:06d}", names[i % len(names)], "api_calls", OCTOBER.replace(day=1 + i % 28))
        for i in range(INGESTED)
    ]
    write_jsonl(source, events)

    process = spawn(outage.url, tmp_path, "ingest", str(source))
    code, out, err = interrupt(process, outage, lambda: count(db, Event) > 0)
    assert code == outage.exit_code and out == "", (code, out, err)
    assert_one_clear_error(err, outage)
    outage.end()

    kept = count(db, Event)
    assert 0 < kept < INGESTED  # whole batches of the interrupted run, and not all of them
    with db.connect() as conn:
        statuses = list(conn.scalars(select(ImportBatch.status)))
    assert "completed" not in statuses  # the interrupted receipt never claims completion

    rerun = spawn(outage.url, tmp_path, "ingest", str(source))
    out, err = rerun.communicate(timeout=HANG_GUARD)
    assert rerun.returncode == 0, err
    summary = orjson.loads(out)
    assert (summary["lines"], summary["accepted"], summary["duplicates"]) == (
        INGESTED,
        INGESTED - kept,
        kept,
    )
    assert (summary["conflicts"], summary["rejected"]) == (0, 0)
    with db.connect() as conn:
        keys = list(conn.scalars(select(Event.idempotency_key).order_by(Event.idempotency_key)))
    assert keys == [event.key for event in events]  # every key, exactly once
    check_passes(outage.url)


# --------------------------------------------------------------------------- run bill


def test_a_billing_run_when_the_database_goes_away_exits_1_and_a_rerun_is_exact(
    outage: Outage, db: Engine, tmp_path: Path
) -> None:
    cli = Cli(outage.url)
    names, starts = population(BILLED)
    shop_for(cli, tmp_path, names, starts)
    events = generate(names, seed=11, starts=starts)
    ingest(cli, write_jsonl(tmp_path / "usage.jsonl", events))
    command = ("run", "bill", "--period", "2026-10", "--as-of", AFTER_OCTOBER.isoformat())

    process = spawn(outage.url, tmp_path, *command, "--finalize")
    code, out, err = interrupt(process, outage, lambda: count(db, Invoice) > 0)
    assert code == outage.exit_code and out == "", (code, out, err)
    assert_one_clear_error(err, outage)
    outage.end()

    written = invoices(db)
    assert 0 < len(written) < BILLED
    assert {inv.status for inv in written} == {"draft"}  # finalizing comes after all drafts
    assert_gapless(db)

    # The interrupted run could not give its lease back while the database was away: the lock
    # still names it. It is a dead process of this host, so the rerun takes the lease over at
    # once (README "Locks") instead of exiting 5 until the lease expires.
    listed = cli("locks", "list", "--project", "acme", "--json")
    assert listed.exit_code == 0, listed.stderr
    held = {item["name"]: item for item in listed.json()}
    assert held["acme:bill:2026-10"]["holder"].endswith(f":{process.pid}"), held

    rerun = spawn(outage.url, tmp_path, *command, "--finalize")
    out, err = rerun.communicate(timeout=HANG_GUARD)
    assert rerun.returncode == 0, err
    report = orjson.loads(out)
    assert report["status"] == "completed" and len(report["finalized"]) == BILLED, report
    check_against_independent(db, events, names, starts)
    final = invoices(db)
    assert len(final) == BILLED and {inv.status for inv in final} == {"finalized"}
    assert_gapless(db)
    # the drafts the interrupted run wrote are the ones that were finalized, numbers kept
    assert {inv.number: inv.customer for inv in written} == {
        inv.number: inv.customer for inv in final if inv.number in {w.number for w in written}
    }
    check_passes(outage.url)
