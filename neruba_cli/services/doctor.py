"""Health checks: configuration, database reachability, schema version, locks, project."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Engine, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from neruba_cli.config import Settings
from neruba_cli.db import locks, migrate
from neruba_cli.db.engine import create_db_engine, explain_error, redact, sqlite_file
from neruba_cli.db.schema import Project
from neruba_cli.domain.errors import DatabaseError, NerubaError

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


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
    load_settings: Callable[[], Settings], *, now: datetime, lock_prefix: str | None = None
) -> Report:
    """Run checks in order; a failed check that later ones depend on ends the run."""
    report = Report()
    try:
        settings = load_settings()
    except NerubaError as exc:
        report.checks.append(Check("config", "fail", str(exc)))
        return report
    report.checks.append(Check("config", "ok", _config_detail(settings)))
    try:
        missing = sqlite_file(settings.database_url)
        if missing is not None and not missing.exists():
            raise DatabaseError(f"SQLite database {missing} does not exist: run `neruba init`")
        engine = create_db_engine(settings.database_url)
    except NerubaError as exc:
        report.checks.append(Check("database", "fail", str(exc)))
        return report
    report.database = redact(engine.url)
    try:
        _check_database(report, engine)
        if report.healthy:
            _check_schema(report, engine)
        if report.healthy:
            _check_locks(report, engine, now, lock_prefix)
            _check_project(report, engine, settings)
    finally:
        engine.dispose()
    return report


def _config_detail(settings: Settings) -> str:
    where = str(settings.config_path) if settings.config_path else "no config file"
    return f"{where}; database from {settings.sources['database_url']}"


def _check_database(report: Report, engine: Engine) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            version = ".".join(str(part) for part in engine.dialect.server_version_info or ())
    except SQLAlchemyError as exc:
        report.checks.append(Check("database", "fail", str(explain_error(exc, str(engine.url)))))
        return
    report.checks.append(
        Check("database", "ok", f"{engine.dialect.name} {version} at {redact(engine.url)}".strip())
    )


def _check_schema(report: Report, engine: Engine) -> None:
    current = migrate.current_revision(engine)
    head = migrate.head_revision()
    if current == head:
        report.checks.append(Check("schema", "ok", f"at head ({head})"))
    else:
        state = "empty" if current is None else f"at {current}"
        detail = f"schema is {state}, head is {head}: run `neruba db upgrade`"
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
