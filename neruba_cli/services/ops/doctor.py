"""Health checks: configuration, database reachability, schema version, locks, project, stuck
billing runs and imports, failed webhooks, the Stripe key and the clocks.

This module gathers the facts (queries, lock rows, whether a process is alive, clock
readings); domain/health.py decides what they mean. Checks after `schema` read tables, so
they run only once the schema is at head."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from alembic.script import ScriptDirectory
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from neruba_cli.config import Settings
from neruba_cli.db import locks, migrate
from neruba_cli.db.engine import (
    create_db_engine,
    display_url,
    explain_error,
    product_name,
    redact,
    require_sqlite_file,
)
from neruba_cli.db.schema import (
    Event,
    ImportBatch,
    LedgerTransaction,
    Project,
    StripeLink,
    StripeWebhookEvent,
)
from neruba_cli.db.tables import billing_runs_t, locks_t, projects_t
from neruba_cli.domain import health, lock_names
from neruba_cli.domain.errors import NerubaError
from neruba_cli.domain.health import BatchFacts, Check, RunFacts, Status, UnbilledFacts
from neruba_cli.services.billing.runs import failed_labels, failing_customers
from neruba_cli.services.stripe import gateway as stripe_gateway

__all__ = ["Check", "Report", "Status", "diagnose"]


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    database: str | None = None

    @property
    def healthy(self) -> bool:
        return all(check.status != "fail" for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "database": self.database,
            "checks": [asdict(check) for check in self.checks],
        }


def diagnose(
    load_settings: Callable[[], Settings],
    *,
    now: datetime,
    lock_prefix: str | None = None,
    env: Mapping[str, str] = os.environ,
) -> Report:
    """Run checks in order; a failed check that later ones depend on ends the run.

    `lock_prefix` (`slug:` for an API key) confines every project-specific finding to that
    project, as it does the lock listing."""
    report = Report()
    try:
        settings = load_settings()
    except NerubaError as exc:
        report.checks.append(Check("config", "fail", str(exc)))
        return report
    report.checks.append(Check("config", "ok", _config_detail(settings)))
    try:
        require_sqlite_file(settings.database_url, settings.database_origin)
        engine = create_db_engine(settings.database_url)
    except NerubaError as exc:
        report.checks.append(Check("database", "fail", str(exc)))
        return report
    report.database = redact(engine.url)
    try:
        _check_database(report, engine, settings.database_url)
        if report.healthy:
            _check_schema(report, engine)
        if report.healthy:
            _check_locks(report, engine, now, lock_prefix)
            project_ids = _confined_projects(engine, lock_prefix)
            _check_runs(report, engine, now, project_ids)
            _check_unbilled(report, engine, project_ids)
            _check_imports(report, engine, now, project_ids)
            _check_webhooks(report, engine, now, project_ids)
            _check_stripe(report, engine, env, project_ids)
            _check_clock(report, engine, project_ids)
            _check_project(report, engine, settings)  # last, as before these checks existed
    finally:
        engine.dispose()
    return report


def _config_detail(settings: Settings) -> str:
    where = str(settings.config_path) if settings.config_path else "no config file"
    return f"{where}; database from {settings.sources['database_url']}"


def _check_database(report: Report, engine: Engine, url: str) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            version = ".".join(str(part) for part in engine.dialect.server_version_info or ())
    except SQLAlchemyError as exc:
        report.checks.append(Check("database", "fail", str(explain_error(exc, url))))
        return
    detail = f"{product_name(engine)} {version}".strip() + f" at {display_url(url)}"
    report.checks.append(Check("database", "ok", detail))


def readiness(engine: Engine, url: str, *, head: str) -> list[Check]:
    """The checks `GET /readyz` answers with, the first two of `neruba doctor`: the database
    answers (a SQLite file is still where the URL says) and its schema is at `head`."""
    report = Report()
    try:
        require_sqlite_file(url, "the server's database")
    except NerubaError as exc:
        report.checks.append(Check("database", "fail", str(exc)))
        return report.checks
    _check_database(report, engine, url)
    if report.healthy:
        try:
            _check_schema(report, engine, head)
        except (SQLAlchemyError, NerubaError) as exc:
            report.checks.append(Check("schema", "fail", str(explain_error(exc, url))))
    return report.checks


def _check_schema(report: Report, engine: Engine, head: str | None = None) -> None:
    current = migrate.current_revision(engine)
    head = head or migrate.head_revision()
    if current == head:
        report.checks.append(Check("schema", "ok", f"at head ({head})"))
    else:
        state = "empty" if current is None else f"at {current}"
        pending = _pending_revisions(current)
        listed = f" ({len(pending)} pending: {', '.join(pending)})" if pending else ""
        detail = f"schema is {state}, head is {head}{listed}: run `neruba db upgrade`"
        report.checks.append(Check("schema", "fail", detail))


def _check_locks(report: Report, engine: Engine, now: datetime, prefix: str | None) -> None:
    held = locks.list_held(engine, prefix=prefix)
    stale = [lock.name for lock in held if lock.is_stale(now)]
    if stale:
        detail = f"{len(stale)} stale: {', '.join(stale)} (release with `neruba locks release`)"
        report.checks.append(Check("locks", "warn", detail))
    else:
        report.checks.append(Check("locks", "ok", f"{len(held)} held, none stale"))


def _check_project(report: Report, engine: Engine, settings: Settings) -> None:
    if not settings.project:
        report.checks.append(Check("project", "ok", "no default project configured"))
        return
    with Session(engine) as session:
        exists = session.scalar(select(Project.id).where(Project.slug == settings.project))
    if exists:
        report.checks.append(Check("project", "ok", f"{settings.project} exists"))
    else:
        source = settings.sources.get("project", "config")
        detail = f"project {settings.project!r} (from {source}) does not exist"
        report.checks.append(Check("project", "fail", detail))


def _pending_revisions(current: str | None) -> list[str]:
    """Revisions between the database's and head, oldest first; [] when the database's
    revision is unknown to this code (a newer Neruba migrated it)."""
    script = ScriptDirectory.from_config(migrate.alembic_config())
    try:
        walked = list(script.iterate_revisions("heads", current or "base"))
    except Exception:  # alembic raises several kinds for an unknown revision
        return []
    return [revision.revision for revision in reversed(walked)]


def _confined_projects(engine: Engine, prefix: str | None) -> list[str] | None:
    """Project ids a key may see (None: every project, for the operator)."""
    if prefix is None:
        return None
    with engine.connect() as conn:
        slug = lock_names.parse_prefix(prefix)
        found = conn.scalar(select(Project.id).where(Project.slug == slug))
    return [found] if found is not None else []


def _confine(query: Any, column: Any, project_ids: list[str] | None) -> Any:
    return query if project_ids is None else query.where(column.in_(project_ids))


def _check_runs(
    report: Report, engine: Engine, now: datetime, project_ids: list[str] | None
) -> None:
    query = (
        select(
            billing_runs_t.c.id,
            billing_runs_t.c.period,
            billing_runs_t.c.holder,
            billing_runs_t.c.lock_token,
            projects_t.c.slug,
        )
        .join(projects_t, projects_t.c.id == billing_runs_t.c.project_id)
        .where(billing_runs_t.c.status == "running")
        .order_by(billing_runs_t.c.started_at)
    )
    with engine.connect() as conn:
        rows = conn.execute(_confine(query, billing_runs_t.c.project_id, project_ids)).all()
        names = sorted({lock_names.billing(row.slug, row.period) for row in rows})
        held = {
            lock.name: lock
            for lock in conn.execute(select(locks_t).where(locks_t.c.name.in_(names))).all()
        }
    facts = []
    for row in rows:
        name = lock_names.billing(row.slug, row.period)
        lock = held.get(name)
        facts.append(
            RunFacts(
                id=row.id,
                period=row.period,
                holder=row.holder,
                lock_token=int(row.lock_token),
                lock_name=name,
                lock_holder=lock.holder if lock is not None else None,
                lock_token_now=int(lock.token) if lock is not None else None,
                lock_expires_at=_aware(lock.expires_at) if lock is not None else None,
                holder_alive=locks.holder_alive(row.holder),
            )
        )
    report.checks.append(health.runs_check(facts, now))


def _check_unbilled(report: Report, engine: Engine, project_ids: list[str] | None) -> None:
    """The customers the latest run of each month could not bill (recorded in the runs)."""
    found: list[UnbilledFacts] = []
    query = select(projects_t.c.id, projects_t.c.slug).order_by(projects_t.c.slug)
    with engine.connect() as conn:
        for project_id, slug in conn.execute(_confine(query, projects_t.c.id, project_ids)):
            for label in failed_labels(conn, project_id):
                for failure in failing_customers(conn, project_id, label):
                    keys = tuple(event["idempotency_key"] for event in failure["events"])
                    found.append(
                        UnbilledFacts(slug, label, failure["customer"], failure["reason"], keys)
                    )
    report.checks.append(health.unbilled_check(found))


def _aware(moment: datetime | None) -> datetime | None:
    """Core selects of raw lock rows come back typed already; keep them aware in UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _check_imports(
    report: Report, engine: Engine, now: datetime, project_ids: list[str] | None
) -> None:
    query = (
        select(ImportBatch.id, ImportBatch.source, ImportBatch.started_at)
        .where(ImportBatch.status == "running")
        .order_by(ImportBatch.started_at)
    )
    with engine.connect() as conn:
        rows = conn.execute(_confine(query, ImportBatch.project_id, project_ids)).all()
    batches = [BatchFacts(row.id, row.source, row.started_at) for row in rows]
    report.checks.append(health.imports_check(batches, now))


def _check_webhooks(
    report: Report, engine: Engine, now: datetime, project_ids: list[str] | None
) -> None:
    query = select(func.count(), func.min(StripeWebhookEvent.received_at)).where(
        StripeWebhookEvent.status == "failed"
    )
    with engine.connect() as conn:
        count, oldest = conn.execute(
            _confine(query, StripeWebhookEvent.project_id, project_ids)
        ).one()
    report.checks.append(health.webhooks_check(int(count), _aware(oldest), now))


def _check_stripe(
    report: Report, engine: Engine, env: Mapping[str, str], project_ids: list[str] | None
) -> None:
    key = stripe_gateway.key_status(env)
    pushed = 0
    if not key.present:
        query = select(func.count()).where(StripeLink.stripe_id.is_not(None))
        with engine.connect() as conn:
            pushed = int(conn.scalar(_confine(query, StripeLink.project_id, project_ids)) or 0)
    report.checks.append(
        health.stripe_check(key.present, key.well_formed, key.mode, key.problem, pushed)
    )


def _check_clock(report: Report, engine: Engine, project_ids: list[str] | None) -> None:
    with engine.connect() as conn:
        newest, what = _newest_stored(conn, project_ids)
        server = None
        if engine.dialect.name != "sqlite":
            before = datetime.now(UTC)
            server = _server_utc(conn)
            after = datetime.now(UTC)
    local = datetime.now(UTC) if server is None else before + (after - before) / 2
    report.checks.append(health.clock_check(local, server, newest, newest_what=what))


def _server_utc(conn: Any) -> datetime:
    """The database server's clock in UTC. CURRENT_TIMESTAMP is in the session's time zone
    on MariaDB, and PostgreSQL's now() is the transaction's start: ask each for UTC, now."""
    if conn.dialect.name == "postgresql":
        sql = "SELECT clock_timestamp() AT TIME ZONE 'UTC'"
    else:
        sql = "SELECT UTC_TIMESTAMP(6)"
    value: datetime = conn.execute(text(sql)).scalar_one()
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _newest_stored(conn: Any, project_ids: list[str] | None) -> tuple[datetime | None, str]:
    """The newest event receipt and ledger transaction. Ids grow with insertion (events:
    autoincrement; ledger: time-ordered ids), so the last row by primary key is the newest
    without scanning a table that has no index on the timestamp."""
    found: list[tuple[datetime, str]] = []
    event = _confine(
        select(Event.received_at).order_by(Event.id.desc()).limit(1), Event.project_id, project_ids
    )
    ledger = _confine(
        select(LedgerTransaction.created_at).order_by(LedgerTransaction.id.desc()).limit(1),
        LedgerTransaction.project_id,
        project_ids,
    )
    for query, what in ((event, "event received_at"), (ledger, "ledger transaction created_at")):
        value = conn.execute(query).scalar()
        if value is not None:
            found.append((_aware(value) or value, what))
    if not found:
        return None, "stored record"
    return max(found)
