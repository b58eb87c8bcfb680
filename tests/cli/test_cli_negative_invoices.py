"""A plain invoice with a negative total, end to end on every dialect: billing, the wallet, the
ledger checks, payments, export, and Stripe (push, pull, reconcile) against the fake server.

The shop: plans max (99.00 a month) and lite (9.00 a month), base fees in advance, prorated by
day, no trial; customers in UTC, both on max from August 1.

By hand:
  August's invoice bills August and September in advance: 99.00 + 99.00 = 198.00 each.
  c1 moves to lite on September 16 (September has 30 days, 15 on each plan): September's
  invoice credits max's unused half, -49.50, charges lite for it, 4.50, and October in
  advance, 9.00: -36.00. The 36.00 goes to c1's wallet; October's invoice bills November in
  advance (9.00) and spends 9.00 of it: total 0.00, 27.00 left in the wallet.
  c2 cancels as of September 2 (00:00): one day served, 1/30 of 99.00 = 3.30, so September's
  invoice credits 29/30 of 99.00: -95.70, all of it to c2's wallet.
In Stripe: each negative invoice is pushed with the same items (total -3600 / -9570 cents);
finalizing it credits the customer's Stripe balance (`ending_balance`), which the push takes
back with a debit adjustment, as the credit lives in Neruba's wallet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakes.stripe import FakeStripe, Fault
from tests.support.catalogs import apply_catalog, catalog, plan
from tests.support.cli import Cli, expect, ok

CATALOG = catalog(
    plans=[
        plan("max", "99.00", timing="advance", name="Max", trial_days=0),
        plan("lite", "9.00", timing="advance", name="Lite", trial_days=0),
    ]
)


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> Cli:
    """August billed and pushed nowhere yet; c1 downgraded Sep 16, c2 cancelled Sep 2;
    September and October billed and finalized."""
    ok(cli, "project", "create", "acme")
    apply_catalog(cli, tmp_path, CATALOG)
    subs = {}
    for name in ("c1", "c2"):
        ok(cli, "customer", "create", name)
        created = ok(cli, "subscription", "create", name, "max", "--start", "2026-08-01T00:00:00Z")
        subs[name] = str(created["id"])
    bill(cli, "2026-08", "2026-09-01T00:00:00Z")
    ok(cli, "subscription", "change", subs["c1"], "--plan", "lite", "--at", "2026-09-16T00:00:00Z")
    ok(cli, "subscription", "cancel", subs["c2"], "--at", "2026-09-02T00:00:00Z")
    bill(cli, "2026-09", "2026-10-01T00:00:00Z")
    bill(cli, "2026-10", "2026-11-01T00:00:00Z")
    return cli


def bill(cli: Cli, label: str, as_of: str) -> None:
    ok(cli, "run", "bill", "--period", label, "--as-of", as_of, "--finalize")


def invoices(cli: Cli, label: str) -> dict[str, dict[str, Any]]:
    return {row["number"]: dict(row) for row in ok(cli, "invoice", "list", "--period", label)}


def stripe_invoices(server: FakeStripe) -> dict[str, dict[str, Any]]:
    return {i["metadata"]["neruba_invoice"]: i for i in server.objects("invoice")}


def stripe_customer(server: FakeStripe, name: str) -> dict[str, Any]:
    (found,) = [c for c in server.objects("customer") if c["metadata"]["neruba_customer"] == name]
    return found


def balance_moves(server: FakeStripe, customer: dict[str, Any]) -> list[tuple[str, int]]:
    moves = server.objects("customer_balance_transaction")
    return sorted((t["type"], t["amount"]) for t in moves if t["customer"] == customer["id"])


def test_a_negative_invoice_is_credited_to_the_wallet_and_owes_nothing(shop: Cli) -> None:
    september = invoices(shop, "2026-09")
    assert {n: (r["customer"], r["total"], r["amount_due"]) for n, r in september.items()} == {
        "ACME-000003": ("c1", "-36.00", "0.00"),
        "ACME-000004": ("c2", "-95.70", "0.00"),
    }
    shown = ok(shop, "invoice", "show", "ACME-000003")
    assert [(line["description"], line["amount"]) for line in shown["lines"]] == [
        ("Max base fee, unused 16 Sep – 30 Sep 2026 (credit)", "-49.50"),
        ("Lite base fee, 16 Sep – 30 Sep 2026 (in advance)", "4.50"),
        ("Lite base fee, 1 Oct – 31 Oct 2026 (in advance)", "9.00"),
    ]
    assert (shown["status"], shown["amount_paid"], shown["amount_due"]) == (
        "finalized",
        "0.00",
        "0.00",
    )
    assert (shown["settlement"]["to_invoice"], shown["settlement"]["to_wallet"]) == (
        "0.00",
        "36.00",
    )
    cancelled = ok(shop, "invoice", "show", "ACME-000004")
    assert [(line["description"], line["amount"]) for line in cancelled["lines"]] == [
        ("Max base fee, unused 2 Sep – 30 Sep 2026 (credit)", "-95.70"),
    ]
    # October spends 9.00 of c1's 36.00
    (october,) = invoices(shop, "2026-10").values()
    assert (october["subtotal"], october["credits_applied"], october["total"]) == (
        "9.00",
        "9.00",
        "0.00",
    )
    wallets = {name: ok(shop, "credits", "list", name) for name in ("c1", "c2")}
    assert [(g["amount"], g["remaining"], g["category"]) for g in wallets["c1"]] == [
        ("36.00", "27.00", "paid")
    ]
    assert [(g["amount"], g["remaining"]) for g in wallets["c2"]] == [("95.70", "95.70")]
    # nothing to pay: a payment is refused, and nothing is written
    refused = expect(shop, 1, "payment", "record", "ACME-000003", "1.00")
    assert "nothing to pay" in refused["message"]
    assert ok(shop, "invoice", "show", "ACME-000003")["amount_paid"] == "0.00"
    # the export carries the negative total with nothing due
    exported = shop("export", "invoices", "--output", "-", "--format", "csv", "--project", "acme")
    assert exported.exit_code == 0, exported.stderr
    header, *rows = [line.split(",") for line in exported.stdout.strip().splitlines()]
    by_number = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert {n: (r["total"], r["amount_due"]) for n, r in by_number.items() if n in september} == {
        "ACME-000003": ("-36.00", "0.00"),
        "ACME-000004": ("-95.70", "0.00"),
    }
    report = ok(shop, "check")
    assert report["ok"], report


def test_stripe_holds_the_same_negative_total_and_no_second_credit(
    shop: Cli, stripe: FakeStripe
) -> None:
    assert ok(shop, "stripe", "push", "--period", "2026-08")["counts"] == {"created": 2}
    c1, c2 = stripe_customer(stripe, "c1"), stripe_customer(stripe, "c2")
    # Stripe fails the balance adjustment (after every retry): the push stops after
    # finalizing ACME-000003 in Stripe, with Stripe's balance still holding the credit
    path = f"/v1/customers/{c1['id']}/balance_transactions"
    stripe.add_fault(Fault("POST", path, "500", times=4))
    stopped = expect(shop, 1, "stripe", "push", "--period", "2026-09")
    assert "balance" in stopped["message"]
    assert stripe.get(c1["id"])["balance"] == -3600  # type: ignore[index]
    pushed = ok(shop, "stripe", "push", "--period", "2026-09")
    assert {o["invoice"]: o["action"] for o in pushed["outcomes"]} == {
        "ACME-000003": "resumed",
        "ACME-000004": "created",
    }
    made = stripe_invoices(stripe)
    expected = {"ACME-000003": -3600, "ACME-000004": -9570}
    for number, total in expected.items():
        invoice = made[number]
        assert (invoice["status"], invoice["total"], invoice["amount_due"]) == ("paid", total, 0)
        assert (invoice["starting_balance"], invoice["ending_balance"]) == (0, total)
        assert invoice["amount_paid"] == 0
    assert sorted(i["amount"] for i in stripe.objects("invoiceitem") if i["amount"] < 0) == [
        -9570,
        -4950,
    ]
    # Stripe's balance is back to 0: the credit is Neruba's wallet's alone
    for customer, total in ((c1, -3600), (c2, -9570)):
        assert stripe.get(customer["id"])["balance"] == 0  # type: ignore[index]
        assert balance_moves(stripe, customer) == [
            ("adjustment", -total),
            ("applied_to_invoice", total),
        ]
    (offset,) = [
        t
        for t in stripe.objects("customer_balance_transaction")
        if t["customer"] == c1["id"] and t["type"] == "adjustment"
    ]
    assert offset["metadata"]["neruba_invoice"] == "ACME-000003"
    assert offset["metadata"]["neruba_step"] == "balance_offset"

    # pushing again changes nothing, in Stripe or here
    again = ok(shop, "stripe", "push", "--period", "2026-09")
    assert again["counts"] == {"up_to_date": 2}
    assert len(stripe.objects("customer_balance_transaction")) == 4

    # reconcile: the same negative totals, paid in Stripe with nothing due here: matched
    for label in ("2026-08", "2026-09"):
        report = ok(shop, "reconcile", "stripe", "--period", label, "--pull")
        assert (report["matched"], report["discrepancies"]) == (2, []), report
    # a pull records no payment for them
    ok(shop, "stripe", "pull")
    for number, row in invoices(shop, "2026-09").items():
        assert (row["status"], row["amount_paid"], row["amount_due"]) == (
            "finalized",
            "0.00",
            "0.00",
        ), number

    # October: Neruba spends 9.00 of the wallet; Stripe applies no balance of its own
    assert ok(shop, "stripe", "push", "--period", "2026-10")["counts"] == {"created": 1}
    october = stripe_invoices(stripe)["ACME-000005"]
    assert (october["total"], october["starting_balance"], october["amount_due"]) == (0, 0, 0)
    assert sorted(
        i["amount"] for i in stripe.objects("invoiceitem") if i["invoice"] == october["id"]
    ) == [
        -900,
        900,
    ]
    report = ok(shop, "reconcile", "stripe", "--period", "2026-10", "--pull")
    assert (report["matched"], report["discrepancies"]) == (1, [])
    assert stripe.get(c1["id"])["balance"] == 0  # type: ignore[index]
    checked = ok(shop, "check")
    assert checked["ok"], checked


def test_an_amount_changed_in_stripe_on_a_negative_invoice_is_a_signed_difference(
    shop: Cli, stripe: FakeStripe
) -> None:
    ok(shop, "stripe", "push", "--period", "2026-08")
    ok(shop, "stripe", "push", "--period", "2026-09")
    made = stripe_invoices(stripe)
    stripe.set_invoice_total(made["ACME-000003"]["id"], -3500)
    report = expect(shop, 4, "reconcile", "stripe", "--period", "2026-09", "--pull")
    (found,) = report["discrepancies"]
    assert (found["kind"], found["invoice"], found["difference"], found["at_stake"]) == (
        "amount_mismatch",
        "ACME-000003",
        "1.00",
        "1.00",
    )
    assert (found["neruba"]["total"], found["stripe"]["total"]) == ("-36.00", "-35.00")
