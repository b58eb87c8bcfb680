"""The ledger, invoice-total and numbering rules of `neruba check`, on plain values."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain.consistency import (
    AccountBalance,
    GrantFacts,
    InvoiceTotals,
    TransactionTotal,
    WalletFacts,
    account_problems,
    grant_problems,
    invoice_problems,
    numbering_problems,
    transaction_problems,
    wallet_problems,
)

D = Decimal


def test_a_transaction_sums_to_zero_per_currency_and_has_two_entries() -> None:
    problems, checked = transaction_problems(
        [
            TransactionTotal("txn_1", "k1", "USD", 0, 2),
            TransactionTotal("txn_2", "k2", "USD", 150, 2),
            TransactionTotal("txn_3", "k3", "EUR", 0, 1),
            TransactionTotal("txn_4", "k4", None, None, 0),  # no entries at all
        ]
    )
    assert checked == 4
    assert problems == [
        "transaction txn_2 (k2) sums to 1.50 USD, not zero",
        "transaction txn_3 has 1 entries; a posting needs at least two",
        "transaction txn_4 has 0 entries; a posting needs at least two",
    ]


def test_a_transaction_in_two_currencies_counts_its_entries_across_both() -> None:
    problems, checked = transaction_problems(
        [TransactionTotal("txn_1", "k", "USD", 0, 1), TransactionTotal("txn_1", "k", "EUR", 0, 1)]
    )
    assert (problems, checked) == ([], 1)


def test_an_account_balance_is_the_sum_of_its_entries() -> None:
    assert account_problems(AccountBalance("receivable:acme", "USD", 1125, 1125)) == []
    assert account_problems(AccountBalance("receivable:acme", "USD", 1132, 1125)) == [
        "account receivable:acme (USD) has balance 11.32 but its entries sum to 11.25"
    ]


def grant(**changes: Any) -> GrantFacts:
    facts: dict[str, Any] = {
        "id": "grt_1",
        "currency": "USD",
        "amount": 5000,
        "remaining": 2000,
        "posted": 2000,
        "revoked": False,
        "expired": False,
    }
    facts.update(changes)
    return GrantFacts(**facts)


def test_a_grant_holds_what_its_entries_leave_within_what_was_granted() -> None:
    assert grant_problems(grant()) == []
    assert grant_problems(grant(posted=1500)) == [
        "grant grt_1 shows 20.00 USD remaining but its entries leave 15.00"
    ]
    assert grant_problems(grant(remaining=6000, posted=6000)) == [
        "grant grt_1 has 60.00 USD remaining of 50.00 granted"
    ]


def test_a_revoked_or_expired_grant_holds_nothing() -> None:
    assert grant_problems(grant(revoked=True, expired=True)) == [
        "grant grt_1 is revoked but still holds 20.00 USD"
    ]
    assert grant_problems(grant(expired=True)) == [
        "grant grt_1 is expired but still holds 20.00 USD"
    ]
    assert grant_problems(grant(expired=True, remaining=0, posted=0)) == []


def test_a_wallet_holds_its_grants_remaining_credit() -> None:
    wallets = [
        WalletFacts("cus_1", "acme", "USD", 2000),
        WalletFacts("cus_2", "initech", "USD", -50),
    ]
    remaining = {("cus_1", "USD"): 2000, ("cus_2", "USD"): 0, ("cus_3", "EUR"): 700}
    assert wallet_problems(wallets, remaining) == [
        "wallet of initech holds -0.50 USD but its grants have 0.00 left",
        "wallet of initech is overdrawn (USD)",
        "grants of customer cus_3 hold credit but no wallet was posted",
    ]


def invoice(status: str = "finalized", **changes: Any) -> InvoiceTotals:
    document = {
        "lines": [{"amount": "80.00"}, {"amount": "20.00"}],
        "subtotal": "100.00",
        "credits_applied": "30.00",
        "total": "70.00",
    }
    facts: dict[str, Any] = {
        "status": status,
        "currency": "USD",
        "subtotal": D("100.00"),
        "credits_applied": D("30.00"),
        "total": D("70.00"),
        "document": document,
        "amount_due": 7000,
        "amount_paid": 0,
    }
    facts.update(changes)
    return InvoiceTotals(**facts)


POSTED = {"invoice_finalized": 10000, "credits_applied": -3000}


def test_a_final_invoice_agrees_with_its_postings_and_payments() -> None:
    assert invoice_problems(invoice(), POSTED, 0) == []
    paid = invoice(status="paid", amount_due=0, amount_paid=7000)
    assert invoice_problems(paid, {**POSTED, "payment_applied": -7000}, 7000) == []


def test_each_disagreement_of_a_final_invoice_is_named() -> None:
    assert invoice_problems(invoice(amount_paid=100), {"invoice_finalized": 9000}, 0) == [
        "subtotal 100.00 but 90.00 posted",
        "credits applied 30.00 but 0.00 posted",
        "amount due 70.00 but the ledger says 90.00",
        "amount paid 1.00 but payments net of refunds are 0.00",
    ]
    assert invoice_problems(invoice(status="paid"), POSTED, 0) == ["marked paid but 70.00 is due"]
    assert invoice_problems(invoice(amount_due=0), {**POSTED, "x": -7000}, 0) == [
        "nothing is due but it is not marked paid"
    ]


def test_drafts_post_nothing_and_void_invoices_owe_nothing() -> None:
    assert invoice_problems(invoice("draft"), {}, 0) == []
    assert invoice_problems(invoice("draft"), POSTED, 0) == ["a draft has ledger postings"]
    assert invoice_problems(invoice("void"), {**POSTED, "invoice_voided": -7000}, 0) == []
    assert invoice_problems(invoice("void"), POSTED, 0) == [
        "void but still owes 70.00 in the ledger"
    ]


def test_the_row_says_what_its_document_says() -> None:
    tampered = invoice("draft", subtotal=D("1.00"), total=D("-29.00"))
    assert invoice_problems(tampered, {}, 0) == [
        "the row's subtotal 1.00 differs from its document's 100.00",
        "the row's total -29.00 differs from its document's 70.00",
    ]
    document = dict(invoice().document, lines=[{"amount": "80.00"}], total="71.00")
    assert invoice_problems(invoice("draft", document=document), {}, 0) == [
        "its lines add up to 80.00, its subtotal says 100.00",
        "total 71.00 is not subtotal less credits applied",
        "the row's total 70.00 differs from its document's 71.00",
    ]


def test_invoice_numbers_run_from_one_without_a_gap() -> None:
    numbers = ["ACME-000002", "ACME-000001", "ACME-000003"]
    assert numbering_problems(numbers, "acme", 3) == []
    assert numbering_problems([], "acme", None) == []
    assert numbering_problems(["ACME-000001", "ACME-000004", "OTHER-1"], "acme", 4) == [
        "invoice numbers are not 1..3 without gaps; missing [2, 3]; unexpected [-1, 4]",
        "the invoice counter stands at 4 for 3 invoices",
    ]


@given(st.sets(st.integers(min_value=1, max_value=500), max_size=40))
def test_numbering_accepts_exactly_the_gapless_runs(taken: set[int]) -> None:
    numbers = [f"ACME-{n:06d}" for n in sorted(taken)]
    gapless = sorted(taken) == list(range(1, len(taken) + 1))
    assert (numbering_problems(numbers, "acme", len(taken)) == []) == gapless
