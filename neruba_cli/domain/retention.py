"""Retention rules: which billing months may lose their raw event detail, and which detail.

`neruba retention apply --older-than AGE` drops event properties that no meter reads, for the
events of closed, settled months only, so that a rerun of such a month still gives the same
invoices. The rule, in full (services/ops/retention.py gathers the facts, this module decides):

A month (YYYY-MM, the label of `run bill --period` and of `invoices.period`) is **eligible**
when all of these hold:

1. it has at least one invoice;
2. every invoice of the month is final: finalized, paid or void (no draft);
3. it ended more than AGE ago: the latest `period_end` of its invoices is at or before
   `as_of - AGE` (months and years on the calendar, days and weeks as fixed lengths);
4. nothing is pending: for each customer and billing period of the month, the live invoice
   (the latest revision that is not void) counted exactly the events that are stored for that
   customer and period now. This is the test a billing run uses to notice late events
   (services/billing/plan.py `needs_pricing`): events are append-only, so an unchanged count
   means nothing arrived since the last run;
5. when the project pushes to Stripe (it has any Stripe link at all), every finalized or paid
   invoice of the month was pushed and its Stripe invoice finalized.

For the events of an eligible month (those of each live invoice's customer inside its billing
period), every property key that no meter reads is removed. A meter reads the property of its
field (`properties.X`) and of each of its filters; the meters are those of the catalog now
*and* of every stored plan version, since a rerun prices with the plan version's own copy.
The quantity, timestamp, idempotency key and payload hash stay, so aggregation gives the same
numbers and re-importing an original line is still a duplicate, never a conflict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from neruba_cli.domain.aggregation import MeterSpec
from neruba_cli.domain.errors import InvalidInput, UsageError
from neruba_cli.domain.timestamps import format_ts, parse_duration, shift_by_duration

AGE_UNITS = ("d", "w", "m", "y")
FINAL_STATUSES = ("finalized", "paid", "void")

# Why a month is skipped, for scripts (`skipped[].code` of `retention apply --json`); one per
# rule, in the order `judge` tests them. Only NOT_OLD_ENOUGH is the normal state of a month.
NO_INVOICES = "no_invoices"
NOT_OLD_ENOUGH = "not_old_enough"
DRAFTS = "drafts"
PENDING_EVENTS = "pending_events"
NOT_PUSHED = "not_pushed"
SKIP_CODES = (NO_INVOICES, NOT_OLD_ENOUGH, DRAFTS, PENDING_EVENTS, NOT_PUSHED)


@dataclass(frozen=True)
class Age:
    """How old a month must be: `13m`, `90d`, `2y`, `8w` (m = months)."""

    text: str
    amount: int
    unit: str

    def cutoff(self, as_of: datetime) -> datetime:
        """The moment a month must have ended by to be eligible."""
        return shift_by_duration(as_of, self.text, sign=-1, field="--older-than")


def parse_age(text: str) -> Age:
    raw = text.strip()
    amount, unit = parse_duration(raw, field="--older-than")
    if unit not in AGE_UNITS:
        raise InvalidInput(
            f"--older-than: {text!r} is too short a unit for retention",
            hint="use days, weeks, months or years, e.g. 90d, 8w, 13m or 2y",
        )
    if amount <= 0:
        raise InvalidInput(f"--older-than: {text!r} must be more than zero")
    return Age(raw, amount, unit)


def check_as_of(as_of: datetime, now: datetime) -> None:
    """Ages are measured from a moment that has passed: a future `--as-of` would count months
    as old that are not (and their events may still be billed), so it is a usage error."""
    if as_of > now:
        raise UsageError(
            f"--as-of {format_ts(as_of)} is in the future: it would count months as old "
            "that are not",
            hint="leave --as-of out to measure from now, or give a moment in the past",
        )


@dataclass(frozen=True)
class MonthFacts:
    """What the database says about one billing month."""

    label: str
    invoices: int
    drafts: int
    last_end: datetime | None  # latest period_end of its invoices
    pending: int = 0  # customer periods whose live invoice counted fewer/more events than stored
    unpushed: int = 0  # final invoices not (fully) pushed to Stripe


@dataclass(frozen=True)
class Verdict:
    label: str
    eligible: bool
    reason: str | None  # why not, for the operator
    code: str | None = None  # why not, for a program: one of SKIP_CODES


def judge(facts: MonthFacts, cutoff: datetime, *, pushes_to_stripe: bool) -> Verdict:
    """Rule 1-5 of the module docstring, in the order an operator would fix them."""
    if facts.invoices == 0 or facts.last_end is None:
        return Verdict(facts.label, False, "no invoices", NO_INVOICES)
    if facts.last_end > cutoff:
        return Verdict(facts.label, False, "not old enough", NOT_OLD_ENOUGH)
    if facts.drafts:
        return Verdict(facts.label, False, f"{facts.drafts} draft invoice(s)", DRAFTS)
    if facts.pending:
        return Verdict(
            facts.label,
            False,
            f"events arrived after its last billing run for {facts.pending} customer period(s)"
            f" (rerun `neruba run bill --period {facts.label}`)",
            PENDING_EVENTS,
        )
    if pushes_to_stripe and facts.unpushed:
        return Verdict(
            facts.label,
            False,
            f"{facts.unpushed} final invoice(s) not pushed to Stripe"
            f" (`neruba stripe push --period {facts.label}`)",
            NOT_PUSHED,
        )
    return Verdict(facts.label, True, None)


def read_properties(meters: Iterable[MeterSpec]) -> frozenset[str]:
    """Every property some meter reads: its field's property and its filters' properties."""
    names: set[str] = set()
    for spec in meters:
        if spec.property_name is not None:
            names.add(spec.property_name)
        names.update(name for name, _ in spec.filters)
    return frozenset(names)


def keep_only(properties: Mapping[str, Any], kept: frozenset[str]) -> tuple[dict[str, Any], int]:
    """The properties a meter reads, and how many keys were dropped. Key order is kept."""
    remaining = {key: value for key, value in properties.items() if key in kept}
    return remaining, len(properties) - len(remaining)
