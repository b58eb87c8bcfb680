"""HTTP API benchmark: `neruba serve` ingest against a minimal ASGI floor, in one run.

    python bench/api.py [--db sqlite|postgresql|mariadb|URL ...] [--seconds S]
                        [--concurrency C] [--workers W] [--batch-events N] [--json]

For each database (default: SQLite, then PostgreSQL) the bench sets up a fresh database through
the real CLI (a SQLite file in its work folder, or a new `neruba_bench_<random>` database on
the server, dropped at the end): `init`, `db upgrade`, a project with 1,000 customers and a
catalog of three meters, an `ingest` key. It then starts, each on a free port with the same
uvicorn settings and worker count:

  neruba serve            the real command (`python -m neruba_cli serve --workers W`)
  floor                   a raw ASGI callable under uvicorn, no framework and no auth, that
                          parses the JSON body with orjson and inserts it with the raw driver
                          (sqlite3 in autocommit, one psycopg AsyncConnection per concurrent
                          request up to 10 per worker, PyMySQL in autocommit) into the leanest
                          table that does the job: the event's columns with a unique
                          idempotency key (`ON CONFLICT DO NOTHING` / `INSERT IGNORE`), answering
                          `{"status": "accepted" | "duplicate", "idempotency_key"}`

and drives both with the same load generator, a separate process (uvloop, one keep-alive
connection per concurrent request, httptools' response parser: far cheaper per request than
httpx or aiohttp, so that the client is not what limits the servers on a small machine):

  max rate                C connections each posting single events to `POST /v1/events` back
                          to back for S seconds (after a 2 s warm-up): requests/s, p50, p99
  half rate               an open-loop schedule at half of that server's max rate for S
                          seconds, latency counted from each request's scheduled start (so a
                          stalled server is not hidden by the client waiting for it): p50, p99

Then the batch endpoint against the file importer on the same database: N events (default
20,000) generated like bench/ingest.py's are imported by `neruba ingest FILE --json` into a
second project, and posted by the load generator to `POST /v1/events/batch` of the first, 1,000
events a request, two requests at a time: events/s of each (the importer's from the seconds it
reports itself, start-up excluded, and from its wall time).

Each phase also records the CPU seconds of the client, of the server's processes and of the
whole machine (/proc/stat), so the table says how busy the cores were and who used them.

Targets (issue 20), reported as met or missed, never asserted (the exit status is 0 unless a
step failed): single-event throughput >= 0.5x the floor's; p99 < 50 ms at half the max rate;
batch events/s >= 0.5x `neruba ingest`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from ingest import (  # bench/ingest.py: event generation, set-up through the CLI, measuring
    PROJECT,
    Neruba,
    StepFailed,
    Target,
    check,
    count_rows,
    generate,
    plain_url,
    previous_month,
    print_table,
    pymysql_connect,
    run_measured,
    server_target,
    verdict,
)

BENCH = Path(__file__).resolve().parent
SERVERS = {
    "postgresql": "postgresql://postgres@127.0.0.1:5432/postgres",
    "mariadb": "mysql://root@127.0.0.1:3306/test",
}
FLOOR_TABLE = "api_floor_events"
FLOOR_VARIABLE = "BENCH_API_FLOOR"  # the floor app's settings, for each uvicorn worker
FLOOR_POOL = 10  # PostgreSQL connections per floor worker (SQLAlchemy's default pool: 5 + 10)
FILE_PROJECT = "bench-file"
KEY_PREFIX = "api"
WARMUP = 2.0
BATCH_SIZE = 1000
BATCH_CONCURRENCY = 2
START_TIMEOUT = 60.0
TARGET_THROUGHPUT = 0.5
TARGET_P99_MS = 50.0
TARGET_BATCH = 0.5


def say(*parts: object) -> None:
    """Progress lines: on stderr, so that `--json` keeps stdout for its one document."""
    print(*parts, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The floor: a raw ASGI app (`python bench/api.py --floor-serve ...` runs it under uvicorn)


class _SqliteStore:
    def __init__(self, url: str) -> None:
        self.path = url.removeprefix("sqlite:///")
        self.conn: sqlite3.Connection | None = None
        self.sql = (
            f"INSERT INTO {FLOOR_TABLE} (idempotency_key, customer, meter, ts, quantity, "
            "properties) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING"
        )

    async def insert(self, row: tuple[str, ...]) -> bool:
        if self.conn is None:  # the pragmas neruba's engine sets, in autocommit
            self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA busy_timeout=30000")
        return self.conn.execute(self.sql, row).rowcount == 1


class _PostgresStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.idle: asyncio.Queue[Any] | None = None
        self.opened = 0
        self.sql = (
            f"INSERT INTO {FLOOR_TABLE} (idempotency_key, customer, meter, ts, quantity, "
            "properties) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (idempotency_key) DO NOTHING"
        )

    async def insert(self, row: tuple[str, ...]) -> bool:
        import psycopg

        if self.idle is None:
            self.idle = asyncio.Queue()
        if self.idle.empty() and self.opened < FLOOR_POOL:
            self.opened += 1
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        else:
            conn = await self.idle.get()
        try:
            cursor = await conn.execute(self.sql, row)
            return bool(cursor.rowcount == 1)
        finally:
            self.idle.put_nowait(conn)


class _MariadbStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: Any = None
        self.sql = (
            f"INSERT IGNORE INTO {FLOOR_TABLE} (idempotency_key, customer, meter, ts, quantity, "
            "properties) VALUES (%s, %s, %s, %s, %s, %s)"
        )

    async def insert(self, row: tuple[str, ...]) -> bool:
        if self.conn is None:
            self.conn = _pymysql_connect(self.url)
        with self.conn.cursor() as cursor:
            return bool(cursor.execute(self.sql, row) == 1)


def _pymysql_connect(url: str) -> Any:
    return pymysql_connect(url, autocommit=True)


def floor_app() -> Any:
    """The floor's ASGI callable (uvicorn factory): /healthz and POST /v1/events, nothing else."""
    settings = orjson.loads(os.environ[FLOOR_VARIABLE])
    store: Any = {"sqlite": _SqliteStore, "postgresql": _PostgresStore, "mariadb": _MariadbStore}[
        settings["dialect"]
    ](settings["url"])
    ok_health = orjson.dumps({"status": "ok"})

    async def respond(send: Any, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/healthz":
            await respond(send, 200, ok_health)
            return
        if path != "/v1/events" or scope["method"] != "POST":
            await respond(send, 404, b'{"error": "not found"}')
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            event = orjson.loads(body)
            key = event["idempotency_key"]
            row = (
                key,
                event["customer"],
                event["meter"],
                event["timestamp"],
                str(event.get("quantity", 1)),
                orjson.dumps(event.get("properties") or {}).decode(),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await respond(send, 400, b'{"error": "bad event"}')
            return
        inserted = await store.insert(row)
        status = "accepted" if inserted else "duplicate"
        await respond(send, 200, orjson.dumps({"status": status, "idempotency_key": key}))

    return app


def floor_serve(dialect: str, url: str, port: int, workers: int) -> None:
    """uvicorn as `neruba serve` runs it (cli/serve.py): same options, same worker count."""
    import uvicorn

    os.environ[FLOOR_VARIABLE] = orjson.dumps({"dialect": dialect, "url": url}).decode()
    uvicorn.run(
        "api:floor_app",
        factory=True,
        app_dir=str(BENCH),
        host="127.0.0.1",
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        server_header=False,
    )


def create_floor_table(dialect: str, url: str) -> None:
    ident = {
        "sqlite": "id INTEGER PRIMARY KEY AUTOINCREMENT",
        "postgresql": "id BIGSERIAL PRIMARY KEY",
        "mariadb": "id BIGINT AUTO_INCREMENT PRIMARY KEY",
    }[dialect]
    text = "TEXT" if dialect != "mariadb" else "LONGTEXT"
    ddl = (
        f"CREATE TABLE {FLOOR_TABLE} ({ident}, idempotency_key VARCHAR(255) NOT NULL UNIQUE, "
        "customer VARCHAR(255) NOT NULL, meter VARCHAR(255) NOT NULL, ts VARCHAR(40) NOT NULL, "
        f"quantity VARCHAR(64) NOT NULL, properties {text} NOT NULL)"
    )
    if dialect == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(ddl)
    elif dialect == "postgresql":
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(ddl)
    else:
        conn = _pymysql_connect(url)
        try:
            with conn.cursor() as cursor:
                cursor.execute(ddl + " CHARACTER SET utf8mb4")
        finally:
            conn.close()


def count_floor(dialect: str, url: str) -> int:
    sql = f"SELECT COUNT(*) FROM {FLOOR_TABLE}"
    if dialect == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return int(conn.execute(sql).fetchone()[0])
    if dialect == "postgresql":
        import psycopg

        with psycopg.connect(url) as conn:
            row = conn.execute(sql).fetchone()
            return int(row[0]) if row else 0
    conn = _pymysql_connect(url)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql)
            return int(cursor.fetchone()[0])
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# The load generator (`python bench/api.py --load JSON` runs it as a process of its own)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; httptools parses answers."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.status = 0
        self.chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection closed by the server"))

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.waiter = None

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        body, self.chunks = b"".join(self.chunks), []
        if waiter is not None and not waiter.done():
            waiter.set_result((self.status, body))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


def _request_bytes(port: int, path: str, secret: str | None, body: bytes) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if secret:
        head.append(f"Authorization: Bearer {secret}")
    head += ["Content-Type: application/json", f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(head).encode() + body


class _Recorder:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.events = 0
        self.accepted = 0
        self.first_error: str | None = None
        self.ok_total = 0  # every 200, warm-up and stragglers included: rows the server stored

    def summary(self, seconds: float) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def pct(q: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

        return {
            "requests": len(ordered),
            "rate": round(len(ordered) / seconds, 1) if seconds > 0 else 0.0,
            "p50_ms": pct(0.50),
            "p90_ms": pct(0.90),
            "p99_ms": pct(0.99),
            "max_ms": round(ordered[-1] * 1000, 3) if ordered else None,
            "statuses": {str(code): count for code, count in sorted(self.statuses.items())},
            "errors": self.errors,
            "ok_total": self.ok_total,
            "first_error": self.first_error,
        }

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}"


async def _open(port: int, count: int) -> list[_Connection]:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(count):
        _transport, protocol = await loop.create_connection(_Connection, "127.0.0.1", port)
        conns.append(protocol)
    return conns


def _event_bodies(spec: dict[str, Any]) -> Callable[[int], bytes]:
    customers = spec["customers"]
    prefix = spec["key_prefix"]
    stamp = spec["timestamp"]
    template = (
        '{"idempotency_key":"%s-%d","customer":"%s","meter":"api_calls",'
        '"timestamp":"%s","quantity":1,"properties":{"region":"eu","endpoint":"/v1/usage"}}'
    )
    count = len(customers)

    def body(n: int) -> bytes:
        return (template % (prefix, n, customers[n % count], stamp)).encode()

    return body


async def _single(spec: dict[str, Any]) -> dict[str, Any]:
    """Closed loop (mode "max": each connection posts back to back) or open loop (mode "rate":
    requests on a fixed schedule, latency from the scheduled start)."""
    port, secret = spec["port"], spec.get("secret")
    make = _event_bodies(spec)
    head = _request_bytes(port, "/v1/events", secret, b"")
    head = head[: head.index(b"Content-Length:")]

    def request(n: int) -> bytes:
        body = make(n)
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    conns = await _open(port, spec["connections"])
    recorder = _Recorder()
    counter = iter(range(10**12))
    clock = time.perf_counter
    started = clock()
    measure_from = started + spec["warmup"]
    end = measure_from + spec["seconds"]
    rate = spec.get("rate")
    cpu_start: list[float] = []

    async def closed(conn: _Connection) -> None:
        while True:
            sent = clock()
            if sent >= end:
                return
            try:
                status, _ = await conn.request(request(next(counter)))
            except Exception as exc:
                recorder.failed(exc)
                return
            done = clock()
            recorder.ok_total += status == 200
            if done >= measure_from and done < end:
                recorder.latencies.append(done - sent)
                recorder.statuses[status] = recorder.statuses.get(status, 0) + 1

    async def scheduled(conn: _Connection) -> None:
        assert rate
        while True:
            n = next(counter)
            due = started + n / rate
            if due >= end:
                return
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                status, _ = await conn.request(request(n))
            except Exception as exc:
                recorder.failed(exc)
                return
            recorder.ok_total += status == 200
            if due >= measure_from:
                recorder.latencies.append(clock() - due)
                recorder.statuses[status] = recorder.statuses.get(status, 0) + 1

    async def mark_cpu() -> None:
        await asyncio.sleep(max(0.0, measure_from - clock()))
        cpu_start.append(time.process_time())

    worker = scheduled if rate else closed
    await asyncio.gather(mark_cpu(), *(worker(conn) for conn in conns))
    cpu = time.process_time() - (cpu_start[0] if cpu_start else 0.0)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    result = recorder.summary(spec["seconds"])
    result["client_cpu_s"] = round(cpu, 3)
    return result


async def _batch(spec: dict[str, Any]) -> dict[str, Any]:
    """The events file posted to /v1/events/batch, `size` events a request, `connections`
    requests at a time; events/s from the first request to the last answer."""
    port, secret, size = spec["port"], spec["secret"], spec["size"]
    lines = [line for line in Path(spec["file"]).read_bytes().splitlines() if line.strip()]
    bodies = [
        b'{"events":[' + b",".join(lines[start : start + size]) + b"]}"
        for start in range(0, len(lines), size)
    ]
    requests = [_request_bytes(port, "/v1/events/batch", secret, body) for body in bodies]
    conns = await _open(port, spec["connections"])
    recorder = _Recorder()
    queue = iter(requests)
    clock = time.perf_counter
    cpu = time.process_time()
    started = clock()

    async def run(conn: _Connection) -> None:
        for data in queue:
            sent = clock()
            try:
                status, body = await conn.request(data)
            except Exception as exc:
                recorder.failed(exc)
                return
            recorder.latencies.append(clock() - sent)
            recorder.statuses[status] = recorder.statuses.get(status, 0) + 1
            if status == 200:
                answer = orjson.loads(body)
                recorder.accepted += int(answer.get("accepted", 0))
                recorder.events += int(answer.get("lines", 0))

    await asyncio.gather(*(run(conn) for conn in conns))
    seconds = clock() - started
    cpu = time.process_time() - cpu
    result = recorder.summary(seconds)
    result.update(
        seconds=round(seconds, 3),
        events=len(lines),
        events_per_s=round(len(lines) / seconds, 1),
        accepted=recorder.accepted,
        lines_answered=recorder.events,
        client_cpu_s=round(cpu, 3),
    )
    return result


def load_main(spec_json: str) -> None:
    spec = orjson.loads(spec_json)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(_batch(spec) if spec["mode"] == "batch" else _single(spec))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


# --------------------------------------------------------------------------------------------
# Processes: CPU seconds from /proc (Linux), servers started and stopped


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def _tree(root: int) -> list[int]:
    """root and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def _machine() -> tuple[float, float]:
    """Busy and total CPU seconds of the whole machine since boot (/proc/stat)."""
    try:
        numbers = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = numbers[3] + (numbers[4] if len(numbers) > 4 else 0)
    total = sum(numbers[:8])
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    label: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    pids: list[int] = field(default_factory=list)

    def cpu(self) -> float:
        return sum(_proc_cpu(pid) for pid in self.pids)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(label: str, argv: list[str], port: int, log: Path, env: dict[str, str]) -> Server:
    import urllib.request

    with log.open("ab") as sink:
        process = subprocess.Popen(
            argv, cwd=log.parent, stdout=sink, stderr=subprocess.STDOUT, env=env
        )
    server = Server(label, port, process, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StepFailed(f"{label} exited {process.returncode}: {_tail(log)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.2)
    else:
        server.stop()
        raise StepFailed(f"{label} did not answer in {START_TIMEOUT:.0f} s: {_tail(log)}")
    time.sleep(1.0)  # every worker up, not only the first to answer
    server.pids = _tree(process.pid)
    return server


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""


def run_load(spec: dict[str, Any], folder: Path, servers: list[Server]) -> dict[str, Any]:
    """One load phase in its own process; the CPU the servers and the machine used meanwhile
    (measured over the whole phase, warm-up included, hence slightly diluted)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--load", orjson.dumps(spec).decode()]
    before = [server.cpu() for server in servers]
    busy0, total0 = _machine()
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - started
    busy1, total1 = _machine()
    if result.returncode != 0:
        raise StepFailed(f"load generator exited {result.returncode}: {result.stderr[-2000:]}")
    answer: dict[str, Any] = orjson.loads(result.stdout)
    answer["server_cpu_s"] = round(sum(s.cpu() for s in servers) - sum(before), 3)
    answer["phase_wall_s"] = round(wall, 3)
    cores = os.cpu_count() or 1
    if total1 > total0:
        answer["machine_busy"] = round((busy1 - busy0) / (total1 - total0), 3)
    answer["cores"] = cores
    return answer


# --------------------------------------------------------------------------------------------
# One database


@dataclass
class Options:
    seconds: float
    concurrency: int
    workers: int
    batch_events: int
    profile: Path | None


def bench_database(name: str, options: Options, folder: Path) -> dict[str, Any]:
    work = folder / name.split(":")[0]
    work.mkdir(exist_ok=True)
    for stale in ("bench.db", "floor.db", "neruba.toml"):  # a kept folder's last run
        for suffix in ("", "-wal", "-shm"):
            (work / f"{stale}{suffix}").unlink(missing_ok=True)
    catalog, customers_csv, events_file = generate(work, options.batch_events)
    customers = [line.split(",", 1)[0] for line in customers_csv.read_text().splitlines()[1:]]
    if "://" in name or name in SERVERS:
        target = server_target(SERVERS.get(name, name))
        say(f"created database {target.url.rsplit('/', 1)[-1]} ({target.dialect})")
    else:
        target = Target(
            "sqlite", f"sqlite:///{work / 'bench.db'}", f"sqlite:///{work / 'floor.db'}"
        )
    dialect = target.dialect
    neruba = Neruba(work)
    servers: list[Server] = []
    try:
        neruba.setup(target.url, catalog, customers_csv)
        common = ("--db", target.url, "--quiet")
        neruba.run("project create", "project", "create", FILE_PROJECT, *common)
        in_file = (*common, "--project", FILE_PROJECT)
        neruba.run("customer import", "customer", "import", str(customers_csv), *in_file)
        neruba.run("catalog apply", "catalog", "apply", str(catalog), *in_file)
        made = neruba.run(
            "key create",
            "key",
            "create",
            "--scope",
            "ingest",
            "--project",
            PROJECT,
            "--db",
            target.url,
            "--json",
        )
        secret = orjson.loads(made.stdout)["secret"]
        floor_url = target.floor_url if dialect == "sqlite" else plain_url(target.floor_url)
        create_floor_table(dialect, floor_url)
        say(f"{dialect}: set up (project, 1,000 customers, catalog, ingest key, floor table)")

        port = free_port()
        floor = start_server(
            "floor",
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--floor-serve",
                dialect,
                floor_url,
                str(port),
                str(options.workers),
            ],
            port,
            work / "floor.log",
            neruba.env,
        )
        servers.append(floor)
        port = free_port()
        api = start_server(
            "neruba serve",
            [
                sys.executable,
                "-m",
                "neruba_cli",
                "serve",
                "--db",
                target.url,
                "--port",
                str(port),
                "--workers",
                str(options.workers),
            ],
            port,
            work / "serve.log",
            neruba.env,
        )
        servers.append(api)
        say(
            f"{dialect}: floor on :{floor.port}, neruba serve on :{api.port}, {options.workers} "
            "worker(s) each"
        )

        month_start, _ = previous_month(_now())
        base = {
            "customers": customers,
            "timestamp": (month_start.replace(day=15, hour=12)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "seconds": options.seconds,
            "warmup": WARMUP,
        }
        probe = _probe(api, secret, base)
        results: dict[str, Any] = {
            "database": dialect,
            "workers": options.workers,
            "concurrency": options.concurrency,
            "seconds": options.seconds,
            "load_average": os.getloadavg()[0],
        }
        if probe is not None:
            say(f"{dialect}: POST /v1/events answered {probe}: single-event phases skipped")
            results["single"] = None
        else:
            results["single"] = _single_phases(options, base, floor, api, secret, folder, servers)
        floor_ok = sum(p["ok_total"] for p in (results["single"] or {}).get("floor", {}).values())
        results["checks"] = {
            "floor rows": f"{count_floor(dialect, floor_url):,} (200s: {floor_ok:,})"
        }

        # Batch endpoint against the file importer, same events, same database.
        say(f"{dialect}: timing neruba ingest of {options.batch_events:,} events ...")
        run = check(
            run_measured(
                "neruba ingest",
                [
                    sys.executable,
                    "-m",
                    "neruba_cli",
                    "ingest",
                    str(events_file),
                    *in_file,
                    "--json",
                ],
                cwd=work,
                env=neruba.env,
            )
        )
        receipt = orjson.loads(run.stdout)
        ingest = {
            "events": options.batch_events,
            "accepted": receipt["accepted"],
            "seconds": float(receipt["seconds"]),
            "wall_s": round(run.seconds, 3),
            "cpu_s": run.cpu_seconds,
            "events_per_s": round(options.batch_events / float(receipt["seconds"]), 1),
            "events_per_s_wall": round(options.batch_events / run.seconds, 1),
        }
        results["ingest"] = ingest
        spec = {
            "mode": "batch",
            "port": api.port,
            "secret": secret,
            "size": BATCH_SIZE,
            "connections": BATCH_CONCURRENCY,
            "file": str(events_file),
        }
        say(
            f"{dialect}: timing POST /v1/events/batch ({BATCH_SIZE} events a request, "
            f"{BATCH_CONCURRENCY} at a time) ..."
        )
        batch = run_load(spec, folder, [api])
        if batch["statuses"].get("200", 0) == 0:
            say(f"{dialect}: POST /v1/events/batch answered {batch['statuses']}: not measured")
            results["batch"] = None
        else:
            results["batch"] = batch
        if options.profile and results["single"] is not None:
            results["profile"], results["profile_ok"] = _profile(
                options, base, api, secret, folder, dialect
            )
        stored = count_rows(target, target.url, "events")
        expected = ingest["accepted"] + (batch["accepted"] if results["batch"] else 0)
        if results["single"] is not None:
            expected += 1 + sum(p["ok_total"] for p in results["single"]["neruba"].values())
            expected += results.get("profile_ok", 0)
        results["checks"]["neruba events"] = f"{stored:,} (accepted: {expected:,})"
    finally:
        for server in servers:
            server.stop()
        if target.drop is not None:
            target.drop()
            say(f"dropped database {target.url.rsplit('/', 1)[-1]}")
    results["ratios"] = _ratios(results)
    return results


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _probe(api: Server, secret: str, base: dict[str, Any]) -> int | None:
    """None when POST /v1/events takes an event, else the status it answered."""
    import urllib.error
    import urllib.request

    body = _event_bodies({**base, "key_prefix": "probe"})(0)
    request = urllib.request.Request(
        f"http://127.0.0.1:{api.port}/v1/events",
        data=body,
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return None if answer.status == 200 else int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _single_phases(
    options: Options,
    base: dict[str, Any],
    floor: Server,
    api: Server,
    secret: str,
    folder: Path,
    servers: list[Server],
) -> dict[str, Any]:
    """Max rate of each, then half of each one's own max; interleaved so that a change of
    load on the machine falls on both."""
    out: dict[str, Any] = {"floor": {}, "neruba": {}}
    contenders = (("floor", floor, None), ("neruba", api, secret))
    for label, server, key in contenders:
        say(f"{label}: max rate, {options.concurrency} connections, {options.seconds:g} s ...")
        spec = {
            **base,
            "mode": "max",
            "port": server.port,
            "secret": key,
            "connections": options.concurrency,
            "key_prefix": f"{KEY_PREFIX}-{label}-max",
        }
        out[label]["max"] = run_load(spec, folder, [server])
        say(f"  {_line(out[label]['max'])}")
    for label, server, key in reversed(contenders):
        rate = max(1.0, out[label]["max"]["rate"] / 2)
        say(f"{label}: half rate, {rate:,.0f} requests/s, {options.seconds:g} s ...")
        spec = {
            **base,
            "mode": "rate",
            "rate": rate,
            "port": server.port,
            "secret": key,
            "connections": options.concurrency * 2,
            "key_prefix": f"{KEY_PREFIX}-{label}-half",
        }
        out[label]["half"] = run_load(spec, folder, [server])
        out[label]["half"]["target_rate"] = round(rate, 1)
        say(f"  {_line(out[label]['half'])}")
    return out


def _line(phase: dict[str, Any]) -> str:
    return (
        f"{phase['rate']:,.0f} req/s, p50 {phase['p50_ms']} ms, p99 {phase['p99_ms']} ms, "
        f"statuses {phase['statuses']}, errors {phase['errors']}"
    )


def _ratios(results: dict[str, Any]) -> dict[str, Any]:
    ratios: dict[str, Any] = {}
    single = results.get("single")
    if single:
        floor, neruba = single["floor"], single["neruba"]
        if floor["max"]["rate"]:
            value = neruba["max"]["rate"] / floor["max"]["rate"]
            ratios["throughput"] = {
                "value": round(value, 3),
                "target": f">= {TARGET_THROUGHPUT}",
                "met": value >= TARGET_THROUGHPUT,
            }
        p99 = neruba["half"]["p99_ms"]
        ratios["p99_half_ms"] = {
            "value": p99,
            "target": f"< {TARGET_P99_MS:g} ms",
            "met": p99 is not None and p99 < TARGET_P99_MS,
        }
    batch, ingest = results.get("batch"), results.get("ingest")
    if batch and ingest:
        value = batch["events_per_s"] / ingest["events_per_s"]
        ratios["batch"] = {
            "value": round(value, 3),
            "target": f">= {TARGET_BATCH}",
            "met": value >= TARGET_BATCH,
            "vs_wall": round(batch["events_per_s"] / ingest["events_per_s_wall"], 3),
        }
    return ratios


# --------------------------------------------------------------------------------------------
# Profile: py-spy on the workers during one more max-rate phase


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _profile(
    options: Options, base: dict[str, Any], api: Server, secret: str, folder: Path, dialect: str
) -> tuple[dict[str, Any] | None, int]:
    """Where the workers spend their time, from py-spy; and how many events the phase stored."""
    spy = _py_spy()
    if spy is None:
        say("py-spy not found (pip install py-spy): no profile")
        return None, 0
    assert options.profile is not None
    options.profile.mkdir(parents=True, exist_ok=True)
    workers = [pid for pid in api.pids if pid != api.process.pid] or [api.process.pid]
    seconds = int(options.seconds + WARMUP)
    spies = []
    for pid in workers:
        out = options.profile / f"{dialect}-{pid}.txt"
        spies.append(
            (
                out,
                subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        str(seconds),
                        "--rate",
                        "200",
                        "--format",
                        "raw",
                        "--output",
                        str(out),
                        "--nonblocking",
                        "--gil",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
            )
        )
    say(f"profiling neruba serve's workers {workers} with py-spy for {seconds} s ...")
    spec = {
        **base,
        "mode": "max",
        "port": api.port,
        "secret": secret,
        "connections": options.concurrency,
        "key_prefix": f"{KEY_PREFIX}-profile",
    }
    stored = run_load(spec, folder, [api])["ok_total"]
    files = []
    for out, process in spies:
        process.wait(60)
        if out.exists():
            files.append(out)
    if not files:
        say("py-spy wrote nothing (does it have the right to trace the workers?)")
        return None, stored
    return summarize_profile(files), stored


def summarize_profile(files: list[Path], top: int = 25) -> dict[str, Any]:
    """From py-spy's collapsed stacks: each function's share of the samples, inclusive
    (anywhere on the stack) and own (the innermost frame); idle samples left out."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [_frame(frame) for frame in stack.split(";")]
            total += count
            for name in set(frames):
                inclusive[name] = inclusive.get(name, 0) + count
            own[frames[-1]] = own.get(frames[-1], 0) + count

    def share(table: dict[str, int]) -> list[list[Any]]:
        ranked = sorted(table.items(), key=lambda item: -item[1])[:top]
        return [[name, round(100 * count / total, 1)] for name, count in ranked]

    return {
        "samples": total,
        "own": share(own),
        "inclusive": share(inclusive),
        "files": [str(path) for path in files],
    }


def _frame(frame: str) -> str:
    """`function (path/to/module.py:12)` → `function (module.py)`: lines merged."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if parts else file
    return f"{name} ({short})"


# --------------------------------------------------------------------------------------------
# Report


def _fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{suffix}" if value >= 100 else f"{value:.2f}{suffix}"
    return f"{value:,}{suffix}" if isinstance(value, int) else f"{value}{suffix}"


def _share(phase: dict[str, Any], key: str) -> str:
    wall = phase.get("phase_wall_s") or 0.0
    cores = phase.get("cores") or 1
    if key == "client_cpu_s":  # the client measures its own CPU over the measured seconds
        wall = phase.get("seconds_measured") or wall
    value = phase.get(key)
    if value is None or not wall:
        return "-"
    return f"{100 * value / (wall * cores):.0f}%"


def _per_request(phase: dict[str, Any]) -> str:
    """The server's CPU milliseconds per answered request (all of the phase's)."""
    answered = phase.get("ok_total") or 0
    cpu = phase.get("server_cpu_s")
    return "-" if not answered or cpu is None else f"{1000 * cpu / answered:.2f}"


def print_report(results: list[dict[str, Any]]) -> None:
    for result in results:
        print()
        print(
            f"{result['database']}: {result['workers']} worker(s), {result['concurrency']} "
            f"connections, {result['seconds']:g} s a phase, {os.cpu_count()} cores, load "
            f"average {result['load_average']:.1f} at the start"
        )
        single = result.get("single")
        if single:
            rows = []
            for label in ("floor", "neruba"):
                for phase_name in ("max", "half"):
                    phase = single[label][phase_name]
                    phase["seconds_measured"] = result["seconds"]
                    what = (
                        "max rate"
                        if phase_name == "max"
                        else (f"half rate ({phase['target_rate']:,.0f}/s)")
                    )
                    bad = phase["requests"] - phase["statuses"].get("200", 0) + phase["errors"]
                    rows.append(
                        [
                            f"{label}: {what}",
                            _fmt(phase["rate"]),
                            _fmt(phase["p50_ms"]),
                            _fmt(phase["p99_ms"]),
                            str(bad),
                            _share(phase, "client_cpu_s"),
                            _share(phase, "server_cpu_s"),
                            _per_request(phase),
                            f"{100 * phase.get('machine_busy', 0):.0f}%",
                        ]
                    )
            print_table(
                [
                    "POST /v1/events",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "not 200",
                    "client CPU",
                    "server CPU",
                    "ms CPU/req",
                    "machine busy",
                ],
                rows,
            )
            print(
                "(CPU shares are of all cores over the phase; ms CPU/req: the server's processes' "
                "CPU per answered request;\n the database server's own CPU is in 'machine busy')"
            )
        else:
            print("POST /v1/events: not available on this server, not measured")
        ingest, batch = result.get("ingest"), result.get("batch")
        if ingest:
            rows = [
                [
                    "neruba ingest FILE",
                    f"{ingest['seconds']:.2f} (wall {ingest['wall_s']:.2f})",
                    f"{ingest['events_per_s']:,.0f} (wall {ingest['events_per_s_wall']:,.0f})",
                    "-",
                ]
            ]
            if batch:
                rows.append(
                    [
                        f"POST /v1/events/batch ({BATCH_SIZE}/req, {BATCH_CONCURRENCY} at once)",
                        f"{batch['seconds']:.2f}",
                        f"{batch['events_per_s']:,.0f}",
                        f"{batch['p50_ms']} / {batch['p99_ms']}",
                    ]
                )
            print()
            print_table(
                [f"{ingest['events']:,} events", "seconds", "events/s", "p50 / p99 ms"], rows
            )
            if not batch:
                print("POST /v1/events/batch: not available on this server, not measured")
        ratios = result.get("ratios", {})
        rows = []
        for name, label, shown in (
            ("throughput", "single-event req/s: neruba / floor", "{:.2f}x"),
            ("p99_half_ms", "neruba p99 at half its max rate", "{} ms"),
            ("batch", "batch events/s: API / neruba ingest", "{:.2f}x"),
        ):
            if name in ratios:
                r = ratios[name]
                value = shown.format(_fmt(r["value"]) if name == "p99_half_ms" else r["value"])
                rows.append([label, value, r["target"], verdict(r["met"])])
        if "batch" in ratios:
            r = ratios["batch"]
            rows.append(
                ["(info) API / neruba ingest incl. its start-up", f"{r['vs_wall']:.2f}x", "", ""]
            )
        if rows:
            print()
            print_table(["ratio", "measured", "target", ""], rows)
        checks = result.get("checks")
        if checks:
            print("checks: " + "; ".join(f"{k} {v}" for k, v in checks.items()))
        profile = result.get("profile")
        if profile:
            print(
                f"\nprofile of neruba serve's workers ({profile['samples']:,} samples, busy only)"
            )
            for title in ("own", "inclusive"):
                print_table(
                    [f"top by {title} samples", "%"],
                    [[name, f"{pct:.1f}"] for name, pct in profile[title]],
                )
                print()


# --------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time `neruba serve`'s ingest endpoints against a raw ASGI floor and "
        "`neruba ingest`."
    )
    parser.add_argument(
        "--db",
        action="append",
        help="sqlite, postgresql, mariadb or a server URL (the bench creates and drops its own "
        "database there); repeat for several; default: sqlite and postgresql",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="each phase (default 10)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="connections at the max rate (default 16)"
    )
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (default 2)")
    parser.add_argument(
        "--batch-events", type=int, default=20_000, help="events for the batch comparison"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--keep", type=Path, help="work in DIR and keep it (databases, logs)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="then profile neruba serve's workers with py-spy during one more max-rate phase "
        "(raw stacks written to DIR) and print where the time goes",
    )
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--floor-serve", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.load:
        load_main(args.load)
        return 0
    if args.floor_serve:
        dialect, url, port, workers = args.floor_serve
        floor_serve(dialect, url, int(port), int(workers))
        return 0
    names = args.db or ["sqlite", "postgresql"]
    for name in names:
        if "://" not in name and name not in ("sqlite", *SERVERS):
            parser.error(f"--db {name}: sqlite, postgresql, mariadb or a server URL")
    options = Options(args.seconds, args.concurrency, args.workers, args.batch_events, args.profile)
    folder = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="neruba-api-"))
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for name in names:
            results.append(bench_database(name, options, folder))
    except StepFailed as exc:
        say(f"bench failed: {exc}")
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    document = {
        "machine": {"cores": os.cpu_count(), "load_average": list(os.getloadavg())},
        "results": results,
    }
    if args.json:
        print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
