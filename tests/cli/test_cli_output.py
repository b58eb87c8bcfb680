"""What an operator sees: tables that never split a number, `--quiet` that prints nothing but
errors, and output paths refused before any work starts.

Rendering touches no SQL, so these run on SQLite only, against a copy of one `neruba demo`
database (three invoices, payments, credit, runs, a compare baseline).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.cli import Cli

AS_OF = "2026-11-20T09:00:00Z"  # the demo then bills October 2026
DECEMBER = "2026-12-01T00:00:00Z"
CHARGE = ("--amount", "5.00", "--description", "Setup", "--idempotency-key", "q", "--at", AS_OF)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    made = Cli(None)("demo", "--dir", str(folder), "--as-of", AS_OF, "--quiet")
    assert made.exit_code == 0, made.stderr
    return folder


@pytest.fixture
def demo(demo_folder: Path, tmp_path: Path) -> Cli:
    """A runner on a private copy of the demo database (commands below change it)."""
    copy = tmp_path / "demo.db"
    shutil.copyfile(demo_folder / "neruba-demo.db", copy)
    return Cli(f"sqlite:///{copy}")


def on_demo(cli: Cli, *args: str, env: dict[str, str] | None = None) -> Any:
    return cli(*args, "--project", "demo", env=env)


def data(cli: Cli, *args: str) -> Any:
    result = on_demo(cli, *args, "--json")
    assert result.exit_code == 0, (args, result.stderr)
    return result.json()


# --------------------------------------------------------------------------- table widths


@pytest.mark.parametrize("columns", ["30", "80", "200"])
def test_off_a_terminal_every_row_is_printed_whole(demo: Cli, columns: str) -> None:
    """`neruba invoice list | grep DEMO-000003` finds the whole row, whatever COLUMNS says."""
    listed = on_demo(demo, "invoice", "list", env={"COLUMNS": columns})
    assert listed.exit_code == 0, listed.stderr
    rows = [line for line in listed.stdout.splitlines() if "DEMO-000003" in line]
    assert len(rows) == 1
    assert re.search(r"DEMO-000003 .* supplemental .* finalized .* 11\.25 .* DEMO-000001", rows[0])

    runs = on_demo(demo, "run", "list", env={"COLUMNS": columns})
    assert runs.stdout == on_demo(demo, "run", "list", env={"COLUMNS": "1000"}).stdout
    for run in data(demo, "run", "list"):
        shown = [line for line in runs.stdout.splitlines() if run["id"] in line]
        assert len(shown) == 1 and run["period"] in shown[0] and run["status"] in shown[0]


def test_on_a_narrow_terminal_words_wrap_but_numbers_stay_whole(demo: Cli) -> None:
    terminal = {"TTY_COMPATIBLE": "1", "COLUMNS": "60"}
    listed = on_demo(demo, "invoice", "list", env=terminal)
    assert listed.exit_code == 0, listed.stderr
    text = ANSI.sub("", listed.stdout)
    for number in ("DEMO-000001", "DEMO-000002", "DEMO-000003", "138.58", "supplemental"):
        assert number in text, number

    customers = ANSI.sub(
        "", on_demo(demo, "customer", "list", env={**terminal, "COLUMNS": "100"}).stdout
    )
    lines = customers.splitlines()
    assert max(len(line) for line in lines) <= 100  # it fits: the names wrap at a space
    assert any("│ Acme " in line for line in lines) and any("│ Rockets " in line for line in lines)
    for whole in ("cus_umbrella", "accounts@umbrella.example", "America/New_York"):
        assert whole in customers, whole


# --------------------------------------------------------------------------- --quiet


def quiet_battery(cli: Cli, folder: Path) -> list[tuple[str, ...]]:
    """Every command that works on a demo database, in an order where each one can succeed."""
    run_ids = [run["id"] for run in data(cli, "run", "list")]
    grant = data(cli, "credits", "list", "cus_initech")[0]["id"]
    payment = data(cli, "payment", "list")[0]["id"]
    subscription = data(cli, "subscription", "list")[0]["id"]
    (folder / "customers.csv").write_text("external_id,name\ncus_new,New Co\n")
    (folder / "subscriptions.csv").write_text(
        "customer,plan,start\ncus_new,pro,2026-11-01T00:00:00Z\n"
    )
    (folder / "events.jsonl").write_bytes(
        orjson.dumps(
            {
                "idempotency_key": "quiet-1",
                "customer": "cus_acme",
                "meter": "api_calls",
                "timestamp": "2026-11-03T10:00:00Z",
            }
        )
        + b"\n"
    )
    compare_to = ("--output", str(folder / "compare"))
    return [
        ("audit", "list"),
        ("catalog", "show"),
        ("catalog", "quote", "pro", "--usage", "api_calls=10"),
        ("catalog", "export", "--output", str(folder / "catalog.toml")),
        ("catalog", "apply", str(folder / "catalog.toml")),
        ("customer", "list"),
        ("customer", "show", "cus_acme"),
        ("customer", "create", "cus_quiet", "--currency", "USD"),
        ("customer", "import", str(folder / "customers.csv")),
        ("customer", "forget", "cus_umbrella", "--yes"),
        ("db", "current"),
        ("db", "upgrade"),
        ("events", "receipts"),
        ("events", "list"),
        ("ingest", str(folder / "events.jsonl")),
        ("charge", "add", "cus_acme", *CHARGE),
        ("invoice", "list"),
        ("invoice", "show", "DEMO-000001"),
        ("invoice", "explain", "DEMO-000002"),
        ("invoice", "verify", "--period", "2026-10"),
        ("invoice", "preview", "cus_acme", "--at", AS_OF),
        ("credits", "list", "cus_initech"),
        ("credits", "grant", "cus_acme", "5.00", "--idempotency-key", "quiet-grant"),
        ("credits", "revoke", grant),
        ("credits", "expire"),
        ("wallet", "show", "cus_initech"),
        ("ledger", "show"),
        ("ledger", "balances"),
        ("payment", "list"),
        ("payment", "record", "DEMO-000002", "10.00", "--reference", "quiet-wire"),
        ("payment", "refund", payment, "1.00", "--idempotency-key", "quiet-refund"),
        ("invoice", "void", "DEMO-000003", "--reason", "quiet", "--yes"),
        ("key", "list"),
        ("locks", "list"),
        ("member", "add", "ops@example.com", "--role", "viewer"),
        ("member", "list"),
        ("member", "remove", "ops@example.com", "--yes"),
        ("project", "list"),
        ("project", "show", "demo"),
        ("project", "update", "demo", "--name", "Quiet Co"),
        ("project", "create", "other"),
        ("retention", "list"),
        ("run", "list"),
        ("run", "show", run_ids[0]),
        ("run", "diff", run_ids[-1], run_ids[0]),
        ("run", "bill", "--period", "2026-10", "--as-of", AS_OF),
        ("subscription", "list"),
        ("subscription", "create", "cus_quiet", "pro", "--start", "2026-11-01T00:00:00Z"),
        ("subscription", "import", str(folder / "subscriptions.csv")),
        ("subscription", "change", subscription, "--plan", "starter", "--at", DECEMBER),
        ("subscription", "cancel", subscription, "--at", "2027-01-01T00:00:00Z"),
        ("usage", "show", "cus_acme", "--period", "2026-10", "--as-of", AS_OF),
        ("stripe", "webhook", "list"),
        ("stripe", "push", "--period", "2026-10", "--dry-run"),
        ("export", "invoices", "--output", str(folder / "invoices.csv")),
        ("doctor",),
        ("check",),
        ("stats",),
        ("stats", "--prometheus", str(folder / "neruba.prom")),
        ("compare", str(folder / "baseline.csv"), "--period", "2026-10", *compare_to),
        ("simulate", "--catalog", str(folder / "catalog.toml"), "--period", "2026-10"),
    ]


def test_quiet_prints_nothing_but_errors(demo: Cli, demo_folder: Path, tmp_path: Path) -> None:
    shutil.copyfile(demo_folder / "demo-baseline.csv", tmp_path / "baseline.csv")
    for args in quiet_battery(demo, tmp_path):
        result = on_demo(demo, *args, "--quiet")
        assert result.exit_code in (0, 3, 4), (args, result.stderr)
        assert (result.stdout, result.stderr) == ("", ""), args
    assert (tmp_path / "compare" / "report.html").is_file()
    assert (tmp_path / "invoices.csv").is_file() and (tmp_path / "neruba.prom").is_file()

    failed = on_demo(demo, "invoice", "show", "NOPE-1", "--quiet")
    assert failed.exit_code == 1 and failed.stdout == ""
    assert failed.stderr.startswith("error: invoice 'NOPE-1' does not exist")
    shown = on_demo(demo, "invoice", "show", "DEMO-000001", "--quiet", "--json")
    assert shown.json()["number"] == "DEMO-000001" and shown.stderr == ""

    demo_again = Cli(None)("demo", "--dir", str(tmp_path / "again"), "--quiet")
    assert (demo_again.exit_code, demo_again.stdout, demo_again.stderr) == (0, "", "")


def test_quiet_keeps_what_is_the_commands_product(demo: Cli) -> None:
    """A secret shown once, and a file asked for on stdout, are not chatter."""
    key = on_demo(demo, "key", "create", "--scope", "read", "--quiet")
    assert key.exit_code == 0 and re.fullmatch(r"nrb_live_\w+\n", key.stdout), key.stdout
    assert key.stderr == ""
    invite = on_demo(demo, "invite", "create", "ops@example.com", "--role", "viewer", "--quiet")
    assert invite.exit_code == 0 and len(invite.stdout.split()) == 1 and invite.stderr == ""
    catalog = on_demo(demo, "catalog", "export", "--quiet")
    assert catalog.exit_code == 0 and "[[plans]]" in catalog.stdout and catalog.stderr == ""
    events = on_demo(demo, "export", "events", "--quiet")
    assert events.stdout.startswith("idempotency_key,") and events.stderr == ""


# --------------------------------------------------------------------------- output paths


def test_output_paths_are_refused_before_any_work(
    demo: Cli, demo_folder: Path, tmp_path: Path
) -> None:
    usage = str(demo_folder / "usage.jsonl")
    customers = tmp_path / "customers.csv"
    customers.write_text("external_id,name\ncus_new,New Co\n")
    (tmp_path / "afile").write_text("")
    receipts = len(data(demo, "events", "receipts"))
    missing = str(tmp_path / "nonexistent")
    cases = [
        (("init", "--config", f"{missing}/dir/x.toml"), f"--config {missing}/dir/x.toml"),
        (("catalog", "export", "--output", f"{missing}/c.toml"), "--output"),
        (("ingest", usage, "--rejects", f"{missing}/r.jsonl"), "--rejects"),
        (("ingest", usage, "--rejects", str(tmp_path)), f"--rejects {tmp_path}: is a folder"),
        (("customer", "import", str(customers), "--rejects", f"{missing}/r.jsonl"), "--rejects"),
        (("subscription", "import", str(customers), "--rejects", str(tmp_path)), "is a folder"),
        (("demo", "--dir", "afile"), "--dir afile: is a file, not a folder"),
        (("demo", "--dir", "/proc/nx"), "--dir /proc/nx: cannot write in /proc"),
        (("export", "events", "--output", f"{missing}/e.csv"), f"folder {missing} does not"),
        (("compare", usage, "--period", "2026-10", "--output", "afile"), "--output afile"),
        (("stats", "--prometheus", f"{missing}/n.prom"), "--prometheus"),
        (("reconcile", "stripe", "--period", "2026-10", "--output", str(tmp_path)), "folder"),
    ]
    for args, expected in cases:
        cli = Cli(None) if args[0] in ("demo", "init") else demo
        result = on_demo(cli, *args) if cli is demo else cli(*args)
        assert result.exit_code == 1, (args, result.stderr)
        assert result.stderr.startswith("error: ") and expected in result.stderr, args
        assert "internal error" not in result.stderr
    assert len(data(demo, "events", "receipts")) == receipts  # nothing was read
    assert not Path(missing).exists() and not Path("neruba.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "customers.csv", "demo.db"]


# --------------------------------------------------------------------------- terminal polish


def test_tables_and_summaries_read_as_a_person_writes(demo: Cli, tmp_path: Path) -> None:
    explained = on_demo(demo, "invoice", "explain", "DEMO-000002").stdout
    assert "None" not in explained
    assert "why: 1 event (weighted_sum) → quantity 5" in explained  # seats: one event
    assert "events: 1 event at 2026-10-01T00:00:00Z" in explained
    assert "events: none" in explained  # storage_gb: nothing sent, not "0 from None to None"

    projects = on_demo(demo, "project", "list").stdout
    assert re.search(r"│ demo +│ .* │ no +│", projects) and "False" not in projects

    run = data(demo, "run", "list")[0]["id"]
    assert re.search(r"\.\d{6}Z", data(demo, "run", "show", run)["finished_at"])  # --json: all
    shown = on_demo(demo, "run", "show", run).stdout
    assert re.search(r"finished_at +│ \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", shown), shown

    stats = on_demo(demo, "stats").stdout
    assert re.search(r"ingest lag +│ p50 \d+ (d|h|min|s)\b", stats), stats
    assert not re.search(r"\d+\.\d{4,}", stats)  # no raw seconds

    pushed = on_demo(demo, "stripe", "push", "--period", "2026-10", "--dry-run")
    assert pushed.stdout.count("would create") == 3 and " created " not in pushed.stdout
    assert "3 invoices: 3 would create." in pushed.stderr

    (tmp_path / "one.csv").write_text("external_id,name\ncus_new,New Co\n")
    imported = on_demo(demo, "customer", "import", str(tmp_path / "one.csv"))
    assert "one.csv: 1 row — 1 created, " in imported.stderr
    verified = on_demo(demo, "invoice", "verify", "DEMO-000002")
    assert "1 checked: 1 ok, 0 mismatches." in verified.stderr


def test_compare_leaves_out_what_it_cannot_tell(demo: Cli, tmp_path: Path) -> None:
    """The baseline bills cus_acme in EUR: EUR then has totals but no customer of its own, so
    no drift percentiles to show."""
    baseline = tmp_path / "baseline.csv"
    baseline.write_text(
        "customer,description,meter,quantity,amount,currency\n"
        "cus_acme,October,,,200.42,EUR\ncus_initech,October,,,188.58,USD\n"
    )
    compared = on_demo(demo, "compare", str(baseline), "--period", "2026-10")
    assert compared.exit_code == 0, compared.stderr
    assert "2 customers compared: 1 matched" in compared.stdout
    summary = data(demo, "compare", str(baseline), "--period", "2026-10")["summary"]
    assert summary["currencies"]["EUR"]["p50_drift"] is None  # --json keeps the key
    (eur,) = [line for line in compared.stdout.splitlines() if line.startswith("  EUR: ")]
    assert "None" not in compared.stdout and "p50" not in eur and "p95" not in eur


def test_usage_of_an_unused_meter_is_one_line(demo: Cli) -> None:
    shown = on_demo(demo, "usage", "show", "cus_acme", "--period", "2026-10", "--as-of", AS_OF)
    lines = shown.stdout.splitlines()
    unused = lines.index("active_users · unique_count of properties.user_id")
    assert lines[unused + 1].startswith("no events in this period · quantity 0 · projected 20.00")
    charted = {"api_calls", "seats", "tokens"}  # the meters cus_acme sent events to
    days = [line for line in lines if re.match(r"2026-10-\d\d ", line)]
    assert len(days) == 31 * len(charted)


def test_every_empty_list_says_so(demo: Cli) -> None:
    for args, said in (
        (("events", "list", "--customer", "cus_globex"), "No events."),
        (("invoice", "list", "--customer", "cus_globex"), "No invoices."),
        (("member", "list"), "No members."),
        (("locks", "list"), "No locks are held."),
        (("retention", "list"), "No retention runs."),
        (("stripe", "webhook", "list"), "No webhook events."),
        (("payment", "list", "--customer", "cus_initech"), "No payments."),
        (("run", "list", "--period", "2026-09"), "No billing runs."),
    ):
        result = on_demo(demo, *args)
        assert (result.exit_code, result.stdout) == (0, said + "\n"), args
        assert on_demo(demo, *args, "--json").json() == [], args
