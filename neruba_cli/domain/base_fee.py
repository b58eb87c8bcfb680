"""Base fees of a subscription for one billing period: prorated pieces, trials, plan changes.

The period is split at plan changes (`periods.split_period`); each piece is charged its plan's
base fee times the share of the period it covers (`periods.service_fraction`, with the plan's
proration mode, in the customer's time zone). Days still inside the trial are not charged. A
piece that ends because the subscription ends counts its partial last day; a piece that ends at
a plan change gives that day to the next plan, so the pieces of a fully covered period always
add up to exactly one period. With proration `none` a period is charged once, in full, to the
plan in force when service in it begins. Lines are rounded so that they add up to the rounded
total.

When a fee is billed is the plan's `base_fee_timing`: `advance` fees are for the period that
is starting, `arrears` fees for the period that has ended (`fee_period`). Which invoice carries
them is the billing run's business; the amounts are decided here.

A fee billed in advance for a period other than the subscription's first is the fee of the plan
in force when that period starts, for the whole period (trial days excepted): nothing later in
the period can be known when it is billed (`billed_in_advance`). A plan change or the end of
the subscription inside such a period is settled on the period's own invoice
(`advance_settlement`): a credit for the unused part of the fee billed in advance and the share
of each plan that took over, each prorated by its plan's mode, so that what was billed in
advance plus the settlement is exactly what the period's service owes (`base_fee_lines`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Literal

from neruba_cli.domain.money import RoundingMode, round_to_minor
from neruba_cli.domain.periods import (
    Period,
    Phase,
    ProrationMode,
    prorate,
    service_days,
    service_fraction,
    split_period,
)

Timing = Literal["advance", "arrears"]


@dataclass(frozen=True)
class PhaseFee:
    """What a phase's plan version says about its base fee."""

    phase: Phase
    base_fee: Decimal
    proration: ProrationMode


@dataclass(frozen=True)
class BaseFeeLine:
    plan: str  # the phase key, e.g. "pro@2"
    service_start: datetime
    service_end: datetime
    fraction: Fraction
    amount_exact: Decimal
    amount: Decimal  # rounded once to the currency's minor unit
    days: tuple[date, date] | None = None  # the local days charged (credited), both inclusive
    credit: bool = False  # the unused part of a fee billed in advance (a negative amount)


def base_fee_lines(
    period: Period,
    fees: Sequence[PhaseFee],
    *,
    tz: str,
    currency: str,
    trial_end: datetime | None = None,
    subscription_end: datetime | None = None,
    rounding: RoundingMode = "half_even",
) -> list[BaseFeeLine]:
    """One line per piece of `period` that is served and out of trial; zero pieces omitted."""
    by_key = {fee.phase.key: fee for fee in fees}
    pieces: list[_Piece] = []
    for phase, start, end in split_period(period, [fee.phase for fee in fees]):
        fee = by_key[phase.key]
        if trial_end is not None:
            if trial_end >= end:
                continue
            start = max(start, trial_end)
        ends_service = subscription_end is not None and end == subscription_end
        if fee.proration == "none":
            # No proration: the plan in force when service in the period begins is charged in
            # full; a plan taking over later in the period starts charging next period.
            fraction = Fraction(0) if pieces else Fraction(1)
        else:
            fraction = service_fraction(
                start, end, period, mode=fee.proration, tz=tz, ends_service=ends_service
            )
        if fraction == 0 or fee.base_fee == 0:
            continue
        days = service_days(start, end, mode=fee.proration, tz=tz, ends_service=ends_service)
        pieces.append((phase.key, start, end, fraction, prorate(fee.base_fee, fraction), days))
    return _rounded(pieces, currency, rounding)


_Piece = tuple[str, datetime, datetime, Fraction, Decimal, tuple[date, date] | None]


def _rounded(pieces: list[_Piece], currency: str, rounding: RoundingMode) -> list[BaseFeeLine]:
    """Round the running total, not each piece: the lines then add up to the rounded whole
    (each line stays within one minor unit of its exact amount)."""
    lines: list[BaseFeeLine] = []
    running = Decimal(0)
    billed = Decimal(0)
    with localcontext() as context:
        context.prec = 60
        for key, start, end, fraction, exact, days in pieces:
            running += exact
            amount = round_to_minor(running, currency, rounding) - billed
            billed += amount
            lines.append(BaseFeeLine(key, start, end, fraction, exact, amount, days))
    return lines


def billed_in_advance(
    period: Period,
    fees: Sequence[PhaseFee],
    *,
    tz: str,
    currency: str,
    trial_end: datetime | None = None,
    rounding: RoundingMode = "half_even",
) -> list[BaseFeeLine]:
    """The fee billed in advance for `period` (not the subscription's first): the fee of the
    plan in force when it starts, when that plan's fee is among `fees`, for the whole period
    (trial days excepted), whatever changes inside it."""
    at_start = next(
        (
            fee
            for fee in fees
            if fee.phase.start <= period.start
            and (fee.phase.end is None or fee.phase.end > period.start)
        ),
        None,
    )
    if at_start is None:
        return []
    whole = PhaseFee(
        Phase(at_start.phase.start, None, at_start.phase.key), at_start.base_fee, at_start.proration
    )
    return base_fee_lines(
        period, [whole], tz=tz, currency=currency, trial_end=trial_end, rounding=rounding
    )


def advance_settlement(
    period: Period,
    fees: Sequence[PhaseFee],
    *,
    tz: str,
    currency: str,
    trial_end: datetime | None = None,
    subscription_end: datetime | None = None,
    rounding: RoundingMode = "half_even",
) -> list[BaseFeeLine]:
    """What turns the fee billed in advance for `period` (`billed_in_advance`) into what its
    service owes (`base_fee_lines`) after a plan change or the subscription's end inside it:
    a credit line (negative) for the unused part of the plan billed in advance, then a line for
    each plan that took over (its prorated fee). The billed line plus these lines add up to
    exactly the lines the service owes; nothing when they already agree."""
    billed = billed_in_advance(
        period, fees, tz=tz, currency=currency, trial_end=trial_end, rounding=rounding
    )
    owed = base_fee_lines(
        period,
        fees,
        tz=tz,
        currency=currency,
        trial_end=trial_end,
        subscription_end=subscription_end,
        rounding=rounding,
    )
    if not billed:
        return owed
    paid = billed[0]
    used = next((line for line in owed if line.plan == paid.plan), None)
    others = [line for line in owed if line.plan != paid.plan]
    amount = (used.amount if used else Decimal(0)) - paid.amount
    if amount == 0:
        return others
    fee = next(fee for fee in fees if fee.phase.key == paid.plan)
    start = used.service_end if used is not None else _unused_from(fee, period, paid)
    days = service_days(
        start,
        period.end,
        mode=fee.proration,
        tz=tz,
        after_end=subscription_end is not None and start == subscription_end,
    )
    with localcontext() as context:
        context.prec = 80
        unused_exact = (used.amount_exact if used else Decimal(0)) - paid.amount_exact
    credit = BaseFeeLine(
        paid.plan,
        start,
        period.end,
        paid.fraction - (used.fraction if used else Fraction(0)),
        unused_exact,
        amount,
        days,
        credit=True,
    )
    return [credit, *others]


def _unused_from(fee: PhaseFee, period: Period, paid: BaseFeeLine) -> datetime:
    """Where the plan billed in advance stopped serving, when the period owes it nothing."""
    if fee.phase.end is not None and period.start <= fee.phase.end < period.end:
        return max(fee.phase.end, paid.service_start)
    return paid.service_start


def changes_within(
    period: Period,
    phase_starts: Sequence[datetime],
    *,
    start: datetime,
    end: datetime | None,
) -> bool:
    """Whether the fee billed in advance for `period` needs settling on its own invoice: the
    subscription started before it (so an earlier invoice billed it in advance) and a plan
    change or the subscription's end falls strictly inside it."""
    if start >= period.start:
        return False
    if end is not None and period.start < end < period.end:
        return True
    return any(period.start < moment < period.end for moment in phase_starts)


def fee_period(timing: Timing, *, ended: Period, starting: Period) -> Period:
    """The period whose base fee a billing run at the boundary between two periods charges."""
    return starting if timing == "advance" else ended
