"""Fees in advance cut short by a plan change or a cancellation: what the earlier invoice billed
(`billed_in_advance`), the settlement on the period's own invoice (`advance_settlement`), the
days a line names (`service_days`, `days_text`), and which run bills a cancelled
subscription's last period (`billed_windows`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from neruba_cli.domain.base_fee import (
    PhaseFee,
    advance_settlement,
    base_fee_lines,
    billed_in_advance,
    changes_within,
)
from neruba_cli.domain.billing_periods import Schedule, billed_windows, month_label
from neruba_cli.domain.catalog import PlanDef
from neruba_cli.domain.invoice import (
    InvoiceInput,
    PhasePlan,
    SubscriptionTerms,
    build_invoice,
    fee_description,
    plain_fee_description,
)
from neruba_cli.domain.periods import (
    Period,
    Phase,
    days_text,
    month_period,
    periods_between,
    service_days,
)

NOVEMBER = month_period("2026-11", "UTC")  # 30 days
D = Decimal
MODES = ("day", "second", "none")
ZONES = ("UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata")


def at(day: int, hour: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def fee(key: str, start: datetime, end: datetime | None, amount: str, mode="day") -> PhaseFee:
    return PhaseFee(Phase(start, end, key), D(amount), mode)


def test_the_worked_example_pro_to_max_on_day_16() -> None:
    # Pro 49.00 in advance to Max 99.00 on Nov 16 (30-day month): the October invoice billed
    # Pro 49.00 for November; November's own invoice credits 15/30 of it and charges Max 15/30.
    fees = [fee("pro@1", at(1, month=10), at(16), "49.00"), fee("max@1", at(16), None, "99.00")]
    (billed,) = billed_in_advance(NOVEMBER, fees, tz="UTC", currency="USD")
    assert (billed.plan, billed.amount, billed.fraction) == ("pro@1", D("49.00"), 1)
    credit, charge = advance_settlement(NOVEMBER, fees, tz="UTC", currency="USD")
    assert (credit.plan, credit.amount, credit.fraction, credit.credit) == (
        "pro@1",
        D("-24.50"),
        Fraction(1, 2),
        True,
    )
    assert (credit.service_start, credit.service_end) == (at(16), at(1, month=12))
    assert credit.days == (date(2026, 11, 16), date(2026, 11, 30))
    assert (charge.plan, charge.amount, charge.fraction, charge.credit) == (
        "max@1",
        D("49.50"),
        Fraction(1, 2),
        False,
    )
    assert (
        fee_description("Pro", credit, "advance")
        == "Pro base fee, unused 16 Nov – 30 Nov 2026 (credit)"
    )
    assert (
        fee_description("Max", charge, "advance")
        == "Max base fee, 16 Nov – 30 Nov 2026 (in advance)"
    )


def test_a_cancellation_credits_the_days_after_the_last_one_served() -> None:
    # cancelled Nov 20 at noon: Nov 1..20 served (the partial last day counts), 10 days unused
    fees = [fee("pro@1", at(1, month=10), at(20, 12), "30.00")]
    (credit,) = advance_settlement(
        NOVEMBER, fees, tz="UTC", currency="USD", subscription_end=at(20, 12)
    )
    assert (credit.amount, credit.fraction, credit.days) == (
        D("-10.00"),
        Fraction(1, 3),
        (date(2026, 11, 21), date(2026, 11, 30)),
    )
    # at midnight Nov 20: Nov 1..19 served, Nov 20..30 unused
    fees = [fee("pro@1", at(1, month=10), at(20), "30.00")]
    (credit,) = advance_settlement(
        NOVEMBER, fees, tz="UTC", currency="USD", subscription_end=at(20)
    )
    assert (credit.amount, credit.days) == (D("-11.00"), (date(2026, 11, 20), date(2026, 11, 30)))


def test_no_change_inside_the_period_settles_nothing() -> None:
    fees = [fee("pro@1", at(1, month=10), None, "49.00")]
    assert advance_settlement(NOVEMBER, fees, tz="UTC", currency="USD") == []
    assert not changes_within(NOVEMBER, [at(1, month=10)], start=at(1, month=10), end=None)
    # a boundary change is no change inside
    assert not changes_within(NOVEMBER, [at(1)], start=at(1, month=10), end=at(1, month=12))
    # the first period is billed as it is served: nothing was billed in advance before it
    assert not changes_within(NOVEMBER, [at(16)], start=at(3), end=None)
    assert changes_within(NOVEMBER, [at(1, month=10), at(16)], start=at(1, month=10), end=None)
    assert changes_within(NOVEMBER, [at(1, month=10)], start=at(1, month=10), end=at(20))


def test_without_proration_nothing_is_credited() -> None:
    fees = [
        fee("pro@1", at(1, month=10), at(16), "49.00", "none"),
        fee("max@1", at(16), None, "99.00", "none"),
    ]
    assert advance_settlement(NOVEMBER, fees, tz="UTC", currency="USD") == []


def test_a_change_from_arrears_to_advance_charges_the_new_plans_share() -> None:
    # only the advance plan's fees are given: the plan at the start (in arrears) billed
    # nothing in advance, so the settlement is the new plan's share alone
    fees = [fee("max@1", at(16), None, "99.00")]
    (charge,) = advance_settlement(NOVEMBER, fees, tz="UTC", currency="USD")
    assert (charge.plan, charge.amount, charge.credit) == ("max@1", D("49.50"), False)


def test_days_text() -> None:
    assert days_text(date(2026, 11, 1), date(2026, 11, 30)) == "1 Nov – 30 Nov 2026"
    assert days_text(date(2026, 11, 16), date(2026, 11, 16)) == "16 Nov 2026"
    assert days_text(date(2026, 12, 15), date(2027, 1, 14)) == "15 Dec 2026 – 14 Jan 2027"
    assert (
        plain_fee_description("Pro base fee, 1 Nov – 30 Nov 2026 (in advance)")
        == "Pro base fee (in advance)"
    )
    assert (
        plain_fee_description("Pro base fee, unused 16 Nov – 30 Nov 2026 (credit) (correction)")
        == "Pro base fee (credit) (correction)"
    )
    assert plain_fee_description("Pro base fee (in arrears)") == "Pro base fee (in arrears)"


def test_service_days_in_a_time_zone() -> None:
    # Paris: November starts at 23:00 UTC on Oct 31
    paris = month_period("2026-11", "Europe/Paris")
    assert service_days(paris.start, paris.end, mode="day", tz="Europe/Paris") == (
        date(2026, 11, 1),
        date(2026, 11, 30),
    )
    assert service_days(paris.start, paris.end, mode="second", tz="Europe/Paris") == (
        date(2026, 11, 1),
        date(2026, 11, 30),
    )


@settings(deadline=None)
@given(
    st.sampled_from(ZONES),
    st.integers(min_value=1, max_value=30 * 24 - 1),
    st.sampled_from(MODES),
    st.sampled_from(["49.00", "99.99", "0.01", "12345.67"]),
    st.sampled_from(["99.00", "10.00", "0.03", "49.00"]),
    st.booleans(),
)
def test_billed_in_advance_plus_the_settlement_is_exactly_what_the_service_owes(
    tz: str, hours: int, mode: str, old: str, new: str, cancelled: bool
) -> None:
    """After a plan change (or the end) anywhere inside the period, the fee billed in advance
    and the settlement add up, to the minor unit, to the fee the period's service owes; the
    credit is never positive and is the only line of the plan billed in advance."""
    period = month_period("2026-11", tz)
    moment = period.start + timedelta(hours=hours)
    before = fee("pro@1", period.start - timedelta(days=40), moment, old, mode)
    fees = [before] if cancelled else [before, fee("max@1", moment, None, new, mode)]
    end = moment if cancelled else None
    billed = billed_in_advance(period, fees, tz=tz, currency="USD")
    settled = advance_settlement(period, fees, tz=tz, currency="USD", subscription_end=end)
    owed = base_fee_lines(period, fees, tz=tz, currency="USD", subscription_end=end)
    total = sum((line.amount for line in billed + settled), D(0))
    assert total == sum((line.amount for line in owed), D(0))
    with localcontext() as context:
        context.prec = 100
        exact = sum((line.amount_exact for line in billed + settled), D(0))
        owed_exact = sum((line.amount_exact for line in owed), D(0))
        # exact when the plan billed in advance has its credit line; a credit that rounds to
        # nothing is left out (less than a minor unit)
        if any(line.credit for line in settled) or not billed:
            assert exact == owed_exact
        else:
            assert abs(exact - owed_exact) < D("0.01")
    credits = [line for line in settled if line.credit]
    assert len(credits) <= 1
    for credit in credits:
        assert credit.plan == "pro@1" and credit.amount < 0
        assert credit.service_end == period.end
        assert [line for line in settled if line.plan == "pro@1"] == [credit]
        served = next((line for line in owed if line.plan == "pro@1"), None)
        assert credit.fraction == 1 - (served.fraction if served else 0)
        if mode == "day" and credit.days is not None:
            # the credited days and the days served are the whole period, no day twice
            first, last = credit.days
            whole = service_days(period.start, period.end, mode="day", tz=tz)
            assert whole is not None and last == whole[1]
            assert (last - first).days + 1 == credit.fraction * ((whole[1] - whole[0]).days + 1)
            if served is not None and served.days is not None:
                assert served.days[1] + timedelta(days=1) == first
    if mode == "none":
        assert settled == []


@settings(deadline=None)
@given(
    st.sampled_from(ZONES),
    st.sampled_from(["month", "quarter", "week", "year"]),
    st.sampled_from(["calendar", "anniversary"]),
    st.integers(min_value=0, max_value=200 * 24),
    st.integers(min_value=1, max_value=400 * 24),
)
def test_every_period_of_a_cancelled_subscription_is_billed_once_the_last_in_its_month(
    tz: str, interval: str, anchor: str, start_hours: int, length_hours: int
) -> None:
    """Over every month, each period the subscription served is billed by exactly one run;
    the last one by the run of the month its service ends in, up to the cancellation when
    that month is earlier than the period's own end; no run bills past the end."""
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=start_hours)
    end = start + timedelta(hours=length_hours)
    schedule = Schedule(interval, anchor, start, end, tz)  # type: ignore[arg-type]
    labels = []
    month = month_period(month_label(start, tz), tz)
    while month.start < end + timedelta(days=1):
        labels.append(month_label(month.start, tz))
        month = month_period(month_label(month.end, tz), tz)
    billed: dict[Period, tuple[str, Period]] = {}
    for label in labels:
        for period, window in billed_windows(schedule, label):
            assert period not in billed, (period, label)
            billed[period] = (label, window)
    anchor_at = start if anchor == "anniversary" else datetime(2000, 1, 1, tzinfo=UTC)
    served = periods_between(
        start, end, interval=interval, anchor=anchor, anchor_at=anchor_at, tz=tz
    )  # type: ignore[arg-type]
    assert sorted(billed) == served
    last = served[-1]
    label, window = billed[last]
    assert label == month_label(end - timedelta(microseconds=1), tz)
    assert window.end == (end if window != last else last.end)
    assert window.end <= last.end and window.start == last.start
    for period in served[:-1]:
        assert billed[period][1] == period


# --------------------------------------------------------------------------- the invoice


def _plan(code: str, fee: str, timing: str = "advance") -> PlanDef:
    return PlanDef(
        code=code,
        currency="USD",
        interval="month",
        base_fee=D(fee),
        base_fee_timing=timing,  # type: ignore[arg-type]
        proration="day",
        trial_days=0,
        charges=(),
        name=code.capitalize(),
    )


def _november_invoice(
    change: datetime | None, end: datetime | None = None, old_timing: str = "advance"
) -> InvoiceInput:
    start = at(1, month=10)
    pro = _plan("pro", "49.00", old_timing)
    phases = [PhasePlan(Phase(start, change or end, "pro@1"), pro, "sha256:pro")]
    if change is not None:
        phases.append(PhasePlan(Phase(change, end, "max@1"), _plan("max", "99.00"), "sha256:max"))
    december = month_period("2026-12", "UTC")
    fee_periods: list[tuple[Period, str]] = [(NOVEMBER, "arrears")]
    if end is None:
        fee_periods.append((december, "advance"))
    terms = SubscriptionTerms(
        id="sub_1",
        start=start,
        end=end,
        trial_end=None,
        phases=tuple(phases),
        fee_periods=tuple(fee_periods),  # type: ignore[arg-type]
        pieces=(),
    )
    return InvoiceInput("c1", "USD", "UTC", "half_even", NOVEMBER, "2026-11", (terms,))


def _lines(built: Any) -> list[tuple[str, str]]:
    return [(line["description"], line["amount"]) for line in built.content["lines"]]


def test_the_invoice_of_the_period_of_a_change_settles_its_fee_in_advance() -> None:
    built = build_invoice(_november_invoice(at(16)))
    assert _lines(built) == [
        ("Pro base fee, unused 16 Nov – 30 Nov 2026 (credit)", "-24.50"),
        ("Max base fee, 16 Nov – 30 Nov 2026 (in advance)", "49.50"),
        ("Max base fee, 1 Dec – 31 Dec 2026 (in advance)", "99.00"),
    ]
    assert built.content["total"] == "124.00"
    assert built.content["lines"][0]["credit"] == {
        "billed_plan": "pro@1",
        "next_plan": "max@1",
        "ended": False,
    }
    entries = built.inputs["subscriptions"][0]["fee_periods"]
    assert [entry.get("advance") for entry in entries] == ["settled", None]


def test_a_cancellation_credits_the_fee_in_advance_and_bills_nothing_after() -> None:
    built = build_invoice(_november_invoice(None, end=at(20)))
    assert _lines(built) == [("Pro base fee, unused 20 Nov – 30 Nov 2026 (credit)", "-17.97")]
    assert built.content["lines"][0]["credit"]["ended"] is True


def test_a_change_from_a_plan_in_arrears_bills_the_new_plans_share_in_advance() -> None:
    built = build_invoice(_november_invoice(at(16), old_timing="arrears"))
    assert _lines(built) == [
        ("Pro base fee, 1 Nov – 15 Nov 2026 (in arrears)", "24.50"),
        ("Max base fee, 16 Nov – 30 Nov 2026 (in advance)", "49.50"),
        ("Max base fee, 1 Dec – 31 Dec 2026 (in advance)", "99.00"),
    ]


def test_inputs_without_a_change_inside_a_period_keep_their_old_form() -> None:
    """Invoices stored before settlements existed keep their inputs, and so their setup
    fingerprint: a fee period gains a mark only where a change or an end cuts a fee in
    advance short, so a rerun reprices exactly those."""
    built = build_invoice(_november_invoice(None))
    entries = built.inputs["subscriptions"][0]["fee_periods"]
    assert entries == [
        {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z", "timing": "arrears"},
        {"start": "2026-12-01T00:00:00Z", "end": "2027-01-01T00:00:00Z", "timing": "advance"},
    ]
    assert _lines(built) == [("Pro base fee, 1 Dec – 31 Dec 2026 (in advance)", "49.00")]
    # the October invoice, billing November in advance before a change on Nov 16
    october = month_period("2026-10", "UTC")
    inp = _november_invoice(at(16))
    (terms,) = inp.subscriptions
    terms = replace(
        terms, fee_periods=((october, "arrears"), (october, "advance"), (NOVEMBER, "advance"))
    )
    built = build_invoice(replace(inp, period=october, label="2026-10", subscriptions=(terms,)))
    assert _lines(built) == [
        ("Pro base fee, 1 Oct – 31 Oct 2026 (in advance)", "49.00"),
        ("Pro base fee, 1 Nov – 30 Nov 2026 (in advance)", "49.00"),
    ]
    entries = built.inputs["subscriptions"][0]["fee_periods"]
    assert [entry.get("advance") for entry in entries] == [None, None, "at_start"]
