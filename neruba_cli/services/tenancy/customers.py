"""Customers: create one, import many from CSV, find, list."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import Customer, Project
from neruba_cli.db.tables import customers_t
from neruba_cli.db.unique import add_unique
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.tenancy import CustomerSpec, ProjectSpec, customer_spec
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.ingest.rejects import Reject, RejectsWriter, keep
from neruba_cli.services.ingest.tabular import CsvRow
from neruba_cli.services.tenancy.customer_hints import customer_not_found
from neruba_cli.services.tenancy.projects import spec_of

CSV_COLUMNS = ("external_id", "name", "email", "currency", "timezone", "stripe_id")
CSV_REQUIRED = ("external_id",)
IMPORT_BATCH = 500
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
        keep(self.rejects, item, writer)


def create(
    session: Session,
    project: Project,
    *,
    external_id: str,
    name: str | None = None,
    email: str | None = None,
    currency: str | None = None,
    timezone: str | None = None,
    stripe_id: str | None = None,
    now: datetime,
) -> Customer:
    """`customer create` and `POST /v1/customers`: validate the fields (blank optional ones
    take the project's defaults) and create the customer; AlreadyExists when its external id
    is taken in the project."""
    spec = customer_spec(
        external_id=external_id,
        name=name,
        email=email,
        currency=currency,
        timezone=timezone,
        stripe_id=stripe_id,
        defaults=spec_of(project),
    )
    return create_customer(session, project, spec, now=now)


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


@dataclass(frozen=True)
class _Candidate:
    """A valid row waiting for its batch: the spec and which fields the row actually set."""

    line: int
    raw: str
    spec: CustomerSpec
    provided: frozenset[str]


def import_customers(
    session: Session,
    project: Project,
    rows: Iterable[CsvRow | Reject],
    *,
    now: datetime,
    rejects: RejectsWriter,
    on_progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Upsert customers by external id: new ones are created, existing ones updated.

    An update changes only the fields the row sets (a missing column or a blank cell keeps
    the stored value), so a partial file never erases data. Bad rows (and a second row for an
    external id already in the file) become rejects and the good rows are kept. The caller
    owns the transaction: the whole file is one unit of work.
    """
    report = ImportReport()
    defaults = spec_of(project)
    seen: dict[str, int] = {}
    batch: list[_Candidate] = []
    for item in rows:
        report.lines += 1
        candidate = _validate(item, defaults, seen, report, rejects)
        if candidate is not None:
            batch.append(candidate)
        if len(batch) >= IMPORT_BATCH:
            _apply_batch(session, project, batch, report, rejects, now)
            batch.clear()
        if on_progress is not None:
            on_progress(report.lines)
    if batch:
        _apply_batch(session, project, batch, report, rejects, now)
    return report


def _validate(
    item: CsvRow | Reject,
    defaults: ProjectSpec,
    seen: dict[str, int],
    report: ImportReport,
    rejects: RejectsWriter,
) -> _Candidate | None:
    if isinstance(item, Reject):
        report.reject(item, rejects)
        return None
    values = item.values
    try:
        spec = customer_spec(
            external_id=values.get("external_id", ""),
            name=values.get("name"),
            email=values.get("email"),
            currency=values.get("currency"),
            timezone=values.get("timezone"),
            stripe_id=values.get("stripe_id"),
            defaults=defaults,
        )
    except InvalidInput as exc:
        report.reject(Reject(item.line, str(exc), item.raw), rejects)
        return None
    first = seen.setdefault(spec.external_id, item.line)
    if first != item.line:
        reason = f"external_id {spec.external_id!r} already appears on line {first}"
        report.reject(Reject(item.line, reason, item.raw), rejects)
        return None
    provided = frozenset(name for name in _FIELDS if values.get(name, "").strip())
    return _Candidate(item.line, item.raw, spec, provided)


def _apply_batch(
    session: Session,
    project: Project,
    batch: list[_Candidate],
    report: ImportReport,
    rejects: RejectsWriter,
    now: datetime,
) -> None:
    """Write the batch in a savepoint; if the database refuses it, retry row by row so
    only the offending rows are rejected."""
    try:
        with session.begin_nested():
            counts = _write(session, project, batch, now)
    except DBAPIError:
        counts = Counter()
        for candidate in batch:
            try:
                with session.begin_nested():
                    counts += _write(session, project, [candidate], now)
            except DBAPIError as exc:
                reason = f"the database refused the row: {_first_line(exc)}"
                report.reject(Reject(candidate.line, reason, candidate.raw), rejects)
    report.created += counts["created"]
    report.updated += counts["updated"]
    report.unchanged += counts["unchanged"]


def _first_line(exc: DBAPIError) -> str:
    text = str(exc.orig).strip()
    return text.splitlines()[0] if text else type(exc.orig).__name__


def _write(
    session: Session, project: Project, batch: list[_Candidate], now: datetime
) -> Counter[str]:
    ids = [candidate.spec.external_id for candidate in batch]
    existing = {
        customer.external_id: customer
        for customer in session.scalars(
            select(Customer)
            .where(Customer.project_id == project.id)
            .where(Customer.external_id.in_(ids))
        )
    }
    counts: Counter[str] = Counter()
    new_rows: list[dict[str, Any]] = []
    for candidate in batch:
        current = existing.get(candidate.spec.external_id)
        if current is None:
            new_rows.append(_row_values(_new_customer(project, candidate.spec, now)))
        elif _apply_changes(current, candidate, now):
            counts["updated"] += 1
        else:
            counts["unchanged"] += 1
    if new_rows:
        session.execute(insert(Customer), new_rows)
        counts["created"] += len(new_rows)
    session.flush()
    return counts


def _row_values(customer: Customer) -> dict[str, Any]:
    return {column.name: getattr(customer, column.name) for column in customers_t.columns}


def _apply_changes(customer: Customer, candidate: _Candidate, now: datetime) -> bool:
    changed = False
    for name in candidate.provided:
        value = getattr(candidate.spec, name)
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
        raise customer_not_found(session, project, ident)
    return customer


def list_customers(
    session: Session, project: Project, *, after: str | None = None, limit: int | None = None
) -> list[Customer]:
    """The project's customers by external id (unique in a project): with `after`, those
    that sort after it, so a reader walking pages neither repeats nor skips a customer."""
    query = select(Customer).where(Customer.project_id == project.id)
    if after is not None:
        query = query.where(Customer.external_id > after)
    return list(session.scalars(query.order_by(Customer.external_id).limit(limit)))


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
        "forgotten_at": format_ts(customer.forgotten_at),
        "forgotten_by": customer.forgotten_by,
    }
