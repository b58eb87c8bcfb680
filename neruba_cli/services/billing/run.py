"""`neruba run bill`: a locked, fenced, deterministic billing run for one month.

The run holds the month's lease lock throughout, so two runs of one month never interleave,
and prices a batch of customers at a time, so each aggregation query names a bounded number of
customers:

1. **Plan**, **detect** what changed, **aggregate** and **build** (services/billing/plan.py).
2. **Decide and write** (services/billing/writer.py): whole invoices, a batch per
   transaction, each fenced by the run's lease token.

Policy `next_invoice` is settled here rather than in the writer: the late usage of the
previous month's finalized invoices is a difference between two months' plans, and it lands
on each customer's first invoice of this month (or, where none is open, on a correction).

A run that changed nothing writes nothing (not even a run record) and says "no changes".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.exc import DataError, DBAPIError, OperationalError

from neruba_cli.db import locks
from neruba_cli.db.schema import Project
from neruba_cli.db.tables import billing_runs_t, customers_t, events_t, invoices_t
from neruba_cli.domain import future_months, lock_names
from neruba_cli.domain.aggregation import MeterSpec
from neruba_cli.domain.billing_periods import resolve_label
from neruba_cli.domain.invoice import (
    FINAL,
    BuiltInvoice,
    CarriedUsage,
    correction_lines,
    run_fingerprint,
)
from neruba_cli.domain.invoice_limits import Unbillable
from neruba_cli.domain.late_events import carries_forward, stale_entry
from neruba_cli.domain.periods import Period
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.billing import culprits
from neruba_cli.services.billing import plan as billing_plan
from neruba_cli.services.billing.plan import (
    WorkItem,
    attach_existing,
    build,
    build_each,
    count_events,
    documents,
    latest_invoice,
    load_customers,
    load_subscriptions,
    needs_pricing,
    orphaned_items,
    plan_items,
    plan_versions,
    restore_carried,
    subscription_schedule,
    with_stored_ids,
)
from neruba_cli.services.billing.runs import failing_customers
from neruba_cli.services.billing.writer import Failure, InvoiceWriter, Outcome

# what `run bill` takes and returns, and how a run is summed up: part of this module's face
from neruba_cli.services.billing.writer import RunOptions as RunOptions
from neruba_cli.services.billing.writer import RunReport as RunReport
from neruba_cli.services.billing.writer import run_summary as run_summary

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
    if not options.allow_future:
        _refuse_unstarted(engine, project, label, options, report)
    lease = None
    if not options.dry_run:
        lease = locks.acquire(
            engine,
            lock_names.billing(project.slug, label),
            holder=holder,
            ttl=options.lease,
            wait=options.wait,
        )
        _close_abandoned(engine, project, label, lease)
    writer = InvoiceWriter(engine, project, label, lease, options, actor=actor, now=now)
    try:
        with engine.connect() as conn:
            items = plan_items(conn, project, label, options.as_of, options.customers)
            attach_existing(conn, project, items)
            items += orphaned_items(conn, project, label, items, options.customers)
            restore_carried(conn, items)
            if carries_forward(project.late_events):
                _fall_back_where_next_is_final(conn, project, label, items)
                items += _late_carry(conn, project, label, items, options, report)
            failing_before = [] if options.dry_run else failing_customers(conn, project.id, label)
        advance = progress_total(len(items)) if progress_total else (lambda _n: None)
        for start in range(0, len(items), billing_plan.CUSTOMER_BATCH):
            chunk = items[start : start + billing_plan.CUSTOMER_BATCH]
            outcomes = _bill_chunk(engine, project, chunk, writer, report)
            report.outcomes += outcomes
            advance(len(chunk))
        writer.flush()
        if options.finalize and not options.dry_run:
            skip = {failure.customer_id for failure in report.failed}
            report.finalized, unpostable = writer.finalize_period(skip)
            _report_unpostable(engine, project, items, unpostable, report)
        covered = set(options.customers)
        if not options.dry_run and (
            report.failed or any(not covered or f["customer"] in covered for f in failing_before)
        ):
            writer.record()  # what `check` reads: this run's failures supersede earlier ones
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


def _refuse_unstarted(
    engine: Engine, project: Project, label: str, options: RunOptions, report: RunReport
) -> None:
    """Refuse, before anything is locked or written, a month that has not started for the
    project nor any customer the run bills (domain/future_months.py); a dry run writes
    nothing, so it goes on with a warning."""
    query = select(customers_t.c.timezone).where(customers_t.c.project_id == project.id)
    if options.customers:
        query = query.where(customers_t.c.external_id.in_(list(options.customers)))
    with engine.connect() as conn:
        zones = [str(zone) for zone in conn.scalars(query.distinct())]
    reason = future_months.not_started(
        label, as_of=options.as_of, project_tz=project.timezone, time_zones=zones
    )
    if reason is None:
        return
    if not options.dry_run:
        raise future_months.refusal(reason)
    report.warnings.append(
        f"{reason.message}; without --dry-run the run is refused unless it is given "
        f"{future_months.ALLOW_FLAG}"
    )


ABANDONED = "abandoned: its process stopped before finishing"


def _close_abandoned(engine: Engine, project: Project, label: str, lease: locks.Lease) -> None:
    """Earlier runs of this month still `running` lost their lease to this one, so none of
    their writes can commit any more: their process was killed. Mark them failed (what they
    wrote is whole invoices, which this run takes over) so they stop looking in progress."""
    with engine.begin() as conn:
        conn.execute(
            update(billing_runs_t)
            .where(billing_runs_t.c.project_id == project.id, billing_runs_t.c.period == label)
            .where(billing_runs_t.c.status == "running", billing_runs_t.c.lock_token != lease.token)
            .values(status="failed", finished_at=datetime.now(UTC), message=ABANDONED)
        )


def _bill_chunk(
    engine: Engine,
    project: Project,
    chunk: list[WorkItem],
    writer: InvoiceWriter,
    report: RunReport,
) -> list[Outcome]:
    with engine.connect() as conn:
        count_events(conn, project, chunk)
        todo = [item for item in chunk if needs_pricing(item, project)]
    try:
        with engine.connect() as conn:
            built, failed = build_each(conn, project, todo) if todo else ({}, {})
    except DBAPIError as exc:
        if not _unreadable_value(exc):
            raise
        built, failed = _build_one_by_one(engine, project, todo)
    outcomes: list[Outcome] = []
    for item in chunk:
        if item.key in failed:
            report.failed.append(_failure(engine, project, item, failed[item.key]))
            continue
        invoice = built.get(item.key)
        if invoice is None:
            outcomes.append(_unchanged(item))
            continue
        try:
            outcomes.append(writer.settle(item, invoice))
        except Unbillable as exc:  # its correction does not fit: checked before any write
            report.failed.append(_failure(engine, project, item, exc))
    return outcomes


def _unreadable_value(exc: DBAPIError) -> bool:
    """The database could not read a stored value as a number (PostgreSQL: a JSON number past
    NUMERIC's range; SQLite: the same refused by the exact functions), as opposed to a
    database that is down, locked or out of resources (those stop the run)."""
    if exc.connection_invalidated:
        return False
    if isinstance(exc, DataError):
        return True
    return isinstance(exc, OperationalError) and "user-defined function raised" in str(exc)


def _build_one_by_one(
    engine: Engine, project: Project, items: list[WorkItem]
) -> tuple[dict[Any, BuiltInvoice], dict[Any, Unbillable]]:
    """A batch whose aggregation the database refused: each customer on its own, so only the
    one whose events hold the unreadable value is skipped."""
    built: dict[Any, BuiltInvoice] = {}
    failed: dict[Any, Unbillable] = {}
    for item in items:
        try:
            with engine.connect() as conn:
                one, bad = build_each(conn, project, [item])
        except DBAPIError as exc:
            if not _unreadable_value(exc):
                raise
            reason = str(exc.orig).strip().splitlines()[0][:300] if exc.orig else str(exc)[:300]
            failed[item.key] = Unbillable(f"its usage cannot be aggregated: {reason}")
            continue
        built.update(one)
        failed.update(bad)
    return built, failed


def _failure(engine: Engine, project: Project, item: WorkItem, error: Unbillable) -> Failure:
    """A customer skipped: why, its stored invoice (left as it was) and the events that
    caused it (those of the meter the error names, else of every meter it is billed for)."""
    specs = _specs(item, error.meter)
    with engine.connect() as conn:
        found = culprits.find(conn, project.id, item.customer.id, item.period, specs)
    latest = latest_invoice(item)
    return Failure(
        customer=item.customer.external_id,
        customer_id=item.customer.id,
        period=item.period,
        reason=error.message,
        number=None if latest is None else latest.number,
        events=[culprit.as_dict() for culprit in found],
    )


def _specs(item: WorkItem, meter: str | None) -> list[MeterSpec]:
    found: dict[MeterSpec, None] = {}
    for terms in item.terms:
        for phase in terms.phases:
            for code, spec in sorted(phase.meters.items()):
                if meter is None or code == meter:
                    found[spec] = None
    return list(found)


def _report_unpostable(
    engine: Engine,
    project: Project,
    items: list[WorkItem],
    unpostable: list[tuple[Any, Unbillable]],
    report: RunReport,
) -> None:
    """Drafts `--finalize` left because the ledger cannot hold them (stored before amounts
    were checked): each customer is reported like one the run could not bill."""
    by_window = {(i.customer.id, i.period.start, i.period.end): i for i in items}
    for row, error in unpostable:
        item = by_window.get((row.customer_id, row.period_start, row.period_end))
        if item is None:
            continue
        failure = _failure(engine, project, item, error)
        failure.number = row.number
        report.failed.append(failure)


def _unchanged(item: WorkItem) -> Outcome:
    latest = latest_invoice(item)
    assert latest is not None
    return Outcome(
        item.customer.external_id,
        item.period,
        "unchanged",
        number=latest.number,
        total=latest.total,
        currency=latest.currency,
        fingerprint=latest.fingerprint,
    )


def _fail_run(engine: Engine, run_id: str, exc: BaseException, now: datetime) -> None:
    """Best effort: mark the run failed (its invoices so far are whole and stay)."""
    try:
        with engine.begin() as conn:
            conn.execute(
                update(billing_runs_t)
                .where(billing_runs_t.c.id == run_id, billing_runs_t.c.status == "running")
                .values(status="failed", finished_at=datetime.now(UTC), message=str(exc)[:2000])
            )
    except Exception:  # the database may be what failed
        pass


# --------------------------------------------------------------------------- next_invoice


def _late_carry(
    conn: Connection,
    project: Project,
    label: str,
    items: list[WorkItem],
    options: RunOptions,
    report: RunReport,
) -> list[WorkItem]:
    """Policy `next_invoice`: late usage of the previous month's finalized invoices goes on
    each customer's first invoice of this month, as difference lines marked `late_from`.

    A customer with no open invoice this month to take it (none billed, or already
    finalized) gets a correction of the late period instead; those items are returned so the
    run settles them like any correction. Late events older than the previous month are
    corrected by rerunning their own month (`_fall_back_where_next_is_final`): its following
    month is finalized by then, so nothing can carry them any more.
    """
    previous = _previous_label(label)
    earlier = plan_items(conn, project, previous, options.as_of, options.customers)
    attach_existing(conn, project, earlier)
    earlier = [i for i in earlier if any(inv.status in FINAL for inv in i.existing)]
    if not earlier:
        return []
    restore_carried(conn, earlier)
    count_events(conn, project, earlier)
    changed = [i for i in earlier if needs_pricing(i, project, final_only=True)]
    if not changed:
        return []
    built, failed = build_each(conn, project, changed)
    for item in changed:
        if item.key in failed:
            error = failed[item.key]
            found = culprits.find(
                conn, project.id, item.customer.id, item.period, _specs(item, error.meter)
            )
            report.failed.append(
                Failure(
                    item.customer.external_id,
                    item.customer.id,
                    item.period,
                    f"late usage of {previous}: {error.message}",
                    events=[culprit.as_dict() for culprit in found],
                )
            )
    changed = [item for item in changed if item.key not in failed]
    first: dict[str, WorkItem] = {}
    for item in items:
        first.setdefault(item.customer.id, item)
    fallbacks: list[WorkItem] = []
    for item in changed:
        finals = [inv for inv in item.existing if inv.status in FINAL]
        target = first.get(item.customer.id)
        carried_before = _carried_lines(conn, target, finals[0].number) if target else []
        open_target = target is not None and not any(inv.status in FINAL for inv in target.existing)
        billed = documents(conn, finals) + carried_before
        own = with_stored_ids(conn, built[item.key], finals, billed)
        delta = correction_lines(own.content["lines"], billed, item.customer.currency)
        if not delta:
            continue
        if open_target and target is not None:
            target.carried.append(CarriedUsage(finals[0].number, tuple(delta)))
        else:
            item.fallback = True
            item.carried_elsewhere = carried_before
            fallbacks.append(item)
    return fallbacks


def _fall_back_where_next_is_final(
    conn: Connection, project: Project, label: str, items: list[WorkItem]
) -> None:
    """Rerunning a month whose late usage can no longer be carried (the customer's invoice of
    the month after is already finalized) corrects it instead, counting what was carried."""
    late: dict[str, list[WorkItem]] = {}
    for item in items:
        if any(invoice.status in FINAL for invoice in item.existing):
            late.setdefault(item.customer.id, []).append(item)
    if not late:
        return
    following = conn.execute(
        select(invoices_t.c.customer_id, invoices_t.c.content)
        .where(invoices_t.c.project_id == project.id)
        .where(invoices_t.c.period == _next_label(label))
        .where(invoices_t.c.status.in_(FINAL))
        .where(invoices_t.c.customer_id.in_(sorted(late)))
    ).all()
    documents_by_customer: dict[str, list[list[dict[str, Any]]]] = {}
    for customer_id, content in following:
        documents_by_customer.setdefault(customer_id, []).append(orjson.loads(content)["lines"])
    for customer_id, lines_of_each in documents_by_customer.items():
        for item in late[customer_id]:
            source = next(i for i in item.existing if i.status in FINAL).number
            item.fallback = True
            item.carried_elsewhere = [
                [_uncarried(line) for line in lines if line.get("late_from") == source]
                for lines in lines_of_each
            ]


def _next_label(label: str) -> str:
    year, month = int(label[:4]), int(label[5:7])
    return f"{year + 1:04d}-01" if month == 12 else f"{year:04d}-{month + 1:02d}"


def _carried_lines(conn: Connection, target: WorkItem, source: str) -> list[list[dict[str, Any]]]:
    """Lines already carried from `source` onto finalized invoices of the target period."""
    finals = [inv for inv in target.existing if inv.status in FINAL]
    return [
        [_uncarried(line) for line in lines if line.get("late_from") == source]
        for lines in documents(conn, finals)
    ]


def _uncarried(line: dict[str, Any]) -> dict[str, Any]:
    """A carried line as its source period would key it (so differences line up)."""
    plain = dict(line)
    plain.pop("late_from", None)
    return plain


def _previous_label(label: str) -> str:
    year, month = int(label[:4]), int(label[5:7])
    return f"{year - 1:04d}-12" if month == 1 else f"{year:04d}-{month - 1:02d}"


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
    built = build(conn, project, items) if items else {}
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
            return build(conn, project, [item])[item.key]
    return None


def open_period_labels(
    conn: Connection, project: Project, customer_external_id: str, at: datetime
) -> list[str]:
    """The months whose runs bill the customer's billing periods that contain `at` (and the
    customer's own month of `at`, where one-off charges without a subscription land)."""
    from neruba_cli.domain.billing_periods import final_window, month_label
    from neruba_cli.domain.periods import period_containing

    customers = load_customers(conn, project, (customer_external_id,))
    versions = plan_versions(conn, project)
    labels: set[str] = set()
    for customer in customers.values():
        labels.add(month_label(at, customer.timezone))
    for customer_id, subs in load_subscriptions(conn, project, customers, versions).items():
        customer = customers[customer_id]
        for sub, phases in subs:
            schedule = subscription_schedule(sub, phases, customer)
            period = period_containing(
                at,
                interval=schedule.interval,
                anchor=schedule.anchor,
                anchor_at=schedule.start,
                tz=schedule.tz,
            )
            window = final_window(schedule, period)
            labels.add(month_label(window.end - timedelta(microseconds=1), customer.timezone))
    return sorted(labels)


def stale_invoices(
    conn: Connection,
    project_id: str,
    batch_id: str,
    first_event: datetime | None,
    last_event: datetime | None,
) -> list[dict[str, str]]:
    """Finalized invoices whose customer and period got new events from import `batch_id`:
    what the import made stale, and the run that would pick them up. Only invoices whose
    period overlaps the import's first to last event are probed, so an import of the open
    month looks at none."""
    if first_event is None or last_event is None:
        return []
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
        .where(invoices_t.c.period_end > first_event, invoices_t.c.period_start <= last_event)
        .where(batch_events)
        .order_by(invoices_t.c.number)
    ).all()
    return [stale_entry(row.number, row.period) for row in rows]
