"""An invoice's fingerprint covers its business inputs and nothing a database makes up.

Properties over generated invoices: loading the same inputs in another order, under other
subscription ids, or with late usage carried from an invoice numbered otherwise gives the same
fingerprint; changing any business input changes it; an invoice fingerprinted the legacy way
(over the whole document, subscription ids included) is still recognised.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neruba_cli.domain.aggregation import MeterSpec
from neruba_cli.domain.catalog import PlanDef
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.invoice import (
    FINGERPRINT_FORM,
    LEGACY_FORM,
    CarriedUsage,
    InvoiceInput,
    MeterUsage,
    OneOffCharge,
    PhasePlan,
    SubscriptionTerms,
    UsagePiece,
    build_invoice,
    fingerprint_matches,
    in_form,
    inputs_document,
    inputs_fingerprint,
    inputs_form,
    setup_document,
    subscription_ids,
    with_subscription_ids,
)
from neruba_cli.domain.periods import Period, Phase
from neruba_cli.domain.pricing import Charge

OCTOBER = Period(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
NOVEMBER = Period(OCTOBER.end, datetime(2026, 12, 1, tzinfo=UTC))
METERS = ("api", "tokens")


def plan(code: str, fee: str) -> PlanDef:
    return PlanDef(
        code=code,
        currency="USD",
        interval="month",
        base_fee=Decimal(fee),
        base_fee_timing="arrears",
        proration="day",
        trial_days=0,
        charges=tuple(Charge(m, "per_unit", unit_amount=Decimal("0.01")) for m in METERS),
    )


@st.composite
def subscription(draw: st.DrawFn, index: int) -> SubscriptionTerms:
    """A subscription of October: on one plan, or changing plans mid-month."""
    day = draw(st.sampled_from([0, 0, 4, 15]))  # several start on the same instant
    start = OCTOBER.start + timedelta(days=day)
    code = draw(st.sampled_from(["basic", "pro"]))
    first = PhasePlan(
        Phase(start, None, f"{code}@1"),
        plan(code, "10.00"),
        f"sha256:{code}-1",
        {m: MeterSpec(m, "sum") for m in METERS},
    )
    phases = [first]
    if draw(st.booleans()):
        change = OCTOBER.start + timedelta(days=20)
        phases = [
            replace(first, phase=Phase(start, change, first.phase.key)),
            PhasePlan(
                Phase(change, None, "pro@2"),
                plan("pro", "49.00"),
                "sha256:pro-2",
                {m: MeterSpec(m, "sum") for m in METERS},
            ),
        ]
    pieces = []
    for phase_plan in phases:
        piece_start = max(phase_plan.phase.start, OCTOBER.start)
        piece_end = phase_plan.phase.end or OCTOBER.end
        usage = {
            m: MeterUsage(
                Decimal(draw(st.integers(0, 10**5))),
                draw(st.integers(0, 50)),
                piece_start,
                piece_end - timedelta(seconds=1),
            )
            for m in METERS
        }
        pieces.append(UsagePiece(phase_plan.phase.key, piece_start, piece_end, usage))
    end = draw(st.sampled_from([None, None, OCTOBER.start + timedelta(days=25)]))
    return SubscriptionTerms(
        id=f"sub_{index:02d}",
        start=start,
        end=end,
        trial_end=None,
        phases=tuple(phases),
        fee_periods=((OCTOBER, "arrears"),),
        pieces=tuple(pieces),
    )


carried_line: dict[str, Any] = {
    "kind": "usage",
    "description": "api",
    "subscription": "sub_09",
    "plan": "basic@1",
    "meter": "api",
    "service": {"start": "2026-09-01T00:00:00Z", "end": "2026-10-01T00:00:00Z"},
    "amount": "0.05",
    "amount_exact": "0.05",
    "quantity": "5",
}


@st.composite
def invoices(draw: st.DrawFn) -> InvoiceInput:
    count = draw(st.integers(1, 3))
    charges = draw(
        st.lists(
            st.builds(
                OneOffCharge,
                key=st.text("abcdef0123456789", min_size=1, max_size=6),
                description=st.sampled_from(["setup", "support"]),
                amount=st.integers(-(10**5), 10**5).map(lambda n: Decimal(f"{n}E-2")),
                at=st.sampled_from([OCTOBER.start, OCTOBER.start + timedelta(days=9)]),
            ),
            max_size=3,
            unique_by=lambda c: c.key,
        )
    )
    carried = (CarriedUsage("INV-000007", (carried_line,)),) if draw(st.booleans()) else ()
    return InvoiceInput(
        customer="c1",
        currency="USD",
        timezone="UTC",
        rounding="half_even",
        period=OCTOBER,
        label="2026-10",
        subscriptions=tuple(draw(subscription(i)) for i in range(count)),
        charges=tuple(charges),
        carried=carried,
    )


def loaded_elsewhere(inp: InvoiceInput, rng: Any) -> InvoiceInput:
    """The same business inputs as another database holds them: other subscription ids, rows
    in another order, late usage carried from an invoice with another number."""
    subscriptions = [
        replace(terms, id=f"sub_{rng.randrange(10**9):09d}x{n}")
        for n, terms in enumerate(inp.subscriptions)
    ]
    rng.shuffle(subscriptions)
    charges = list(inp.charges)
    rng.shuffle(charges)
    carried = tuple(
        CarriedUsage(
            f"INV-{rng.randrange(10**6):06d}",
            tuple({**line, "subscription": "sub_elsewhere"} for line in entry.lines),
        )
        for entry in inp.carried
    )
    return replace(inp, subscriptions=tuple(subscriptions), charges=tuple(charges), carried=carried)


def relabelled(content: dict[str, Any]) -> list[bytes]:
    """The lines without subscription ids nor the numbers of invoices late usage came from,
    as a sorted list: what two databases agree on."""
    return sorted(
        orjson.dumps(
            {**line, "subscription": None, "late_from": None, "description": None},
            option=orjson.OPT_SORT_KEYS,
        )
        for line in content["lines"]
    )


@settings(max_examples=80, deadline=None)
@given(invoices(), st.randoms(use_true_random=False))
def test_the_same_business_inputs_give_the_same_fingerprint(inp: InvoiceInput, rng: Any) -> None:
    built = build_invoice(inp)
    other = build_invoice(loaded_elsewhere(inp, rng))
    assert other.fingerprint == built.fingerprint
    assert other.setup_fingerprint == built.setup_fingerprint
    assert other.total == built.total
    assert relabelled(other.content) == relabelled(built.content)
    # each database's stored inputs name its own subscriptions, matched by their terms
    assert {t["id"] for t in built.inputs["subscriptions"]} == {t.id for t in inp.subscriptions}
    ids = subscription_ids(built.inputs, other.inputs)
    assert len(ids) == len(inp.subscriptions)
    mapped = with_subscription_ids(other.content, ids)

    def own(content: dict[str, Any]) -> list[bytes]:  # the lines of its own subscriptions
        return sorted(
            orjson.dumps(line, option=orjson.OPT_SORT_KEYS)
            for line in content["lines"]
            if not line.get("late_from")
        )

    assert own(mapped) == own(built.content)


def _first(inp: InvoiceInput, **changes: Any) -> InvoiceInput:
    terms = replace(inp.subscriptions[0], **changes)
    return replace(inp, subscriptions=(terms, *inp.subscriptions[1:]))


def _usage(inp: InvoiceInput, change: Callable[[MeterUsage], MeterUsage]) -> InvoiceInput:
    terms = inp.subscriptions[0]
    piece = terms.pieces[0]
    usage = {**piece.usage, "api": change(piece.usage["api"])}
    return _first(inp, pieces=(replace(piece, usage=usage), *terms.pieces[1:]))


def _phase(inp: InvoiceInput, change: Callable[[PhasePlan], PhasePlan]) -> InvoiceInput:
    terms = inp.subscriptions[0]
    return _first(inp, phases=(change(terms.phases[0]), *terms.phases[1:]))


def _charge(inp: InvoiceInput, **changes: Any) -> InvoiceInput:
    one = OneOffCharge("k1", "setup", Decimal("5.00"), OCTOBER.start)
    return replace(inp, charges=(*inp.charges, replace(one, **changes)))


DAY = timedelta(days=1)
# Each business input, changed: (name, what it does to the inputs, whether it is set-up).
CHANGES: list[tuple[str, Callable[[InvoiceInput], InvoiceInput], bool]] = [
    ("customer", lambda i: replace(i, customer="c2"), True),
    ("currency", lambda i: replace(i, currency="EUR"), True),
    ("time zone", lambda i: replace(i, timezone="Europe/Paris"), True),
    ("rounding", lambda i: replace(i, rounding="half_up"), True),
    ("month", lambda i: replace(i, label="2026-11", period=NOVEMBER), True),
    ("start", lambda i: _first(i, start=i.subscriptions[0].start - DAY), True),
    ("cancellation", lambda i: _first(i, end=OCTOBER.start + 27 * DAY), True),
    ("trial", lambda i: _first(i, trial_end=OCTOBER.start + 3 * DAY), True),
    ("fee period", lambda i: _first(i, fee_periods=((NOVEMBER, "advance"),)), True),
    (
        "plan version number",
        lambda i: _phase(i, lambda p: replace(p, phase=replace(p.phase, key=p.phase.key + "0"))),
        True,
    ),
    ("plan version content", lambda i: _phase(i, lambda p: replace(p, fingerprint="other")), True),
    (
        "plan change",
        lambda i: _phase(
            i, lambda p: replace(p, phase=replace(p.phase, end=OCTOBER.start + 18 * DAY))
        ),
        True,
    ),
    ("one-off key", lambda i: _charge(_charge(i), key="k2"), True),
    ("one-off amount", lambda i: _charge(i, amount=Decimal("5.01")), True),
    ("one-off text", lambda i: _charge(i, description="support"), True),
    ("one-off date", lambda i: _charge(i, at=OCTOBER.start + DAY), True),
    ("usage value", lambda i: _usage(i, lambda u: replace(u, value=u.value + 1)), False),
    ("event count", lambda i: _usage(i, lambda u: replace(u, count=u.count + 1)), False),
    ("last event", lambda i: _usage(i, lambda u: replace(u, last=OCTOBER.end - DAY)), False),
    (
        "carried usage",
        lambda i: replace(i, carried=(*i.carried, CarriedUsage("INV-1", (carried_line,)))),
        True,
    ),
]


@settings(max_examples=60, deadline=None)
@given(invoices(), st.sampled_from(CHANGES))
def test_changing_any_business_input_changes_the_fingerprint(
    inp: InvoiceInput, change: tuple[str, Callable[[InvoiceInput], InvoiceInput], bool]
) -> None:
    name, apply, setup = change
    before = inputs_document(inp)
    after = inputs_document(apply(inp))
    assert inputs_fingerprint(after) != inputs_fingerprint(before), name
    same_setup = inputs_fingerprint(setup_document(after)) == inputs_fingerprint(
        setup_document(before)
    )
    assert same_setup is not setup, name


def legacy_fingerprint(document: Any) -> str:
    """The formula of invoices written before fingerprint form 2: the SHA-256 of the whole
    canonical inputs document, subscription ids included."""
    return (
        "sha256:" + hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()
    )


@settings(max_examples=40, deadline=None)
@given(invoices(), st.randoms(use_true_random=False))
def test_a_legacy_fingerprint_is_recognised_in_its_own_database(
    inp: InvoiceInput, rng: Any
) -> None:
    built = build_invoice(inp)
    stored = in_form(built.inputs, LEGACY_FORM)  # what the earlier version stored
    assert "fingerprint_form" not in stored and inputs_form(stored) == LEGACY_FORM
    old, old_setup = legacy_fingerprint(stored), legacy_fingerprint(setup_document(stored))
    assert old != built.fingerprint
    assert inputs_fingerprint(stored) == old  # `invoice verify`'s check of the stored document
    assert built.same_fingerprint(old) and built.same_setup(old_setup)
    assert fingerprint_matches(old, built.inputs)
    assert inputs_form(built.inputs) == FINGERPRINT_FORM
    # the legacy form covers subscription ids: other ids do not reproduce it
    elsewhere = build_invoice(loaded_elsewhere(inp, rng))
    assert not elsewhere.same_fingerprint(old)
    assert elsewhere.same_fingerprint(built.fingerprint)


def test_an_unknown_fingerprint_form_is_refused() -> None:
    with pytest.raises(InvalidInput, match="fingerprint form 9"):
        inputs_fingerprint({"fingerprint_form": 9, "subscriptions": []})
