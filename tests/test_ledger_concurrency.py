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

Each process is a real Python process with its own database connections that runs its
commands one after another through the CLI's own entry point (argument parsing, the runtime,
error mapping, the audit record), in-process: starting `neruba` afresh for each of ~60
commands would take far longer than the races themselves.

Every command must succeed: the services keep one lock order (invoice, wallet, accounts) and
rerun a transaction the database picked as a deadlock victim (db/retry.py). RETRIES lets a
worker retry a command that still failed with a deadlock; it is 0, so one fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MONTHS = ["2025-11", "2025-12"] + [f"2026-{m:02d}" for m in range(1, 11)]
FINALIZERS = 2
GRANTS = 30
REVOCABLE_EVERY = 3  # every third grant of the granter is marked for the revoker
PRE_GRANTS = [("5.00", "1", "pre-0"), ("5.00", "2", "pre-1"), ("5.00", "3", "revocable-pre")]
IDEMPOTENT_GRANTS = 15
RETRIES = 0
TIMEOUT = 120
CENTS = Decimal(100)

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

# One process: says "ready", waits for "go" on stdin, then runs its commands through the CLI
# in-process and prints one JSON line per mutating command (exit code, output, error, the
# deadlock messages it retried, start and end), then "done".
WORKER = r"""
import json, re, sys, time
from pathlib import Path
import typer.testing
from neruba_cli.cli.app import app

built = typer.testing._get_command(app)  # build the click command once, not per command
typer.testing._get_command = lambda _app: built

spec = json.loads(Path(sys.argv[1]).read_text())
tail = ["--project", "acme", "--db", spec["db"], "--json"]
runner = typer.testing.CliRunner(env={"NO_COLOR": "1", "COLUMNS": "120", "TERM": "dumb"})
DEADLOCK = re.compile(r"deadlock", re.I)

def invoke(argv):
    result = runner.invoke(app, [*argv, *tail], catch_exceptions=True)
    error = None
    if result.exit_code != 0:
        lines = (result.stderr or "").strip().splitlines()
        try:
            error = json.loads(lines[-1])["error"]
        except Exception:
            error = {"type": "unparsed", "exit_code": result.exit_code,
                     "message": (result.stderr or "") + repr(result.exception)}
    return result.exit_code, result.stdout, error

def run(argv):
    started, retried = time.time(), []
    while True:
        code, out, error = invoke(argv)
        if (code != 0 and error and error.get("type") == "database_error"
                and DEADLOCK.search(error.get("message", ""))
                and len(retried) < spec["retries"]):
            retried.append(error["message"])
            time.sleep(0.05 * len(retried))
            continue
        break
    data = json.loads(out) if code == 0 else None
    print(json.dumps({"argv": argv, "code": code, "data": data, "error": error,
                      "retried": retried, "start": started, "end": time.time()}), flush=True)
    return code

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
            print(json.dumps({"argv": ["credits", "list"], "code": code, "data": None,
                              "error": error, "retried": [], "start": 0, "end": 0}), flush=True)
            break
        for grant in json.loads(out):
            if grant["reason"].startswith("revocable") and grant["id"] not in revoked:
                run(["credits", "revoke", grant["id"], "--reason", "concurrency"])
                revoked.add(grant["id"])
        time.sleep(0.05)
    print(json.dumps({"polls": polls, "revoked": len(revoked)}), flush=True)
print("done", flush=True)
"""


def ok(cli: Cli, *args: str) -> Any:
    result = cli(*args, "--project", "acme", "--json")
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result.json()


def cents(text: str) -> int:
    value = Decimal(text) * CENTS
    assert value == int(value), text
    return int(value)


def after(month: str) -> str:
    """The second day of the month after `month`, as an RFC 3339 moment."""
    year, number = int(month[:4]), int(month[5:])
    year, number = (year + 1, 1) if number == 12 else (year, number + 1)
    return f"{year}-{number:02d}-02T00:00:00Z"


@pytest.fixture
def customer(cli: Cli) -> Cli:
    assert cli("project", "create", "acme", "--timezone", "UTC").exit_code == 0
    ok(cli, "customer", "create", "c1", "--currency", "USD")
    return cli


@pytest.fixture
def shop(customer: Cli, tmp_path: Path) -> Cli:
    """c1 with one 10.00 draft per month in MONTHS and 15.00 of credit to start with."""
    (tmp_path / "catalog.toml").write_text(CATALOG)
    ok(customer, "catalog", "apply", str(tmp_path / "catalog.toml"))
    ok(customer, "subscription", "create", "c1", "basic", "--start", f"{MONTHS[0]}-01T00:00:00Z")
    for month in MONTHS:
        report = ok(customer, "run", "bill", "--period", month, "--as-of", after(month))
        assert (report["status"], report["invoices"]) == ("completed", 1), report
    for amount, priority, reason in PRE_GRANTS:
        ok(customer, "credits", "grant", "c1", amount, "--priority", priority, "--reason", reason)
    return customer


class Worker:
    """One OS process running WORKER with its spec."""

    def __init__(self, name: str, tmp_path: Path, spec: dict[str, Any]) -> None:
        self.name = name
        path = tmp_path / f"worker-{name}.json"
        path.write_text(json.dumps({"retries": RETRIES, **spec}))
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "TERM": "dumb"},
            cwd=tmp_path,
        )
        self.results: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != "ready":
            _out, err = self.process.communicate(timeout=TIMEOUT)
            pytest.fail(f"{self.name} did not start: {line!r} {err[-4000:]}")

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self) -> None:
        out, err = self.process.communicate(timeout=TIMEOUT)
        lines = out.strip().splitlines()
        assert self.process.returncode == 0 and lines and lines[-1] == "done", (
            self.name,
            out[-2000:],
            err[-4000:],
        )
        for line in lines[:-1]:
            item = json.loads(line)
            if "argv" in item:
                self.results.append(item)
            else:
                self.summary = item


def run_together(workers: list[Worker]) -> None:
    """Start every worker at once (each loaded and waiting at the gate first)."""
    try:
        for worker in workers:
            worker.wait_ready()
        for worker in workers:
            worker.go()
        for worker in workers:
            worker.finish()
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.communicate()


def failures(workers: list[Worker]) -> list[tuple[str, list[str], int, dict[str, Any]]]:
    return [
        (worker.name, item["argv"], item["code"], item["error"])
        for worker in workers
        for item in worker.results
        if item["code"] != 0
    ]


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
