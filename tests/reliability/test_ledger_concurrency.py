"""Credit granted, spent and revoked at once on ONE wallet, by competing OS processes.

Customer c1 has one draft invoice of 10.00 for each of twelve months (a base fee in arrears,
2025-11 to 2026-10), 120.00 in all, and 15.00 of credit to start with. Then, started together
through a gate:

- two finalizers, each finalizing six of the months (`invoice finalize NUMBER`, alternating
  with `run bill --period P --finalize`): every finalization spends c1's wallet, so both spend
  the same grants at the same moment (each month has its own run lock: they never wait for
  each other on it);
- a granter, giving c1 thirty small grants (mixed priorities, expiries and categories);
- a revoker, revoking each grant marked "revocable" as soon as it sees it.

Credit (about 56.00) is scarcer than what is owed (120.00), so every finalization competes for
it. Afterwards the ledger must show that no update was lost and nothing was overdrawn. A second
test has two processes granting under the same fifteen idempotency keys at once: one grant per
key, and both processes answered with it (the loser of the race to the unique key included).

Each process (a worker of tests/support/workers.py) is a real Python process with its own
database connections that runs its commands one after another through the CLI (argument
parsing, the runtime, error mapping, the audit record), in-process: starting `neruba` afresh
for each of ~60 commands would take far longer than the races themselves.

Every command must succeed: the services keep one lock order (invoice, wallet, accounts) and
rerun a transaction the database picked as a deadlock victim (db/retry.py). RETRIES lets a
worker retry a command that still failed with a deadlock; it is 0, so one fails the test.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Cli, ok
from tests.support.shops import BASIC_CATALOG
from tests.support.values import after, cents
from tests.support.workers import Worker, failures, run_together

pytestmark = pytest.mark.slow

MONTHS = ["2025-11", "2025-12"] + [f"2026-{m:02d}" for m in range(1, 11)]
FINALIZERS = 2
GRANTS = 30
REVOCABLE_EVERY = 3  # every third grant of the granter is marked for the revoker
PRE_GRANTS = [("5.00", "1", "pre-0"), ("5.00", "2", "pre-1"), ("5.00", "3", "revocable-pre")]
IDEMPOTENT_GRANTS = 15


@pytest.fixture
def customer(cli: Cli) -> Cli:
    assert cli("project", "create", "acme", "--timezone", "UTC").exit_code == 0
    ok(cli, "customer", "create", "c1", "--currency", "USD")
    return cli


@pytest.fixture
def shop(customer: Cli, tmp_path: Path) -> Cli:
    """c1 with one 10.00 draft per month in MONTHS and 15.00 of credit to start with."""
    (tmp_path / "catalog.toml").write_text(BASIC_CATALOG)
    ok(customer, "catalog", "apply", str(tmp_path / "catalog.toml"))
    ok(customer, "subscription", "create", "c1", "basic", "--start", f"{MONTHS[0]}-01T00:00:00Z")
    for month in MONTHS:
        report = ok(customer, "run", "bill", "--period", month, "--as-of", after(month))
        assert (report["status"], report["invoices"]) == ("completed", 1), report
    for amount, priority, reason in PRE_GRANTS:
        ok(customer, "credits", "grant", "c1", amount, "--priority", priority, "--reason", reason)
    return customer


def report_deadlocks(test: str, workers: list[Worker]) -> None:
    """Deadlocks the workers retried are not failures (nothing was written), but they are
    visible in the warnings summary."""
    retried = Counter(
        " ".join(item["argv"][:2]) + ": " + message.split(": ", 1)[-1][:120]
        for worker in workers
        for item in worker.results
        for message in item["retried"]
    )
    if retried:
        total = sum(retried.values())
        warnings.warn(f"{test}: {total} deadlocks retried: {dict(retried)}", stacklevel=2)


def overlapping(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> bool:
    return any(a["start"] < b["end"] and b["start"] < a["end"] for a in first for b in second)


def test_granting_spending_and_revoking_one_wallet_at_once_loses_nothing(
    shop: Cli, db_url: str, tmp_path: Path
) -> None:
    drafts = {item["label"]: item["number"] for item in ok(shop, "invoice", "list")}
    assert sorted(drafts) == MONTHS
    finalizers = []
    for index in range(FINALIZERS):
        commands = [
            # one invoice by number, or the batch path: a run that finalizes its month
            ["invoice", "finalize", drafts[month]]
            if n % 2 == 0
            else ["run", "bill", "--period", month, "--finalize"]
            for n, month in enumerate(MONTHS[index::FINALIZERS])
        ]
        spec = {"mode": "commands", "db": db_url, "commands": commands, "pause": 0.3}
        finalizers.append(Worker(f"finalizer-{index}", tmp_path, spec))
    grants = []
    for i in range(GRANTS):
        reason = f"revocable-{i}" if i % REVOCABLE_EVERY == 0 else f"bulk-{i}"
        grant = ["credits", "grant", "c1", f"{1 + (i % 4) / 4:.2f}", "--reason", reason]
        grant += ["--priority", str(1 + i % 3), "--category", ("paid", "promotional")[i % 2]]
        if i % 5 == 0:
            grant += ["--expires", "2027-06-01T00:00:00Z"]
        grants.append(grant)
    granter = Worker("granter", tmp_path, {"mode": "commands", "db": db_url, "commands": grants})
    revocable = 1 + len(range(0, GRANTS, REVOCABLE_EVERY))
    revoker_spec = {"mode": "revoker", "db": db_url, "customer": "c1", "expected": revocable}
    revoker = Worker("revoker", tmp_path, {**revoker_spec, "deadline": 60})
    workers = [*finalizers, granter, revoker]
    run_together(workers)
    assert not failures(workers), failures(workers)
    report_deadlocks("grant/finalize/revoke", workers)
    assert revoker.summary["revoked"] == revocable, revoker.summary

    # It really was concurrent: both finalizers spent at the same moment, grants and
    # revocations happened while finalizations ran.
    finalized = [item for worker in finalizers for item in worker.results]
    assert overlapping(finalizers[0].results, finalizers[1].results)
    assert overlapping(granter.results, finalized)
    assert overlapping(revoker.results, finalized)

    # Every month was finalized exactly once, by the process it was given to.
    assert sorted(n for item in finalized for n in item["data"]["finalized"]) == sorted(
        drafts.values()
    )

    # The consistency sweep finds nothing.
    check = shop("check", "--project", "acme", "--json")
    assert check.exit_code == 0 and check.json()["ok"] is True, check.stdout

    invoices = ok(shop, "invoice", "list")
    grants_now = ok(shop, "credits", "list", "c1")
    wallet = ok(shop, "wallet", "show", "c1")
    ledger = ok(shop, "ledger", "show")

    # No grant was lost: the starting ones and all the granter's, each once.
    granted_ids = {item["data"]["id"] for item in granter.results}
    assert len(granted_ids) == GRANTS and granted_ids <= {g["id"] for g in grants_now}
    assert len(grants_now) == GRANTS + len(PRE_GRANTS)

    # Each transaction balances. From the ledger: what each grant gave to invoices, what each
    # revocation took, what each invoice received.
    spent: dict[str, int] = defaultdict(int)
    revoked: dict[str, int] = defaultdict(int)
    applied_to: dict[str, int] = defaultdict(int)
    for txn in ledger:
        assert sum(entry["amount_minor"] for entry in txn["entries"]) == 0, txn
        for entry in txn["entries"]:
            if entry["account"] != "wallet:c1":
                continue
            if txn["kind"] == "credits_applied":
                assert entry["amount_minor"] > 0, txn
                spent[entry["grant"]] += entry["amount_minor"]
                applied_to[txn["reference"]] += entry["amount_minor"]
            elif txn["kind"] == "credit_revoked":
                assert entry["amount_minor"] >= 0, txn
                revoked[entry["grant"]] += entry["amount_minor"]
            else:
                assert txn["kind"] == "credit_granted", txn

    # Grants: never below zero nor above what was granted; amount − remaining − revoked is
    # exactly what invoices took from it; a revoked grant holds nothing, no other was revoked.
    total_granted = total_remaining = total_revoked = total_spent = 0
    for grant in grants_now:
        amount, remaining = cents(grant["amount"]), cents(grant["remaining"])
        assert 0 <= remaining <= amount, grant
        assert amount - remaining - revoked[grant["id"]] == spent[grant["id"]], grant
        if grant["reason"].startswith("revocable"):
            assert grant["revoked_at"] is not None and remaining == 0, grant
        else:
            assert grant["revoked_at"] is None and revoked[grant["id"]] == 0, grant
        total_granted += amount
        total_remaining += remaining
        total_revoked += revoked[grant["id"]]
        total_spent += spent[grant["id"]]
    # What the revoker was told it revoked is what the ledger shows.
    assert sum(cents(item["data"]["revoked"]) for item in revoker.results) == total_revoked

    # Invoices: all finalized; credits applied between zero and the subtotal, equal to what
    # the ledger took from the wallet for them; total = subtotal − credits.
    total_applied = 0
    for invoice in invoices:
        assert invoice["status"] in ("finalized", "paid"), invoice
        subtotal, applied = cents(invoice["subtotal"]), cents(invoice["credits_applied"])
        assert 0 <= applied <= subtotal, invoice
        assert cents(invoice["total"]) == subtotal - applied, invoice
        assert applied == applied_to[invoice["number"]], invoice
        assert (invoice["status"] == "paid") == (applied == subtotal), invoice
        total_applied += applied
    assert total_applied == total_spent > 0  # credit really was consumed

    # The wallet holds what the grants still hold; granted = balance + spent + revoked.
    balance = cents(wallet["balance"])
    assert balance == total_remaining == sum(cents(g["remaining"]) for g in wallet["grants"])
    assert total_granted == balance + total_applied + total_revoked


def test_the_same_idempotency_key_from_two_processes_grants_once(
    customer: Cli, db_url: str, tmp_path: Path
) -> None:
    keys = [f"promo-{i}" for i in range(IDEMPOTENT_GRANTS)]
    commands = [["credits", "grant", "c1", "2.00", "--idempotency-key", key] for key in keys]
    spec = {"mode": "commands", "db": db_url, "commands": commands}
    workers = [Worker(f"granter-{n}", tmp_path, spec) for n in range(2)]
    run_together(workers)
    assert not failures(workers), failures(workers)
    report_deadlocks("idempotent grant", workers)

    answers: dict[str, set[str]] = defaultdict(set)
    created: Counter[str] = Counter()
    for worker in workers:
        assert len(worker.results) == len(keys)
        for item in worker.results:
            key = item["argv"][item["argv"].index("--idempotency-key") + 1]
            answers[key].add(item["data"]["id"])
            created[key] += item["data"]["created"]
    # Each key: one process created the grant, the other was answered with that same grant
    # (created false), whether it looked after the winner committed or lost the race to the
    # unique key.
    assert created == dict.fromkeys(keys, 1), created
    assert all(len(ids) == 1 for ids in answers.values()), answers
    stored = ok(customer, "credits", "list", "c1")
    assert sorted(g["idempotency_key"] for g in stored) == sorted(keys)
    assert {g["id"] for g in stored} == set().union(*answers.values())
    assert cents(ok(customer, "wallet", "show", "c1")["balance"]) == 200 * len(keys)
    assert customer("check", "--project", "acme", "--json").exit_code == 0
