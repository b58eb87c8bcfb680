"""Contention, then the consistency sweep: competing `neruba` processes on one database, and
afterwards `neruba check` finds nothing wrong.

- Four `neruba run bill --period P --finalize` processes loaded and started at the same instant
  (the GATE of tests/support/processes.py), two of them with `--wait`: one does the work;
  the others without `--wait` exit 5 naming the holder, those with it find nothing to do.
  Numbers stay gapless, each customer has one finalized invoice.
  (tests/reliability/test_billing_concurrency.py proves the lease on two service-level runs;
  this adds the CLI, four contenders, finalization and the sweep.)
- One wallet under several granting processes, a finalizer spending it and a revoker
  (the workers of tests/support/workers.py, in a shorter scenario than its full proof, with
  two granters instead of one): no grant lost, none overdrawn, and the sweep agrees.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine

from tests.support.cli import Cli, ok
from tests.support.events import ingest, write_jsonl
from tests.support.processes import Gated, assert_check_ok
from tests.support.shops import BASIC_CATALOG
from tests.support.values import after, cents
from tests.support.workers import Worker, failures, run_together
from tests.support.workload import (
    AFTER_OCTOBER,
    assert_gapless,
    generate,
    invoices,
    population,
    shop_for,
)

pytestmark = pytest.mark.slow

PERIOD = "2026-10"
AS_OF = AFTER_OCTOBER.isoformat().replace("+00:00", "Z")
CUSTOMERS = 120
CONTENDERS = 4


@pytest.fixture
def busy(cli: Cli, tmp_path: Path) -> Cli:
    names, starts = population(CUSTOMERS)
    shop_for(cli, tmp_path, names, starts)
    ingest(cli, write_jsonl(tmp_path / "usage.jsonl", generate(names, seed=21, starts=starts)))
    for name in names[::25]:
        ok(cli, "credits", "grant", name, "4.00")
    return cli


def test_four_billing_runs_at_once_one_works_and_the_sweep_agrees(
    busy: Cli, db_url: str, engine: Engine
) -> None:
    """Two contenders without `--wait`, two with: whichever wins, the others without it are
    refused at once (or, started late by a busy machine, find nothing left to do) and those
    with it wait, then find nothing left to do."""
    argv = ["run", "bill", "--period", PERIOD, "--as-of", AS_OF, "--finalize", "--json"]
    waits = [False, True] * (CONTENDERS // 2)
    results = Gated(db_url, [[*argv, "--wait", "120"] if w else argv for w in waits]).go()
    summary = [
        (w, code, out[-300:], err[-600:])
        for w, (code, out, err) in zip(waits, results, strict=True)
    ]

    reports = [orjson.loads(out) if code == 0 else None for code, out, _ in results]
    worked = [i for i, report in enumerate(reports) if report and report["created"] > 0]
    assert len(worked) == 1, summary
    report = reports[worked[0]]
    assert report is not None and report["status"] == "completed", summary
    assert report["created"] == CUSTOMERS and len(report["finalized"]) == CUSTOMERS, summary
    for i, (code, _out, err) in enumerate(results):
        if i == worked[0]:
            continue
        # a contender the machine started late (after the winner released the month) finds
        # nothing to do, like one that waited; one that came while the month was held...
        if waits[i] or code == 0:  # waited for the lock, then found every invoice written
            other = reports[i]
            assert code == 0 and other is not None, summary
            assert other["status"] == "unchanged", other
            assert (other["invoices"], other["finalized"]) == (0, []), other
            assert other["unchanged"] == CUSTOMERS, other
        else:  # ...is refused at once, naming who holds the month
            assert code == 5, summary
            error = orjson.loads(err.strip().splitlines()[-1])["error"]
            assert error["type"] == "lock_held", error
            assert f"acme:bill:{PERIOD}" in error["message"] and "held by" in error["message"]

    stored = invoices(engine)
    names = population(CUSTOMERS)[0]
    assert Counter(inv.customer for inv in stored) == dict.fromkeys(names, 1)
    assert {inv.status for inv in stored} == {"finalized"}
    assert_gapless(engine)
    assert_check_ok(busy, f"after {CONTENDERS} runs at once: {summary}")


# --------------------------------------------------------------------------- one wallet

MONTHS = ["2026-07", "2026-08", "2026-09", "2026-10"]
GRANTERS = 2
GRANTS_EACH = 8


def test_several_granters_a_finalizer_and_a_revoker_on_one_wallet(
    cli: Cli, db_url: str, tmp_path: Path
) -> None:
    assert cli("project", "create", "acme", "--timezone", "UTC").exit_code == 0
    ok(cli, "customer", "create", "c1", "--currency", "USD")
    (tmp_path / "catalog.toml").write_text(BASIC_CATALOG)
    ok(cli, "catalog", "apply", str(tmp_path / "catalog.toml"))
    ok(cli, "subscription", "create", "c1", "basic", "--start", f"{MONTHS[0]}-01T00:00:00Z")
    for month in MONTHS:  # a 10.00 draft each month: 40.00 owed
        assert ok(cli, "run", "bill", "--period", month, "--as-of", after(month))["invoices"] == 1
    ok(cli, "credits", "grant", "c1", "3.00", "--reason", "revocable-pre")

    # about 22.00 of credit granted while 40.00 is spent: every finalization competes for it
    granters = []
    for g in range(GRANTERS):
        commands = []
        for i in range(GRANTS_EACH):
            reason = f"revocable-{g}-{i}" if i % 4 == 0 else f"grant-{g}-{i}"
            commands.append(
                [
                    *("credits", "grant", "c1", f"{1 + (i % 3) / 2:.2f}", "--reason", reason),
                    *("--priority", str(1 + (g + i) % 3)),
                ]
            )
        spec = {"mode": "commands", "db": db_url, "commands": commands}
        granters.append(Worker(f"granter-{g}", tmp_path, spec))
    finalize = [
        ["run", "bill", "--period", month, "--as-of", after(month), "--finalize"]
        for month in MONTHS
    ]
    spec = {"mode": "commands", "db": db_url, "commands": finalize, "pause": 0.1}
    finalizer = Worker("finalizer", tmp_path, spec)
    revocable = 1 + GRANTERS * len(range(0, GRANTS_EACH, 4))
    revoker = Worker(
        "revoker",
        tmp_path,
        {"mode": "revoker", "db": db_url, "customer": "c1", "expected": revocable, "deadline": 60},
    )
    workers = [*granters, finalizer, revoker]
    run_together(workers)
    assert not failures(workers), failures(workers)
    assert revoker.summary["revoked"] == revocable, revoker.summary

    assert_check_ok(cli, "after granting, spending and revoking at once")

    # No lost update: every grant each granter was told about is there, once.
    told = [item["data"]["id"] for worker in granters for item in worker.results]
    grants = ok(cli, "credits", "list", "c1")
    assert len(told) == len(set(told)) == GRANTERS * GRANTS_EACH
    assert set(told) <= {grant["id"] for grant in grants}
    assert len(grants) == GRANTERS * GRANTS_EACH + 1

    # No overdraft: no grant below zero or above its amount, what it lost is what invoices
    # took from it plus what was revoked; the wallet is the sum of what remains.
    spent: dict[str, int] = defaultdict(int)
    revoked: dict[str, int] = defaultdict(int)
    for txn in ok(cli, "ledger", "show"):
        assert sum(entry["amount_minor"] for entry in txn["entries"]) == 0, txn
        for entry in txn["entries"]:
            if entry["account"] == "wallet:c1" and txn["kind"] == "credits_applied":
                spent[entry["grant"]] += entry["amount_minor"]
            elif entry["account"] == "wallet:c1" and txn["kind"] == "credit_revoked":
                revoked[entry["grant"]] += entry["amount_minor"]
    for grant in grants:
        amount, remaining = cents(grant["amount"]), cents(grant["remaining"])
        assert 0 <= remaining <= amount, grant
        assert amount - remaining == spent[grant["id"]] + revoked[grant["id"]], grant
        if grant["revoked_at"]:  # a revocation takes what remains
            assert remaining == 0 and grant["reason"].startswith("revocable"), grant
        else:
            assert revoked[grant["id"]] == 0, grant
    wallet = ok(cli, "wallet", "show", "c1")
    assert cents(wallet["balance"]) == sum(cents(g["remaining"]) for g in grants) >= 0

    # Every month finalized once, its credits exactly what the ledger took from the wallet.
    rows = ok(cli, "invoice", "list")
    assert sorted(row["label"] for row in rows) == MONTHS
    finalized = [n for item in finalizer.results for n in item["data"]["finalized"]]
    assert sorted(finalized) == sorted(row["number"] for row in rows)
    taken = sum(spent.values())
    assert sum(cents(row["credits_applied"]) for row in rows) == taken > 0
    for row in rows:
        assert row["status"] in ("finalized", "paid"), row
        assert Decimal(row["total"]) == Decimal(row["subtotal"]) - Decimal(row["credits_applied"])
