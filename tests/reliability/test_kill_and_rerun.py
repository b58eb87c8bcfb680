"""Kill a `neruba` process with SIGKILL at a chosen moment in each kind of work, rerun it, and
the work converges and `neruba check` finds nothing wrong.

The kill point: the test polls the database (or the Stripe server) until the process has
committed its first piece of work (a batch of events, a write batch of invoices, a grant, a
Stripe invoice, a payment), then waits a seeded random extra delay and sends SIGKILL. Each
assertion message names the seed, the trigger and the delay. The kill can therefore land
anywhere after the first commit: mid-transaction, between transactions, between a Stripe
request and the row that records it.

A killed job leaves its lease lock held (billing runs and Stripe pushes and pulls take one, ten
minutes by default). README "Locks" documents what happens next on the same host: the rerun
takes over a lease whose holder is a process that no longer exists, at once, advancing the
fencing token. The tests assert exactly that: the lock is still listed as held by the killed
process, the rerun succeeds without waiting or `locks release`, and the token moved on.

These scenarios prove the cross-cutting promise; the finer-grained crash tests stay where they
are (tests/reliability/test_ingest_crash.py: receipts of killed imports;
tests/integration/test_billing.py: a killed run equals a clean one; tests/cli/test_cli_stripe.py:
a push killed between two Stripe requests).
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, func, select

from neruba_cli.db.schema import BillingRun, CreditGrant, Event, ImportBatch, Invoice, Payment
from neruba_cli.services.ingest.pipeline import BATCH
from neruba_cli.services.stripe import payments as stripe_payments
from tests.fakes.stripe import FakeStripe
from tests.support.catalogs import EXAMPLE
from tests.support.cli import Cli, ok
from tests.support.events import ingest, write_jsonl
from tests.support.processes import (
    assert_check_ok,
    assert_taken_over,
    kill_after,
    left_by,
    logs,
    spawn,
)
from tests.support.shops import pro_and_gulf, subscribed_shop
from tests.support.values import minor
from tests.support.workers import Worker
from tests.support.workload import AFTER_OCTOBER, assert_gapless, generate, population, shop_for

pytestmark = pytest.mark.slow

SEED = 20261205
PERIOD = "2026-10"
AS_OF = AFTER_OCTOBER.isoformat().replace("+00:00", "Z")


def count(engine: Engine, *where: Any, table: Any = Invoice) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


# --------------------------------------------------------------------------- (a) ingest

INGEST_LINES = 30_000  # 6 batches of BATCH lines: about a second on SQLite, more on servers
REPEAT_SHARE = 0.1


def write_events(path: Path, rng: random.Random) -> list[str]:
    """A JSONL file; about a tenth of its lines repeat an earlier line byte for byte. Its key
    per line."""
    raws: list[bytes] = []
    keys: list[str] = []
    t0 = datetime(2025, 5, 1, tzinfo=UTC)
    for number in range(INGEST_LINES):
        if raws and rng.random() < REPEAT_SHARE:
            back = rng.randrange(max(0, len(raws) - 2 * BATCH), len(raws))
            raws.append(raws[back])
            keys.append(keys[back])
            continue
        key = f"evt-{number:06d}"
        moment = t0 + timedelta(seconds=rng.randrange(120 * 86400))
        item = {
            "idempotency_key": key,
            "customer": rng.choice(("c1", "c2", "c3")),
            "meter": "api_calls",
            "timestamp": moment.isoformat().replace("+00:00", "Z"),
            "quantity": str(rng.randrange(1, 1000)),
        }
        raws.append(orjson.dumps(item))
        keys.append(key)
    path.write_bytes(b"".join(raw + b"\n" for raw in raws))
    return keys


def test_ingest_killed_after_its_first_batch_then_rerun_stores_each_event_once(
    cli: Cli, db_url: str, engine: Engine, tmp_path: Path, dialect: str
) -> None:
    assert cli("project", "create", "acme").exit_code == 0
    for external in ("c1", "c2", "c3"):
        ok(cli, "customer", "create", external)
    ok(cli, "catalog", "apply", str(EXAMPLE))
    rng = random.Random(f"{SEED}-ingest-{dialect}")
    source = tmp_path / "usage.jsonl"
    keys = write_events(source, rng)
    distinct = set(keys)
    assert len(distinct) < INGEST_LINES

    process = spawn(db_url, "ingest", str(source), "--quiet", log=tmp_path / "killed")
    kill = kill_after(
        process,
        "the first committed batch",
        lambda: count(engine, table=Event) > 0,
        rng,
        max_delay=0.3,
    )
    context = f"seed {SEED}-ingest-{dialect}, {kill}, {logs(tmp_path / 'killed')}"
    assert kill.killed or kill.code == 0, context
    stored_after_kill = count(engine, table=Event)
    completed_before = count(engine, ImportBatch.status == "completed", table=ImportBatch)
    assert 0 < stored_after_kill <= len(distinct), context
    assert_check_ok(cli, f"after the kill; {context}")

    rerun = cli("ingest", str(source), "--project", "acme", "--json")
    assert rerun.exit_code == 0, (context, rerun.stderr)
    summary = rerun.json()
    assert (summary["lines"], summary["conflicts"], summary["rejected"]) == (INGEST_LINES, 0, 0)
    assert summary["accepted"] == len(distinct) - stored_after_kill, (summary, context)

    with engine.connect() as conn:
        stored = list(conn.scalars(select(Event.idempotency_key)))
    assert len(stored) == len(set(stored)) == len(distinct), context  # each exactly once
    assert set(stored) == distinct, context

    again = cli("ingest", str(source), "--project", "acme", "--json").json()
    assert (again["accepted"], again["duplicates"]) == (0, INGEST_LINES), again
    assert count(engine, table=Event) == len(distinct)
    completed = count(engine, ImportBatch.status == "completed", table=ImportBatch)
    assert completed == 2 + completed_before, context  # the killed one stays "running"
    assert completed_before == 0 or stored_after_kill == len(distinct), context
    assert_check_ok(cli, context)


# --------------------------------------------------------------------------- (b) billing run

CUSTOMERS = 200  # two transactions of 100 drafts, then two of 100 finalizations


def test_billing_run_killed_mid_way_then_rerun_finalizes_every_customer_once(
    cli: Cli, db_url: str, engine: Engine, tmp_path: Path, dialect: str
) -> None:
    names, starts = population(CUSTOMERS)
    shop_for(cli, tmp_path, names, starts)
    ingest(cli, write_jsonl(tmp_path / "usage.jsonl", generate(names, seed=12, starts=starts)))
    for name in names[::20]:  # finalization spends these: the ledger is part of the work
        ok(cli, "credits", "grant", name, "3.00")
    rng = random.Random(f"{SEED}-bill-{dialect}")
    bill = ("run", "bill", "--period", PERIOD, "--as-of", AS_OF, "--finalize")

    # Two phases, each a transaction per 100 invoices: writing the drafts, finalizing them.
    phase = rng.choice(("write", "finalize"))
    started = Invoice.status != "draft" if phase == "finalize" else Invoice.id.is_not(None)
    process = spawn(db_url, *bill, "--quiet", log=tmp_path / "killed")
    kill = kill_after(
        process,
        f"the first committed {phase} transaction",
        lambda: count(engine, started) > 0,
        rng,
        max_delay=0.25,
    )
    context = f"seed {SEED}-bill-{dialect}, {kill}, {logs(tmp_path / 'killed')}"
    assert kill.killed or kill.code == 0, context
    written = count(engine)
    finalized = count(engine, Invoice.status != "draft")
    assert_gapless(engine)
    assert_check_ok(cli, f"after the kill: {written} invoices, {finalized} finalized; {context}")

    left = left_by(cli, f"acme:bill:{PERIOD}", process.pid)
    if left is None:  # killed after its work, when it had let go of the lock
        assert (written, finalized) == (CUSTOMERS, CUSTOMERS), context

    report = ok(cli, *bill)
    if left is not None:
        assert_taken_over(engine, cli, left)
        with engine.connect() as conn:
            runs = conn.execute(select(BillingRun.status, BillingRun.message)).all()
        # the rerun marks the killed run's record: README "doctor", stuck runs
        assert "running" not in {run.status for run in runs}, (runs, context)
        assert all("abandoned" in run.message for run in runs if run.status == "failed"), runs
    context += f"; killed run left {written} invoices, {finalized} finalized"
    assert report["created"] == CUSTOMERS - written, (report["created"], context)
    assert len(report["finalized"]) == CUSTOMERS - finalized, (report["finalized"], context)
    rows = ok(cli, "invoice", "list", "--period", PERIOD)
    per_customer = Counter(row["customer"] for row in rows)
    assert per_customer == dict.fromkeys(names, 1), context  # invoice count = customers
    assert {row["status"] for row in rows} == {"finalized"}, context
    assert_gapless(engine)
    assert_check_ok(cli, context)

    again = ok(cli, *bill)
    assert again["status"] == "unchanged", again
    assert (again["invoices"], again["finalized"]) == (0, []), again
    assert again["unchanged"] == CUSTOMERS, again
    assert count(engine) == CUSTOMERS


# --------------------------------------------------------------------------- (c) credit grants

GRANT_KEYS = 30


def grant_command(i: int) -> list[str]:
    return ["credits", "grant", "c1", grant_amount(i), "--idempotency-key", f"topup-{i:03d}"]


def grant_amount(i: int) -> str:
    return f"{1 + i % 7}.{(13 * i) % 100:02d}"


def test_a_loop_of_grants_killed_mid_way_then_rerun_grants_each_key_once(
    cli: Cli, db_url: str, engine: Engine, tmp_path: Path, dialect: str
) -> None:
    """The loop is one process running `neruba credits grant ...` commands one after another
    through the CLI's entry point (a Worker of tests/support/workers.py): thirty `neruba`
    start-ups would cost thirty seconds, and a kill then mostly lands in Python's start-up."""
    assert cli("project", "create", "acme", "--timezone", "UTC").exit_code == 0
    ok(cli, "customer", "create", "c1", "--currency", "USD")
    rng = random.Random(f"{SEED}-grants-{dialect}")
    commands = [grant_command(i) for i in range(GRANT_KEYS)]
    loop = Worker("grant-loop", tmp_path, {"mode": "commands", "db": db_url, "commands": commands})
    loop.wait_ready()
    loop.go()
    at_least = rng.randint(1, GRANT_KEYS // 4)
    kill = kill_after(
        loop.process,
        f"{at_least} committed grants",
        lambda: count(engine, table=CreditGrant) >= at_least,
        rng,
        max_delay=0.1,
    )
    loop.process.communicate(timeout=30)  # close its pipes
    context = f"seed {SEED}-grants-{dialect}, {kill}"
    assert kill.killed or kill.code == 0, context
    before = {grant["idempotency_key"]: grant["id"] for grant in ok(cli, "credits", "list", "c1")}
    assert at_least <= len(before) <= GRANT_KEYS, context
    assert_check_ok(cli, f"after the kill; {context}")

    for i, command in enumerate(commands):  # the loop again, every key
        data = ok(cli, *command)
        key = f"topup-{i:03d}"
        assert data["created"] == (key not in before), (key, data, context)
        assert data["id"] == before.get(key, data["id"]), (key, data, context)
        assert data["amount"] == grant_amount(i), data

    grants = ok(cli, "credits", "list", "c1")
    by_key = Counter(grant["idempotency_key"] for grant in grants)
    assert by_key == {f"topup-{i:03d}": 1 for i in range(GRANT_KEYS)}, context
    assert all(grant["remaining"] == grant["amount"] for grant in grants), context
    total = sum(Decimal(grant_amount(i)) for i in range(GRANT_KEYS))
    assert Decimal(ok(cli, "wallet", "show", "c1")["balance"]) == total, context
    assert_check_ok(cli, context)


# --------------------------------------------------------------------------- (d) stripe push

STRIPE_CUSTOMERS = 30


def test_stripe_push_killed_mid_way_then_rerun_makes_one_stripe_invoice_each(
    cli: Cli,
    db_url: str,
    engine: Engine,
    tmp_path: Path,
    stripe: FakeStripe,
    dialect: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing here hangs on purpose: the fake's quick 1 s timeout (for tests that do) would
    # only turn a slow answer on a loaded machine into a failed item.
    monkeypatch.setenv("NERUBA_STRIPE_TIMEOUT", "30")
    names = subscribed_shop(cli, tmp_path, STRIPE_CUSTOMERS, pro_and_gulf())
    for name in names[::6]:  # some invoices carry a credits line
        ok(cli, "credits", "grant", name, "5.00")
    ok(cli, "run", "bill", "--period", PERIOD, "--as-of", AS_OF, "--finalize")
    rows = ok(cli, "invoice", "list", "--period", PERIOD)
    totals = {row["number"]: row["total"] for row in rows}
    assert len(totals) == STRIPE_CUSTOMERS
    rng = random.Random(f"{SEED}-push-{dialect}")
    at_least = rng.randint(1, STRIPE_CUSTOMERS // 3)

    push = ("stripe", "push", "--period", PERIOD)
    process = spawn(db_url, *push, "--quiet", log=tmp_path / "killed")
    kill = kill_after(
        process,
        f"{at_least} Stripe invoices",
        lambda: len(stripe.objects("invoice")) >= at_least,
        rng,
        max_delay=0.15,
    )
    context = f"seed {SEED}-push-{dialect}, {kill}, {logs(tmp_path / 'killed')}"
    assert kill.killed or kill.code == 0, context
    made = len(stripe.objects("invoice"))
    assert at_least <= made <= STRIPE_CUSTOMERS, context
    left = left_by(cli, "acme:stripe:push", process.pid)
    if left is None:  # killed after its work, when it had let go of the lock
        assert made == STRIPE_CUSTOMERS, context

    rerun = cli(*push, "--project", "acme", "--json")
    failed = [item for item in rerun.json()["outcomes"] if item["error"]]
    assert rerun.exit_code == 0, (failed, rerun.stderr[-3000:], context)
    pushed = rerun.json()
    if left is not None:
        assert_taken_over(engine, cli, left)
    assert pushed["failed"] == 0 and pushed["invoices"] == STRIPE_CUSTOMERS, (pushed, context)
    invoices = stripe.objects("invoice")
    numbers = Counter(invoice["metadata"]["neruba_invoice"] for invoice in invoices)
    assert numbers == dict.fromkeys(totals, 1), f"one Stripe invoice per invoice; {context}"
    for invoice in invoices:
        number = invoice["metadata"]["neruba_invoice"]
        assert invoice["status"] == "open", (invoice["id"], context)
        assert invoice["total"] == minor(totals[number]), (number, context)
    assert len(stripe.objects("customer")) == STRIPE_CUSTOMERS, context
    assert ok(cli, *push)["counts"] == {"up_to_date": STRIPE_CUSTOMERS}
    assert len(stripe.objects("invoice")) == STRIPE_CUSTOMERS

    reconciled = cli(
        "reconcile", "stripe", "--period", PERIOD, "--pull", "--project", "acme", "--json"
    )
    assert reconciled.exit_code == 0, (reconciled.stdout[-3000:], reconciled.stderr, context)
    assert reconciled.json()["matched"] == STRIPE_CUSTOMERS
    assert_check_ok(cli, context)


# --------------------------------------------------------------------------- (e) stripe pull


def test_stripe_pull_killed_while_applying_payments_then_rerun_applies_each_once(
    cli: Cli, db_url: str, engine: Engine, tmp_path: Path, stripe: FakeStripe, dialect: str
) -> None:
    subscribed_shop(cli, tmp_path, STRIPE_CUSTOMERS, pro_and_gulf())
    ok(cli, "run", "bill", "--period", PERIOD, "--as-of", AS_OF, "--finalize")
    ok(cli, "stripe", "push", "--period", PERIOD)
    rng = random.Random(f"{SEED}-pull-{dialect}")
    invoices = sorted(stripe.objects("invoice"), key=lambda i: i["metadata"]["neruba_invoice"])
    paid = [stripe.pay_invoice(i["id"]) for i in rng.sample(invoices, 2 * STRIPE_CUSTOMERS // 3)]
    paid_numbers = {invoice["metadata"]["neruba_invoice"]: invoice for invoice in paid}

    pull = ("stripe", "pull")
    process = spawn(db_url, *pull, "--quiet", log=tmp_path / "killed")
    kill = kill_after(
        process,
        "the first applied payment",
        lambda: count(engine, table=Payment) > 0,
        rng,
        max_delay=0.3,
    )
    context = f"seed {SEED}-pull-{dialect}, {kill}, {logs(tmp_path / 'killed')}"
    assert kill.killed or kill.code == 0, context
    applied_before = count(engine, table=Payment)
    assert_check_ok(cli, f"after the kill: {applied_before} payments; {context}")
    left = left_by(cli, "acme:stripe:pull", process.pid)
    if left is None:  # killed after its work, when it had let go of the lock
        assert applied_before == len(paid), context
    # Killed inside one invoice's read-then-record step, it also left the apply lock. Here the
    # rerun takes it over; a pull on another host cannot tell the holder is dead, so the lease
    # is short: it expires before the next applier stops waiting for it.
    apply_lock = left_by(cli, "acme:stripe:apply", process.pid)
    if apply_lock is not None:
        lifetime = datetime.fromisoformat(apply_lock["expires_at"]) - datetime.fromisoformat(
            apply_lock["acquired_at"]
        )
        assert lifetime < timedelta(seconds=stripe_payments.APPLY_WAIT), (apply_lock, context)

    report = ok(cli, *pull)
    for lock in (left, apply_lock):
        if lock is not None:
            assert_taken_over(engine, cli, lock)
    assert report["errors"] == [], (report["errors"], context)
    assert len(report["applied"]) == len(paid) - applied_before, (report["applied"], context)
    assert ok(cli, *pull)["applied"] == []  # nothing new: each payment applied once

    payments = ok(cli, "payment", "list")
    references = Counter(payment["reference"] for payment in payments)
    assert references == {invoice["id"]: 1 for invoice in paid}, context
    for payment in payments:
        amount_paid = paid_numbers[payment["invoice"]]["amount_paid"]
        assert minor(payment["amount"]) == amount_paid > 0, (payment, context)
    statuses = {row["number"]: row["status"] for row in ok(cli, "invoice", "list")}
    expected = {n: "paid" if n in paid_numbers else "finalized" for n in statuses}
    assert statuses == expected, context
    reconciled = cli(
        "reconcile", "stripe", "--period", PERIOD, "--pull", "--project", "acme", "--json"
    )
    assert reconciled.exit_code == 0, (reconciled.stdout[-3000:], reconciled.stderr, context)
    assert_check_ok(cli, context)
