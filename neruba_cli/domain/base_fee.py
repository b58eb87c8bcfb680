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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Literal

from neruba_cli.domain.money import RoundingMode, round_to_minor
from neruba_cli.domain.periods import (
    Period,
    Phase,
    ProrationMode,
    prorate,
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
    pieces: list[tuple[str, datetime, datetime, Fraction, Decimal]] = []
    for phase, start, end in split_period(period, [fee.phase for fee in fees]):
        fee = by_key[phase.key]
        if trial_end is not None:
            if trial_end >= end:
                continue
            start = max(start, trial_end)
        if fee.proration == "none":
            # No proration: the plan in force when service in the period begins is charged in
            # full; a plan taking over later in the period starts charging next period.
            fraction = Fraction(0) if pieces else Fraction(1)
        else:
            ends_service = subscription_end is not None and end == subscription_end
            fraction = service_fraction(
                start, end, period, mode=fee.proration, tz=tz, ends_service=ends_service
            )
        if fraction == 0 or fee.base_fee == 0:
            continue
        pieces.append((phase.key, start, end, fraction, prorate(fee.base_fee, fraction)))
    return _rounded(pieces, currency, rounding)


def _rounded(
    pieces: list[tuple[str, datetime, datetime, Fraction, Decimal]],
    currency: str,
    rounding: RoundingMode,
) -> list[BaseFeeLine]:
    """Round the running total, not each piece: the lines then add up to the rounded whole
    (each line stays within one minor unit of its exact amount)."""
    lines: list[BaseFeeLine] = []
    running = Decimal(0)
    billed = Decimal(0)
    with localcontext() as context:
        context.prec = 60
        for key, start, end, fraction, exact in pieces:
            running += exact
            amount = round_to_minor(running, currency, rounding) - billed
            billed += amount
            lines.append(BaseFeeLine(key, start, end, fraction, exact, amount))
    return lines


def fee_period(timing: Timing, *, ended: Period, starting: Period) -> Period:
    """The period whose base fee a billing run at the boundary between two periods charges."""
    return starting if timing == "advance" else ended
