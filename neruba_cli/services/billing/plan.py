"""What a month bills and the inputs of each invoice, read from the database but never
written to it: a run (services/billing/run.py) and the on-demand computations (`invoice verify`,
`invoice preview`) go through these same steps, so what they show is what a run would
write.

1. **Plan**: which (customer, billing period) pairs the month bills (domain/billing_periods.py)
   and each one's terms: subscriptions, phases on plan versions, base fees, one-off charges.
2. **Detect**: invoices already written for a pair are skipped when neither their terms (the
   setup fingerprint) nor the customer's number of event versions in the period changed —
   events are append-only and a correction (void, amendment) keeps the version it supersedes,
   so a count that did not move means nothing arrived or changed. Only the rest is priced, so
   a rerun after a few late events touches a few customers.
3. **Aggregate** the usage of what is left in the database: one GROUP BY per meter and window
   for a batch of customers (db/usage_sql.py), never a loop over events. The event spans that
   detection already read are reused instead of being queried again.
4. **Build** each invoice with the pure domain (domain/invoice.py), so pricing stays free of
   the database and testable on its own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Row, select
from sqlalchemy.orm import Session, defer

from neruba_cli.db import usage_sql
from neruba_cli.db.schema import (
    Charge,
    Customer,
    Invoice,
    PlanVersion,
    Project,
    Subscription,
    SubscriptionPhase,
)
from neruba_cli.db.tables import (
    charges_t,
    invoices_t,
    plan_versions_t,
    subscription_phases_t,
    subscriptions_t,
)
from neruba_cli.domain import prorated_usage
from neruba_cli.domain.aggregation import MeterSpec
from neruba_cli.domain.billing_periods import (
    Schedule,
    billed_windows,
    is_first_period,
    next_period,
)
from neruba_cli.domain.catalog import MeterDef, PlanDef, load_version
from neruba_cli.domain.errors import InvalidInput, NotFound
from neruba_cli.domain.grouping import GroupKey, key_order
from neruba_cli.domain.invoice import (
    FINAL,
    BuiltInvoice,
    CarriedUsage,
    InvoiceInput,
    MeterUsage,
    OneOffCharge,
    PhasePlan,
    SubscriptionTerms,
    UsagePiece,
    billing_period,
    build_invoice,
    fingerprint_matches,
    inputs_document,
    same_business_inputs,
    same_business_setup,
    setup_document,
    subscription_ids,
    with_ids,
)
from neruba_cli.domain.invoice_limits import Unbillable
from neruba_cli.domain.money import RoundingMode
from neruba_cli.domain.periods import Period, Phase, month_period, split_period

CUSTOMER_BATCH = 500  # customers per aggregation query
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # where recurring gauges start from zero


# --------------------------------------------------------------------------- values


@dataclass
class StoredPlanVersion:
    plan: PlanDef
    meters: dict[str, MeterDef]
    key: str  # CODE@VERSION
    fingerprint: str


@dataclass
class WorkItem:
    """One customer's invoice for one billing period, before usage is known."""

    customer: Customer
    label: str  # the month whose run bills it
    period: Period  # what the invoice covers: the billing period, or up to a cancellation
    terms: list[SubscriptionTerms]
    charges: list[OneOffCharge]
    closed: bool  # the period ended by --as-of
    existing: list[Invoice] = field(default_factory=list)
    raw_count: int = 0
    recurring: bool = False
    carried: list[CarriedUsage] = field(default_factory=list)  # late usage it takes in
    carried_elsewhere: list[list[dict[str, Any]]] = field(default_factory=list)
    fallback: bool = False  # next_invoice, but no open invoice can take it: correct instead
    orphan: bool = False  # invoiced before, but the month no longer bills this period
    window_stats: dict[str, tuple[int, datetime, datetime]] | None = None  # by meter

    @property
    def key(self) -> tuple[str, datetime, datetime]:
        return (self.customer.id, self.period.start, self.period.end)


# --------------------------------------------------------------------------- planning


def plan_items(
    conn: Connection,
    project: Project,
    label: str,
    as_of: datetime,
    only: Sequence[str] = (),
) -> list[WorkItem]:
    """Every (customer, period) the month bills, sorted by customer external id and period."""
    customers = load_customers(conn, project, only)
    versions = plan_versions(conn, project)
    subscriptions = load_subscriptions(conn, project, customers, versions)
    items: dict[tuple[str, datetime, datetime], WorkItem] = {}
    for customer_id, subs in subscriptions.items():
        customer = customers[customer_id]
        for sub, phases in subs:
            schedule = subscription_schedule(sub, phases, customer)
            for period, window in billed_windows(schedule, label):
                key = (customer.id, window.start, window.end)
                item = items.get(key)
                if item is None:
                    item = items[key] = WorkItem(
                        customer, label, window, [], [], window.end <= as_of
                    )
                item.terms.append(_terms(sub, phases, schedule, period, window))
                item.recurring = item.recurring or _has_recurring(phases)
    _place_charges(conn, project, label, customers, items, as_of)
    return sorted(items.values(), key=lambda i: (i.customer.external_id, i.period.start))


def load_customers(conn: Connection, project: Project, only: Sequence[str]) -> dict[str, Customer]:
    query = select(Customer).where(Customer.project_id == project.id)
    if only:
        query = query.where(Customer.external_id.in_(list(only)))
    with Session(bind=conn) as session:
        found = {c.id: c for c in session.scalars(query)}
        session.expunge_all()
    missing = sorted(set(only) - {c.external_id for c in found.values()})
    if missing:
        raise NotFound(
            f"customer {', '.join(repr(m) for m in missing)} does not exist in project "
            f"{project.slug!r}"
        )
    return found


def plan_versions(conn: Connection, project: Project) -> dict[str, StoredPlanVersion]:
    from neruba_cli.db.schema import Plan

    rows = conn.execute(
        select(plan_versions_t, Plan.code)
        .join(Plan, Plan.id == PlanVersion.plan_id)
        .where(Plan.project_id == project.id)
    ).all()
    found: dict[str, StoredPlanVersion] = {}
    for version in rows:
        code = version.code
        plan, meters = load_version(orjson.loads(version.definition))
        found[version.id] = StoredPlanVersion(
            plan, meters, f"{code}@{version.version}", version.fingerprint
        )
    return found


def load_subscriptions(
    conn: Connection,
    project: Project,
    customers: dict[str, Customer],
    versions: dict[str, StoredPlanVersion],
) -> dict[str, list[tuple[Row[Any], list[PhasePlan]]]]:
    subs = conn.execute(select(subscriptions_t).where(Subscription.project_id == project.id)).all()
    phases = conn.execute(
        select(subscription_phases_t)
        .join(Subscription, Subscription.id == SubscriptionPhase.subscription_id)
        .where(Subscription.project_id == project.id)
        .order_by(SubscriptionPhase.start_at)
    ).all()
    by_sub: dict[str, list[PhasePlan]] = defaultdict(list)
    for row in phases:
        stored = versions[row.plan_version_id]
        by_sub[row.subscription_id].append(
            PhasePlan(
                phase=Phase(row.start_at, row.end_at, stored.key),
                plan=stored.plan,
                fingerprint=stored.fingerprint,
                meters={code: m.spec for code, m in stored.meters.items()},
            )
        )
    result: dict[str, list[tuple[Row[Any], list[PhasePlan]]]] = defaultdict(list)
    for row in sorted(subs, key=lambda r: (r.start_at, r.id)):
        if row.customer_id in customers and by_sub.get(row.id):
            result[row.customer_id].append((row, _unique_keys(by_sub[row.id])))
    return result


def _unique_keys(phases: list[PhasePlan]) -> list[PhasePlan]:
    """Phase keys must be unique within a subscription (a plan can come back after a change)."""
    seen: dict[str, int] = {}
    unique = []
    for pp in phases:
        n = seen.get(pp.phase.key, 0)
        seen[pp.phase.key] = n + 1
        if n:
            key = f"{pp.phase.key}#{n + 1}"
            pp = PhasePlan(
                Phase(pp.phase.start, pp.phase.end, key), pp.plan, pp.fingerprint, pp.meters
            )
        unique.append(pp)
    return unique


def subscription_schedule(sub: Row[Any], phases: list[PhasePlan], customer: Customer) -> Schedule:
    return Schedule(
        interval=phases[0].plan.interval,
        anchor=sub.anchor,
        start=sub.start_at,
        end=sub.end_at,
        tz=customer.timezone,
    )


def _has_recurring(phases: list[PhasePlan]) -> bool:
    """A recurring meter's value depends on events before the period: a count of the
    period's own events cannot tell whether it moved, so such items are always repriced."""
    return any(spec.recurring for pp in phases for spec in pp.meters.values())


def _terms(
    sub: Any, phases: list[PhasePlan], schedule: Schedule, period: Period, window: Period
) -> SubscriptionTerms:
    """The subscription's terms on the invoice of `period` (its first fee period, whose base
    fee and usage divisors count against the whole period), which covers `window`."""
    from neruba_cli.domain.periods import trial_end

    fee_periods: list[tuple[Period, str]] = [(period, "arrears")]
    following = next_period(schedule, period)
    if is_first_period(schedule, period):
        fee_periods.append((period, "advance"))
    if following is not None:
        fee_periods.append((following, "advance"))
    clipped = [
        PhasePlan(
            Phase(pp.phase.start, _clip(pp.phase.end, sub.end_at), pp.phase.key),
            pp.plan,
            pp.fingerprint,
            pp.meters,
        )
        for pp in phases
    ]
    pieces = [
        UsagePiece(phase.key, start, end, {})
        for phase, start, end in split_period(window, [pp.phase for pp in clipped])
    ]
    trial = trial_end(sub.start_at, sub.trial_days, schedule.tz) if sub.trial_days else None
    return SubscriptionTerms(
        id=sub.id,
        start=sub.start_at,
        end=sub.end_at,
        trial_end=trial,
        phases=tuple(clipped),
        fee_periods=tuple(fee_periods),  # type: ignore[arg-type]
        pieces=tuple(pieces),
    )


def _clip(end: datetime | None, cancel: datetime | None) -> datetime | None:
    if cancel is None:
        return end
    return cancel if end is None else min(end, cancel)


def _place_charges(
    conn: Connection,
    project: Project,
    label: str,
    customers: dict[str, Customer],
    items: dict[tuple[str, datetime, datetime], WorkItem],
    as_of: datetime,
) -> None:
    """One-off charges dated in the month (the customer's local month) go on the customer's
    first invoice of the run; a customer with charges but no subscription period in the month
    gets an invoice for the calendar month."""
    by_customer: dict[str, list[WorkItem]] = defaultdict(list)
    for item in items.values():
        by_customer[item.customer.id].append(item)
    months: dict[str, Period] = {}
    widest_start: datetime | None = None
    widest_end: datetime | None = None
    for customer in customers.values():
        month = months.setdefault(customer.timezone, month_period(label, customer.timezone))
        widest_start = month.start if widest_start is None else min(widest_start, month.start)
        widest_end = month.end if widest_end is None else max(widest_end, month.end)
    if widest_start is None or widest_end is None:
        return
    rows = conn.execute(
        select(charges_t)
        .where(Charge.project_id == project.id)
        .where(Charge.at >= widest_start, Charge.at < widest_end)
        .order_by(Charge.at, Charge.idempotency_key)
    ).all()
    for row in rows:
        if row.customer_id not in customers:
            continue
        customer = customers[row.customer_id]
        month = months[customer.timezone]
        if not month.start <= row.at < month.end:
            continue
        targets = sorted(by_customer[customer.id], key=lambda i: i.period.start)
        if not targets:
            item = WorkItem(customer, label, month, [], [], month.end <= as_of)
            items[item.key] = item
            by_customer[customer.id].append(item)
            targets = [item]
        targets[0].charges.append(
            OneOffCharge(row.idempotency_key, row.description, Decimal(row.amount), row.at)
        )


# --------------------------------------------------------------------------- change detection


def attach_existing(conn: Connection, project: Project, items: list[WorkItem]) -> None:
    """The stored invoices of each item, without their documents (`documents` reads those
    only for the few items a correction needs them for)."""
    if not items:
        return
    by_key = {item.key: item for item in items}
    customer_ids = sorted({item.customer.id for item in items})
    with Session(bind=conn) as session:
        for start in range(0, len(customer_ids), CUSTOMER_BATCH):
            rows = session.scalars(
                select(Invoice)
                .options(defer(Invoice.content), defer(Invoice.inputs))
                .where(Invoice.project_id == project.id)
                .where(Invoice.customer_id.in_(customer_ids[start : start + CUSTOMER_BATCH]))
                .order_by(Invoice.revision)
            )
            for row in rows:
                item = by_key.get((row.customer_id, row.period_start, row.period_end))
                if item is not None:
                    item.existing.append(row)
        session.expunge_all()


def documents(conn: Connection, invoices: Sequence[Invoice]) -> list[list[dict[str, Any]]]:
    """The stored lines of these invoices, in the order given."""
    ids = [invoice.id for invoice in invoices]
    query = select(invoices_t.c.id, invoices_t.c.content).where(invoices_t.c.id.in_(ids))
    rows = {invoice_id: content for invoice_id, content in conn.execute(query)}
    return [orjson.loads(rows[invoice_id])["lines"] for invoice_id in ids]


def stored_inputs(conn: Connection, invoice: Invoice) -> dict[str, Any]:
    """The inputs document an invoice was written with (read only where it is needed)."""
    query = select(invoices_t.c.inputs).where(invoices_t.c.id == invoice.id)
    return dict(orjson.loads(conn.execute(query).scalar_one()))


def with_stored_ids(
    conn: Connection,
    built: BuiltInvoice,
    invoices: Sequence[Invoice],
    billed: Sequence[Sequence[dict[str, Any]]],
) -> BuiltInvoice:
    """`built` naming its subscriptions as the stored invoices of its customer-period do, so
    their lines compare line by line. They differ where the invoices were written in another
    database the same business inputs were loaded into: subscriptions get ids of their own
    there, and are matched by their terms."""
    named = {line.get("subscription") for lines in billed for line in lines} - {None}
    if not invoices or named <= {terms["id"] for terms in built.inputs["subscriptions"]}:
        return built
    return with_ids(built, subscription_ids(stored_inputs(conn, invoices[-1]), built.inputs))


def terms_changed(conn: Connection, built: BuiltInvoice, invoice: Invoice) -> bool:
    """Whether the terms of `built` differ from those `invoice` was written with: by the setup
    fingerprint, else (an invoice of the legacy form from another database, whose fingerprint
    covers that database's ids) by the business terms of its stored inputs."""
    if built.same_setup(invoice.setup_fingerprint):
        return False
    return not same_business_setup(stored_inputs(conn, invoice), built.inputs)


def same_invoice(conn: Connection, built: BuiltInvoice, invoice: Invoice) -> bool:
    """Whether `invoice` was written from the inputs of `built`: by its fingerprint, else (an
    invoice of the legacy form from another database, whose fingerprint covers that
    database's ids) by the business part of its stored inputs. The stored inputs are read
    only where the set-up fingerprints differ too, so a draft whose usage changed costs no
    read."""
    if built.same_fingerprint(invoice.fingerprint):
        return True
    if built.same_setup(invoice.setup_fingerprint):
        return False
    return same_business_inputs(stored_inputs(conn, invoice), built.inputs)


def latest_invoice(item: WorkItem) -> Invoice | None:
    live = [inv for inv in item.existing if inv.status != "void"]
    return live[-1] if live else None


def count_events(conn: Connection, project: Project, chunk: list[WorkItem]) -> None:
    """Each item's number of events in its period. Where every item of a window already has
    an invoice (a rerun), a plain count is enough; otherwise one pass also gives the event
    spans per meter that pricing reuses."""
    windows: dict[tuple[datetime, datetime], list[WorkItem]] = defaultdict(list)
    for item in chunk:
        windows[(item.period.start, item.period.end)].append(item)
    for (start, end), group in windows.items():
        ids = sorted({item.customer.id for item in group})
        if all(item.existing for item in group):
            counts = usage_sql.event_counts(
                conn, project_id=project.id, start=start, end=end, customer_ids=ids
            )
            for item in group:
                item.raw_count = counts.get(item.customer.id, 0)
            continue
        stats = usage_sql.meter_stats(
            conn, project_id=project.id, start=start, end=end, customer_ids=ids
        )
        superseded = usage_sql.superseded_versions(
            conn, project_id=project.id, start=start, end=end, customer_ids=ids
        )
        per_customer: dict[str, dict[str, tuple[int, datetime, datetime]]] = defaultdict(dict)
        versions: dict[str, int] = dict(superseded)
        for (customer_id, meter), (n, first, last, rows) in stats.items():
            if n and first is not None and last is not None:
                per_customer[customer_id][meter] = (n, first, last)
            versions[customer_id] = versions.get(customer_id, 0) + rows
        for item in group:
            item.window_stats = per_customer.get(item.customer.id, {})
            item.raw_count = versions.get(item.customer.id, 0)


def orphaned_items(
    conn: Connection, project: Project, label: str, items: list[WorkItem], only: Sequence[str]
) -> list[WorkItem]:
    """Live invoices of month `label` that no planned item claims any more: the customer's
    time zone moved its periods, a backdated cancellation removed one, or a subscription took
    over a month billed for one-off charges alone. Each becomes an item with nothing to bill,
    so its draft is voided and a finalized one is reversed by a credit note."""
    claimed = {item.key for item in items}
    rows = conn.execute(
        select(Invoice.customer_id, Invoice.period_start, Invoice.period_end)
        .where(Invoice.project_id == project.id)
        .where(Invoice.period == label)
        .where(Invoice.status != "void")
        .distinct()
    ).all()
    windows: list[tuple[str, datetime, datetime]] = [
        (row.customer_id, row.period_start, row.period_end) for row in rows
    ]
    unclaimed = [window for window in windows if window not in claimed]
    if not unclaimed:
        return []
    wanted = sorted({customer_id for customer_id, _, _ in unclaimed})
    query = select(Customer).where(Customer.id.in_(wanted))
    if only:
        query = query.where(Customer.external_id.in_(list(only)))
    with Session(bind=conn) as session:
        customers = {c.id: c for c in session.scalars(query)}
        session.expunge_all()
    orphans = [
        WorkItem(customers[customer_id], label, Period(start, end), [], [], True, orphan=True)
        for customer_id, start, end in unclaimed
        if customer_id in customers
    ]
    attach_existing(conn, project, orphans)
    return sorted(orphans, key=lambda i: (i.customer.external_id, i.period.start))


def restore_carried(conn: Connection, items: list[WorkItem]) -> None:
    """An invoice that took in late usage of an earlier month (policy next_invoice) keeps it:
    its recomputation must carry the same lines, or the difference would reverse them."""
    wanted = {}
    for item in items:
        finals = [inv for inv in item.existing if inv.status in FINAL]
        if finals and not item.carried:
            wanted[finals[-1].id] = item
    if not wanted:
        return
    ids = sorted(wanted)
    for start in range(0, len(ids), CUSTOMER_BATCH):
        rows = conn.execute(
            select(Invoice.id, Invoice.inputs)
            .where(Invoice.id.in_(ids[start : start + CUSTOMER_BATCH]))
            .where(Invoice.inputs.like('%"carried":[{%'))
        )
        for invoice_id, inputs in rows:
            wanted[invoice_id].carried = [
                CarriedUsage(entry["source"], tuple(entry["lines"]))
                for entry in orjson.loads(inputs)["carried"]
            ]


def needs_pricing(item: WorkItem, project: Project, *, final_only: bool = False) -> bool:
    if item.orphan:
        return True
    latest = latest_invoice(item)
    if final_only:
        finals = [inv for inv in item.existing if inv.status in FINAL]
        latest = finals[-1] if finals else None
    if latest is None or item.recurring:
        return True
    setup = setup_document(inputs_document(_invoice_input(item, project)))
    return latest.event_count != item.raw_count or not fingerprint_matches(
        latest.setup_fingerprint, setup
    )


def _invoice_input(item: WorkItem, project: Project) -> InvoiceInput:
    rounding: RoundingMode = "half_up" if project.rounding == "half_up" else "half_even"
    return InvoiceInput(
        customer=item.customer.external_id,
        currency=item.customer.currency,
        timezone=item.customer.timezone,
        rounding=rounding,
        period=item.period,
        label=item.label,
        subscriptions=tuple(item.terms),
        charges=tuple(item.charges),
        carried=tuple(item.carried),
    )


# --------------------------------------------------------------------------- aggregation


def build(conn: Connection, project: Project, items: list[WorkItem]) -> dict[Any, BuiltInvoice]:
    """Aggregate the usage of every piece of every item in the database, then build; an
    invoice that cannot be billed is an error (`Unbillable`) naming its customer."""
    built, failed = build_each(conn, project, items)
    for item in items:
        if item.key in failed:
            error = failed[item.key]
            raise Unbillable(
                f"customer {item.customer.external_id!r}: {error.message}",
                meter=error.meter,
                hint=error.hint,
            )
    return built


def build_each(
    conn: Connection, project: Project, items: list[WorkItem]
) -> tuple[dict[Any, BuiltInvoice], dict[Any, Unbillable]]:
    """Aggregate the usage of every piece of every item in the database, then build each
    invoice on its own: (the invoices built, the items that cannot be billed and why). One
    customer's reading that no invoice can hold never stops the others."""
    wanted: dict[tuple[datetime, datetime, Period, MeterSpec, GroupBy], set[str]] = defaultdict(set)
    percentage: set[tuple[datetime, datetime, MeterSpec, str]] = set()
    prorating: dict[_ProratedKey, set[str]] = defaultdict(set)
    for item in items:
        for terms in item.terms:
            plans = {pp.phase.key: pp for pp in terms.phases}
            for piece in terms.pieces:
                pp = plans[piece.phase_key]
                for charge in pp.plan.charges:
                    spec = pp.meters[charge.meter]
                    period = billing_period(terms, item.period)
                    window = (piece.start, piece.end, period, spec, charge.group_by)
                    wanted[window].add(item.customer.id)
                    if charge.model == "percentage":
                        percentage.add((piece.start, piece.end, spec, item.customer.id))
                    if charge.prorated:
                        ends = terms.end is not None and piece.end == terms.end
                        grid = (piece.start, piece.end, period, spec, pp.plan.proration)
                        prorating[(*grid, item.customer.timezone, ends)].add(item.customer.id)
    known = _known_spans(items)
    results: dict[_UsageKey, MeterUsage] = {}
    for (start, end, period, spec, group_by), customer_ids in wanted.items():
        ids = sorted(customer_ids)
        if group_by:
            found = _aggregate_groups(
                conn, project, spec, group_by, start, end, period, ids, percentage
            )
        else:
            spans = _spans(known, spec, start, end, ids)
            found = _aggregate(conn, project, spec, start, end, period, ids, percentage, spans)
        for usage_customer, usage in found:
            results[(start, end, period, spec, group_by, usage_customer)] = usage
    for key, customer_ids in prorating.items():
        for customer_id, units in _prorate(conn, project, key, sorted(customer_ids)).items():
            usage_key = (*key[:4], (), customer_id)
            results[usage_key] = replace(results[usage_key], prorated=units)
    built: dict[Any, BuiltInvoice] = {}
    failed: dict[Any, Unbillable] = {}
    for item in items:
        item.terms = [
            _with_usage(terms, item.customer.id, billing_period(terms, item.period), results)
            for terms in item.terms
        ]
        try:
            built[item.key] = build_invoice(_invoice_input(item, project))
        except Unbillable as exc:
            failed[item.key] = exc
        except InvalidInput as exc:  # any other domain rule this customer's inputs break
            failed[item.key] = Unbillable(exc.message, hint=exc.hint)
    return built, failed


_ProratedKey = tuple[datetime, datetime, Period, MeterSpec, str, str, bool]
"""A prorated charge's piece: (start, end, its billing period, meter, proration, time zone,
whether the subscription ends at the piece's end)."""


def _prorate(
    conn: Connection, project: Project, key: _ProratedKey, ids: list[str]
) -> dict[str, Decimal]:
    """Every customer's prorated units of a recurring meter over one piece (0 without
    events), by the plan's proration in the customer's time zone."""
    start, end, period, spec, mode, tz, ends_service = key
    grid = prorated_usage.weights(start, end, period, mode, tz, ends_service=ends_service)
    found = usage_sql.prorated_usage(conn, spec, grid, project_id=project.id, customer_ids=ids)
    return {customer_id: found.get(customer_id, Decimal(0)) for customer_id in ids}


def _aggregate(
    conn: Connection,
    project: Project,
    spec: MeterSpec,
    start: datetime,
    end: datetime,
    period: Period,
    ids: list[str],
    percentage: set[tuple[datetime, datetime, MeterSpec, str]],
    spans: dict[str, tuple[int, datetime, datetime]] | None,
) -> Iterable[tuple[str, MeterUsage]]:
    """The usage of [start, end), a piece of the billing `period` (weighted_sum divides by
    the whole period, so a piece after a mid-period start or plan change bills its share)."""
    openings = None
    if spec.aggregation == "weighted_sum" and spec.recurring:
        openings = usage_sql.closing_levels(
            conn, spec, project_id=project.id, start=_EPOCH, end=start, customer_ids=ids
        )
    values = usage_sql.aggregate_usage(
        conn,
        spec,
        project_id=project.id,
        start=start,
        end=end,
        customer_ids=ids,
        openings=openings,
        period=(period.start, period.end),
    )
    if spans is None:
        spans = usage_sql.event_stats(
            conn, spec, project_id=project.id, start=start, end=end, customer_ids=ids
        )
    for customer_id in ids:
        count, first, last = spans.get(customer_id, (0, None, None))
        transactions = None
        if (start, end, spec, customer_id) in percentage:
            transactions = tuple(
                usage_sql.transaction_values(
                    conn, spec, project_id=project.id, customer_id=customer_id, start=start, end=end
                )
            )
        value = values.get(customer_id, Decimal(0))
        yield customer_id, MeterUsage(value, count, first, last, transactions)


def _aggregate_groups(
    conn: Connection,
    project: Project,
    spec: MeterSpec,
    group_by: GroupBy,
    start: datetime,
    end: datetime,
    period: Period,
    ids: list[str],
    percentage: set[tuple[datetime, datetime, MeterSpec, str]],
) -> Iterable[tuple[str, MeterUsage]]:
    """A grouped charge's usage of [start, end): the meter per group of `group_by` values
    (domain/grouping.py), one GROUP BY for the batch; the totals are over the groups."""
    values = usage_sql.aggregate_groups(
        conn,
        spec,
        group_by,
        project_id=project.id,
        start=start,
        end=end,
        customer_ids=ids,
        period=(period.start, period.end),
    )
    spans = usage_sql.group_event_stats(
        conn, spec, group_by, project_id=project.id, start=start, end=end, customer_ids=ids
    )
    for customer_id in ids:
        found, seen = values.get(customer_id, {}), spans.get(customer_id, {})
        transactions: dict[GroupKey, tuple[Decimal, ...]] | None = None
        if (start, end, spec, customer_id) in percentage:
            transactions = usage_sql.group_transaction_values(
                conn,
                spec,
                group_by,
                project_id=project.id,
                customer_id=customer_id,
                start=start,
                end=end,
            )
        groups: list[tuple[GroupKey, MeterUsage]] = []
        for key in sorted(set(found) | set(seen), key=key_order):
            count, first, last = seen.get(key, (0, None, None))
            mine = None if transactions is None else transactions.get(key, ())
            groups.append((key, MeterUsage(found.get(key, Decimal(0)), count, first, last, mine)))
        firsts = [usage.first for _, usage in groups if usage.first is not None]
        lasts = [usage.last for _, usage in groups if usage.last is not None]
        yield (
            customer_id,
            MeterUsage(
                value=sum((usage.value for _, usage in groups), Decimal(0)),
                count=sum(usage.count for _, usage in groups),
                first=min(firsts, default=None),
                last=max(lasts, default=None),
                groups=tuple(groups),
            ),
        )


Span = tuple[int, datetime, datetime]


def _known_spans(items: list[WorkItem]) -> dict[tuple[datetime, datetime, str], dict[str, Span]]:
    """The per-meter event spans the change detection already read, by window and customer."""
    return {
        (item.period.start, item.period.end, item.customer.id): item.window_stats
        for item in items
        if item.window_stats is not None
    }


def _spans(
    known: dict[tuple[datetime, datetime, str], dict[str, Span]],
    spec: MeterSpec,
    start: datetime,
    end: datetime,
    ids: list[str],
) -> dict[str, Span] | None:
    """A plain meter's (quantity, no filters) event spans from what is known, or None when
    they must be queried (a filtered meter, a property field, a piece of a period)."""
    if spec.field != "quantity" or spec.filters:
        return None
    found: dict[str, Span] = {}
    for customer_id in ids:
        stats = known.get((start, end, customer_id))
        if stats is None:
            return None
        if spec.code in stats:
            found[customer_id] = stats[spec.code]
    return found


GroupBy = tuple[str, ...]
_UsageKey = tuple[datetime, datetime, Period, MeterSpec, GroupBy, str]
"""A piece's usage: (piece start, piece end, its billing period, meter, the charge's
group_by, customer)."""


def _with_usage(
    terms: SubscriptionTerms,
    customer_id: str,
    period: Period,
    results: dict[_UsageKey, MeterUsage],
) -> SubscriptionTerms:
    plans = {pp.phase.key: pp for pp in terms.phases}
    pieces = []
    for piece in terms.pieces:
        pp = plans[piece.phase_key]
        usage = {
            charge.meter: results[
                (
                    piece.start,
                    piece.end,
                    period,
                    pp.meters[charge.meter],
                    charge.group_by,
                    customer_id,
                )
            ]
            for charge in pp.plan.charges
        }
        pieces.append(UsagePiece(piece.phase_key, piece.start, piece.end, usage))
    return replace(terms, pieces=tuple(pieces))
