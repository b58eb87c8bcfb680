"""Pricing a plan for given usage: the lines an invoice for one full period would carry.

Used by `catalog quote` (a calculator for sales and support) through the same rating engine
billing uses, so a quote and an invoice for the same usage agree to the cent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from neruba_cli.domain.catalog import PlanDef
from neruba_cli.domain.grouping import (
    GroupKey,
    billed_keys,
    charge_for,
    group_document,
)
from neruba_cli.domain.money import RoundingMode, decimal_text, format_amount, round_to_minor
from neruba_cli.domain.pricing import (
    Charge,
    TierLine,
    Usage,
    price_lines,
    rate_charge,
    tier_document,
)

LineKind = Literal["base_fee", "usage", "minimum"]


@dataclass(frozen=True)
class QuoteLine:
    kind: LineKind
    meter: str | None
    charge_model: str | None
    quantity: Decimal | None
    amount: Decimal
    amount_exact: Decimal
    tiers: tuple[TierLine, ...] = ()
    group: dict[str, str | None] | None = None  # a grouped charge's group


@dataclass(frozen=True)
class Quote:
    plan: str
    currency: str
    lines: tuple[QuoteLine, ...]

    @property
    def total(self) -> Decimal:
        """A sum of rounded lines, never a rounded sum."""
        return sum((line.amount for line in self.lines), Decimal(0))


def quote_plan(
    plan: PlanDef,
    usage: Mapping[str, Usage],
    *,
    rounding: RoundingMode = "half_even",
    groups: Mapping[str, Mapping[GroupKey, Usage]] | None = None,
) -> Quote:
    """One full period on the plan: the base fee (no proration, no trial) and every charge,
    a meter without usage rated at zero. A grouped charge (domain/grouping.py) reads its
    usage per group from `groups`: a line for every listed group and every group given."""
    lines: list[QuoteLine] = []
    if plan.base_fee:
        rounded = round_to_minor(plan.base_fee, plan.currency, rounding)
        lines.append(QuoteLine("base_fee", None, None, None, rounded, plan.base_fee))
    for charge in plan.charges:
        if not charge.group_by:
            usage_of = usage.get(charge.meter, Usage(Decimal(0)))
            lines += _charge_lines(plan, charge, usage_of, rounding)
            continue
        given = (groups or {}).get(charge.meter, {})
        for key in billed_keys(charge, given):
            lines += _charge_lines(
                plan,
                charge_for(charge, key),
                given.get(key, Usage(Decimal(0))),
                rounding,
                group_document(charge.group_by, key),
            )
    return Quote(plan=plan.code, currency=plan.currency, lines=tuple(lines))


def _charge_lines(
    plan: PlanDef,
    charge: Charge,
    usage: Usage,
    rounding: RoundingMode,
    group: dict[str, str | None] | None = None,
) -> list[QuoteLine]:
    rating = rate_charge(charge, usage)
    return [
        QuoteLine(
            kind=priced.kind,
            meter=priced.meter,
            charge_model=priced.model,
            quantity=priced.quantity,
            amount=priced.amount,
            amount_exact=priced.amount_exact,
            tiers=priced.tiers,
            group=group,
        )
        for priced in price_lines(rating, plan.currency, rounding)
    ]


def quote_document(result: Quote) -> dict[str, Any]:
    """The quote as JSON-ready plain values: money as strings in major units."""
    currency = result.currency
    return {
        "plan": result.plan,
        "currency": currency,
        "lines": [_line_document(line, currency) for line in result.lines],
        "total": format_amount(result.total, currency),
    }


def _line_document(line: QuoteLine, currency: str) -> dict[str, Any]:
    document: dict[str, Any] = {
        "kind": line.kind,
        "meter": line.meter,
        "charge_model": line.charge_model,
        "quantity": None if line.quantity is None else decimal_text(line.quantity),
        "amount": format_amount(line.amount, currency),
        "amount_exact": decimal_text(line.amount_exact),
        "tiers": [tier_document(tier) for tier in line.tiers],
    }
    if line.group is not None:  # grouped charges only, as on invoices
        document["group"] = line.group
    return document
