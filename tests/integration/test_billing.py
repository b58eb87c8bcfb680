"""Billing runs end to end on every dialect, through `services.billing.run_bill`.

Set-up goes through the CLI (projects, customers, catalog, subscriptions, ingest), the run
through the service, and the assertions read the stored invoices back. Expected amounts come
from the independent biller in tests/support/workload.py: plain Decimal arithmetic from
DESIGN.md's pricing semantics, never the domain code under test.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from neruba_cli.db import locks
from neruba_cli.db.schema import BillingRun, InvoiceLine, InvoiceRevision
from neruba_cli.db.tables import invoices_t
from neruba_cli.domain import lock_names
from neruba_cli.services.billing.run import ABANDONED
from tests.support.cli import Cli
from tests.support.events import Ev, ingest, write_jsonl
from tests.support.workload import (
    OCTOBER,
    Stored,
    assert_gapless,
    base_fee,
    bill,
    check_against_independent,
    counts,
    expected_lines,
    generate,
    invoices,
    make_shop,
    population,
    reset_billing,
    reset_events,
    shop_for,
    spawn,
    stored_lines,
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
        conn.execute(update(invoices_t).values(corrects_id=None))


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

    name = lock_names.billing("acme", "2026-10")
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
