"""Billing benchmark: `neruba run bill` against a floor measured in the same run.

    python bench/billing.py [--customers N] [--events N | --large] [--db URL] [--keep DIR]
                            [--profile FILE]

Generates N customers (default 10,000) and M events (default 1,000,000; `--large`: 5,000,000)
for the previous calendar month, a catalog (three meters: a count, a sum of `quantity`, a sum
of a property; one plan with a base fee and a graduated, a per_unit and a package charge) and a
subscription per customer, sets up a fresh database through the real CLI (`customer import`,
`catalog apply`, `subscription import`, `ingest --quiet`; none of that is timed), then times,
each as its own subprocess:

  floor                   the raw driver's (sqlite3, PyMySQL, psycopg) GROUP BY over the same
                          events in the same database, every row fetched:
                          SELECT customer_id, meter, COUNT(*), SUM(quantity) FROM events
                          WHERE project_id = ? AND ts >= ? AND ts < ? GROUP BY customer_id, meter
  run bill (full)         `neruba run bill --period P --as-of A --finalize`: every customer,
                          nothing billed before; drafts written, then finalized
  rerun, no change        the same command again
  rerun, 1% late          the same command after `neruba ingest` of late events (in the period)
                          for 1% of the customers: a correction for each of them

Measurement (wall seconds, CPU seconds, peak RSS through a small launcher) is bench/ingest.py's:
see its docstring and bench/README.md. Targets (printed, never asserted): full run <= 3x the
floor; rerun after 1% late events <= 0.1x the full run.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from ingest import (  # bench/ingest.py: the same measuring and database set-up
    Neruba,
    Run,
    Target,
    check,
    fmt_cpu,
    fmt_mb,
    fmt_seconds,
    in_work_folder,
    plain_url,
    previous_month,
    print_table,
    pymysql_connect,
    run_measured,
    server_target,
    verdict,
)

PROJECT = "bench"
PLAN = "bench"
LATE_SHARE = 0.01  # the share of customers that get late events
LATE_PER_CUSTOMER = 3  # late events per such customer: `tokens` events, priced per unit
TARGET_FULL_OVER_FLOOR = 3.0
TARGET_LATE_OVER_FULL = 0.1

CATALOG = """\
# Written by bench/billing.py: three meters and one plan.

[[meters]]
code = "api_calls"
aggregation = "count"

[[meters]]
code = "tokens"
aggregation = "sum"

[[meters]]
code = "storage_gb"
aggregation = "sum"
field = "properties.gb"

[[plans]]
code = "bench"
currency = "USD"
interval = "month"
base_fee = "29.00"
base_fee_timing = "arrears"
proration = "day"

  [[plans.charges]]
  meter = "api_calls"
  model = "graduated"
  tiers = [
    { up_to = 100, unit_amount = "0" },
    { up_to = 1000, unit_amount = "0.002", flat_amount = "1.00" },
    { up_to = inf, unit_amount = "0.001" },
  ]

  [[plans.charges]]
  meter = "tokens"
  model = "per_unit"
  unit_amount = "0.00002"

  [[plans.charges]]
  meter = "storage_gb"
  model = "package"
  package_size = 10
  package_amount = "2.50"
  free_units = 10
"""


# --------------------------------------------------------------------------------------------
# Input generation


@dataclass
class Inputs:
    customers: list[str]
    customers_csv: Path
    catalog: Path
    subscriptions_csv: Path
    events: Path
    period: str  # YYYY-MM
    start: datetime
    end: datetime
    as_of: datetime


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def generate(folder: Path, customers: int, events: int, seed: int = 20266) -> Inputs:
    """Catalog, customers, subscriptions and events; deterministic for a seed and a month."""
    rng = random.Random(seed)
    start, end = previous_month(datetime.now(UTC))
    catalog = folder / "catalog.toml"
    catalog.write_text(CATALOG, encoding="utf-8")

    ids = [f"cus_{number:06d}_{rng.getrandbits(24):06x}" for number in range(customers)]
    customers_csv = folder / "customers.csv"
    with customers_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["external_id", "name", "email", "currency", "timezone", "stripe_id"])
        for number, external in enumerate(ids):
            writer.writerow([external, f"Customer {number}", f"c{number}@example.com", "", "", ""])

    # Everyone subscribed well before the period: a full month, no proration.
    subscribed = _stamp(start - timedelta(days=90))
    subscriptions_csv = folder / "subscriptions.csv"
    with subscriptions_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["customer", "plan", "start"])
        for external in ids:
            writer.writerow([external, PLAN, subscribed])

    # Skewed activity: a few customers send most events.
    weights = [1.0 / (rank + 1) ** 0.8 for rank in range(customers)]
    chosen = rng.choices(ids, weights=weights, k=events)
    span_ms = int((end - start).total_seconds() * 1000)
    regions = ("eu", "us", "ap")
    path = folder / "events.jsonl"
    with path.open("wb") as handle:
        lines: list[bytes] = []
        for index in range(events):
            base = span_ms * index // events
            offset = min(span_ms - 1, max(0, base + rng.randint(-60_000, 60_000)))
            event: dict[str, Any] = {
                "idempotency_key": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "customer": chosen[index],
                "timestamp": _stamp(start + timedelta(milliseconds=offset)),
            }
            pick = rng.random()
            if pick < 0.6:
                event["meter"] = "api_calls"
                event["properties"] = {"region": regions[index % 3]}
            elif pick < 0.9:
                tokens = rng.randint(1, 20_000)
                event["meter"] = "tokens"
                event["quantity"] = tokens if rng.random() < 0.5 else str(tokens)
            else:
                event["meter"] = "storage_gb"
                event["properties"] = {"gb": f"{rng.randint(0, 5000) / 8:.3f}", "bucket": "b1"}
            lines.append(orjson.dumps(event))
            if len(lines) >= 10_000:
                handle.write(b"\n".join(lines) + b"\n")
                lines = []
        if lines:
            handle.write(b"\n".join(lines) + b"\n")
    return Inputs(
        ids,
        customers_csv,
        catalog,
        subscriptions_csv,
        path,
        start.strftime("%Y-%m"),
        start,
        end,
        end + timedelta(hours=1),
    )


def generate_late(folder: Path, inputs: Inputs, seed: int = 20267) -> tuple[Path, list[str]]:
    """`tokens` events inside the period for 1% of the customers (at least one)."""
    rng = random.Random(seed)
    late = sorted(rng.sample(inputs.customers, max(1, round(len(inputs.customers) * LATE_SHARE))))
    span_ms = int((inputs.end - inputs.start).total_seconds() * 1000)
    path = folder / "late.jsonl"
    with path.open("wb") as handle:
        for customer in late:
            for _ in range(LATE_PER_CUSTOMER):
                moment = inputs.start + timedelta(milliseconds=rng.randrange(span_ms))
                event = {
                    "idempotency_key": f"late-{uuid.UUID(int=rng.getrandbits(128), version=4)}",
                    "customer": customer,
                    "meter": "tokens",
                    "timestamp": _stamp(moment),
                    "quantity": 10_000,
                }
                handle.write(orjson.dumps(event) + b"\n")
    return path, late


# --------------------------------------------------------------------------------------------
# The floor (runs as a subprocess of this script: `--floor-worker DIALECT URL PROJECT START END`)

FLOOR_SQL = (
    "SELECT customer_id, meter, COUNT(*), SUM(quantity) FROM events "
    "WHERE project_id = {mark} AND ts >= {mark} AND ts < {mark} GROUP BY customer_id, meter"
)


def floor_worker(dialect: str, url: str, project_id: str, start: str, end: str) -> None:
    """Aggregate the period's events per customer and meter; print the number of rows."""
    low = datetime.fromisoformat(start).astimezone(UTC).replace(tzinfo=None)
    high = datetime.fromisoformat(end).astimezone(UTC).replace(tzinfo=None)
    conn: Any
    if dialect == "sqlite":
        # neruba stores naive UTC as 'YYYY-MM-DD HH:MM:SS.ffffff' text and quantities as
        # canonical decimal text: SQLite's SUM reads that text as numbers (floats).
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        spelled = [moment.strftime("%Y-%m-%d %H:%M:%S.%f") for moment in (low, high)]
        rows = conn.execute(FLOOR_SQL.format(mark="?"), (project_id, *spelled)).fetchall()
    elif dialect == "mariadb":
        conn = pymysql_connect(url, autocommit=False)
        with conn.cursor() as cursor:
            cursor.execute(FLOOR_SQL.format(mark="%s"), (project_id, low, high))
            rows = cursor.fetchall()
    else:
        import psycopg

        conn = psycopg.connect(url)
        with conn.cursor() as cursor:
            cursor.execute(FLOOR_SQL.format(mark="%s"), (project_id, low, high))
            rows = cursor.fetchall()
    conn.close()
    print(json.dumps({"rows": len(rows), "events": sum(int(row[2]) for row in rows)}))


def _floor_label(dialect: str) -> str:
    driver = {"sqlite": "sqlite3", "mariadb": "pymysql", "postgresql": "psycopg"}[dialect]
    return f"floor: {driver} GROUP BY customer, meter"


# --------------------------------------------------------------------------------------------
# Databases


def new_target(args: argparse.Namespace, folder: Path, name: str) -> Target:
    if args.db:
        target = server_target(args.db)
        print(f"created database {target.url.rsplit('/', 1)[-1]} ({target.dialect})")
        return target
    url = f"sqlite:///{folder / f'{name}.db'}"
    return Target("sqlite", url, url)


def drop_target(target: Target) -> None:
    if target.drop is not None:
        target.drop()
        print(f"dropped database {target.url.rsplit('/', 1)[-1]}")


def scalar(target: Target, sql: str, **params: Any) -> Any:
    from sqlalchemy import create_engine, text

    from neruba_cli.db.engine import create_db_engine

    engine = (
        create_engine(target.url) if target.dialect == "sqlite" else create_db_engine(target.url)
    )
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).scalar_one()
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# The bench


class Bench:
    def __init__(self, args: argparse.Namespace, folder: Path, inputs: Inputs) -> None:
        self.args = args
        self.folder = folder
        self.inputs = inputs
        self.neruba = Neruba(folder)

    def setup(self, target: Target) -> dict[str, Run]:
        """Project, customers, catalog, subscriptions and events; each step's run."""
        url = target.url
        common = ("--db", url, "--quiet")
        here = (*common, "--project", PROJECT)
        steps: dict[str, Run] = {}
        run = self.neruba.run
        run("neruba init", "init", *common)
        run("neruba db upgrade", "db", "upgrade", *common)
        run("neruba project create", "project", "create", PROJECT, *common)
        steps["customers"] = run(
            "neruba customer import", "customer", "import", str(self.inputs.customers_csv), *here
        )
        run("neruba catalog apply", "catalog", "apply", str(self.inputs.catalog), *here)
        steps["subscriptions"] = run(
            "neruba subscription import",
            "subscription",
            "import",
            str(self.inputs.subscriptions_csv),
            *here,
        )
        steps["ingest"] = run("neruba ingest", "ingest", str(self.inputs.events), *here, "--json")
        steps["startup"] = run("neruba db current", "db", "current", *common, "--json")
        return steps

    def bill_argv(self, url: str) -> list[str]:
        return [
            "run",
            "bill",
            "--period",
            self.inputs.period,
            "--as-of",
            _stamp(self.inputs.as_of),
            "--finalize",
            "--db",
            url,
            "--project",
            PROJECT,
            "--quiet",
            "--json",
        ]

    def bill(self, label: str, url: str, prefix: tuple[str, ...] = ()) -> Run:
        return self.neruba.run(label, *self.bill_argv(url), prefix=prefix)

    def floor(self, target: Target) -> Run:
        project_id = scalar(target, "SELECT id FROM projects WHERE slug = :slug", slug=PROJECT)
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--floor-worker",
            target.dialect,
            target.url if target.dialect == "sqlite" else plain_url(target.url),
            project_id,
            self.inputs.start.isoformat(),
            self.inputs.end.isoformat(),
        ]
        return check(run_measured("floor", argv, cwd=self.folder, env=self.neruba.env))

    def measure(self, target: Target) -> None:
        inputs = self.inputs
        print("setting up: init, db upgrade, project, customers, catalog, subscriptions, ingest")
        steps = self.setup(target)
        ingested = orjson.loads(steps["ingest"].stdout)
        print(
            f"  subscription import {steps['subscriptions'].seconds:.1f}s, "
            f"ingest {steps['ingest'].seconds:.1f}s ({ingested['accepted']:,} accepted)"
        )
        runs: dict[str, Run] = {"startup": steps["startup"]}
        print("timing floor ...", flush=True)
        runs["floor"] = self.floor(target)
        print(f"timing run bill {inputs.period} (full, --finalize) ...", flush=True)
        runs["full"] = self.bill("run bill (full)", target.url)
        print("timing run bill (rerun, nothing changed) ...", flush=True)
        runs["again"] = self.bill("run bill (rerun, no change)", target.url)
        late_file, late = generate_late(self.folder, inputs)
        self.neruba.run(
            "neruba ingest (late)",
            "ingest",
            str(late_file),
            "--db",
            target.url,
            "--project",
            PROJECT,
            "--quiet",
        )
        print(f"ingested {len(late) * LATE_PER_CUSTOMER} late events for {len(late)} customers")
        print("timing run bill (rerun after late events) ...", flush=True)
        runs["late"] = self.bill("run bill (rerun, 1% late)", target.url)
        problems = self.sanity(target, runs, len(late), ingested["accepted"])
        self.report(target, runs, len(late))
        for problem in problems:
            print(f"WARNING: {problem}")

    def sanity(self, target: Target, runs: dict[str, Run], late: int, accepted: int) -> list[str]:
        """Loose checks: an invoice per customer, nothing on a rerun, a correction per late
        customer; printed, with what differed."""
        customers = len(self.inputs.customers)
        floor = json.loads(runs["floor"].stdout)
        full = json.loads(runs["full"].stdout)
        again = json.loads(runs["again"].stdout)
        after = json.loads(runs["late"].stdout)
        stored = scalar(
            target,
            "SELECT COUNT(*) FROM invoices WHERE revision = 0 AND status = 'finalized'",
        )
        corrections = scalar(target, "SELECT COUNT(*) FROM invoices WHERE revision > 0")
        finalized = full.get("finalized")
        if isinstance(finalized, list):  # the CLI lists the numbers
            finalized = len(finalized)
        print(
            f"checks: floor {floor['rows']:,} rows over {floor['events']:,} events; "
            f"full run: {full.get('invoices')} invoices, {finalized} finalized "
            f"({stored} finalized in the database); rerun: status {again.get('status')}, "
            f"{again.get('invoices')} invoices; after late events: {after.get('corrections')} "
            f"corrections ({corrections} in the database), {after.get('late_events')} late events"
        )
        problems = []
        if floor["events"] != accepted:
            problems.append(f"the floor aggregated {floor['events']} events of {accepted}")
        if full.get("invoices") != customers or stored != customers or finalized != customers:
            problems.append(
                f"full run: {full.get('invoices')} invoices ({stored} finalized stored) "
                f"for {customers} customers"
            )
        if again.get("invoices") or again.get("corrections"):
            problems.append(f"the rerun without changes wrote something: {again}")
        if after.get("corrections") != late or corrections != late:
            problems.append(
                f"{after.get('corrections')} corrections ({corrections} stored) "
                f"for {late} late customers"
            )
        expected = late * LATE_PER_CUSTOMER
        if after.get("late_events") != expected:
            problems.append(f"the rerun saw {after.get('late_events')} late events of {expected}")
        return problems

    def report(self, target: Target, runs: dict[str, Run], late: int) -> None:
        rows = []
        for key, label in (
            ("floor", _floor_label(target.dialect)),
            ("full", "neruba run bill (full, --finalize)"),
            ("again", "neruba run bill (rerun, no change)"),
            ("late", f"neruba run bill (rerun, {late} customers late)"),
            ("startup", "(info) neruba start-up: db current"),
        ):
            run = runs[key]
            rows.append(
                [label, fmt_seconds(run.seconds), fmt_cpu(run.cpu_seconds), fmt_mb(run.peak_rss_mb)]
            )
        customers, events = len(self.inputs.customers), self.args.events
        print()
        print(
            f"{customers:,} customers, {events:,} events, period {self.inputs.period}, "
            f"{target.dialect}"
        )
        print_table(["measurement", "seconds", "CPU s", "peak RSS MB"], rows)
        print("(seconds: wall clock of the whole command, start-up included; CPU s: its user +")
        print(" system time, the rest is waiting for the database; peak RSS: its own high-water)")
        if target.dialect == "sqlite":
            print("(SQLite floor: quantity is stored as text; SUM reads it as floats, inexact)")

        full, floor = runs["full"].seconds, runs["floor"].seconds
        ratios = []
        ratio = full / floor
        ratios.append(
            [
                "full run / floor",
                f"{ratio:.2f}x",
                f"<= {TARGET_FULL_OVER_FLOOR}x",
                verdict(ratio <= TARGET_FULL_OVER_FLOOR),
            ]
        )
        ratio = runs["late"].seconds / full
        ratios.append(
            [
                "rerun after 1% late / full run",
                f"{ratio:.3f}x",
                f"<= {TARGET_LATE_OVER_FULL}x",
                verdict(ratio <= TARGET_LATE_OVER_FULL),
            ]
        )
        ratio = runs["again"].seconds / full
        ratios.append(["rerun, no change / full run", f"{ratio:.3f}x", "(none)", ""])
        # For reading small runs, where start-up is much of every command: the same ratios
        # with the start-up of `db current` taken off each command.
        startup = runs["startup"].seconds
        for key, label in (("late", "rerun after 1% late"), ("again", "rerun, no change")):
            ratio = max(0.0, runs[key].seconds - startup) / max(1e-9, full - startup)
            ratios.append([f"(info) {label} / full, less start-up", f"{ratio:.3f}x", "", ""])
        print()
        print_table(["ratio", "measured", "target", ""], ratios)


def bench(args: argparse.Namespace, folder: Path) -> None:
    started = time.perf_counter()
    inputs = generate(folder, args.customers, args.events)
    size_mb = inputs.events.stat().st_size / 1e6
    print(
        f"generated {args.customers:,} customers and {args.events:,} events ({size_mb:,.0f} MB) "
        f"for {inputs.period} in {time.perf_counter() - started:.1f}s"
    )
    runner = Bench(args, folder, inputs)
    target = new_target(args, folder, "bench")
    try:
        runner.measure(target)
    finally:
        drop_target(target)
    if args.profile:
        target = new_target(args, folder, "profile")
        try:
            profile(runner, target, args.profile.resolve(), args.profile_top)
        finally:
            drop_target(target)


def profile(runner: Bench, target: Target, output: Path, top: int) -> None:
    """One more full run, on a fresh database set up the same way, under cProfile."""
    import pstats

    runner.setup(target)
    print(f"\nprofiling a full run bill on a fresh database ({target.dialect}) ...", flush=True)
    run = runner.bill("run bill under cProfile", target.url, ("-m", "cProfile", "-o", str(output)))
    print(f"{run.seconds:.2f}s under cProfile; profile written to {output}")
    print_profile(pstats.Stats(str(output)), top)


def print_profile(stats: Any, top: int) -> None:
    """Three views: functions by own time; neruba's own functions (services, db, domain) by
    cumulative time, where the run's phases show; and the time spent in SQLAlchemy's
    `Connection.execute` (the database round trips) per neruba caller."""
    total = stats.total_tt
    print(f"total {total:.2f}s in {stats.total_calls:,} calls")

    def where(path: str, line: int, name: str) -> str:
        if "neruba_cli/" in path:
            return f"{path.split('neruba_cli/', 1)[1]}:{line}({name})"
        return f"{Path(path).name}:{line}({name})" if line else name

    entries = [
        (path, line, name, calls, own, cumulative, callers)
        for (path, line, name), (_cc, calls, own, cumulative, callers) in stats.stats.items()
    ]
    ours = [
        e
        for e in entries
        if "neruba_cli/" in e[0] and "neruba_cli/cli/" not in e[0] and "__main__" not in e[0]
    ]
    executes = [
        e
        for e in entries
        if e[2] == "execute" and e[0].replace("\\", "/").endswith("sqlalchemy/engine/base.py")
    ]
    by_caller: dict[str, list[float]] = {}
    for *_rest, callers in executes:
        for (path, line, name), (_cc, calls, _own, cumulative) in callers.items():
            slot = by_caller.setdefault(where(path, line, name), [0, 0.0])
            slot[0] += calls
            slot[1] += cumulative
    views = (
        ("own time (tottime)", sorted(entries, key=lambda e: -e[4])),
        ("cumulative time, neruba_cli services/db/domain", sorted(ours, key=lambda e: -e[5])),
    )
    for title, pool in views:
        print(f"\ntop {top} by {title}:")
        rows = [
            [where(path, line, name), f"{calls:,}", f"{own:.3f}", f"{cumulative:.3f}"]
            for path, line, name, calls, own, cumulative, _callers in pool[:top]
        ]
        print_table(["function", "calls", "tottime s", "cumtime s"], rows)
    print("\ntime in Connection.execute (SQL round trips), by caller:")
    rows = [
        [caller, f"{int(calls):,}", f"{seconds:.3f}"]
        for caller, (calls, seconds) in sorted(by_caller.items(), key=lambda kv: -kv[1][1])[:top]
    ]
    print_table(["caller", "statements", "seconds"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time `neruba run bill` against a raw GROUP BY floor on the same database."
    )
    parser.add_argument("--customers", type=int, default=10_000, help="default 10,000")
    parser.add_argument("--events", type=int, default=1_000_000, help="default 1,000,000")
    parser.add_argument("--large", action="store_true", help="5,000,000 events")
    parser.add_argument(
        "--db",
        help="a MariaDB/MySQL or PostgreSQL URL; the bench creates and drops its own database "
        "there (default: a SQLite file in the work folder)",
    )
    parser.add_argument("--keep", type=Path, help="work in DIR and keep it (inputs, SQLite files)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="then set up a fresh database the same way, run a full `run bill` under cProfile, "
        "write the profile to FILE and print its top functions",
    )
    parser.add_argument("--profile-top", type=int, default=15, help=argparse.SUPPRESS)
    parser.add_argument("--floor-worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.floor_worker:
        floor_worker(*args.floor_worker)
        return 0
    if args.large:
        args.events = 5_000_000
    if args.customers < 1 or args.events < 1:
        parser.error("--customers and --events must be at least 1")

    names = ("bench.db", "profile.db", "neruba.toml")
    return in_work_folder(
        args.keep, "neruba-bench-billing-", names, lambda folder: bench(args, folder)
    )


if __name__ == "__main__":
    sys.exit(main())
