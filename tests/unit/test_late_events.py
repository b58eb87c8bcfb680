"""The late-event policy as a pure decision: plain values in, a treatment out (no database)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain import late_events
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.late_events import (
    CORRECT,
    IGNORE,
    NEXT_INVOICE,
    POLICIES,
    Treatment,
    carries_forward,
    parse_policy,
    treatment,
)

policies = st.sampled_from(POLICIES)
any_policy = st.one_of(policies, st.text(max_size=20))


def test_the_policy_names_are_the_ones_project_update_takes() -> None:
    assert POLICIES == ("correct", "next_invoice", "ignore")
    assert late_events.DEFAULT == "correct"


@pytest.mark.parametrize("name", ["correct", "next_invoice", "ignore"])
def test_each_policy_name_parses_to_itself(name: str) -> None:
    assert parse_policy(name) == name


@pytest.mark.parametrize("name", ["", "Correct", "next-invoice", "none", " ignore"])
def test_anything_else_is_refused_with_the_names_to_use(name: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_policy(name)
    assert f"{name!r} is not a late-event policy" in str(refused.value)
    assert refused.value.hint == "use correct (a linked correction), next_invoice or ignore"


# One row per policy, for a final invoice whose late events changed only usage.
@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (CORRECT, Treatment.CORRECT),
        (NEXT_INVOICE, Treatment.CARRY),
        (IGNORE, Treatment.IGNORE),
    ],
)
def test_late_usage_of_a_final_invoice_follows_the_policy(policy: str, expected: Treatment) -> None:
    assert treatment(policy, final=True) is expected


@pytest.mark.parametrize("policy", POLICIES)
def test_changed_terms_are_always_corrected(policy: str) -> None:
    assert treatment(policy, final=True, terms_changed=True) is Treatment.CORRECT


def test_next_invoice_corrects_what_no_open_invoice_can_take() -> None:
    assert treatment(NEXT_INVOICE, final=True, can_carry=False) is Treatment.CORRECT
    # the other policies never carry, so whether an invoice could take it does not matter
    assert treatment(IGNORE, final=True, can_carry=False) is Treatment.IGNORE
    assert treatment(CORRECT, final=True, can_carry=False) is Treatment.CORRECT


def test_an_unknown_stored_policy_is_treated_as_correct() -> None:
    assert treatment("refund", final=True) is Treatment.CORRECT
    assert not carries_forward("refund")


def test_only_next_invoice_makes_a_run_look_back_at_the_month_before() -> None:
    assert [carries_forward(policy) for policy in POLICIES] == [False, True, False]


@given(any_policy, st.booleans(), st.booleans())
def test_a_draft_is_recomputed_whatever_the_policy(
    policy: str, terms_changed: bool, can_carry: bool
) -> None:
    decided = treatment(policy, final=False, terms_changed=terms_changed, can_carry=can_carry)
    assert decided is Treatment.RECOMPUTE


@given(any_policy, st.booleans(), st.booleans())
def test_a_final_invoice_is_never_recomputed(
    policy: str, terms_changed: bool, can_carry: bool
) -> None:
    """Promise 3: a finalized invoice never changes; its late events go somewhere else."""
    decided = treatment(policy, final=True, terms_changed=terms_changed, can_carry=can_carry)
    assert decided is not Treatment.RECOMPUTE


@given(any_policy, st.booleans(), st.booleans(), st.booleans())
def test_only_the_policy_that_names_it_waves_usage_through_or_carries_it(
    policy: str, final: bool, terms_changed: bool, can_carry: bool
) -> None:
    decided = treatment(policy, final=final, terms_changed=terms_changed, can_carry=can_carry)
    if decided is Treatment.IGNORE:
        assert (policy, final, terms_changed) == (IGNORE, True, False)
    if decided is Treatment.CARRY:
        assert (policy, final, terms_changed, can_carry) == (NEXT_INVOICE, True, False, True)
