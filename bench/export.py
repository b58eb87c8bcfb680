"""Export benchmark: `neruba export events|usage` against a floor measured in the same run.

    python bench/export.py [--events N] [--db URL] [--keep DIR]

Generates N events (default 1,000,000) with bench/ingest.py's generator (1,000 customers,
three meters, one or two properties per event), sets up a fresh database through the real CLI
and imports them (`neruba ingest`, not timed), then times, each as its own subprocess:

  floor                   the raw driver (sqlite3, PyMySQL with an unbuffered cursor, psycopg
                          with a server-side cursor) streaming the same rows neruba exports:
                          SELECT e.idempotency_key, c.external_id, e.meter, e.ts, e.quantity,
                          e.properties FROM events e JOIN customers c ON c.id = e.customer_id
                          WHERE e.project_id = ? ORDER BY e.id, 2,000 rows a fetch, nothing
                          formatted or written
  export events (csv)     `neruba export events --format csv -o FILE` (a first pass lists the
                          property names for the header)
  export events (jsonl)   `neruba export events --format jsonl -o FILE`
  export events (jsonl.gz) the same, gzip-compressed
  export usage (csv)      `neruba export usage -o FILE`: a GROUP BY customer, meter and day

Measurement (wall seconds, CPU seconds, peak RSS through a small launcher) is bench/ingest.py's:
see its docstring and bench/README.md. Nothing is asserted: the ratios are printed.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

import orjson
from ingest import (  # bench/ingest.py: the same measuring and database set-up
    PROJECT,
    Neruba,
    Run,
    Target,
    check,
    drop_target,
    fmt_cpu,
    fmt_mb,
    fmt_rate,
    fmt_seconds,
    generate,
    in_work_folder,
    new_target,
    plain_url,
    print_table,
    run_measured,
)

FETCH = 2000
FLOOR_SQL = (
    "SELECT e.idempotency_key, c.external_id, e.meter, e.ts, e.quantity, e.properties "
    "FROM events e JOIN customers c ON c.id = e.customer_id "
    "WHERE {project} = {mark} ORDER BY e.id"
)
EXPORTS = (
    ("csv", "export events (csv)", ("events", "--format", "csv", "-o", "events.csv")),
    ("jsonl", "export events (jsonl)", ("events", "--format", "jsonl", "-o", "events.jsonl")),
    ("gzip", "export events (jsonl.gz)", ("events", "-o", "events.jsonl.gz")),
    ("usage", "export usage (csv)", ("usage", "-o", "usage.csv")),
)


def floor_worker(dialect: str, url: str) -> None:
    """Stream every exported row through the raw driver; print how many there were."""
    rows = 0
    if dialect == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        project = conn.execute("SELECT id FROM projects WHERE slug = ?", (PROJECT,)).fetchone()[0]
        # `+e.project_id`: the rowid order neruba's export reads in (no sort before the first row)
        cursor = conn.execute(FLOOR_SQL.format(project="+e.project_id", mark="?"), (project,))
        while batch := cursor.fetchmany(FETCH):
            rows += len(batch)
    elif dialect == "postgresql":
        import psycopg

        with psycopg.connect(url) as conn:
            project = conn.execute("SELECT id FROM projects WHERE slug = %s", (PROJECT,))
            project_id = project.fetchone()[0]  # type: ignore[index]
            with conn.cursor(name="floor") as cursor:
                cursor.itersize = FETCH
                cursor.execute(FLOOR_SQL.format(project="e.project_id", mark="%s"), (project_id,))
                while batch := cursor.fetchmany(FETCH):
                    rows += len(batch)
    else:
        import pymysql
        import pymysql.cursors
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        conn = pymysql.connect(
            host=parsed.host or "127.0.0.1",
            port=parsed.port or 3306,
            user=parsed.username or "root",
            password=parsed.password or "",
            database=parsed.database,
            cursorclass=pymysql.cursors.SSCursor,
        )
        with conn.cursor() as cursor:
            cursor.execute("SELECT id FROM projects WHERE slug = %s", (PROJECT,))
            project_id = cursor.fetchone()[0]  # type: ignore[index]
        with conn.cursor() as cursor:
            cursor.execute(FLOOR_SQL.format(project="e.project_id", mark="%s"), (project_id,))
            while batch := cursor.fetchmany(FETCH):
                rows += len(batch)
        conn.close()
    print(rows)


def bench(args: argparse.Namespace, folder: Path) -> None:
    started = time.perf_counter()
    catalog, customers_csv, events_file = generate(folder, args.events)
    print(f"generated {args.events:,} events in {time.perf_counter() - started:.1f}s")
    neruba = Neruba(folder)
    target = new_target(args, folder, "bench")
    try:
        _bench_on(args, folder, neruba, target, events_file, catalog, customers_csv)
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
    print("importing the events (not timed) ...", flush=True)
    imported = orjson.loads(neruba.ingest("neruba ingest", target.url, events_file).stdout)
    events = int(imported["accepted"])

    runs: dict[str, Run] = {}
    floor_url = target.url if target.dialect == "sqlite" else plain_url(target.url)
    floor_argv = [sys.executable, str(Path(__file__).resolve()), "--floor-worker",
                  target.dialect, floor_url]  # fmt: skip
    print("timing floor ...", flush=True)
    runs["floor"] = check(run_measured("floor", floor_argv, cwd=folder, env=neruba.env))
    counted = {"floor": int(runs["floor"].stdout.split()[-1])}
    common = ("--db", target.url, "--project", PROJECT, "--quiet", "--json")
    for key, label, argv in EXPORTS:
        print(f"timing {label} ...", flush=True)
        runs[key] = neruba.run(label, "export", *argv, *common)
        counted[key] = int(orjson.loads(runs[key].stdout)["rows"])
    for key, rows in counted.items():
        if key != "usage" and rows != events:
            print(f"WARNING: {key} gave {rows:,} rows, expected {events:,}")
    _report(target, events, runs, startup, counted["usage"], folder)


def _report(
    target: Target, events: int, runs: dict[str, Run], startup: Run, usage_rows: int, folder: Path
) -> None:
    floor = runs["floor"]
    print()
    print(f"{events:,} events on {target.dialect}; neruba start-up alone (`db current`): "
          f"{startup.seconds:.2f} s")  # fmt: skip
    headers = ["measurement", "seconds", "CPU s", "events/s", "peak RSS MB", "vs floor", "MB out"]
    rows = []
    for key, run in runs.items():
        size = {"csv": "events.csv", "jsonl": "events.jsonl", "gzip": "events.jsonl.gz"}.get(key)
        out = f"{(folder / size).stat().st_size / 1e6:,.0f}" if size else "-"
        label = run.label if key != "usage" else f"{run.label}: {usage_rows:,} rows"
        rows.append([
            label,
            fmt_seconds(run.seconds),
            fmt_cpu(run.cpu_seconds),
            fmt_rate(events, run.seconds),
            fmt_mb(run.peak_rss_mb),
            "-" if key == "floor" else f"{run.seconds / floor.seconds:.2f}x",
            out,
        ])  # fmt: skip
    print_table(headers, rows)
    cpu_floor = floor.cpu_seconds or 0.0
    if cpu_floor > 0:
        ratios = ", ".join(
            f"{key} {(run.cpu_seconds or 0) / cpu_floor:.1f}x"
            for key, run in runs.items()
            if key != "floor"
        )
        print(f"\nCPU seconds against the floor's: {ratios}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time `neruba export` against a raw floor.")
    parser.add_argument("--events", type=int, default=1_000_000, help="default 1,000,000")
    parser.add_argument(
        "--db",
        help="a MariaDB/MySQL or PostgreSQL URL; the bench creates and drops its own database "
        "there (default: a SQLite file in the work folder)",
    )
    parser.add_argument("--keep", type=Path, help="work in DIR and keep it")
    parser.add_argument("--floor-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.floor_worker:
        floor_worker(*args.floor_worker)
        return 0
    if args.events < 1:
        parser.error("--events must be at least 1")
    names = (
        "bench.db",
        "neruba.toml",
        "events.csv",
        "events.jsonl",
        "events.jsonl.gz",
        "usage.csv",
    )
    return in_work_folder(args.keep, "neruba-bench-export-", names, lambda f: bench(args, f))


if __name__ == "__main__":
    sys.exit(main())
