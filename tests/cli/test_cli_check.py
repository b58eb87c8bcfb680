"""`neruba check`'s invoice, event and import sweeps end to end on every dialect: a realistic
month (ingest, `run bill --finalize`, late events and reruns under each `late_events` policy)
passes, and each kind of tampering fails with exit 4 naming exactly that problem.

The shop is `invoice_shop` (tests/support/shops.py): c1 on pro (28 October events: 25
api_calls and 3 tokens; 12 November calls), c2 on basic (4 October calls), October billed as
drafts ACME-000001 (c1) and ACME-000002 (c2).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from neruba_cli.db.schema import Customer, Event, ImportBatch, Invoice, InvoiceLine, Project
from neruba_cli.domain.consistency import InvoiceFacts, repeated_revisions
from tests.support.cli import Cli, ok
from tests.support.events import event_line
from tests.support.shops import bill, invoice_shop

OCTOBER_OVER = "2026-11-02T00:00:00Z"
NOVEMBER_OVER = "2026-12-02T00:00:00Z"
NEW_SWEEPS = ("invoices.lines", "invoices.corrections", "events.billed", "ingest.batches")


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> Cli:
    """The invoice shop, October billed as drafts."""
    return invoice_shop(cli, tmp_path)


def check(cli: Cli) -> tuple[int, dict[str, Any]]:
    result = cli("check", "--project", "acme", "--json")
    assert result.exit_code in (0, 4), (result.stdout, result.stderr)
    return result.exit_code, result.json()


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in report["checks"]}


def passes(cli: Cli) -> dict[str, dict[str, Any]]:
    code, report = check(cli)
    failing = {c["name"]: c["details"] for c in report["checks"] if c["status"] == "fail"}
    assert code == 0 and report["ok"] and not failing, failing
    checks = by_name(report)
    assert set(NEW_SWEEPS) <= set(checks)
    return checks


def failing(cli: Cli) -> dict[str, list[str]]:
    """The failing sweeps and their problem lines (exit 4)."""
    code, report = check(cli)
    assert code == 4 and not report["ok"], report
    found = {c["name"]: c["details"] for c in report["checks"] if c["status"] == "fail"}
    assert report["problems"] == sum(len(details) for details in found.values())
    return found


def late(cli: Cli, tmp_path: Path, name: str, *events: tuple[str, str, str]) -> None:
    """Late October calls (key, customer, timestamp) through `neruba ingest`."""
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"".join(event_line(k, c, "api_calls", ts) + b"\n" for k, c, ts in events))
    assert ok(cli, "ingest", str(path))["accepted"] == len(events)


def finalize_october(cli: Cli) -> list[str]:
    report = ok(cli, "run", "bill", "--period", "2026-10", "--as-of", OCTOBER_OVER, "--finalize")
    return list(report["finalized"])


def invoice_id(engine: Engine, number: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(select(Invoice.id).where(Invoice.number == number)).scalar_one())


def store_call(conn: Connection, project_id: str, key: str, customer_id: str, at: datetime) -> None:
    """An api_calls event written straight to the table, past `neruba ingest`'s checks,
    received a day after it happened."""
    conn.execute(
        insert(Event).values(
            project_id=project_id,
            idempotency_key=key,
            customer_id=customer_id,
            meter="api_calls",
            ts=at,
            quantity=Decimal(1),
            properties="{}",
            payload_hash="0" * 64,
            received_at=at + timedelta(days=1),
        )
    )


def corrected_october(cli: Cli, tmp_path: Path) -> None:
    """October finalized, then 2 late calls of c1 and 1 of c2 corrected by a rerun:
    ACME-000003 (c1, +1.00) and ACME-000004 (c2, +0.10), both supplemental."""
    finalize_october(cli)
    late(
        cli,
        tmp_path,
        "late",
        ("c1-late-1", "c1", "2026-10-20T10:00:00Z"),
        ("c1-late-2", "c1", "2026-10-21T10:00:00Z"),
        ("c2-late-1", "c2", "2026-10-22T10:00:00Z"),
    )
    assert bill(cli, "2026-10", OCTOBER_OVER)["corrections"] == 2
    finalize_october(cli)
    listed = {i["number"]: i for i in ok(cli, "invoice", "list")}
    assert (listed["ACME-000003"]["kind"], listed["ACME-000003"]["total"]) == (
        "supplemental",
        "1.00",
    )
    assert (listed["ACME-000004"]["corrects"], listed["ACME-000004"]["total"]) == (
        "ACME-000002",
        "0.10",
    )


# --------------------------------------------------------------------------- clean months


@pytest.mark.parametrize("policy", ["correct", "next_invoice", "ignore"])
def test_a_month_with_late_events_passes_under_each_policy(
    shop: Cli, engine: Engine, tmp_path: Path, policy: str
) -> None:
    checks = passes(shop)  # October drafts
    assert [checks[name]["checked"] for name in NEW_SWEEPS] == [2, 2, 2, 1]
    assert checks["events.billed"]["notes"] == []
    ok(shop, "project", "update", "acme", "--late-events", policy)
    assert finalize_october(shop) == ["ACME-000001", "ACME-000002"]
    passes(shop)

    late(
        shop,
        tmp_path,
        "late",
        ("c1-late-1", "c1", "2026-10-20T10:00:00Z"),
        ("c2-late-1", "c2", "2026-10-22T10:00:00Z"),
    )
    notes = passes(shop)["events.billed"]["notes"]  # awaiting a rerun: noted, not failed
    assert len(notes) == 2, notes
    assert notes[0].startswith("c1 2026-10: 1 event stored after ACME-000001 was computed")
    assert notes[1].startswith("c2 2026-10: 1 event stored after ACME-000002 was computed")
    expected_tail = {
        "correct": "`neruba run bill --period 2026-10` corrects it",
        "ignore": "policy ignore: `neruba run bill --period 2026-10` books them without billing",
        "next_invoice": "policy next_invoice: the next month's run carries them",
    }[policy]
    assert all(note.endswith(expected_tail) for note in notes), notes

    report = bill(shop, "2026-10", OCTOBER_OVER)
    finalize_october(shop)
    if policy == "next_invoice":
        assert report["corrections"] == 0
        november = bill(shop, "2026-11", NOVEMBER_OVER)
        assert november["invoices"] == 2, november
    checks = passes(shop)
    notes = checks["events.billed"]["notes"]
    kinds = sorted(i["kind"] for i in ok(shop, "invoice", "list"))
    if policy == "correct":
        assert report["corrections"] == 2 and notes == []
        assert kinds == ["invoice", "invoice", "supplemental", "supplemental"]
        assert checks["invoices.corrections"]["checked"] == 4
    elif policy == "ignore":
        assert report["corrections"] == 0 and notes == [] and kinds == ["invoice"] * 2
    else:
        # The late events stay uncounted on October's invoices: November's carry them.
        assert notes == [
            "c1 2026-10: 1 event stored after ACME-000001 was computed; policy next_invoice "
            "carried them onto ACME-000003",
            "c2 2026-10: 1 event stored after ACME-000002 was computed; policy next_invoice "
            "carried them onto ACME-000004",
        ]
        carried = ok(shop, "invoice", "show", "ACME-000003")["lines"]
        assert [line["late_from"] for line in carried if line.get("late_from")] == ["ACME-000001"]
    assert checks["ingest.batches"]["checked"] == 2


def test_the_human_report_is_a_table_with_problem_lines_and_notes(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    late(shop, tmp_path, "late", ("c2-late-1", "c2", "2026-10-22T10:00:00Z"))
    clean = shop("check", "--project", "acme")
    assert clean.exit_code == 0, clean.stderr
    for name in NEW_SWEEPS:
        assert name in clean.stdout
    assert (
        "events.billed (note): c2 2026-10: 1 event stored after ACME-000002 was computed; "
        "`neruba run bill --period 2026-10` counts them"
    ) in clean.stdout.replace("\n", " ").replace("  ", " ")
    with engine.begin() as conn:
        conn.execute(update(ImportBatch).values(lines=ImportBatch.lines + 1))
    human = shop("check", "--project", "acme")
    assert human.exit_code == 4 and "2 discrepancies found" in human.stderr
    assert "ingest.batches: import" in human.stdout and "read 45 lines" in human.stdout


def test_finalizing_with_credit_after_new_events_is_no_fault(shop: Cli, tmp_path: Path) -> None:
    """Finalization writes a new version (the credit it applied) later than the count: the
    events that arrived in between are awaiting a rerun, not "never counted"."""
    ok(shop, "credits", "grant", "c1", "10.00")
    late(shop, tmp_path, "late", ("c1-late-1", "c1", "2026-10-20T10:00:00Z"))
    ok(shop, "invoice", "finalize", "--period", "2026-10")
    shown = ok(shop, "invoice", "show", "ACME-000001")
    assert (shown["status"], shown["credits_applied"], shown["version"]) == (
        "finalized",
        "10.00",
        2,
    )
    assert passes(shop)["events.billed"]["notes"] == [
        "c1 2026-10: 1 event stored after ACME-000001 was computed; "
        "`neruba run bill --period 2026-10` corrects it"
    ]
    assert bill(shop, "2026-10", OCTOBER_OVER)["corrections"] == 1
    assert passes(shop)["events.billed"]["notes"] == []


# --------------------------------------------------------------------------- invoices.lines


def test_a_line_row_that_differs_from_its_document_fails(shop: Cli, engine: Engine) -> None:
    finalize_october(shop)
    c1 = invoice_id(engine, "ACME-000001")
    with engine.begin() as conn:
        conn.execute(
            update(InvoiceLine)
            .where(InvoiceLine.invoice_id == c1, InvoiceLine.position == 2)
            .values(amount=Decimal("8.50"))
        )
    found = failing(shop)
    assert found == {
        "invoices.lines": [
            "invoice ACME-000001: line 2: the row's amount is 8.50, its document's 7.50",
            "invoice ACME-000001: its line rows add up to 57.75, its subtotal says 56.75",
        ]
    }
    with engine.begin() as conn:
        conn.execute(
            update(InvoiceLine)
            .where(InvoiceLine.invoice_id == c1, InvoiceLine.position == 2)
            .values(amount=Decimal("7.50"), event_count=24)
        )
    assert failing(shop) == {
        "invoices.lines": [
            "invoice ACME-000001: line 2: the row's event count is 24, its document's 25"
        ]
    }
    with engine.begin() as conn:
        conn.execute(
            update(InvoiceLine)
            .where(InvoiceLine.invoice_id == c1, InvoiceLine.position == 2)
            .values(event_count=25)
        )
        conn.execute(
            delete(InvoiceLine).where(InvoiceLine.invoice_id == c1, InvoiceLine.position == 3)
        )
    assert failing(shop) == {
        "invoices.lines": [
            "invoice ACME-000001: has 2 line rows but its document has 3 lines",
            "invoice ACME-000001: its line rows add up to 56.50, its subtotal says 56.75",
        ]
    }


# --------------------------------------------------------------------------- corrections


def test_corrections_must_link_to_the_final_invoice_they_correct(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    corrected_october(shop, tmp_path)
    checks = passes(shop)
    assert checks["invoices.corrections"]["checked"] == 4
    c1, c2 = invoice_id(engine, "ACME-000001"), invoice_id(engine, "ACME-000002")

    with engine.begin() as conn:
        conn.execute(
            update(Invoice).where(Invoice.number == "ACME-000003").values(corrects_id=None)
        )
    assert failing(shop) == {
        "invoices.corrections": [
            "invoice ACME-000003: is a supplemental that corrects no invoice (corrects_id is empty)"
        ]
    }
    with engine.begin() as conn:
        conn.execute(update(Invoice).where(Invoice.number == "ACME-000003").values(corrects_id=c2))
    assert failing(shop) == {
        "invoices.corrections": [
            "invoice ACME-000003: corrects ACME-000002 of another customer: c1 here, c2 there",
        ]
    }
    with engine.begin() as conn:
        conn.execute(update(Invoice).where(Invoice.number == "ACME-000003").values(corrects_id=c1))
        conn.execute(update(Invoice).where(Invoice.number == "ACME-000002").values(corrects_id=c1))
        conn.execute(update(Invoice).where(Invoice.number == "ACME-000002").values(revision=5))
        conn.execute(update(Invoice).where(Invoice.number == "ACME-000004").values(revision=0))
    assert failing(shop) == {
        "invoices.corrections": [
            "invoice ACME-000002: is a plain invoice but is linked as a correction of ACME-000001",
            "invoice ACME-000004: is a supplemental at revision 0; corrections start at 1",
            "invoice ACME-000004: is revision 0 but corrects ACME-000002 at revision 5",
        ]
    }


def test_a_repeated_revision_is_reported() -> None:
    """The unique key refuses a repeated revision in the database; the rule still says it."""
    moment = datetime(2026, 10, 1, tzinfo=UTC)
    facts = [
        InvoiceFacts(f"inv_{n}", f"ACME-00000{n}", "c1", "cus_1", "2026-10", moment, moment,
                     "USD", kind, "finalized", 1 if n > 1 else 0, Decimal(1), None, 3)
        for n, kind in ((1, "invoice"), (2, "supplemental"), (3, "supplemental"))
    ]  # fmt: skip
    assert repeated_revisions(facts) == [
        "ACME-000003 and ACME-000002 are both revision 1 of c1's period 2026-10"
    ]


# --------------------------------------------------------------------------- events.billed


def test_events_counted_twice_or_never_fail(shop: Cli, engine: Engine, tmp_path: Path) -> None:
    corrected_october(shop, tmp_path)
    assert passes(shop)["events.billed"]["checked"] == 4

    # The correction claims an event the database does not hold: counted twice.
    with engine.begin() as conn:
        conn.execute(
            update(Invoice)
            .where(Invoice.number == "ACME-000003")
            .values(event_count=Invoice.event_count + 1)
        )
    assert failing(shop) == {
        "events.billed": [
            "invoice ACME-000003: counts 31 events but its period holds 30: events were "
            "deleted or counted twice"
        ]
    }
    # An event stored before the correction was computed that it does not count: never billed.
    with engine.begin() as conn:
        conn.execute(
            update(Invoice)
            .where(Invoice.number == "ACME-000003")
            .values(event_count=Invoice.event_count - 1)
        )
        project_id = conn.execute(select(Project.id)).scalar_one()
        customer_id = conn.execute(
            select(Customer.id).where(Customer.external_id == "c1")
        ).scalar_one()
        store_call(conn, project_id, "slipped-in", customer_id, datetime(2026, 10, 25, tzinfo=UTC))
    assert failing(shop) == {
        "events.billed": [
            "invoice ACME-000001: was computed after 29 events of its period were stored but "
            "counts 28: 1 never counted",
            "invoice ACME-000003: was computed after 31 events of its period were stored but "
            "counts 30: 1 never counted",
        ]
    }
    with engine.begin() as conn:
        conn.execute(delete(Event).where(Event.idempotency_key == "slipped-in"))
    passes(shop)

    # The correction turned into a second plain invoice of c2's October: billed twice.
    with engine.begin() as conn:
        conn.execute(
            update(Invoice)
            .where(Invoice.number == "ACME-000004")
            .values(kind="invoice", corrects_id=None)
        )
    assert failing(shop) == {
        "events.billed": [
            "ACME-000002 and ACME-000004 are all live invoices of c2's period 2026-10: its "
            "events are counted 2 times"
        ]
    }


def test_a_usage_line_counting_more_events_than_stored_fails(shop: Cli, engine: Engine) -> None:
    with engine.begin() as conn:
        stored = conn.execute(select(Invoice.content).where(Invoice.number == "ACME-000002"))
        content = orjson.loads(stored.scalar_one())
        line = next(line for line in content["lines"] if line["kind"] == "usage")
        line["events"]["count"] = 5
        conn.execute(
            update(Invoice)
            .where(Invoice.number == "ACME-000002")
            .values(content=orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode())
        )
        conn.execute(
            update(InvoiceLine)
            .where(InvoiceLine.invoice_id == invoice_id(engine, "ACME-000002"))
            .where(InvoiceLine.kind == "usage")
            .values(event_count=5)
        )
    assert failing(shop) == {
        "events.billed": [
            "invoice ACME-000002: line 'api_calls' counts 5 api_calls events but only 4 are "
            "stored in its period"
        ]
    }


# --------------------------------------------------------------------------- ingest.batches


def test_import_receipts_must_count_what_they_stored(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    charges = tmp_path / "charges.jsonl"
    charge = {
        "type": "charge",
        "idempotency_key": "setup-c2",
        "customer": "c2",
        "amount": "25.00",
        "description": "Setup",
        "timestamp": "2026-11-03T00:00:00Z",
    }
    lines = [
        orjson.dumps(charge),
        event_line("c2-nov-1", "c2", "api_calls", "2026-11-04T00:00:00Z"),
    ]
    charges.write_bytes(b"\n".join([*lines, lines[1], b"{not json"]) + b"\n")
    result = shop("ingest", str(charges), "--project", "acme", "--json")
    assert result.exit_code == 3, result.stderr  # the bad line is rejected
    receipt = result.json()
    assert (receipt["accepted"], receipt["duplicates"], receipt["rejected"]) == (2, 1, 1)
    assert passes(shop)["ingest.batches"]["checked"] == 2
    first, second = (row["batch"] for row in ok(shop, "events", "receipts")[::-1])
    assert second == receipt["batch"]

    # A November event of the first (completed) import disappears.
    with engine.begin() as conn:
        conn.execute(delete(Event).where(Event.idempotency_key == "c1-nov-0"))
    assert failing(shop) == {
        "ingest.batches": [
            f"import {first} ({found_source(engine, first)}) accepted 44 lines but 43 rows carry it"
        ]
    }

    # A receipt that lost count of a line.
    with engine.begin() as conn:
        conn.execute(update(ImportBatch).where(ImportBatch.id == second).values(rejected=0))
    found = failing(shop)
    assert found["ingest.batches"][1] == (
        f"import {second} ({found_source(engine, second)}) read 4 lines but classified 3 "
        "(2 accepted, 1 duplicates, 0 conflicts, 0 rejected)"
    )

    # A killed import: running is fine while it claims no more than it stored.
    with engine.begin() as conn:
        conn.execute(
            update(ImportBatch)
            .where(ImportBatch.id == second)
            .values(status="running", rejected=1, finished_at=None)
        )
        conn.execute(
            update(ImportBatch).where(ImportBatch.id == first).values(accepted=43, lines=43)
        )
    notes = passes(shop)["ingest.batches"]["notes"]
    assert len(notes) == 1 and notes[0].startswith(f"import {second} (")
    assert "with 2 rows stored: still going, or killed" in notes[0]
    with engine.begin() as conn:
        conn.execute(update(ImportBatch).where(ImportBatch.id == second).values(accepted=3))
    assert failing(shop) == {
        "ingest.batches": [
            f"import {second} ({found_source(engine, second)}) is running and claims 3 "
            "accepted lines but only 2 rows carry it"
        ]
    }


def found_source(engine: Engine, batch: str) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(select(ImportBatch.source).where(ImportBatch.id == batch)).scalar_one()
        )


def test_counts_in_a_fresh_project_are_zero(cli: Cli) -> None:
    assert cli("project", "create", "acme", "--timezone", "UTC").exit_code == 0
    checks = passes(cli)
    assert [checks[name]["checked"] for name in NEW_SWEEPS] == [0, 0, 0, 0]
    assert all(checks[name]["notes"] == [] for name in NEW_SWEEPS)


def test_every_event_must_name_a_customer_of_its_project(shop: Cli, engine: Engine) -> None:
    """The events table has no foreign keys (revision 0014): the sweep holds the rule they
    held, and a stricter one (the customer is the event's project's)."""
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(Event)).scalar_one()
    assert passes(shop)["events.customers"]["checked"] == stored

    assert shop("project", "create", "beta").exit_code == 0
    ok(shop, "customer", "create", "b1", project="beta")
    with engine.begin() as conn:
        acme = conn.execute(select(Project.id).where(Project.slug == "acme")).scalar_one()
        b1 = conn.execute(select(Customer.id).where(Customer.external_id == "b1")).scalar_one()
        for key, customer in (("elsewhere", b1), ("nobody", "cus_01m9000000000000000000000")):
            store_call(conn, acme, key, customer, datetime(2026, 11, 25, tzinfo=UTC))
    assert failing(shop) == {
        "events.customers": [
            f"event 'elsewhere' names customer {b1}, not one of this project's",
            "event 'nobody' names customer cus_01m9000000000000000000000, not one of this "
            "project's",
        ]
    }
