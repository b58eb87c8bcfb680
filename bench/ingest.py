"""Ingest benchmark: `neruba ingest` against a floor and a reference tool, on one generated file.

    python bench/ingest.py [--events N] [--db URL] [--keep DIR] [--profile FILE]

Generates N events (default 1,000,000) in Neruba's event format, sets up a fresh
database through the real CLI (`python -m neruba_cli ...`), and times, in the same run on the
same file, each as its own subprocess:

  neruba ingest           the first import of the file
  neruba ingest again     the same file again: every line a duplicate
  floor                   the physical minimum that still does the job: orjson parse of each line
                          and the raw driver storing it, skipping keys already stored, into the
                          leanest table that holds an event: an integer primary key, integer
                          project and customer ids (the customer's from a dict of the customers
                          file), key, meter, time, quantity and properties, and one unique index
                          (project, idempotency key); no validation; 10,000 rows a transaction.
                          SQLite: `executemany` of `INSERT OR IGNORE` (WAL); MariaDB: PyMySQL's
                          multi-row `INSERT IGNORE`; PostgreSQL: COPY into a temporary table,
                          then `INSERT ... SELECT ... ON CONFLICT DO NOTHING`
  sqlite-utils            `sqlite-utils insert DB events FILE --nl --pk idempotency_key`
                          (SQLite only; installed into this interpreter with pip when missing)

Seconds are wall-clock time of the whole subprocess (start-up included); CPU seconds its user
+ system time (the rest is waiting for the disk or the database server). Peak RSS is the
kernel's high-water mark for that one subprocess (Linux `ru_maxrss`), read from the rusage
that `os.wait4` returns when a small launcher reaps it: exact, no polling, not mixed up with
other children as cumulative `getrusage(RUSAGE_CHILDREN)` is, and not inflated by this
script's own size (see LAUNCHER).

The targets are printed beside the measured ratios; they are goals, never asserted: the exit
status is 0 unless a step failed.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import random
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

BATCH = 10_000  # rows per floor transaction
CUSTOMERS = 1000
PROJECT = "bench"
FLOOR_TABLE = "floor_events"
FLOOR_COLUMNS = (
    "project_id",
    "idempotency_key",
    "customer_id",
    "meter",
    "ts",
    "quantity",
    "properties",
)
FLOOR_PROJECT = 1  # the lean table's integer project id

CATALOG = """\
# Written by bench/ingest.py: three meters, no plans.

[[meters]]
code = "api_calls"
aggregation = "count"

[[meters]]
code = "tokens"
aggregation = "sum"

[[meters]]
code = "storage_gb"
aggregation = "sum"
"""

# issue targets: ingest <= 3x the lean floor on SQLite and <= 2x on the servers, re-ingest
# (every line a duplicate) <= 1.5x, peak RSS < 200 MB
TARGETS_SQLITE = {"floor": 3.0, "sqlite_utils": 0.25, "reingest": 1.5}
TARGETS_SERVER = {"events_per_s": 50_000, "floor": 2.0, "reingest": 1.5}
TARGET_RSS_MB = 200


# --------------------------------------------------------------------------------------------
# Measuring one subprocess


@dataclass
class Run:
    label: str
    seconds: float
    peak_rss_mb: float | None
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float | None = None  # user + system: what is left of `seconds` is waiting


# Each measured command runs under this launcher, a bare interpreter (`python -S`, about 8 MB)
# that forks, execs the command and reaps it with os.wait4. A child's ru_maxrss starts from the
# resident size of whoever forked it (Linux carries the old address space's high-water mark
# across exec), so measuring from this script, which holds SQLAlchemy and the generator's
# leftovers, would report at least this script's size; from the launcher, the figure is
# max(launcher, command), and every command measured here is larger than the launcher.
LAUNCHER = r"""
import os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
code = os.waitstatus_to_exitcode(status)
scale = 1024 * 1024 if sys.platform == "darwin" else 1024
with open(report, "w") as handle:
    cpu = usage.ru_utime + usage.ru_stime
    handle.write(f"{seconds} {usage.ru_maxrss / scale} {code} {cpu}")
"""


def run_measured(label: str, argv: list[str], *, cwd: Path, env: dict[str, str]) -> Run:
    """Run argv to completion: its wall time and its own peak RSS (see LAUNCHER)."""
    with (
        tempfile.TemporaryFile(dir=cwd) as out,
        tempfile.TemporaryFile(dir=cwd) as err,
        tempfile.TemporaryDirectory(dir=cwd) as scratch,
    ):
        report = Path(scratch) / "rusage"
        launcher = [sys.executable, "-S", "-c", LAUNCHER, str(report), *argv]
        code = subprocess.call(launcher, cwd=cwd, env=env, stdout=out, stderr=err)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
        if code != 0 or not report.exists():
            return Run(label, 0.0, None, code or 1, stdout, stderr)
        seconds, peak, child_code, cpu = report.read_text().split()
        return Run(label, float(seconds), float(peak), int(child_code), stdout, stderr, float(cpu))


class StepFailed(Exception):
    pass


def check(run: Run, *, allowed: tuple[int, ...] = (0,)) -> Run:
    if run.returncode not in allowed:
        tail = "\n".join((run.stderr or run.stdout).strip().splitlines()[-15:])
        raise StepFailed(f"{run.label} exited {run.returncode}:\n{tail}")
    return run


# --------------------------------------------------------------------------------------------
# Input generation


def previous_month(now: datetime) -> tuple[datetime, datetime]:
    first_this = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    first_prev = (first_this - timedelta(days=1)).replace(day=1)
    return first_prev, first_this


def generate(folder: Path, events: int, seed: int = 20261) -> tuple[Path, Path, Path]:
    """The catalog, the customers CSV and the events JSONL; deterministic for a seed."""
    rng = random.Random(seed)
    catalog = folder / "catalog.toml"
    catalog.write_text(CATALOG, encoding="utf-8")

    customers = [f"cus_{rng.getrandbits(40):010x}" for _ in range(CUSTOMERS)]
    customers_csv = folder / "customers.csv"
    with customers_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["external_id", "name", "email", "currency", "timezone", "stripe_id"])
        for number, external in enumerate(customers):
            # currency, timezone, stripe_id empty: the project's defaults
            writer.writerow([external, f"Customer {number}", f"c{number}@example.com", "", "", ""])

    # Skewed activity, as in real tenants: a few customers send most events.
    weights = [1.0 / (rank + 1) ** 0.8 for rank in range(CUSTOMERS)]
    chosen = rng.choices(customers, weights=weights, k=events)
    start, end = previous_month(datetime.now(UTC))
    span_ms = int((end - start).total_seconds() * 1000)
    regions = ("eu", "us", "ap")
    endpoints = ("/v1/invoices", "/v1/customers", "/v1/events", "/v1/usage")
    models = ("small", "medium", "large")
    path = folder / "events.jsonl"
    with path.open("wb") as handle:
        lines: list[bytes] = []
        for index in range(events):
            # roughly in time order, as emitters send them, with jitter
            base = span_ms * index // events
            offset = min(span_ms - 1, max(0, base + rng.randint(-60_000, 60_000)))
            moment = start + timedelta(milliseconds=offset)
            stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
            pick = rng.random()
            event: dict[str, Any] = {
                "idempotency_key": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "customer": chosen[index],
            }
            if pick < 0.6:
                event["meter"] = "api_calls"
                event["timestamp"] = stamp
                if rng.random() < 0.5:
                    event["quantity"] = 1
                event["properties"] = {
                    "region": regions[index % 3],
                    "endpoint": endpoints[index % 4],
                }
            elif pick < 0.9:
                tokens = rng.randint(1, 20_000)
                event["meter"] = "tokens"
                event["timestamp"] = stamp
                event["quantity"] = tokens if rng.random() < 0.5 else str(tokens)
                event["properties"] = {"model": models[index % 3]}
            else:
                event["meter"] = "storage_gb"
                event["timestamp"] = stamp
                event["quantity"] = f"{rng.randint(0, 5000) / 8:.3f}"
                event["properties"] = {"bucket": f"b{index % 17}", "region": regions[index % 3]}
            lines.append(orjson.dumps(event))
            if len(lines) >= 10_000:
                handle.write(b"\n".join(lines) + b"\n")
                lines = []
        if lines:
            handle.write(b"\n".join(lines) + b"\n")
    return catalog, customers_csv, path


# --------------------------------------------------------------------------------------------
# Databases


@dataclass
class Target:
    dialect: str  # sqlite | mariadb | postgresql
    url: str  # the neruba database URL
    floor_url: str  # where the floor writes (a SQLite file, or the bench database)
    drop: Any = None  # callable that drops a server database


def server_target(admin_url: str) -> Target:
    """A new database on the server named by admin_url, like tests/conftest.py makes them."""
    from sqlalchemy import create_engine, text

    from neruba_cli.db.engine import parse_database_url

    parsed = parse_database_url(admin_url)
    backend = parsed.get_backend_name()
    dialect = "postgresql" if backend == "postgresql" else "mariadb"
    name = f"neruba_bench_{secrets.token_hex(4)}"
    admin = create_engine(parsed, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as conn:
            suffix = " CHARACTER SET utf8mb4" if dialect == "mariadb" else ""
            conn.execute(text(f"CREATE DATABASE {name}{suffix}"))
    finally:
        admin.dispose()

    def drop() -> None:
        engine = create_engine(
            parsed, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
        )
        force = " WITH (FORCE)" if dialect == "postgresql" else ""
        try:
            with engine.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
        finally:
            engine.dispose()

    url = parsed.set(database=name).render_as_string(hide_password=False)
    return Target(dialect, url, url, drop)


def create_floor_table(target: Target) -> None:
    """The lean table: what an event holds, integer ids, one unique index; no foreign keys."""
    from sqlalchemy import (
        BigInteger,
        Column,
        DateTime,
        Integer,
        MetaData,
        Numeric,
        String,
        Table,
        Text,
        UniqueConstraint,
        create_engine,
    )
    from sqlalchemy.dialects import mysql

    from neruba_cli.db.engine import create_db_engine
    from neruba_cli.db.schema import MYSQL_TABLE

    table = Table(
        FLOOR_TABLE,
        MetaData(),
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("project_id", Integer, nullable=False),
        Column("idempotency_key", String(255), nullable=False),
        Column("customer_id", Integer, nullable=False),
        Column("meter", String(64), nullable=False),
        Column("ts", DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")),
        Column("quantity", Numeric(38, 12), nullable=False),
        Column("properties", Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")),
        UniqueConstraint("project_id", "idempotency_key"),
        **MYSQL_TABLE,
    )
    if target.dialect == "sqlite":
        engine = create_engine(target.floor_url)
    else:
        engine = create_db_engine(target.floor_url)
    try:
        table.create(engine)
    finally:
        engine.dispose()
    if target.dialect == "sqlite":  # the same journal mode neruba's engine sets
        path = target.floor_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA journal_mode=WAL")


def count_rows(target: Target, url: str, table: str) -> int:
    from sqlalchemy import create_engine, text

    from neruba_cli.db.engine import create_db_engine

    engine = create_engine(url) if target.dialect == "sqlite" else create_db_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# The floor (runs as a subprocess of this script: `--floor-worker DIALECT URL FILE`)


def floor_customers(customers_csv: str) -> dict[str, int]:
    """External id -> integer id (its line in the customers file): the floor's lookup."""
    with open(customers_csv, newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        next(rows)
        return {row[0]: number for number, row in enumerate(rows, 1)}


def floor_rows(path: str, customers: dict[str, int], batch: int) -> Any:
    """Lists of row tuples: orjson parse and the columns, nothing validated."""
    rows: list[tuple[Any, ...]] = []
    dumps = orjson.dumps
    loads = orjson.loads
    with open(path, "rb") as handle:
        for line in handle:
            obj = loads(line)
            stamp = obj["timestamp"]
            rows.append(
                (
                    FLOOR_PROJECT,
                    obj["idempotency_key"],
                    customers[obj["customer"]],
                    obj["meter"],
                    stamp[:-1] if stamp.endswith("Z") else stamp,
                    str(obj.get("quantity", 1)),
                    dumps(obj.get("properties") or {}).decode(),
                )
            )
            if len(rows) >= batch:
                yield rows
                rows = []
    if rows:
        yield rows


def floor_worker(dialect: str, url: str, path: str, customers_csv: str) -> None:
    customers = floor_customers(customers_csv)
    names = ", ".join(FLOOR_COLUMNS)
    if dialect == "sqlite":
        marks = ", ".join("?" for _ in FLOOR_COLUMNS)
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        statement = f"INSERT OR IGNORE INTO {FLOOR_TABLE} ({names}) VALUES ({marks})"
        for rows in floor_rows(path, customers, BATCH):
            conn.execute("BEGIN")
            conn.executemany(statement, rows)
            conn.execute("COMMIT")
        conn.close()
        return
    if dialect == "mariadb":
        conn = pymysql_connect(url, autocommit=False)
        marks = ", ".join("%s" for _ in FLOOR_COLUMNS)
        statement = f"INSERT IGNORE INTO {FLOOR_TABLE} ({names}) VALUES ({marks})"
        cursor = conn.cursor()
        for rows in floor_rows(path, customers, BATCH):
            cursor.executemany(statement, rows)  # PyMySQL sends multi-row statements
            conn.commit()
        conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=False) as pg, pg.cursor() as cursor:
        cursor.execute(
            "CREATE TEMPORARY TABLE floor_stage (project_id integer, idempotency_key text, "
            "customer_id integer, meter text, ts timestamp, quantity numeric, properties text) "
            "ON COMMIT DELETE ROWS"
        )
        merge = (
            f"INSERT INTO {FLOOR_TABLE} ({names}) SELECT {names} FROM floor_stage "
            "ON CONFLICT (project_id, idempotency_key) DO NOTHING"
        )
        for rows in floor_rows(path, customers, BATCH):
            with cursor.copy(f"COPY floor_stage ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cursor.execute(merge)
            pg.commit()


def pymysql_connect(url: str, *, autocommit: bool) -> Any:
    """A PyMySQL connection from a mysql:// URL (no driver suffix)."""
    import pymysql

    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname or "localhost",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=parts.path.lstrip("/"),
        charset="utf8mb4",
        autocommit=autocommit,
    )


def plain_url(url: str) -> str:
    """The URL with its driver suffix removed (psycopg and the worker's parser want that)."""
    scheme, rest = url.split("://", 1)
    scheme = scheme.split("+", 1)[0]
    if scheme in ("mysql", "mariadb"):
        scheme = "mysql"
    return f"{scheme}://{rest}"


# --------------------------------------------------------------------------------------------
# sqlite-utils


def sqlite_utils_command() -> list[str] | None:
    """How to run sqlite-utils with this interpreter, installing it with pip if missing."""
    script = Path(sys.executable).parent / "sqlite-utils"
    if script.exists():
        return [str(script)]
    if importlib.util.find_spec("sqlite_utils") is not None:
        return [sys.executable, "-m", "sqlite_utils"]
    print(f"sqlite-utils is not installed: installing it with {sys.executable} -m pip ...")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "sqlite-utils"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        print("could not install sqlite-utils; skipping it:")
        print("\n".join(result.stderr.strip().splitlines()[-5:]))
        return None
    importlib.invalidate_caches()
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "sqlite_utils"]


# --------------------------------------------------------------------------------------------
# Report


def fmt_seconds(value: float) -> str:
    return f"{value:.2f}"


def fmt_cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_rate(events: int, seconds: float) -> str:
    return f"{events / seconds:,.0f}" if seconds > 0 else "-"


def fmt_mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_table(headers: list[str], rows: list[list[str]], *, left: int = 1) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        out = []
        for index, (cell, width) in enumerate(zip(cells, widths, strict=True)):
            out.append(str(cell).ljust(width) if index < left else str(cell).rjust(width))
        return "  ".join(out).rstrip()

    print(line(headers))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print(line(row))


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def report(
    target: Target,
    events: int,
    runs: dict[str, Run],
    startup: Run | None,
    sqlite_utils_note: str | None,
) -> None:
    measured = []
    for key, label in (
        ("first", "neruba ingest (first import)"),
        ("again", "neruba ingest (again: all duplicates)"),
        ("floor", _floor_label(target.dialect)),
        ("sqlite_utils", "sqlite-utils insert --nl --pk idempotency_key"),
    ):
        if key in runs:
            run = runs[key]
            measured.append(
                [
                    label,
                    fmt_seconds(run.seconds),
                    fmt_cpu(run.cpu_seconds),
                    fmt_rate(events, run.seconds),
                    fmt_mb(run.peak_rss_mb),
                ]
            )
    if startup is not None:
        measured.append(
            [
                "(info) neruba start-up: db current",
                fmt_seconds(startup.seconds),
                fmt_cpu(startup.cpu_seconds),
                "-",
                fmt_mb(startup.peak_rss_mb),
            ]
        )
    print()
    print(f"{events:,} events, {target.dialect}")
    print_table(["measurement", "seconds", "CPU s", "events/s", "peak RSS MB"], measured)
    print("(seconds: wall clock of the whole command; CPU s: its user + system time, the rest is")
    print(" waiting for the disk or the database server; peak RSS: the command's own high-water)")
    if sqlite_utils_note:
        print(sqlite_utils_note)

    first, again, floor = runs["first"], runs["again"], runs["floor"]
    ratios: list[list[str]] = []
    if target.dialect == "sqlite":
        ratio = first.seconds / floor.seconds
        limit = TARGETS_SQLITE["floor"]
        ratios.append(["neruba / floor", f"{ratio:.2f}x", f"<= {limit}x", verdict(ratio <= limit)])
        if "sqlite_utils" in runs:
            ratio = first.seconds / runs["sqlite_utils"].seconds
            limit = TARGETS_SQLITE["sqlite_utils"]
            ratios.append(
                ["neruba / sqlite-utils", f"{ratio:.2f}x", f"<= {limit}x", verdict(ratio <= limit)]
            )
        ratio = again.seconds / floor.seconds
        limit = TARGETS_SQLITE["reingest"]
        ratios.append(
            ["re-ingest / floor", f"{ratio:.2f}x", f"<= {limit}x", verdict(ratio <= limit)]
        )
    else:
        rate = events / first.seconds
        goal = TARGETS_SERVER["events_per_s"]
        ratios.append(["neruba events/s", f"{rate:,.0f}", f">= {goal:,}", verdict(rate >= goal)])
        ratio = first.seconds / floor.seconds
        limit = TARGETS_SERVER["floor"]
        ratios.append(
            ["neruba / raw floor", f"{ratio:.2f}x", f"<= {limit}x", verdict(ratio <= limit)]
        )
        ratio = again.seconds / floor.seconds
        limit = TARGETS_SERVER["reingest"]
        ratios.append(
            ["re-ingest / raw floor", f"{ratio:.2f}x", f"<= {limit}x", verdict(ratio <= limit)]
        )
        rate = events / again.seconds
        ratios.append(["re-ingest events/s", f"{rate:,.0f}", "(none)", ""])
    for key, label in (("first", "peak RSS, first import"), ("again", "peak RSS, re-ingest")):
        peak = runs[key].peak_rss_mb
        if peak is not None:
            ratios.append(
                [label, f"{peak:.0f} MB", f"< {TARGET_RSS_MB} MB", verdict(peak < TARGET_RSS_MB)]
            )
    print()
    print_table(["ratio", "measured", "target", ""], ratios)


def _floor_label(dialect: str) -> str:
    return {
        "sqlite": "floor: orjson + sqlite3 INSERT OR IGNORE, lean table",
        "mariadb": "floor: orjson + pymysql multi-row INSERT IGNORE, lean table",
        "postgresql": "floor: orjson + psycopg COPY, INSERT ON CONFLICT, lean table",
    }[dialect]


# --------------------------------------------------------------------------------------------
# Main


def neruba_env(folder: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NERUBA_")}
    # An installed package has its modules' bytecode; a checkout run with this set would
    # compile every module again in each timed command (about 0.2 s of start-up). The
    # untimed set-up commands write it.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["XDG_CONFIG_HOME"] = str(folder / "xdg")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Neruba:
    """The real CLI, run as subprocesses in the work folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = neruba_env(folder)

    def run(self, label: str, *argv: str, prefix: tuple[str, ...] = ()) -> Run:
        command = [sys.executable, *prefix, "-m", "neruba_cli", *argv]
        return check(run_measured(label, command, cwd=self.folder, env=self.env))

    def setup(self, url: str, catalog: Path, customers_csv: Path) -> Run:
        """A migrated database with the project, its customers and its catalog; the last
        step's run (`db current`: start-up and nothing else)."""
        common = ("--db", url, "--quiet")
        in_project = (*common, "--project", PROJECT)
        self.run("neruba init", "init", *common)
        self.run("neruba db upgrade", "db", "upgrade", *common)
        self.run("neruba project create", "project", "create", PROJECT, *common)
        self.run("neruba customer import", "customer", "import", str(customers_csv), *in_project)
        self.run("neruba catalog apply", "catalog", "apply", str(catalog), *in_project)
        return self.run("neruba db current", "db", "current", *common, "--json")

    def ingest(self, label: str, url: str, path: Path, prefix: tuple[str, ...] = ()) -> Run:
        argv = ("ingest", str(path), "--db", url, "--quiet", "--project", PROJECT, "--json")
        return self.run(label, *argv, prefix=prefix)


def new_target(args: argparse.Namespace, folder: Path, name: str) -> Target:
    if args.db:
        target = server_target(args.db)
        print(f"created database {target.url.rsplit('/', 1)[-1]} ({target.dialect})")
        return target
    url = f"sqlite:///{folder / f'{name}.db'}"
    return Target("sqlite", url, f"sqlite:///{folder / 'floor.db'}")


def drop_target(target: Target) -> None:
    if target.drop is not None:
        target.drop()
        print(f"dropped database {target.url.rsplit('/', 1)[-1]}")


def bench(args: argparse.Namespace, folder: Path) -> None:
    events = args.events
    started = time.perf_counter()
    catalog, customers_csv, events_file = generate(folder, events)
    size_mb = events_file.stat().st_size / 1e6
    print(
        f"generated {events:,} events ({size_mb:,.0f} MB) in "
        f"{time.perf_counter() - started:.1f}s: {events_file}"
    )
    neruba = Neruba(folder)
    target = new_target(args, folder, "bench")
    try:
        _bench_on(args, folder, neruba, target, events_file, catalog, customers_csv)
    finally:
        drop_target(target)
    if args.profile:
        target = new_target(args, folder, "profile")
        try:
            _profile(args, neruba, target, events_file, catalog, customers_csv)
        finally:
            drop_target(target)


def _bench_on(
    args: argparse.Namespace,
    folder: Path,
    neruba: Neruba,
    target: Target,
    events_file: Path,
    catalog: Path,
    customers_csv: Path,
) -> None:
    startup = neruba.setup(target.url, catalog, customers_csv)
    create_floor_table(target)
    print("set up: init, db upgrade, project create, customer import, catalog apply")

    runs: dict[str, Run] = {}
    for key, label in (("first", "neruba ingest (first)"), ("again", "neruba ingest (again)")):
        print(f"timing {label} ...", flush=True)
        runs[key] = neruba.ingest(label, target.url, events_file)
    floor_argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--floor-worker",
        target.dialect,
        target.floor_url if target.dialect == "sqlite" else plain_url(target.floor_url),
        str(events_file),
        str(customers_csv),
    ]
    print("timing floor ...", flush=True)
    runs["floor"] = check(run_measured("floor", floor_argv, cwd=folder, env=neruba.env))

    sqlite_utils_note = None
    if target.dialect == "sqlite":
        command = None if args.skip_sqlite_utils else sqlite_utils_command()
        if command is None:
            sqlite_utils_note = "sqlite-utils: skipped"
        else:
            print("timing sqlite-utils ...", flush=True)
            argv = [
                *command,
                "insert",
                str(folder / "sqlite_utils.db"),
                "events",
                str(events_file),
                "--nl",
                "--pk",
                "idempotency_key",
            ]
            runs["sqlite_utils"] = check(
                run_measured("sqlite-utils", argv, cwd=folder, env=neruba.env)
            )

    _sanity(target, args.events, runs)
    report(target, args.events, runs, startup, sqlite_utils_note)


def _profile(
    args: argparse.Namespace,
    neruba: Neruba,
    target: Target,
    events_file: Path,
    catalog: Path,
    customers_csv: Path,
) -> None:
    """One more first import, into a fresh database, under cProfile (slower than unprofiled)."""
    import pstats

    neruba.setup(target.url, catalog, customers_csv)
    output = args.profile.resolve()
    print(f"\nprofiling a first import into a fresh database ({target.dialect}) ...", flush=True)
    prefix = ("-m", "cProfile", "-o", str(output))
    run = neruba.ingest("neruba ingest under cProfile", target.url, events_file, prefix)
    print(f"{run.seconds:.2f}s under cProfile; profile written to {output}")
    print_profile(pstats.Stats(str(output)), args.profile_top)


def print_profile(stats: Any, top: int) -> None:
    """Top functions by own time and by cumulative time. The cumulative list leaves out the
    CLI's call chain down to the import loop (main, Typer, Click, runtime wrappers: each
    within 3% of the whole), which would otherwise fill it."""
    entries = []
    for (path, line, name), (_cc, calls, own, cumulative, _callers) in stats.stats.items():
        where = f"{Path(path).name}:{line}({name})" if line else name
        entries.append((where, calls, own, cumulative))
    total = stats.total_tt
    print(f"total {total:.2f}s in {stats.total_calls:,} calls")
    chain = [entry for entry in entries if entry[3] >= 0.97 * total]
    for title, key, pool in (
        ("own time (tottime)", 2, entries),
        ("cumulative time, below the CLI's call chain", 3, [e for e in entries if e not in chain]),
    ):
        print(f"\ntop {top} by {title}:")
        rows = [
            [where, f"{calls:,}", f"{own:.3f}", f"{cumulative:.3f}"]
            for where, calls, own, cumulative in sorted(pool, key=lambda e: -e[key])[:top]
        ]
        print_table(["function", "calls", "tottime s", "cumtime s"], rows)


def _sanity(target: Target, events: int, runs: dict[str, Run]) -> None:
    """Every contender stored every event once; say so, or say what differed."""
    first = orjson.loads(runs["first"].stdout)
    again = orjson.loads(runs["again"].stdout)
    notes = [
        f"first import accepted {first['accepted']:,} (reported {first['seconds']}s in-process)",
        f"re-ingest duplicates {again['duplicates']:,} (reported {again['seconds']}s in-process)",
        f"floor stored {count_rows(target, target.floor_url, FLOOR_TABLE):,}",
    ]
    problems = []
    if first["accepted"] != events:
        problems.append(f"first import accepted {first['accepted']} of {events}")
    if again["duplicates"] != events:
        problems.append(f"re-ingest counted {again['duplicates']} duplicates of {events}")
    print("checks: " + "; ".join(notes))
    for problem in problems:
        print(f"WARNING: {problem}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time `neruba ingest` against a raw-driver floor and sqlite-utils."
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="default 1,000,000")
    parser.add_argument(
        "--db",
        help="a MariaDB/MySQL or PostgreSQL URL; the bench creates and drops its own database "
        "there (default: a SQLite file in the work folder)",
    )
    parser.add_argument(
        "--keep", type=Path, help="work in DIR and keep it (events file, SQLite databases)"
    )
    parser.add_argument("--skip-sqlite-utils", action="store_true", help="do not run sqlite-utils")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="then run one more first import into a fresh database under cProfile, write the "
        "profile to FILE and print its top functions",
    )
    parser.add_argument("--profile-top", type=int, default=15, help=argparse.SUPPRESS)
    parser.add_argument("--floor-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.floor_worker:
        floor_worker(*args.floor_worker)
        return 0
    if args.events < 1:
        parser.error("--events must be at least 1")

    names = ("bench.db", "floor.db", "sqlite_utils.db", "profile.db", "neruba.toml")
    return in_work_folder(args.keep, "neruba-bench-", names, lambda folder: bench(args, folder))


def in_work_folder(
    keep: Path | None, prefix: str, names: tuple[str, ...], work: Callable[[Path], None]
) -> int:
    """Run `work` in `keep` (its old databases removed first) or in a temporary folder that
    goes away afterwards; a failed step is reported on one line, exit status 1."""
    if keep:
        folder = keep.resolve()
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            for suffix in ("", "-wal", "-shm"):
                (folder / f"{name}{suffix}").unlink(missing_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        work(folder)
    except StepFailed as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"kept {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
