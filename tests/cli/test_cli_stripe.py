"""Stripe push, pull, webhooks and reconciliation, end to end on every dialect.

Neruba talks to `tests/fakes/stripe/` (a Stripe-compatible server on 127.0.0.1, the `stripe`
fixture) through the real `stripe` SDK; the server can fail requests on purpose (429, 500, a
timeout or a dropped connection after applying the request, a hang while the test kills the
client).

The shop: project acme (UTC), plan pro at 49.00 a month in arrears, prorated by day; customer
cNN starts on October (NN % 28) + 1, so every October invoice has its own total.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from neruba_cli.domain import stripe_keys, stripe_link
from neruba_cli.domain.webhook_signature import sign
from neruba_cli.services.stripe import gateway as stripe_gateway
from tests.fakes.stripe import FakeStripe, Fault
from tests.support.cli import Cli, expect, ok
from tests.support.fake_stripe import API_KEY, SECRET
from tests.support.shops import PERIOD, finalize_month, pro_and_gulf, subscribed_shop
from tests.support.values import minor

ROOT = Path(__file__).resolve().parents[2]
CATALOG = pro_and_gulf()


def checked(cli: Cli) -> None:
    report = ok(cli, "check")
    assert report["ok"], report


def bill(cli: Cli) -> list[dict[str, Any]]:
    """October finalized; its invoices."""
    finalize_month(cli)
    return list(ok(cli, "invoice", "list", "--period", PERIOD))


def live_invoices(server: FakeStripe) -> list[dict[str, Any]]:
    return [i for i in server.objects("invoice") if i["status"] != "void"]


def kinds(report: dict[str, Any]) -> list[tuple[str, str | None]]:
    return sorted((d["kind"], d["invoice"]) for d in report["discrepancies"])


def spawn(db_url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "neruba_cli", *args, "--db", db_url, "--project", "acme"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "TERM": "dumb"},
    )


def kill_when_hung(cli: Cli, server: FakeStripe, process: subprocess.Popen[str]) -> None:
    """SIGKILL the push while Stripe holds one of its requests (applied, not answered). Its
    lock still names the dead process; the next push on this host takes it over."""
    if not server.hung.wait(timeout=120):
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the push never reached the fault: {out[-2000:]} {err[-2000:]}")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    server.release()
    time.sleep(0.1)
    server.hung.clear()
    held = {lock["name"]: lock["holder"] for lock in ok(cli, "locks", "list")}
    assert held["acme:stripe:push"].endswith(f":{process.pid}")


# --------------------------------------------------------------------------- acceptance


def test_push_killed_twice_then_reconcile_finds_exactly_the_planted_differences(
    cli: Cli, tmp_path: Path, stripe: FakeStripe
) -> None:
    """The issue's scenario: 50 invoices, a push killed half-way (twice: after Stripe made an
    invoice, and between two invoice items), pushed again → exactly 50 Stripe invoices with
    the right totals; then Stripe-side changes that reconcile lists exactly, and exit 0 once
    they are resolved."""
    names = subscribed_shop(cli, tmp_path, 50, CATALOG)
    for name in names[::7]:  # some invoices carry a credits line: two items
        ok(cli, "credits", "grant", name, "5.00")
    rows = bill(cli)
    assert len(rows) == 50 and {r["status"] for r in rows} == {"finalized"}
    totals = {r["number"]: r["total"] for r in rows}
    assert len(set(totals.values())) > 20  # prorations differ

    stripe.add_fault(Fault("POST", "/v1/invoices", "hang", skip=11, after_apply=True))
    first = spawn(cli.db_url or "", "stripe", "push", "--period", PERIOD)
    kill_when_hung(cli, stripe, first)
    assert len(stripe.objects("invoice")) == 12  # the 12th was made, its answer never came
    stripe.add_fault(Fault("POST", "/v1/invoiceitems", "hang", skip=20, after_apply=True))
    second = spawn(cli.db_url or "", "stripe", "push", "--period", PERIOD)
    kill_when_hung(cli, stripe, second)
    assert 12 <= len(stripe.objects("invoice")) < 50

    pushed = ok(cli, "stripe", "push", "--period", PERIOD)
    assert pushed["failed"] == 0 and pushed["invoices"] == 50
    made = stripe.objects("invoice")
    assert len(made) == 50, "a resumed push created an invoice twice"
    by_number = {i["metadata"]["neruba_invoice"]: i for i in made}
    assert set(by_number) == set(totals)
    for number, invoice in by_number.items():
        assert invoice["status"] == "open"
        assert invoice["total"] == minor(totals[number]), number
        assert invoice["metadata"]["neruba_project"] == "acme"
        assert invoice["metadata"]["neruba_period"] == PERIOD
    items = stripe.objects("invoiceitem")
    assert len(items) == 50 + len(names[::7])  # one per line, plus the credits lines
    assert len(stripe.objects("customer")) == 50
    again = ok(cli, "stripe", "push", "--period", PERIOD)
    assert again["counts"] == {"up_to_date": 50}
    assert len(stripe.objects("invoice")) == 50 and len(stripe.objects("invoiceitem")) == len(items)

    assert ok(cli, "reconcile", "stripe", "--period", PERIOD, "--pull")["matched"] == 50
    numbers = sorted(by_number)
    paid, voided, changed, deleted = numbers[0:3], numbers[3], numbers[4], numbers[5]
    for number in paid:
        stripe.pay_invoice(by_number[number]["id"])
    stripe.void_invoice(by_number[voided]["id"])
    stripe.set_invoice_total(by_number[changed]["id"], minor(totals[changed]) + 100)
    stripe.delete_invoice(by_number[deleted]["id"])

    report = expect(cli, 4, "reconcile", "stripe", "--period", PERIOD, "--pull")
    assert kinds(report) == sorted(
        [("status_mismatch", n) for n in paid]
        + [("status_mismatch", voided), ("amount_mismatch", changed)]
        + [("missing_in_stripe", deleted)]
    )
    assert report["matched"] == 44
    mismatch = next(d for d in report["discrepancies"] if d["kind"] == "amount_mismatch")
    assert (mismatch["difference"], mismatch["at_stake"]) == ("1.00", "1.00")
    assert mismatch["stripe_invoice"] == by_number[changed]["id"]
    status = {d["invoice"]: d for d in report["discrepancies"] if d["kind"] == "status_mismatch"}
    assert status[paid[0]]["stripe"]["status"] == "paid"
    assert status[paid[0]]["neruba"]["status"] == "finalized"
    assert status[voided]["stripe"]["status"] == "void"
    gone = next(d for d in report["discrepancies"] if d["kind"] == "missing_in_stripe")
    assert gone["reason"] == "deleted_in_stripe" and gone["stripe_invoice"] is None
    expected_stake = (
        sum(minor(totals[n]) for n in paid) + minor(totals[voided]) + 100 + minor(totals[deleted])
    )
    assert report["at_stake"] == {"USD": f"{Decimal(expected_stake) / 100:.2f}"}
    human = cli("reconcile", "stripe", "--period", PERIOD, "--project", "acme")
    assert human.exit_code == 4
    assert "44 matched" in human.stdout and "missing_in_stripe" in human.stdout

    # resolve: apply the payments, follow Stripe's void, replace the changed one, re-push
    pulled = ok(cli, "stripe", "pull")
    assert len(pulled["applied"]) == 3 and not pulled["errors"]
    assert {ok(cli, "invoice", "show", n)["status"] for n in paid} == {"paid"}
    ok(cli, "invoice", "void", voided, "--reason", "voided in Stripe", "--yes")
    fixed = ok(cli, "stripe", "push", "--period", PERIOD, "--replace", changed)
    actions = {o["invoice"]: o["action"] for o in fixed["outcomes"]}
    assert (actions[changed], actions[deleted], actions[voided]) == (
        "replaced",
        "recreated",
        "voided",
    )
    clean = ok(cli, "reconcile", "stripe", "--period", PERIOD, "--pull")
    assert clean["discrepancies"] == [] and clean["matched"] == 50
    assert len(live_invoices(stripe)) == 49  # the voided one stays void, 2 were made anew
    checked(cli)


# --------------------------------------------------------------------------- push


def test_dry_run_calls_nothing_and_a_second_push_changes_nothing(
    cli: Cli, tmp_path: Path, stripe: FakeStripe
) -> None:
    subscribed_shop(cli, tmp_path, 3, CATALOG)
    bill(cli)
    plan = ok(cli, "stripe", "push", "--period", PERIOD, "--dry-run")
    assert plan["dry_run"] is True and plan["counts"] == {"created": 3}
    assert stripe.requests == []
    first = ok(cli, "stripe", "push", "--period", PERIOD)
    assert first["counts"] == {"created": 3}
    customers = {c["metadata"]["neruba_customer"]: c["id"] for c in stripe.objects("customer")}
    assert set(customers) == {"c01", "c02", "c03"}
    assert ok(cli, "customer", "show", "c02")["stripe_id"] == customers["c02"]
    posts = len([r for r in stripe.requests if r.method == "POST"])
    assert ok(cli, "stripe", "push", "--period", PERIOD)["counts"] == {"up_to_date": 3}
    assert len([r for r in stripe.requests if r.method == "POST"]) == posts
    assert ok(cli, "stripe", "push", "--period", PERIOD, "--dry-run")["counts"] == {"up_to_date": 3}
    keys = [r.idempotency_key for r in stripe.requests if r.method == "POST"]
    assert all(key and key.startswith("neruba:") for key in keys)
    parsed = [stripe_keys.parse(key or "") for key in keys]
    assert {type(key).__name__ for key in parsed} == {"CustomerKey", "StepKey"}
    assert all(key.format == 2 for key in parsed if isinstance(key, stripe_keys.StepKey))
    assert any(":ACME-000001:v" in key and key.endswith(":finalize") for key in keys if key)


def _format_1_step_key(invoice: stripe_link.PushedInvoice, step: str) -> str:
    """The request keys pushes sent before the key format carried its number."""
    generation = f":g{invoice.generation}" if invoice.generation else ""
    return f"neruba:{invoice.project_id}:{invoice.number}:v{invoice.version}{generation}:{step}"


def test_a_push_stopped_before_the_key_format_changed_creates_nothing_twice(
    cli: Cli, tmp_path: Path, stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push of an earlier version made the Stripe invoice but never heard back; the push
    resumed after the upgrade sends other keys, and finds that invoice by its metadata."""
    subscribed_shop(cli, tmp_path, 2, CATALOG)
    bill(cli)
    monkeypatch.setenv("NERUBA_STRIPE_MAX_RETRIES", "1")
    with monkeypatch.context() as earlier:
        earlier.setattr(stripe_link, "idempotency_key", _format_1_step_key)
        stripe.add_fault(Fault("POST", "/v1/invoices", "drop", after_apply=True, times=2))
        error = expect(cli, 1, "stripe", "push", "--period", PERIOD)
    assert error["type"] == "stripe_error"
    made = stripe.objects("invoice")
    assert len(made) == 1 and made[0]["metadata"]["neruba_invoice"] == "ACME-000001"
    sent = {r.idempotency_key for r in stripe.requests if r.path == "/v1/invoices"}
    assert {stripe_keys.parse(key or "").format for key in sent} == {1}

    report = ok(cli, "stripe", "push", "--period", PERIOD)
    assert {o["invoice"]: o["action"] for o in report["outcomes"]} == {
        "ACME-000001": "resumed",
        "ACME-000002": "created",
    }
    assert len(stripe.objects("invoice")) == 2, "the resumed push created ACME-000001 twice"
    assert [i["status"] for i in stripe.objects("invoice")] == ["open", "open"]
    assert len(stripe.objects("invoiceitem")) == 2
    checked(cli)


def test_retries_ride_out_rate_limits_errors_timeouts_and_dropped_connections(
    cli: Cli, tmp_path: Path, stripe: FakeStripe
) -> None:
    subscribed_shop(cli, tmp_path, 4, CATALOG)
    rows = bill(cli)
    stripe.add_fault(Fault("POST", "/v1/customers", "429", times=2))
    stripe.add_fault(Fault("POST", "/v1/invoices", "500", skip=1))
    stripe.add_fault(Fault("POST", "/v1/invoices", "timeout", skip=2, after_apply=True))
    stripe.add_fault(Fault("POST", "/v1/invoiceitems", "drop", skip=1, after_apply=True))
    stripe.add_fault(Fault("POST", r"/v1/invoices/[^/]+/finalize", "drop", after_apply=True))
    report = ok(cli, "stripe", "push", "--period", PERIOD)
    assert report["counts"] == {"created": 4}
    assert len(stripe.objects("invoice")) == 4 and len(stripe.objects("invoiceitem")) == 4
    assert len(stripe.objects("customer")) == 4
    assert {i["status"] for i in stripe.objects("invoice")} == {"open"}
    assert sorted(i["total"] for i in stripe.objects("invoice")) == sorted(
        minor(r["total"]) for r in rows
    )
    assert any(r.replayed for r in stripe.requests), "a retried request was not replayed"
    assert [r.status for r in stripe.requests].count(429) == 2


def test_stripe_that_never_answers_stops_the_push_and_a_rerun_finishes(
    cli: Cli, tmp_path: Path, stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscribed_shop(cli, tmp_path, 2, CATALOG)
    bill(cli)
    monkeypatch.setenv("NERUBA_STRIPE_MAX_RETRIES", "1")
    stripe.add_fault(Fault("POST", r"/v1/invoices/[^/]+/finalize", "500", times=2))
    error = expect(cli, 1, "stripe", "push", "--period", PERIOD)
    assert error["type"] == "stripe_error" and "finalize" in error["message"]
    assert API_KEY not in str(error)
    assert ok(cli, "stripe", "push", "--period", PERIOD)["failed"] == 0
    assert [i["status"] for i in stripe.objects("invoice")] == ["open", "open"]


def test_configuration_errors_are_clear_and_never_show_the_key(
    cli: Cli, tmp_path: Path, stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscribed_shop(cli, tmp_path, 1, CATALOG)
    bill(cli)
    monkeypatch.delenv("STRIPE_API_KEY")
    missing = expect(cli, 1, "stripe", "push", "--period", PERIOD)
    assert "STRIPE_API_KEY is not set" in missing["message"]
    monkeypatch.setenv("STRIPE_API_KEY", "pk_test_notASecretKey123")
    assert "not a Stripe secret" in expect(cli, 1, "stripe", "pull")["message"]
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_wrongKey0123456789")
    refused = cli("stripe", "push", "--period", PERIOD, "--project", "acme")
    assert refused.exit_code == 1 and "refused STRIPE_API_KEY" in refused.stderr
    assert "wrongKey0123456789" not in refused.stdout + refused.stderr
    audit = ok(cli, "audit", "list")
    assert "wrongKey0123456789" not in orjson.dumps(audit).decode()
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    unknown = expect(cli, 1, "stripe", "push", "--period", PERIOD, "--replace", "ACME-999999")
    assert "ACME-999999" in unknown["message"]
    assert stripe.objects("invoice") == []


def test_corrections_push_as_credit_notes_and_voids(
    cli: Cli, tmp_path: Path, stripe: FakeStripe
) -> None:
    """c01's October invoice (49.00) is corrected after the push by a cancellation on the
    17th: the credit note (-23.71) becomes a Stripe credit note on the pushed invoice; c02's
    invoice voided here is voided in Stripe."""
    subscribed_shop(cli, tmp_path, 2, CATALOG)
    bill(cli)
    ok(cli, "stripe", "push", "--period", PERIOD)
    subscription = ok(cli, "subscription", "list", "--customer", "c01")[0]["id"]
    ok(cli, "subscription", "cancel", subscription, "--at", "2026-10-17T00:00:00Z")
    bill(cli)
    ok(cli, "invoice", "void", "ACME-000002", "--reason", "duplicate", "--yes")
    report = ok(cli, "stripe", "push", "--period", PERIOD)
    actions = {o["invoice"]: o["action"] for o in report["outcomes"]}
    assert actions == {
        "ACME-000001": "up_to_date",
        "ACME-000002": "voided",
        "ACME-000003": "created",
    }
    notes = stripe.objects("credit_note")
    assert len(notes) == 1 and notes[0]["total"] == 2371
    assert notes[0]["metadata"]["neruba_invoice"] == "ACME-000003"
    assert notes[0]["metadata"]["neruba_corrects"] == "ACME-000001"
    original = next(i for i in stripe.objects("invoice") if i["total"] == 4900)
    assert notes[0]["invoice"] == original["id"]
    assert original["amount_remaining"] == 4900 - 2371
    assert [i["status"] for i in stripe.objects("invoice") if i["total"] != 4900] == ["void"]
    assert ok(cli, "stripe", "push", "--period", PERIOD)["counts"] == {"up_to_date": 3}
    assert len(stripe.objects("credit_note")) == 1
    clean = ok(cli, "reconcile", "stripe", "--period", PERIOD, "--pull")
    assert clean["discrepancies"] == [] and clean["matched"] == 3


def test_three_decimal_currencies_round_in_stripe_and_reconcile_shows_it(
    cli: Cli, tmp_path: Path, stripe: FakeStripe
) -> None:
    assert cli("project", "create", "acme", "--timezone", "UTC").exit_code == 0
    (tmp_path / "catalog.toml").write_text(CATALOG)
    ok(cli, "catalog", "apply", str(tmp_path / "catalog.toml"))
    ok(cli, "customer", "create", "k1", "--currency", "KWD")
    ok(cli, "subscription", "create", "k1", "gulf", "--start", "2026-10-01T00:00:00Z")
    bill(cli)
    assert ok(cli, "invoice", "show", "ACME-000001")["total"] == "1.234"
    ok(cli, "stripe", "push", "--period", PERIOD)
    (invoice,) = stripe.objects("invoice")
    assert (invoice["currency"], invoice["total"]) == ("kwd", 1230)
    report = expect(cli, 4, "reconcile", "stripe", "--period", PERIOD, "--pull")
    (found,) = report["discrepancies"]
    assert (found["kind"], found["reason"]) == ("amount_mismatch", "stripe_rounding")
    assert (found["difference"], found["currency"]) == ("-0.004", "KWD")


def test_reconcile_writes_csv_and_json_reports(
    cli: Cli, tmp_path: Path, stripe: FakeStripe
) -> None:
    subscribed_shop(cli, tmp_path, 2, CATALOG)
    bill(cli)
    expect(cli, 4, "reconcile", "stripe", "--period", PERIOD, "--output", "r.json")
    saved = orjson.loads((tmp_path / "r.json").read_bytes())
    assert saved["matched"] == 0 and kinds(saved) == [
        ("missing_in_stripe", "ACME-000001"),
        ("missing_in_stripe", "ACME-000002"),
    ]
    ok(cli, "stripe", "push", "--period", PERIOD)
    (invoice, _other) = stripe.objects("invoice")
    stripe.void_invoice(invoice["id"])
    expect(cli, 4, "reconcile", "stripe", "--period", PERIOD, "--pull", "--output", "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("kind,invoice,stripe_invoice,currency,neruba_total,stripe_total")
    assert len(lines) == 2 and lines[1].startswith("status_mismatch,")
    assert invoice["id"] in lines[1] and ",void," in lines[1]
    bad = expect(cli, 1, "reconcile", "stripe", "--period", PERIOD, "--output", "r.txt")
    assert ".csv or a .json" in bad["message"]


# --------------------------------------------------------------------------- pull


def test_pull_resumes_from_its_cursor_and_marks_deleted_objects(
    cli: Cli, tmp_path: Path, stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscribed_shop(cli, tmp_path, 3, CATALOG)
    bill(cli)
    ok(cli, "stripe", "push", "--period", PERIOD)
    for invoice in stripe.objects("invoice"):
        stripe.pay_invoice(invoice["id"])
    monkeypatch.setenv("NERUBA_STRIPE_MAX_RETRIES", "0")
    monkeypatch.setattr(stripe_gateway, "PAGE_SIZE", 2)  # three charges: two pages
    stripe.add_fault(Fault("GET", "/v1/charges", "500", skip=1))
    failed = expect(cli, 1, "stripe", "pull")
    assert "charges" in failed["message"]
    before = len(stripe.requests)
    resumed = ok(cli, "stripe", "pull")
    assert "charge" in resumed["resumed"] and "invoice" not in resumed["resumed"]
    charge_pages = [r for r in stripe.requests[before:] if r.path == "/v1/charges"]
    assert len(charge_pages) == 1, "the resumed pull started the charges over"
    assert resumed["objects"]["invoice"] == 3 and resumed["objects"]["charge"] == 3
    assert len(resumed["applied"]) == 3
    assert {i["status"] for i in ok(cli, "invoice", "list")} == {"paid"}
    assert ok(cli, "stripe", "pull")["applied"] == []  # idempotent by Stripe id
    payments = ok(cli, "payment", "list")
    assert len(payments) == 3 and all(p["reference"].startswith("in_") for p in payments)
    charge = stripe.objects("charge")[0]
    stripe.refund_charge(charge["id"], 1000)
    refunded = ok(cli, "stripe", "pull")
    assert len(refunded["applied"]) == 1 and "10.00 USD refunded" in refunded["applied"][0]
    reopened = [i for i in ok(cli, "invoice", "list") if i["status"] == "finalized"]
    assert len(reopened) == 1 and reopened[0]["amount_due"] == "10.00"
    assert ok(cli, "stripe", "pull")["applied"] == []
    checked(cli)


# --------------------------------------------------------------------------- webhooks


def event(kind: str, obj: dict[str, Any], event_id: str) -> bytes:
    body = {
        "id": event_id,
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "data": {"object": obj},
    }
    return orjson.dumps(body)


def deliver(
    cli: Cli, tmp_path: Path, body: bytes, *, secret: str = SECRET, age: int = 0, code: int = 0
) -> Any:
    path = tmp_path / "event.json"
    path.write_bytes(body)
    header = sign(body, secret, int(time.time()) - age)
    return expect(cli, code, "stripe", "webhook", "ingest", str(path), "--signature", header)


def test_webhooks_verify_apply_dedupe_and_reprocess(
    cli: Cli, tmp_path: Path, stripe: FakeStripe
) -> None:
    subscribed_shop(cli, tmp_path, 2, CATALOG)
    bill(cli)
    ok(cli, "stripe", "push", "--period", PERIOD)
    first, second = stripe.objects("invoice")
    paid = stripe.pay_invoice(first["id"])
    body = event("invoice.paid", paid, "evt_paid_1")

    forged = deliver(cli, tmp_path, body, secret="whsec_someoneElse0123456789", code=1)
    assert "does not match" in forged["message"] and SECRET not in forged["message"]
    stale = deliver(cli, tmp_path, body, age=301, code=1)
    assert "older than now" in stale["message"] and "300" in stale["message"]
    assert ok(cli, "stripe", "webhook", "list") == []
    assert all(i["status"] == "finalized" for i in ok(cli, "invoice", "list"))

    applied = deliver(cli, tmp_path, body)
    assert applied["counts"]["processed"] == 1
    number = first["metadata"]["neruba_invoice"]
    assert ok(cli, "invoice", "show", number)["status"] == "paid"
    replay = deliver(cli, tmp_path, body)
    assert replay["counts"] == {
        "processed": 0,
        "ignored": 0,
        "duplicate": 1,
        "failed": 0,
        "rejected": 0,
    }
    assert len(ok(cli, "payment", "list")) == 1
    late = expect(
        cli, 0, "stripe", "webhook", "ingest", str(tmp_path / "event.json"),
        "--signature", sign(body, SECRET, int(time.time()) - 400), "--tolerance", "600",
    )  # fmt: skip
    assert late["counts"]["duplicate"] == 1

    # a refund webhook before the invoice payment is mirrored fails, and is reprocessed later
    charge_id = stripe.objects("charge")[0]["id"]
    stripe.refund_charge(charge_id)
    charge = stripe.get(charge_id)
    assert charge is not None and charge["refunded"] is True
    refund_body = event("charge.refunded", charge, "evt_refund_1")
    failed = deliver(cli, tmp_path, refund_body, code=3)
    assert failed["counts"]["failed"] == 1 and "stripe pull" in failed["events"][0]["note"]
    assert ok(cli, "stripe", "webhook", "list", "--status", "failed")[0]["event"] == "evt_refund_1"
    ok(cli, "stripe", "pull", "--no-apply")
    again = ok(cli, "stripe", "webhook", "reprocess")
    assert [e["result"] for e in again] == ["processed"]
    assert ok(cli, "invoice", "show", number)["status"] == "finalized"
    assert ok(cli, "stripe", "webhook", "reprocess") == []

    # batch form: one good, one forged, one not JSON
    other = event("invoice.payment_failed", second, "evt_failed_1")
    now = int(time.time())
    forged = other.replace(b"evt_failed_1", b"evt_forged")
    lines = [
        {"headers": {"Stripe-Signature": sign(other, SECRET, now)}, "body": other.decode()},
        {"headers": {"stripe-signature": sign(forged, "whsec_bad", now)}, "body": forged.decode()},
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n{oops\n")
    result = expect(cli, 3, "stripe", "webhook", "ingest", str(batch))
    assert result["counts"]["processed"] == 1 and result["counts"]["rejected"] == 2
    assert [r["where"] for r in result["rejected"]] == [f"{batch}:2", f"{batch}:3"]
    events = {e["event"]: e["status"] for e in ok(cli, "stripe", "webhook", "list")}
    assert events == {
        "evt_paid_1": "processed",
        "evt_refund_1": "processed",
        "evt_failed_1": "processed",
    }
    checked(cli)


# --------------------------------------------------------------------------- review findings


def cancel_c01(cli: Cli, at: str = "2026-10-17T00:00:00Z") -> None:
    subscription = ok(cli, "subscription", "list", "--customer", "c01")[0]["id"]
    ok(cli, "subscription", "cancel", subscription, "--at", at)


def test_a_credit_note_restoring_credit_leaves_stripe_owing_what_neruba_says(
    cli: Cli, tmp_path: Path, stripe: FakeStripe
) -> None:
    """49.00 with 5.00 of credit applied (44.00 due), corrected by -23.71: Neruba gives the
    5.00 back to the grant and takes 18.71 off the invoice (25.29 due). Stripe must also ask
    25.29, not 20.29, and must not credit the customer's balance."""
    subscribed_shop(cli, tmp_path, 1, CATALOG)
    ok(cli, "credits", "grant", "c01", "5.00")
    bill(cli)
    ok(cli, "stripe", "push", "--period", PERIOD)
    cancel_c01(cli)
    bill(cli)
    assert ok(cli, "stripe", "push", "--period", PERIOD)["counts"] == {
        "up_to_date": 1,
        "created": 1,
    }
    assert ok(cli, "invoice", "show", "ACME-000001")["amount_due"] == "25.29"
    assert ok(cli, "wallet", "show", "c01")["balance"] == "5.00"
    (invoice,) = stripe.objects("invoice")
    (note,) = stripe.objects("credit_note")
    assert (invoice["total"], invoice["amount_remaining"]) == (4400, 2529)
    assert (note["total"], note.get("out_of_band_amount")) == (1871, None)
    assert [c.get("balance", 0) for c in stripe.objects("customer")] == [0]
    clean = ok(cli, "reconcile", "stripe", "--period", PERIOD, "--pull")
    assert clean["discrepancies"] == [] and clean["matched"] == 2
    stripe.pay_invoice(invoice["id"])
    assert len(ok(cli, "stripe", "pull")["applied"]) == 1
    assert ok(cli, "invoice", "show", "ACME-000001")["status"] == "paid"
    assert ok(cli, "reconcile", "stripe", "--period", PERIOD, "--pull")["discrepancies"] == []
    checked(cli)


def test_a_credit_note_on_a_paid_invoice_is_credited_out_of_band(
    cli: Cli, tmp_path: Path, stripe: FakeStripe
) -> None:
    """Paid in Stripe, then corrected: Neruba puts the 23.71 in the wallet (spent on the next
    invoice), so Stripe records it out of band instead of crediting the customer's balance."""
    subscribed_shop(cli, tmp_path, 1, CATALOG)
    bill(cli)
    ok(cli, "stripe", "push", "--period", PERIOD)
    stripe.pay_invoice(stripe.objects("invoice")[0]["id"])
    ok(cli, "stripe", "pull")
    cancel_c01(cli)
    bill(cli)
    ok(cli, "stripe", "push", "--period", PERIOD)
    assert ok(cli, "wallet", "show", "c01")["balance"] == "23.71"
    (note,) = stripe.objects("credit_note")
    assert (note["total"], note["out_of_band_amount"]) == (2371, 2371)
    assert [c.get("balance", 0) for c in stripe.objects("customer")] == [0]
    assert ok(cli, "reconcile", "stripe", "--period", PERIOD, "--pull")["matched"] == 2


def test_a_push_killed_after_stripe_made_the_credit_note_finishes_on_rerun(
    cli: Cli, tmp_path: Path, stripe: FakeStripe
) -> None:
    subscribed_shop(cli, tmp_path, 1, CATALOG)
    bill(cli)
    ok(cli, "stripe", "push", "--period", PERIOD)
    cancel_c01(cli, "2026-10-05T00:00:00Z")
    bill(cli)
    stripe.add_fault(Fault("POST", "/v1/credit_notes", "hang", after_apply=True))
    kill_when_hung(cli, stripe, spawn(cli.db_url or "", "stripe", "push", "--period", PERIOD))
    report = ok(cli, "stripe", "push", "--period", PERIOD)
    assert {o["invoice"]: o["action"] for o in report["outcomes"]} == {
        "ACME-000001": "up_to_date",
        "ACME-000002": "resumed",
    }
    assert len(stripe.objects("credit_note")) == 1
    assert ok(cli, "stripe", "push", "--period", PERIOD)["counts"] == {"up_to_date": 2}


def test_replacing_an_invoice_paid_in_stripe_is_refused(
    cli: Cli, tmp_path: Path, stripe: FakeStripe
) -> None:
    subscribed_shop(cli, tmp_path, 1, CATALOG)
    bill(cli)
    ok(cli, "stripe", "push", "--period", PERIOD)
    stripe.pay_invoice(stripe.objects("invoice")[0]["id"])
    report = expect(cli, 3, "stripe", "push", "--period", PERIOD, "--replace", "ACME-000001")
    (outcome,) = report["outcomes"]
    assert outcome["action"] == "failed" and "bill the customer twice" in outcome["error"]
    assert [i["status"] for i in stripe.objects("invoice")] == ["paid"]


def test_a_push_or_webhook_during_a_pull_does_not_make_live_objects_look_deleted(
    cli: Cli, tmp_path: Path, stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscribed_shop(cli, tmp_path, 3, CATALOG)
    bill(cli)
    ok(cli, "stripe", "push", "--period", PERIOD)
    monkeypatch.setenv("NERUBA_STRIPE_MAX_RETRIES", "0")
    monkeypatch.setattr(stripe_gateway, "PAGE_SIZE", 2)
    stripe.add_fault(Fault("GET", "/v1/invoices", "500", skip=1))
    expect(cli, 1, "stripe", "pull")
    time.sleep(1.1)
    assert ok(cli, "stripe", "push", "--period", PERIOD)["counts"] == {"up_to_date": 3}
    newest = max(stripe.objects("invoice"), key=lambda i: i["created"])
    deliver(cli, tmp_path, event("invoice.payment_failed", newest, "evt_during_pull"))
    resumed = ok(cli, "stripe", "pull")
    assert resumed["resumed"] == ["invoice"] and resumed["deleted"] == {
        kind: 0 for kind in resumed["objects"]
    }
    assert ok(cli, "reconcile", "stripe", "--period", PERIOD)["matched"] == 3


def test_a_zero_invoice_paid_by_stripe_on_finalization_matches(
    cli: Cli, tmp_path: Path, stripe: FakeStripe
) -> None:
    assert cli("project", "create", "acme", "--timezone", "UTC").exit_code == 0
    free = pro_and_gulf("0.000", gulf_code="free")
    (tmp_path / "catalog.toml").write_text(free.replace('currency = "KWD"', 'currency = "USD"'))
    ok(cli, "catalog", "apply", str(tmp_path / "catalog.toml"))
    ok(cli, "customer", "create", "z1", "--currency", "USD")
    ok(cli, "subscription", "create", "z1", "free", "--start", "2026-10-01T00:00:00Z")
    (row,) = bill(cli)
    assert (row["total"], row["amount_due"]) == ("0.00", "0.00")
    ok(cli, "stripe", "push", "--period", PERIOD)
    assert [i["status"] for i in stripe.objects("invoice")] == ["paid"]
    assert ok(cli, "reconcile", "stripe", "--period", PERIOD, "--pull")["matched"] == 1


def test_stripe_rounding_of_a_paid_kwd_invoice_shows_as_rounding_not_as_unpaid(
    cli: Cli, tmp_path: Path, stripe: FakeStripe
) -> None:
    """1.234 KWD goes to Stripe as 1.230 and is paid there: 0.004 stays due here, which is
    what Stripe's units could not ask for; reconcile reports the rounding, not a status."""
    assert cli("project", "create", "acme", "--timezone", "UTC").exit_code == 0
    (tmp_path / "catalog.toml").write_text(CATALOG)
    ok(cli, "catalog", "apply", str(tmp_path / "catalog.toml"))
    ok(cli, "customer", "create", "k1", "--currency", "KWD")
    ok(cli, "subscription", "create", "k1", "gulf", "--start", "2026-10-01T00:00:00Z")
    bill(cli)
    ok(cli, "stripe", "push", "--period", PERIOD)
    (invoice,) = stripe.objects("invoice")
    stripe.pay_invoice(invoice["id"])
    ok(cli, "stripe", "pull")
    assert ok(cli, "invoice", "show", "ACME-000001")["amount_due"] == "0.004"
    report = expect(cli, 4, "reconcile", "stripe", "--period", PERIOD)
    assert kinds(report) == [("amount_mismatch", "ACME-000001")]
    assert report["discrepancies"][0]["reason"] == "stripe_rounding"


def test_a_refund_of_what_stripe_rounded_up_is_reported_not_retried_forever(
    cli: Cli, tmp_path: Path, stripe: FakeStripe
) -> None:
    """1.235 KWD goes to Stripe as 1.240: the 0.005 Stripe collected beyond the invoice is
    wallet credit here, so refunding the whole charge refunds 1.235 and says so."""
    assert cli("project", "create", "acme", "--timezone", "UTC").exit_code == 0
    (tmp_path / "catalog.toml").write_text(pro_and_gulf("1.235"))
    ok(cli, "catalog", "apply", str(tmp_path / "catalog.toml"))
    ok(cli, "customer", "create", "k1", "--currency", "KWD")
    ok(cli, "subscription", "create", "k1", "gulf", "--start", "2026-10-01T00:00:00Z")
    bill(cli)
    ok(cli, "stripe", "push", "--period", PERIOD)
    (invoice,) = stripe.objects("invoice")
    assert invoice["total"] == 1240
    stripe.pay_invoice(invoice["id"])
    stripe.refund_charge(stripe.objects("charge")[0]["id"])
    first = ok(cli, "stripe", "pull")
    refund = [m for m in first["applied"] if "refunded" in m]
    assert len(refund) == 1 and "1.235 KWD refunded" in refund[0] and "0.005 KWD" in refund[0]
    assert ok(cli, "stripe", "pull")["applied"] == []
    assert ok(cli, "wallet", "show", "k1")["balance"] == "0.005"
    checked(cli)
