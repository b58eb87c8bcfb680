"""Start-up benchmark: how long `neruba` takes before it does anything, against sqlite-utils.

    python bench/startup.py [--repeat N] [--keep DIR]

Sets up a small SQLite database through the real CLI (init, a project, three customers on a
plan, a few dozen events, last month billed and finalized: a handful of invoices; not timed),
then times, each as its own subprocess, N times (default 21) in interleaved rounds so that
load on the machine falls on every command alike:

  neruba --version        the console script printing its version
  neruba --help           the root help: every command in its panel
  neruba invoice list     a real read: settings, the database at head, one query, a table
  sqlite-utils --help     the baseline: a Click CLI over SQLite (installed with pip if missing)
  python -c pass          (info) the interpreter's own start-up in this environment
  python -c 'import sqlalchemy'  (info) the floor of any command that reads the database

and prints the median seconds (wall clock) and CPU seconds (user + system) of each, with each
median's ratio to sqlite-utils --help's, and the targets of issue 17 beside them: --version and
--help no slower than sqlite-utils --help (ratio <= 1.0), invoice list <= 1.5. A target counts
as met when both the wall and the CPU ratio are within it. Nothing is asserted: the exit status
is 0 unless a step failed.

Measurement is bench/ingest.py's (a small launcher reaps each command with os.wait4); see its
docstring and bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ingest import (  # bench/ingest.py: the same measuring helpers
    Run,
    check,
    in_work_folder,
    neruba_env,
    previous_month,
    print_table,
    run_measured,
    sqlite_utils_command,
    verdict,
)

PROJECT = "bench"
BASELINE = "sqlite-utils --help"
TARGETS = {"neruba --version": 1.0, "neruba --help": 1.0, "neruba invoice list": 1.5}
CUSTOMERS = ("acme", "globex", "initech")

CATALOG = """\
# Written by bench/startup.py: one meter, one plan.

[[meters]]
code = "api_calls"
aggregation = "count"

[[plans]]
code = "pro"
currency = "USD"
interval = "month"
base_fee = "49.00"

  [[plans.charges]]
  meter = "api_calls"
  model = "per_unit"
  unit_amount = "0.01"
"""


@dataclass
class Timing:
    label: str
    runs: list[Run]

    @property
    def seconds(self) -> float:
        return statistics.median(run.seconds for run in self.runs)

    @property
    def cpu(self) -> float:
        return statistics.median(run.cpu_seconds or 0.0 for run in self.runs)


def neruba_command() -> list[str]:
    """The console script installed beside this interpreter (what users run), else `-m`."""
    script = Path(sys.executable).parent / "neruba"
    return [str(script)] if script.exists() else [sys.executable, "-m", "neruba_cli"]


def set_up(folder: Path, neruba: list[str]) -> None:
    """A small billed database: neruba.toml from `init`, so `invoice list` reads its config
    as a user's would."""
    env = neruba_env(folder)
    start, _end = previous_month(datetime.now(UTC))
    (folder / "catalog.toml").write_text(CATALOG)
    (folder / "customers.csv").write_text(
        "external_id,name,email,currency,timezone,stripe_id\n"
        + "".join(f"{c},{c.title()},billing@{c}.example,USD,UTC,\n" for c in CUSTOMERS)
    )
    (folder / "subscriptions.csv").write_text(
        "customer,plan,start\n"
        + "".join(f"{c},pro,{(start - timedelta(days=30)):%Y-%m-%dT%H:%M:%SZ}\n" for c in CUSTOMERS)
    )
    events = (
        {"idempotency_key": f"evt_{i}", "customer": CUSTOMERS[i % len(CUSTOMERS)],
         "meter": "api_calls", "timestamp": f"{start + timedelta(hours=i):%Y-%m-%dT%H:%M:%SZ}"}
        for i in range(60)
    )  # fmt: skip
    (folder / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    steps = [
        ("init", "--db", f"sqlite:///{folder / 'bench.db'}"),
        ("project", "create", PROJECT),
        ("customer", "import", "customers.csv", "--project", PROJECT),
        ("catalog", "apply", "catalog.toml", "--project", PROJECT),
        ("subscription", "import", "subscriptions.csv", "--project", PROJECT),
        ("ingest", "events.jsonl", "--project", PROJECT),
        ("run", "bill", "--period", "previous", "--finalize", "--project", PROJECT),
    ]
    for step in steps:
        label = f"neruba {' '.join(step[:2])}"
        check(run_measured(label, [*neruba, *step, "--quiet"], cwd=folder, env=env))


def bench(args: argparse.Namespace, folder: Path) -> None:
    neruba = neruba_command()
    sqlite_utils = sqlite_utils_command()
    if sqlite_utils is None:
        raise SystemExit("sqlite-utils is needed as the baseline and could not be installed")
    print("setting up a small database (not timed) ...", flush=True)
    set_up(folder, neruba)
    env = neruba_env(folder)
    commands = {
        "neruba --version": [*neruba, "--version"],
        "neruba --help": [*neruba, "--help"],
        "neruba invoice list": [*neruba, "invoice", "list", "--project", PROJECT],
        BASELINE: [*sqlite_utils, "--help"],
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import sqlalchemy'": [sys.executable, "-c", "import sqlalchemy"],
    }
    timings = {label: Timing(label, []) for label in commands}
    for label, argv in commands.items():  # once untimed: byte-compiled files, a warm disk cache
        check(run_measured(label, argv, cwd=folder, env=env))
    print(f"timing {len(commands)} commands x {args.repeat} ...", flush=True)
    for _round in range(args.repeat):
        for label, argv in commands.items():
            timings[label].runs.append(check(run_measured(label, argv, cwd=folder, env=env)))
    listed = timings["neruba invoice list"].runs[-1].stdout
    invoices = sum(f"{PROJECT.upper()}-" in line for line in listed.splitlines())
    if invoices != len(CUSTOMERS):
        print(f"WARNING: invoice list showed {invoices} invoices, expected {len(CUSTOMERS)}")
    report(timings, args.repeat)


def report(timings: dict[str, Timing], repeat: int) -> None:
    base = timings[BASELINE]
    print()
    print(f"medians of {repeat} runs; ratios against `{BASELINE}` in this run")
    headers = ["command", "seconds", "CPU s", "wall ratio", "CPU ratio", "target"]
    rows = []
    for label, timing in timings.items():
        target = TARGETS.get(label)
        wall, cpu = timing.seconds / base.seconds, timing.cpu / base.cpu
        judged = "-" if target is None else f"<= {target:.1f}x {verdict(max(wall, cpu) <= target)}"
        rows.append([
            label,
            f"{timing.seconds:.3f}",
            f"{timing.cpu:.3f}",
            f"{wall:.2f}x",
            f"{cpu:.2f}x",
            "-" if label == BASELINE else judged,
        ])  # fmt: skip
    print_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time neruba's start-up (--version, --help, invoice list) "
        "against sqlite-utils --help."
    )
    parser.add_argument("--repeat", type=int, default=21, help="runs per command (default 21)")
    parser.add_argument("--keep", type=Path, help="work in DIR and keep it")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    names = ("bench.db", "neruba.toml")
    return in_work_folder(args.keep, "neruba-bench-startup-", names, lambda f: bench(args, f))


if __name__ == "__main__":
    sys.exit(main())
