"""Building an invoice: plain values in (plans, usage aggregates, charges), a document out.

`build_invoice` is the whole rule set of one customer's invoice for one billing period; the
billing service only gathers its inputs from the database and stores what comes out, and
`--dry-run`, `invoice preview` and `invoice verify` call the same function.

The inputs are also a document (`inputs_document`), stored beside the invoice. The invoice's
fingerprint is the SHA-256 of the canonical JSON of its business part (`fingerprinted`): only
what the operator controls — the customer's external id, currency and time zone, plan codes,
version numbers and version contents, each subscription's terms, one-off charge keys and
amounts, usage aggregates and the project's rounding — and nothing a database makes up (row
ids, invoice numbers, insertion order). So the same business inputs give the same fingerprint
and the same invoice, byte for byte, whatever order they were loaded in and in whichever
database. Usage enters as aggregates per meter and plan piece: the value, the number of events
and the first and last event time (and, for percentage charges, a digest of the per-event
values, in time and idempotency-key order) — everything the invoice depends on, and nothing
that depends on arrival order.

Invoices written before this rule (fingerprint form 1, `LEGACY_FORM`) were fingerprinted over
the whole stored document, subscription ids included; their documents carry no form marker
and keep their fingerprint. `fingerprint_matches` recognises either form, so a rerun neither
reprices nor corrects an invoice only because the formula changed.

Line order: per subscription (by start, then id) its base fees, then its usage charges in the
plan's order per plan piece; one-off charges last, by time then key. Each line is rounded once;
the subtotal is the sum of rounded lines.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal

import orjson

from neruba_cli.domain.aggregation import MeterSpec
from neruba_cli.domain.base_fee import (
    BaseFeeLine,
    PhaseFee,
    Timing,
    advance_settlement,
    base_fee_lines,
    billed_in_advance,
    changes_within,
)
from neruba_cli.domain.catalog import PlanDef
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.grouping import (
    GroupKey,
    billed_keys,
    charge_for,
    group_document,
    group_from_document,
    group_text,
    key_order,
)
from neruba_cli.domain.invoice_limits import Unbillable, check_document, check_reading
from neruba_cli.domain.money import (
    RoundingMode,
    decimal_text,
    format_amount,
    round_to_minor,
)
from neruba_cli.domain.periods import Period, Phase, days_text
from neruba_cli.domain.pricing import (
    Charge,
    TierLine,
    Usage,
    price_lines,
    rate_charge,
    tier_document,
)
from neruba_cli.domain.timestamps import format_ts

# An invoice in one of these states is final: its lines no longer change (a correction
# is a credit note or a supplemental invoice of its own).
FINAL = ("finalized", "paid")

LineKind = Literal["base_fee", "usage", "minimum", "charge"]
InvoiceKind = Literal["invoice", "supplemental", "credit_note"]
ZERO = Decimal(0)
_TIMING_TEXT = {"advance": "in advance", "arrears": "in arrears"}


@dataclass(frozen=True)
class MeterUsage:
    """One meter's aggregate over one plan piece, as the database computed it."""

    value: Decimal
    count: int = 0
    first: datetime | None = None
    last: datetime | None = None
    transactions: tuple[Decimal, ...] | None = None  # percentage models, in event order
    prorated: Decimal | None = None  # prorated charges: units × share of the period held
    # a grouped charge's usage (domain/grouping.py): each group with events, by key; then the
    # fields above are the totals over the groups (value: their sum)
    groups: tuple[tuple[GroupKey, MeterUsage], ...] | None = None


@dataclass(frozen=True)
class PhasePlan:
    """A subscription phase with its plan version."""

    phase: Phase  # key "CODE@VERSION"
    plan: PlanDef
    fingerprint: str  # the plan version's
    meters: Mapping[str, MeterSpec] = field(default_factory=dict)  # the meters it reads


@dataclass(frozen=True)
class UsagePiece:
    """The part of the period one phase covers, and the usage inside it."""

    phase_key: str
    start: datetime
    end: datetime
    usage: Mapping[str, MeterUsage]


@dataclass(frozen=True)
class SubscriptionTerms:
    id: str
    start: datetime
    end: datetime | None
    trial_end: datetime | None
    phases: tuple[PhasePlan, ...]
    fee_periods: tuple[tuple[Period, Timing], ...]  # base fees this invoice carries
    pieces: tuple[UsagePiece, ...]


@dataclass(frozen=True)
class OneOffCharge:
    key: str
    description: str
    amount: Decimal
    at: datetime


@dataclass(frozen=True)
class CarriedUsage:
    """Late usage of an earlier, finalized invoice (policy `next_invoice`): the difference
    lines between that period recomputed and what was billed for it."""

    source: str  # the earlier invoice's number
    lines: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class InvoiceInput:
    customer: str  # external id
    currency: str
    timezone: str
    rounding: RoundingMode
    period: Period
    label: str  # the run's month
    subscriptions: tuple[SubscriptionTerms, ...]
    charges: tuple[OneOffCharge, ...] = ()
    carried: tuple[CarriedUsage, ...] = ()


@dataclass(frozen=True)
class BuiltInvoice:
    content: dict[str, Any]  # the document's lines and totals (JSON-ready)
    total: Decimal
    fingerprint: str  # over the business part of the inputs
    setup_fingerprint: str  # the same without usage
    inputs: dict[str, Any]
    event_count: int

    def same_fingerprint(self, stored: str) -> bool:
        """Whether an invoice stored with fingerprint `stored` (in any form) has these inputs."""
        return stored == self.fingerprint or fingerprint_matches(stored, self.inputs)

    def same_setup(self, stored: str) -> bool:
        """Whether a stored setup fingerprint (in any form) is the one of these inputs."""
        return stored == self.setup_fingerprint or fingerprint_matches(
            stored, setup_document(self.inputs)
        )


# --------------------------------------------------------------------------- build


def build_invoice(inp: InvoiceInput) -> BuiltInvoice:
    """The invoice document for one customer and period."""
    lines: list[dict[str, Any]] = []
    for terms in sorted(inp.subscriptions, key=lambda t: (t.start, t.id)):
        lines += _base_fee_lines(inp, terms)
        lines += _usage_lines(inp, terms)
    for charge in sorted(inp.charges, key=lambda c: (c.at, c.key)):
        lines.append(_charge_line(inp, charge))
    for carried in sorted(inp.carried, key=lambda c: c.source):
        lines += carried_lines(carried)
    content = invoice_content("invoice", inp.currency, inp.period, inp.label, lines)
    check_document(content, inp.currency)
    inputs = inputs_document(inp)
    return BuiltInvoice(
        content=content,
        total=Decimal(content["total"]),
        fingerprint=inputs_fingerprint(inputs),
        setup_fingerprint=inputs_fingerprint(setup_document(inputs)),
        inputs=inputs,
        event_count=sum(
            usage.count
            for terms in inp.subscriptions
            for piece in terms.pieces
            for usage in piece.usage.values()
        ),
    )


def invoice_content(
    kind: InvoiceKind,
    currency: str,
    period: Period,
    label: str,
    lines: Sequence[dict[str, Any]],
    *,
    credits_applied: Decimal = ZERO,
) -> dict[str, Any]:
    subtotal = sum((Decimal(line["amount"]) for line in lines), ZERO)
    return {
        "kind": kind,
        "currency": currency,
        "period": {"start": format_ts(period.start), "end": format_ts(period.end), "label": label},
        "lines": list(lines),
        "subtotal": format_amount(subtotal, currency),
        "credits_applied": format_amount(credits_applied, currency),
        "total": format_amount(subtotal - credits_applied, currency),
    }


def _base_fee_lines(inp: InvoiceInput, terms: SubscriptionTerms) -> list[dict[str, Any]]:
    """The invoice period's fee in arrears; when a plan change or the end inside it cuts a fee
    billed in advance short, its settlement; a fee in advance (the first period's and the next
    period's)."""
    lines: list[dict[str, Any]] = []
    plans = {pp.phase.key: pp.plan for pp in terms.phases}
    for fee_period, timing in terms.fee_periods:
        fees = [
            PhaseFee(pp.phase, pp.plan.base_fee, pp.plan.proration)
            for pp in terms.phases
            if pp.plan.base_fee_timing == timing
        ]
        common: dict[str, Any] = {
            "tz": inp.timezone,
            "currency": inp.currency,
            "trial_end": terms.trial_end,
            "rounding": inp.rounding,
        }
        if timing == "arrears" or _is_first(terms, fee_period):
            found = base_fee_lines(fee_period, fees, subscription_end=terms.end, **common)
        else:
            found = billed_in_advance(fee_period, fees, **common)
        lines += [_fee_line(inp, terms, plans, fee, fee_period, timing) for fee in found]
        if timing == "arrears" and settles_advance(terms, fee_period):
            advance = [
                PhaseFee(pp.phase, pp.plan.base_fee, pp.plan.proration)
                for pp in terms.phases
                if pp.plan.base_fee_timing == "advance"
            ]
            settled = advance_settlement(fee_period, advance, subscription_end=terms.end, **common)
            lines += [
                _fee_line(inp, terms, plans, fee, fee_period, "advance", plans_after=terms.phases)
                for fee in settled
            ]
    return lines


def _fee_line(
    inp: InvoiceInput,
    terms: SubscriptionTerms,
    plans: Mapping[str, PlanDef],
    fee: BaseFeeLine,
    fee_period: Period,
    timing: Timing,
    *,
    plans_after: Sequence[PhasePlan] = (),
) -> dict[str, Any]:
    plan = plans[fee.plan]
    line = _line(
        "base_fee",
        fee_description(plan.name or plan.code, fee, timing),
        inp.currency,
        subscription=terms.id,
        plan=fee.plan,
        service=(fee.service_start, fee.service_end),
        quantity=None,
        amount=fee.amount,
        amount_exact=fee.amount_exact,
        proration=_fraction_text(fee.fraction),
        fee_period=(fee_period.start, fee_period.end),
    )
    if fee.credit:
        following = [
            pp.phase.key
            for pp in plans_after
            if pp.phase.key != fee.plan and pp.phase.start >= fee.service_start
        ]
        line["credit"] = {
            "billed_plan": fee.plan,
            "next_plan": following[0] if following else None,
            "ended": terms.end is not None and fee.service_start == terms.end,
        }
    return line


def fee_description(name: str, fee: BaseFeeLine, timing: Timing) -> str:
    """'Pro base fee, 1 Nov – 30 Nov 2026 (in advance)'; a credit: 'Pro base fee, unused
    16 Nov – 30 Nov 2026 (credit)'. The days are local to the customer, both inclusive."""
    days = "" if fee.days is None else days_text(*fee.days)
    if fee.credit:
        return f"{name} base fee, unused {days} (credit)" if days else f"{name} base fee (credit)"
    text = _TIMING_TEXT[timing]
    return f"{name} base fee, {days} ({text})" if days else f"{name} base fee ({text})"


def billing_period(terms: SubscriptionTerms, invoice_period: Period) -> Period:
    """The billing period the terms are billed for (their fee period in arrears): the
    invoice's own period, or the whole period when the invoice stops at a cancellation.
    Proration and weighted_sum divisors count against it."""
    return next((p for p, timing in terms.fee_periods if timing == "arrears"), invoice_period)


_FEE_DAYS = re.compile(
    r" base fee, (?:unused )?[^()]*? \((in advance|in arrears|credit)\)", re.IGNORECASE
)


def plain_fee_description(description: str) -> str:
    """A base-fee line's text without its days: 'Pro base fee, 1 Nov – 30 Nov 2026 (in
    advance)' → 'Pro base fee (in advance)', the text invoices had before lines named their
    days (what another biller's export of the same line says)."""
    return _FEE_DAYS.sub(r" base fee (\1)", description, count=1)


def _is_first(terms: SubscriptionTerms, period: Period) -> bool:
    return period.start <= terms.start < period.end


def settles_advance(terms: SubscriptionTerms, period: Period) -> bool:
    """Whether the invoice of `period` settles the fee billed in advance for it: the
    subscription started before it, a plan with fees in advance serves in it, and a plan
    change or the subscription's end falls inside it (`base_fee.changes_within`)."""
    serving = [
        pp
        for pp in terms.phases
        if pp.phase.start < period.end and (pp.phase.end is None or pp.phase.end > period.start)
    ]
    if not any(pp.plan.base_fee_timing == "advance" for pp in serving):
        return False
    return changes_within(
        period, [pp.phase.start for pp in serving], start=terms.start, end=terms.end
    )


def _usage_lines(inp: InvoiceInput, terms: SubscriptionTerms) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    phases = {pp.phase.key: pp for pp in terms.phases}
    for piece in sorted(terms.pieces, key=lambda p: p.start):
        phase_plan = phases[piece.phase_key]
        plan = phase_plan.plan
        descriptions = plan.charge_descriptions or (None,) * len(plan.charges)
        for charge, description in zip(plan.charges, descriptions, strict=False):
            usage = piece.usage.get(charge.meter, MeterUsage(ZERO))
            label = description or charge.meter
            if not charge.group_by:
                lines += _charge_lines(inp, terms, piece, phase_plan, charge, label, usage)
                continue
            observed = dict(usage.groups or ())
            for key in billed_keys(charge, observed):
                lines += _charge_lines(
                    inp,
                    terms,
                    piece,
                    phase_plan,
                    charge_for(charge, key),
                    f"{label} — {group_text(charge.group_by, key)}",
                    observed.get(key, MeterUsage(ZERO)),
                    group=group_document(charge.group_by, key),
                )
    return lines


def _charge_lines(
    inp: InvoiceInput,
    terms: SubscriptionTerms,
    piece: UsagePiece,
    phase_plan: PhasePlan,
    charge: Charge,
    label: str,
    usage: MeterUsage,
    *,
    group: dict[str, str | None] | None = None,
) -> list[dict[str, Any]]:
    """The usage line of one charge (of one group of a grouped charge) and its minimum."""
    check_reading(charge.meter, usage.value, usage.transactions)
    try:
        rating = rate_charge(charge, Usage(usage.value, usage.transactions, usage.prorated))
    except InvalidInput as exc:  # e.g. cannot be priced exactly: the reading's fault
        raise Unbillable(exc.message, meter=charge.meter, hint=exc.hint) from None
    lines: list[dict[str, Any]] = []
    for priced in price_lines(rating, inp.currency, inp.rounding):
        line = _line(
            priced.kind,
            f"{label} (minimum commitment)" if priced.kind == "minimum" else label,
            inp.currency,
            subscription=terms.id,
            plan=piece.phase_key,
            service=(piece.start, piece.end),
            quantity=priced.quantity,
            amount=priced.amount,
            amount_exact=priced.amount_exact,
            meter=charge.meter,
            charge_model=charge.model,
            aggregation=_aggregation(phase_plan, charge.meter),
            tiers=priced.tiers,
            events=usage if priced.kind == "usage" else None,
            free_units=charge.free_units,
            billable_quantity=rating.billable_quantity,
            minimum=charge.min_amount,
            maximum=charge.max_amount,
        )
        if group is not None:  # only grouped lines carry the key: others stay as they were
            line["group"] = group
        spec = phase_plan.meters.get(charge.meter)
        if spec is not None and spec.carried and priced.kind == "usage":
            line["recurring"] = True  # the quantity carries events of earlier periods
        if rating.unprorated_quantity is not None and priced.kind == "usage":
            # a prorated line's quantity is its prorated units; the units at the piece's end
            # and the proration mode say where they come from
            line["prorated"] = {
                "unprorated_quantity": decimal_text(rating.unprorated_quantity),
                "by": phase_plan.plan.proration,
            }
        lines.append(line)
    return lines


def _aggregation(phase_plan: PhasePlan, meter: str) -> str | None:
    spec = phase_plan.meters.get(meter)
    return None if spec is None else spec.aggregation


def _charge_line(inp: InvoiceInput, charge: OneOffCharge) -> dict[str, Any]:
    amount = round_to_minor(charge.amount, inp.currency, inp.rounding)
    return _line(
        "charge",
        charge.description,
        inp.currency,
        service=(charge.at, charge.at),
        quantity=Decimal(1),
        amount=amount,
        amount_exact=charge.amount,
        reference=charge.key,
    )


def _line(
    kind: LineKind,
    description: str,
    currency: str,
    *,
    service: tuple[datetime, datetime],
    quantity: Decimal | None,
    amount: Decimal,
    amount_exact: Decimal,
    subscription: str | None = None,
    plan: str | None = None,
    meter: str | None = None,
    charge_model: str | None = None,
    aggregation: str | None = None,
    tiers: Sequence[TierLine] = (),
    events: MeterUsage | None = None,
    proration: str | None = None,
    fee_period: tuple[datetime, datetime] | None = None,
    free_units: Decimal | None = None,
    billable_quantity: Decimal | None = None,
    minimum: Decimal | None = None,
    maximum: Decimal | None = None,
    reference: str | None = None,
) -> dict[str, Any]:
    line: dict[str, Any] = {
        "kind": kind,
        "description": description,
        "subscription": subscription,
        "plan": plan,
        "meter": meter,
        "charge_model": charge_model,
        "aggregation": aggregation,
        "service": {"start": format_ts(service[0]), "end": format_ts(service[1])},
        "quantity": None if quantity is None else decimal_text(quantity),
        "amount": format_amount(amount, currency),
        "amount_exact": decimal_text(amount_exact),
        "tiers": [tier_document(tier) for tier in tiers],
        "events": None,
        "proration": proration,
        "fee_period": None,
        "free_units": None if not free_units else decimal_text(free_units),
        "billable_quantity": (
            None if billable_quantity is None else decimal_text(billable_quantity)
        ),
        "min_amount": None if minimum is None else format_amount(minimum, currency),
        "max_amount": None if maximum is None else format_amount(maximum, currency),
        "reference": reference,
    }
    if events is not None:
        line["events"] = {
            "count": events.count,
            "first": format_ts(events.first),
            "last": format_ts(events.last),
        }
    if fee_period is not None:
        line["fee_period"] = {"start": format_ts(fee_period[0]), "end": format_ts(fee_period[1])}
    return line


def _fraction_text(value: Fraction) -> str:
    return (
        str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    )


# --------------------------------------------------------------------------- fingerprints


LEGACY_FORM = 1
"""Fingerprint over the whole stored inputs document, subscription ids included."""
FINGERPRINT_FORM = 2
"""Fingerprint over the business part of the inputs (`business_document`)."""
FORMS = (LEGACY_FORM, FINGERPRINT_FORM)
_FORM_KEY = "fingerprint_form"


def inputs_document(inp: InvoiceInput) -> dict[str, Any]:
    """Everything the invoice depends on, as canonical plain values: what is stored beside
    it. It also holds the internal references a recomputation needs (subscription ids, the
    numbers of invoices late usage came from); the fingerprint leaves those out."""
    return {
        _FORM_KEY: FINGERPRINT_FORM,
        "customer": inp.customer,
        "currency": inp.currency,
        "timezone": inp.timezone,
        "rounding": inp.rounding,
        "period": {"start": format_ts(inp.period.start), "end": format_ts(inp.period.end)},
        "label": inp.label,
        "subscriptions": [
            {
                "id": terms.id,
                "start": format_ts(terms.start),
                "end": format_ts(terms.end),
                "trial_end": format_ts(terms.trial_end),
                "phases": [
                    {
                        "key": pp.phase.key,
                        "start": format_ts(pp.phase.start),
                        "end": format_ts(pp.phase.end),
                        "plan_version": pp.fingerprint,
                    }
                    for pp in terms.phases
                ],
                "fee_periods": [
                    {
                        "start": format_ts(p.start),
                        "end": format_ts(p.end),
                        "timing": timing,
                        **_advance_mark(terms, p, timing),
                    }
                    for p, timing in terms.fee_periods
                ],
                "pieces": [
                    {
                        "phase": piece.phase_key,
                        "start": format_ts(piece.start),
                        "end": format_ts(piece.end),
                        **_weighted_divisor_mark(billing_period(terms, inp.period), terms, piece),
                        "usage": {
                            meter: _usage_document(usage)
                            for meter, usage in sorted(piece.usage.items())
                        },
                    }
                    for piece in terms.pieces
                ],
            }
            for terms in sorted(inp.subscriptions, key=lambda t: (t.start, t.id))
        ],
        "charges": [
            {
                "key": c.key,
                "description": c.description,
                "amount": decimal_text(c.amount),
                "at": format_ts(c.at),
            }
            for c in sorted(inp.charges, key=lambda c: (c.at, c.key))
        ],
        "carried": [
            {"source": c.source, "lines": [dict(line) for line in c.lines]}
            for c in sorted(inp.carried, key=lambda c: c.source)
        ],
        "credits": [],
    }


def _advance_mark(terms: SubscriptionTerms, period: Period, timing: Timing) -> dict[str, str]:
    """A fee period whose fee in advance a plan change or the subscription's end cuts short
    (`settles_advance`) is billed by the rule of `base_fee`: in advance at the plan in force
    when the period starts (`{"advance": "at_start"}`), settled on the period's own invoice
    (`{"advance": "settled"}`). Invoices stored before that rule prorated the fee in advance
    and settled nothing; the mark puts the rule in the setup fingerprint, so a rerun reprices
    exactly those invoices, while every other invoice's inputs, and fingerprint, stay as they
    were."""
    if not settles_advance(terms, period):
        return {}
    if timing == "arrears":
        return {"advance": "settled"}
    return {} if _is_first(terms, period) else {"advance": "at_start"}


def _weighted_divisor_mark(
    period: Period, terms: SubscriptionTerms, piece: UsagePiece
) -> dict[str, str]:
    """`{"weighted_divisor": "period"}` on a piece shorter than its period whose plan reads a
    weighted_sum meter: such a piece's usage is its share of the full period, which invoices
    stored before that rule divided by the piece instead. The mark puts the rule in the setup
    fingerprint, so a rerun reprices exactly those invoices (and corrects them), while every
    other invoice's inputs, and fingerprint, stay as they were."""
    if (piece.start, piece.end) == (period.start, period.end):
        return {}
    plan = next((pp for pp in terms.phases if pp.phase.key == piece.phase_key), None)
    if plan is None:
        return {}
    weighted = any(
        charge.meter in plan.meters and plan.meters[charge.meter].aggregation == "weighted_sum"
        for charge in plan.plan.charges
    )
    return {"weighted_divisor": "period"} if weighted else {}


def _usage_document(usage: MeterUsage) -> dict[str, Any]:
    document: dict[str, Any] = {
        "value": decimal_text(usage.value),
        "count": usage.count,
        "first": format_ts(usage.first),
        "last": format_ts(usage.last),
    }
    if usage.prorated is not None:  # only then: other documents are what they were
        document["prorated"] = decimal_text(usage.prorated)
    if usage.transactions is not None:
        joined = "\n".join(decimal_text(value) for value in usage.transactions)
        document["transactions"] = {
            "count": len(usage.transactions),
            "sha256": hashlib.sha256(joined.encode()).hexdigest(),
        }
    if usage.groups is not None:
        document["groups"] = [
            {"group": list(key), **_usage_document(group)}
            for key, group in sorted(usage.groups, key=lambda g: key_order(g[0]))
        ]
    return document


def setup_document(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs without usage: what changes when the catalog, subscriptions or charges do."""
    document = dict(inputs)
    document["subscriptions"] = [
        {**terms, "pieces": [{k: v for k, v in p.items() if k != "usage"} for p in terms["pieces"]]}
        for terms in inputs["subscriptions"]
    ]
    return document


def canonical_json(document: Any) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def fingerprint_of(document: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(document)).hexdigest()


def inputs_form(inputs: Mapping[str, Any]) -> int:
    """The fingerprint form a stored inputs document was written in (no marker: legacy)."""
    form = inputs.get(_FORM_KEY, LEGACY_FORM)
    if form not in FORMS:
        raise InvalidInput(
            f"an invoice's inputs use fingerprint form {form!r}, which this version of Neruba "
            "does not know",
            hint="upgrade Neruba to the version that wrote it",
        )
    return int(form)


def in_form(inputs: Mapping[str, Any], form: int) -> dict[str, Any]:
    """The inputs document as an invoice of fingerprint form `form` stores it."""
    document = {key: value for key, value in inputs.items() if key != _FORM_KEY}
    if form != LEGACY_FORM:
        document[_FORM_KEY] = form
    return document


def fingerprinted(inputs: Mapping[str, Any]) -> Any:
    """What the fingerprint of a stored inputs document is over, in the document's form."""
    if inputs_form(inputs) == LEGACY_FORM:
        return inputs
    return business_document(inputs)


def inputs_fingerprint(inputs: Mapping[str, Any]) -> str:
    """The fingerprint of an inputs document (or of its setup document), in its form."""
    return fingerprint_of(fingerprinted(inputs))


def fingerprint_matches(stored: str, inputs: Mapping[str, Any]) -> bool:
    """Whether `stored` is the fingerprint of `inputs` in the current form or in the legacy
    form, which an invoice written before the business-input fingerprint still carries."""
    return stored == inputs_fingerprint(in_form(inputs, FINGERPRINT_FORM)) or (
        stored == inputs_fingerprint(in_form(inputs, LEGACY_FORM))
    )


def business_document(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs without what a database makes up: subscriptions without their ids, in the
    order of their own terms; late usage carried in without the number of the invoice it came
    from nor subscription ids on its lines. Two databases loaded with the same customers,
    catalog, subscriptions, charges and events, in any order, give the same document."""
    document = dict(inputs)
    document[_FORM_KEY] = FINGERPRINT_FORM
    document["subscriptions"] = sorted(
        (_without(terms, "id") for terms in inputs["subscriptions"]), key=canonical_json
    )
    document["carried"] = sorted(
        (
            {"lines": [_without(line, "subscription", "late_from") for line in entry["lines"]]}
            for entry in inputs.get("carried") or []
        ),
        key=canonical_json,
    )
    return document


def _without(document: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key not in keys}


def subscription_ids(stored: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, str]:
    """Each subscription id of the inputs `now` → the id the stored inputs knew the same
    subscription by (the same terms and usage, else the same terms): after the business
    inputs were loaded into another database, its subscriptions have other ids."""
    found: dict[str, str] = {}
    for documents in ((stored, now), (setup_document(stored), setup_document(now))):
        known: dict[bytes, list[str]] = {}
        taken = set(found.values())
        for terms in documents[0]["subscriptions"]:
            if terms.get("id") is not None and terms["id"] not in taken:
                known.setdefault(canonical_json(_without(terms, "id")), []).append(terms["id"])
        for terms in documents[1]["subscriptions"]:
            ids = known.get(canonical_json(_without(terms, "id")))
            if terms["id"] not in found and ids:
                found[terms["id"]] = ids.pop(0)
    return found


def with_subscription_ids(content: Mapping[str, Any], ids: Mapping[str, str]) -> dict[str, Any]:
    """An invoice document whose lines name their subscriptions by the ids in `ids`."""
    lines = [
        {**line, "subscription": ids.get(line["subscription"], line["subscription"])}
        if line.get("subscription") is not None
        else line
        for line in content["lines"]
    ]
    return {**content, "lines": lines}


def with_ids(built: BuiltInvoice, ids: Mapping[str, str]) -> BuiltInvoice:
    """`built` naming its subscriptions by the ids in `ids`, in its lines and in its inputs;
    its fingerprints (over business inputs) stay as they are."""
    if all(old == new for old, new in ids.items()):
        return built
    inputs = {
        **built.inputs,
        "subscriptions": [
            {**terms, "id": ids.get(terms["id"], terms["id"])}
            for terms in built.inputs["subscriptions"]
        ],
    }
    return replace(built, content=with_subscription_ids(built.content, ids), inputs=inputs)


def same_business_inputs(stored: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    """Whether two inputs documents, in any form, have the same business inputs."""
    return canonical_json(business_document(stored)) == canonical_json(business_document(now))


def same_business_setup(stored: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    """Whether two inputs documents, in any form, have the same business terms (usage aside)."""
    return canonical_json(business_document(setup_document(stored))) == canonical_json(
        business_document(setup_document(now))
    )


def run_fingerprint(invoice_fingerprints: Iterable[tuple[str, str, str]]) -> str:
    """A run's fingerprint: over (customer external id, period start, invoice fingerprint),
    sorted. Invoice numbers stay out: they count a project's invoices in the order they were
    written, so two databases that agree on every invoice may still number them differently."""
    return fingerprint_of(sorted(list(item) for item in invoice_fingerprints))


# --------------------------------------------------------------------------- corrections


def line_key(line: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two lines of one customer-period "the same line" across versions."""
    service = line.get("service") or {}
    fee_period = line.get("fee_period") or {}
    return (
        line["kind"],
        line.get("subscription"),
        line.get("plan"),
        line.get("meter"),
        service.get("start"),
        service.get("end") if line["kind"] != "base_fee" else fee_period.get("start"),
        line.get("reference"),
        line.get("late_from"),
        _group_identity(line.get("group")),
    )


def _group_identity(group: Any) -> tuple[tuple[str, str | None], ...] | None:
    """A grouped line's group as part of its identity; None on every other line (and on
    lines stored before grouping existed, which carry no `group`)."""
    if not isinstance(group, Mapping):
        return None
    names = sorted(group)
    return tuple(zip(names, group_from_document(names, group), strict=True))


def correction_lines(
    new: Sequence[Mapping[str, Any]], billed: Iterable[Sequence[Mapping[str, Any]]], currency: str
) -> list[dict[str, Any]]:
    """The lines that turn what was billed (an invoice and its earlier corrections) into `new`.

    Each line of the result is the difference of one line: its amount and quantity are new
    minus billed. Lines whose amount did not change are left out; a line no longer present
    is reversed in full.
    """
    billed_amount: dict[tuple[Any, ...], Decimal] = {}
    billed_quantity: dict[tuple[Any, ...], Decimal] = {}
    last_seen: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for lines in billed:
        for line in lines:
            key = line_key(line)
            billed_amount[key] = billed_amount.get(key, ZERO) + Decimal(line["amount"])
            if line.get("quantity") is not None:
                billed_quantity[key] = billed_quantity.get(key, ZERO) + Decimal(line["quantity"])
            last_seen[key] = line
    result: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for line in new:
        key = line_key(line)
        seen.add(key)
        delta = Decimal(line["amount"]) - billed_amount.get(key, ZERO)
        if delta != 0:
            result.append(_delta_line(line, delta, billed_quantity.get(key), currency))
    for key, line in last_seen.items():
        if key not in seen and billed_amount[key] != 0:
            reversal = dict(line)
            reversal["events"] = None
            reversal["tiers"] = []
            result.append(
                _delta_line(reversal, -billed_amount[key], billed_quantity.get(key), currency, 0)
            )
    return result


def _delta_line(
    line: Mapping[str, Any],
    delta: Decimal,
    billed_quantity: Decimal | None,
    currency: str,
    new_quantity: Decimal | int | None = None,
) -> dict[str, Any]:
    corrected = dict(line)
    quantity = line.get("quantity")
    if quantity is not None:
        now = Decimal(quantity) if new_quantity is None else Decimal(new_quantity)
        corrected["quantity"] = decimal_text(now - (billed_quantity or ZERO))
    corrected["amount"] = format_amount(delta, currency)
    corrected["amount_exact"] = decimal_text(delta)
    corrected["description"] = f"{line['description']} (correction)"
    return corrected


def carried_lines(carried: CarriedUsage) -> list[dict[str, Any]]:
    """The difference lines as they appear on the next invoice, marked with their source."""
    result = []
    for line in carried.lines:
        marked = dict(line)
        marked["late_from"] = carried.source
        marked["description"] = f"Late usage from {carried.source}: {line['description']}"
        result.append(marked)
    return result


def correction_kind(total: Decimal) -> InvoiceKind:
    return "credit_note" if total < 0 else "supplemental"


# --------------------------------------------------------------------------- diffs


def without_fee_descriptions(content: Mapping[str, Any]) -> dict[str, Any]:
    """The document with the text of its base-fee lines left out: invoices stored before the
    lines named their days ("Pro base fee (in advance)") are the same invoice as their
    recomputation ("Pro base fee, 1 Nov – 30 Nov 2026 (in advance)") when this agrees."""
    return {
        **content,
        "lines": [
            {**line, "description": None} if line.get("kind") == "base_fee" else line
            for line in content.get("lines", [])
        ],
    }


@dataclass(frozen=True)
class LineChange:
    key: tuple[Any, ...]
    description: str
    before: str | None  # amount
    after: str | None


def diff_lines(
    before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]
) -> list[LineChange]:
    """Lines added, removed or changed in amount or quantity, in the order of `after`."""
    old = {line_key(line): line for line in before}
    new = {line_key(line): line for line in after}
    changes: list[LineChange] = []
    for key, line in new.items():
        previous = old.get(key)
        if previous is None:
            changes.append(LineChange(key, line["description"], None, line["amount"]))
        elif (previous["amount"], previous.get("quantity")) != (
            line["amount"],
            line.get("quantity"),
        ):
            changes.append(LineChange(key, line["description"], previous["amount"], line["amount"]))
    for key, line in old.items():
        if key not in new:
            changes.append(LineChange(key, line["description"], line["amount"], None))
    return changes
