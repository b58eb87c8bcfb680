"""`neruba customer forget`: remove a customer's personal data, keep the books.

What goes and what stays is in domain/privacy.py. The events are rewritten in batches, one
transaction each (services/ops/event_properties.py; only events that still carry a personal
property are touched); the last transaction clears the name and e-mail, scrubs the Stripe
mirror, the stored webhook bodies and the audit arguments, and sets `forgotten_at`.

Forget can be repeated, and each run does the whole scrub again: a forget that was
interrupted is finished by running it again, and a customer forgotten earlier loses what
arrived since (events ingested later with a personal property, a Stripe mirror refreshed by a
later `stripe pull`, a name set again by `customer import`). A repeated forget keeps the
original `forgotten_at` / `forgotten_by`, reports `already_forgotten` and counts only what
it removed this time; with nothing new, it removes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.orm import Session

from neruba_cli.db.schema import (
    Project,
)
from neruba_cli.db.tables import (
    audit_records_t,
    customers_t,
    stripe_objects_t,
    stripe_webhook_events_t,
)
from neruba_cli.domain import privacy
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.ops import event_properties
from neruba_cli.services.ops.retention import meters_in_use
from neruba_cli.services.tenancy import customers

BATCH = event_properties.BATCH


@dataclass
class ForgetReport:
    customer: str  # external id
    id: str
    personal_properties: list[str]
    dry_run: bool
    already_forgotten: bool = False
    forgotten_at: datetime | None = None
    forgotten_by: str | None = None
    events: int = 0
    properties_removed: int = 0
    name_and_email: bool = False  # the name or e-mail was set (and is cleared)
    stripe_objects: int = 0
    webhook_events: int = 0
    audit_records: int = 0
    kept: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "customer": self.customer,
            "id": self.id,
            "dry_run": self.dry_run,
            "already_forgotten": self.already_forgotten,
            "forgotten_at": format_ts(self.forgotten_at),
            "forgotten_by": self.forgotten_by,
            "personal_properties": self.personal_properties,
            "events": self.events,
            "properties_removed": self.properties_removed,
            "name_and_email": self.name_and_email,
            "stripe_objects": self.stripe_objects,
            "webhook_events": self.webhook_events,
            "audit_records": self.audit_records,
        }


def prepare(
    engine: Engine, project: Project, ident: str, personal: Sequence[str], *, dry_run: bool
) -> ForgetReport:
    """Find the customer and refuse a config that would strip what a meter reads (also when
    the customer was forgotten before: a repeated forget strips events again)."""
    names = privacy.personal_properties(personal)
    with Session(engine) as session:
        customer = customers.get_customer(session, project, ident)
        report = ForgetReport(customer.external_id, customer.id, list(names), dry_run)
        if customer.forgotten_at is not None:
            report.already_forgotten = True
            report.forgotten_at = customer.forgotten_at
            report.forgotten_by = customer.forgotten_by
        uses = privacy.meter_uses(names, meters_in_use(session.connection(), project))
    if uses:
        listing = "; ".join(str(use) for use in uses)
        raise InvalidInput(
            f"refusing to forget {customer.external_id!r}: {listing}; removing it would change "
            "the invoices of a rerun",
            hint="take the property out of [privacy] personal_properties, or stop the meter "
            "from reading it (a new catalog version) first",
        )
    return report


def forget(
    engine: Engine, project: Project, report: ForgetReport, *, actor: str, now: datetime
) -> ForgetReport:
    """Carry out (or, for a dry run, count) what `prepare` found to do. Every count is of
    what this run removed (or would): a repeated forget counts only what arrived since."""
    _strip_events(engine, project, report)
    with engine.begin() as conn:
        row = conn.execute(
            select(
                customers_t.c.stripe_id,
                customers_t.c.name,
                customers_t.c.email,
                customers_t.c.forgotten_at,
                customers_t.c.forgotten_by,
            ).where(customers_t.c.id == report.id)
        ).one()
        write = not report.dry_run
        report.name_and_email = row.name is not None or row.email is not None
        report.stripe_objects = _scrub_stripe(conn, project, row.stripe_id, write=write)
        report.webhook_events = _scrub_webhooks(conn, project, row.stripe_id, write=write)
        report.audit_records = _scrub_audit(conn, project, report.customer, write=write)
        if row.forgotten_at is not None:  # forgotten before (maybe by a concurrent forget)
            report.already_forgotten = True
            report.forgotten_at, report.forgotten_by = row.forgotten_at, row.forgotten_by
        if write and report.name_and_email:
            conn.execute(
                update(customers_t)
                .where(customers_t.c.id == report.id)
                .values(name=None, email=None, updated_at=now)
            )
        if write and row.forgotten_at is None:
            first = conn.execute(
                update(customers_t)
                .where(customers_t.c.id == report.id, customers_t.c.forgotten_at.is_(None))
                .values(forgotten_at=now, forgotten_by=actor, updated_at=now)
            )
            if first.rowcount:
                report.forgotten_at, report.forgotten_by = now, actor
            else:  # a concurrent forget set it first: keep its record
                report.already_forgotten = True
                report.forgotten_at, report.forgotten_by = conn.execute(
                    select(customers_t.c.forgotten_at, customers_t.c.forgotten_by).where(
                        customers_t.c.id == report.id
                    )
                ).one()
    return report


def _strip_events(engine: Engine, project: Project, report: ForgetReport) -> None:
    """Remove the personal properties from the customer's events, a batch per transaction."""
    personal = frozenset(report.personal_properties)
    if not personal:
        return
    selection = event_properties.Selection(project.id, [report.id])
    for batch in event_properties.rewrite(
        engine,
        selection,
        lambda properties: privacy.without(properties, personal),
        write=not report.dry_run,
        batch_size=BATCH,
    ):
        report.events += batch.events
        report.properties_removed += batch.removed
    with engine.begin() as conn:  # the versions corrections superseded: no copy keeps them
        event_properties.rewrite_versions(
            conn,
            selection,
            lambda properties: privacy.without(properties, personal),
            write=not report.dry_run,
        )


def _scrub_stripe(conn: Connection, project: Project, stripe_id: str | None, *, write: bool) -> int:
    """The customer's name, e-mail, phone and addresses in the mirrored Stripe objects."""
    if not stripe_id:
        return 0
    rows = conn.execute(
        select(stripe_objects_t.c.id, stripe_objects_t.c.data).where(
            stripe_objects_t.c.project_id == project.id,
            (stripe_objects_t.c.stripe_customer == stripe_id)
            | (stripe_objects_t.c.stripe_id == stripe_id),
        )
    ).all()
    changed = 0
    for row_id, data in rows:
        scrubbed, touched = privacy.scrub_stripe_object(orjson.loads(data))
        if touched:
            changed += 1
            if write:
                conn.execute(
                    update(stripe_objects_t)
                    .where(stripe_objects_t.c.id == row_id)
                    .values(data=orjson.dumps(scrubbed).decode())
                )
    return changed


def _scrub_webhooks(
    conn: Connection, project: Project, stripe_id: str | None, *, write: bool
) -> int:
    """The same details in the stored bodies of Stripe webhook deliveries about the customer
    (`data.object` and the `previous_attributes` of an update). `stripe webhook reprocess`
    parses the stored body without verifying its signature again, so it still works."""
    if not stripe_id:
        return 0
    rows = conn.execute(
        select(stripe_webhook_events_t.c.id, stripe_webhook_events_t.c.payload).where(
            stripe_webhook_events_t.c.project_id == project.id,
            stripe_webhook_events_t.c.payload.contains(stripe_id, autoescape=True),
        )
    ).all()
    changed = 0
    for row_id, payload in rows:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        data = event.get("data") if isinstance(event, dict) else None
        if not isinstance(data, dict):
            continue
        obj = data.get("object")
        if not isinstance(obj, dict) or stripe_id not in (obj.get("customer"), obj.get("id")):
            continue
        touched = False
        for part in ("object", "previous_attributes"):
            if isinstance(data.get(part), dict):
                data[part], scrubbed = privacy.scrub_stripe_object(data[part])
                touched = touched or scrubbed
        if touched:
            changed += 1
            if write:
                conn.execute(
                    update(stripe_webhook_events_t)
                    .where(stripe_webhook_events_t.c.id == row_id)
                    .values(payload=orjson.dumps(event).decode())
                )
    return changed


def _scrub_audit(conn: Connection, project: Project, external_id: str, *, write: bool) -> int:
    """The name and e-mail given to `customer create` for this customer, in the audit trail."""
    needle = orjson.dumps({"external_id": external_id}).decode()[1:-1]  # "external_id":"..."
    rows = conn.execute(
        select(audit_records_t.c.id, audit_records_t.c.arguments).where(
            audit_records_t.c.project_slug == project.slug,
            audit_records_t.c.command == "customer create",
            audit_records_t.c.arguments.contains(needle, autoescape=True),
        )
    ).all()
    changed = 0
    for row_id, arguments in rows:
        parsed = orjson.loads(arguments)
        if parsed.get("external_id") != external_id:
            continue
        scrubbed, touched = privacy.scrub_audit_arguments(parsed)
        if touched:
            changed += 1
            if write:
                conn.execute(
                    update(audit_records_t)
                    .where(audit_records_t.c.id == row_id)
                    .values(arguments=orjson.dumps(scrubbed, option=orjson.OPT_SORT_KEYS).decode())
                )
    return changed
