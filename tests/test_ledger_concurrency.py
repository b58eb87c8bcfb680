"""Credit granted, spent and revoked at once on ONE wallet, by competing OS processes.

Customer c1 has one draft invoice of 10.00 for each of twelve months (a base fee in arrears,
2025-11 to 2026-10), 120.00 in all, and a little credit to start with. Then, started together
through a gate:

- three finalizers, each finalizing four of the months (`invoice finalize NUMBER`, and for one
  of them `run bill --period P --finalize`): every finalization spends c1's wallet, so several
  processes spend the same grants at the same moment (each month has its own run lock, so
  they do not wait for each other);
- a granter, giving c1 forty small grants (mixed priorities, expiries and categories);
- a revoker, revoking the grants marked "revocable" as soon as it sees them.

Credit (about 70.00) is scarcer than what is owed (120.00), so every finalization competes for
it. Afterwards the ledger must show that no update was lost and nothing was overdrawn. A second
test has processes granting under the same idempotency keys at once: one grant per key.

Each process is a real Python process that runs its commands one after another through the
CLI's own entry point (argument parsing, the runtime, error mapping and audit) in-process, with
its own database connections: starting `neruba` afresh for each of ~60 commands would take
longer than the races themselves. A command that fails with a deadlock or serialization error
(exit 1, database_error) is retried up to RETRIES times and counted; any other failure fails
the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MONTHS = [f"2025-{m:02d}" for m in (11, 12)] + [f"2026-{m:02d}" for m in range(1, 11)]
FINALIZERS = 3
GRANTS = 40
REVOCABLE_EVERY = 4  # every fourth grant of the granter is marked for the revoker
PRE_GRANTS = [("5.00", "1", "pre-0"), ("5.00", "2", "pre-1"), ("5.00", "3", "revocable-pre")]
RETRIES = 5
TIMEOUT = 120

CATALOG = """
[[meters]]
code = "api_calls"
aggregation = "count"

[[plans]]
code = "basic"
name = "Basic"
currency = "USD"
interval = "month"
base_fee = "10.00"
base_fee_timing = "arrears"
proration = "day"

  [[plans.charges]]
  meter = "api_calls"
  model = "per_unit"
  unit_amount = "0.10"
"""

# One process: waits for "go" on stdin, then runs its commands through the CLI in-process and
# prints one JSON line per mutating command (exit code, output, error, retries, start/end).
WORKER = r"""
import json, re, sys, time
from pathlib import Path
from typer.testing import CliRunner
from neruba_cli.cli.app import app

spec = json.loads(Path(sys.argv[1]).read_text())
tail = ["--project", "acme", "--db", spec["db"], "--json"]
runner = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "120", "TERM": "dumb"})
RETRYABLE = re.compile(r"deadlock|could not serialize|serializ", re.I)

def invoke(argv):
    result = runner.invoke(app, [*argv, *tail], catch_exceptions=True)
    error = None
    if result.exit_code != 0:
        lines = (result.stderr or "").strip().splitlines()
        try:
            error = json.loads(lines[-1])["error"]
        except Exception:
            error = {"type": "unparsed", "message": (result.stderr or "")
                     + repr(result.exception), "exit_code": result.exit_code}
    return result.exit_code, result.stdout, error

def run(argv):
    started, retried = time.time(), []
    while True:
        code, out, error = invoke(argv)
        if (code != 0 and error and error.get("type") == "database_error"
                and RETRYABLE.search(error.get("message", "")) and len(retried) < spec["retries"]):
            retried.append(error["message"])
            time.sleep(0.05 * len(retried))
            continue
        break
    data = None
    if code == 0:
        data = json.loads(out)
    print(json.dumps({"argv": argv, "code": code, "data": data, "error": error,
                      "retried": retried, "start": started, "end": time.time()}), flush=True)
    return code, data

print("ready", flush=True)
sys.stdin.readline()
if spec["mode"] == "commands":
    for argv in spec["commands"]:
        run(argv)
        time.sleep(spec.get("pause", 0))
else:  # revoker: revoke each grant whose reason marks it, as soon as it appears
    revoked, deadline, polls = set(), time.time() + spec["deadline"], 0
    while len(revoked) < spec["expected"] and time.time() < deadline:
        polls += 1
        code, out, error = invoke(["credits", "list", spec["customer"]])
        if code != 0:
            print(json.dumps({"argv": ["credits", "list"], "code": code, "error": error,
                              "retried": [], "data": None, "start": 0, "end": 0}), flush=True)
            break
        for grant in json.loads(out):
            if grant["reason"].startswith("revocable") and grant["id"] not in revoked:
                code, _ = run(["credits", "revoke", grant["id"], "--reason", "concurrency"])
                revoked.add(grant["id"])
        time.sleep(0.01)
    print(json.dumps({"polls": polls, "revoked": len(revoked)}), flush=True)
print("done", flush=True)
"""


def ok(cli: Cli, *args: str) -> Any:
    result = cli(*args, "--project", "acme", "--json")
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result.json()


def after(month: str) -> str:
    """The second day of the month after `month`, as an RFC 3339 moment."""
    year, number = int(month[:4]), int(month[5:])
    year, number = (year + 1, 1) if number == 12 else (year, number + 1)
    return f"{year}-{number:02d}-02T00:00:00Z"


def money(text: str) -> Decimal:
    return Decimal(text)


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> Cli:
    """c1 with one 10.00 draft per month in MONTHS and 15.00 of credit to start with."""
    assert cli("project", "create", "acme", "--timezone", "UTC").exit_code == 0
    ok(cli, "customer", "create", "c1", "--currency", "USD")
    (tmp_path / "catalog.toml").write_text(CATALOG)
    ok(cli, "catalog", "apply", str(tmp_path / "catalog.toml"))
    ok(cli, "subscription", "create", "c1", "basic", "--start", f"{MONTHS[0]}-01T00:00:00Z")
    for month in MONTHS:
        report = ok(cli, "run", "bill", "--period", month, "--as-of", after(month))
        assert (report["status"], report["invoices"]) == ("completed", 1), report
    for amount, priority, reason in PRE_GRANTS:
        ok(cli, "credits", "grant", "c1", amount, "--priority", priority, "--reason", reason)
    return cli


class Worker:
    def __init__(self, name: str, tmp_path: Path, spec: dict[str, Any]) -> None:
        self.name = name
        path = tmp_path / f"worker-{name}.json"
        path.write_text(json.dumps({"retries": RETRIES, **spec}))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "TERM": "dumb"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        self.results: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line == "ready", (self.name, line, self.process.stderr and self.process.stderr.read())

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self) -> None:
        out, err = self.process.communicate(timeout=TIMEOUT)
        assert self.process.returncode == 0, (self.name, out[-2000:], err[-4000:])
        lines = out.strip().splitlines()
        assert lines and lines[-1] == "done", (self.name, out[-2000:], err[-4000:])
        for line in lines[:-1]:
            item = json.loads(line)
            if "argv" in item:
                self.results.append(item)
            else:
                self.summary = item


def run_together(workers: list[Worker]) -> float:
    """Start every worker at once (all loaded and connected-ready first); wall time."""
    try:
        for worker in workers:
            worker.wait_ready()
        started = time.monotonic()
        for worker in workers:
            worker.go()
        for worker in workers:
            worker.finish()
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.communicate()
    return time.monotonic() - started


def assert_all_succeeded(workers: list[Worker]) -> int:
    """Every command exited 0 (after at most RETRIES retries of a deadlock); the retries."""
    failures = [
        (worker.name, item["argv"], item["code"], item["error"])
        for worker in workers
        for item in worker.results
        if item["code"] != 0
    ]
    assert not failures, failures
    return sum(len(item["retried"]) for worker in workers for item in worker.results)


def report_retries(test: str, retries: int, workers: list[Worker]) -> None:
    """Deadlocks the worker retried are not failures, but they should be visible."""
    if os.environ.get("LEDGER_CONCURRENCY_DEBUG"):
        for worker in workers:
            spans = [item["end"] - item["start"] for item in worker.results]
            if spans:
                print(worker.name, len(spans), f"{sum(spans):.2f}s", f"max {max(spans):.2f}s",
                      worker.summary)
    if retries:
        retried = Counter(
            " ".join(item["argv"][:2]) + ": " + message[:160]
            for worker in workers
            for item in worker.results
            for message in item["retried"]
        )
        warnings.warn(f"{test}: {retries} deadlock retries: {dict(retried)}", stacklevel=2)


def overlapping(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> bool:
    return any(a["start"] < b["end"] and b["start"] < a["end"] for a in first for b in second)


def test_granting_spending_and_revoking_one_wallet_at_once_loses_nothing(
    shop: Cli, db_url: str, tmp_path: Path
) -> None:
    drafts = {item["label"]: item["number"] for item in ok(shop, "invoice", "list")}
    assert sorted(drafts) == sorted(MONTHS)
    finalizers = []
    for index in range(FINALIZERS):
        months = MONTHS[index::FINALIZERS]
        if index == FINALIZERS - 1:  # the batch path: a run that finalizes its month
            commands = [["run", "bill", "--period", month, "--finalize"] for month in months]
        else:
            commands = [["invoice", "finalize", drafts[month]] for month in months]
        finalizers.append(
            Worker(f"finalizer-{index}", tmp_path, {"mode": "commands", "db": db_url,
                                                    "commands": commands, "pause": 0.05})
        )
    grants = []
    for i in range(GRANTS):
        reason = f"revocable-{i}" if i % REVOCABLE_EVERY == 0 else f"bulk-{i}"
        grant = ["credits", "grant", "c1", f"{1 + (i % 4) * 0.25:.2f}", "--reason", reason]
        grant += ["--priority", str(1 + i % 3), "--category", ("paid", "promotional")[i % 2]]
        if i % 5 == 0:
            grant += ["--expires", "2027-06-01T00:00:00Z"]
        grants.append(grant)
    granter = Worker("granter", tmp_path, {"mode": "commands", "db": db_url, "commands": grants})
    expected_revocations = 1 + len(range(0, GRANTS, REVOCABLE_EVERY))
    revoker = Worker(
        "revoker",
        tmp_path,
        {"mode": "revoker", "db": db_url, "customer": "c1", "expected": expected_revocations,
         "deadline": 60},
    )
    workers = [*finalizers, granter, revoker]
    elapsed = run_together(workers)
    retries = assert_all_succeeded(workers)
    report_retries("grant/spend/revoke", retries, workers)
    assert revoker.summary["revoked"] == expected_revocations, revoker.summary

    # It really was concurrent: two finalizers spent at the same moment, a grant landed while
    # a finalization ran, and a revocation ran while one did.
    finalized = [item for worker in finalizers for item in worker.results]
    assert overlapping(finalizers[0].results, finalizers[1].results + finalizers[2].results)
    assert overlapping(granter.results, finalized)
    assert overlapping(revoker.results, finalized), (elapsed, revoker.summary)

    # Every month was finalized exactly once, by the process that was given it.
    numbers = sorted(
        number
        for item in finalized
        for number in (item["data"]["finalized"])
    )
    assert numbers == sorted(drafts.values())

    # The consistency sweep agrees with itself.
    check = shop("check", "--project", "acme", "--json")
    assert check.exit_code == 0, check.stdout
    assert check.json()["ok"] is True

    invoices = ok(shop, "invoice", "list")
    grants_now = ok(shop, "credits", "list", "c1")
    wallet = ok(shop, "wallet", "show", "c1")
    ledger = ok(shop, "ledger", "show")

    # No grant was lost: all the granter's grants, the starting ones, each once.
    granted_ids = [item["data"]["id"] for item in granter.results]
    assert len(set(granted_ids)) == GRANTS
    assert {g["id"] for g in grants_now} >= set(granted_ids)
    assert len(grants_now) == GRANTS + len(PRE_GRANTS)

    # Each transaction is balanced; what the ledger says each grant lost to invoices and to
    # revocation.
    spent: dict[str, int] = defaultdict(int)
    revoked: dict[str, int] = defaultdict(int)
    applied_by_invoice: dict[str, int] = defaultdict(int)
    for txn in ledger:
        assert sum(entry["amount_minor"] for entry in txn["entries"]) == 0, txn
        for entry in txn["entries"]:
            if entry["account"] != "wallet:c1":
                continue
            if txn["kind"] == "credits_applied":
                assert entry["amount_minor"] > 0, txn
                spent[entry["grant"]] += entry["amount_minor"]
                applied_by_invoice[txn["reference"]] += entry["amount_minor"]
            elif txn["kind"] == "credit_revoked":
                assert entry["amount_minor"] >= 0, txn
                revoked[entry["grant"]] += entry["amount_minor"]
            else:
                assert txn["kind"] == "credit_granted", txn

    # Grants: never below zero, never above what was granted; amount − remaining − revoked is
    # exactly what invoices took from it; a revoked grant has nothing left.
    cents = Decimal(100)
    total_granted = total_remaining = total_revoked = total_spent = 0
    for grant in grants_now:
        amount, remaining = money(grant["amount"]) * cents, money(grant["remaining"]) * cents
        assert 0 <= remaining <= amount, grant
        assert amount - remaining - revoked[grant["id"]] == spent[grant["id"]], grant
        if grant["reason"].startswith("revocable"):
            assert grant["revoked_at"] is not None and remaining == 0, grant
        else:
            assert grant["revoked_at"] is None and revoked[grant["id"]] == 0, grant
        total_granted += int(amount)
        total_remaining += int(remaining)
        total_revoked += revoked[grant["id"]]
        total_spent += spent[grant["id"]]
    # What the revoker was told it revoked is what the ledger shows.
    told = sum(money(item["data"]["revoked"]) * cents for item in revoker.results)
    assert told == total_revoked

    # Invoices: all finalized; credits applied never more than the subtotal and equal to what
    # the ledger took from the wallet for it; total = subtotal − credits.
    total_applied = 0
    for invoice in invoices:
        assert invoice["status"] in ("finalized", "paid"), invoice
        subtotal, applied = money(invoice["subtotal"]), money(invoice["credits_applied"])
        assert Decimal(0) <= applied <= subtotal, invoice
        assert money(invoice["total"]) == subtotal - applied, invoice
        assert applied * cents == applied_by_invoice[invoice["number"]], invoice
        assert (invoice["status"] == "paid") == (applied == subtotal), invoice
        total_applied += int(applied * cents)
    assert total_applied == total_spent
    assert total_applied > 0  # credit really was consumed

    # The wallet: its balance is what the grants still hold, and granted = balance + spent +
    # revoked.
    balance = int(money(wallet["balance"]) * cents)
    assert balance == total_remaining == sum(
        int(money(g["remaining"]) * cents) for g in wallet["grants"]
    )
    assert total_granted == balance + total_applied + total_revoked


def test_the_same_idempotency_key_from_two_processes_grants_once(
    shop: Cli, db_url: str, tmp_path: Path
) -> None:
    keys = [f"promo-{i}" for i in range(15)]
    commands = [["credits", "grant", "c1", "2.00", "--idempotency-key", key] for key in keys]
    workers = [
        Worker(f"granter-{n}", tmp_path, {"mode": "commands", "db": db_url, "commands": commands})
        for n in range(2)
    ]
    before = money(ok(shop, "wallet", "show", "c1")["balance"])
    run_together(workers)
    retries = assert_all_succeeded(workers)
    report_retries("idempotent grant", retries, workers)

    by_key: dict[str, set[str]] = defaultdict(set)
    created: Counter[str] = Counter()
    for worker in workers:
        for item in worker.results:
            key = item["argv"][item["argv"].index("--idempotency-key") + 1]
            by_key[key].add(item["data"]["id"])
            created[key] += bool(item["data"]["created"])
    # Both processes were answered with the same grant, created by exactly one of them.
    assert all(len(ids) == 1 for ids in by_key.values()), by_key
    assert created == dict.fromkeys(keys, 1), created
    grants = [g for g in ok(shop, "credits", "list", "c1") if g["idempotency_key"]]
    assert sorted(g["idempotency_key"] for g in grants) == sorted(keys)
    assert money(ok(shop, "wallet", "show", "c1")["balance"]) == before + 2 * len(keys)
    assert shop("check", "--project", "acme", "--json").exit_code == 0
