"""`GET /metrics`: request counts and latencies by route, summed over every worker of the
server, and the figures `neruba stats` writes, for every project.

- **Requests**: each worker counts what it answered (`RequestMetrics`, fed by
  middleware.py), labelled by method, route *template* (never the raw path, so the series stay
  few) and status. `neruba serve` gives its workers one folder (`metrics_dir`); each worker
  writes its counts there, at most once a second (`FLUSH_SECONDS`), into its own file,
  replaced whole, and the worker that answers a scrape adds its live counts to every other
  file. A worker that died keeps its file, so a sum never goes down while the server runs;
  a restarted server starts from zero, as Prometheus expects of a counter.
- **Project figures** (`services/ops/stats.every_project`): read at most once per
  `metrics_cache_seconds` per worker, whatever the scrape rate; one reader at a time.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from neruba_cli.domain import prometheus
from neruba_cli.domain.errors import NerubaError
from neruba_cli.domain.prometheus import Family, Sample
from neruba_cli.services.ops import stats

# Upper bounds of the latency buckets, in seconds (the last bucket, +Inf, is implied).
BUCKETS = tuple(
    Decimal(bound)
    for bound in ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10")
)
_BUCKET_MICROS = tuple(int(bound.scaleb(6)) for bound in BUCKETS)
FLUSH_SECONDS = 1.0
log = logging.getLogger("neruba.api")


@dataclass
class Snapshot:
    """Counts of one worker, or their sum: plain data, written to and read from its file."""

    requests: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # (method, route) -> per bucket counts (not cumulative; the last one is +Inf), count,
    # and the sum of durations in microseconds (exact integers, never floats)
    durations: dict[tuple[str, str], tuple[list[int], int, int]] = field(default_factory=dict)

    def add(self, other: Snapshot) -> None:
        for key, n in other.requests.items():
            self.requests[key] = self.requests.get(key, 0) + n
        for route, (buckets, count, micros) in other.durations.items():
            mine = self.durations.get(route)
            if mine is None:
                self.durations[route] = (list(buckets), count, micros)
            else:
                summed = [a + b for a, b in zip(mine[0], buckets, strict=True)]
                self.durations[route] = (summed, mine[1] + count, mine[2] + micros)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "requests": [[*key, n] for key, n in self.requests.items()],
                "durations": [[*route, *value] for route, value in self.durations.items()],
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> Snapshot:
        raw = orjson.loads(data)
        snapshot = cls()
        for method, route, status, n in raw["requests"]:
            snapshot.requests[(method, route, status)] = int(n)
        for method, route, buckets, count, micros in raw["durations"]:
            if len(buckets) == len(BUCKETS) + 1:
                snapshot.durations[(method, route)] = ([int(b) for b in buckets], count, micros)
        return snapshot

    def families(self) -> list[Family]:
        requests = Family(
            "neruba_http_requests_total",
            "counter",
            "HTTP requests answered, by method, route template and status.",
            tuple(
                Sample((("method", m), ("route", r), ("status", s)), n)
                for (m, r, s), n in sorted(self.requests.items())
            ),
        )
        samples: list[Sample] = []
        for (method, route), (buckets, count, micros) in sorted(self.durations.items()):
            labels = (("method", method), ("route", route))
            running = 0
            for bound, n in zip((*map(str, BUCKETS), "+Inf"), buckets, strict=True):
                running += n
                samples.append(Sample((*labels, ("le", bound)), running, "_bucket"))
            samples.append(Sample(labels, Decimal(micros).scaleb(-6), "_sum"))
            samples.append(Sample(labels, count, "_count"))
        durations = Family(
            "neruba_http_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to the end of its answer, by method and route.",
            tuple(samples),
        )
        return [requests, durations]


class RequestMetrics:
    """The counts of this worker, and its file in the server's metrics folder (if any)."""

    def __init__(self, folder: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._live = Snapshot()
        self._changes = 0
        self.folder = folder
        self.file = (
            None if folder is None else folder / f"{os.getpid()}-{secrets.token_hex(4)}.json"
        )
        self._flushed = 0
        self._flusher: threading.Thread | None = None

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        micros = max(0, round(seconds * 1_000_000))
        bucket = next(
            (i for i, bound in enumerate(_BUCKET_MICROS) if micros <= bound), len(BUCKETS)
        )
        with self._lock:
            key = (method, route, str(status))
            self._live.requests[key] = self._live.requests.get(key, 0) + 1
            found = self._live.durations.get((method, route))
            if found is None:
                found = ([0] * (len(BUCKETS) + 1), 0, 0)
            buckets, count, total = found
            buckets[bucket] += 1
            self._live.durations[(method, route)] = (buckets, count + 1, total + micros)
            self._changes += 1
        if self.file is not None and self._flusher is None:
            self._start_flusher()

    def own(self) -> Snapshot:
        with self._lock:
            copy = Snapshot()
            copy.add(self._live)
            return copy

    def total(self) -> Snapshot:
        """This worker's live counts plus every other worker's last written ones."""
        summed = self.own()
        if self.folder is None:
            return summed
        for path in sorted(self.folder.glob("*.json")):
            if path == self.file:
                continue
            try:
                summed.add(Snapshot.from_json(path.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("metrics file %s unreadable: %s", path.name, exc)
        return summed

    def flush(self) -> None:
        """Write this worker's counts to its file, whole (a reader sees the old file or the
        new one), when they changed since the last write."""
        if self.file is None:
            return
        with self._lock:
            changes = self._changes
        if changes == self._flushed:
            return
        temporary = self.file.with_suffix(".tmp")
        try:
            temporary.write_bytes(self.own().to_json())
            os.replace(temporary, self.file)
        except OSError as exc:  # the folder went away: the server is stopping
            log.debug("metrics file not written: %s", exc)
            return
        self._flushed = changes

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher is not None:
                return
            self._flusher = threading.Thread(target=self._flush_loop, daemon=True)
        self._flusher.start()

    def _flush_loop(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            self.flush()


class ProjectFigures:
    """`neruba stats`'s families for every project, read at most once per `seconds`."""

    def __init__(
        self,
        engine: Engine,
        seconds: float,
        read: Callable[..., list[Family]] = stats.every_project,
    ) -> None:
        self.engine = engine
        self.seconds = seconds
        self._read = read
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Family]] | None = None

    def families(self) -> tuple[bool, list[Family]]:
        """(read, families): read is False when the database did not answer (no figures)."""
        with self._lock:
            if self._cached is not None and time.monotonic() < self._cached[0]:
                return True, self._cached[1]
            try:
                found = self._read(self.engine, now=datetime.now(UTC))
            except (SQLAlchemyError, NerubaError) as exc:
                log.warning("project figures for /metrics not read: %s", exc)
                self._cached = None
                return False, []
            self._cached = (time.monotonic() + self.seconds, found)
            return True, found


def exposition(requests: Snapshot, figures_read: bool, figures: Iterable[Family]) -> str:
    up = Family(
        "neruba_stats_up",
        "gauge",
        "1 when the project figures below were read from the database, 0 when it did not answer.",
        (Sample((), 1 if figures_read else 0),),
    )
    return prometheus.render(prometheus.merge([*requests.families(), up, *figures]))
