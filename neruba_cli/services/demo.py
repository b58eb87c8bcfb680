"""`neruba demo`: the product's main loop on a throwaway SQLite database.

It drives the same services the commands use, so what it shows is what operators get.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from neruba_cli.db import migrate
from neruba_cli.db.engine import create_db_engine
from neruba_cli.domain.periods import month_period
from neruba_cli.domain.quote import Quote, quote_document, quote_plan
from neruba_cli.domain.tenancy import project_spec
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services import (
    access,
    audit,
    catalog,
    customers,
    keys,
    projects,
    quote,
    subscriptions,
)
from neruba_cli.services.access import Access, Actor
from neruba_cli.services.customers import ImportReport
from neruba_cli.services.rejects import RejectsWriter
from neruba_cli.services.tabular import read_csv

DEMO_DATABASE = "neruba-demo.db"
DEMO_PROJECT = "demo"


@dataclass
class DemoResult:
    folder: Path
    database_url: str
    project: dict[str, Any]
    customers: list[dict[str, Any]]
    customer_import: ImportReport
    steps: list[str] = field(default_factory=list)
    quote: Quote | None = None

    def as_dict(self) -> dict[str, Any]:
        report = self.customer_import
        return {
            "folder": str(self.folder),
            "database": self.database_url,
            "project": self.project,
            "customers": self.customers,
            "customer_import": {
                "lines": report.lines,
                "created": report.created,
                "updated": report.updated,
                "unchanged": report.unchanged,
                "rejected": report.rejected,
                "rejects": [reject.as_dict() for reject in report.rejects],
            },
            "steps": self.steps,
            "quote": None if self.quote is None else quote_document(self.quote),
        }


def run_demo(folder: Path, *, actor: Actor, now: datetime) -> DemoResult:
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / DEMO_DATABASE
    for leftover in (database, *database.parent.glob(DEMO_DATABASE + "-*")):
        leftover.unlink(missing_ok=True)  # the demo owns this file: start clean every time
    url = f"sqlite:///{database}"
    engine = create_db_engine(url)
    steps: list[str] = []
    try:
        migrate.upgrade(engine)
        steps.append(f"created {database} and migrated it to {migrate.head_revision()}")
        with Session(engine, expire_on_commit=False) as session, session.begin():
            spec = project_spec(DEMO_PROJECT, "Demo Cloud Co", "USD", "UTC", "half_even")
            project = projects.create_project(session, spec, now=now)
        steps.append(f"created project {project.slug} ({project.id})")
        report = _import_demo_customers(engine, project.slug, now)
        steps.append(
            f"imported customers: {report.created} created, {report.rejected} rejected "
            "(the bad row is there on purpose: rejects keep their line number and reason)"
        )
        steps.append(_demo_key(engine, actor, now))
        steps.extend(_demo_catalog(engine, now))
        demo_quote = _demo_quote(engine)
        for command, arguments, code in (
            ("project create", {"slug": DEMO_PROJECT}, 0),
            ("customer import", {"file": "demo_customers.csv"}, 3 if report.rejected else 0),
        ):
            audit.record(
                engine,
                actor=actor,
                project_slug=DEMO_PROJECT,
                command=command,
                arguments=arguments,
                outcome=audit.Outcome(code),
                now=now,
            )
        with Session(engine) as session:
            listed = customers.list_customers(session, projects.get_project(session, DEMO_PROJECT))
            rows = [customers.to_dict(customer) for customer in listed]
        return DemoResult(
            folder=folder,
            database_url=url,
            project=projects.to_dict(project),
            customers=rows,
            customer_import=report,
            steps=steps,
            quote=demo_quote,
        )
    finally:
        engine.dispose()


def _demo_key(engine: Any, actor: Actor, now: datetime) -> str:
    """An ingest-only key, and the tenant check refusing it a customer listing."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        project = projects.get_project(session, DEMO_PROJECT)
        created = keys.create_key(
            session,
            project,
            scopes=frozenset({"ingest"}),
            name="demo loader",
            expires_at=None,
            member_email=None,
            creator=Access(actor=actor),
            now=now,
        )
    with Session(engine) as session, session.begin():
        grant = access.authenticate(session, created.secret, now=now)
    try:
        access.authorize(grant, scope="read", command="customer list")
    except access.AccessDenied as refused:
        return f"created ingest-only key {created.key.prefix}…; `customer list` with it: {refused}"
    raise AssertionError("an ingest-only key must not list customers")


DEMO_USAGE = ("api_calls=12000", "tokens=1334567", "seats=12", "storage_gb=35")


def _demo_catalog(engine: Any, now: datetime) -> list[str]:
    """Apply the example catalog and subscribe a customer to `pro`."""
    source = files("neruba_cli.resources").joinpath("demo_catalog.toml")
    data = tomllib.loads(source.read_text(encoding="utf-8"))
    with Session(engine, expire_on_commit=False) as session, session.begin():
        project = projects.get_project(session, DEMO_PROJECT)
        parsed = catalog.parse_for_project(session, project, data, source="demo_catalog.toml")
        report = catalog.apply_catalog(session, project, parsed, now=now)
        start = month_period(now.strftime("%Y-%m"), "UTC").start
        subscription = subscriptions.create_subscription(
            session, project, "cus_acme", "pro", start=start, trial_days=0, now=now
        )
    return [
        f"applied the example catalog: {len(report.meters)} meters, {len(report.plans)} plans",
        f"subscribed cus_acme to pro ({subscription.id}) from {format_ts(start)}",
    ]


def _demo_quote(engine: Any) -> Quote:
    with Session(engine) as session:
        stored = catalog.get_plan(session, projects.get_project(session, DEMO_PROJECT), "pro")
    usage = quote.usage_from_pairs(DEMO_USAGE, stored.plan)
    return quote_plan(stored.plan, usage)


def _import_demo_customers(engine: Any, slug: str, now: datetime) -> ImportReport:
    source = files("neruba_cli.resources").joinpath("demo_customers.csv")
    with as_file(source) as path, Session(engine) as session, session.begin():
        project = projects.get_project(session, slug)
        rows = read_csv(path, columns=customers.CSV_COLUMNS, required=customers.CSV_REQUIRED)
        with RejectsWriter(None) as writer:
            return customers.import_customers(session, project, rows, now=now, rejects=writer)
