"""`neruba stripe pull`: mirror Stripe's invoices, payments, refunds and credit notes locally,
then apply what Stripe collected and refunded to Neruba's invoices.

Each object type is swept page by page (newest first, `starting_after`); after every page the
objects and the cursor are stored in one transaction, so a pull that is interrupted resumes
after the last stored page. A sweep that reaches the end marks the mirrored objects it did not
see as deleted in Stripe — only those created and last seen before it started, so an object
a concurrent push or webhook just stored is never taken for a deleted one. Every one of these
transactions is fenced by the pull's lease (db/locks.py): a pull that lost it stores nothing
more, and the next pull resumes the sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, insert, or_, select, update

from neruba_cli.db import locks
from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import Project
from neruba_cli.db.tables import stripe_cursors_t, stripe_objects_t
from neruba_cli.domain import lock_names
from neruba_cli.domain.errors import LockLost, NerubaError
from neruba_cli.services.stripe import gateway as stripe_gateway
from neruba_cli.services.stripe import mirror as stripe_mirror
from neruba_cli.services.stripe import payments as stripe_payments
from neruba_cli.services.stripe.gateway import Gateway

# (Stripe resource, mirrored object type), in the order payments need them: invoice payments
# before charges, because a refund finds its invoice through the invoice payment.
PULLED = (
    ("invoices", "invoice"),
    ("invoice_payments", "invoice_payment"),
    ("payment_intents", "payment_intent"),
    ("charges", "charge"),
    ("refunds", "refund"),
    ("credit_notes", "credit_note"),
)


@dataclass
class PullReport:
    since: datetime | None
    objects: dict[str, int] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    deleted: dict[str, int] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": None if self.since is None else self.since.isoformat(),
            "objects": self.objects,
            "resumed": self.resumed,
            "deleted": self.deleted,
            "applied": self.applied,
            "errors": self.errors,
        }


def pull(
    engine: Engine,
    project: Project,
    *,
    gateway: Callable[[], Gateway],
    since: datetime | None,
    actor: str,
    now: datetime,
    apply: bool = True,
    progress: Callable[[str, int], None] | None = None,
) -> PullReport:
    """Mirror every pulled type, then (unless `apply` is off) record Stripe's payments and
    refunds in the ledger."""
    client = gateway()
    report = PullReport(since)
    holding = locks.Holding(engine, locks.acquire(engine, lock_names.stripe_pull(project.slug)))
    try:
        for resource, kind in PULLED:
            _sweep(holding, project, client, resource, kind, since, now, report, progress)
        if apply:
            holding.renew_when_due()
            _apply(engine, project, report, actor=actor, now=now)
    finally:
        holding.release()
    return report


def _sweep(
    holding: locks.Holding,
    project: Project,
    client: Gateway,
    resource: str,
    kind: str,
    since: datetime | None,
    now: datetime,
    report: PullReport,
    progress: Callable[[str, int], None] | None,
) -> None:
    sweep, after, seen, started = _start(holding, project, kind, since, now, report)
    while True:
        params: dict[str, Any] = {"limit": stripe_gateway.PAGE_SIZE}
        if after is not None:
            params["starting_after"] = after
        if since is not None:
            params["created"] = {"gte": int(since.timestamp())}
        page, more = client.list_page(resource, params)
        with holding.write() as conn:
            for obj in page:
                stripe_mirror.upsert(conn, project, obj, observed_at=now, sweep=sweep)
            seen += len(page)
            after = page[-1]["id"] if page else after
            conn.execute(
                update(stripe_cursors_t)
                .where(
                    stripe_cursors_t.c.project_id == project.id, stripe_cursors_t.c.object == kind
                )
                .values(cursor=after, seen=seen)
            )
        if progress:
            progress(kind, seen)
        if not more or not page:
            break
    with holding.write() as conn:
        report.deleted[kind] = _mark_deleted(conn, project, kind, sweep, since, started)
        conn.execute(
            update(stripe_cursors_t)
            .where(stripe_cursors_t.c.project_id == project.id, stripe_cursors_t.c.object == kind)
            .values(cursor=None, completed_at=now)
        )
    report.objects[kind] = seen


def _start(
    holding: locks.Holding,
    project: Project,
    kind: str,
    since: datetime | None,
    now: datetime,
    report: PullReport,
) -> tuple[str, str | None, int, datetime]:
    """The sweep to continue (an unfinished one with the same --since) or a new one."""
    with holding.write() as conn:
        row = conn.execute(
            select(stripe_cursors_t).where(
                stripe_cursors_t.c.project_id == project.id, stripe_cursors_t.c.object == kind
            )
        ).first()
        if row is not None and row.completed_at is None and row.sweep and row.since == since:
            report.resumed.append(kind)
            return row.sweep, row.cursor, int(row.seen), row.started_at
        sweep = new_id("spl")
        values = {
            "sweep": sweep,
            "since": since,
            "cursor": None,
            "seen": 0,
            "started_at": now,
            "completed_at": None,
        }
        if row is None:
            conn.execute(
                insert(stripe_cursors_t).values(project_id=project.id, object=kind, **values)
            )
        else:
            conn.execute(
                update(stripe_cursors_t)
                .where(
                    stripe_cursors_t.c.project_id == project.id, stripe_cursors_t.c.object == kind
                )
                .values(**values)
            )
    return sweep, None, 0, now


def _mark_deleted(
    conn: Connection,
    project: Project,
    kind: str,
    sweep: str,
    since: datetime | None,
    started: datetime,
) -> int:
    query = (
        update(stripe_objects_t)
        .where(
            stripe_objects_t.c.project_id == project.id,
            stripe_objects_t.c.object == kind,
            stripe_objects_t.c.deleted.is_(False),
            or_(stripe_objects_t.c.sweep.is_(None), stripe_objects_t.c.sweep != sweep),
            stripe_objects_t.c.stripe_created < started,
            stripe_objects_t.c.observed_at < started,  # not just stored by a push or a webhook
        )
        .values(deleted=True)
    )
    if since is not None:
        query = query.where(stripe_objects_t.c.stripe_created >= since)
    return int(conn.execute(query).rowcount)


def _apply(
    engine: Engine, project: Project, report: PullReport, *, actor: str, now: datetime
) -> None:
    """Payments and refunds from the mirror into the ledger; one failure does not stop the
    rest (it is reported, and the next pull tries again)."""
    with engine.connect() as conn:
        paid = conn.execute(
            select(stripe_objects_t.c.data).where(
                stripe_objects_t.c.project_id == project.id,
                stripe_objects_t.c.object == "invoice",
                stripe_objects_t.c.neruba_project == project.slug,
                stripe_objects_t.c.deleted.is_(False),
                stripe_objects_t.c.amount_paid > 0,
            )
        ).all()
        refunded = conn.execute(
            select(stripe_objects_t.c.data).where(
                stripe_objects_t.c.project_id == project.id,
                stripe_objects_t.c.object == "charge",
                stripe_objects_t.c.deleted.is_(False),
                stripe_objects_t.c.amount_refunded > 0,
            )
        ).all()
    for rows, apply in (
        (paid, stripe_payments.apply_invoice),
        (refunded, stripe_payments.apply_charge),
    ):
        for row in rows:
            obj = orjson.loads(row.data)
            try:
                message = apply(engine, project, obj, actor=actor, now=now)
            except LockLost:
                raise  # the applier's lease is gone: it must stop writing (exit 5)
            except NerubaError as exc:
                report.errors.append(f"{obj['id']}: {exc}")
                continue
            if message:
                report.applied.append(message)
