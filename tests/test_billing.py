"""Billing runs end to end on every dialect, through `services.billing.run_bill`.

Set-up goes through the CLI (projects, customers, catalog, subscriptions, ingest), the run
through the service, and the assertions read the stored invoices back. Expected amounts are
computed here with plain Decimal arithmetic from DESIGN.md's pricing semantics, never with the
domain code under test.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from neruba_cli.db import locks
from neruba_cli.db.schema import (
    BillingRun,
    Customer,
    Event,
    ImportBatch,
    Invoice,
    InvoiceLine,
    InvoiceRevision,
    InvoiceSequence,
    Lock,
    Project,
)
from neruba_cli.services.billing.run import ABANDONED, RunOptions, RunReport, lock_name, run_bill
from tests.conftest import Cli

ROOT = Path(__file__).resolve().parent.parent
OCTOBER = datetime(2026, 10, 1, tzinfo=UTC)
AFTER_OCTOBER = datetime(2026, 11, 2, tzinfo=UTC)
CENT = Decimal("0.01")

CATALOG = """
[[meters]]
code = "api_calls"
aggregation = "count"

[[meters]]
code = "tokens"
aggregation = "sum"
field = "properties.tokens"

[[meters]]
code = "storage"
aggregation = "sum"

[[meters]]
code = "payments"
aggregation = "sum"
field = "properties.amount"

[[meters]]
code = "adjustments"
aggregation = "sum"
allow_negative = true

[[plans]]
code = "std"
currency = "USD"
interval = "month"
base_fee = "20.00"
base_fee_timing = "arrears"
proration = "day"

  [[plans.charges]]
  meter = "api_calls"
  model = "graduated"
  tiers = [
    { up_to = 40, unit_amount = "0" },
    { up_to = 100, unit_amount = "0.05", flat_amount = "1.00" },
    { up_to = inf, unit_amount = "0.02" },
  ]

  [[plans.charges]]
  meter = "tokens"
  model = "per_unit"
  unit_amount = "0.0003"
  free_units = 1000

  [[plans.charges]]
  meter = "storage"
  model = "package"
  package_size = 10
  package_amount = "2.50"

  [[plans.charges]]
  meter = "payments"
  model = "percentage"
  rate = "2.9"
  fixed_amount = "0.30"
  per_transaction_min = "0.50"
  per_transaction_max = "10"
  free_units = 2

  [[plans.charges]]
  meter = "adjustments"
  model = "per_unit"
  unit_amount = "1.00"
"""


# --------------------------------------------------------------------------- set-up helpers


@dataclass
class Ev:
    key: str
    customer: str
    meter: str
    ts: datetime
    quantity: Decimal = Decimal(1)
    properties: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {
            "idempotency_key": self.key,
            "customer": self.customer,
            "meter": self.meter,
            "timestamp": self.ts.isoformat(),
            "quantity": str(self.quantity),
            "properties": self.properties,
        }


def write_jsonl(path: Path, events: list[Ev]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e.json()) + b"\n" for e in events))
    return path


def ingest(cli: Cli, path: Path, slug: str = "acme") -> dict[str, Any]:
    result = cli("ingest", str(path), "--project", slug, "--max-future", "3650d", "--json")
    assert result.exit_code == 0, result.stderr
    summary: dict[str, Any] = result.json()
    assert summary["rejected"] == 0 and summary["conflicts"] == 0, summary
    return summary


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
        conn.execute(update(Invoice.__table__).values(corrects_id=None))
        for model in (InvoiceRevision, InvoiceLine, Invoice, BillingRun, InvoiceSequence, Lock):
            conn.execute(model.__table__.delete())


def reset_events(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(Event.__table__.delete())
        conn.execute(ImportBatch.__table__.delete())


def number_value(number: str) -> int:
    return int(number.rsplit("-", 1)[1])


def assert_gapless(engine: Engine, slug: str = "acme") -> None:
    numbers = sorted(number_value(inv.number) for inv in invoices(engine, slug))
    assert numbers == list(range(1, len(numbers) + 1))


# --------------------------------------------------------------------------- an independent biller

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


# --------------------------------------------------------------------------- generated usage


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


# --------------------------------------------------------------------------- 1. at scale


@pytest.mark.slow
def test_every_invoice_equals_an_independent_computation_and_a_rerun_writes_nothing(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    names, starts = population(1000)
    shop_for(cli, tmp_path, names, starts)
    events = generate(names, seed=6, starts=starts)
    assert len(events) >= 50_000
    summary = ingest(cli, write_jsonl(tmp_path / "usage.jsonl", events))
    assert summary["accepted"] == len(events)

    report = bill(engine)
    assert report.status == "completed" and report.run is not None, report
    assert report.count("created") == 1000 and len(report.outcomes) == 1000
    check_against_independent(engine, events, names, starts)
    assert_gapless(engine)
    before = counts(engine)
    assert before["billing_runs"] == 1 and before["invoices"] == 1000
    assert before["invoice_revisions"] == 1000

    again = bill(engine)
    assert again.status == "unchanged" and again.run is None
    assert again.count("unchanged") == 1000
    assert again.fingerprint == report.fingerprint
    assert counts(engine) == before


# --------------------------------------------------------------------------- 2. determinism


def snapshot(engine: Engine) -> dict[str, tuple[str, str, str, str]]:
    return {
        inv.customer: (inv.number, inv.fingerprint, inv.content, str(inv.total))
        for inv in invoices(engine)
    }


def test_the_same_events_in_another_order_give_the_same_invoices(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    names, starts = population(40)
    shop_for(cli, tmp_path, names, starts)
    events = generate(names, seed=11, starts=starts)
    ingest(cli, write_jsonl(tmp_path / "ordered.jsonl", events))
    first = bill(engine)
    check_against_independent(engine, events, names, starts)
    taken = snapshot(engine)

    reset_billing(engine)
    reset_events(engine)
    shuffled = list(events)
    random.Random(3).shuffle(shuffled)
    # and in several files, the later ones first
    parts = [shuffled[i::3] for i in range(3)]
    for i, part in reversed(list(enumerate(parts))):
        ingest(cli, write_jsonl(tmp_path / f"shuffled{i}.jsonl", part))
    second = bill(engine)
    assert second.fingerprint == first.fingerprint
    assert snapshot(engine) == taken


def test_transactions_at_the_same_instant_do_not_depend_on_arrival_order(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    """Percentage charges price transactions in event order; two payments at the same
    timestamp must still give one invoice whatever order they arrived in (DESIGN promise:
    same inputs, same invoice, whatever order the events arrived in)."""
    make_shop(cli, tmp_path, {"c1": ("UTC", "2026-10-01T00:00:00Z")})
    at = datetime(2026, 10, 5, 12, tzinfo=UTC)
    events = [
        Ev(f"p{i}", "c1", "payments", at, properties={"amount": amount})
        for i, amount in enumerate(["10.00", "300.00", "5.00"])
    ]
    ingest(cli, write_jsonl(tmp_path / "a.jsonl", events))
    bill(engine)
    taken = snapshot(engine)
    reset_billing(engine)
    reset_events(engine)
    ingest(cli, write_jsonl(tmp_path / "b.jsonl", list(reversed(events))))
    bill(engine)
    assert snapshot(engine) == taken


# --------------------------------------------------------------------------- 3. late events


@pytest.fixture
def unlinked(engine: Engine) -> Iterator[Engine]:
    """Corrections point at their originals; MariaDB checks that foreign key row by row, so
    conftest's `DELETE FROM invoices` between tests would fail: unlink them afterwards."""
    yield engine
    with engine.begin() as conn:
        conn.execute(update(Invoice.__table__).values(corrects_id=None))


def test_late_events_after_finalization_make_exactly_the_corrections_needed(
    cli: Cli, unlinked: Engine, tmp_path: Path
) -> None:
    engine = unlinked
    names, starts = population(30)
    shop_for(cli, tmp_path, names, starts)
    events = generate(names, seed=21, starts=starts)
    # the credit-note customer has a positive adjustment inside October to take back
    events.append(Ev("refund-base", names[6], "adjustments", OCTOBER + timedelta(days=20), 25))
    ingest(cli, write_jsonl(tmp_path / "usage.jsonl", events))
    first = bill(engine, finalize=True)
    assert len(first.finalized) == 30
    originals = {inv.customer: inv for inv in invoices(engine)}
    assert {inv.status for inv in originals.values()} == {"finalized"}
    check_against_independent(engine, events, names, starts)

    late_customers = names[:7]
    late: list[Ev] = []
    for i, name in enumerate(late_customers[:6]):  # more usage: supplemental invoices
        for j in range(45 + i):
            ts = OCTOBER + timedelta(days=3, seconds=7 * j + i)
            late.append(Ev(f"late-{name}-{j}", name, "api_calls", ts))
    late.append(Ev("late-refund", names[6], "adjustments", OCTOBER + timedelta(days=25), -10))
    # November events of others are not late for October
    late.append(Ev("nov-1", names[20], "api_calls", datetime(2026, 11, 1, 0, 0, 1, tzinfo=UTC)))
    ingest(cli, write_jsonl(tmp_path / "late.jsonl", late))
    before = counts(engine)

    second = bill(engine)
    corrected = {o.customer for o in second.outcomes if o.action == "corrected"}
    assert corrected == set(late_customers)
    assert {o.action for o in second.outcomes if o.customer not in corrected} == {"unchanged"}
    assert second.count("corrected") == 7 and second.late_events == len(late) - 1
    for outcome in second.outcomes:
        if outcome.customer in corrected:
            expected_late = sum(1 for e in late if e.customer == outcome.customer)
            assert outcome.late_events == expected_late
            assert outcome.landed == outcome.number

    after = {inv.id: inv for inv in invoices(engine)}
    for original in originals.values():  # byte-identical
        assert after[original.id] == original
    fixes = [inv for inv in after.values() if inv.revision > 0]
    assert len(fixes) == 7 and counts(engine)["invoices"] == before["invoices"] + 7
    all_events = events + late
    november = datetime(2026, 11, 1, tzinfo=UTC)
    for fix in fixes:
        original = originals[fix.customer]
        assert fix.corrects_id == original.id and fix.period == "2026-10"
        assert fix.status == "draft" and fix.revision == 1
        expected = expected_lines(
            [e for e in all_events if e.customer == fix.customer], starts[fix.customer], november
        )
        expected["base_fee"] = base_fee(starts[fix.customer])
        # original + correction == a fresh computation with the late events
        combined = stored_lines(original.doc)
        for meter, amount in stored_lines(fix.doc).items():
            combined[meter] = combined.get(meter, Decimal(0)) + amount
        assert {k: v for k, v in combined.items() if v} == {
            k: v for k, v in expected.items() if v
        }, fix.customer
        assert fix.total == sum(expected.values(), Decimal(0)) - original.total
        assert all(Decimal(line["amount"]) != 0 for line in fix.doc["lines"])
        if fix.customer == names[6]:
            assert fix.kind == "credit_note" and fix.total == Decimal("-10.00")
        else:
            assert fix.kind == "supplemental" and fix.total > 0
    assert_gapless(engine)

    settled = counts(engine)
    third = bill(engine)
    assert third.status == "unchanged" and third.run is None
    assert third.count("unchanged") == 30
    assert counts(engine) == settled
    assert {inv.id: inv for inv in invoices(engine)} == after

    # finalizing the corrections settles them in the ledger; the sweep agrees with every figure
    fourth = bill(engine, finalize=True)
    assert len(fourth.finalized) == 7
    swept = cli("check", "--project", "acme", "--json")
    assert swept.exit_code == 0, swept.stdout
    assert {c["name"]: c["checked"] for c in swept.json()["checks"]}["ledger.invoices"] == 37


def test_a_late_event_that_changes_no_amount_is_reported_once(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    """The 41st API call is the first paid one: the 2nd stays in the free tier, so a late 2nd
    call changes no amount. The run that sees it reports it; the next runs must not see it
    again (nor price the customer again)."""
    make_shop(cli, tmp_path, {"c1": ("UTC", "2026-10-01T00:00:00Z")})
    day = timedelta(days=1)
    ingest(cli, write_jsonl(tmp_path / "a.jsonl", [Ev("a1", "c1", "api_calls", OCTOBER + day)]))
    bill(engine, finalize=True)
    late = [Ev("a2", "c1", "api_calls", OCTOBER + 2 * day)]
    ingest(cli, write_jsonl(tmp_path / "b.jsonl", late))
    before = counts(engine)
    seen = bill(engine)
    assert (seen.status, seen.late_events) == ("unchanged", 1)
    again = bill(engine)
    assert (again.status, again.late_events) == ("unchanged", 0)
    assert counts(engine) == before


# --------------------------------------------------------------------------- 4. time zones


def test_months_are_read_in_each_customers_time_zone(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    make_shop(
        cli,
        tmp_path,
        {
            "la": ("America/Los_Angeles", "2026-09-01T00:00:00-07:00"),
            "tokyo": ("Asia/Tokyo", "2026-09-01T00:00:00+09:00"),
            "ny": ("America/New_York", "2026-11-20T15:00:00-05:00"),
        },
    )
    late_evening = {"la": "2026-10-31T23:30:00-07:00", "tokyo": "2026-10-31T23:30:00+09:00"}
    after_midnight = {"la": "2026-11-01T00:30:00-07:00", "tokyo": "2026-11-01T00:30:00+09:00"}
    events = []
    for name in ("la", "tokyo"):
        for i in range(3):
            events.append(Ev(f"{name}-oct-{i}", name, "api_calls", iso(late_evening[name])))
        for i in range(5):
            events.append(Ev(f"{name}-nov-{i}", name, "api_calls", iso(after_midnight[name])))
    # New York: events just inside and just outside its DST-shifted November
    events += [
        Ev("ny-early", "ny", "api_calls", iso("2026-11-20T14:59:59-05:00")),  # before start
        Ev("ny-in", "ny", "api_calls", iso("2026-11-20T15:00:00-05:00")),
        Ev("ny-last", "ny", "api_calls", iso("2026-11-30T23:59:59-05:00")),
        Ev("ny-dec", "ny", "api_calls", iso("2026-12-01T00:00:00-05:00")),
    ]
    ingest(cli, write_jsonl(tmp_path / "tz.jsonl", events))

    october = bill(engine, label="2026-10", as_of=datetime(2026, 11, 3, tzinfo=UTC))
    assert sorted(o.customer for o in october.outcomes) == ["la", "tokyo"]
    stored = {inv.customer: inv for inv in invoices(engine)}
    assert stored["la"].period_start == datetime(2026, 10, 1, 7, tzinfo=UTC)
    assert stored["tokyo"].period_start == datetime(2026, 9, 30, 15, tzinfo=UTC)
    for name in ("la", "tokyo"):
        usage = usage_line(stored[name].doc, "api_calls")
        assert usage["quantity"] == "3" and usage["events"]["count"] == 3, name
        assert (
            usage["events"]["first"]
            == usage["events"]["last"]
            == format_utc(iso(late_evening[name]))
        )
        assert stored[name].doc["period"]["label"] == "2026-10"

    november = bill(engine, label="2026-11", as_of=datetime(2026, 12, 3, tzinfo=UTC))
    assert sorted(o.customer for o in november.outcomes) == ["la", "ny", "tokyo"]
    nov = {inv.customer: inv for inv in invoices(engine) if inv.period == "2026-11"}
    for name in ("la", "tokyo"):
        usage = usage_line(nov[name].doc, "api_calls")
        assert usage["quantity"] == "5", name
    ny = nov["ny"].doc
    # November 2026 in New York: EDT (-4) at its start, EST (-5) at its end
    assert ny["period"]["start"] == "2026-11-01T04:00:00Z"
    assert ny["period"]["end"] == "2026-12-01T05:00:00Z"
    usage = usage_line(ny, "api_calls")
    assert usage["quantity"] == "2" and usage["events"]["count"] == 2
    assert usage["service"]["start"] == "2026-11-20T20:00:00Z"
    fee = next(line for line in ny["lines"] if line["kind"] == "base_fee")
    # days 20..30 of a 30-day month, both ends counted: 11/30 of 20.00 = 7.333... -> 7.33
    assert fee["proration"] == "11/30" and fee["amount"] == "7.33"


def iso(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def format_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def usage_line(content: dict[str, Any], meter: str) -> dict[str, Any]:
    return next(line for line in content["lines"] if line["meter"] == meter)


# --------------------------------------------------------------------------- 5. killed run

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


def comparable(engine: Engine) -> dict[str, tuple[str, str, str]]:
    return {inv.customer: (inv.fingerprint, inv.content, inv.kind) for inv in invoices(engine)}


@pytest.mark.slow
def test_a_killed_run_then_a_rerun_equals_a_clean_run(
    cli: Cli, engine: Engine, db_url: str, tmp_path: Path
) -> None:
    total = 400
    names, starts = population(total)
    shop_for(cli, tmp_path, names, starts)
    events = generate(names, seed=5, starts=starts)
    ingest(cli, write_jsonl(tmp_path / "usage.jsonl", events))

    # a clean run first, then forgotten
    clean_process = spawn(db_url, "600", "0", "40")
    _out, err = clean_process.communicate(timeout=120)
    assert clean_process.returncode == 0, err
    clean = comparable(engine)
    clean_numbers = sorted(inv.number for inv in invoices(engine))
    assert len(clean) == total
    reset_billing(engine)

    # whole invoices are written 40 at a time; kill the run at a random moment after a
    # random number of those batches: during the next batch's aggregation or its writes
    rng = random.Random()
    written: list[Stored] = []
    for _attempt in range(3):
        process = spawn(db_url, "600", "0", "40")
        assert process.stdout is not None
        steps, kill_after = 0, rng.randint(1, total // 40 - 2)
        while steps < kill_after:
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else ""
            steps += line.startswith("step")
        time.sleep(rng.uniform(0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        written = invoices(engine)
        if len(written) < total:
            break
        reset_billing(engine)
    assert 0 < len(written) < total, "never killed the run mid-way"
    # each invoice is whole: its lines and its revision are there
    for inv in invoices(engine):
        with engine.connect() as conn:
            lines = conn.execute(
                select(func.count()).where(InvoiceLine.invoice_id == inv.id)
            ).scalar_one()
            revisions = conn.execute(
                select(func.count()).where(InvoiceRevision.invoice_id == inv.id)
            ).scalar_one()
        assert lines == len(inv.doc["lines"]) and revisions == 1
    assert_gapless(engine)

    name = lock_name(project_of(engine), "2026-10")
    state = locks.get(engine, name)
    if state is not None and state.holder is not None:
        released = cli("locks", "release", name, "--yes", "--project", "acme")
        assert released.exit_code == 0, released.stderr
    rerun = bill(engine)
    assert rerun.status == "completed"
    assert comparable(engine) == clean
    assert sorted(inv.number for inv in invoices(engine)) == clean_numbers
    assert_gapless(engine)
    with engine.connect() as conn:
        statuses = dict(conn.execute(select(BillingRun.status, BillingRun.message)).all())
    # the killed one died "running"; the rerun closed it
    assert sorted(statuses) == ["completed", "failed"] and statuses["failed"] == ABANDONED
