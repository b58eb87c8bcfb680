"""`neruba demo`: the product's main loop on a throwaway SQLite database.

It drives the same services the commands use, so what it shows is what operators get.
"""

from __future__ import annotations

import random
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from neruba_cli.db import migrate
from neruba_cli.db.engine import create_db_engine
from neruba_cli.db.schema import Customer, Invoice
from neruba_cli.domain import compare as compare_domain
from neruba_cli.domain.billing_periods import resolve_label
from neruba_cli.domain.money import format_amount, from_minor_units
from neruba_cli.domain.periods import month_period
from neruba_cli.domain.quote import Quote, quote_document, quote_plan
from neruba_cli.domain.tenancy import project_spec
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services import output_files
from neruba_cli.services.analysis import compare, report_files
from neruba_cli.services.billing import run as billing_run
from neruba_cli.services.catalog import quote, subscriptions
from neruba_cli.services.catalog import store as catalog_store
from neruba_cli.services.ingest import pipeline as ingest_pipeline
from neruba_cli.services.ingest import receipts as ingest_receipts
from neruba_cli.services.ingest.readers import Source
from neruba_cli.services.ingest.rejects import RejectsWriter
from neruba_cli.services.ingest.tabular import read_csv
from neruba_cli.services.ledger import credits, payments
from neruba_cli.services.ops.check import runner as check_runner
from neruba_cli.services.tenancy import access, audit, customers, keys, projects
from neruba_cli.services.tenancy.access import Access, Actor
from neruba_cli.services.tenancy.customers import ImportReport

DEMO_DATABASE = "neruba-demo.db"
DEMO_SUBSCRIBERS = ("cus_acme", "cus_initech")
DEMO_EVENTS_PER_CUSTOMER = 400
DEMO_PROJECT = "demo"
DEMO_CREDIT = "50.00"
DEMO_BASELINE = "demo-baseline.csv"


@dataclass
class DemoResult:
    folder: Path
    database_url: str
    project: dict[str, Any]
    customers: list[dict[str, Any]]
    customer_import: ImportReport
    steps: list[str] = field(default_factory=list)
    quote: Quote | None = None
    invoices: list[dict[str, Any]] = field(default_factory=list)
    compare: dict[str, Any] | None = None  # the baseline comparison's summary
    compare_report: Any = None  # the comparison itself, for the terminal rendering

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
            "invoices": self.invoices,
            "compare": self.compare,
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
        zones = _subscriber_zones(engine)
        month = demo_month(now, zones.values())
        steps.extend(_demo_catalog(engine, month, now))
        demo_quote = _demo_quote(engine)
        steps.extend(_demo_billing(engine, folder, month, zones, actor, now))
        compare_step, compared, compare_report = _demo_compare(engine, folder, url, month)
        steps.append(compare_step)
        steps.append(_demo_check(engine))
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
            invoices=_demo_invoices(engine),
            compare=compared,
            compare_report=compare_report,
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


def _subscriber_zones(engine: Any) -> dict[str, str]:
    with Session(engine) as session:
        project = projects.get_project(session, DEMO_PROJECT)
        return {c: customers.get_customer(session, project, c).timezone for c in DEMO_SUBSCRIBERS}


def demo_month(now: datetime, zones: Iterable[str]) -> str:
    """The latest month that has ended at `now` in every subscriber's time zone.

    The demo finalizes the month it bills, which a month still running for one customer
    forbids: at 00:30 UTC on the 1st, October has ended in UTC but not in New York, so the
    demo bills September then."""
    wanted = tuple(zones)
    month = resolve_label("previous", as_of=now, tz="UTC")
    while any(month_period(month, tz).end > now for tz in wanted):
        month = resolve_label("previous", as_of=month_period(month, "UTC").start, tz="UTC")
    return month


def _demo_catalog(engine: Any, month: str, now: datetime) -> list[str]:
    """Apply the example catalog and subscribe a customer to `pro` from `month` on."""
    source = files("neruba_cli.resources").joinpath("demo_catalog.toml")
    data = tomllib.loads(source.read_text(encoding="utf-8"))
    with Session(engine, expire_on_commit=False) as session, session.begin():
        project = projects.get_project(session, DEMO_PROJECT)
        parsed = catalog_store.parse_for_project(session, project, data, source="demo_catalog.toml")
        report = catalog_store.apply_catalog(session, project, parsed, now=now)
        made = []
        for customer in DEMO_SUBSCRIBERS:
            row = customers.get_customer(session, project, customer)
            start = month_period(month, row.timezone).start
            subscription = subscriptions.create_subscription(
                session, project, customer, "pro", start=start, trial_days=0, now=now
            )
            made.append(f"{customer} ({subscription.id}) from {format_ts(start)}")
    return [
        f"applied the example catalog: {len(report.meters)} meters, {len(report.plans)} plans",
        f"subscribed to pro: {'; '.join(made)}",
    ]


def _demo_events(month: str, tz_by_customer: dict[str, str]) -> list[bytes]:
    """A month of usage for the subscribers (the same every time), and one bad line."""
    generator = random.Random(month)
    lines: list[bytes] = []
    for customer, tz in sorted(tz_by_customer.items()):
        period = month_period(month, tz)
        span = int((period.end - period.start).total_seconds())
        seats = {
            "idempotency_key": f"demo-{customer}-seats",
            "customer": customer,
            "meter": "seats",
            "timestamp": format_ts(period.start),
            "quantity": "5",
        }
        lines.append(orjson.dumps(seats))
        for n in range(DEMO_EVENTS_PER_CUSTOMER):
            at = period.start + timedelta(seconds=generator.randrange(span))
            properties: dict[str, Any] = {"region": generator.choice(("eu", "us"))}
            event = {
                "idempotency_key": f"demo-{customer}-{n}",
                "customer": customer,
                "meter": "api_calls",
                "timestamp": format_ts(at),
                "properties": properties,
            }
            if n % 4 == 0:
                event["meter"] = "tokens"
                properties["tokens"] = generator.randrange(50, 20000)
            lines.append(orjson.dumps(event))
    bad = {
        "idempotency_key": "demo-naive",
        "customer": "cus_acme",
        "meter": "api_calls",
        "timestamp": f"{month}-15T12:00:00",
    }
    lines.append(orjson.dumps(bad))
    return lines


def _ingest_file(
    engine: Any, path: Path, actor: Actor, now: datetime
) -> ingest_receipts.IngestSummary:
    with Session(engine, expire_on_commit=False) as session:
        project = projects.get_project(session, DEMO_PROJECT)
        meters = catalog_store.stored_meters(session, project)
    rejects = path.with_suffix(".rejects.jsonl")
    with RejectsWriter(rejects) as writer:
        return ingest_pipeline.ingest(
            engine,
            project,
            Source([str(path)]),
            ingest_pipeline.IngestOptions(fmt="jsonl"),
            meters=meters,
            rejects=writer,
            actor=actor.id,
            now=now,
        )


def _demo_billing(
    engine: Any, folder: Path, month: str, zones: dict[str, str], actor: Actor, now: datetime
) -> list[str]:
    """Usage in, a finalized month of invoices out, then a late event and its correction."""
    usage = folder / "usage.jsonl"
    output_files.write_output(usage, b"\n".join(_demo_events(month, zones)) + b"\n", option="--dir")
    summary = _ingest_file(engine, usage, actor, now)
    steps = [
        f"ingested {usage.name}: {summary.accepted} accepted, {summary.rejected} rejected "
        f"(a naive timestamp, reported in {usage.with_suffix('.rejects.jsonl').name})"
    ]
    again = _ingest_file(engine, usage, actor, now)
    steps.append(f"ingested it again: {again.duplicates} duplicates, nothing stored twice")
    steps.append(_demo_grant(engine, actor, now))
    first = _bill(engine, month, actor, now, finalize=True)
    steps.append(
        f"billed {month}: {billing_run.run_summary(first)['created']} invoices, finalized "
        f"{', '.join(first.finalized)} (cus_initech's credit applied at finalization)"
    )
    steps.append(_demo_payment(engine, actor, now))
    rerun = _bill(engine, month, actor, now)
    steps.append(f"billed {month} again: {rerun.status} (no changes)")
    late = folder / "late.jsonl"
    period = month_period(month, zones["cus_acme"])
    event = {
        "idempotency_key": "demo-late-1",
        "customer": "cus_acme",
        "meter": "tokens",
        "timestamp": format_ts(period.end - timedelta(hours=1)),
        "properties": {"tokens": 900000},
    }
    output_files.write_output(late, orjson.dumps(event) + b"\n", option="--dir")
    _ingest_file(engine, late, actor, now)
    corrected = _bill(engine, month, actor, now, finalize=True)
    numbers = [o.number for o in corrected.outcomes if o.action == "corrected"]
    steps.append(
        f"a late event for cus_acme, billed {month} again: correction "
        f"{', '.join(map(str, numbers))} (the finalized invoice stays as it was)"
    )
    return steps


def _demo_check(engine: Any) -> str:
    with engine.connect() as conn, Session(engine) as session:
        report = check_runner.run(conn, projects.get_project(session, DEMO_PROJECT))
    checked = sum(result.checked for result in report.results)
    return (
        f"checked the ledger: {'consistent' if report.ok else 'DISCREPANCIES'} "
        f"({checked} transactions, accounts, grants and invoices swept)"
    )


def _demo_compare(
    engine: Any, folder: Path, url: str, month: str
) -> tuple[str, dict[str, Any], compare_domain.Report]:
    """The month against a legacy system's export that differs on purpose (a late event, a
    charge the legacy system never priced, a rounding, a customer only it billed); the
    report files go to DIR/compare."""
    baseline = folder / DEMO_BASELINE
    resource = files("neruba_cli.resources").joinpath(DEMO_BASELINE)
    output_files.write_output(baseline, resource.read_bytes(), option="--dir")
    options = compare.CompareOptions(baseline=str(baseline), label=month, tolerance=Decimal("0.01"))
    with Session(engine, expire_on_commit=False) as session:
        project = projects.get_project(session, DEMO_PROJECT)
    with engine.connect() as conn:
        report = compare.compare(conn, project, options)
    written = report_files.write(report, folder / "compare")
    summary = report.summary()
    found = "; ".join(
        f"{item['customer']} {_signed(item['difference'])} {item['currency']} ({item['reason']})"
        for item in summary["largest"]
    )
    drift = ", ".join(
        f"{money['drift']} {code}"
        + (f" ({money['drift_percent']}%)" if money["drift_percent"] else "")
        for code, money in summary["currencies"].items()
    )
    step = (
        f"compared {month} with {DEMO_BASELINE}, a legacy system's export that differs on "
        f"purpose: {summary['customers']} customers, {summary['matched']} matched, drift "
        f"{drift}: {found}; report in {written['report.html']} (again, line by line: "
        f"neruba compare {baseline} --period {month} --by line --db {url} --project "
        f"{DEMO_PROJECT})"
    )
    return step, summary, report


def _signed(amount: str | None) -> str:
    if amount is None:
        return "(currencies differ)"
    return amount if amount.startswith("-") else f"+{amount}"


def _demo_grant(engine: Any, actor: Actor, now: datetime) -> str:
    """Promotional credit for cus_initech, spent by its invoice when it is finalized."""
    with Session(engine, expire_on_commit=False) as session:
        project = projects.get_project(session, DEMO_PROJECT)
    request = credits.GrantRequest(
        customer="cus_initech",
        amount=DEMO_CREDIT,
        expires_at=now + timedelta(days=90),
        priority=1,
        category="promotional",
        reason="demo: welcome credit",
        idempotency_key="demo-welcome-credit",
    )
    granted, _ = credits.grant(engine, project, request, actor=actor.id, now=now)
    return (
        f"granted cus_initech {granted['amount']} {granted['currency']} promotional credit "
        f"({granted['id']}, priority 1, expires {granted['expires_at']})"
    )


def _demo_payment(engine: Any, actor: Actor, now: datetime) -> str:
    """cus_acme pays its invoice in full by bank transfer."""
    with Session(engine, expire_on_commit=False) as session:
        project = projects.get_project(session, DEMO_PROJECT)
        invoice = session.scalars(
            select(Invoice)
            .join(Customer, Customer.id == Invoice.customer_id)
            .where(Invoice.project_id == project.id, Customer.external_id == "cus_acme")
            .order_by(Invoice.number)
        ).first()
    assert invoice is not None
    request = payments.PaymentRequest(
        invoice=invoice.number, amount=str(invoice.total), reference="demo-wire-1"
    )
    paid, _ = payments.record(engine, project, request, actor=actor.id, now=now)
    return (
        f"recorded a payment of {paid['amount']} {paid['currency']} for {paid['invoice']}: "
        f"{paid['invoice_status']}, {paid['invoice_amount_due']} due"
    )


def _bill(
    engine: Any, month: str, actor: Actor, now: datetime, *, finalize: bool = False
) -> billing_run.RunReport:
    with Session(engine, expire_on_commit=False) as session:
        project = projects.get_project(session, DEMO_PROJECT)
    options = billing_run.RunOptions(label=month, as_of=now, finalize=finalize)
    return billing_run.run_bill(engine, project, options, actor=actor.id, now=now)


def _demo_invoices(engine: Any) -> list[dict[str, Any]]:
    with Session(engine) as session:
        project = projects.get_project(session, DEMO_PROJECT)
        rows = session.execute(
            select(Invoice, Customer.external_id)
            .join(Customer, Customer.id == Invoice.customer_id)
            .where(Invoice.project_id == project.id)
            .order_by(Invoice.number)
        ).all()
        return [
            {
                "number": invoice.number,
                "customer": external_id,
                "kind": invoice.kind,
                "status": invoice.status,
                "period": invoice.period,
                "subtotal": format_amount(invoice.subtotal, invoice.currency),
                "credits_applied": format_amount(invoice.credits_applied, invoice.currency),
                "total": format_amount(invoice.total, invoice.currency),
                "amount_due": format_amount(
                    from_minor_units(invoice.amount_due_minor, invoice.currency),
                    invoice.currency,
                ),
                "currency": invoice.currency,
            }
            for invoice, external_id in rows
        ]


def _demo_quote(engine: Any) -> Quote:
    with Session(engine) as session:
        stored = catalog_store.get_plan(session, projects.get_project(session, DEMO_PROJECT), "pro")
    usage = quote.usage_from_pairs(DEMO_USAGE, stored.plan)
    return quote_plan(stored.plan, usage.meters, groups=usage.groups)


def _import_demo_customers(engine: Any, slug: str, now: datetime) -> ImportReport:
    source = files("neruba_cli.resources").joinpath("demo_customers.csv")
    with as_file(source) as path, Session(engine) as session, session.begin():
        project = projects.get_project(session, slug)
        rows = read_csv(path, columns=customers.CSV_COLUMNS, required=customers.CSV_REQUIRED)
        with RejectsWriter(None) as writer:
            return customers.import_customers(session, project, rows, now=now, rejects=writer)
