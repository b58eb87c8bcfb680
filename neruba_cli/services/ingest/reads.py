"""Reading what imports stored: `events list` and `ingest receipts`, as plain values."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import false, select
from sqlalchemy.orm import Session

from neruba_cli.db.schema import Customer, Event, EventVersion, ImportBatch, Project
from neruba_cli.domain.events import quantity_text
from neruba_cli.domain.timestamps import format_ts


def list_events(
    session: Session,
    project: Project,
    *,
    customer: str | None = None,
    meter: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    history: bool = False,
) -> list[dict[str, Any]]:
    """Stored events, newest first, as plain values: the current ones (not voided), or with
    `history` every event, voided ones too, each with its superseded versions (oldest first,
    each with the change that superseded it: who, when, why)."""
    query = (
        select(Event, Customer.external_id)
        .join(Customer, Customer.id == Event.customer_id)
        .where(Event.project_id == project.id)
    )
    if not history:
        query = query.where(Event.voided == false())
    if customer:
        query = query.where(Customer.external_id == customer)
    if meter:
        query = query.where(Event.meter == meter)
    if since is not None:
        query = query.where(Event.ts >= since)
    rows = session.execute(query.order_by(Event.ts.desc(), Event.id.desc()).limit(limit)).all()
    events = [
        {
            "idempotency_key": event.idempotency_key,
            "customer": external,
            "meter": event.meter,
            "timestamp": format_ts(event.ts),
            "quantity": quantity_text(event.quantity),
            "properties": orjson.loads(event.properties),
            "batch": event.batch_id,
            "line": event.line,
            "version": event.version,
            "voided": bool(event.voided),
        }
        for event, external in rows
    ]
    if history:
        versions = _versions(session, project, [event.id for event, _ in rows if event.version > 1])
        for (event, _), listed in zip(rows, events, strict=True):
            listed["history"] = versions.get(event.id, [])
    return events


def _versions(
    session: Session, project: Project, event_ids: list[int]
) -> dict[int, list[dict[str, Any]]]:
    found: dict[int, list[dict[str, Any]]] = {}
    for first in range(0, len(event_ids), 500):
        chunk = event_ids[first : first + 500]
        rows = session.execute(
            select(EventVersion)
            .where(EventVersion.project_id == project.id, EventVersion.event_id.in_(chunk))
            .order_by(EventVersion.event_id, EventVersion.version)
        ).scalars()
        for row in rows:
            found.setdefault(row.event_id, []).append(
                {
                    "version": row.version,
                    "quantity": quantity_text(row.quantity),
                    "properties": orjson.loads(row.properties),
                    "voided": bool(row.voided),
                    "batch": row.batch_id,
                    "line": row.line,
                    "superseded_by": row.change,
                    "changed_at": format_ts(row.changed_at),
                    "changed_by": row.changed_by,
                    "reason": row.reason,
                    "change_batch": row.change_batch,
                }
            )
    return found


def list_receipts(session: Session, project: Project, limit: int = 50) -> list[ImportBatch]:
    return list(
        session.scalars(
            select(ImportBatch)
            .where(ImportBatch.project_id == project.id)
            .order_by(ImportBatch.started_at.desc(), ImportBatch.id.desc())
            .limit(limit)
        )
    )


def receipt_dict(batch: ImportBatch, stale: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A stored receipt; `stale` (billing_run.stale_invoices) are the finalized invoices whose
    period its events reached."""
    return {
        "batch": batch.id,
        "source": batch.source,
        "format": batch.format,
        "sha256": batch.sha256,
        "status": batch.status,
        "lines": batch.lines,
        "accepted": batch.accepted,
        "duplicates": batch.duplicates,
        "conflicts": batch.conflicts,
        "rejected": batch.rejected,
        "voided": batch.voided,
        "replaced": None if batch.replaced is None else orjson.loads(batch.replaced),
        "first_event": format_ts(batch.first_event_at),
        "last_event": format_ts(batch.last_event_at),
        "periods": orjson.loads(batch.periods),
        "rejects_file": batch.rejects_path,
        "actor": batch.actor,
        "started_at": format_ts(batch.started_at),
        "finished_at": format_ts(batch.finished_at),
        "stale_invoices": stale or [],
    }
