"""Stripe webhook deliveries: verify, keep once per event id, apply, and retry what failed.

A delivery is verified over its raw bytes before anything is parsed (a forged or stale one is
refused and nothing is stored). A verified event is stored once per event id: a delivery of an
event already processed is a no-op, one that failed before is processed again. Handling goes
through the same functions as `stripe pull` (the mirror, then payments and refunds by running
totals), so the order in which webhooks and pulls arrive does not matter. An event that cannot
be applied yet (its invoice payment not mirrored, say) is stored as `failed` with the reason,
for `stripe webhook reprocess`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from neruba_cli.db.engine import begin_write
from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import Project
from neruba_cli.db.tables import stripe_webhook_events_t
from neruba_cli.domain.errors import InvalidInput, NerubaError
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.domain.unix_time import optional_unix_seconds
from neruba_cli.domain.webhook_signature import SignatureError, verify
from neruba_cli.services.stripe import mirror as stripe_mirror
from neruba_cli.services.stripe import payments as stripe_payments

STATUSES = ("received", "processed", "ignored", "failed")  # a stored delivery's status

HANDLED = (
    "invoice.paid",
    "invoice.payment_failed",
    "charge.refunded",
    "charge.dispute.created",
    "credit_note.created",
)


@dataclass(frozen=True)
class Delivery:
    """One delivery as received: the raw body and its Stripe-Signature header; `where` names
    it in messages (a file, or a file and line)."""

    body: bytes
    signature: str | None
    where: str
    problem: str | None = None  # why the delivery could not even be read


@dataclass
class IngestReport:
    processed: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = {"processed": 0, "ignored": 0, "duplicate": 0, "failed": 0}
        for item in self.processed:
            counts[item["result"]] += 1
        counts["rejected"] = len(self.rejected)
        return counts

    def as_dict(self) -> dict[str, Any]:
        return {"counts": self.counts(), "events": self.processed, "rejected": self.rejected}


def ingest(
    engine: Engine,
    project: Project,
    deliveries: Iterable[Delivery],
    *,
    secrets: Sequence[str],
    tolerance: int,
    actor: str,
    now: datetime,
    strict: bool = False,
) -> IngestReport:
    """Each delivery in turn; `strict` (a single delivery) raises on a refused one instead of
    reporting it."""
    report = IngestReport()
    for delivery in deliveries:
        try:
            event = _verified(delivery, secrets, tolerance, now)
        except InvalidInput as exc:
            if strict:
                raise
            report.rejected.append({"where": delivery.where, "error": exc.message})
            continue
        report.processed.append(_receive(engine, project, event, delivery.body, actor, now))
    return report


def _verified(
    delivery: Delivery, secrets: Sequence[str], tolerance: int, now: datetime
) -> dict[str, Any]:
    if delivery.problem is not None:
        raise InvalidInput(f"{delivery.where}: {delivery.problem}")
    if not delivery.signature:
        raise SignatureError(f"{delivery.where}: no Stripe-Signature header")
    try:
        verify(
            delivery.body,
            delivery.signature,
            secrets,
            now=int(now.timestamp()),
            tolerance=tolerance,
        )
    except SignatureError as exc:
        raise SignatureError(f"{delivery.where}: {exc.message}") from None
    try:
        event = orjson.loads(delivery.body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{delivery.where}: the body is not JSON ({exc})") from None
    if not isinstance(event, dict) or event.get("object") != "event" or not event.get("id"):
        raise InvalidInput(f"{delivery.where}: the body is not a Stripe event")
    obj = (event.get("data") or {}).get("object")
    if not isinstance(obj, dict):
        raise InvalidInput(f"{delivery.where}: event {event['id']} has no data.object")
    transitions = obj.get("status_transitions")
    times = {
        "created": event.get("created"),
        "data.object.created": obj.get("created"),
        "data.object.status_transitions.paid_at": (
            transitions.get("paid_at") if isinstance(transitions, dict) else None
        ),
    }
    for name, value in times.items():
        try:
            optional_unix_seconds(value, field=name)
        except InvalidInput as exc:
            raise InvalidInput(f"{delivery.where}: event {event['id']}: {exc.message}") from None
    return event


def _receive(
    engine: Engine, project: Project, event: dict[str, Any], body: bytes, actor: str, now: datetime
) -> dict[str, Any]:
    created = event.get("created")
    try:
        with begin_write(engine) as conn:
            conn.execute(
                insert(stripe_webhook_events_t).values(
                    id=new_id("swh"),
                    project_id=project.id,
                    event_id=event["id"],
                    type=str(event.get("type") or ""),
                    status="received",
                    error=None,
                    attempts=0,
                    payload=body.decode("utf-8", errors="replace"),
                    stripe_created=optional_unix_seconds(created, field="created"),
                    received_at=now,
                    processed_at=None,
                )
            )
    except IntegrityError:
        with engine.connect() as conn:
            stored = _row(conn, project, event["id"])
        if stored is not None and stored.status in ("processed", "ignored"):
            return _result(event, "duplicate", "already received; nothing changed")
    return _process(engine, project, event, actor, now)


def _row(conn: Connection, project: Project, event_id: str) -> Any:
    return conn.execute(
        select(stripe_webhook_events_t).where(
            stripe_webhook_events_t.c.project_id == project.id,
            stripe_webhook_events_t.c.event_id == event_id,
        )
    ).first()


def _process(
    engine: Engine, project: Project, event: dict[str, Any], actor: str, now: datetime
) -> dict[str, Any]:
    try:
        status, note = _handle(engine, project, event, actor, now)
        error = None
    except NerubaError as exc:
        status, note, error = "failed", str(exc), str(exc)
    with begin_write(engine) as conn:
        conn.execute(
            update(stripe_webhook_events_t)
            .where(
                stripe_webhook_events_t.c.project_id == project.id,
                stripe_webhook_events_t.c.event_id == event["id"],
            )
            .values(
                status=status,
                error=error,
                attempts=stripe_webhook_events_t.c.attempts + 1,
                processed_at=now if status != "failed" else None,
            )
        )
    return _result(event, status, note)


def _result(event: dict[str, Any], result: str, note: str | None) -> dict[str, Any]:
    return {"event": event["id"], "type": event.get("type"), "result": result, "note": note}


def _handle(
    engine: Engine, project: Project, event: dict[str, Any], actor: str, now: datetime
) -> tuple[str, str | None]:
    kind = str(event.get("type") or "")
    obj: dict[str, Any] = event["data"]["object"]
    created = event.get("created")
    observed = optional_unix_seconds(created, field="created") or now
    if kind not in HANDLED:
        return "ignored", f"{kind} is not an event Neruba acts on"
    metadata = obj.get("metadata") or {}
    if obj.get("object") in ("invoice", "credit_note") and metadata.get("neruba_project") not in (
        project.slug,
        None,
    ):
        return "ignored", f"{obj['id']} belongs to project {metadata.get('neruba_project')!r}"
    with begin_write(engine) as conn:
        stripe_mirror.upsert(conn, project, obj, observed_at=observed)
    if kind == "invoice.paid":
        note = stripe_payments.apply_invoice(engine, project, obj, actor=actor, now=now)
        return "processed", note or f"{obj['id']}: nothing new to record"
    if kind == "charge.refunded":
        note = stripe_payments.apply_charge(engine, project, obj, actor=actor, now=now)
        return "processed", note or f"{obj['id']}: nothing new to record"
    if kind == "invoice.payment_failed":
        number = metadata.get("neruba_invoice") or obj["id"]
        return "processed", f"{number}: a payment attempt failed in Stripe; still due"
    if kind == "charge.dispute.created":
        return "processed", (
            f"dispute {obj['id']} on charge {obj.get('charge')}: "
            f"{obj.get('amount')} {str(obj.get('currency') or '').upper()} ({obj.get('reason')})"
        )
    return "processed", f"credit note {obj['id']} mirrored"


def reprocess(
    engine: Engine,
    project: Project,
    event_ids: Sequence[str],
    *,
    actor: str,
    now: datetime,
) -> list[dict[str, Any]]:
    """Apply again the stored events that failed (all of them, or the ones named)."""
    with engine.connect() as conn:
        query = select(stripe_webhook_events_t).where(
            stripe_webhook_events_t.c.project_id == project.id
        )
        if event_ids:
            query = query.where(stripe_webhook_events_t.c.event_id.in_(event_ids))
        else:
            query = query.where(stripe_webhook_events_t.c.status.in_(("failed", "received")))
        rows = conn.execute(
            query.order_by(stripe_webhook_events_t.c.received_at, stripe_webhook_events_t.c.id)
        ).all()
    missing = sorted(set(event_ids) - {row.event_id for row in rows})
    if missing:
        raise InvalidInput(f"no stored webhook event {', '.join(missing)}")
    results = []
    for row in rows:
        event = orjson.loads(row.payload)
        if row.status in ("processed", "ignored"):
            results.append(_result(event, "duplicate", "already processed; nothing changed"))
            continue
        results.append(_process(engine, project, event, actor, now))
    return results


def list_events(
    conn: Connection, project: Project, *, status: str | None = None
) -> list[dict[str, Any]]:
    query = select(stripe_webhook_events_t).where(
        stripe_webhook_events_t.c.project_id == project.id
    )
    if status is not None:
        query = query.where(stripe_webhook_events_t.c.status == status)
    rows = conn.execute(
        query.order_by(stripe_webhook_events_t.c.received_at, stripe_webhook_events_t.c.id)
    ).all()
    return [
        {
            "event": row.event_id,
            "type": row.type,
            "status": row.status,
            "attempts": row.attempts,
            "error": row.error,
            "received_at": format_ts(row.received_at),
            "processed_at": format_ts(row.processed_at),
        }
        for row in rows
    ]
