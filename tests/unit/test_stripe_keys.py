"""Idempotency keys derived from Stripe work: domain/stripe_keys.py writes and reads them, and
every key ever sent or stored keeps parsing under its format."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain import stripe_keys
from neruba_cli.domain.stripe_keys import CustomerKey, PaidKey, RefundedKey, StepKey

ids = st.from_regex(r"[A-Za-z0-9]{1,24}", fullmatch=True)
project_ids = ids.map(lambda body: f"proj_{body}")
numbers = st.from_regex(r"[A-Z0-9]{1,10}-[0-9]{6,8}", fullmatch=True)
counts = st.integers(0, 10**12)
steps = st.one_of(
    st.sampled_from(["invoice", "finalize", "void", "credit_note", "item:credits"]),
    st.integers(0, 500).map(lambda line: f"item:{line}"),
)


def test_the_formats_in_use() -> None:
    assert stripe_keys.step_key(
        "proj_1", "ACME-000001", version=2, generation=0, step="finalize"
    ) == ("neruba:2:proj_1:ACME-000001:v2:g0:finalize")
    assert stripe_keys.customer_key("proj_1", "cus_1") == "neruba:proj_1:customer:cus_1"
    assert stripe_keys.paid_key("in_1", 4900) == "stripe:in_1:paid:4900"
    assert stripe_keys.refunded_key("ch_1", 100, "pay_1") == "stripe:ch_1:refunded:100:pay_1"


@given(project_ids, numbers, counts, counts, steps)
def test_step_keys_round_trip_and_carry_their_format(
    project_id: str, number: str, version: int, generation: int, step: str
) -> None:
    key = stripe_keys.step_key(
        project_id, number, version=version, generation=generation, step=step
    )
    assert key.startswith(f"neruba:{stripe_keys.STEP_KEY_FORMAT}:{project_id}:")
    assert len(key) <= 255  # Stripe's limit
    parsed = stripe_keys.parse(key)
    assert parsed == StepKey(project_id, number, version, generation, step)
    assert parsed.format == stripe_keys.STEP_KEY_FORMAT == 2


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (
            "neruba:proj_1:ACME-000001:v2:finalize",
            StepKey("proj_1", "ACME-000001", 2, 0, "finalize", 1),
        ),
        (
            "neruba:proj_1:ACME-000001:v2:g1:item:0",
            StepKey("proj_1", "ACME-000001", 2, 1, "item:0", 1),
        ),
        (
            "neruba:proj_1:ACME-000001:v1:item:credits",
            StepKey("proj_1", "ACME-000001", 1, 0, "item:credits", 1),
        ),
    ],
)
def test_step_keys_sent_before_format_2_still_parse(key: str, expected: StepKey) -> None:
    assert stripe_keys.parse(key) == expected


@given(project_ids, ids.map(lambda body: f"cus_{body}"))
def test_customer_keys_round_trip_unchanged(project_id: str, customer_id: str) -> None:
    key = stripe_keys.customer_key(project_id, customer_id)
    assert key.startswith(f"neruba:{project_id}:customer:")  # format 1, as sent so far
    parsed = stripe_keys.parse(key)
    assert parsed == CustomerKey(project_id, customer_id)
    assert parsed.format == stripe_keys.CUSTOMER_KEY_FORMAT == 1


@given(ids.map(lambda body: f"in_{body}"), counts)
def test_paid_keys_round_trip_under_their_prefix(stripe_invoice: str, paid: int) -> None:
    key = stripe_keys.paid_key(stripe_invoice, paid)
    assert key.startswith(stripe_keys.paid_prefix(stripe_invoice))
    assert key.startswith(f"stripe:{stripe_invoice}:paid:")  # format 1, as stored so far
    parsed = stripe_keys.parse(key)
    assert parsed == PaidKey(stripe_invoice, paid)
    assert parsed.format == stripe_keys.LEDGER_KEY_FORMAT == 1


@given(ids.map(lambda body: f"ch_{body}"), counts, ids.map(lambda body: f"pay_{body}"))
def test_refunded_keys_round_trip_under_their_prefix(
    charge: str, refunded: int, payment_id: str
) -> None:
    key = stripe_keys.refunded_key(charge, refunded, payment_id)
    assert key.startswith(stripe_keys.refunded_prefix(charge))
    assert key.startswith(f"stripe:{charge}:refunded:")
    assert stripe_keys.parse(key) == RefundedKey(charge, refunded, payment_id)


@given(project_ids, numbers, counts, counts, steps)
def test_one_prefix_never_sums_another_objects_keys(
    project_id: str, number: str, version: int, generation: int, step: str
) -> None:
    key = stripe_keys.step_key(
        project_id, number, version=version, generation=generation, step=step
    )
    assert not key.startswith(stripe_keys.paid_prefix("in_1"))
    assert not stripe_keys.paid_key("in_12", 5).startswith(stripe_keys.paid_prefix("in_1"))


@pytest.mark.parametrize(
    "key",
    [
        "",
        "neruba",
        "neruba:2:proj_1:ACME-000001:v2:g0:",
        "neruba:2:proj_1:ACME-000001:2:g0:invoice",
        "neruba:3:proj_1:ACME-000001:v2:g0:invoice",
        "neruba:cus_1:customer:x",
        "neruba:proj_1:customer:",
        "stripe:in_1:paid:",
        "stripe:in_1:paid:01",
        "stripe:in_1:paid:-5",
        "stripe:ch_1:refunded:5",
        "other:in_1:paid:5",
    ],
)
def test_keys_not_built_here_do_not_parse(key: str) -> None:
    with pytest.raises(ValueError, match="not a Neruba idempotency key"):
        stripe_keys.parse(key)


def test_builders_refuse_parts_that_would_not_parse_back() -> None:
    with pytest.raises(ValueError):
        stripe_keys.step_key("proj:1", "ACME-000001", version=1, generation=0, step="invoice")
    with pytest.raises(ValueError):
        stripe_keys.step_key("proj_1", "ACME-000001", version=1, generation=0, step="")
    with pytest.raises(ValueError):
        stripe_keys.paid_key("in_1", -1)
    with pytest.raises(ValueError):
        stripe_keys.customer_key("proj_1", "")
