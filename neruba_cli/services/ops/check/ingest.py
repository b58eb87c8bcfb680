"""Ingest sweep (`ingest.batches`): a completed import's `accepted` equals the events and
one-off charges rows carrying its batch id (an event an `ingest --replace` amended counts for
the import that stored it and for the replacing one), and its lines are accepted + duplicates +
conflicts + rejected; a running (killed) or failed one never claims more than it stored
(domain/consistency.py, `batch_problems`). A running import is a note: still going, or killed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select, union

from neruba_cli.db.schema import Project
from neruba_cli.db.tables import charges_t, event_versions_t, events_t, import_batches_t
from neruba_cli.domain import consistency
from neruba_cli.domain.consistency import BatchFacts
from neruba_cli.services.ops.check.result import CheckResult, Sweep


def batches(conn: Connection, project: Project, result: CheckResult) -> None:
    stored: dict[str, int] = {}
    for batch_id, count in conn.execute(
        select(charges_t.c.batch_id, func.count())
        .where(charges_t.c.project_id == project.id, charges_t.c.batch_id.is_not(None))
        .group_by(charges_t.c.batch_id)
    ):
        stored[batch_id] = stored.get(batch_id, 0) + int(count)
    for batch_id, count in conn.execute(_event_rows_by_batch(project)):
        stored[batch_id] = stored.get(batch_id, 0) + int(count)
    rows = conn.execute(
        select(import_batches_t)
        .where(import_batches_t.c.project_id == project.id)
        .order_by(import_batches_t.c.started_at, import_batches_t.c.id)
    ).all()
    for row in rows:
        batch = BatchFacts(
            row.id,
            row.source,
            row.status,
            row.lines,
            row.accepted,
            row.duplicates,
            row.conflicts,
            row.rejected,
            stored.get(row.id, 0),
        )
        for problem in consistency.batch_problems(batch):
            result.fail(f"import {row.id} ({row.source}) {problem}")
        if row.status == "running":
            result.note(
                f"import {row.id} ({row.source}) has been running since "
                f"{row.started_at:%Y-%m-%d %H:%M:%S} UTC with {batch.stored} rows stored: "
                "still going, or killed (importing the file again completes it)"
            )
    result.checked = len(rows)


def _event_rows_by_batch(project: Project) -> Any:
    """Per batch, the events it stored: the rows that carry it, and the events one of whose
    superseded versions carries it (an `ingest --replace` line takes over the row of the event
    it amends; the version it replaced keeps the import that stored it), each event once."""
    carried = union(
        select(events_t.c.id.label("event_id"), events_t.c.batch_id).where(
            events_t.c.project_id == project.id, events_t.c.batch_id.is_not(None)
        ),
        select(event_versions_t.c.event_id, event_versions_t.c.batch_id).where(
            event_versions_t.c.project_id == project.id, event_versions_t.c.batch_id.is_not(None)
        ),
    ).subquery("carried")
    return select(carried.c.batch_id, func.count()).group_by(carried.c.batch_id)


SWEEPS: list[tuple[str, str, Sweep]] = [
    ("ingest.batches", "import receipts count the events they stored", batches),
]
