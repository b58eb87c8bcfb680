"""Subscriptions: a customer on a plan version from a start, split into phases by plan
changes, ended by a cancellation. Periods and proration are computed by domain/periods.py
in the customer's time zone."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import Customer, Plan, PlanVersion, Project, Subscription
from neruba_cli.db.schema import SubscriptionPhase as PhaseRow
from neruba_cli.domain.catalog import MAX_TRIAL_DAYS
from neruba_cli.domain.errors import AlreadyExists, InvalidInput, NotFound
from neruba_cli.domain.periods import trial_end
from neruba_cli.domain.subscription_overlap import Held, overlap_warning, overlapping
from neruba_cli.domain.timestamps import format_ts, parse_ts
from neruba_cli.services.catalog import store as catalog_store
from neruba_cli.services.ingest.rejects import Reject, RejectsWriter, keep
from neruba_cli.services.ingest.tabular import CsvRow
from neruba_cli.services.tenancy import customers

ANCHORS = ("calendar", "anniversary")
CSV_COLUMNS = ("customer", "plan", "start", "anchor", "trial_days")
CSV_REQUIRED = ("customer", "plan", "start")


@dataclass
class SubscriptionImport:
    lines: int = 0
    created: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejects: list[Reject] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)  # {"line", "message"}


def validate_anchor(anchor: str) -> str:
    if anchor not in ANCHORS:
        raise InvalidInput(
            f"anchor: {anchor!r} is not an anchor", hint="use calendar or anniversary"
        )
    return anchor


def create_subscription(
    session: Session,
    project: Project,
    customer_ident: str,
    plan_ref: str,
    *,
    start: datetime,
    anchor: str = "calendar",
    trial_days: int | None = None,
    now: datetime,
    plans: dict[tuple[str, int | None], catalog_store.StoredPlan] | None = None,
) -> Subscription:
    """`plans` caches plan lookups across the rows of one import (each is parsed once)."""
    customer = customers.get_customer(session, project, customer_ident)
    code, version = catalog_store.parse_plan_ref(plan_ref)
    cache = {} if plans is None else plans
    stored = cache.get((code, version))
    if stored is None:
        stored = cache[(code, version)] = catalog_store.get_plan(session, project, code, version)
    _same_currency(customer, stored.plan.currency, code)
    days = stored.plan.trial_days if trial_days is None else trial_days
    if not 0 <= days <= MAX_TRIAL_DAYS:
        raise InvalidInput(f"trial days must be 0 to {MAX_TRIAL_DAYS}")
    _refuse_twin(session, customer, stored.version_id, start)
    subscription = Subscription(
        id=new_id("sub"),
        project_id=project.id,
        customer_id=customer.id,
        anchor=validate_anchor(anchor),
        trial_days=days,
        start_at=start,
        end_at=None,
        created_at=now,
    )
    session.add(subscription)
    session.flush()
    session.add(
        PhaseRow(
            id=new_id("sph"),
            subscription_id=subscription.id,
            plan_version_id=stored.version_id,
            start_at=start,
            end_at=None,
        )
    )
    session.flush()
    return subscription


def _refuse_twin(session: Session, customer: Customer, version_id: str, start: datetime) -> None:
    """A retried `create` must not subscribe the same customer to the same plan twice."""
    plan_id = select(PlanVersion.plan_id).where(PlanVersion.id == version_id).scalar_subquery()
    twin = session.scalar(
        select(Subscription.id)
        .join(PhaseRow, PhaseRow.subscription_id == Subscription.id)
        .join(PlanVersion, PlanVersion.id == PhaseRow.plan_version_id)
        .where(Subscription.customer_id == customer.id)
        .where(Subscription.start_at == start)
        .where(PhaseRow.start_at == start)
        .where(PlanVersion.plan_id == plan_id)
    )
    if twin is not None:
        raise AlreadyExists(
            f"customer {customer.external_id} already has subscription {twin} on this plan "
            f"from {format_ts(start)}"
        )


def overlap_warnings(session: Session, subscription: Subscription) -> list[str]:
    """The other subscriptions of the customer that run alongside a new one: allowed (an
    add-on plan), but said, since it is also what a mistaken second `create` looks like."""
    customer = session.get_one(Customer, subscription.customer_id)
    others = session.scalars(
        select(Subscription)
        .where(Subscription.customer_id == customer.id, Subscription.id != subscription.id)
        .order_by(Subscription.start_at, Subscription.id)
    )
    held = [_held(session, other) for other in others]
    new = _held(session, subscription)
    return [
        overlap_warning(customer.external_id, new.plan, new.meters, new.start, other)
        for other in overlapping(held, subscription.start_at)
    ]


def _held(session: Session, subscription: Subscription) -> Held:
    phases = phases_of(session, subscription)
    meters: set[str] = set()
    for phase in phases:
        stored = catalog_store.get_plan_version(session, phase.plan_version_id)
        meters.update(charge.meter for charge in stored.plan.charges)
    last = catalog_store.get_plan_version(session, phases[-1].plan_version_id)
    return Held(
        subscription.id,
        last.plan.code,
        subscription.start_at,
        subscription.end_at,
        frozenset(meters),
    )


def _same_currency(customer: Customer, currency: str, plan: str) -> None:
    if customer.currency != currency:
        raise InvalidInput(
            f"customer {customer.external_id} is billed in {customer.currency}, "
            f"plan {plan} in {currency}"
        )


def get_subscription(session: Session, project: Project, ident: str) -> Subscription:
    found = session.scalar(
        select(Subscription).where(Subscription.project_id == project.id, Subscription.id == ident)
    )
    if found is None:
        raise NotFound(f"subscription {ident!r} does not exist in project {project.slug!r}")
    return found


def phases_of(session: Session, subscription: Subscription) -> list[PhaseRow]:
    return list(
        session.scalars(
            select(PhaseRow)
            .where(PhaseRow.subscription_id == subscription.id)
            .order_by(PhaseRow.start_at)
        )
    )


def change_plan(
    session: Session, project: Project, ident: str, plan_ref: str, *, at: datetime
) -> Subscription:
    """End the phase in force at `at` and start one on the plan's current (or named) version.

    Usage before `at` is priced on the old version, usage after on the new; each piece's
    tiers start from zero (see the README's note on tiers across a split).
    """
    subscription = get_subscription(session, project, ident)
    phases = phases_of(session, subscription)
    current = _phase_at(subscription, phases, at)
    if any(phase.start_at > at for phase in phases):
        raise InvalidInput(f"subscription {ident} already has a change after {format_ts(at)}")
    code, version = catalog_store.parse_plan_ref(plan_ref)
    stored = catalog_store.get_plan(session, project, code, version)
    customer = session.get_one(Customer, subscription.customer_id)
    _same_currency(customer, stored.plan.currency, code)
    if stored.version_id == current.plan_version_id:
        raise InvalidInput(f"subscription {ident} is already on {code} v{stored.version}")
    interval = catalog_store.get_plan_version(session, current.plan_version_id).plan.interval
    if stored.plan.interval != interval:
        raise InvalidInput(
            f"subscription {ident} is billed every {interval}, plan {code} every "
            f"{stored.plan.interval}",
            hint="a change keeps the billing interval: cancel and create a new subscription",
        )
    current.end_at = at
    session.add(
        PhaseRow(
            id=new_id("sph"),
            subscription_id=subscription.id,
            plan_version_id=stored.version_id,
            start_at=at,
            end_at=subscription.end_at,
        )
    )
    session.flush()
    return subscription


def _phase_at(subscription: Subscription, phases: list[PhaseRow], at: datetime) -> PhaseRow:
    if subscription.end_at is not None and at >= subscription.end_at:
        raise InvalidInput(
            f"subscription {subscription.id} ends at {format_ts(subscription.end_at)}"
        )
    for phase in phases:
        if phase.start_at < at and (phase.end_at is None or at < phase.end_at):
            return phase
    raise InvalidInput(
        f"{format_ts(at)} is not inside subscription {subscription.id} "
        f"(it starts {format_ts(subscription.start_at)})"
    )


def cancel(session: Session, project: Project, ident: str, *, at: datetime) -> Subscription:
    subscription = get_subscription(session, project, ident)
    phases = phases_of(session, subscription)
    if at <= subscription.start_at:
        raise InvalidInput(
            f"cancel at {format_ts(at)} is not after the start {format_ts(subscription.start_at)}"
        )
    if subscription.end_at is not None and subscription.end_at <= at:
        raise InvalidInput(f"subscription {ident} already ends at {format_ts(subscription.end_at)}")
    if any(phase.start_at >= at for phase in phases if phase is not phases[0]):
        raise InvalidInput(f"subscription {ident} has a plan change at or after {format_ts(at)}")
    subscription.end_at = at
    phases[-1].end_at = at
    session.flush()
    return subscription


def list_subscriptions(
    session: Session, project: Project, customer_ident: str | None = None
) -> list[Subscription]:
    query = select(Subscription).where(Subscription.project_id == project.id)
    if customer_ident is not None:
        customer = customers.get_customer(session, project, customer_ident)
        query = query.where(Subscription.customer_id == customer.id)
    return list(session.scalars(query.order_by(Subscription.start_at, Subscription.id)))


def to_dict(session: Session, subscription: Subscription) -> dict[str, Any]:
    customer = session.get_one(Customer, subscription.customer_id)
    phases = []
    for phase in phases_of(session, subscription):
        version = session.get_one(PlanVersion, phase.plan_version_id)
        plan = session.get_one(Plan, version.plan_id)
        phases.append(
            {
                "plan": plan.code,
                "version": version.version,
                "start": format_ts(phase.start_at),
                "end": format_ts(phase.end_at),
            }
        )
    trial = (
        trial_end(subscription.start_at, subscription.trial_days, customer.timezone)
        if subscription.trial_days
        else None
    )
    return {
        "id": subscription.id,
        "customer": customer.external_id,
        "plan": phases[-1]["plan"] if phases else None,
        "version": phases[-1]["version"] if phases else None,
        "start": format_ts(subscription.start_at),
        "end": format_ts(subscription.end_at),
        "anchor": subscription.anchor,
        "trial_days": subscription.trial_days,
        "trial_ends": format_ts(trial),
        "timezone": customer.timezone,
        "phases": phases,
    }


def import_subscriptions(
    session: Session,
    project: Project,
    rows: Iterable[CsvRow | Reject],
    *,
    now: datetime,
    rejects: RejectsWriter,
    on_progress: Callable[[int], None] | None = None,
) -> SubscriptionImport:
    """One subscription per row; a row naming a subscription that already exists (same
    customer, plan and start) is left alone, so importing a file twice creates nothing."""
    report = SubscriptionImport()
    plans: dict[tuple[str, int | None], catalog_store.StoredPlan] = {}
    for item in rows:
        report.lines += 1
        if isinstance(item, Reject):
            _reject(report, rejects, item)
        else:
            try:
                with session.begin_nested():
                    created = _import_row(session, project, item, now, plans)
                    if created is not None:
                        report.warnings += [
                            {"line": item.line, "message": message}
                            for message in overlap_warnings(session, created)
                        ]
            except InvalidInput as exc:
                _reject(report, rejects, Reject(item.line, exc.message, item.raw))
            except NotFound as exc:
                _reject(report, rejects, Reject(item.line, exc.message, item.raw))
            else:
                if created is not None:
                    report.created += 1
                else:
                    report.unchanged += 1
        if on_progress is not None:
            on_progress(report.lines)
    return report


def _reject(report: SubscriptionImport, writer: RejectsWriter, reject: Reject) -> None:
    report.rejected += 1
    keep(report.rejects, reject, writer)


def _import_row(
    session: Session,
    project: Project,
    row: CsvRow,
    now: datetime,
    plans: dict[tuple[str, int | None], catalog_store.StoredPlan],
) -> Subscription | None:
    """The subscription the row created, or None when it already existed."""
    values = row.values
    start = parse_ts(values.get("start", ""), field="start")
    trial_text = (values.get("trial_days") or "").strip()
    if trial_text and not re.fullmatch(r"[0-9]{1,4}", trial_text):
        raise InvalidInput(f"trial_days {trial_text!r} is not a whole number of days")
    customer = customers.get_customer(session, project, (values.get("customer") or "").strip())
    try:
        return create_subscription(
            session,
            project,
            customer.external_id,
            values["plan"].strip(),
            start=start,
            anchor=(values.get("anchor") or "calendar").strip() or "calendar",
            trial_days=int(trial_text) if trial_text else None,
            now=now,
            plans=plans,
        )
    except AlreadyExists:
        return None
