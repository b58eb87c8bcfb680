"""Customers: create one, import many from CSV, find, list."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select
from sqlalchemy.orm import Session

from neruba_cli.db.schema import Customer, Project
from neruba_cli.db.unique import add_unique
from neruba_cli.domain.errors import InvalidInput, NotFound
from neruba_cli.domain.ids import new_id
from neruba_cli.domain.tenancy import CustomerSpec, customer_spec
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.projects import spec_of
from neruba_cli.services.rejects import Reject, RejectsWriter
from neruba_cli.services.tabular import CsvRow

CSV_COLUMNS = ("external_id", "name", "email", "currency", "timezone", "stripe_id")
CSV_REQUIRED = ("external_id",)
IMPORT_BATCH = 500
REPORTED_REJECTS = 100  # all go to the rejects file; this many are also kept for display
_FIELDS = ("name", "email", "currency", "timezone", "stripe_id")


@dataclass
class ImportReport:
    lines: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejects: list[Reject] = field(default_factory=list)

    def reject(self, item: Reject, writer: RejectsWriter) -> None:
        self.rejected += 1
        writer.write(item)
        if len(self.rejects) < REPORTED_REJECTS:
            self.rejects.append(item)


def create_customer(
    session: Session, project: Project, spec: CustomerSpec, *, now: datetime
) -> Customer:
    customer = _new_customer(project, spec, now)
    conflict = f"customer {spec.external_id!r} already exists in project {project.slug!r}"
    add_unique(session, customer, conflict)
    return customer


def _new_customer(project: Project, spec: CustomerSpec, now: datetime) -> Customer:
    return Customer(
        id=new_id("cus"),
        project_id=project.id,
        external_id=spec.external_id,
        name=spec.name,
        email=spec.email,
        currency=spec.currency,
        timezone=spec.timezone,
        stripe_id=spec.stripe_id,
        created_at=now,
        updated_at=now,
    )


def import_customers(
    session: Session,
    project: Project,
    rows: Iterable[CsvRow | Reject],
    *,
    now: datetime,
    rejects: RejectsWriter,
    on_progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Upsert customers by external id: new ones are created, changed ones updated.

    Bad rows (and a second row for an external id already in the file) become rejects and the
    good rows are kept. The caller owns the transaction: the whole file is one unit of work.
    """
    report = ImportReport()
    defaults = spec_of(project)
    seen: dict[str, int] = {}
    batch: list[tuple[int, CustomerSpec]] = []
    for item in rows:
        report.lines += 1
        if isinstance(item, Reject):
            report.reject(item, rejects)
        else:
            try:
                spec = customer_spec(**_csv_fields(item.values), defaults=defaults)
            except InvalidInput as exc:
                report.reject(Reject(item.line, str(exc), item.raw), rejects)
            else:
                first = seen.setdefault(spec.external_id, item.line)
                if first != item.line:
                    reason = f"external_id {spec.external_id!r} already appears on line {first}"
                    report.reject(Reject(item.line, reason, item.raw), rejects)
                else:
                    batch.append((item.line, spec))
        if len(batch) >= IMPORT_BATCH:
            _apply_batch(session, project, batch, report, now)
            batch.clear()
        if on_progress is not None:
            on_progress(report.lines)
    if batch:
        _apply_batch(session, project, batch, report, now)
    return report


def _csv_fields(values: dict[str, str]) -> dict[str, str | None]:
    return {name: values.get(name) for name in CSV_COLUMNS}


def _apply_batch(
    session: Session,
    project: Project,
    batch: list[tuple[int, CustomerSpec]],
    report: ImportReport,
    now: datetime,
) -> None:
    ids = [spec.external_id for _, spec in batch]
    existing = {
        customer.external_id: customer
        for customer in session.scalars(
            select(Customer)
            .where(Customer.project_id == project.id)
            .where(Customer.external_id.in_(ids))
        )
    }
    new_rows: list[dict[str, Any]] = []
    for _, spec in batch:
        current = existing.get(spec.external_id)
        if current is None:
            new_rows.append(_row_values(_new_customer(project, spec, now)))
        elif _apply_changes(current, spec, now):
            report.updated += 1
        else:
            report.unchanged += 1
    if new_rows:
        session.execute(insert(Customer), new_rows)
        report.created += len(new_rows)
    session.flush()


def _row_values(customer: Customer) -> dict[str, Any]:
    return {column.name: getattr(customer, column.name) for column in Customer.__table__.columns}


def _apply_changes(customer: Customer, spec: CustomerSpec, now: datetime) -> bool:
    changed = False
    for name in _FIELDS:
        value = getattr(spec, name)
        if getattr(customer, name) != value:
            setattr(customer, name, value)
            changed = True
    if changed:
        customer.updated_at = now
    return changed


def get_customer(session: Session, project: Project, ident: str) -> Customer:
    """Find by external id or by Neruba id (`cus_...`); both are unique within a project."""
    customer = session.scalar(
        select(Customer)
        .where(Customer.project_id == project.id)
        .where(or_(Customer.external_id == ident, Customer.id == ident))
        .limit(1)
    )
    if customer is None:
        raise NotFound(f"customer {ident!r} does not exist in project {project.slug!r}")
    return customer


def list_customers(session: Session, project: Project) -> list[Customer]:
    return list(
        session.scalars(
            select(Customer).where(Customer.project_id == project.id).order_by(Customer.external_id)
        )
    )


def to_dict(customer: Customer) -> dict[str, Any]:
    return {
        "id": customer.id,
        "external_id": customer.external_id,
        "name": customer.name,
        "email": customer.email,
        "currency": customer.currency,
        "timezone": customer.timezone,
        "stripe_id": customer.stripe_id,
        "created_at": format_ts(customer.created_at),
        "updated_at": format_ts(customer.updated_at),
    }
