"""Ingest sweep (`ingest.batches`): a completed import's `accepted` equals the events and
one-off charges rows carrying its batch id, and its lines are accepted + duplicates +
conflicts + rejected; a running (killed) or failed one never claims more than it stored
(domain/consistency.py, `batch_problems`). A running import is a note: still going, or killed.
"""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from neruba_cli.db.schema import Project
from neruba_cli.db.tables import charges_t, events_t, import_batches_t
from neruba_cli.domain import consistency
from neruba_cli.domain.consistency import BatchFacts
from neruba_cli.services.ops.check.result import CheckResult, Sweep


def batches(conn: Connection, project: Project, result: CheckResult) -> None:
    stored: dict[str, int] = {}
    for table in (events_t, charges_t):
        for batch_id, count in conn.execute(
            select(table.c.batch_id, func.count())
            .where(table.c.project_id == project.id, table.c.batch_id.is_not(None))
            .group_by(table.c.batch_id)
        ):
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


SWEEPS: list[tuple[str, str, Sweep]] = [
    ("ingest.batches", "import receipts count the events they stored", batches),
]
