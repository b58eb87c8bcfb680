"""The pure invoice builder: properties over generated plans, usage and one-off charges."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from neruba_cli.domain.aggregation import MeterSpec
from neruba_cli.domain.catalog import PlanDef
from neruba_cli.domain.invoice import (
    InvoiceInput,
    MeterUsage,
    OneOffCharge,
    PhasePlan,
    SubscriptionTerms,
    UsagePiece,
    build_invoice,
    correction_kind,
    correction_lines,
    line_key,
)
from neruba_cli.domain.periods import Period, Phase
from neruba_cli.domain.pricing import Charge, Tier

OCTOBER = Period(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
EXPONENT = {"USD": 2, "JPY": 0, "KWD": 3}


def money(places: int, high: int = 10**6) -> st.SearchStrategy[Decimal]:
    """Decimal strings with up to `places` decimals, as a catalog would hold them."""
    return st.integers(0, high).map(lambda n: Decimal(f"{n}E-{places}"))


@st.composite
def charges(draw: st.DrawFn, meter: str) -> Charge:
    if draw(st.booleans()):
        return Charge(
            meter,
            "per_unit",
            unit_amount=draw(money(draw(st.integers(0, 6)))),
            free_units=Decimal(draw(st.sampled_from([0, 0, 10, 1000]))),
        )
    bounds = sorted(draw(st.sets(st.integers(1, 5000), min_size=1, max_size=3)))
    tiers = [Tier(Decimal(bound), draw(money(4, 10**5)), draw(money(2, 10**4))) for bound in bounds]
    tiers.append(Tier(None, draw(money(4, 10**5)), draw(money(2, 10**4))))
    return Charge(meter, "graduated", tiers=tuple(tiers))


@st.composite
def terms(draw: st.DrawFn, index: int) -> SubscriptionTerms:
    meters = draw(st.lists(st.sampled_from(["api", "tokens", "gb"]), unique=True, max_size=3))
    plan = PlanDef(
        code=f"p{index}",
        currency="USD",
        interval="month",
        base_fee=draw(money(2, 10**5)),
        base_fee_timing="arrears",
        proration="day",
        trial_days=0,
        charges=tuple(draw(charges(meter)) for meter in meters),
    )
    start = OCTOBER.start + timedelta(days=draw(st.integers(0, 30)), hours=draw(st.integers(0, 23)))
    key = f"p{index}@1"
    usage = {
        meter: MeterUsage(
            Decimal(draw(st.integers(0, 10**6))) / (10 ** draw(st.integers(0, 3))),
            draw(st.integers(0, 10**4)),
        )
        for meter in meters
    }
    return SubscriptionTerms(
        id=f"sub_{index}",
        start=start,
        end=None,
        trial_end=None,
        phases=(
            PhasePlan(
                Phase(start, None, key),
                plan,
                f"sha256:{index}",
                {m: MeterSpec(m, "sum") for m in meters},
            ),
        ),
        fee_periods=((OCTOBER, "arrears"),),
        pieces=(UsagePiece(key, max(start, OCTOBER.start), OCTOBER.end, usage),),
    )


one_offs = st.lists(
    st.builds(
        OneOffCharge,
        key=st.text("abcdef0123456789", min_size=1, max_size=8),
        description=st.sampled_from(["setup", "support", "refund"]),
        amount=st.integers(-(10**6), 10**6).map(lambda n: Decimal(f"{n}E-3")),
        at=st.integers(0, 30 * 86400).map(lambda s: OCTOBER.start + timedelta(seconds=s)),
    ),
    max_size=4,
    unique_by=lambda c: c.key,
)


@st.composite
def inputs(draw: st.DrawFn) -> InvoiceInput:
    count = draw(st.integers(1, 2))
    return InvoiceInput(
        customer="c1",
        currency=draw(st.sampled_from(sorted(EXPONENT))),
        timezone="UTC",
        rounding=draw(st.sampled_from(["half_even", "half_up"])),
        period=OCTOBER,
        label="2026-10",
        subscriptions=tuple(draw(terms(i)) for i in range(count)),
        charges=tuple(draw(one_offs)),
    )


def amounts(lines: list[dict[str, Any]]) -> dict[tuple[Any, ...], Decimal]:
    found: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
    for line in lines:
        found[line_key(line)] += Decimal(line["amount"])
    return {key: amount for key, amount in found.items() if amount != 0}


def with_usage(inp: InvoiceInput, scale: int, drop_charges: int) -> InvoiceInput:
    """The same set-up with other usage and fewer one-off charges."""
    subscriptions = []
    for sub in inp.subscriptions:
        pieces = tuple(
            UsagePiece(
                piece.phase_key,
                piece.start,
                piece.end,
                {
                    meter: MeterUsage(usage.value * scale / 2, usage.count + scale)
                    for meter, usage in piece.usage.items()
                },
            )
            for piece in sub.pieces
        )
        subscriptions.append(
            SubscriptionTerms(
                sub.id, sub.start, sub.end, sub.trial_end, sub.phases, sub.fee_periods, pieces
            )
        )
    return InvoiceInput(
        inp.customer,
        inp.currency,
        inp.timezone,
        inp.rounding,
        inp.period,
        inp.label,
        tuple(subscriptions),
        inp.charges[drop_charges:],
    )


@settings(max_examples=80, deadline=None)
@given(inputs())
def test_totals_are_sums_of_lines_rounded_once(inp: InvoiceInput) -> None:
    built = build_invoice(inp)
    content = built.content
    places = EXPONENT[inp.currency]
    quantum = Decimal(1).scaleb(-places)
    total = Decimal(0)
    for line in content["lines"]:
        amount = Decimal(line["amount"])
        assert amount == amount.quantize(quantum)
        assert -amount.as_tuple().exponent == places  # spelled with the currency's decimals
        exact = Decimal(line["amount_exact"])
        if inp.rounding == "half_even":
            assert amount == exact.quantize(quantum, rounding=ROUND_HALF_EVEN)
        assert abs(amount - exact) <= quantum / 2
        total += amount
    assert Decimal(content["subtotal"]) == total == built.total == Decimal(content["total"])
    assert content["credits_applied"] == str(Decimal(0).quantize(quantum))
    # one line per base fee, per charge of each plan (plus a minimum line where there is one),
    # per one-off charge; the line keys are unique
    keys = [line_key(line) for line in content["lines"]]
    assert len(keys) == len(set(keys))
    assert sum(1 for line in content["lines"] if line["kind"] == "charge") == len(inp.charges)


@settings(max_examples=60, deadline=None)
@given(inputs(), st.randoms(use_true_random=False))
def test_the_order_of_the_inputs_changes_nothing(inp: InvoiceInput, rng: Any) -> None:
    built = build_invoice(inp)
    charges_shuffled = list(inp.charges)
    rng.shuffle(charges_shuffled)
    subs_shuffled = list(inp.subscriptions)
    rng.shuffle(subs_shuffled)
    other = InvoiceInput(
        inp.customer,
        inp.currency,
        inp.timezone,
        inp.rounding,
        inp.period,
        inp.label,
        tuple(subs_shuffled),
        tuple(charges_shuffled),
    )
    again = build_invoice(other)
    assert again.fingerprint == built.fingerprint
    assert again.setup_fingerprint == built.setup_fingerprint
    assert again.content == built.content


@settings(max_examples=80, deadline=None)
@given(inputs(), st.integers(0, 5), st.integers(0, 4))
def test_a_correction_on_top_of_the_original_gives_the_new_invoice(
    inp: InvoiceInput, scale: int, drop: int
) -> None:
    old = build_invoice(inp)
    new = build_invoice(with_usage(inp, scale, drop))
    assert new.setup_fingerprint != old.setup_fingerprint or drop == 0 or not inp.charges
    delta = correction_lines(new.content["lines"], [old.content["lines"]], inp.currency)
    assert all(Decimal(line["amount"]) != 0 for line in delta)
    applied = amounts(old.content["lines"])
    for line in delta:
        key = line_key(line)
        applied[key] = applied.get(key, Decimal(0)) + Decimal(line["amount"])
    assert {k: v for k, v in applied.items() if v != 0} == amounts(new.content["lines"])
    # removed one-off charges are reversed in full
    for charge in inp.charges[:drop]:
        reversal = [line for line in delta if line.get("reference") == charge.key]
        original = [line for line in old.content["lines"] if line.get("reference") == charge.key]
        if Decimal(original[0]["amount"]) != 0:
            assert [Decimal(line["amount"]) for line in reversal] == [
                -Decimal(original[0]["amount"])
            ]
    total = sum((Decimal(line["amount"]) for line in delta), Decimal(0))
    assert total == new.total - old.total
    if delta:
        assert correction_kind(total) == ("credit_note" if total < 0 else "supplemental")
    # a second correction over the original and the first correction is empty
    assert correction_lines(new.content["lines"], [old.content["lines"], delta], inp.currency) == []


@settings(max_examples=60, deadline=None)
@given(inputs())
def test_correcting_identical_content_is_empty(inp: InvoiceInput) -> None:
    built = build_invoice(inp)
    assert correction_lines(built.content["lines"], [built.content["lines"]], inp.currency) == []
    assert build_invoice(inp).fingerprint == built.fingerprint
