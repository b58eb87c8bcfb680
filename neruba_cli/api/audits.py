"""The audit records of mutating requests, written by one thread per worker, many a commit.

A request's record is queued when its answer is ready (middleware.py) and written by this
worker's audit thread before the answer's last part is sent, so a client that has its answer
finds the record. The thread takes everything queued so far (up to `BATCH` records) and
writes it in one transaction (`services/tenancy/audit.record_many`), then the next: under load
one commit carries the records of many requests instead of each request paying a write
transaction of its own after its event's; when idle, a record is written as soon as it is
queued. When the app shuts down (SIGTERM, the end of `neruba serve`: the middleware sees the
ASGI lifespan's shutdown) or the process exits, what is still queued is written first. Like
the CLI's audit, it is best effort: a failure to write is logged and the request's own
outcome stands.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from concurrent.futures import Future

from sqlalchemy import Engine

from neruba_cli.services.tenancy import audit

BATCH = 500  # records per transaction at most
EXIT_WAIT_SECONDS = 10.0  # how long an exiting worker waits for its last records

log = logging.getLogger("neruba.api")
_STOP = object()


class AuditWriter:
    """One worker's queue of audit records and the thread that writes them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, entry: audit.Entry) -> Future[None]:
        """Queue a record for this worker's audit thread; the future is done once it is
        written (or failed to be: that is logged, never raised)."""
        done: Future[None] = Future()
        if self._thread is None:
            self._start()
        self._queue.put((entry, done))
        return done

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="neruba-audit", daemon=True)
                self._thread.start()
                atexit.register(self.close)

    def close(self, timeout: float = EXIT_WAIT_SECONDS) -> None:
        """Write what is queued and stop the thread (at the app's shutdown, or the process's
        exit); a record queued later starts a new thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(_STOP)
            thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            entries: list[tuple[audit.Entry, Future[None]]] = []
            while True:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, tuple):
                    entries.append(item)
                if stopping or len(entries) >= BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._write(entries)

    def _write(self, entries: list[tuple[audit.Entry, Future[None]]]) -> None:
        if not entries:
            return
        try:
            audit.record_many(self.engine, [entry for entry, _ in entries])
        except Exception:
            commands = sorted({entry.command for entry, _ in entries})
            log.exception("audit records of %d requests (%s) failed", len(entries), commands)
        for _, done in entries:
            done.set_result(None)
