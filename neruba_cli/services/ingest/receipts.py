"""An import's receipt: its running counts, and the `import_batches` row that keeps them.

The receipt is written when the import starts (`running`), its counts are saved in every
batch's own transaction (so what is stored and what the receipt says never disagree), and it
is closed (`completed`, with the content's SHA-256) or marked `failed`. A killed process leaves
it `running`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Insert, insert, select, update

from neruba_cli.db.schema import ImportBatch, Project
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.ingest.rejects import Reject, RejectsWriter, keep


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """What became of one line: accepted, duplicate, conflict (with the stored event) or
    rejected, with the reason."""

    status: str
    reason: str | None = None
    stored: dict[str, object] | None = None


@dataclass
class IngestSummary:
    batch: str | None
    source: str
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    corrected_duplicates: int = 0  # duplicates of events voided or amended since stored
    replaced: dict[str, str] | None = None  # ingest --replace: its window
    amended: int = 0  # ingest --replace: accepted lines that amended a stored event
    voided: int = 0  # ingest --replace: the window's events the file left out
    first_event: datetime | None = None
    last_event: datetime | None = None
    months: set[tuple[int, int]] = field(default_factory=set)
    sha256: str | None = None
    already_imported: list[str] = field(default_factory=list)
    stale_invoices: list[dict[str, str]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # stored as given, but worth a look
    seconds: float = 0.0
    # line -> what became of it, when the caller asked for each line's outcome (the HTTP API)
    outcomes: dict[int, LineOutcome] | None = None

    @property
    def periods(self) -> list[str]:
        """The months (UTC) that received new events, as YYYY-MM."""
        return [f"{year:04d}-{month:02d}" for year, month in sorted(self.months)]

    def reject(self, item: Reject, writer: RejectsWriter, *, conflict: bool = False) -> None:
        if conflict:
            self.conflicts += 1
        else:
            self.rejected += 1
        keep(self.rejects, item, writer)
        if self.outcomes is not None:
            status = "conflict" if conflict else "rejected"
            self.outcomes[item.line] = LineOutcome(status, item.reason, item.stored)

    def duplicate(self, line: int) -> None:
        self.duplicates += 1
        if self.outcomes is not None:
            self.outcomes[line] = _DUPLICATE

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "rejected": self.rejected,
            "duplicates_of_corrected": self.corrected_duplicates,
            "batch": self.batch,
            "source": self.source,
            "sha256": self.sha256,
            "first_event": format_ts(self.first_event),
            "last_event": format_ts(self.last_event),
            "periods": self.periods,
            "already_imported": self.already_imported,
            "stale_invoices": self.stale_invoices,
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
            **(
                {}
                if self.replaced is None
                else {"replaced": self.replaced, "amended": self.amended, "voided": self.voided}
            ),
        }


_DUPLICATE = LineOutcome("duplicate")


def open_receipt(
    engine: Engine,
    project: Project,
    summary: IngestSummary,
    fmt: str,
    actor: str,
    started: datetime,
) -> None:
    assert summary.batch is not None
    with engine.begin() as conn:
        conn.execute(running_receipt(project, summary.batch, summary.source, fmt, actor, started))


def running_receipt(
    project: Project,
    batch: str,
    source: str,
    fmt: str,
    actor: str,
    started: datetime,
    **extra: Any,
) -> Insert:
    """The receipt of an import that has begun: every count at zero (`extra` sets more
    columns, such as an `ingest --replace`'s window)."""
    return insert(ImportBatch).values(
        id=batch,
        project_id=project.id,
        source=source[:1000],
        format=fmt,
        sha256=None,
        status="running",
        lines=0,
        accepted=0,
        duplicates=0,
        conflicts=0,
        rejected=0,
        periods="[]",
        actor=actor,
        started_at=started,
        **extra,
    )


def save_counts(conn: Connection, summary: IngestSummary) -> None:
    """The counts so far, in the caller's transaction (the batch that produced them)."""
    conn.execute(
        update(ImportBatch)
        .where(ImportBatch.id == summary.batch)
        .values(
            lines=summary.lines,
            accepted=summary.accepted,
            duplicates=summary.duplicates,
            conflicts=summary.conflicts,
            rejected=summary.rejected,
            first_event_at=summary.first_event,
            last_event_at=summary.last_event,
            periods=orjson.dumps(summary.periods).decode(),
        )
    )


def close_receipt(engine: Engine, summary: IngestSummary, rejects: RejectsWriter) -> None:
    with engine.begin() as conn:
        save_counts(conn, summary)
        conn.execute(
            update(ImportBatch)
            .where(ImportBatch.id == summary.batch)
            .values(
                sha256=summary.sha256,
                status="completed",
                rejects_path=str(rejects.path) if rejects.count and rejects.path else None,
                finished_at=datetime.now(UTC),
            )
        )


def fail_receipt(engine: Engine, summary: IngestSummary) -> None:
    """Best effort: a killed process leaves its receipt `running`, an error marks it `failed`."""
    try:
        with engine.begin() as conn:
            conn.execute(
                update(ImportBatch)
                .where(ImportBatch.id == summary.batch)
                .values(status="failed", finished_at=datetime.now(UTC))
            )
    except Exception:
        return


def earlier_imports(engine: Engine, project: Project, summary: IngestSummary) -> list[str]:
    """Other completed imports of the same content as this one."""
    earlier = imports_with_digest(engine, project, summary.sha256)
    return [batch for batch in earlier if batch != summary.batch]


def imports_with_digest(engine: Engine, project: Project, sha256: str | None) -> list[str]:
    """Completed imports of exactly this content (by SHA-256), oldest first."""
    if sha256 is None:
        return []
    with engine.connect() as conn:
        rows = conn.execute(
            select(ImportBatch.id)
            .where(ImportBatch.project_id == project.id)
            .where(ImportBatch.sha256 == sha256)
            .where(ImportBatch.status == "completed")
            .order_by(ImportBatch.started_at)
        ).all()
    return [row[0] for row in rows]
