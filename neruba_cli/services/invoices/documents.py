"""Invoices after a run: listing, the invoice document, explanations, finalization, voids,
verification and previews.

The document (`invoice show --json`) is built from the stored row and its stored `content`
only: lines exactly as the run wrote them, nothing computed at read time, so a finalized
invoice prints the same bytes every time. Verification and previews recompute through the
run's own code path (services/billing/plan.py: plan, aggregate in the database, build); nothing
here prices anything itself.

Finalize and void take the same lease lock as `run bill` for the invoice's month and fence
their write with it, so they never interleave with a run writing that month.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Row, func, select, update

from neruba_cli.db import locks
from neruba_cli.db.retry import retrying
from neruba_cli.db.schema import Customer, Event, Invoice, InvoiceRevision, Project
from neruba_cli.domain import credits as credit_rules
from neruba_cli.domain.billing_periods import resolve_label
from neruba_cli.domain.errors import InvalidInput, NotFound
from neruba_cli.domain.invoice import (
    BuiltInvoice,
    CarriedUsage,
    canonical_json,
    correction_kind,
    correction_lines,
    diff_lines,
    fingerprint_of,
    invoice_content,
    setup_document,
)
from neruba_cli.domain.ledger import Allocation
from neruba_cli.domain.money import format_amount, format_minor, to_minor_units
from neruba_cli.domain.periods import Period
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.billing import plan as billing_plan
from neruba_cli.services.billing import run as billing_run
from neruba_cli.services.invoices import settlement
from neruba_cli.services.ledger import credits

STATUSES = ("draft", "finalized", "void", "paid")
FINAL = billing_run.FINAL
WRITE_BATCH = 100

invoices_t = Invoice.__table__
customers_t = Customer.__table__
revisions_t = InvoiceRevision.__table__
events_t = Event.__table__
_corrected = invoices_t.alias("corrected")


# --------------------------------------------------------------------------- reading


def _query(project: Project) -> Any:
    return (
        select(
            invoices_t,
            customers_t.c.external_id.label("customer_external_id"),
            _corrected.c.number.label("corrects_number"),
        )
        .join(customers_t, customers_t.c.id == invoices_t.c.customer_id)
        .outerjoin(_corrected, _corrected.c.id == invoices_t.c.corrects_id)
        .where(invoices_t.c.project_id == project.id)
    )


def get(conn: Connection, project: Project, number: str) -> Row[Any]:
    row = conn.execute(_query(project).where(invoices_t.c.number == number.strip())).first()
    if row is None:
        raise NotFound(
            f"invoice {number!r} does not exist in project {project.slug!r}",
            hint="`neruba invoice list` shows the numbers",
        )
    return row


def period_label(label: str, project: Project, now: datetime) -> str:
    """`--period`: YYYY-MM, previous or current (months in the project's time zone)."""
    return resolve_label(label, as_of=now, tz=project.timezone)


def select_rows(
    conn: Connection,
    project: Project,
    *,
    label: str | None = None,
    status: str | None = None,
    customer: str | None = None,
) -> list[Row[Any]]:
    query = _query(project)
    if label is not None:
        query = query.where(invoices_t.c.period == label)
    if status is not None:
        if status not in STATUSES:
            raise InvalidInput(
                f"--status: {status!r} is not a status", hint=f"use one of {', '.join(STATUSES)}"
            )
        query = query.where(invoices_t.c.status == status)
    if customer is not None:
        query = query.where(customers_t.c.external_id == customer)
    return list(conn.execute(query.order_by(invoices_t.c.number)).all())


def summary(row: Row[Any]) -> dict[str, Any]:
    """The list form of an invoice (`invoice list --json`)."""
    currency = row.currency
    return {
        "number": row.number,
        "customer": row.customer_external_id,
        "kind": row.kind,
        "status": row.status,
        "label": row.period,
        "period": {"start": format_ts(row.period_start), "end": format_ts(row.period_end)},
        "currency": currency,
        "subtotal": format_amount(row.subtotal, currency),
        "credits_applied": format_amount(row.credits_applied, currency),
        "total": format_amount(row.total, currency),
        "amount_paid": format_minor(row.amount_paid_minor, currency),
        "amount_due": _due(row),
        "corrects": row.corrects_number,
        "run": row.run_id,
        "fingerprint": row.fingerprint,
        "version": row.version,
    }


def _due(row: Row[Any]) -> str | None:
    """What the customer still owes on a finalized invoice (None on drafts and voids)."""
    if row.status not in FINAL:
        return None
    return format_minor(row.amount_due_minor, row.currency)


def document(row: Row[Any]) -> dict[str, Any]:
    """DESIGN's "Invoice JSON", from the stored row and content only (a fixed key order and
    no clock, so a finalized invoice prints the same bytes every time)."""
    content = orjson.loads(row.content)
    return {
        "number": row.number,
        "customer": row.customer_external_id,
        "currency": row.currency,
        "status": row.status,
        "period": {"start": content["period"]["start"], "end": content["period"]["end"]},
        "lines": content["lines"],
        "subtotal": content["subtotal"],
        "credits_applied": content["credits_applied"],
        "total": content["total"],
        "corrects": row.corrects_number,
        "run": row.run_id,
        "fingerprint": row.fingerprint,
        "credits": content.get("credits", []),
        "amount_paid": format_minor(row.amount_paid_minor, row.currency),
        "amount_due": _due(row),
        "settlement": content.get("settlement"),
        "kind": row.kind,
        "label": row.period,
        "version": row.version,
        "finalized_at": format_ts(row.finalized_at),
        "voided_at": format_ts(row.voided_at),
        "void_reason": row.void_reason,
    }


def preview_document(
    customer: str, label: str, period: Period, built: BuiltInvoice, at: datetime
) -> dict[str, Any]:
    content = built.content
    return {
        "number": None,
        "customer": customer,
        "currency": content["currency"],
        "status": "preview",
        "period": {"start": format_ts(period.start), "end": format_ts(period.end)},
        "lines": content["lines"],
        "subtotal": content["subtotal"],
        "credits_applied": content["credits_applied"],
        "total": content["total"],
        "corrects": None,
        "run": None,
        "fingerprint": built.fingerprint,
        "credits": [],  # credit is spent at finalization
        "amount_paid": None,
        "amount_due": None,
        "settlement": None,
        "kind": content["kind"],
        "label": label,
        "version": None,
        "finalized_at": None,
        "voided_at": None,
        "void_reason": None,
        "at": format_ts(at),
    }


# --------------------------------------------------------------------------- explain


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
    spent = credits.allocations_from(content.get("credits") or [], row.currency)
    per_line = credit_rules.by_line(
        [to_minor_units(Decimal(line["amount"]), row.currency) for line in content["lines"]], spent
    )
    lines = [
        _explain_line(conn, project, row, position, line, filters, paid)
        for (position, line), paid in zip(
            enumerate(content["lines"], start=1), per_line, strict=True
        )
    ]
    return {
        "number": row.number,
        "customer": row.customer_external_id,
        "kind": row.kind,
        "status": row.status,
        "label": row.period,
        "period": {"start": format_ts(row.period_start), "end": format_ts(row.period_end)},
        "currency": row.currency,
        "lines": lines,
        "subtotal": content["subtotal"],
        "credits_applied": content["credits_applied"],
        "credits": credits.explain_allocations(conn, project, spent, row.currency),
        "total": content["total"],
        "amount_paid": format_minor(row.amount_paid_minor, row.currency),
        "amount_due": _due(row),
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
) -> dict[str, Any]:
    events = line.get("events")
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
        "charge_model": line.get("charge_model"),
        "service": line.get("service"),
        "fee_period": line.get("fee_period"),
        "quantity": line.get("quantity"),
        "free_units": line.get("free_units"),
        "billable_quantity": line.get("billable_quantity"),
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
        "why": _why(line, row.currency),
    }


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
    service = line.get("service") or {}
    return {
        "service": service,
        "command": command,
        "note": "; ".join(notes) or None,
    }


def _why(line: dict[str, Any], currency: str) -> str:
    """One sentence a support person can read out."""
    kind = line["kind"]
    amount = line["amount"]
    if kind == "base_fee":
        proration = line.get("proration")
        share = "the full period" if proration in (None, "1") else f"{proration} of the period"
        return f"base fee for {share} = {amount} {currency}"
    if kind == "charge":
        return f"one-off charge ({line.get('reference')}) = {amount} {currency}"
    if kind == "minimum":
        return f"usage was below the minimum {line.get('min_amount')}: raised by {amount}"
    parts = []
    events = line.get("events") or {}
    if events:
        parts.append(
            f"{events.get('count', 0)} events ({line.get('aggregation')}) → "
            f"quantity {line.get('quantity')}"
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


# --------------------------------------------------------------------------- finalize, void


@dataclass
class FinalizeReport:
    period: str
    finalized: list[str] = field(default_factory=list)
    still_open: list[tuple[str, datetime]] = field(default_factory=list)  # number, period end


def finalize(
    engine: Engine,
    project: Project,
    *,
    number: str | None = None,
    label: str | None = None,
    now: datetime,
    actor: str = "system",
    holder: str | None = None,
) -> FinalizeReport:
    """Drafts become immutable. One invoice by number, or every draft of a month whose period
    has ended; under the month's run lock, every write fenced by it."""
    if (number is None) == (label is None):
        raise InvalidInput("name one invoice NUMBER or --period P, not both and not neither")
    if number is not None:
        with engine.connect() as conn:
            row = get(conn, project, number)
        _check_finalizable(row, now)
        report = FinalizeReport(period=row.period)
        with _locked(engine, project, row.period, holder) as lease:
            _finalize_ids(engine, project, lease, [row], now, actor, strict=True)
        report.finalized.append(row.number)
        return report
    assert label is not None
    report = FinalizeReport(period=label)
    with _locked(engine, project, label, holder) as lease:
        with engine.connect() as conn:
            drafts = conn.execute(
                _query(project)
                .where(invoices_t.c.period == label, invoices_t.c.status == "draft")
                .order_by(invoices_t.c.number)
            ).all()
        ended = [row for row in drafts if row.period_end <= now]
        report.still_open = [(row.number, row.period_end) for row in drafts if row.period_end > now]
        if report.still_open and not ended:
            number, end = report.still_open[0]
            raise InvalidInput(
                f"the billing periods of {label} have not ended yet ({number} runs until "
                f"{format_ts(end)}); nothing was finalized",
                hint="finalize after the period ends; until then a run recomputes the drafts",
            )
        for start in range(0, len(ended), WRITE_BATCH):
            chunk = ended[start : start + WRITE_BATCH]
            report.finalized += _finalize_ids(
                engine, project, lease, chunk, now, actor, strict=False
            )
    return report


def _check_finalizable(row: Row[Any], now: datetime) -> None:
    if row.status != "draft":
        raise InvalidInput(
            f"invoice {row.number} is {row.status}; only drafts can be finalized",
            hint="a finalized invoice never changes; late events produce a correction",
        )
    if row.period_end > now:
        raise InvalidInput(
            f"invoice {row.number}'s period has not ended yet (it runs until "
            f"{format_ts(row.period_end)}); it cannot be finalized",
            hint="finalize after the period ends; until then a run recomputes the draft",
        )


def _finalize_ids(
    engine: Engine,
    project: Project,
    lease: locks.Lease,
    rows: Sequence[Row[Any]],
    now: datetime,
    actor: str,
    *,
    strict: bool,
) -> list[str]:
    """Finalize, post and settle a chunk of drafts in one fenced transaction."""
    if not rows:
        return []

    def attempt() -> list[str]:
        with engine.begin() as conn:
            locks.fence(conn, lease)
            return settlement.finalize(
                conn, project, [row.id for row in rows], now=now, actor=actor, strict=strict
            )

    return retrying(attempt)


def void(
    engine: Engine,
    project: Project,
    number: str,
    *,
    reason: str,
    now: datetime,
    actor: str = "system",
    holder: str | None = None,
) -> dict[str, Any]:
    """Status → void, with when and why. The number stays taken, so numbers stay gapless.
    A finalized invoice is reversed in the ledger and its credits go back to their grants."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput("--reason must say why the invoice is voided")
    if len(reason) > 500:
        raise InvalidInput("--reason is longer than 500 characters")
    with engine.connect() as conn:
        row = get(conn, project, number)
        live_corrections = conn.execute(
            select(invoices_t.c.number)
            .where(invoices_t.c.corrects_id == row.id, invoices_t.c.status != "void")
            .order_by(invoices_t.c.number)
        ).all()
    if row.status == "void":
        raise InvalidInput(f"invoice {row.number} is already void ({row.void_reason})")
    settlement.check_voidable(row)
    if live_corrections:
        listed = ", ".join(n for (n,) in live_corrections)
        raise InvalidInput(
            f"invoice {row.number} has corrections that are not void ({listed})",
            hint="void the corrections first",
        )
    with _locked(engine, project, row.period, holder) as lease:
        retrying(partial(_void_locked, engine, project, lease, row, reason, now, actor))
    with engine.connect() as conn:
        return document(get(conn, project, row.number))


def _void_locked(
    engine: Engine,
    project: Project,
    lease: locks.Lease,
    row: Row[Any],
    reason: str,
    now: datetime,
    actor: str,
) -> None:
    with engine.begin() as conn:
        locks.fence(conn, lease)
        # A run may have written a correction between the check above and the lock.
        corrected = conn.execute(
            select(invoices_t.c.number)
            .where(invoices_t.c.corrects_id == row.id, invoices_t.c.status != "void")
            .limit(1)
        ).first()
        if corrected is not None:
            raise InvalidInput(
                f"invoice {row.number} was corrected by {corrected[0]} meanwhile; nothing was "
                "written",
                hint="void the corrections first",
            )
        changed = conn.execute(
            update(invoices_t)
            .where(invoices_t.c.id == row.id, invoices_t.c.status == row.status)
            .where(invoices_t.c.version == row.version)
            .where(invoices_t.c.amount_paid_minor == 0)  # a payment may have landed meanwhile
            .values(status="void", voided_at=now, void_reason=reason, updated_at=now)
        ).rowcount
        if changed != 1:
            raise InvalidInput(
                f"invoice {row.number} changed while it was being voided (a run or a payment); "
                "nothing was written",
                hint="`neruba invoice show` it and try again",
            )
        settlement.void(conn, project, row, now=now, actor=actor)


class _locked:
    """The month's run lock (`SLUG:bill:YYYY-MM`) for the duration of a block."""

    def __init__(self, engine: Engine, project: Project, label: str, holder: str | None) -> None:
        self.engine, self.name, self.holder = engine, billing_run.lock_name(project, label), holder
        self.lease: locks.Lease | None = None

    def __enter__(self) -> locks.Lease:
        self.lease = locks.acquire(self.engine, self.name, holder=self.holder)
        return self.lease

    def __exit__(self, *exc: Any) -> None:
        if self.lease is not None:
            locks.release(self.engine, self.lease)


# --------------------------------------------------------------------------- verify


@dataclass
class Verdict:
    number: str
    customer: str
    label: str
    status: str
    kind: str
    checks: dict[str, str] = field(default_factory=dict)  # name → ok | mismatch | skipped
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, check: str, problem: str) -> None:
        self.checks[check] = "mismatch"
        self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "customer": self.customer,
            "label": self.label,
            "status": self.status,
            "kind": self.kind,
            "result": "ok" if self.ok else "mismatch",
            "checks": self.checks,
            "problems": self.problems,
            "notes": self.notes,
        }


@dataclass
class VerifyReport:
    verdicts: list[Verdict]

    @property
    def mismatches(self) -> int:
        return sum(1 for verdict in self.verdicts if not verdict.ok)

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": len(self.verdicts),
            "ok": len(self.verdicts) - self.mismatches,
            "mismatches": self.mismatches,
            "invoices": [verdict.as_dict() for verdict in self.verdicts],
        }


def verify(
    engine: Engine, project: Project, *, number: str | None = None, label: str | None = None
) -> VerifyReport:
    """For each invoice: (a) its fingerprint is the SHA-256 of its stored inputs; (b) its
    stored document is whole (totals, lines, the revision the run recorded); (c) for the
    customer-period's latest live invoice, recomputing it now through a run's code path gives
    the same fingerprint and the same document."""
    if (number is None) == (label is None):
        raise InvalidInput("name one invoice NUMBER or --period P, not both and not neither")
    with engine.connect() as conn:
        if number is not None:
            rows = [get(conn, project, number)]
        else:
            rows = select_rows(conn, project, label=label)
        groups: dict[tuple[str, datetime, datetime], list[Row[Any]]] = defaultdict(list)
        for row in rows:
            groups[(row.customer_id, row.period_start, row.period_end)].append(row)
        verdicts: dict[str, Verdict] = {}
        for (customer_id, start, end), checked in groups.items():
            siblings = conn.execute(
                _query(project)
                .where(invoices_t.c.customer_id == customer_id)
                .where(invoices_t.c.period_start == start, invoices_t.c.period_end == end)
                .order_by(invoices_t.c.revision)
            ).all()
            live = [row for row in siblings if row.status != "void"]
            built: BuiltInvoice | None = None
            computed = False
            for row in checked:
                verdict = verdicts[row.number] = _stored_checks(conn, row)
                latest = live[-1] if live else None
                if row.status == "void":
                    verdict.checks["recomputed"] = "skipped"
                    verdict.notes.append("void: not recomputed")
                    continue
                if latest is not None and latest.id != row.id:
                    verdict.checks["recomputed"] = "skipped"
                    verdict.notes.append(
                        f"superseded by {latest.number}, which carries the recomputation"
                    )
                    continue
                if not computed:
                    carried = _carried(row)
                    built = billing_run.compute_invoice(
                        conn,
                        project,
                        row.period,
                        row.customer_external_id,
                        Period(start, end),
                        carried=carried,
                    )
                    computed = True
                    if carried:
                        verdict.notes.append(
                            "late usage carried from "
                            + ", ".join(c.source for c in carried)
                            + " taken as stored"
                        )
                _recomputed_checks(project, verdict, row, built, live)
    return VerifyReport([verdicts[row.number] for row in rows])


def _carried(row: Row[Any]) -> list[CarriedUsage]:
    """Late usage of an earlier month the invoice took in (policy next_invoice), as stored."""
    return [
        CarriedUsage(item["source"], tuple(item["lines"]))
        for item in orjson.loads(row.inputs).get("carried") or []
    ]


def _stored_checks(conn: Connection, row: Row[Any]) -> Verdict:
    verdict = Verdict(
        row.number, row.customer_external_id, row.period, row.status, row.kind, checks={}
    )
    inputs = orjson.loads(row.inputs)
    if fingerprint_of(inputs) == row.fingerprint:
        verdict.checks["fingerprint"] = "ok"
    else:
        verdict.fail(
            "fingerprint",
            f"the stored fingerprint {row.fingerprint} is not the SHA-256 of the stored inputs "
            f"({fingerprint_of(inputs)})",
        )
    content = orjson.loads(row.content)
    problems = []
    currency = row.currency
    lines_total = sum((Decimal(line["amount"]) for line in content["lines"]), Decimal(0))
    if format_amount(lines_total, currency) != content["subtotal"]:
        problems.append(
            f"its lines add up to {lines_total}, its subtotal says {content['subtotal']}"
        )
    for name in ("subtotal", "credits_applied", "total"):
        if format_amount(getattr(row, name), currency) != content[name]:
            problems.append(
                f"the row's {name} {format_amount(getattr(row, name), currency)} differs from "
                f"the document's {content[name]}"
            )
    recorded = conn.execute(
        select(revisions_t.c.content, revisions_t.c.fingerprint).where(
            revisions_t.c.invoice_id == row.id, revisions_t.c.version == row.version
        )
    ).first()
    if recorded is None:
        problems.append(f"no revision record for version {row.version}")
    else:
        if orjson.loads(recorded.content) != content:
            problems.append(f"it differs from what the run wrote as version {row.version}")
        if recorded.fingerprint != row.fingerprint:
            problems.append(f"its fingerprint differs from the one of version {row.version}")
    if problems:
        verdict.fail("document", "stored document: " + "; ".join(problems))
    else:
        verdict.checks["document"] = "ok"
    return verdict


def _recomputed_checks(
    project: Project,
    verdict: Verdict,
    row: Row[Any],
    built: BuiltInvoice | None,
    live: list[Row[Any]],
) -> None:
    if built is None:
        verdict.fail(
            "recomputed",
            f"month {row.period} no longer bills this period (subscriptions or catalog changed)",
        )
        return
    stored_inputs = orjson.loads(row.inputs)
    if canonical_json(stored_inputs) != canonical_json(built.inputs):
        changed = _inputs_difference(stored_inputs, built.inputs)
        usage_only = canonical_json(setup_document(stored_inputs)) == canonical_json(
            setup_document(built.inputs)
        )
        policy = project.late_events
        if usage_only and row.status in FINAL and policy in ("ignore", "next_invoice"):
            verdict.checks["recomputed"] = "ok"
            where = "ignores them" if policy == "ignore" else "carries them to the next invoice"
            verdict.notes.append(f"{changed}; the project's late_events policy {where}")
            return
        hint = f"run `neruba run bill --period {row.period}` to " + (
            "write the correction" if row.status in FINAL else "recompute the draft"
        )
        verdict.fail("recomputed", f"inputs changed: {changed} ({hint})")
        return
    if row.corrects_id is None:
        expected = built.content
    else:
        billed = [
            orjson.loads(other.content)["lines"]
            for other in live
            if other.revision < row.revision and other.status in FINAL
        ]
        lines = correction_lines(built.content["lines"], billed, row.currency)
        total = sum((Decimal(line["amount"]) for line in lines), Decimal(0))
        expected = invoice_content(
            correction_kind(total),
            row.currency,
            Period(row.period_start, row.period_end),
            built.content["period"]["label"],
            lines,
        )
    stored = settlement.as_billed(orjson.loads(row.content))
    if canonical_json(stored) != canonical_json(expected):
        changes = diff_lines(stored["lines"], expected["lines"])
        detail = ", ".join(
            f"{change.description}: {change.before} → {change.after}" for change in changes[:5]
        )
        if not detail:
            detail = f"total {stored['total']} → {expected['total']}"
        verdict.fail(
            "recomputed",
            f"pricing differs for the same inputs (stored → recomputed: {detail})",
        )
        return
    if built.fingerprint != row.fingerprint:
        verdict.fail("recomputed", f"recomputed fingerprint {built.fingerprint} differs")
        return
    verdict.checks["recomputed"] = "ok"


def _inputs_difference(stored: dict[str, Any], now: dict[str, Any]) -> str:
    if canonical_json(setup_document(stored)) != canonical_json(setup_document(now)):
        return "the terms changed (plans, subscriptions, one-off charges or settings)"
    before, after = _usage_by_meter(stored), _usage_by_meter(now)
    parts = []
    for meter in sorted(set(before) | set(after)):
        was, is_now = before.get(meter, (0, "0")), after.get(meter, (0, "0"))
        if was != is_now:
            parts.append(f"{meter}: {is_now[0] - was[0]:+d} events (value {was[1]} → {is_now[1]})")
    return "usage changed since it was computed — late events? " + "; ".join(parts)


def _usage_by_meter(inputs: dict[str, Any]) -> dict[str, tuple[int, str]]:
    found: dict[str, tuple[int, Decimal]] = {}
    for terms in inputs["subscriptions"]:
        for piece in terms["pieces"]:
            for meter, usage in piece["usage"].items():
                count, value = found.get(meter, (0, Decimal(0)))
                found[meter] = (count + int(usage["count"]), value + Decimal(usage["value"]))
    return {meter: (count, str(value)) for meter, (count, value) in found.items()}


# --------------------------------------------------------------------------- preview


def preview(
    engine: Engine, project: Project, customer: str, *, at: datetime
) -> list[dict[str, Any]]:
    """What the customer's billing periods that contain `at` would bill if they ended now:
    the run's own plan, aggregate and build steps (usage over the whole period), writing
    nothing."""
    found: list[dict[str, Any]] = []
    with engine.connect() as conn:
        for label in billing_run.open_period_labels(conn, project, customer, at):
            for item, built in billing_run.compute_invoices(
                conn, project, label, customer, as_of=at
            ):
                if item.period.start <= at < item.period.end:
                    found.append(preview_document(customer, label, item.period, built, at))
    if not found:
        raise NotFound(
            f"customer {customer!r} has no billing period containing {format_ts(at)}",
            hint="`neruba subscription list --customer` shows its subscriptions",
        )
    return sorted(found, key=lambda doc: (doc["period"]["end"], doc["period"]["start"]))
