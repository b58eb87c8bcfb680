"""`neruba ingest`: replay-safe import of usage events.

Lines are read (readers.py), validated (validation.py) as they stream in and written in
batches, one transaction each, by a writer thread while the next batch is read (see
`_Pipeline`; writer.py classifies each line as accepted, duplicate or conflict). A JSON line
that repeats a stored event byte for byte is counted a duplicate unparsed (repeats.py). The
import's receipt (receipts.py) is opened first and closed last, its counts saved with every
batch, so a crashed import simply runs again and converges to the same events.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

from sqlalchemy import Engine
from sqlalchemy.pool import SingletonThreadPool

from neruba_cli.db import bulk_insert
from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import Project
from neruba_cli.domain.catalog import MeterDef
from neruba_cli.services.billing import run as billing_run
from neruba_cli.services.ingest import receipts
from neruba_cli.services.ingest.readers import Input, Source
from neruba_cli.services.ingest.receipts import IngestSummary
from neruba_cli.services.ingest.rejects import Reject, RejectsWriter
from neruba_cli.services.ingest.repeats import Repeated, Repeats
from neruba_cli.services.ingest.validation import Pending, Validator
from neruba_cli.services.ingest.writer import BatchWriter

BATCH = 5000
DEFAULT_MAX_FUTURE = timedelta(minutes=5)
ANALYZE_AFTER = 10_000  # accepted events that make PostgreSQL's statistics worth refreshing


@dataclass(frozen=True)
class IngestOptions:
    fmt: str
    dry_run: bool = False
    assume_tz: tzinfo | None = None
    create_customers: bool = False
    max_future: timedelta = DEFAULT_MAX_FUTURE
    batch_size: int = BATCH
    # Each line's outcome in `summary.outcomes`, written by a `concurrent` writer (writer.py):
    # for callers that keep no rejects file and race other writers (the HTTP API).
    per_line: bool = False


def ingest(
    engine: Engine,
    project: Project,
    source: Input,
    options: IngestOptions,
    *,
    meters: dict[str, MeterDef],
    rejects: RejectsWriter,
    actor: str,
    now: datetime,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Import every line of `source`; the receipt is stored unless this is a dry run."""
    started = datetime.now(UTC)
    summary = IngestSummary(
        batch=None if options.dry_run else new_id("bat"),
        source=source.name,
        outcomes={} if options.per_line else None,
    )
    if summary.batch is not None:
        receipts.open_receipt(engine, project, summary, options.fmt, actor, started)
    try:
        _run(engine, project, source, options, summary, meters, rejects, now, on_progress)
    except BaseException:
        if summary.batch is not None:
            receipts.fail_receipt(engine, summary)
        raise
    summary.sha256 = source.digest.hexdigest()
    summary.already_imported = receipts.earlier_imports(engine, project, summary)
    if summary.batch is not None and summary.accepted:
        with engine.connect() as conn:
            summary.stale_invoices = billing_run.stale_invoices(
                conn, project.id, summary.batch, summary.first_event, summary.last_event
            )
    summary.seconds = (datetime.now(UTC) - started).total_seconds()
    if summary.batch is not None:
        receipts.close_receipt(engine, summary, rejects)
        if summary.accepted >= ANALYZE_AFTER:
            bulk_insert.refresh_statistics(engine, "events")
    if on_progress is not None:
        on_progress(source.bytes_read, summary.lines)
    return summary


def _run(
    engine: Engine,
    project: Project,
    source: Input,
    options: IngestOptions,
    summary: IngestSummary,
    meters: dict[str, MeterDef],
    rejects: RejectsWriter,
    now: datetime,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    writer = BatchWriter(
        engine,
        project,
        summary,
        rejects,
        now,
        dry_run=options.dry_run,
        create_customers=options.create_customers,
    )
    writer.concurrent = options.per_line
    json_lines = options.fmt == "jsonl" and isinstance(source, Source)
    validate = Validator(
        meters,
        charges_only=options.fmt == "charges",
        now=now,
        max_future=options.max_future,
        assume_tz=options.assume_tz,
        digests=json_lines,
    )
    repeats = Repeats(engine, project.id, options.assume_tz) if json_lines else None
    lines = 0  # read so far: the summary counts them only as the writer takes them in
    with _Pipeline(writer) as pipeline:
        part = _Part()
        for file, number, raw, obj in source.parsed(options.fmt, repeats):
            lines += 1
            part.lines += 1
            if on_progress is not None and lines % 1000 == 0:
                on_progress(source.bytes_read, lines)
            if type(obj) is Repeated:
                part.repeated.append((number, obj.corrected))
                if part.batch_lines() >= options.batch_size:
                    pipeline.put(part)
                    part = _Part()
                continue
            item = validate(file, number, raw, obj)
            if isinstance(item, Reject):
                part.refused.append(item)
                part.refused_size += len(item.raw)
                if len(part.refused) >= _REFUSED_HELD or part.refused_size >= _REFUSED_BYTES:
                    pipeline.put(part)
                    part = _Part()
            else:
                part.pending.append(item)
                if part.batch_lines() >= options.batch_size:
                    pipeline.put(part)
                    part = _Part()
        pipeline.put(part)
    summary.warnings += validate.warnings()
    if summary.corrected_duplicates:
        n = summary.corrected_duplicates
        summary.warnings.append(
            f"{n} duplicate line{'s' if n != 1 else ''} repeat{'s' if n == 1 else ''} events "
            "voided or amended since they were stored: the corrections stand "
            "(`neruba events list --history` shows them)"
        )
    if not lines:  # an empty file, or nothing on stdin: exit 0, but never in silence
        summary.warnings.append(f"no events read from {source.name}")


@dataclass(slots=True)
class _Part:
    """Consecutive lines for the writer: how many, the refused ones, the valid ones (a batch
    to write when there are any)."""

    lines: int = 0
    refused: list[Reject] = field(default_factory=list)
    refused_size: int = 0
    pending: list[Pending] = field(default_factory=list)
    repeated: list[tuple[int, bool]] = field(default_factory=list)  # (line, corrected)

    def batch_lines(self) -> int:
        """The lines of a batch: the valid ones and the repeats (a batch of `batch_size`
        lines is one transaction, so a killed import leaves whole batches)."""
        return len(self.pending) + len(self.repeated)


_REFUSED_HELD = 1000  # refused lines held before they go to the writer (and rejects file)
_REFUSED_BYTES = 8 << 20


class _Pipeline:
    """Writes batches in a thread of its own while the next ones are read and validated, so
    that waiting for the database (the server, or SQLite's fsyncs, which release the GIL)
    overlaps with the parsing. The writer takes the parts in order and counts them into the
    summary only as it takes them, so each batch's transaction saves the same counts, and
    the rejects file gets the same lines in the same order, as writing in line order did."""

    def __init__(self, writer: BatchWriter) -> None:
        self.writer = writer
        self.parts: queue.Queue[_Part | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.abandoned = False
        # An in-memory SQLite database is one connection per thread: write it inline.
        threaded = not isinstance(writer.engine.pool, SingletonThreadPool)
        # SQLite runs in this process and takes the GIL back for every row it inserts: the
        # reading side waits until the rows are in and overlaps only the commit (its fsync).
        self.commit_only = writer.sqlite
        self.written = threading.Semaphore(0)
        self.thread = (
            threading.Thread(target=self._work, name="ingest-writer", daemon=True)
            if threaded
            else None
        )

    def __enter__(self) -> _Pipeline:
        if self.thread is not None:
            self.thread.start()
        return self

    def put(self, part: _Part) -> None:
        if self.thread is None:
            self._take(part)
            return
        if self.error is not None:
            raise self.error
        self.parts.put(part)
        if self.commit_only:
            self.written.acquire()

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if self.thread is None:
            return
        if kind is not None and not issubclass(kind, Exception):  # interrupted: stop soon
            self.abandoned = True
        self.parts.put(None)  # the parts already handed over are written first
        self.thread.join()
        if kind is None and self.error is not None:
            raise self.error

    def _work(self) -> None:
        while (part := self.parts.get()) is not None:
            released = False

            def written() -> None:
                nonlocal released
                if self.commit_only and not released:
                    released = True
                    self.written.release()

            try:
                if self.error is None and not self.abandoned:  # else drain
                    self._take(part, written)
            except BaseException as exc:  # handed to the reading side
                self.error = exc
            finally:
                written()

    def _take(self, part: _Part, written: Callable[[], None] | None = None) -> None:
        writer = self.writer
        summary = writer.summary
        summary.lines += part.lines
        for refused in part.refused:
            summary.reject(refused, writer.rejects)
        for line, corrected in part.repeated:  # as the writer counts a line it finds stored
            summary.duplicate(line)
            summary.corrected_duplicates += corrected
        if part.pending:
            writer.flush(part.pending, written)
