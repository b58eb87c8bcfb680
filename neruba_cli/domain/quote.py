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
from neruba_cli.domain.money import RoundingMode, decimal_text, format_amount, round_to_minor
from neruba_cli.domain.pricing import TierLine, Usage, price_lines, rate_charge, tier_document

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
    plan: PlanDef, usage: Mapping[str, Usage], *, rounding: RoundingMode = "half_even"
) -> Quote:
    """One full period on the plan: the base fee (no proration, no trial) and every charge,
    a meter without usage rated at zero."""
    lines: list[QuoteLine] = []
    if plan.base_fee:
        rounded = round_to_minor(plan.base_fee, plan.currency, rounding)
        lines.append(QuoteLine("base_fee", None, None, None, rounded, plan.base_fee))
    for charge in plan.charges:
        rating = rate_charge(charge, usage.get(charge.meter, Usage(Decimal(0))))
        for priced in price_lines(rating, plan.currency, rounding):
            lines.append(
                QuoteLine(
                    kind=priced.kind,
                    meter=priced.meter,
                    charge_model=priced.model,
                    quantity=priced.quantity,
                    amount=priced.amount,
                    amount_exact=priced.amount_exact,
                    tiers=priced.tiers,
                )
            )
    return Quote(plan=plan.code, currency=plan.currency, lines=tuple(lines))


def quote_document(result: Quote) -> dict[str, Any]:
    """The quote as JSON-ready plain values: money as strings in major units."""
    currency = result.currency
    return {
        "plan": result.plan,
        "currency": currency,
        "lines": [
            {
                "kind": line.kind,
                "meter": line.meter,
                "charge_model": line.charge_model,
                "quantity": None if line.quantity is None else decimal_text(line.quantity),
                "amount": format_amount(line.amount, currency),
                "amount_exact": decimal_text(line.amount_exact),
                "tiers": [tier_document(tier) for tier in line.tiers],
            }
            for line in result.lines
        ],
        "total": format_amount(result.total, currency),
    }
