"""`neruba run bill`: a locked, fenced, deterministic billing run for one month.

1. **Plan**: which (customer, billing period) pairs the month bills (domain/billing_periods.py)
   and each one's terms: subscriptions, phases on plan versions, base fees, one-off charges.
2. **Detect**: invoices already written for a pair are skipped when neither their terms (the
   setup fingerprint) nor the customer's number of events in the period changed — events are
   append-only, so a count that did not move means nothing arrived. Only the rest is priced, so
   a rerun after a few late events touches a few customers.
3. **Aggregate** the usage of what is left in the database: one GROUP BY per meter and window
   for a batch of customers (db/usage_sql.py), never a loop over events.
4. **Build** each invoice with the pure domain (domain/invoice.py) and decide: create a draft,
   recompute a draft in place (a new version), leave it (same fingerprint), or — once the
   period's invoice is finalized — apply the project's late-event policy: a linked correction
   (`correct`), nothing (`ignore`), or the difference carried to the customer's next invoice
   (`next_invoice`).
5. **Write** whole invoices, a batch per transaction, each transaction fenced by the run's
   lease token: a run that lost its lease (paused, expired, taken over) cannot write.

A run that changed nothing writes nothing (not even a run record) and says "no changes".
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from neruba_cli.db import locks, usage_sql
from neruba_cli.db.schema import (
    BillingRun,
    Charge,
    Customer,
    Invoice,
    InvoiceLine,
    InvoiceRevision,
    InvoiceSequence,
    PlanVersion,
    Project,
    Subscription,
    SubscriptionPhase,
)
from neruba_cli.domain.aggregation import MeterSpec
from neruba_cli.domain.billing_periods import (
    Schedule,
    billed_periods,
    is_first_period,
    next_period,
    resolve_label,
)
from neruba_cli.domain.catalog import MeterDef, PlanDef, load_version
from neruba_cli.domain.errors import InvalidInput, NotFound
from neruba_cli.domain.ids import new_id
from neruba_cli.domain.invoice import (
    BuiltInvoice,
    CarriedUsage,
    InvoiceInput,
    MeterUsage,
    OneOffCharge,
    PhasePlan,
    SubscriptionTerms,
    UsagePiece,
    build_invoice,
    canonical_json,
    correction_kind,
    correction_lines,
    fingerprint_of,
    inputs_document,
    invoice_content,
    run_fingerprint,
    setup_document,
)
from neruba_cli.domain.money import RoundingMode
from neruba_cli.domain.periods import Period, Phase, month_period, split_period
from neruba_cli.domain.timestamps import format_ts

LATE_EVENT_POLICIES = ("correct", "next_invoice", "ignore")
WRITE_BATCH = 100  # whole invoices per transaction
CUSTOMER_BATCH = 500  # customers per aggregation query
DEFAULT_LEASE = timedelta(minutes=10)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # where recurring gauges start from zero
FINAL = ("finalized", "paid")

invoices_t = Invoice.__table__
lines_t = InvoiceLine.__table__
revisions_t = InvoiceRevision.__table__
runs_t = BillingRun.__table__
sequences_t = InvoiceSequence.__table__
events_t = usage_sql.events


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class RunOptions:
    label: str  # YYYY-MM, previous or current
    as_of: datetime
    customers: tuple[str, ...] = ()
    dry_run: bool = False
    finalize: bool = False
    wait: float = 0.0
    lease: timedelta = DEFAULT_LEASE


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
    period: Period
    terms: list[SubscriptionTerms]
    charges: list[OneOffCharge]
    closed: bool  # the period ended by --as-of
    existing: list[Invoice] = field(default_factory=list)
    raw_count: int = 0
    recurring: bool = False
    carried: list[CarriedUsage] = field(default_factory=list)  # late usage it takes in
    carried_elsewhere: list[list[dict[str, Any]]] = field(default_factory=list)
    fallback: bool = False  # next_invoice, but no open invoice can take it: correct instead
    window_stats: dict[str, tuple[int, datetime, datetime]] | None = None  # by meter

    @property
    def key(self) -> tuple[str, datetime, datetime]:
        return (self.customer.id, self.period.start, self.period.end)


@dataclass
class Outcome:
    customer: str
    period: Period
    action: str  # created | updated | unchanged | corrected | voided | ignored | carried
    number: str | None = None
    total: Decimal | None = None
    late_events: int = 0
    landed: str | None = None  # where late events went: a correction number, next, ignored
    fingerprint: str | None = None
    content: dict[str, Any] | None = None  # for --dry-run and previews


@dataclass
class RunReport:
    period: str
    run: str | None = None
    status: str = "completed"
    outcomes: list[Outcome] = field(default_factory=list)
    finalized: list[str] = field(default_factory=list)
    fingerprint: str | None = None
    dry_run: bool = False

    def count(self, *actions: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.action in actions)

    @property
    def late_events(self) -> int:
        return sum(outcome.late_events for outcome in self.outcomes)

    @property
    def changed(self) -> bool:
        return bool(self.finalized) or self.count("created", "updated", "corrected", "voided") > 0


Progress = Callable[[int], None]


# --------------------------------------------------------------------------- the run


def run_bill(
    engine: Engine,
    project: Project,
    options: RunOptions,
    *,
    actor: str,
    now: datetime,
    progress_total: Callable[[int], Progress] | None = None,
    holder: str | None = None,
) -> RunReport:
    label = resolve_label(options.label, as_of=options.as_of, tz=project.timezone)
    report = RunReport(period=label, dry_run=options.dry_run)
    lease = None
    if not options.dry_run:
        lease = locks.acquire(
            engine, lock_name(project, label), holder=holder, ttl=options.lease, wait=options.wait
        )
    writer = _Writer(engine, project, label, lease, options, actor=actor, now=now)
    try:
        with engine.connect() as conn:
            items = plan_items(conn, project, label, options.as_of, options.customers)
            _attach_existing(conn, project, items)
            if project.late_events == "next_invoice":
                items += _late_carry(conn, project, label, items, options)
        advance = progress_total(len(items)) if progress_total else (lambda _n: None)
        for start in range(0, len(items), CUSTOMER_BATCH):
            chunk = items[start : start + CUSTOMER_BATCH]
            outcomes = _bill_chunk(engine, project, chunk, writer, report)
            report.outcomes += outcomes
            advance(len(chunk))
        writer.flush()
        if options.finalize and not options.dry_run:
            report.finalized = writer.finalize_period()
        report.fingerprint = run_fingerprint(
            (o.customer, format_ts(o.period.start) or "", o.fingerprint or "")
            for o in report.outcomes
            if o.fingerprint
        )
        report.run = writer.run_id
        if writer.run_id is not None:
            writer.close_run(report)
        elif not options.dry_run:
            report.status = "unchanged"
        return report
    except BaseException as exc:
        if writer.run_id is not None:
            _fail_run(engine, writer.run_id, exc, now)
        raise
    finally:
        if writer.lease is not None:
            locks.release(engine, writer.lease)


def lock_name(project: Project, label: str) -> str:
    return f"{project.slug}:bill:{label}"


def _bill_chunk(
    engine: Engine, project: Project, chunk: list[WorkItem], writer: _Writer, report: RunReport
) -> list[Outcome]:
    with engine.connect() as conn:
        _count_events(conn, project, chunk)
        todo = [item for item in chunk if _needs_pricing(item, project)]
        built = _build(conn, project, todo) if todo else {}
    outcomes: list[Outcome] = []
    for item in chunk:
        invoice = built.get(item.key)
        if invoice is None:
            outcomes.append(_unchanged(item))
            continue
        outcomes.append(writer.settle(item, invoice))
    return outcomes


def _unchanged(item: WorkItem) -> Outcome:
    latest = _latest(item)
    assert latest is not None
    return Outcome(
        item.customer.external_id,
        item.period,
        "unchanged",
        number=latest.number,
        total=latest.total,
        fingerprint=latest.fingerprint,
    )


# --------------------------------------------------------------------------- planning


def plan_items(
    conn: Connection,
    project: Project,
    label: str,
    as_of: datetime,
    only: Sequence[str] = (),
) -> list[WorkItem]:
    """Every (customer, period) the month bills, sorted by customer external id and period."""
    customers = _customers(conn, project, only)
    versions = _plan_versions(conn, project)
    subscriptions = _subscriptions(conn, project, customers, versions)
    items: dict[tuple[str, datetime, datetime], WorkItem] = {}
    for customer_id, subs in subscriptions.items():
        customer = customers[customer_id]
        for sub, phases in subs:
            schedule = _schedule(sub, phases, customer)
            for period in billed_periods(schedule, label):
                key = (customer.id, period.start, period.end)
                item = items.get(key)
                if item is None:
                    item = items[key] = WorkItem(
                        customer, label, period, [], [], period.end <= as_of
                    )
                item.terms.append(_terms(sub, phases, schedule, period))
                item.recurring = item.recurring or _has_recurring(phases)
    _place_charges(conn, project, label, customers, items, as_of)
    return sorted(items.values(), key=lambda i: (i.customer.external_id, i.period.start))


def _customers(conn: Connection, project: Project, only: Sequence[str]) -> dict[str, Customer]:
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


def _plan_versions(conn: Connection, project: Project) -> dict[str, StoredPlanVersion]:
    from neruba_cli.db.schema import Plan

    rows = conn.execute(
        select(PlanVersion.__table__, Plan.code)
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


def _subscriptions(
    conn: Connection,
    project: Project,
    customers: dict[str, Customer],
    versions: dict[str, StoredPlanVersion],
) -> dict[str, list[tuple[Subscription, list[PhasePlan]]]]:
    subs = conn.execute(
        select(Subscription.__table__).where(Subscription.project_id == project.id)
    ).all()
    phases = conn.execute(
        select(SubscriptionPhase.__table__)
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
    result: dict[str, list[tuple[Subscription, list[PhasePlan]]]] = defaultdict(list)
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


def _schedule(sub: Any, phases: list[PhasePlan], customer: Customer) -> Schedule:
    return Schedule(
        interval=phases[0].plan.interval,
        anchor=sub.anchor,
        start=sub.start_at,
        end=sub.end_at,
        tz=customer.timezone,
    )


def _has_recurring(phases: list[PhasePlan]) -> bool:
    return any(
        spec.aggregation == "weighted_sum" and spec.recurring
        for pp in phases
        for spec in pp.meters.values()
    )


def _terms(
    sub: Any, phases: list[PhasePlan], schedule: Schedule, period: Period
) -> SubscriptionTerms:
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
        for phase, start, end in split_period(period, [pp.phase for pp in clipped])
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
    widest_start = widest_end = None
    for customer in customers.values():
        month = months.setdefault(customer.timezone, month_period(label, customer.timezone))
        widest_start = month.start if widest_start is None else min(widest_start, month.start)
        widest_end = month.end if widest_end is None else max(widest_end, month.end)
    if widest_start is None or widest_end is None:
        return
    rows = conn.execute(
        select(Charge.__table__)
        .where(Charge.project_id == project.id)
        .where(Charge.at >= widest_start, Charge.at < widest_end)
        .order_by(Charge.at, Charge.idempotency_key)
    ).all()
    for row in rows:
        customer = customers.get(row.customer_id)
        if customer is None:
            continue
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


def _attach_existing(conn: Connection, project: Project, items: list[WorkItem]) -> None:
    """The stored invoices of each item, without their documents (`_documents` reads those
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


def _documents(conn: Connection, invoices: Sequence[Invoice]) -> list[list[dict[str, Any]]]:
    """The stored lines of these invoices, in the order given."""
    ids = [invoice.id for invoice in invoices]
    query = select(invoices_t.c.id, invoices_t.c.content).where(invoices_t.c.id.in_(ids))
    rows = {invoice_id: content for invoice_id, content in conn.execute(query)}
    return [orjson.loads(rows[invoice_id])["lines"] for invoice_id in ids]


def _latest(item: WorkItem) -> Invoice | None:
    live = [inv for inv in item.existing if inv.status != "void"]
    return live[-1] if live else None


def _count_events(conn: Connection, project: Project, chunk: list[WorkItem]) -> None:
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
        per_customer: dict[str, dict[str, tuple[int, datetime, datetime]]] = defaultdict(dict)
        for (customer_id, meter), span in stats.items():
            per_customer[customer_id][meter] = span
        for item in group:
            item.window_stats = per_customer.get(item.customer.id, {})
            item.raw_count = sum(span[0] for span in item.window_stats.values())


def _needs_pricing(item: WorkItem, project: Project, *, final_only: bool = False) -> bool:
    latest = _latest(item)
    if final_only:
        finals = [inv for inv in item.existing if inv.status in FINAL]
        latest = finals[-1] if finals else None
    if latest is None or item.recurring:
        return True
    setup = _setup_fingerprint(item, project)
    return latest.setup_fingerprint != setup or latest.event_count != item.raw_count


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


def _setup_fingerprint(item: WorkItem, project: Project) -> str:
    return fingerprint_of(setup_document(inputs_document(_invoice_input(item, project))))


# --------------------------------------------------------------------------- next_invoice


def _late_carry(
    conn: Connection, project: Project, label: str, items: list[WorkItem], options: RunOptions
) -> list[WorkItem]:
    """Policy `next_invoice`: late usage of the previous month's finalized invoices goes on
    each customer's first invoice of this month, as difference lines marked `late_from`.

    A customer with no open invoice this month to take it (none billed, or already
    finalized) gets a correction of the late period instead; those items are returned so the
    run settles them like any correction. Late events older than the previous month are
    corrected by rerunning their own month, which then falls back the same way.
    """
    previous = _previous_label(label)
    earlier = plan_items(conn, project, previous, options.as_of, options.customers)
    _attach_existing(conn, project, earlier)
    earlier = [i for i in earlier if any(inv.status in FINAL for inv in i.existing)]
    if not earlier:
        return []
    _count_events(conn, project, earlier)
    changed = [i for i in earlier if _needs_pricing(i, project, final_only=True)]
    if not changed:
        return []
    built = _build(conn, project, changed)
    first: dict[str, WorkItem] = {}
    for item in items:
        first.setdefault(item.customer.id, item)
    fallbacks: list[WorkItem] = []
    for item in changed:
        finals = [inv for inv in item.existing if inv.status in FINAL]
        target = first.get(item.customer.id)
        carried_before = _carried_lines(conn, target, finals[0].number) if target else []
        open_target = target is not None and not any(inv.status in FINAL for inv in target.existing)
        billed = _documents(conn, finals) + carried_before
        delta = correction_lines(built[item.key].content["lines"], billed, item.customer.currency)
        if not delta:
            continue
        if open_target and target is not None:
            target.carried.append(CarriedUsage(finals[0].number, tuple(delta)))
        else:
            item.fallback = True
            item.carried_elsewhere = carried_before
            fallbacks.append(item)
    return fallbacks


def _carried_lines(conn: Connection, target: WorkItem, source: str) -> list[list[dict[str, Any]]]:
    """Lines already carried from `source` onto finalized invoices of the target period."""
    finals = [inv for inv in target.existing if inv.status in FINAL]
    return [
        [_uncarried(line) for line in lines if line.get("late_from") == source]
        for lines in _documents(conn, finals)
    ]


def _uncarried(line: dict[str, Any]) -> dict[str, Any]:
    """A carried line as its source period would key it (so differences line up)."""
    plain = dict(line)
    plain.pop("late_from", None)
    return plain


def _previous_label(label: str) -> str:
    year, month = int(label[:4]), int(label[5:7])
    return f"{year - 1:04d}-12" if month == 1 else f"{year:04d}-{month - 1:02d}"


# --------------------------------------------------------------------------- aggregation


def _build(conn: Connection, project: Project, items: list[WorkItem]) -> dict[Any, BuiltInvoice]:
    """Aggregate the usage of every piece of every item in the database, then build."""
    wanted: dict[tuple[datetime, datetime, MeterSpec], set[str]] = defaultdict(set)
    percentage: set[tuple[datetime, datetime, MeterSpec, str]] = set()
    for item in items:
        for terms in item.terms:
            plans = {pp.phase.key: pp for pp in terms.phases}
            for piece in terms.pieces:
                pp = plans[piece.phase_key]
                for charge in pp.plan.charges:
                    spec = pp.meters[charge.meter]
                    wanted[(piece.start, piece.end, spec)].add(item.customer.id)
                    if charge.model == "percentage":
                        percentage.add((piece.start, piece.end, spec, item.customer.id))
    known = _known_spans(items)
    results: dict[tuple[datetime, datetime, MeterSpec, str], MeterUsage] = {}
    for (start, end, spec), customer_ids in wanted.items():
        ids = sorted(customer_ids)
        spans = _spans(known, spec, start, end, ids)
        for usage_customer, usage in _aggregate(
            conn, project, spec, start, end, ids, percentage, spans
        ):
            results[(start, end, spec, usage_customer)] = usage
    built: dict[Any, BuiltInvoice] = {}
    for item in items:
        item.terms = [_with_usage(terms, item.customer.id, results) for terms in item.terms]
        built[item.key] = build_invoice(_invoice_input(item, project))
    return built


def _aggregate(
    conn: Connection,
    project: Project,
    spec: MeterSpec,
    start: datetime,
    end: datetime,
    ids: list[str],
    percentage: set[tuple[datetime, datetime, MeterSpec, str]],
    spans: dict[str, tuple[int, datetime, datetime]] | None,
) -> Iterable[tuple[str, MeterUsage]]:
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


def _with_usage(
    terms: SubscriptionTerms,
    customer_id: str,
    results: dict[tuple[datetime, datetime, MeterSpec, str], MeterUsage],
) -> SubscriptionTerms:
    plans = {pp.phase.key: pp for pp in terms.phases}
    pieces = []
    for piece in terms.pieces:
        pp = plans[piece.phase_key]
        usage = {
            charge.meter: results[(piece.start, piece.end, pp.meters[charge.meter], customer_id)]
            for charge in pp.plan.charges
        }
        pieces.append(UsagePiece(piece.phase_key, piece.start, piece.end, usage))
    return replace(terms, pieces=tuple(pieces))


# --------------------------------------------------------------------------- writing


Write = Callable[[Connection], None]


class _Writer:
    """Decides what each built invoice means for the stored ones and writes it, whole
    invoices a batch per transaction, every transaction fenced by the run's lease."""

    def __init__(
        self,
        engine: Engine,
        project: Project,
        label: str,
        lease: locks.Lease | None,
        options: RunOptions,
        *,
        actor: str,
        now: datetime,
    ) -> None:
        self.engine, self.project, self.label = engine, project, label
        self.lease, self.options = lease, options
        self.actor, self.now = actor, now
        self.pending: list[Write] = []
        self.creates: list[_NewInvoice] = []
        self.run_id: str | None = None
        self.renewed = time.monotonic()

    # -- decisions

    def settle(self, item: WorkItem, built: BuiltInvoice) -> Outcome:
        finals = [inv for inv in item.existing if inv.status in FINAL]
        draft = next((inv for inv in item.existing if inv.status == "draft"), None)
        outcome = Outcome(
            item.customer.external_id,
            item.period,
            "unchanged",
            total=built.total,
            fingerprint=built.fingerprint,
            content=built.content,
        )
        if not finals:
            return self._settle_open(item, built, draft, outcome)
        late = max(item.raw_count - finals[-1].event_count, 0)
        outcome.late_events = late
        policy = self.project.late_events
        if policy in ("ignore", "next_invoice") and not item.fallback:
            # next_invoice: the following month's run carries the difference (_late_carry).
            outcome.action = "ignored" if late and policy == "ignore" else "unchanged"
            outcome.landed = ("ignored" if policy == "ignore" else "next_invoice") if late else None
            outcome.number, outcome.total = finals[-1].number, finals[-1].total
            if policy == "ignore":
                self._queue_bookkeeping(finals[-1], item, built)
            return outcome
        return self._settle_correction(item, built, finals, draft, outcome)

    def _settle_open(
        self, item: WorkItem, built: BuiltInvoice, draft: Invoice | None, outcome: Outcome
    ) -> Outcome:
        if draft is None:
            outcome.action = "created"
            self._queue_create(item, built, built.content, outcome, corrects=None)
        elif draft.fingerprint == built.fingerprint:
            outcome.number = draft.number
            self._queue_bookkeeping(draft, item, built)
        else:
            outcome.action, outcome.number = "updated", draft.number
            self._queue_update(draft, item, built, built.content)
        return outcome

    def _settle_correction(
        self,
        item: WorkItem,
        built: BuiltInvoice,
        finals: list[Invoice],
        draft: Invoice | None,
        outcome: Outcome,
    ) -> Outcome:
        currency = item.customer.currency
        with self.engine.connect() as conn:
            billed = _documents(conn, finals) + item.carried_elsewhere
        lines = correction_lines(built.content["lines"], billed, currency)
        if not lines:
            outcome.number, outcome.total = finals[-1].number, finals[-1].total
            if draft is not None:
                outcome.action = "voided"
                self._queue_void(draft, "superseded: nothing is left to correct")
            else:
                outcome.landed = "unchanged" if outcome.late_events else None
                self._queue_bookkeeping(finals[-1], item, built)
            return outcome
        total = sum((Decimal(line["amount"]) for line in lines), Decimal(0))
        content = invoice_content(
            correction_kind(total), currency, item.period, built.content["period"]["label"], lines
        )
        outcome.content, outcome.total = content, total
        if draft is None:
            outcome.action = "corrected"
            self._queue_create(item, built, content, outcome, corrects=finals[0])
        elif draft.fingerprint == built.fingerprint:
            outcome.number = draft.number
            outcome.landed = draft.number
            self._queue_bookkeeping(draft, item, built)
        else:
            outcome.action, outcome.number, outcome.landed = "corrected", draft.number, draft.number
            self._queue_update(draft, item, built, content)
        return outcome

    # -- queued writes

    def _queue_create(
        self,
        item: WorkItem,
        built: BuiltInvoice,
        content: dict[str, Any],
        outcome: Outcome,
        *,
        corrects: Invoice | None,
    ) -> None:
        if self.options.dry_run:
            return
        revision = max((inv.revision for inv in item.existing), default=-1) + 1
        self._ensure_run()
        self.creates.append(_NewInvoice(item, built, content, outcome, corrects, revision))
        if len(self.creates) + len(self.pending) >= WRITE_BATCH:
            self.flush()

    def _queue_update(
        self, draft: Invoice, item: WorkItem, built: BuiltInvoice, content: dict[str, Any]
    ) -> None:
        if self.options.dry_run:
            return
        version = draft.version + 1

        def write(conn: Connection) -> None:
            changed = conn.execute(
                update(invoices_t)
                .where(invoices_t.c.id == draft.id)
                .where(invoices_t.c.status == "draft")
                .where(invoices_t.c.version == draft.version)
                .values(
                    kind=content["kind"],
                    subtotal=Decimal(content["subtotal"]),
                    credits_applied=Decimal(content["credits_applied"]),
                    total=Decimal(content["total"]),
                    run_id=self.run_id,
                    version=version,
                    fingerprint=built.fingerprint,
                    setup_fingerprint=built.setup_fingerprint,
                    event_count=item.raw_count,
                    content=canonical_json(content).decode(),
                    inputs=canonical_json(built.inputs).decode(),
                    updated_at=self.now,
                )
            ).rowcount
            if changed != 1:
                raise InvalidInput(
                    f"invoice {draft.number} changed while this run computed it; run again"
                )
            conn.execute(delete(lines_t).where(lines_t.c.invoice_id == draft.id))
            self._write_lines(conn, draft.id, content)
            self._write_revision(conn, draft.id, version, built.fingerprint, content)

        self._queue(write)

    def _queue_bookkeeping(self, invoice: Invoice, item: WorkItem, built: BuiltInvoice) -> None:
        """The invoice stands as it is, but events arrived that change nothing on it (another
        meter, a free tier, or late events the policy ignores): remember how many events and
        which terms the run saw, so the next run neither prices it again nor reports those
        events as late a second time. Only these two bookkeeping columns change; a finalized
        invoice's document, totals and fingerprint never do."""
        if self.options.dry_run or (
            invoice.event_count == item.raw_count
            and invoice.setup_fingerprint == built.setup_fingerprint
        ):
            return

        def write(conn: Connection) -> None:
            conn.execute(
                update(invoices_t)
                .where(invoices_t.c.id == invoice.id, invoices_t.c.status != "void")
                .values(event_count=item.raw_count, setup_fingerprint=built.setup_fingerprint)
            )

        self._queue(write, needs_run=False)

    def _queue_void(self, draft: Invoice, reason: str) -> None:
        if self.options.dry_run:
            return

        def write(conn: Connection) -> None:
            conn.execute(
                update(invoices_t)
                .where(invoices_t.c.id == draft.id, invoices_t.c.status == "draft")
                .values(status="void", voided_at=self.now, void_reason=reason, run_id=self.run_id)
            )

        self._queue(write)

    def _write_lines(self, conn: Connection, invoice_id: str, content: dict[str, Any]) -> None:
        rows = _line_rows(invoice_id, content)
        if rows:
            conn.execute(insert(lines_t), rows)

    def _write_revision(
        self,
        conn: Connection,
        invoice_id: str,
        version: int,
        fingerprint: str,
        content: dict[str, Any],
    ) -> None:
        row = _revision_row(invoice_id, version, self.run_id, fingerprint, content, self.now)
        conn.execute(insert(revisions_t).values(**row))

    def _queue(self, write: Write, *, needs_run: bool = True) -> None:
        if needs_run:
            self._ensure_run()
        self.pending.append(write)
        if len(self.pending) >= WRITE_BATCH:
            self.flush()

    # -- transactions

    def transaction(self) -> Any:
        return _Fenced(self)

    def flush(self) -> None:
        if not self.pending and not self.creates:
            return
        writes, self.pending = self.pending, []
        creates, self.creates = self.creates, []
        with self.transaction() as conn:
            for write in writes:
                write(conn)
            if creates:
                self._insert_invoices(conn, creates)

    def _insert_invoices(self, conn: Connection, creates: list[_NewInvoice]) -> None:
        """New invoices in a few statements: numbers taken as one block, then one multi-row
        insert each for invoices, lines and revisions."""
        numbers = reserve_numbers(conn, self.project, len(creates))
        invoices, lines, revisions = [], [], []
        for new, number in zip(creates, numbers, strict=True):
            invoice_id = new_id("inv")
            new.outcome.number = number
            if new.corrects is not None:
                new.outcome.landed = number
            content, built, item = new.content, new.built, new.item
            invoices.append(
                {
                    "id": invoice_id,
                    "project_id": self.project.id,
                    "number": number,
                    "customer_id": item.customer.id,
                    "period": item.label,
                    "period_start": item.period.start,
                    "period_end": item.period.end,
                    "revision": new.revision,
                    "kind": content["kind"],
                    "status": "draft",
                    "currency": item.customer.currency,
                    "subtotal": Decimal(content["subtotal"]),
                    "credits_applied": Decimal(content["credits_applied"]),
                    "total": Decimal(content["total"]),
                    "corrects_id": None if new.corrects is None else new.corrects.id,
                    "run_id": self.run_id,
                    "version": 1,
                    "fingerprint": built.fingerprint,
                    "setup_fingerprint": built.setup_fingerprint,
                    "event_count": item.raw_count,
                    "content": canonical_json(content).decode(),
                    "inputs": canonical_json(built.inputs).decode(),
                    "created_at": self.now,
                    "updated_at": self.now,
                }
            )
            lines += _line_rows(invoice_id, content)
            revisions.append(
                _revision_row(invoice_id, 1, self.run_id, built.fingerprint, content, self.now)
            )
        conn.execute(insert(invoices_t), invoices)
        if lines:
            conn.execute(insert(lines_t), lines)
        conn.execute(insert(revisions_t), revisions)

    def _ensure_run(self) -> None:
        if self.run_id is not None or self.lease is None:
            return
        run_id = new_id("run")
        with self.transaction() as conn:
            conn.execute(
                insert(runs_t).values(
                    id=run_id,
                    project_id=self.project.id,
                    period=self.label,
                    status="running",
                    actor=self.actor,
                    holder=self.lease.holder,
                    lock_token=self.lease.token,
                    as_of=self.options.as_of,
                    started_at=self.now,
                )
            )
        self.run_id = run_id

    def finalize_period(self) -> list[str]:
        """Finalize this month's drafts (of the selected customers) whose period has ended,
        and the corrections of earlier months this run wrote."""
        mine = invoices_t.c.period == self.label
        if self.run_id is not None:
            mine = or_(mine, invoices_t.c.run_id == self.run_id)
        query = (
            select(invoices_t.c.id, invoices_t.c.number)
            .where(invoices_t.c.project_id == self.project.id)
            .where(mine)
            .where(invoices_t.c.status == "draft")
            .where(invoices_t.c.period_end <= self.options.as_of)
            .order_by(invoices_t.c.number)
        )
        if self.options.customers:
            query = query.join(Customer.__table__, Customer.id == invoices_t.c.customer_id).where(
                Customer.external_id.in_(list(self.options.customers))
            )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        if rows:
            self._ensure_run()
        for start in range(0, len(rows), WRITE_BATCH):
            chunk = rows[start : start + WRITE_BATCH]
            with self.transaction() as conn:
                conn.execute(
                    update(invoices_t)
                    .where(invoices_t.c.id.in_([row.id for row in chunk]))
                    .where(invoices_t.c.status == "draft")
                    .values(status="finalized", finalized_at=self.now, updated_at=self.now)
                )
        return [row.number for row in rows]

    def close_run(self, report: RunReport) -> None:
        summary = run_summary(report)
        with self.transaction() as conn:
            conn.execute(
                update(runs_t)
                .where(runs_t.c.id == self.run_id)
                .values(
                    status="completed",
                    finished_at=datetime.now(UTC),
                    fingerprint=report.fingerprint,
                    summary=canonical_json(summary).decode(),
                )
            )


@dataclass
class _NewInvoice:
    item: WorkItem
    built: BuiltInvoice
    content: dict[str, Any]
    outcome: Outcome
    corrects: Invoice | None
    revision: int


def _line_rows(invoice_id: str, content: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "invoice_id": invoice_id,
            "position": position,
            "kind": line["kind"],
            "description": line["description"][:500],
            "meter": line.get("meter"),
            "quantity": None if line.get("quantity") is None else Decimal(line["quantity"]),
            "amount": Decimal(line["amount"]),
            "event_count": (line.get("events") or {}).get("count"),
        }
        for position, line in enumerate(content["lines"], start=1)
    ]


def _revision_row(
    invoice_id: str,
    version: int,
    run_id: str | None,
    fingerprint: str,
    content: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    return {
        "invoice_id": invoice_id,
        "version": version,
        "run_id": run_id,
        "fingerprint": fingerprint,
        "content": canonical_json(content).decode(),
        "created_at": now,
    }


class _Fenced:
    """A write transaction that first checks the lease is still the run's."""

    def __init__(self, writer: _Writer) -> None:
        self.writer = writer
        self.context: Any = None

    def __enter__(self) -> Connection:
        writer = self.writer
        if writer.lease is not None and time.monotonic() - writer.renewed > (
            writer.options.lease.total_seconds() / 3
        ):
            writer.lease = locks.renew(writer.engine, writer.lease, ttl=writer.options.lease)
            writer.renewed = time.monotonic()
        self.context = writer.engine.begin()
        conn = self.context.__enter__()
        if writer.lease is not None:
            locks.fence(conn, writer.lease)
        return conn

    def __exit__(self, *exc: Any) -> Any:
        return self.context.__exit__(*exc)


def next_number(conn: Connection, project: Project) -> str:
    """The next invoice number, gapless: the counter moves inside the invoice's transaction."""
    return reserve_numbers(conn, project, 1)[0]


def reserve_numbers(conn: Connection, project: Project, count: int) -> list[str]:
    """`count` consecutive invoice numbers. The counter row is updated in the caller's
    transaction: its row lock orders concurrent writers, and a rollback gives the numbers
    back, so numbers stay gapless."""
    for _attempt in range(3):
        bumped = conn.execute(
            update(sequences_t)
            .where(sequences_t.c.project_id == project.id)
            .values(last_number=sequences_t.c.last_number + count)
        ).rowcount
        if bumped == 1:
            last = int(
                conn.execute(
                    select(sequences_t.c.last_number).where(sequences_t.c.project_id == project.id)
                ).scalar_one()
            )
            return [format_number(project.slug, n) for n in range(last - count + 1, last + 1)]
        try:
            with conn.begin_nested():
                conn.execute(insert(sequences_t).values(project_id=project.id, last_number=count))
            return [format_number(project.slug, n) for n in range(1, count + 1)]
        except IntegrityError:
            continue  # another transaction created the counter first; bump it
    raise InvalidInput("could not take an invoice number; run again")


def format_number(slug: str, value: int) -> str:
    return f"{slug.upper()}-{value:06d}"


def run_summary(report: RunReport) -> dict[str, Any]:
    return {
        "invoices": report.count("created", "updated"),
        "created": report.count("created"),
        "updated": report.count("updated"),
        "corrections": report.count("corrected"),
        "voided": report.count("voided"),
        "unchanged": report.count("unchanged", "ignored"),
        "late_events": report.late_events,
        "finalized": len(report.finalized),
    }


def _fail_run(engine: Engine, run_id: str, exc: BaseException, now: datetime) -> None:
    """Best effort: mark the run failed (its invoices so far are whole and stay)."""
    try:
        with engine.begin() as conn:
            conn.execute(
                update(runs_t)
                .where(runs_t.c.id == run_id, runs_t.c.status == "running")
                .values(status="failed", finished_at=datetime.now(UTC), message=str(exc)[:2000])
            )
    except Exception:  # the database may be what failed
        pass


# --------------------------------------------------------------------------- on demand


def compute_invoices(
    conn: Connection,
    project: Project,
    label: str,
    customer_external_id: str,
    *,
    as_of: datetime,
) -> list[tuple[WorkItem, BuiltInvoice]]:
    """The invoices month `label` bills for one customer, computed from the database now
    through a run's own plan, aggregate and build steps; nothing is written (`invoice verify`
    and `invoice preview`)."""
    items = plan_items(conn, project, label, as_of, (customer_external_id,))
    built = _build(conn, project, items) if items else {}
    return [(item, built[item.key]) for item in items]


def compute_invoice(
    conn: Connection,
    project: Project,
    label: str,
    customer_external_id: str,
    period: Period,
    *,
    carried: Sequence[CarriedUsage] = (),
) -> BuiltInvoice | None:
    """One customer's invoice for one billing period of month `label`, as a run would build
    it now (with `carried`: late usage of an earlier month it took in, policy next_invoice);
    None when the month no longer bills that period."""
    items = plan_items(conn, project, label, period.end, (customer_external_id,))
    for item in items:
        if (item.period.start, item.period.end) == (period.start, period.end):
            item.carried = list(carried)
            return _build(conn, project, [item])[item.key]
    return None


def open_period_labels(
    conn: Connection, project: Project, customer_external_id: str, at: datetime
) -> list[str]:
    """The months whose runs bill the customer's billing periods that contain `at` (and the
    customer's own month of `at`, where one-off charges without a subscription land)."""
    from neruba_cli.domain.billing_periods import month_label
    from neruba_cli.domain.periods import period_containing

    customers = _customers(conn, project, (customer_external_id,))
    versions = _plan_versions(conn, project)
    labels: set[str] = set()
    for customer in customers.values():
        labels.add(month_label(at, customer.timezone))
    for customer_id, subs in _subscriptions(conn, project, customers, versions).items():
        customer = customers[customer_id]
        for sub, phases in subs:
            schedule = _schedule(sub, phases, customer)
            period = period_containing(
                at,
                interval=schedule.interval,
                anchor=schedule.anchor,
                anchor_at=schedule.start,
                tz=schedule.tz,
            )
            labels.add(month_label(period.end - timedelta(microseconds=1), customer.timezone))
    return sorted(labels)


def stale_invoices(conn: Connection, project_id: str, batch_id: str) -> list[dict[str, str]]:
    """Finalized invoices whose customer and period got new events from import `batch_id`:
    what the import made stale, and the run that would pick them up."""
    batch_events = (
        select(events_t.c.id)
        .where(events_t.c.project_id == project_id)
        .where(events_t.c.batch_id == batch_id)
        .where(events_t.c.customer_id == invoices_t.c.customer_id)
        .where(events_t.c.ts >= invoices_t.c.period_start)
        .where(events_t.c.ts < invoices_t.c.period_end)
        .exists()
    )
    rows = conn.execute(
        select(invoices_t.c.number, invoices_t.c.period)
        .where(invoices_t.c.project_id == project_id)
        .where(invoices_t.c.status.in_(FINAL))
        .where(batch_events)
        .order_by(invoices_t.c.number)
    ).all()
    return [
        {
            "number": row.number,
            "period": row.period,
            "rerun": f"neruba run bill --period {row.period}",
        }
        for row in rows
    ]
