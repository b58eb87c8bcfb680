"""The stored catalog: apply a validated catalog, read it back, export it.

Applying is additive and idempotent: meters and plans in the file are created or changed,
nothing is deleted, and applying the same file twice changes nothing. A plan version freezes
the plan and the meters it reads; any change to either makes a new version, and subscriptions
keep the version they were created on until they are changed.

A meter added or changed to read a property (`field = "properties.tokens"`) is checked against
the events already stored for its code, with ingest's rule (domain/meter_values.py): events
stored before the meter existed, or under another field, were never checked for that value.
When some hold a value billing cannot read exactly (a 40-digit number, `1e308`, `"abc"` on a
sum meter), the apply is refused — nothing changes — with their count and the first of them
(idempotency key and customer), unless `allow_unreadable` is given: then the catalog is
applied and the report carries the same finding as a warning, for billing reports those
events' customers as ones it could not bill. Either way no event is changed or dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import Meter, Plan, PlanVersion, Project
from neruba_cli.db.tables import customers_t, events_t
from neruba_cli.db.usage_sql import CURRENT
from neruba_cli.domain.catalog import (
    Catalog,
    MeterDef,
    PlanDef,
    canonical_json,
    fingerprint,
    load_version,
    meter_document,
    parse_catalog,
    version_document,
)
from neruba_cli.domain.errors import InvalidInput, NotFound
from neruba_cli.domain.events import Rejected
from neruba_cli.domain.meter_values import check_meter_value, reads_value
from neruba_cli.domain.suggest import did_you_mean


@dataclass
class ApplyReport:
    meters: dict[str, str] = field(default_factory=dict)  # code -> created|updated|unchanged
    plans: dict[str, str] = field(default_factory=dict)  # code -> created|new version|unchanged
    versions: dict[str, int] = field(default_factory=dict)  # code -> current version
    warnings: list[str] = field(default_factory=list)  # stored events a meter cannot read

    @property
    def changed(self) -> bool:
        outcomes = [*self.meters.values(), *self.plans.values()]
        return any(outcome != "unchanged" for outcome in outcomes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "meters": [{"code": c, "outcome": o} for c, o in self.meters.items()],
            "plans": [
                {"code": c, "outcome": o, "version": self.versions[c]}
                for c, o in self.plans.items()
            ],
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class StoredPlan:
    plan: PlanDef
    meters: dict[str, MeterDef]
    version: int
    version_id: str
    fingerprint: str


def stored_meters(session: Session, project: Project) -> dict[str, MeterDef]:
    rows = session.scalars(select(Meter).where(Meter.project_id == project.id))
    documents = [orjson.loads(row.definition) for row in rows]
    if not documents:
        return {}
    parsed = parse_catalog({"meters": documents}, source="stored meters")
    return {meter.code: meter for meter in parsed.meters}


def parse_for_project(
    session: Session,
    project: Project,
    data: Mapping[str, Any],
    *,
    source: str,
    text: str | None = None,
) -> Catalog:
    """Validate a catalog file against this project's stored meters (`text`: the TOML it was
    read from, so that problems name their lines)."""
    known = stored_meters(session, project)
    return parse_catalog(data, source=source, known_meters=known, text=text)


def apply_catalog(
    session: Session,
    project: Project,
    catalog: Catalog,
    *,
    now: datetime,
    dry_run: bool = False,
    allow_unreadable: bool = False,
) -> ApplyReport:
    report = ApplyReport()
    meter_rows = {
        row.code: row
        for row in session.scalars(select(Meter).where(Meter.project_id == project.id))
    }
    for meter in catalog.meters:
        document = canonical_json(meter_document(meter)).decode()
        row = meter_rows.get(meter.code)
        if row is None:
            report.meters[meter.code] = "created"
            if not dry_run:
                session.add(
                    Meter(
                        id=new_id("mtr"),
                        project_id=project.id,
                        code=meter.code,
                        definition=document,
                        created_at=now,
                        updated_at=now,
                    )
                )
        elif row.definition != document:
            report.meters[meter.code] = "updated"
            if not dry_run:
                row.definition = document
                row.updated_at = now
        else:
            report.meters[meter.code] = "unchanged"
    _check_stored_values(session, project, catalog, report, allow_unreadable)
    meters = {**stored_meters(session, project), **{m.code: m for m in catalog.meters}}
    _apply_plans(session, project, catalog, meters, report, now, dry_run)
    if not dry_run:
        session.flush()
    return report


SHOWN_EVENTS = 5  # stored events a finding names; its count is always exact


@dataclass
class _Unreadable:
    count: int = 0
    shown: list[str] = field(default_factory=list)
    reason: str = ""


def _check_stored_values(
    session: Session,
    project: Project,
    catalog: Catalog,
    report: ApplyReport,
    allow_unreadable: bool,
) -> None:
    """Refuse (InvalidInput) a new or changed meter whose property stored events hold a value
    billing cannot read; with `allow_unreadable`, a warning in the report instead."""
    findings: list[str] = []
    for meter in catalog.meters:
        if report.meters.get(meter.code) == "unchanged" or not reads_value(meter.spec):
            continue
        found = _unreadable_events(session, project, meter)
        if found.count:
            plural = ("s", "hold") if found.count != 1 else ("", "holds")
            findings.append(
                f"meter {meter.code}: {found.count} stored event{plural[0]} {plural[1]} a "
                f"{meter.spec.field} billing cannot read ({', '.join(found.shown)}"
                f"{', ...' if found.count > len(found.shown) else ''}; first: {found.reason})"
            )
    if not findings:
        return
    if allow_unreadable:
        report.warnings += findings
        return
    raise InvalidInput(
        "; ".join(findings) + ". Nothing was applied",
        hint="--allow-unreadable-events applies it anyway, and billing reports those "
        "events' customers as not billed; no event is changed either way",
    )


def _unreadable_events(session: Session, project: Project, meter: MeterDef) -> _Unreadable:
    """Stored events of the meter's code whose property fails meter_values' check; only the
    events that mention the property's name are read, in a stream."""
    name = meter.spec.property_name
    assert name is not None
    query = (
        select(events_t.c.idempotency_key, customers_t.c.external_id, events_t.c.properties)
        .join(customers_t, customers_t.c.id == events_t.c.customer_id)
        .where(events_t.c.project_id == project.id, events_t.c.meter == meter.code, CURRENT)
        .where(events_t.c.properties.contains(f'"{name}"', autoescape=True))
        .order_by(events_t.c.id)
        .execution_options(yield_per=5000)
    )
    found = _Unreadable()
    with session.connection().execute(query) as rows:
        for key, customer, properties in rows:
            try:
                check_meter_value(meter.spec, orjson.loads(properties))
            except Rejected as exc:
                found.count += 1
                if len(found.shown) < SHOWN_EVENTS:
                    found.shown.append(f"{key} of {customer}")
                found.reason = found.reason or str(exc)
            except orjson.JSONDecodeError:
                continue
    return found


def _apply_plans(
    session: Session,
    project: Project,
    catalog: Catalog,
    meters: dict[str, MeterDef],
    report: ApplyReport,
    now: datetime,
    dry_run: bool,
) -> None:
    """New plans get version 1; a plan whose definition or meters changed gets a new version.

    Plans not in the file are re-versioned too when a meter they read has changed, so a
    version always names the exact meter definitions it bills with.
    """
    in_file = {plan.code: plan for plan in catalog.plans}
    current = {stored.plan.code: stored for stored in current_plans(session, project)}
    plan_rows = {
        row.code: row for row in session.scalars(select(Plan).where(Plan.project_id == project.id))
    }
    for code in [*in_file, *(code for code in current if code not in in_file)]:
        plan = in_file.get(code) or current[code].plan
        document = version_document(plan, meters)
        digest = fingerprint(document)
        stored = current.get(code)
        if stored is not None and stored.fingerprint == digest:
            if code in in_file:
                report.plans[code] = "unchanged"
                report.versions[code] = stored.version
            continue
        version = 1 if stored is None else stored.version + 1
        report.plans[code] = "created" if stored is None else "new version"
        report.versions[code] = version
        if dry_run:
            continue
        row = plan_rows.get(code)
        if row is None:
            row = Plan(
                id=new_id("pln"),
                project_id=project.id,
                code=code,
                current_version=0,
                created_at=now,
            )
            session.add(row)
            session.flush()
        row.current_version = version
        session.add(
            PlanVersion(
                id=new_id("plv"),
                plan_id=row.id,
                version=version,
                definition=canonical_json(document).decode(),
                fingerprint=digest,
                created_at=now,
            )
        )


def current_plans(session: Session, project: Project) -> list[StoredPlan]:
    rows = session.execute(
        select(Plan, PlanVersion)
        .join(PlanVersion, PlanVersion.plan_id == Plan.id)
        .where(Plan.project_id == project.id)
        .where(PlanVersion.version == Plan.current_version)
        .order_by(Plan.code)
    ).all()
    return [_stored(plan_version) for _plan, plan_version in rows]


def _stored(row: PlanVersion) -> StoredPlan:
    plan, meters = load_version(orjson.loads(row.definition))
    return StoredPlan(plan, meters, row.version, row.id, row.fingerprint)


def get_plan(
    session: Session, project: Project, code: str, version: int | None = None
) -> StoredPlan:
    """A plan's current version, or a given one (`pro@2` on the command line)."""
    plan = session.scalar(select(Plan).where(Plan.project_id == project.id, Plan.code == code))
    if plan is None:
        codes = session.scalars(select(Plan.code).where(Plan.project_id == project.id))
        near = did_you_mean(code, codes)
        raise NotFound(
            f"plan {code!r} does not exist in project {project.slug!r}"
            + (f" — {near}" if near else ""),
            hint="`neruba catalog show` lists the plans",
        )
    wanted = plan.current_version if version is None else version
    row = session.scalar(
        select(PlanVersion).where(PlanVersion.plan_id == plan.id, PlanVersion.version == wanted)
    )
    if row is None:
        raise NotFound(f"plan {code!r} has no version {wanted} (current: {plan.current_version})")
    return _stored(row)


def get_plan_version(session: Session, version_id: str) -> StoredPlan:
    return _stored(session.get_one(PlanVersion, version_id))


def parse_plan_ref(text: str, *, field: str = "plan") -> tuple[str, int | None]:
    """`pro` or `pro@2`."""
    code, _, version = text.partition("@")
    if version and not re.fullmatch(r"[0-9]{1,9}", version):
        raise InvalidInput(f"{field} {text!r}: write a version as PLAN@N, e.g. pro@2")
    return code, int(version) if version else None


def export_document(session: Session, project: Project) -> dict[str, Any]:
    """The current catalog as a TOML-ready document; applying it back changes nothing."""
    meters = sorted(stored_meters(session, project).values(), key=lambda meter: meter.code)
    plans = current_plans(session, project)
    document: dict[str, Any] = {"meters": [meter_document(meter) for meter in meters]}
    document["plans"] = [version_document(p.plan, p.meters)["plan"] for p in plans]
    return document


def toml_ready(document: dict[str, Any]) -> dict[str, Any]:
    """TOML spells the last tier's bound as the bare `inf` (JSON keeps the string "inf")."""
    for plan in document["plans"]:
        _toml_plan(plan)
    return document


def _toml_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """TOML spells the last tier's bound as the bare `inf`."""
    for charge in plan["charges"]:
        for priced in [charge, *charge.get("groups", [])]:
            for tier in priced.get("tiers", []):
                if tier["up_to"] == "inf":
                    tier["up_to"] = float("inf")
    return plan
