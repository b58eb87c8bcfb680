"""Crash safety of `neruba ingest` on every dialect: SIGKILL at random moments, then rerun.

A ~60,000-line JSONL file (12 batches, about a tenth of its lines repeating an earlier key
with the same payload) is imported by the real CLI in a subprocess, which is killed three
times in a row at a seeded random moment, each run starting over on whatever the previous
ones left; a fourth run goes to completion and a fifth replays the whole file. The stored
events must then be exactly the file's distinct keys, each as its first occurrence wrote it,
and the receipts of killed runs must never claim more than what their committed batches
stored.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, func, select

from neruba_cli.db.schema import Customer, Event, ImportBatch
from neruba_cli.db.tables import import_batches_t
from neruba_cli.services.ingest.pipeline import BATCH
from tests.support.catalogs import EXAMPLE
from tests.support.cli import Cli

pytestmark = pytest.mark.slow

SEED = 20261124
LINES = 60_000
REPEAT_SHARE = 0.1  # lines that repeat an earlier key, with its exact payload
CUSTOMERS = ("c1", "c2", "c3")
KILLS = 3
KILL_DELAY = (0.0, 1.5)  # seconds after the run has opened its receipt
T0 = datetime(2025, 5, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Expected:
    """What the first occurrence of a key says, and on which line of the file it is."""

    line: int
    customer: str
    meter: str
    quantity: Decimal
    ts: datetime
    properties: dict[str, Any]


@pytest.fixture
def shop(cli: Cli) -> Cli:
    assert cli("project", "create", "acme").exit_code == 0
    for external in CUSTOMERS:
        assert cli("customer", "create", external, "--project", "acme").exit_code == 0
    assert cli("catalog", "apply", str(EXAMPLE), "--project", "acme").exit_code == 0
    return cli


def write_events(path: Path, rng: random.Random) -> tuple[list[str], dict[str, Expected]]:
    """The file's key per line, and the first occurrence of every key."""
    raws: list[bytes] = []
    keys: list[str] = []
    first: dict[str, Expected] = {}
    for number in range(1, LINES + 1):
        if raws and rng.random() < REPEAT_SHARE:
            # An earlier line again, byte for byte: often in the same batch, often in another.
            back = rng.randrange(max(0, len(raws) - 2 * BATCH), len(raws))
            raws.append(raws[back])
            keys.append(keys[back])
            continue
        key = f"evt-{number:06d}-{rng.getrandbits(32):08x}"
        moment = T0 + timedelta(seconds=rng.randrange(150 * 86400), microseconds=number)
        quantity = Decimal(rng.randrange(1, 10**6)).scaleb(-rng.randrange(0, 7))
        item = {
            "idempotency_key": key,
            "customer": rng.choice(CUSTOMERS),
            "meter": "api_calls",
            "timestamp": moment.isoformat().replace("+00:00", "Z"),
            "quantity": str(quantity),
            "properties": {"region": rng.choice(("eu", "us")), "n": number},
        }
        raws.append(orjson.dumps(item))
        keys.append(key)
        first[key] = Expected(
            number, item["customer"], "api_calls", quantity, moment, item["properties"]
        )
    path.write_bytes(b"".join(raw + b"\n" for raw in raws))
    return keys, first


def neruba(source: Path, db_url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "neruba_cli",
        "ingest",
        str(source),
        "--project",
        "acme",
        "--db",
        db_url,
        *extra,
    ]


def receipt_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(select(ImportBatch.id)))


def stored_keys(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(select(Event.idempotency_key)))


def run_and_kill(
    source: Path, db_url: str, engine: Engine, delay: float, log: Path
) -> tuple[int, str | None]:
    """Start an import, SIGKILL it `delay` seconds after it opened its receipt (or at once if
    it never does); its exit status and the receipt it opened, if any."""
    before = receipt_ids(engine)
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            neruba(source, db_url, "--quiet"),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=source.parent,
        )
    try:
        deadline = time.monotonic() + 60
        opened: set[str] = set()
        while not opened and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            opened = receipt_ids(engine) - before
        time.sleep(delay)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    opened = receipt_ids(engine) - before
    assert len(opened) <= 1, opened
    return code, next(iter(opened), None)


def run_to_completion(source: Path, db_url: str) -> dict[str, Any]:
    result = subprocess.run(
        neruba(source, db_url, "--json"),
        capture_output=True,
        cwd=source.parent,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return dict(orjson.loads(result.stdout))


def assert_prefix_stored(engine: Engine, keys: list[str], context: str) -> None:
    """Committed batches are whole and in file order: what is stored is exactly the distinct
    keys of the longest prefix any receipt has counted."""
    with engine.connect() as conn:
        counted = conn.scalar(select(func.coalesce(func.max(ImportBatch.lines), 0)))
    stored = stored_keys(engine)
    assert len(stored) == len(set(stored)), context
    assert set(stored) == set(keys[:counted]), f"{context}: receipts counted {counted} lines"


def assert_receipt_of_killed_run(engine: Engine, batch: str, context: str) -> None:
    with engine.connect() as conn:
        receipt = conn.execute(select(import_batches_t).where(ImportBatch.id == batch)).one()
        written = conn.execute(
            select(func.count(), func.max(Event.line)).where(Event.batch_id == batch)
        ).one()
    counts = (receipt.accepted, receipt.duplicates, receipt.conflicts, receipt.rejected)
    context = f"{context}: receipt {batch} {receipt.status} lines={receipt.lines} {counts}"
    assert receipt.status in ("running", "completed"), context
    assert receipt.conflicts == receipt.rejected == 0, context
    assert receipt.lines == receipt.accepted + receipt.duplicates, context
    assert receipt.accepted == written[0], f"{context}: {written[0]} events stored by it"
    assert written[1] is None or written[1] <= receipt.lines, context
    if receipt.status == "running":
        assert receipt.lines % BATCH == 0, context  # only whole committed batches are counted
        assert receipt.sha256 is None and receipt.finished_at is None, context
    else:
        assert receipt.lines == LINES and receipt.sha256 is not None, context


def assert_events_match_file(engine: Engine, first: dict[str, Expected]) -> None:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Event.idempotency_key,
                Event.line,
                Customer.external_id,
                Event.meter,
                Event.quantity,
                Event.ts,
                Event.properties,
            ).join(Customer, Customer.id == Event.customer_id)
        ).all()
    assert len(rows) == len(first)
    stored = {row.idempotency_key: row for row in rows}
    assert len(stored) == len(rows), "an idempotency key is stored twice"
    assert set(stored) == set(first)
    wrong = [
        (key, row)
        for key, row in stored.items()
        if (
            row.line,
            row.external_id,
            row.meter,
            row.quantity,
            row.ts,
            orjson.loads(row.properties),
        )
        != (
            first[key].line,
            first[key].customer,
            first[key].meter,
            first[key].quantity,
            first[key].ts,
            first[key].properties,
        )
    ]
    assert wrong == [], wrong[:5]


def test_sigkilled_imports_then_a_rerun_store_exactly_the_distinct_events(
    shop: Cli, db_url: str, engine: Engine, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    source = tmp_path / "usage.jsonl"
    keys, first = write_events(source, rng)
    assert len(first) < LINES  # the file does repeat keys
    assert BATCH * 10 < LINES  # and spans many batches

    outcomes: list[tuple[int, str | None, int]] = []
    for attempt in range(1, KILLS + 1):
        delay = rng.uniform(*KILL_DELAY)
        log = tmp_path / f"killed-{attempt}.stderr"
        code, batch = run_and_kill(source, db_url, engine, delay, log)
        outcomes.append((code, batch, len(stored_keys(engine))))
        context = f"run {attempt} (killed {delay:.2f}s in, exit {code}) {outcomes}"
        assert code in (0, -signal.SIGKILL), f"{context}: {log.read_text()}"
        assert_prefix_stored(engine, keys, context)
        if batch is not None:
            assert_receipt_of_killed_run(engine, batch, context)
    assert any(code == -signal.SIGKILL for code, _, _ in outcomes), outcomes

    stored_before = len(stored_keys(engine))
    final = run_to_completion(source, db_url)
    assert (final["lines"], final["conflicts"], final["rejected"]) == (LINES, 0, 0), final
    assert final["accepted"] + final["duplicates"] == LINES, final
    assert final["accepted"] == len(first) - stored_before, (final, outcomes)
    # A kill can land after an import finished its receipt and before the process exited:
    # that import completed, whatever its exit status says.
    with engine.connect() as conn:
        statuses = dict(conn.execute(select(ImportBatch.id, ImportBatch.status)).all())
    completed_before = [
        batch for _, batch, _ in outcomes if batch and statuses.get(batch) == "completed"
    ]
    assert final["already_imported"] == completed_before, final
    assert_events_match_file(engine, first)

    again = run_to_completion(source, db_url)
    assert (again["lines"], again["accepted"], again["duplicates"]) == (LINES, 0, LINES), again
    assert again["already_imported"] == [*completed_before, final["batch"]], again
    assert_events_match_file(engine, first)

    with engine.connect() as conn:
        receipts = {row.id: row for row in conn.execute(select(import_batches_t))}
    killed = {batch for _, batch, _ in outcomes if batch is not None}
    assert set(receipts) == killed | {final["batch"], again["batch"]}
    for batch in (final["batch"], again["batch"]):
        assert receipts[batch].status == "completed"
    for batch in killed:
        assert_receipt_of_killed_run(engine, batch, f"after the reruns {outcomes}")
