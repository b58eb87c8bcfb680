"""A generated billing workload and an independent biller to check it against.

The shop: project acme (UTC), plan std (20.00 a month in arrears, prorated by day; api_calls
graduated: 40 free, then 0.05 with a 1.00 flat fee up to 100, then 0.02; tokens 0.0003 each
past 1000; storage in packages of 10 at 2.50; payments at 2.9% + 0.30, each between 0.50 and
10, the first two free; adjustments 1.00 each, may be negative). `population` names the
customers and their start dates, `generate` makes seeded random usage for them, and
`check_against_independent` compares every stored October invoice with amounts computed here
with plain Decimal arithmetic from DESIGN.md's pricing semantics, never with the domain code
under test. `spawn` runs a billing run in its own process (to kill it, or to race it).
"""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from neruba_cli.db.schema import (
    BillingRun,
    Customer,
    Invoice,
    InvoiceLine,
    InvoiceRevision,
    Project,
)
from neruba_cli.db.tables import (
    billing_runs_t,
    events_t,
    import_batches_t,
    invoice_lines_t,
    invoice_revisions_t,
    invoice_sequences_t,
    invoices_t,
    locks_t,
)
from neruba_cli.domain.invoice_numbers import parse_number
from neruba_cli.services.billing.run import RunOptions, RunReport, run_bill
from tests.support import catalogs
from tests.support.cli import Cli
from tests.support.events import Ev

ROOT = Path(__file__).resolve().parents[2]


OCTOBER = datetime(2026, 10, 1, tzinfo=UTC)


AFTER_OCTOBER = datetime(2026, 11, 2, tzinfo=UTC)


CENT = Decimal("0.01")


CATALOG = catalogs.catalog(
    meters=[
        catalogs.meter("api_calls", "count"),
        catalogs.meter("tokens", "sum", field="properties.tokens"),
        catalogs.meter("storage", "sum"),
        catalogs.meter("payments", "sum", field="properties.amount"),
        catalogs.meter("adjustments", "sum", allow_negative=True),
    ],
    plans=[
        catalogs.plan(
            "std",
            "20.00",
            catalogs.graduated(
                "api_calls",
                catalogs.tier(40, "0"),
                catalogs.tier(100, "0.05", flat_amount="1.00"),
                catalogs.tier(catalogs.INF, "0.02"),
            ),
            catalogs.per_unit("tokens", "0.0003", free_units=1000),
            catalogs.charge("storage", "package", package_size=10, package_amount="2.50"),
            catalogs.charge(
                "payments",
                "percentage",
                rate="2.9",
                fixed_amount="0.30",
                per_transaction_min="0.50",
                per_transaction_max="10",
                free_units=2,
            ),
            catalogs.per_unit("adjustments", "1.00"),
            proration="day",
        )
    ],
)


def make_shop(
    cli: Cli,
    tmp_path: Path,
    customers: dict[str, tuple[str, str]],  # external id -> (time zone, subscription start)
    slug: str = "acme",
) -> None:
    made = cli("project", "create", slug, "--currency", "USD", "--timezone", "UTC")
    assert made.exit_code == 0, made.stderr
    people = tmp_path / f"{slug}-customers.csv"
    with people.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["external_id", "currency", "timezone"])
        for external, (tz, _start) in customers.items():
            writer.writerow([external, "USD", tz])
    imported = cli("customer", "import", str(people), "--project", slug)
    assert imported.exit_code == 0, imported.stderr
    catalog = tmp_path / f"{slug}-catalog.toml"
    catalog.write_text(CATALOG)
    applied = cli("catalog", "apply", str(catalog), "--project", slug)
    assert applied.exit_code == 0, applied.stderr
    subs = tmp_path / f"{slug}-subscriptions.csv"
    with subs.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["customer", "plan", "start"])
        for external, (_tz, start) in customers.items():
            writer.writerow([external, "std", start])
    imported = cli("subscription", "import", str(subs), "--project", slug)
    assert imported.exit_code == 0, imported.stderr


def project_of(engine: Engine, slug: str = "acme") -> Project:
    with Session(engine) as session:
        project = session.scalars(select(Project).where(Project.slug == slug)).one()
        session.expunge(project)
    return project


def bill(
    engine: Engine,
    slug: str = "acme",
    label: str = "2026-10",
    as_of: datetime = AFTER_OCTOBER,
    **options: Any,
) -> RunReport:
    return run_bill(
        engine,
        project_of(engine, slug),
        RunOptions(label=label, as_of=as_of, **options),
        actor="tests",
        now=as_of,
    )


@dataclass
class Stored:
    id: str
    number: str
    customer: str
    period: str
    period_start: datetime
    kind: str
    status: str
    revision: int
    total: Decimal
    corrects_id: str | None
    fingerprint: str
    content: str
    version: int

    @property
    def doc(self) -> dict[str, Any]:
        return dict(orjson.loads(self.content))


def invoices(engine: Engine, slug: str = "acme") -> list[Stored]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Invoice.id,
                Invoice.number,
                Customer.external_id,
                Invoice.period,
                Invoice.period_start,
                Invoice.kind,
                Invoice.status,
                Invoice.revision,
                Invoice.total,
                Invoice.corrects_id,
                Invoice.fingerprint,
                Invoice.content,
                Invoice.version,
            )
            .join(Customer, Customer.id == Invoice.customer_id)
            .join(Project, Project.id == Invoice.project_id)
            .where(Project.slug == slug)
            .order_by(Invoice.number)
        ).all()
    return [Stored(*row) for row in rows]


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            model.__tablename__: conn.execute(select(func.count()).select_from(model)).scalar_one()
            for model in (BillingRun, Invoice, InvoiceLine, InvoiceRevision)
        }


def reset_billing(engine: Engine) -> None:
    """Forget every run and invoice (keeping the set-up and the events)."""
    with engine.begin() as conn:
        conn.execute(update(invoices_t).values(corrects_id=None))
        for table in (
            invoice_revisions_t,
            invoice_lines_t,
            invoices_t,
            billing_runs_t,
            invoice_sequences_t,
            locks_t,
        ):
            conn.execute(table.delete())


def reset_events(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(events_t.delete())
        conn.execute(import_batches_t.delete())


def number_value(number: str) -> int:
    return parse_number(number).sequence


def assert_gapless(engine: Engine, slug: str = "acme") -> None:
    numbers = sorted(number_value(inv.number) for inv in invoices(engine, slug))
    assert numbers == list(range(1, len(numbers) + 1))


# Written from DESIGN.md "Pricing semantics", on purpose without any neruba_cli code.
TIERS = [  # (up_to, unit_amount, flat_amount); None is inf
    (Decimal(40), Decimal(0), Decimal(0)),
    (Decimal(100), Decimal("0.05"), Decimal(1)),
    (None, Decimal("0.02"), Decimal(0)),
]


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def graduated(q: Decimal) -> Decimal:
    """Each tier's units at its price; a tier's flat fee once q enters it (q = 0 enters the
    first tier)."""
    amount, lower = Decimal(0), Decimal(0)
    for index, (up_to, unit, flat) in enumerate(TIERS):
        if q > lower or index == 0:
            top = q if up_to is None else min(q, up_to)
            amount += (top - lower) * unit + flat
        if up_to is not None:
            lower = up_to
    return amount


def percentage(values: list[Decimal]) -> Decimal:
    total = Decimal(0)
    for value in values[2:]:  # the first two transactions are free
        fee = value * Decimal("2.9") / 100 + Decimal("0.30")
        total += min(max(fee, Decimal("0.50")), Decimal(10))
    return total


def expected_lines(events: list[Ev], start: datetime, end: datetime) -> dict[str, Decimal]:
    """Per meter (and "base_fee") the rounded line amount of one customer's invoice."""
    inside = sorted((e for e in events if start <= e.ts < end), key=lambda e: (e.ts, e.key))
    by_meter: dict[str, list[Ev]] = defaultdict(list)
    for e in inside:
        by_meter[e.meter].append(e)
    tokens = sum((Decimal(e.properties["tokens"]) for e in by_meter["tokens"]), Decimal(0))
    storage = sum((e.quantity for e in by_meter["storage"]), Decimal(0))
    adjust = sum((e.quantity for e in by_meter["adjustments"]), Decimal(0))
    payments = [Decimal(e.properties["amount"]) for e in by_meter["payments"]]
    return {
        "api_calls": cents(graduated(Decimal(len(by_meter["api_calls"])))),
        "tokens": cents(max(tokens - 1000, Decimal(0)) * Decimal("0.0003")),
        "storage": cents((storage / 10).to_integral_value(ROUND_CEILING) * Decimal("2.50")),
        "payments": cents(percentage(payments)),
        "adjustments": cents(max(adjust, Decimal(0)) * Decimal(1)),
    }


def base_fee(start: datetime, days_in_month: int = 31) -> Decimal:
    """Arrears fee of October for a subscription starting at `start` (UTC customers)."""
    first = max(start, OCTOBER)
    days = days_in_month - first.day + 1
    return cents(Decimal(20) * days / days_in_month)


def stored_lines(content: dict[str, Any]) -> dict[str, Decimal]:
    found: dict[str, Decimal] = defaultdict(Decimal)
    for line in content["lines"]:
        found[line["meter"] or line["kind"]] += Decimal(line["amount"])
    return dict(found)


def generate(customers: list[str], seed: int, starts: dict[str, datetime]) -> list[Ev]:
    rng = random.Random(seed)
    events: list[Ev] = []
    for c in customers:
        plan = [
            ("api_calls", rng.randint(0, 150)),
            ("tokens", rng.randint(0, 20)),
            ("storage", rng.randint(0, 5)),
            ("payments", rng.randint(0, 10)),
            ("adjustments", rng.randint(0, 1)),
        ]
        total = sum(n for _m, n in plan)
        # distinct seconds per customer: event order is unambiguous; a few fall before the
        # subscription's start (not billed) or in November (not October's)
        seconds = rng.sample(range(-2 * 86400, 33 * 86400), total)
        stamps = iter(sorted(seconds))
        order = [m for m, n in plan for _ in range(n)]
        rng.shuffle(order)
        for i, meter in enumerate(order):
            ts = OCTOBER + timedelta(seconds=next(stamps))
            props: dict[str, Any] = {}
            quantity = Decimal(1)
            if meter == "tokens":
                props = {"tokens": rng.randint(1, 200)}
            elif meter == "storage":
                quantity = Decimal(rng.randint(1, 90)) / 4
            elif meter == "payments":
                props = {"amount": str(Decimal(rng.randint(1, 50000)) / 100)}
            elif meter == "adjustments":
                quantity = Decimal(rng.randint(1, 30))
            events.append(Ev(f"{c}-{i}", c, meter, ts, quantity, props))
    return events


def population(n: int) -> tuple[list[str], dict[str, datetime]]:
    names = [f"c{i:04d}" for i in range(n)]
    starts = {
        name: OCTOBER + timedelta(days=(i % 28) if i % 10 == 0 else 0)
        for i, name in enumerate(names)
    }
    return names, starts


def shop_for(cli: Cli, tmp_path: Path, names: list[str], starts: dict[str, datetime]) -> None:
    make_shop(
        cli,
        tmp_path,
        {name: ("UTC", starts[name].isoformat().replace("+00:00", "Z")) for name in names},
    )


def check_against_independent(
    engine: Engine, events: list[Ev], names: list[str], starts: dict[str, datetime]
) -> None:
    by_customer: dict[str, list[Ev]] = defaultdict(list)
    for e in events:
        by_customer[e.customer].append(e)
    stored = {inv.customer: inv for inv in invoices(engine) if inv.period == "2026-10"}
    assert sorted(stored) == names
    november = datetime(2026, 11, 1, tzinfo=UTC)
    for name in names:
        inv = stored[name]
        content = inv.doc
        expected = expected_lines(by_customer[name], starts[name], november)
        expected["base_fee"] = base_fee(starts[name])
        got = stored_lines(content)
        assert {k: v for k, v in got.items() if v} == {k: v for k, v in expected.items() if v}, name
        total = sum(expected.values(), Decimal(0))
        assert inv.total == total and Decimal(content["total"]) == total, name
        assert Decimal(content["subtotal"]) == sum(
            (Decimal(line["amount"]) for line in content["lines"]), Decimal(0)
        )


RUNNER = """
import sys
import time
from datetime import datetime, timedelta, UTC
from sqlalchemy import select
from sqlalchemy.orm import Session
from neruba_cli.db.engine import create_db_engine
from neruba_cli.db.schema import Project
from neruba_cli.services.billing import run as billing_run
from neruba_cli.services.billing import plan as billing_plan
from neruba_cli.services.billing import writer as billing_writer

url, slug, label, as_of = sys.argv[1:5]
lease = float(sys.argv[5]) if len(sys.argv) > 5 else 600
wait = float(sys.argv[6]) if len(sys.argv) > 6 else 0
if len(sys.argv) > 7:  # smaller batches: a pause point between whole invoices
    billing_plan.CUSTOMER_BATCH, billing_writer.WRITE_BATCH = int(sys.argv[7]), int(sys.argv[7])
engine = create_db_engine(url)
with Session(engine) as session:
    project = session.scalars(select(Project).where(Project.slug == slug)).one()
    session.expunge(project)

gate = len(sys.argv) > 8 and sys.argv[8] == "gate"
pause = float(sys.argv[9]) if len(sys.argv) > 9 else 0
if gate:  # start together: wait for the test to say go
    print("ready", flush=True)
    sys.stdin.readline()

def total(n):
    print(f"total {n}", flush=True)
    def step(k):
        print(f"step {k}", flush=True)
        time.sleep(pause)  # a moment for the test to pause this process between invoices
    return step

as_of_ts = datetime.fromisoformat(as_of)
options = billing_run.RunOptions(
    label=label, as_of=as_of_ts, lease=timedelta(seconds=lease), wait=wait
)
try:
    report = billing_run.run_bill(
        engine, project, options, actor="t", now=as_of_ts, progress_total=total
    )
except Exception as exc:
    print(f"error {type(exc).__name__} {exc}", flush=True)
    sys.exit(getattr(exc, "exit_code", 1))
print(f"done {report.status} {report.count('created')} {report.count('unchanged')}", flush=True)
"""


def runner_command(db_url: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        RUNNER,
        db_url,
        "acme",
        "2026-10",
        AFTER_OCTOBER.isoformat(),
        *args,
    ]


def spawn(db_url: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        runner_command(db_url, *args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
