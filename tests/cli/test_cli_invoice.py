"""`neruba invoice ...` end to end on every dialect: list, show, explain, finalize, void,
verify and preview after a real `run bill`, with amounts computed by hand.

The shop (`invoice_shop` in tests/support/shops.py): project acme (UTC), plan pro (49.00 in
arrears; api_calls graduated, the first 10 free then 0.50; tokens 0.001 each past 100 free)
for c1 from October 1st, and plan basic (10.00 in arrears prorated by day; api_calls 0.10
each) for c2 from October 16th.

October by hand:
  c1: base 49.00; 25 calls → 15 × 0.50 = 7.50; tokens 100+200+50 = 350 → 250 × 0.001 = 0.25
      total 56.75
  c2: base 10.00 × 16/31 = 5.161… → 5.16; 4 calls × 0.10 = 0.40; total 5.56
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine, func, select, update

from neruba_cli.db import locks
from neruba_cli.db.schema import BillingRun, Invoice, InvoiceLine, InvoiceRevision
from tests.support.cli import Cli, ok
from tests.support.events import event_line
from tests.support.shops import C1_CALLS, C1_NOVEMBER, bill, invoice_shop

DOCUMENT_KEYS = {
    "number",
    "customer",
    "currency",
    "status",
    "period",
    "lines",
    "subtotal",
    "credits_applied",
    "total",
    "corrects",
    "run",
    "fingerprint",
    "kind",
    "label",
    "version",
    "finalized_at",
    "voided_at",
    "void_reason",
    "credits",
    "amount_paid",
    "amount_due",
    "settlement",
}
OCTOBER = {"start": "2026-10-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"}


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> Cli:
    return invoice_shop(cli, tmp_path)


def numbers(cli: Cli) -> list[str]:
    return [item["number"] for item in ok(cli, "invoice", "list")]


def counts(engine: Engine) -> tuple[int, ...]:
    with engine.connect() as conn:
        return tuple(
            conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (Invoice, InvoiceLine, InvoiceRevision, BillingRun)
        )


def test_list_and_show_follow_the_contract(shop: Cli) -> None:
    listed = ok(shop, "invoice", "list")
    assert [(i["number"], i["customer"], i["status"], i["total"]) for i in listed] == [
        ("ACME-000001", "c1", "draft", "56.75"),
        ("ACME-000002", "c2", "draft", "5.56"),
    ]
    assert listed[0]["period"] == OCTOBER and listed[0]["label"] == "2026-10"
    assert listed[0]["kind"] == "invoice" and listed[0]["corrects"] is None
    assert listed[0]["fingerprint"].startswith("sha256:") and listed[0]["version"] == 1
    assert ok(shop, "invoice", "list", "--customer", "c2") == [listed[1]]
    assert ok(shop, "invoice", "list", "--status", "finalized") == []
    assert ok(shop, "invoice", "list", "--period", "2026-09") == []
    bad = shop("invoice", "list", "--status", "open", "--project", "acme")
    assert bad.exit_code == 2
    assert "--status: 'open' is not one of: draft, finalized, void, paid" in bad.stderr

    shown = ok(shop, "invoice", "show", "ACME-000001")
    assert set(shown) == DOCUMENT_KEYS
    assert (shown["customer"], shown["currency"], shown["status"]) == ("c1", "USD", "draft")
    assert shown["period"] == OCTOBER and shown["label"] == "2026-10"
    assert (shown["subtotal"], shown["credits_applied"], shown["total"]) == (
        "56.75",
        "0.00",
        "56.75",
    )
    assert shown["corrects"] is None and shown["run"].startswith("run_")
    assert shown["fingerprint"] == listed[0]["fingerprint"]
    lines = {line["meter"] or line["kind"]: line for line in shown["lines"]}
    assert lines["base_fee"]["amount"] == "49.00"
    assert (lines["api_calls"]["quantity"], lines["api_calls"]["amount"]) == ("25", "7.50")
    assert [t["quantity"] for t in lines["api_calls"]["tiers"]] == ["10", "15"]
    assert lines["api_calls"]["events"] == {
        "count": 25,
        "first": "2026-10-02T00:00:00Z",
        "last": "2026-10-31T23:59:59Z",
    }
    assert (lines["tokens"]["quantity"], lines["tokens"]["amount"]) == ("350", "0.25")
    c2 = ok(shop, "invoice", "show", "ACME-000002")
    assert [(line["kind"], line["amount"], line["proration"]) for line in c2["lines"]] == [
        ("base_fee", "5.16", "16/31"),
        ("usage", "0.40", None),
    ]

    human = shop("invoice", "show", "ACME-000001", "--project", "acme")
    assert human.exit_code == 0
    for text in ("ACME-000001", "api_calls", "7.50", "subtotal", "56.75"):
        assert text in human.stdout
    missing = shop("invoice", "show", "ACME-999999", "--project", "acme", "--json")
    assert missing.exit_code == 1 and missing.error()["type"] == "not_found"


def test_show_is_byte_identical_for_a_finalized_invoice(shop: Cli) -> None:
    ok(shop, "invoice", "finalize", "ACME-000001")
    first = shop("invoice", "show", "ACME-000001", "--project", "acme", "--json").stdout
    assert bill(shop, "2026-10", "2026-11-03T00:00:00Z")["status"] == "unchanged"
    second = shop("invoice", "show", "ACME-000001", "--project", "acme", "--json").stdout
    assert first == second and orjson.loads(first)["finalized_at"] is not None


def test_explain_says_which_events_and_how_to_list_them(shop: Cli) -> None:
    explained = ok(shop, "invoice", "explain", "ACME-000001")
    assert explained["corrects"] is None and explained["corrected_by"] == []
    by_meter = {line["meter"] or line["kind"]: line for line in explained["lines"]}
    calls = by_meter["api_calls"]
    assert (calls["aggregation"], calls["charge_model"]) == ("count", "graduated")
    assert calls["events"]["count"] == 25
    assert calls["events"]["first"] == "2026-10-02T00:00:00Z"
    assert calls["events"]["last"] == "2026-10-31T23:59:59Z"
    assert [(t["quantity"], t["amount"]) for t in calls["tiers"]] == [("10", "0"), ("15", "7.5")]
    assert calls["credits_applied"] == "0.00" and "10 × 0 + 15 × 0.5 = 7.50 USD" in calls["why"]
    tokens = by_meter["tokens"]
    assert (tokens["free_units"], tokens["billable_quantity"]) == ("100", "250")
    assert tokens["events"]["count"] == 3
    assert by_meter["base_fee"]["proration"] == "1"

    # The command it gives really lists the line's events (and says which ones are later).
    command = calls["events"]["command"].split()
    assert command[:3] == ["neruba", "events", "list"]
    listed = shop(*command[1:], "--json")
    assert listed.exit_code == 0, listed.stderr
    stamps = [event["timestamp"] for event in listed.json()]
    in_october = [ts for ts in stamps if ts < OCTOBER["end"]]
    assert sorted(in_october) == sorted(C1_CALLS)
    assert len(stamps) == 25 + len(C1_NOVEMBER) and "newest first" in calls["events"]["note"]

    c2 = ok(shop, "invoice", "explain", "ACME-000002")
    c2_calls = next(line for line in c2["lines"] if line["meter"] == "api_calls")
    c2_listed = shop(*c2_calls["events"]["command"].split()[1:], "--json").json()
    assert len(c2_listed) == c2_calls["events"]["count"] == 4 and c2_calls["events"]["note"] is None
    human = shop("invoice", "explain", "ACME-000001", "--project", "acme")
    assert human.exit_code == 0 and "neruba events list" in human.stdout


def test_finalize_by_number_and_by_period(shop: Cli, engine: Engine) -> None:
    done = ok(shop, "invoice", "finalize", "ACME-000001")
    assert done == {
        "period": "2026-10",
        "finalized": ["ACME-000001"],
        "still_open": [],
        "unpostable": [],
    }
    shown = ok(shop, "invoice", "show", "ACME-000001")
    assert shown["status"] == "finalized" and shown["finalized_at"] is not None
    again = shop("invoice", "finalize", "ACME-000001", "--project", "acme")
    assert again.exit_code == 1 and "is finalized; only drafts can be finalized" in again.stderr

    by_period = ok(shop, "invoice", "finalize", "--period", "2026-10")
    assert by_period["finalized"] == ["ACME-000002"]
    assert ok(shop, "invoice", "finalize", "--period", "2026-10")["finalized"] == []
    both = shop("invoice", "finalize", "ACME-000001", "--period", "2026-10", "--project", "acme")
    assert both.exit_code == 2

    # An open period (November runs until December 1st) is refused, by number and by period.
    now = datetime.now(UTC)
    november = bill(shop, "current", now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert november["period"] == now.strftime("%Y-%m")
    assert numbers(shop) == [f"ACME-{n:06d}" for n in range(1, 5)]
    refused = shop("invoice", "finalize", "ACME-000003", "--project", "acme")
    assert refused.exit_code == 1 and "period has not ended yet" in refused.stderr
    refused = shop("invoice", "finalize", "--period", "current", "--project", "acme")
    assert refused.exit_code == 1 and "have not ended yet" in refused.stderr
    assert ok(shop, "invoice", "list", "--status", "draft", "--period", "current") != []

    # The month's run lock is held: exit 5, nothing written.
    lease = locks.acquire(engine, "acme:bill:2026-10", holder="someone@elsewhere:1")
    try:
        held = shop(
            "invoice", "void", "ACME-000002", "--reason", "test", "--yes", "--project", "acme"
        )
        assert held.exit_code == 5 and "someone@elsewhere:1" in held.stderr
    finally:
        locks.release(engine, lease)
    assert ok(shop, "invoice", "show", "ACME-000002")["status"] == "finalized"


def test_finalize_waits_for_no_one_while_a_run_holds_the_lock(shop: Cli, engine: Engine) -> None:
    lease = locks.acquire(engine, "acme:bill:2026-10", holder="run@cron:42")
    try:
        held = shop("invoice", "finalize", "--period", "2026-10", "--project", "acme", "--json")
        assert held.exit_code == 5 and held.error()["type"] == "lock_held"
        assert "run@cron:42" in held.error()["message"]
    finally:
        locks.release(engine, lease)
    assert ok(shop, "invoice", "list", "--status", "draft") != []
    with engine.connect() as conn:
        state = conn.execute(select(Invoice.status).order_by(Invoice.number)).scalars().all()
    assert state == ["draft", "draft"]


def test_void_needs_yes_off_a_terminal_and_keeps_the_number(shop: Cli) -> None:
    refused = shop("invoice", "void", "ACME-000002", "--reason", "duplicate", "--project", "acme")
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    assert ok(shop, "invoice", "show", "ACME-000002")["status"] == "draft"
    voided = ok(shop, "invoice", "void", "ACME-000002", "--reason", "sent twice", "--yes")
    assert (voided["status"], voided["void_reason"]) == ("void", "sent twice")
    assert voided["voided_at"] is not None and voided["number"] == "ACME-000002"
    again = shop("invoice", "void", "ACME-000002", "--reason", "x", "--yes", "--project", "acme")
    assert again.exit_code == 1 and "already void" in again.stderr
    assert numbers(shop) == ["ACME-000001", "ACME-000002"]
    # The next run gives c2 a new draft with the next number: no holes, no reuse.
    bill(shop, "2026-10", "2026-11-02T00:00:00Z")
    listed = ok(shop, "invoice", "list")
    assert [(i["number"], i["customer"], i["status"]) for i in listed] == [
        ("ACME-000001", "c1", "draft"),
        ("ACME-000002", "c2", "void"),
        ("ACME-000003", "c2", "draft"),
    ]


def test_verify_passes_then_catches_late_events_and_tampering(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    verified = ok(shop, "invoice", "verify", "--period", "2026-10")
    assert (verified["checked"], verified["ok"], verified["mismatches"]) == (2, 2, 0)
    assert all(item["checks"]["recomputed"] == "ok" for item in verified["invoices"])
    assert ok(shop, "invoice", "verify", "ACME-000001")["ok"] == 1
    ok(shop, "invoice", "finalize", "--period", "2026-10")

    # A late October event: the finalized invoice no longer matches a recomputation.
    late = tmp_path / "late.jsonl"
    late.write_bytes(event_line("c1-late", "c1", "api_calls", "2026-10-15T00:00:00Z") + b"\n")
    ok(shop, "ingest", str(late))
    found = shop("invoice", "verify", "--period", "2026-10", "--project", "acme", "--json")
    assert found.exit_code == 4
    first = found.json()["invoices"][0]
    assert first["result"] == "mismatch" and "api_calls: +1 events" in first["problems"][0]
    # The run writes the correction; then the period verifies again.
    assert bill(shop, "2026-10", "2026-11-05T00:00:00Z")["corrections"] == 1
    correction = ok(shop, "invoice", "show", "ACME-000003")
    assert (correction["kind"], correction["corrects"], correction["total"]) == (
        "supplemental",
        "ACME-000001",
        "0.50",
    )
    explained = ok(shop, "invoice", "explain", "ACME-000001")
    assert explained["corrected_by"] == [{"number": "ACME-000003", "status": "draft"}]
    assert ok(shop, "invoice", "explain", "ACME-000003")["corrects"] == "ACME-000001"
    verified = ok(shop, "invoice", "verify", "--period", "2026-10")
    assert verified["mismatches"] == 0 and verified["checked"] == 3
    superseded = verified["invoices"][0]
    assert superseded["checks"]["recomputed"] == "skipped"
    assert "superseded by ACME-000003" in superseded["notes"][0]
    assert verified["invoices"][2]["checks"]["recomputed"] == "ok"

    # Tamper with a stored document, then with a fingerprint.
    with engine.begin() as conn:
        content = orjson.loads(
            conn.execute(select(Invoice.content).where(Invoice.number == "ACME-000002")).scalar()
        )
        content["lines"][1]["amount"] = "0.04"
        conn.execute(
            update(Invoice)
            .where(Invoice.number == "ACME-000002")
            .values(content=orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode())
        )
    tampered = shop("invoice", "verify", "ACME-000002", "--project", "acme", "--json")
    assert tampered.exit_code == 4
    verdict = tampered.json()["invoices"][0]
    assert verdict["checks"]["document"] == "mismatch"
    assert verdict["checks"]["recomputed"] == "mismatch"
    assert "pricing differs for the same inputs" in " ".join(verdict["problems"])
    with engine.begin() as conn:
        conn.execute(
            update(Invoice)
            .where(Invoice.number == "ACME-000003")
            .values(fingerprint="sha256:" + "0" * 64)
        )
    forged = shop("invoice", "verify", "ACME-000003", "--project", "acme", "--json")
    assert forged.exit_code == 4
    assert forged.json()["invoices"][0]["checks"]["fingerprint"] == "mismatch"
    human = shop("invoice", "verify", "--period", "2026-10", "--project", "acme")
    assert human.exit_code == 4 and "mismatch" in human.stdout
    assert numbers(shop) == ["ACME-000001", "ACME-000002", "ACME-000003"]


def test_preview_writes_nothing_and_matches_a_hand_computation(shop: Cli, engine: Engine) -> None:
    before = counts(engine)
    preview = ok(shop, "invoice", "preview", "c1", "--at", "2026-11-20T00:00:00Z")
    assert counts(engine) == before
    assert set(preview) == DOCUMENT_KEYS | {"at"}
    assert (preview["number"], preview["status"], preview["label"]) == (None, "preview", "2026-11")
    assert preview["period"] == {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}
    # 49.00 base; 12 November calls: 10 free, 2 × 0.50 = 1.00; no tokens
    assert [line["amount"] for line in preview["lines"]] == ["49.00", "1.00", "0.00"]
    assert preview["total"] == "50.00"
    # The same code path as a run: previewing October gives the stored draft's fingerprint.
    october = ok(shop, "invoice", "preview", "c1", "--at", "2026-10-20T00:00:00Z")
    stored = ok(shop, "invoice", "show", "ACME-000001")
    assert october["fingerprint"] == stored["fingerprint"]
    assert october["lines"] == stored["lines"] and october["total"] == "56.75"
    c2 = ok(shop, "invoice", "preview", "c2", "--at", "2026-11-20T00:00:00Z")
    assert (c2["total"], c2["lines"][0]["proration"]) == ("10.00", "1")
    assert counts(engine) == before
    nobody = shop("invoice", "preview", "c1", "--at", "2026-09-01T00:00:00Z", "--project", "acme")
    assert nobody.exit_code == 1 and "no billing period containing" in nobody.stderr
    human = shop("invoice", "preview", "c1", "--at", "2026-11-20T00:00:00Z", "--project", "acme")
    assert human.exit_code == 0 and "50.00" in human.stdout


def test_numbers_are_gapless(shop: Cli) -> None:
    now = datetime.now(UTC)
    bill(shop, "current", (now - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert numbers(shop) == [f"ACME-{n:06d}" for n in range(1, 5)]
