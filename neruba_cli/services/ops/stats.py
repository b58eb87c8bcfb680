"""`neruba stats`: operating figures of one project, read in a few bounded queries, and their
Prometheus rendering (domain/prometheus.py) written atomically for node_exporter's textfile
collector.

Where each figure comes from, and why it is read that way:

- **Events by meter and UTC day** over a window of whole days: one GROUP BY over a CASE tree
  of day bounds (the same SQL on every dialect; no date functions, which differ).
- **Events per meter, all time**: a counter for Prometheus (`rate()` needs monotonic totals);
  the count walks the (project, customer, meter, voided, ts) index; voided events count (a
  counter never goes down).
- **Ingest lag** (received_at − ts) over events received in the window, at most LAG_SAMPLE of
  the newest: timestamp arithmetic differs per dialect, so the differences are taken here, in
  exact microseconds, from a bounded read.
- **Invoices** by kind, status and currency: totals are exact decimals, which SQLite stores as
  text, so they are summed here; never across currencies.
- **Wallet liabilities**: wallet accounts are credit-normal (debits positive), so what the
  project owes its customers is minus the sum of their balances, in integer minor units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, case, func, literal_column, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import Integer

from neruba_cli.db.schema import Project
from neruba_cli.db.tables import billing_runs_t, events_t, invoices_t, ledger_accounts_t
from neruba_cli.domain import prometheus
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.ledger import WALLET
from neruba_cli.domain.money import format_amount, from_minor_units
from neruba_cli.domain.prometheus import Family, Sample
from neruba_cli.domain.stats import nearest_rank
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services import output_files
from neruba_cli.services.tenancy import projects

LAG_SAMPLE = 100_000  # newest events the lag percentiles are taken over
MAX_DAYS = 366
DEFAULT_DAYS = 30


@dataclass(frozen=True)
class Lag:
    count: int
    total: Decimal  # seconds, summed
    p50: Decimal | None
    p95: Decimal | None
    max: Decimal | None


@dataclass(frozen=True)
class LastRun:
    id: str
    period: str
    started_at: datetime
    finished_at: datetime

    @property
    def duration(self) -> Decimal:
        return prometheus.seconds(self.finished_at - self.started_at)


@dataclass(frozen=True)
class InvoiceGroup:
    kind: str
    status: str
    currency: str
    count: int
    total: Decimal


@dataclass
class Stats:
    project: str
    generated_at: datetime
    days: int
    since: datetime  # the window: whole UTC days, today included
    daily: list[tuple[str, str, int]] = field(default_factory=list)  # (day, meter, events)
    events_total: dict[str, int] = field(default_factory=dict)  # meter -> all time
    lag: Lag = Lag(0, Decimal(0), None, None, None)
    last_run: LastRun | None = None
    invoices: list[InvoiceGroup] = field(default_factory=list)
    wallets: dict[str, int] = field(default_factory=dict)  # currency -> liability, minor units

    def as_dict(self) -> dict[str, Any]:
        def number(value: Decimal | None) -> str | None:
            return None if value is None else prometheus.format_value(value)

        run = self.last_run
        return {
            "project": self.project,
            "generated_at": format_ts(self.generated_at),
            "window": {"days": self.days, "since": format_ts(self.since)},
            "events": [{"day": d, "meter": m, "count": n} for d, m, n in self.daily],
            "events_total": dict(sorted(self.events_total.items())),
            "ingest_lag_seconds": {
                "events": self.lag.count,
                "p50": number(self.lag.p50),
                "p95": number(self.lag.p95),
                "max": number(self.lag.max),
            },
            "last_billing_run": None
            if run is None
            else {
                "run": run.id,
                "period": run.period,
                "started_at": format_ts(run.started_at),
                "finished_at": format_ts(run.finished_at),
                "duration_seconds": number(run.duration),
            },
            "invoices": [
                {
                    "kind": g.kind,
                    "status": g.status,
                    "currency": g.currency,
                    "count": g.count,
                    "total": format_amount(g.total, g.currency),
                }
                for g in self.invoices
            ],
            "wallet_liabilities": {
                currency: format_amount(from_minor_units(units, currency), currency)
                for currency, units in sorted(self.wallets.items())
            },
        }


# --------------------------------------------------------------------------- reading


def collect(engine: Engine, project: Project, *, now: datetime, days: int) -> Stats:
    if not 1 <= days <= MAX_DAYS:
        raise InvalidInput(f"--days must be between 1 and {MAX_DAYS}, not {days}")
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    starts = [today - timedelta(days=days - 1 - n) for n in range(days + 1)]
    stats = Stats(project.slug, now, days, starts[0])
    with engine.connect() as conn:
        stats.daily = _daily(conn, project.id, starts)
        stats.events_total = _events_total(conn, project.id)
        stats.lag = _lag(conn, project.id, starts[0])
        stats.last_run = _last_run(conn, project.id)
        stats.invoices = _invoices(conn, project.id)
        stats.wallets = _wallets(conn, project.id)
    return stats


def _day_index(bounds: Sequence[datetime], low: int, high: int) -> ColumnElement[Any]:
    """Which day [bounds[i], bounds[i+1]) an event's ts falls in, as a balanced CASE tree."""
    if high - low == 1:
        return literal_column(str(low), Integer)
    middle = (low + high) // 2
    return case(
        (events_t.c.ts < bounds[middle], _day_index(bounds, low, middle)),
        else_=_day_index(bounds, middle, high),
    )


def _daily(conn: Connection, project_id: str, starts: list[datetime]) -> list[tuple[str, str, int]]:
    day = _day_index(starts, 0, len(starts) - 1).label("day")
    query = (
        select(events_t.c.meter, day, func.count().label("n"))
        .where(events_t.c.project_id == project_id)
        .where(events_t.c.ts >= starts[0], events_t.c.ts < starts[-1])
        .group_by(events_t.c.meter, literal_column("day"))
    )
    rows = [
        (starts[int(row.day)].date().isoformat(), row.meter, int(row.n))
        for row in conn.execute(query)
    ]
    return sorted(rows)


def _events_total(conn: Connection, project_id: str) -> dict[str, int]:
    query = (
        select(events_t.c.meter, func.count().label("n"))
        .where(events_t.c.project_id == project_id)
        .group_by(events_t.c.meter)
    )
    return {row.meter: int(row.n) for row in conn.execute(query)}


def _lag(conn: Connection, project_id: str, since: datetime) -> Lag:
    query = (
        select(events_t.c.received_at, events_t.c.ts)
        .where(events_t.c.project_id == project_id, events_t.c.received_at >= since)
        .order_by(events_t.c.id.desc())
        .limit(LAG_SAMPLE)
    )
    lags = [prometheus.seconds(row.received_at - row.ts) for row in conn.execute(query)]
    return Lag(
        len(lags),
        sum(lags, Decimal(0)),
        nearest_rank(lags, 50),
        nearest_rank(lags, 95),
        max(lags) if lags else None,
    )


def _last_run(conn: Connection, project_id: str) -> LastRun | None:
    row = conn.execute(
        select(
            billing_runs_t.c.id,
            billing_runs_t.c.period,
            billing_runs_t.c.started_at,
            billing_runs_t.c.finished_at,
        )
        .where(billing_runs_t.c.project_id == project_id, billing_runs_t.c.status == "completed")
        .where(billing_runs_t.c.finished_at.is_not(None))
        .order_by(billing_runs_t.c.finished_at.desc(), billing_runs_t.c.id.desc())
        .limit(1)
    ).first()
    return None if row is None else LastRun(row.id, row.period, row.started_at, row.finished_at)


def _invoices(conn: Connection, project_id: str) -> list[InvoiceGroup]:
    query = select(
        invoices_t.c.kind, invoices_t.c.status, invoices_t.c.currency, invoices_t.c.total
    ).where(invoices_t.c.project_id == project_id)
    counts: dict[tuple[str, str, str], int] = {}
    totals: dict[tuple[str, str, str], Decimal] = {}
    with conn.execute(query, execution_options={"yield_per": 1000}) as result:
        for kind, status, currency, total in result:
            key = (kind, status, currency)
            counts[key] = counts.get(key, 0) + 1
            totals[key] = totals.get(key, Decimal(0)) + total
    return [InvoiceGroup(*key, counts[key], totals[key]) for key in sorted(counts)]


def _wallets(conn: Connection, project_id: str) -> dict[str, int]:
    query = (
        select(ledger_accounts_t.c.currency, func.sum(ledger_accounts_t.c.balance).label("balance"))
        .where(ledger_accounts_t.c.project_id == project_id, ledger_accounts_t.c.code == WALLET)
        .group_by(ledger_accounts_t.c.currency)
    )
    return {row.currency: -int(row.balance) for row in conn.execute(query)}


def every_project(engine: Engine, *, now: datetime, days: int = DEFAULT_DAYS) -> list[Family]:
    """The families of every project in one exposition, each sample labelled with its
    project (what `GET /metrics` serves): the same reads as `neruba stats`, project by
    project."""
    with Session(engine) as session:
        found = projects.list_projects(session)
    read = [families(collect(engine, project, now=now, days=days)) for project in found]
    return prometheus.merge(family for one in read for family in one)


# --------------------------------------------------------------------------- Prometheus


def families(stats: Stats) -> list[Family]:
    project = ("project", stats.project)
    lag = stats.lag
    lag_samples = [
        Sample((project, ("quantile", q)), value)
        for q, value in (("0.5", lag.p50), ("0.95", lag.p95))
        if value is not None
    ]
    run = stats.last_run
    return [
        Family(
            "neruba_events_total",
            "counter",
            "Usage events stored, all time, by meter.",
            tuple(
                Sample((project, ("meter", meter)), n)
                for meter, n in sorted(stats.events_total.items())
            ),
        ),
        # Gauges, not a summary: the figures are over a moving sample of the newest events,
        # so a summary's _sum and _count would go down and break rate().
        Family(
            "neruba_ingest_lag_seconds",
            "gauge",
            f"received_at - ts of events received in the last {stats.days} days "
            f"(newest {LAG_SAMPLE} at most), by nearest-rank quantile.",
            tuple(lag_samples),
        ),
        Family(
            "neruba_ingest_lag_sample_events",
            "gauge",
            "Events the ingest lag quantiles were taken over.",
            (Sample((project,), lag.count),),
        ),
        Family(
            "neruba_ingest_lag_max_seconds",
            "gauge",
            "Largest ingest lag in the window.",
            () if lag.max is None else (Sample((project,), lag.max),),
        ),
        Family(
            "neruba_last_billing_run_timestamp_seconds",
            "gauge",
            "When the last completed billing run finished (Unix time).",
            ()
            if run is None
            else (Sample((project,), prometheus.timestamp_seconds(run.finished_at)),),
        ),
        Family(
            "neruba_last_billing_run_duration_seconds",
            "gauge",
            "How long the last completed billing run took.",
            () if run is None else (Sample((project,), run.duration),),
        ),
        Family(
            "neruba_invoices",
            "gauge",
            "Invoices, credit notes and supplemental invoices by status and currency.",
            tuple(Sample(_invoice_labels(project, g), g.count) for g in stats.invoices),
        ),
        Family(
            "neruba_invoice_amount",
            "gauge",
            "Sum of invoice totals in major units, per currency (never across currencies).",
            tuple(
                Sample(_invoice_labels(project, g), _money(g.total, g.currency))
                for g in stats.invoices
            ),
        ),
        Family(
            "neruba_wallet_liability",
            "gauge",
            "Credit held in customer wallets (owed to customers), in major units.",
            tuple(
                Sample((project, ("currency", currency)), from_minor_units(units, currency))
                for currency, units in sorted(stats.wallets.items())
            ),
        ),
        Family(
            "neruba_stats_generated_timestamp_seconds",
            "gauge",
            "When these figures were read (Unix time).",
            (Sample((project,), prometheus.timestamp_seconds(stats.generated_at)),),
        ),
    ]


def _invoice_labels(project: tuple[str, str], group: InvoiceGroup) -> tuple[tuple[str, str], ...]:
    return (
        project,
        ("kind", group.kind),
        ("status", group.status),
        ("currency", group.currency),
    )


def _money(amount: Decimal, currency: str) -> Decimal:
    return Decimal(format_amount(amount, currency))


def write_textfile(path: Path, text: str) -> None:
    """Write beside the target, fsync, then rename over it: node_exporter's textfile
    collector (or any reader) sees the old file or the new one, never a half-written one.
    The temporary name ends in `.tmp`, which the collector ignores (it reads `*.prom`); its
    mode is 0666 less the umask (0644 under the usual 022), so a collector running as another
    user can read it. `-` and devices are written in place (`services/output_files.py`)."""
    output_files.write_output(path, text.encode("utf-8"), option="--prometheus")
