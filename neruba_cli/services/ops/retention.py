"""`neruba retention apply`: drop the raw event detail of closed, settled billing months.

The rule of which months qualify and which properties go is in domain/retention.py. This
module gathers the facts (invoices per month, event counts per customer period, Stripe links),
then rewrites the events' `properties` in batches of `BATCH` events, one transaction each
(services/ops/event_properties.py, which pages along the events index), under a lease so that
two operators never run it at once; every write of a run is fenced by that lease, so a run that
lost it (paused past its expiry, released by an operator) writes nothing more. Each batch
rewrites only events that still carry a droppable key, so a run that was killed is finished by
running the command again (it finds the same months, and the events already done have nothing
left to drop).
`retention_runs` records each run: the months, what was kept, how many events changed. A run
whose process was killed stays `running` until the next run takes the lease: that run marks
it `failed` (its `finished_at` stays empty, and `retention list` shows it as abandoned).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, case, func, insert, select, update

from neruba_cli.db import locks, usage_sql
from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import Project
from neruba_cli.db.tables import invoices_t, meters_t, retention_runs_t, stripe_links_t
from neruba_cli.domain import lock_names
from neruba_cli.domain.aggregation import MeterSpec
from neruba_cli.domain.catalog import parse_catalog
from neruba_cli.domain.errors import LockLost
from neruba_cli.domain.retention import (
    Age,
    MonthFacts,
    Verdict,
    check_as_of,
    judge,
    keep_only,
    read_properties,
)
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.billing import plan as billing_plan
from neruba_cli.services.billing.run import ABANDONED
from neruba_cli.services.ops import event_properties

BATCH = event_properties.BATCH  # events per transaction
CUSTOMER_BATCH = 500


Window = tuple[datetime, datetime]


# --------------------------------------------------------------------------- meters


def meters_in_use(conn: Connection, project: Project) -> list[tuple[str, MeterSpec]]:
    """Every meter definition a billing run may read: the catalog's current meters and the
    copies frozen in each plan version, as (where, spec) with where "catalog" or CODE@N."""
    documents = [
        orjson.loads(definition)
        for definition in conn.execute(
            select(meters_t.c.definition)
            .where(meters_t.c.project_id == project.id)
            .order_by(meters_t.c.code)
        ).scalars()
    ]
    found: list[tuple[str, MeterSpec]] = []
    if documents:
        catalog = parse_catalog({"meters": documents}, source="stored meters")
        found += [("catalog", meter.spec) for meter in catalog.meters]
    for stored in sorted(billing_plan.plan_versions(conn, project).values(), key=lambda s: s.key):
        found += [(stored.key, meter.spec) for _, meter in sorted(stored.meters.items())]
    return found


# --------------------------------------------------------------------------- planning


@dataclass
class MonthScope:
    """The events an eligible month covers: per billing window, the customers whose live
    invoice spans it, and how many events they have there now."""

    label: str
    windows: dict[Window, list[str]] = field(default_factory=dict)
    events: int = 0


@dataclass
class RetentionPlan:
    as_of: datetime
    cutoff: datetime
    kept: frozenset[str]
    verdicts: list[Verdict]
    scopes: list[MonthScope]

    @property
    def periods(self) -> list[str]:
        return [scope.label for scope in self.scopes]

    @property
    def events_in_scope(self) -> int:
        return sum(scope.events for scope in self.scopes)


def plan(conn: Connection, project: Project, age: Age, as_of: datetime) -> RetentionPlan:
    cutoff = age.cutoff(as_of)
    kept = read_properties(spec for _, spec in meters_in_use(conn, project))
    pushes = conn.execute(
        select(func.count())
        .select_from(stripe_links_t)
        .where(stripe_links_t.c.project_id == project.id)
    ).scalar_one()
    rows = conn.execute(
        select(
            invoices_t.c.period,
            func.count().label("invoices"),
            func.sum(  # drafts, and anything else that is not final
                case((invoices_t.c.status.in_(("finalized", "paid", "void")), 0), else_=1)
            ).label("open"),
            func.max(invoices_t.c.period_end).label("last_end"),
        )
        .where(invoices_t.c.project_id == project.id)
        .group_by(invoices_t.c.period)
        .order_by(invoices_t.c.period)
    ).all()
    verdicts: list[Verdict] = []
    scopes: list[MonthScope] = []
    for row in rows:
        last_end = row.last_end
        if last_end is not None and last_end.tzinfo is None:  # func.max loses the column type
            last_end = last_end.replace(tzinfo=UTC)
        facts = MonthFacts(
            label=row.period,
            invoices=int(row.invoices),
            drafts=int(row.open or 0),
            last_end=last_end,
        )
        verdict = judge(facts, cutoff, pushes_to_stripe=bool(pushes))
        scope = None
        if verdict.eligible:  # the cheap tests passed: now count events and pushes
            scope, pending = _scope(conn, project, row.period)
            unpushed = _unpushed(conn, project, row.period) if pushes else 0
            facts = MonthFacts(
                facts.label, facts.invoices, facts.drafts, facts.last_end, pending, unpushed
            )
            verdict = judge(facts, cutoff, pushes_to_stripe=bool(pushes))
        verdicts.append(verdict)
        if verdict.eligible and scope is not None:
            scopes.append(scope)
    return RetentionPlan(as_of, cutoff, kept, verdicts, scopes)


def _scope(conn: Connection, project: Project, label: str) -> tuple[MonthScope, int]:
    """The month's live invoices by billing window, and how many customer periods have a
    different number of events now than their live invoice counted (billing's own test)."""
    latest: dict[tuple[str, datetime, datetime], tuple[str, int]] = {}
    rows = conn.execute(
        select(
            invoices_t.c.customer_id,
            invoices_t.c.period_start,
            invoices_t.c.period_end,
            invoices_t.c.status,
            invoices_t.c.event_count,
        )
        .where(invoices_t.c.project_id == project.id, invoices_t.c.period == label)
        .order_by(invoices_t.c.revision)
    )
    for row in rows:
        if row.status != "void":  # the latest revision that is not void, as billing reads it
            latest[(row.customer_id, row.period_start, row.period_end)] = (
                row.customer_id,
                int(row.event_count),
            )
    by_window: dict[Window, dict[str, int]] = defaultdict(dict)
    for (customer_id, start, end), (_, invoiced) in latest.items():
        by_window[(start, end)][customer_id] = invoiced
    scope = MonthScope(label)
    pending = 0
    for (start, end), counted in sorted(by_window.items()):
        ids = sorted(counted)
        for first in range(0, len(ids), CUSTOMER_BATCH):
            chunk = ids[first : first + CUSTOMER_BATCH]
            stored = usage_sql.event_counts(
                conn, project_id=project.id, start=start, end=end, customer_ids=chunk
            )
            pending += sum(1 for c in chunk if stored.get(c, 0) != counted[c])
            scope.events += sum(stored.values())
        scope.windows[(start, end)] = ids
    return scope, pending


def _unpushed(conn: Connection, project: Project, label: str) -> int:
    """Final invoices of the month whose Stripe invoice is missing or not finalized."""
    return int(
        conn.execute(
            select(func.count())
            .select_from(
                invoices_t.outerjoin(
                    stripe_links_t,
                    (stripe_links_t.c.invoice_id == invoices_t.c.id)
                    & (stripe_links_t.c.project_id == invoices_t.c.project_id),
                )
            )
            .where(invoices_t.c.project_id == project.id, invoices_t.c.period == label)
            .where(invoices_t.c.status.in_(("finalized", "paid")))
            .where((stripe_links_t.c.id.is_(None)) | (stripe_links_t.c.state != "finalized"))
        ).scalar_one()
    )


# --------------------------------------------------------------------------- applying


@dataclass
class RetentionReport:
    run: str | None
    older_than: str
    as_of: datetime
    cutoff: datetime
    dry_run: bool
    periods: list[str]
    skipped: list[dict[str, str]]  # {"period", "code", "reason"}
    kept_properties: list[str]
    events_in_periods: int = 0
    events: int = 0  # events whose properties changed (or would)
    properties_dropped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "periods": self.periods,
            "events": self.events,
            "properties_dropped": self.properties_dropped,
            "dry_run": self.dry_run,
            "run": self.run,
            "older_than": self.older_than,
            "as_of": format_ts(self.as_of),
            "cutoff": format_ts(self.cutoff),
            "events_in_periods": self.events_in_periods,
            "kept_properties": self.kept_properties,
            "skipped": self.skipped,
        }


Progress = Callable[[int], None]


def apply(
    engine: Engine,
    project: Project,
    age: Age,
    *,
    as_of: datetime,
    dry_run: bool,
    actor: str,
    now: datetime,
    progress_total: Callable[[int], Progress] | None = None,
    batch_size: int = BATCH,
) -> RetentionReport:
    """Plan, then (unless a dry run) rewrite the events of every eligible month. `now` is
    the command's clock: the run's start and finish are recorded with it. An `as_of` after
    `now` is refused: it would make months eligible that are not old enough yet."""
    check_as_of(as_of, now)
    holding = (
        None
        if dry_run
        else locks.Holding(engine, locks.acquire(engine, lock_names.retention(project.slug)))
    )
    try:
        if holding is not None:
            close_abandoned(holding, project)
        with engine.connect() as conn:
            planned = plan(conn, project, age, as_of)
        report = RetentionReport(
            run=None if dry_run else new_id("ret"),
            older_than=age.text,
            as_of=as_of,
            cutoff=planned.cutoff,
            dry_run=dry_run,
            periods=planned.periods,
            skipped=[
                {"period": v.label, "code": v.code or "", "reason": v.reason or ""}
                for v in planned.verdicts
                if not v.eligible
            ],
            kept_properties=sorted(planned.kept),
            events_in_periods=planned.events_in_scope,
        )
        if holding is not None and report.run is not None:
            _open_run(holding, project, report, actor, now)
        advance = progress_total(planned.events_in_scope) if progress_total else (lambda _n: None)
        scanned = 0
        try:
            for scope in planned.scopes:
                for window, customer_ids in scope.windows.items():
                    for seen in _rewrite(
                        engine,
                        holding,
                        project,
                        report,
                        planned.kept,
                        window,
                        customer_ids,
                        batch_size,
                    ):
                        scanned += seen
                        advance(scanned)
        except LockLost:
            raise  # not ours to close any more: the next run marks it failed (abandoned)
        except BaseException:
            if holding is not None and report.run is not None:
                _close_run(holding, report, status="failed", now=now)
            raise
        if holding is not None and report.run is not None:
            _close_run(holding, report, status="completed", now=now)
        return report
    finally:
        if holding is not None:
            holding.release()


def close_abandoned(holding: locks.Holding, project: Project) -> int:
    """Runs of the project still `running` while this one holds the retention lease lost
    their lease, so their process stopped (killed) before finishing: mark them failed so they
    stop looking in progress. Called before this run's own row exists. `finished_at` stays
    empty: when they stopped is not known; `retention list` shows them as abandoned."""
    with holding.write() as conn:
        closed = conn.execute(
            update(retention_runs_t)
            .where(
                retention_runs_t.c.project_id == project.id, retention_runs_t.c.status == "running"
            )
            .values(status="failed")
        )
    return int(closed.rowcount or 0)


def _rewrite(
    engine: Engine,
    holding: locks.Holding | None,
    project: Project,
    report: RetentionReport,
    kept: frozenset[str],
    window: Window,
    customer_ids: list[str],
    batch_size: int,
) -> Iterator[int]:
    """Rewrite the window's events of these customers, a batch per transaction together
    with the run's counters, each fenced by the run's lease (`holding`; None for a dry run,
    which writes nothing). Yields how many events each batch read."""
    start, end = window

    def count(conn: Connection, batch: event_properties.Batch) -> None:
        conn.execute(
            update(retention_runs_t)
            .where(retention_runs_t.c.id == report.run)
            .values(
                events_touched=report.events + batch.events,
                properties_dropped=report.properties_dropped + batch.removed,
            )
        )

    for batch in event_properties.rewrite(
        engine,
        event_properties.Selection(project.id, customer_ids, start, end),
        lambda properties: keep_only(properties, kept),
        write=not report.dry_run,
        batch_size=batch_size,
        before_commit=None if report.dry_run else count,
        transaction=None if holding is None else holding.write,
    ):
        report.events += batch.events  # counted once the batch is committed
        report.properties_dropped += batch.removed
        yield batch.scanned
    # The versions corrections superseded keep no more than the events do (not counted: the
    # run's figures are about events).
    begin = engine.begin if holding is None else holding.write
    with begin() as conn:
        event_properties.rewrite_versions(
            conn,
            event_properties.Selection(project.id, customer_ids, start, end),
            lambda properties: keep_only(properties, kept),
            write=not report.dry_run,
        )


def _open_run(
    holding: locks.Holding, project: Project, report: RetentionReport, actor: str, now: datetime
) -> None:
    with holding.write() as conn:
        conn.execute(
            insert(retention_runs_t).values(
                id=report.run,
                project_id=project.id,
                older_than=report.older_than,
                as_of=report.as_of,
                periods=orjson.dumps(report.periods).decode(),
                kept_properties=orjson.dumps(report.kept_properties).decode(),
                events_touched=0,
                properties_dropped=0,
                status="running",
                actor=actor,
                started_at=now,
            )
        )


def _close_run(
    holding: locks.Holding, report: RetentionReport, *, status: str, now: datetime
) -> None:
    with holding.write() as conn:
        conn.execute(
            update(retention_runs_t)
            .where(retention_runs_t.c.id == report.run)
            .values(
                status=status,
                events_touched=report.events,
                properties_dropped=report.properties_dropped,
                finished_at=now,
            )
        )


def list_runs(conn: Connection, project: Project) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(retention_runs_t)
        .where(retention_runs_t.c.project_id == project.id)
        .order_by(retention_runs_t.c.started_at)
    ).all()
    return [
        {
            "run": row.id,
            "older_than": row.older_than,
            "as_of": format_ts(row.as_of),
            "periods": orjson.loads(row.periods),
            "kept_properties": orjson.loads(row.kept_properties),
            "events": int(row.events_touched),
            "properties_dropped": int(row.properties_dropped),
            "status": row.status,
            "message": ABANDONED if row.status == "failed" and row.finished_at is None else None,
            "actor": row.actor,
            "started_at": format_ts(row.started_at),
            "finished_at": format_ts(row.finished_at),
        }
        for row in rows
    ]
