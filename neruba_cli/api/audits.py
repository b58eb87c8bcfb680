"""The audit records of mutating requests, written by one thread per worker, many a commit.

A request's record is queued when its answer is ready (middleware.py) and written by this
worker's audit thread before the answer's last part is sent, so a client that has its answer
finds the record. The thread (api/group_commit.py) takes everything queued so far (up to `BATCH`
records) and writes it in one transaction (`services/tenancy/audit.record_many`): under load
one commit carries the records of many requests instead of each request paying a write
transaction of its own after its event's; when idle, a record is written as soon as it is
queued. What is still queued when the app shuts down is written first. Like the CLI's audit,
it is best effort: a failure to write is logged and the request's own outcome stands.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from neruba_cli.api.group_commit import EXIT_WAIT_SECONDS, GroupWorker
from neruba_cli.services.tenancy import audit

BATCH = 500  # records per transaction at most

log = logging.getLogger("neruba.api")


class AuditWriter:
    """One worker's queue of audit records and the thread that writes them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._worker: GroupWorker[audit.Entry, None] = GroupWorker(
            "neruba-audit", self._write, BATCH
        )

    async def submit(self, entry: audit.Entry) -> None:
        """Queue a record for this worker's audit thread; done once it is written (or failed
        to be: that is logged, never raised)."""
        await self._worker.submit(entry)

    def close(self, timeout: float = EXIT_WAIT_SECONDS) -> None:
        """Write what is queued and stop the thread."""
        self._worker.close(timeout)

    def _write(self, entries: list[audit.Entry]) -> list[None]:
        try:
            audit.record_many(self.engine, entries)
        except Exception:
            commands = sorted({entry.command for entry in entries})
            log.exception("audit records of %d requests (%s) failed", len(entries), commands)
        return [None] * len(entries)
