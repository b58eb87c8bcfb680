"""The pure parts of the Stripe link: what a push writes (domain/stripe_link.py) and how
reconciliation pairs and judges the two sides (domain/reconcile.py)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain import stripe_link
from neruba_cli.domain.reconcile import NerubaSide, StripeSide, reconcile
from neruba_cli.domain.stripe_link import PushedInvoice


def pushed(
    lines: tuple[tuple[str, Decimal], ...],
    *,
    currency: str = "USD",
    credits: str = "0",
    kind: str = "invoice",
    generation: int = 0,
) -> PushedInvoice:
    subtotal = sum((amount for _d, amount in lines), Decimal(0))
    return PushedInvoice(
        project="acme",
        project_id="proj_1",
        number="ACME-000001",
        kind=kind,
        period="2026-10",
        version=2,
        generation=generation,
        customer="c1",
        currency=currency,
        lines=lines,
        credits_applied=Decimal(credits),
        total=subtotal - Decimal(credits),
        rounding="half_even",
        corrects="ACME-000000" if kind == "credit_note" else None,
    )


def side(number: str = "ACME-000001", **changes: object) -> NerubaSide:
    values: dict[str, object] = {
        "number": number,
        "kind": "invoice",
        "status": "finalized",
        "customer": "c1",
        "stripe_customer": "cus_1",
        "currency": "USD",
        "total": 4900,
        "amount_due": 4900,
        "expected_stripe_total": 4900,
        "linked": "in_1",
    }
    values.update(changes)
    return NerubaSide(**values)  # type: ignore[arg-type]


def stripe(stripe_id: str = "in_1", **changes: object) -> StripeSide:
    values: dict[str, object] = {
        "id": stripe_id,
        "object": "invoice",
        "neruba_invoice": "ACME-000001",
        "customer": "cus_1",
        "currency": "USD",
        "total": 4900,
        "status": "open",
    }
    values.update(changes)
    return StripeSide(**values)  # type: ignore[arg-type]


def kinds(report_sides: tuple[list[NerubaSide], list[StripeSide]]) -> list[str]:
    report = reconcile("2026-10", *report_sides)
    return sorted(d.kind for d in report.discrepancies)


# --------------------------------------------------------------------------- stripe_link


def test_items_one_per_line_and_credits_as_one_negative_item() -> None:
    invoice = pushed((("Pro", Decimal("49.00")), ("API calls", Decimal("12.34"))), credits="5.00")
    assert [(i.line, i.amount) for i in stripe_link.items(invoice)] == [
        ("0", 4900),
        ("1", 1234),
        ("credits", -500),
    ]
    assert stripe_link.expected_total(invoice) == 5634


def test_idempotency_keys_name_invoice_version_generation_and_step() -> None:
    invoice = pushed((("Pro", Decimal("49.00")),))
    assert stripe_link.idempotency_key(invoice, "finalize") == (
        "neruba:2:proj_1:ACME-000001:v2:g0:finalize"
    )
    again = pushed((("Pro", Decimal("49.00")),), generation=1)
    assert stripe_link.idempotency_key(again, "item:0") == (
        "neruba:2:proj_1:ACME-000001:v2:g1:item:0"
    )
    assert stripe_link.metadata(again)["neruba_generation"] == "1"


def test_missing_items_are_found_by_their_line_metadata() -> None:
    invoice = pushed((("a", Decimal("1")), ("b", Decimal("2"))), credits="1")
    present = [{"metadata": {"neruba_line": "0"}}, {"metadata": {"neruba_line": "credits"}}]
    assert [i.line for i in stripe_link.missing_items(invoice, present)] == ["1"]


def test_kwd_items_round_to_a_last_digit_of_zero_per_line() -> None:
    invoice = pushed((("a", Decimal("1.234")), ("b", Decimal("1.236"))), currency="KWD")
    assert [i.amount for i in stripe_link.items(invoice)] == [1230, 1240]


def test_credit_note_lines_and_split_follow_the_settlement() -> None:
    note = pushed((("Pro", Decimal("-23.71")),), kind="credit_note")
    split = stripe_link.credit_note_split(note, to_invoice=1871, to_wallet=0)
    assert (split.amount, split.pre_payment, split.out_of_band) == (1871, 1871, 0)
    lines = stripe_link.credit_note_lines(note, split.amount)
    assert [(line["unit_amount"], line["description"]) for line in lines] == [
        (1871, "Correction of ACME-000000")
    ]
    whole = stripe_link.credit_note_lines(note, 2371)
    assert [(line["unit_amount"], line["description"]) for line in whole] == [(2371, "Pro")]
    paid = stripe_link.credit_note_split(note, to_invoice=0, to_wallet=2371)
    assert (paid.amount, paid.pre_payment, paid.out_of_band) == (2371, 0, 2371)


@given(
    st.lists(st.integers(min_value=-(10**9), max_value=10**9), min_size=1, max_size=6),
    st.sampled_from(["USD", "JPY", "KWD", "ISK", "EUR"]),
)
def test_credit_note_lines_always_credit_exactly_the_amount(
    cents: list[int], currency: str
) -> None:
    lines = tuple((f"l{i}", Decimal(c) / 100) for i, c in enumerate(cents))
    note = pushed(lines, currency=currency, kind="credit_note")
    amount = 123_450
    made = stripe_link.credit_note_lines(note, amount)
    assert sum(line["unit_amount"] for line in made) == amount
    assert all(line["unit_amount"] > 0 for line in made)


# --------------------------------------------------------------------------- reconcile


def test_agreeing_sides_match() -> None:
    report = reconcile("2026-10", [side()], [stripe()])
    assert (report.matched, report.discrepancies) == (1, [])


def test_each_kind_is_found_with_money_at_stake() -> None:
    assert kinds(([side()], [])) == ["missing_in_stripe"]
    assert kinds(([], [stripe()])) == ["missing_in_neruba"]
    assert kinds(([side()], [stripe(total=5000)])) == ["amount_mismatch"]
    assert kinds(([side()], [stripe(currency="EUR")])) == ["currency_mismatch"]
    assert kinds(([side()], [stripe(status="paid")])) == ["status_mismatch"]
    assert kinds(([side()], [stripe(customer="cus_2")])) == ["customer_mismatch"]
    report = reconcile("2026-10", [side()], [stripe(total=5000)])
    (found,) = report.discrepancies
    assert (found.difference, found.at_stake, found.reason) == (100, 100, None)
    assert report.at_stake() == {"USD": 100}
    assert report.as_dict()["at_stake"] == {"USD": "1.00"}


def test_deleted_void_and_duplicate_stripe_objects() -> None:
    gone = reconcile("2026-10", [side()], [stripe(deleted=True)])
    assert [(d.kind, d.reason) for d in gone.discrepancies] == [
        ("missing_in_stripe", "deleted_in_stripe")
    ]
    replaced = [stripe("in_0", status="void"), stripe("in_1")]
    assert reconcile("2026-10", [side()], replaced).matched == 1
    twice = reconcile("2026-10", [side()], [stripe("in_1"), stripe("in_2")])
    assert [(d.kind, d.stripe_invoice, d.reason) for d in twice.discrepancies] == [
        ("missing_in_neruba", "in_2", "duplicate")
    ]
    never_pushed = reconcile("2026-10", [side(status="void", linked=None)], [])
    assert (never_pushed.matched, never_pushed.discrepancies) == (0, [])
    assert kinds(([side(status="void")], [stripe()])) == ["status_mismatch"]
    assert reconcile("2026-10", [side(status="void")], [stripe(status="void")]).matched == 1


def test_paid_zero_and_rounding() -> None:
    assert reconcile(
        "2026-10", [side(status="paid", amount_due=0)], [stripe(status="paid")]
    ).matched
    zero = side(total=0, amount_due=0, expected_stripe_total=0)
    assert reconcile("2026-10", [zero], [stripe(total=0, status="paid")]).matched == 1
    kwd = side(currency="KWD", total=1234, amount_due=4, expected_stripe_total=1230)
    report = reconcile("2026-10", [kwd], [stripe(currency="KWD", total=1230, status="paid")])
    assert [(d.kind, d.reason, d.difference) for d in report.discrepancies] == [
        ("amount_mismatch", "stripe_rounding", -4)
    ]


def test_a_credit_note_compares_what_stripe_was_asked_to_credit() -> None:
    note = side(
        "ACME-000002",
        kind="credit_note",
        total=-2371,
        amount_due=0,
        expected_stripe_total=-1871,
        restored=500,
        linked="cn_1",
    )
    issued = stripe("cn_1", object="credit_note", neruba_invoice="ACME-000002", total=1871,
                    status="issued")  # fmt: skip
    assert reconcile("2026-10", [note], [issued]).matched == 1
    whole = stripe("cn_1", object="credit_note", neruba_invoice="ACME-000002", total=2371,
                   status="issued")  # fmt: skip
    assert kinds(([note], [whole])) == ["amount_mismatch"]
    voided = stripe("cn_1", object="credit_note", neruba_invoice="ACME-000002", total=1871,
                    status="void")  # fmt: skip
    assert kinds(([note], [voided])) == ["status_mismatch"]
    all_restored = side("ACME-000002", kind="credit_note", total=-500, restored=500, linked=None)
    assert reconcile("2026-10", [all_restored], []).discrepancies == []


# --------------------------------------------------------------------------- negative invoices


@given(st.integers(min_value=1, max_value=10**9))
def test_a_negative_invoice_matches_the_same_negative_stripe_total(cents: int) -> None:
    """A plain invoice whose credits exceed its charges owes nothing here and is `paid` in
    Stripe with the same signed total: matched; any other Stripe total is the signed
    difference, never twice the total."""
    here = side(total=-cents, amount_due=0, expected_stripe_total=-cents)
    assert kinds(([here], [stripe(total=-cents, status="paid")])) == []
    report = reconcile("2026-10", [here], [stripe(total=-cents + 100, status="paid")])
    (found,) = report.discrepancies
    assert (found.kind, found.at_stake) == ("amount_mismatch", 100)
    assert kinds(([here], [stripe(total=cents, status="paid")])) == ["amount_mismatch"]


@given(st.integers(min_value=-(10**6), max_value=10**6), st.integers(min_value=0, max_value=10**6))
def test_the_balance_offset_is_the_credit_of_a_negative_total(charge: int, credit: int) -> None:
    """The push takes back exactly what Stripe puts in the customer's balance: the negative
    part of the total it computes from the items, nothing for a total of 0 or more."""
    invoice = pushed(
        (("fee", Decimal(charge) / 100), ("unused (credit)", -Decimal(credit) / 100)),
    )
    total = stripe_link.expected_total(invoice)
    assert total == charge - credit
    assert stripe_link.balance_offset(invoice) == max(0, -total)
    note = pushed((("correction", -Decimal(credit) / 100),), kind="credit_note")
    assert stripe_link.balance_offset(note) == 0
