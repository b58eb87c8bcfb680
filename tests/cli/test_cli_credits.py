"""Credits, wallets, payments and the ledger under them, end to end on every dialect.

The shop: project acme (UTC); plan pro is 49.00 a month in arrears and nothing else, so c1's
October invoice is exactly 49.00; c2 is on the same plan from October 16th (49.00 × 16/31 =
25.29).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update
from sqlalchemy.exc import DBAPIError

from neruba_cli.db.tables import (
    credit_grants_t,
    ledger_accounts_t,
    ledger_entries_t,
    ledger_transactions_t,
)
from neruba_cli.services.invoices import finalize as invoices_finalize
from neruba_cli.services.ledger import credits
from neruba_cli.services.tenancy.projects import get_project
from tests.support.catalogs import catalog, plan
from tests.support.cli import Cli, fails, ok

CATALOG = catalog(plans=[plan("pro", "49.00", name="Pro", proration="day")])
AS_OF = "2026-11-02T00:00:00Z"


def checked(cli: Cli) -> dict[str, Any]:
    """`neruba check` passes: every sweep ok."""
    report = ok(cli, "check")
    assert report["ok"] and report["problems"] == 0, report
    assert {c["name"] for c in report["checks"]} >= {
        "ledger.balanced",
        "ledger.accounts",
        "ledger.grants",
        "ledger.wallets",
        "ledger.invoices",
    }
    return dict(report)


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> Cli:
    assert cli("project", "create", "acme", "--timezone", "UTC").exit_code == 0
    for external in ("c1", "c2"):
        created = cli("customer", "create", external, "--currency", "USD", "--project", "acme")
        assert created.exit_code == 0, created.stderr
    (tmp_path / "catalog.toml").write_text(CATALOG)
    ok(cli, "catalog", "apply", str(tmp_path / "catalog.toml"))
    ok(cli, "subscription", "create", "c1", "pro", "--start", "2026-10-01T00:00:00Z")
    ok(cli, "subscription", "create", "c2", "pro", "--start", "2026-10-16T00:00:00Z")
    return cli


def grant(cli: Cli, customer: str, amount: str, *extra: str) -> dict[str, Any]:
    return dict(ok(cli, "credits", "grant", customer, amount, *extra))


def remaining(cli: Cli, customer: str) -> dict[str, str]:
    return {g["id"]: g["remaining"] for g in ok(cli, "credits", "list", customer)}


def test_three_grants_pay_a_49_invoice_by_priority_then_expiry(shop: Cli) -> None:
    """The issue's acceptance scenario."""
    checked(shop)
    a = grant(shop, "c1", "30.00", "--priority", "1", "--expires", "2027-03-01T00:00:00Z",
              "--idempotency-key", "grant-a")  # fmt: skip
    b = grant(shop, "c1", "30.00", "--priority", "2", "--expires", "2027-01-01T00:00:00Z",
              "--idempotency-key", "grant-b")  # fmt: skip
    c = grant(shop, "c1", "30.00", "--priority", "1", "--expires", "2027-02-01T00:00:00Z",
              "--idempotency-key", "grant-c", "--reason", "welcome")  # fmt: skip
    assert (a["created"], b["created"], c["created"]) == (True, True, True)
    again = grant(shop, "c1", "30.00", "--priority", "1", "--expires", "2027-02-01T00:00:00Z",
                  "--idempotency-key", "grant-c", "--reason", "welcome")  # fmt: skip
    assert (again["id"], again["created"]) == (c["id"], False)
    conflict = fails(shop, 1, "credits", "grant", "c1", "31.00", "--idempotency-key", "grant-c")
    assert conflict["type"] == "idempotency_conflict" and c["id"] in conflict["message"]
    listed = ok(shop, "credits", "list", "c1")
    assert len(listed) == 3
    assert set(listed[0]) >= {"id", "amount", "remaining", "currency", "priority", "expires_at"}
    assert {"category"} <= set(listed[0]) and listed[0]["category"] == "promotional"
    wallet = ok(shop, "wallet", "show", "c1")
    assert (wallet["customer"], wallet["currency"], wallet["balance"]) == ("c1", "USD", "90.00")
    assert [g["id"] for g in wallet["grants"]] == [a["id"], b["id"], c["id"]]
    checked(shop)

    report = ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    assert report["status"] == "completed"
    invoice = ok(shop, "invoice", "show", "ACME-000001")
    assert (invoice["customer"], invoice["subtotal"]) == ("c1", "49.00")
    assert (invoice["credits_applied"], invoice["total"]) == ("49.00", "0.00")
    assert (invoice["amount_due"], invoice["status"]) == ("0.00", "paid")
    # priority 1 first; between the two priority-1 grants the earlier expiry (c) first
    assert invoice["credits"] == [
        {"grant": c["id"], "amount": "30.00"},
        {"grant": a["id"], "amount": "19.00"},
    ]
    assert remaining(shop, "c1") == {a["id"]: "11.00", b["id"]: "30.00", c["id"]: "0.00"}
    assert ok(shop, "wallet", "show", "c1")["balance"] == "41.00"
    explained = ok(shop, "invoice", "explain", "ACME-000001")
    assert [(x["grant"], x["amount"], x["priority"]) for x in explained["credits"]] == [
        (c["id"], "30.00", 1),
        (a["id"], "19.00", 1),
    ]
    assert explained["credits"][0]["reason"] == "welcome"
    assert explained["lines"][0]["credits_applied"] == "49.00"
    verified = ok(shop, "invoice", "verify", "--period", "2026-10")
    assert verified["mismatches"] == 0, verified
    checked(shop)

    revoked = ok(shop, "credits", "revoke", a["id"], "--reason", "goodwill ended")
    assert (revoked["revoked"], revoked["remaining"], revoked["status"]) == (
        "11.00",
        "0.00",
        "revoked",
    )
    assert remaining(shop, "c1") == {a["id"]: "0.00", b["id"]: "30.00", c["id"]: "0.00"}
    assert ok(shop, "wallet", "show", "c1")["balance"] == "30.00"
    assert "already revoked" in fails(shop, 1, "credits", "revoke", a["id"])["message"]
    checked(shop)

    kinds = [t["kind"] for t in ok(shop, "ledger", "show", "--customer", "c1")]
    assert Counter(kinds) == {
        "credit_granted": 3,
        "invoice_finalized": 1,
        "credits_applied": 1,
        "credit_revoked": 1,
    }
    latest = ok(shop, "ledger", "show", "--limit", "2")
    assert [t["kind"] for t in latest] == ["credits_applied", "credit_revoked"]
    wallets = ok(shop, "ledger", "show", "--account", "credit_liability")
    assert len(wallets) == 5 and all(
        any(e["account"] == "wallet:c1" for e in t["entries"]) for t in wallets
    )
    assert "not an account" in fails(shop, 1, "ledger", "show", "--account", "bank")["message"]
    receivable = ok(shop, "ledger", "show", "--account", "receivable:c1")
    assert [t["kind"] for t in receivable] == ["invoice_finalized", "credits_applied"]
    assert ok(shop, "ledger", "show", "--account", "wallet:c2") == []
    for txn in ok(shop, "ledger", "show"):
        assert len(txn["entries"]) >= 2
        assert sum(entry["amount_minor"] for entry in txn["entries"]) == 0


def test_grant_validation_is_clear(shop: Cli) -> None:
    for args, needle in [  # bad values: usage errors, whoever the customer is
        (("c1", "0"), "AMOUNT '0' must be positive"),
        (("nobody", "ten"), "AMOUNT: 'ten' is not a decimal number"),
        (("c1", "5", "--category", "gift"), "--category: 'gift' is not one of: paid, promotional"),
        (("c1", "5", "--expires", "2020-01-01T00:00:00Z"), "not in the future"),
        (("c1", "5", "--expires", "tomorrow"), "--expires: 'tomorrow' is not an RFC 3339"),
        (("nobody", "5", "--currency", "XXQ"), "--currency: unknown currency 'XXQ'"),
    ]:
        assert needle in fails(shop, 2, "credits", "grant", *args)["message"], args
    priority = shop("credits", "grant", "c1", "5", "--priority", "0", "--project", "acme")
    assert priority.exit_code == 2 and "'--priority'" in priority.stderr  # Click reads it
    # well formed, but not possible here: an error
    assert "more decimals than USD" in fails(shop, 1, "credits", "grant", "c1", "1.005")["message"]
    assert fails(shop, 1, "credits", "grant", "nobody", "5")["type"] == "not_found"
    assert fails(shop, 1, "credits", "revoke", "grt_nope")["type"] == "not_found"
    assert ok(shop, "credits", "list", "c1") == []
    assert ok(shop, "ledger", "show") == []
    checked(shop)


def test_credit_never_pays_more_than_the_total_nor_in_another_currency(shop: Cli) -> None:
    eur = grant(shop, "c2", "100.00", "--currency", "EUR", "--allow-other-currency")
    usd = grant(shop, "c2", "100.00", "--category", "paid")
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    invoice = ok(shop, "invoice", "show", "ACME-000002")
    assert (invoice["customer"], invoice["subtotal"], invoice["credits_applied"]) == (
        "c2",
        "25.29",
        "25.29",
    )
    assert invoice["total"] == "0.00" and invoice["credits"] == [
        {"grant": usd["id"], "amount": "25.29"}
    ]
    assert remaining(shop, "c2") == {eur["id"]: "100.00", usd["id"]: "74.71"}
    wallet = ok(shop, "wallet", "show", "c2")
    assert (wallet["balance"], wallet["other_currencies"]) == ("74.71", {"EUR": "100.00"})
    # a paid grant came from cash; its use is revenue like any invoice
    balances = {(b["account"], b["currency"]): b["balance"] for b in ok(shop, "ledger", "balances")}
    assert balances[("cash", "USD")] == "100.00"
    assert balances[("expense:promotional", "EUR")] == "100.00"
    assert balances[("revenue:base_fee", "USD")] == "74.29"  # 49.00 + 25.29
    assert balances[("wallet:c2", "USD")] == "74.71"
    checked(shop)


def test_payments_partial_full_overpaid_and_refunded(shop: Cli) -> None:
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF)
    draft = fails(shop, 1, "payment", "record", "ACME-000001", "10.00")
    assert "draft" in draft["message"] and "finalize" in (draft["hint"] or "")
    ok(shop, "invoice", "finalize", "--period", "2026-10")
    first = ok(shop, "payment", "record", "ACME-000001", "20.00", "--reference", "bank-1")
    assert (first["applied"], first["invoice_status"], first["invoice_amount_due"]) == (
        "20.00",
        "finalized",
        "29.00",
    )
    replay = ok(shop, "payment", "record", "ACME-000001", "20.00", "--reference", "bank-1")
    assert (replay["id"], replay["created"]) == (first["id"], False)
    other = fails(shop, 1, "payment", "record", "ACME-000001", "25.00", "--reference", "bank-1")
    assert other["type"] == "idempotency_conflict"
    shown = ok(shop, "invoice", "show", "ACME-000001")
    assert (shown["status"], shown["amount_paid"], shown["amount_due"]) == (
        "finalized",
        "20.00",
        "29.00",
    )
    checked(shop)

    finalized_at = shown["finalized_at"]
    early = fails(shop, 1, "payment", "record", "ACME-000001", "1", "--at", "2026-11-20T00:00:00Z")
    assert "before ACME-000001 was finalized" in early["message"]
    second = ok(shop, "payment", "record", "ACME-000001", "35.00", "--at", finalized_at)
    assert (second["applied"], second["overpayment"]) == ("29.00", "6.00")
    assert second["invoice_status"] == "paid" and second["received_at"] == finalized_at
    credit = ok(shop, "wallet", "show", "c1")
    assert credit["balance"] == "6.00"
    assert credit["grants"][0]["category"] == "paid" and credit["grants"][0]["source"] == (
        "overpayment"
    )
    assert ok(shop, "invoice", "show", "ACME-000001")["amount_paid"] == "49.00"
    checked(shop)

    refunded = ok(shop, "payment", "refund", first["id"], "5.00", "--reason", "goodwill",
                  "--idempotency-key", "rf-1")  # fmt: skip
    again = ok(shop, "payment", "refund", first["id"], "5.00", "--reason", "goodwill",
               "--idempotency-key", "rf-1")  # fmt: skip
    assert (again["created"], again["refunded"]) == (False, "5.00")
    assert (refunded["refunded"], refunded["invoice_status"]) == ("5.00", "finalized")
    shown = ok(shop, "invoice", "show", "ACME-000001")
    assert (shown["status"], shown["amount_paid"], shown["amount_due"]) == (
        "finalized",
        "44.00",
        "5.00",
    )
    too_much = fails(shop, 1, "payment", "refund", first["id"], "15.01")
    assert "15.00" in too_much["message"] and "left to refund" in too_much["message"]
    assert len(ok(shop, "payment", "list", "--invoice", "ACME-000001")) == 2
    assert "future" in fails(shop, 1, "payment", "record", "ACME-000001", "1", "--at",
                             "2099-01-01T00:00:00Z")["message"]  # fmt: skip
    checked(shop)
    # the next invoice spends the overpayment credit
    void = fails(shop, 1, "invoice", "void", "ACME-000001", "--reason", "x", "--yes")
    assert "payments recorded" in void["message"]


def test_voiding_a_finalized_invoice_gives_its_credits_back(shop: Cli) -> None:
    g = grant(shop, "c1", "20.00")
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    assert ok(shop, "invoice", "show", "ACME-000001")["amount_due"] == "29.00"
    ok(shop, "invoice", "void", "ACME-000001", "--reason", "wrong customer", "--yes")
    assert remaining(shop, "c1") == {g["id"]: "20.00"}
    balances = {b["account"]: b["balance"] for b in ok(shop, "ledger", "balances")}
    assert balances["receivable:c1"] == "0.00" and balances["revenue:base_fee"] == "25.29"
    assert [t["kind"] for t in ok(shop, "ledger", "show", "--customer", "c1")][-1] == (
        "invoice_voided"
    )
    checked(shop)


def _late_credit_note(shop: Cli, engine: Engine, policy: str) -> dict[str, Any]:
    """c1's October invoice (49.00, 20.00 of it paid by credit) corrected after finalization:
    the subscription is cancelled on October 17th, so the rerun bills 16 of 31 days
    (49.00 × 16/31 = 25.29) and writes a credit note of -23.71."""
    ok(shop, "project", "update", "acme", "--credit-returns", policy)
    g = grant(shop, "c1", "20.00")
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    subscription = ok(shop, "subscription", "list", "--customer", "c1")[0]["id"]
    ok(shop, "subscription", "cancel", subscription, "--at", "2026-10-17T00:00:00Z")
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    notes = [i for i in ok(shop, "invoice", "list", "--customer", "c1") if i["corrects"]]
    assert len(notes) == 1 and notes[0]["kind"] == "credit_note"
    return {"grant": g, "note": ok(shop, "invoice", "show", notes[0]["number"])}


def test_credit_note_restores_consumed_credit_first(shop: Cli, engine: Engine) -> None:
    found = _late_credit_note(shop, engine, "restore")
    note, g = found["note"], found["grant"]
    assert note["subtotal"] == "-23.71" and note["status"] == "finalized"
    settlement = note["settlement"]
    assert settlement["credits_restored"] == [{"grant": g["id"], "amount": "20.00"}]
    assert (settlement["to_invoice"], settlement["to_wallet"]) == ("3.71", "0.00")
    assert remaining(shop, "c1") == {g["id"]: "20.00"}
    original = ok(shop, "invoice", "show", "ACME-000001")
    assert (original["amount_due"], original["status"]) == ("25.29", "finalized")
    verified = ok(shop, "invoice", "verify", "--period", "2026-10")
    assert verified["mismatches"] == 0, verified
    checked(shop)


def test_credit_note_keeps_spent_credit_under_keep(shop: Cli, engine: Engine) -> None:
    found = _late_credit_note(shop, engine, "keep")
    note, g = found["note"], found["grant"]
    settlement = note["settlement"]
    assert settlement["credits_restored"] == [] and settlement["policy"] == "keep"
    assert (settlement["to_invoice"], settlement["to_wallet"]) == ("23.71", "0.00")
    assert remaining(shop, "c1") == {g["id"]: "0.00"}
    original = ok(shop, "invoice", "show", "ACME-000001")
    assert original["amount_due"] == "5.29"  # 49.00 - 20.00 credit - 23.71 credited
    ok(shop, "payment", "record", "ACME-000001", "5.29")
    assert ok(shop, "invoice", "show", "ACME-000001")["status"] == "paid"
    checked(shop)


def test_credit_note_on_a_paid_invoice_puts_the_rest_in_the_wallet(
    shop: Cli, engine: Engine
) -> None:
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    ok(shop, "payment", "record", "ACME-000001", "49.00", "--reference", "wire-7")
    subscription = ok(shop, "subscription", "list", "--customer", "c1")[0]["id"]
    ok(shop, "subscription", "cancel", subscription, "--at", "2026-10-17T00:00:00Z")
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    note = next(i for i in ok(shop, "invoice", "list", "--customer", "c1") if i["corrects"])
    settlement = ok(shop, "invoice", "show", note["number"])["settlement"]
    assert (settlement["to_invoice"], settlement["to_wallet"]) == ("0.00", "23.71")
    wallet = ok(shop, "wallet", "show", "c1")
    assert wallet["balance"] == "23.71"
    assert wallet["grants"][0]["source"] == "credit_note"
    checked(shop)


def test_expired_grants_are_never_spent_and_expire_posts_what_is_left(
    shop: Cli, engine: Engine
) -> None:
    """Through the services with explicit clocks (a grant cannot be created already expired)."""
    start = datetime(2026, 11, 3, tzinfo=UTC)
    with engine.connect() as conn:
        from sqlalchemy.orm import Session

        with Session(bind=conn) as session:
            project = get_project(session, "acme")
    soon = credits.GrantRequest("c1", "10.00", expires_at=start + timedelta(days=1), priority=1)
    # far enough ahead that `credits expire` at today's date never reaches it
    later = credits.GrantRequest("c1", "10.00", expires_at=start + timedelta(days=3650), priority=2)
    first, _ = credits.grant(engine, project, soon, actor="test", now=start)
    second, _ = credits.grant(engine, project, later, actor="test", now=start)
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF)
    invoices_finalize.finalize(
        engine, project, number="ACME-000001", now=start + timedelta(days=2), actor="test"
    )
    shown = ok(shop, "invoice", "show", "ACME-000001")
    # the priority-1 grant had expired: only the priority-2 one pays
    assert shown["credits"] == [{"grant": second["id"], "amount": "10.00"}]
    before = ok(shop, "wallet", "show", "c1", "--as-of", "2026-11-04T12:00:00Z")
    assert before["balance"] == "20.00"  # the expired grant's expiry is not posted yet
    report = credits.expire(
        engine,
        project,
        as_of=start + timedelta(days=2),
        actor="cron",
        now=start + timedelta(days=2),
    )
    assert [(g["id"], g["expired"]) for g in report.expired] == [(first["id"], "10.00")]
    rerun = credits.expire(
        engine,
        project,
        as_of=start + timedelta(days=3),
        actor="cron",
        now=start + timedelta(days=3),
    )
    assert rerun.expired == []
    assert ok(shop, "credits", "expire")["count"] == 0
    # as of a moment after the expiry (posted effective at the expiry itself)
    after = ok(shop, "wallet", "show", "c1", "--as-of", "2026-11-04T12:00:00Z")
    assert after["balance"] == "10.00"  # the second grant is spent on the 5th
    assert ok(shop, "wallet", "show", "c1", "--as-of", "2026-11-05T12:00:00Z")["balance"] == "0.00"
    early = ok(shop, "wallet", "show", "c1", "--as-of", "2026-11-03T12:00:00Z")
    assert early["balance"] == "20.00"
    statuses = {g["id"]: g["status"] for g in ok(shop, "credits", "list", "c1")}
    assert statuses == {first["id"]: "expired", second["id"]: "used"}
    balances = {b["account"]: b["balance"] for b in ok(shop, "ledger", "balances")}
    assert balances["expense:promotional"] == "10.00"  # 20.00 granted, 10.00 reversed
    checked(shop)


def test_the_ledger_refuses_update_and_delete(shop: Cli, engine: Engine) -> None:
    grant(shop, "c1", "5.00")
    entries, transactions = ledger_entries_t, ledger_transactions_t
    for statement in (
        update(entries).values(amount=1),
        entries.delete(),
        update(transactions).values(memo="changed"),
        transactions.delete(),
    ):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(statement)
    with engine.connect() as conn:
        amounts = sorted(conn.execute(select(entries.c.amount)).scalars())
    assert amounts == [-500, 500]


def test_check_finds_tampering_and_exits_4(shop: Cli, engine: Engine) -> None:
    grant(shop, "c1", "30.00")
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    checked(shop)
    with engine.begin() as conn:
        conn.execute(update(credit_grants_t).values(remaining_minor=2500))
        conn.execute(
            update(ledger_accounts_t)
            .where(ledger_accounts_t.c.code == "revenue:base_fee")
            .values(balance=-1)
        )
        conn.execute(text("UPDATE invoices SET amount_due_minor = 7 WHERE number = 'ACME-000002'"))
    result = shop("check", "--project", "acme", "--json")
    assert result.exit_code == 4
    report = result.json()
    failing = {c["name"]: c["details"] for c in report["checks"] if c["status"] == "fail"}
    assert set(failing) == {"ledger.accounts", "ledger.grants", "ledger.wallets", "ledger.invoices"}
    assert any("revenue:base_fee" in d for d in failing["ledger.accounts"])
    assert any("ACME-000002" in d and "amount due 0.07" in d for d in failing["ledger.invoices"])
    human = shop("check", "--project", "acme")
    assert human.exit_code == 4 and "discrepancies found" in human.stderr


def test_check_finds_a_numbering_gap_and_a_total_that_disagrees(shop: Cli, engine: Engine) -> None:
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    checked(shop)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE invoices SET number = 'ACME-000007' WHERE number = 'ACME-000002'")
        )
        conn.execute(text("UPDATE invoices SET total = '0.01' WHERE number = 'ACME-000001'"))
    result = shop("check", "--project", "acme", "--json")
    assert result.exit_code == 4
    failing = {c["name"]: c["details"] for c in result.json()["checks"] if c["status"] == "fail"}
    assert set(failing) == {"invoices.numbering", "ledger.invoices"}
    assert "missing [2]" in failing["invoices.numbering"][0]
    assert "unexpected [7]" in failing["invoices.numbering"][0]
    assert any("the row's total 0.01 differs" in d for d in failing["ledger.invoices"])


def test_invoices_finalized_before_the_ledger_are_posted_by_the_migration(shop: Cli) -> None:
    """Downgrade to 0005 (no ledger), upgrade again: 0006 posts the finalized invoices."""
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    before = ok(shop, "invoice", "show", "ACME-000002")
    assert shop("db", "downgrade", "0005", "--yes").exit_code == 0
    assert shop("db", "upgrade").exit_code == 0
    checked(shop)
    after = ok(shop, "invoice", "show", "ACME-000002")
    assert (after["amount_due"], after["total"]) == ("25.29", before["total"])
    kinds = [t["kind"] for t in ok(shop, "ledger", "show")]
    assert kinds == ["invoice_finalized", "invoice_finalized"]
    paid = ok(shop, "payment", "record", "ACME-000002", "25.29")
    assert (paid["applied"], paid["invoice_status"]) == ("25.29", "paid")
    checked(shop)


def test_credit_of_a_revoked_grant_stays_spent_and_the_note_lowers_what_is_owed(
    shop: Cli,
) -> None:
    """The corrected invoice spent a paid grant that was revoked since: its credit is not given
    back (the grant cannot be spent), so the whole note lowers what the invoice owes: the
    customer ends up owing the corrected 25.29 less the 20.00 credit spent, as under `keep`."""
    g = grant(shop, "c1", "20.00", "--category", "paid")
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    ok(shop, "credits", "revoke", g["id"], "--reason", "contract ended")
    subscription = ok(shop, "subscription", "list", "--customer", "c1")[0]["id"]
    ok(shop, "subscription", "cancel", subscription, "--at", "2026-10-17T00:00:00Z")
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    note = next(i for i in ok(shop, "invoice", "list", "--customer", "c1") if i["corrects"])
    settlement = ok(shop, "invoice", "show", note["number"])["settlement"]
    assert settlement["credits_restored"] == []
    assert (settlement["to_invoice"], settlement["to_wallet"]) == ("23.71", "0.00")
    assert ok(shop, "invoice", "show", "ACME-000001")["amount_due"] == "5.29"
    balances = {b["account"]: b["balance"] for b in ok(shop, "ledger", "balances")}
    assert balances["cash"] == "20.00"  # the grant's purchase; nothing paid out
    assert balances["wallet:c1"] == "0.00" and "revenue:breakage" not in balances
    assert remaining(shop, "c1") == {g["id"]: "0.00"}
    checked(shop)


def test_voiding_gives_a_revoked_paid_grants_credit_back_as_new_credit(shop: Cli) -> None:
    paid = grant(shop, "c1", "20.00", "--category", "paid")
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    ok(shop, "credits", "revoke", paid["id"], "--reason", "contract ended")
    ok(shop, "invoice", "void", "ACME-000001", "--reason", "billed in error", "--yes")
    wallet = ok(shop, "wallet", "show", "c1")
    assert wallet["balance"] == "20.00"
    fresh = [g for g in wallet["grants"] if g["id"] != paid["id"]]
    assert [(g["source"], g["category"], g["remaining"]) for g in fresh] == [
        ("void", "paid", "20.00")
    ]
    assert remaining(shop, "c1")[paid["id"]] == "0.00"
    balances = {b["account"]: b["balance"] for b in ok(shop, "ledger", "balances")}
    assert balances["receivable:c1"] == "0.00" and balances["cash"] == "20.00"
    checked(shop)


def test_the_migration_settles_credit_notes_finalized_before_the_ledger(shop: Cli) -> None:
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    subscription = ok(shop, "subscription", "list", "--customer", "c1")[0]["id"]
    ok(shop, "subscription", "cancel", subscription, "--at", "2026-10-17T00:00:00Z")
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    assert shop("db", "downgrade", "0005", "--yes").exit_code == 0
    assert shop("db", "upgrade").exit_code == 0
    checked(shop)
    assert ok(shop, "invoice", "show", "ACME-000001")["amount_due"] == "25.29"
    note = next(i for i in ok(shop, "invoice", "list", "--customer", "c1") if i["corrects"])
    assert ok(shop, "invoice", "show", note["number"])["amount_due"] == "0.00"
