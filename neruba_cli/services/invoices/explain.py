"""`invoice explain`: why each line of an invoice is what it is.

Per line: meter, aggregation, which events (and the `events list` command that shows them),
tiers, proration, the base fee's period (its local days), the plan a credit for an unused fee
in advance gives way to, free units, minimum and maximum, the credits that paid it; and what
the invoice corrects. Everything is read from the stored document and the catalog; nothing is
priced again here.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Row, func, select

from neruba_cli.db.schema import Project
from neruba_cli.db.tables import customers_t, events_t, invoices_t
from neruba_cli.db.usage_sql import CURRENT
from neruba_cli.domain import credits as credit_rules
from neruba_cli.domain.grouping import group_condition
from neruba_cli.domain.ledger import Allocation
from neruba_cli.domain.money import format_minor, to_minor_units
from neruba_cli.domain.periods import days_text, service_days
from neruba_cli.domain.timestamps import parse_ts
from neruba_cli.services.billing import plan as billing_plan
from neruba_cli.services.invoices.read import amount_due, get, heading
from neruba_cli.services.ledger import credits


def explain_number(conn: Connection, project: Project, number: str) -> dict[str, Any]:
    """`invoice explain --json` and `GET /v1/invoices/{number}/explain`."""
    return explain(conn, project, get(conn, project, number))


def explain(conn: Connection, project: Project, row: Row[Any]) -> dict[str, Any]:
    """Per line: meter, aggregation, which events (and the command that lists them), tiers,
    proration, free units, minimum and maximum, credits; and what the invoice corrects."""
    content = orjson.loads(row.content)
    corrections = conn.execute(
        select(invoices_t.c.number, invoices_t.c.status)
        .where(invoices_t.c.corrects_id == row.id)
        .order_by(invoices_t.c.revision)
    ).all()
    filters = _meter_filters(conn, project)
    tz = conn.execute(
        select(customers_t.c.timezone).where(customers_t.c.id == row.customer_id)
    ).scalar_one()
    spent = credits.allocations_from(content.get("credits") or [], row.currency)
    per_line = credit_rules.by_line(
        [to_minor_units(Decimal(line["amount"]), row.currency) for line in content["lines"]], spent
    )
    lines = [
        _explain_line(conn, project, row, position, line, filters, paid, tz)
        for (position, line), paid in zip(
            enumerate(content["lines"], start=1), per_line, strict=True
        )
    ]
    return {
        **heading(row),
        "lines": lines,
        "subtotal": content["subtotal"],
        "credits_applied": content["credits_applied"],
        "credits": credits.explain_allocations(conn, project, spent, row.currency),
        "total": content["total"],
        "amount_paid": format_minor(row.amount_paid_minor, row.currency),
        "amount_due": amount_due(row),
        "settlement": content.get("settlement"),
        "corrects": row.corrects_number,
        "corrected_by": [{"number": number, "status": status} for number, status in corrections],
        "correction_note": (
            f"the lines are differences: what {row.corrects_number} and its earlier "
            "corrections billed, subtracted from the recomputed period"
            if row.corrects_number
            else None
        ),
        "run": row.run_id,
        "fingerprint": row.fingerprint,
        "version": row.version,
        "event_count": row.event_count,
    }


def _meter_filters(conn: Connection, project: Project) -> dict[tuple[str, str], dict[str, str]]:
    """(plan key CODE@VERSION, meter) → the meter's property filters, from the catalog."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for stored in billing_plan.plan_versions(conn, project).values():
        for code, meter in stored.meters.items():
            found[(stored.key, code)] = dict(meter.spec.filters)
    return found


def _explain_line(
    conn: Connection,
    project: Project,
    row: Row[Any],
    position: int,
    line: dict[str, Any],
    filters: dict[tuple[str, str], dict[str, str]],
    paid: list[Allocation],
    tz: str,
) -> dict[str, Any]:
    events = line.get("events")
    fee_dates = _fee_dates(line, tz)
    meter = line.get("meter")
    plan_key = (line.get("plan") or "").split("#")[0]
    meter_filters = filters.get((plan_key, meter or ""), {})
    explained_events = None
    if events is not None and meter:
        explained_events = dict(events)
        explained_events.update(
            _events_command(conn, project, row, meter, events, meter_filters, line)
        )
    return {
        "position": position,
        "kind": line["kind"],
        "description": line["description"],
        "subscription": line.get("subscription"),
        "plan": line.get("plan"),
        "meter": meter,
        "aggregation": line.get("aggregation"),
        "filters": meter_filters or None,
        "group": line.get("group"),
        "charge_model": line.get("charge_model"),
        "service": line.get("service"),
        "fee_period": line.get("fee_period"),
        "fee_dates": fee_dates,
        "credit": line.get("credit"),
        "quantity": line.get("quantity"),
        "free_units": line.get("free_units"),
        "billable_quantity": line.get("billable_quantity"),
        "recurring": bool(line.get("recurring")),
        "prorated": line.get("prorated"),
        "tiers": line.get("tiers") or [],
        "proration": line.get("proration"),
        "min_amount": line.get("min_amount"),
        "max_amount": line.get("max_amount"),
        "reference": line.get("reference"),
        "events": explained_events,
        "amount_exact": line.get("amount_exact"),
        "amount": line["amount"],
        "credits_applied": format_minor(sum(a.amount for a in paid), row.currency),
        "credits": credits.allocations_document(paid, row.currency),
        "why": _why(line, row.currency, fee_dates),
    }


def _fee_dates(line: dict[str, Any], tz: str) -> str | None:
    """A base fee's period as local days, e.g. '1 Nov – 30 Nov 2026'."""
    fee_period = line.get("fee_period")
    if line["kind"] != "base_fee" or not fee_period:
        return None
    days = service_days(
        parse_ts(fee_period["start"]), parse_ts(fee_period["end"]), mode="second", tz=tz
    )
    return None if days is None else days_text(*days)


def _events_command(
    conn: Connection,
    project: Project,
    row: Row[Any],
    meter: str,
    events: dict[str, Any],
    meter_filters: dict[str, str],
    line: dict[str, Any],
) -> dict[str, Any]:
    """`events list` shows the newest first and has no upper bound: list everything of the
    customer's meter since the line's first event (the limit is that count, today), and say
    which of them are the line's."""
    if not events.get("count") or not events.get("first"):
        return {"command": None, "note": "no events of this meter in the service period"}
    first = datetime.fromisoformat(events["first"].replace("Z", "+00:00"))
    since_first = conn.execute(
        select(func.count())
        .select_from(events_t)
        .where(
            events_t.c.project_id == project.id,
            events_t.c.customer_id == row.customer_id,
            events_t.c.meter == meter,
            events_t.c.ts >= first,
            CURRENT,
        )
    ).scalar_one()
    command = (
        f"neruba events list --project {project.slug} --customer {row.customer_external_id} "
        f"--meter {meter} --since {events['first']} --limit {max(int(since_first), 1)}"
    )
    notes = []
    if int(since_first) > int(events["count"]):
        notes.append(
            f"newest first; the line's events are those up to {events['last']} "
            f"(the {since_first} listed include later ones)"
        )
    if meter_filters:
        wanted = ", ".join(f"{k} = {v!r}" for k, v in sorted(meter_filters.items()))
        notes.append(f"the meter counts only events whose properties match {wanted}")
    group = line.get("group")
    if isinstance(group, dict):
        notes.append(f"the line counts only events of group {group_condition(group)}")
    service = line.get("service") or {}
    return {
        "service": service,
        "command": command,
        "note": "; ".join(notes) or None,
    }


def _why(line: dict[str, Any], currency: str, fee_dates: str | None = None) -> str:
    """One sentence a support person can read out."""
    kind = line["kind"]
    amount = line["amount"]
    if kind == "base_fee":
        proration = line.get("proration")
        share = "the full period" if proration in (None, "1") else f"{proration} of the period"
        if fee_dates:
            share += f" {fee_dates}"
        credit = line.get("credit")
        if credit:
            after = (
                f"the change to {credit['next_plan']}"
                if credit.get("next_plan")
                else "the subscription's end"
                if credit.get("ended")
                else "the change"
            )
            return (
                f"credit for the unused {share} billed in advance on "
                f"{credit['billed_plan']}, after {after} = {amount} {currency}"
            )
        return f"base fee for {share} = {amount} {currency}"
    if kind == "charge":
        return f"one-off charge ({line.get('reference')}) = {amount} {currency}"
    if kind == "minimum":
        return f"usage was below the minimum {line.get('min_amount')}: raised by {amount}"
    parts = []
    events = line.get("events") or {}
    prorated = line.get("prorated")
    if events:
        count = events.get("count", 0)
        if line.get("recurring"):
            full = prorated["unprorated_quantity"] if prorated else line.get("quantity")
            parts.append(
                f"{count} event{'' if count == 1 else 's'} in the period ("
                f"{line.get('aggregation')}, recurring: carried since the first event) → "
                f"{full} at the end of the service period"
            )
        else:
            parts.append(
                f"{count} event{'' if count == 1 else 's'} ({line.get('aggregation')}) → "
                f"quantity {line.get('quantity')}"
            )
    if prorated:
        parts.append(
            f"each unit prorated by {prorated['by']} for the share of the period it existed "
            f"→ {line.get('quantity')} units"
        )
    if line.get("free_units"):
        parts.append(f"{line['free_units']} free → billable {line.get('billable_quantity')}")
    tiers = [
        _tier_text(tier)
        for tier in line.get("tiers") or []
        if Decimal(tier["quantity"]) or Decimal(tier["flat_amount"])
    ]
    if tiers:
        parts.append(f"{line.get('charge_model')}: " + " + ".join(tiers))
    if line.get("max_amount"):
        parts.append(f"capped at {line['max_amount']}")
    return "; ".join(parts) + f" = {amount} {currency} (exact {line.get('amount_exact')})"


def _tier_text(tier: dict[str, Any]) -> str:
    price = (
        f"{tier['rate']}%"
        if Decimal(tier["rate"]) and not Decimal(tier["unit_amount"])
        else tier["unit_amount"]
    )
    text = f"{tier['quantity']} × {price}"
    if Decimal(tier["flat_amount"]):
        text += f" + flat {tier['flat_amount']}"
    return text
