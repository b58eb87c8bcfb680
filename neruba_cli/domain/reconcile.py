"""Reconciliation: what Neruba billed for a period against what Stripe holds for it.

Pure: both sides come in as plain values (Neruba's finalized invoices, the mirrored Stripe
invoices and credit notes) and the result is the list of discrepancies DESIGN.md names. Amounts
compare in ISO minor units; where Stripe cannot hold an amount exactly (a three-decimal
currency's last digit), the difference is reported with the reason `stripe_rounding` rather
than hidden.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from neruba_cli.domain.money import format_minor

KINDS = (
    "missing_in_stripe",
    "missing_in_neruba",
    "amount_mismatch",
    "currency_mismatch",
    "status_mismatch",
    "customer_mismatch",
)

# Neruba's status → the Stripe status that agrees with it, per Stripe object type.
_EXPECTED = {
    ("invoice", "finalized"): "open",
    ("invoice", "paid"): "paid",
    ("invoice", "void"): "void",
    ("credit_note", "finalized"): "issued",
    ("credit_note", "paid"): "issued",
    ("credit_note", "void"): "void",
}


@dataclass(frozen=True)
class NerubaSide:
    number: str
    kind: str  # invoice | supplemental | credit_note
    status: str  # finalized | paid | void
    customer: str
    stripe_customer: str | None
    currency: str
    total: int  # ISO minor units; negative for a credit note (and for a plain invoice whose
    # credits exceed its charges: Stripe shows that invoice with the same negative total)
    amount_due: int
    expected_stripe_total: int  # ISO minor units of what the push sends (after Stripe rounding)
    linked: str | None = None  # the Stripe id the push recorded
    restored: int = 0  # a credit note's credit restored to grants: Neruba's own, not Stripe's

    @property
    def stripe_object(self) -> str:
        return "credit_note" if self.kind == "credit_note" else "invoice"

    def stripe_total(self) -> int:
        """The total as Stripe should show it: a Stripe invoice carries the invoice's own
        signed total (negative when its credits exceed its charges); a Stripe credit note shows
        what it credits as a positive amount, less the credit restored to grants."""
        if self.stripe_object == "invoice":
            return self.total
        return abs(self.total) - self.restored

    def pushed_total(self) -> int:
        """What the push sends, in the same sign convention as `stripe_total`."""
        if self.stripe_object == "invoice":
            return self.expected_stripe_total
        return abs(self.expected_stripe_total)

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "kind": self.kind,
            "status": self.status,
            "customer": self.customer,
            "stripe_customer": self.stripe_customer,
            "currency": self.currency,
            "total": format_minor(self.total, self.currency),
            "amount_due": format_minor(self.amount_due, self.currency),
            "credits_restored": format_minor(self.restored, self.currency),
        }


@dataclass(frozen=True)
class StripeSide:
    id: str
    object: str  # invoice | credit_note
    neruba_invoice: str | None
    customer: str | None
    currency: str  # upper case
    total: int  # ISO minor units, positive for a credit note as Stripe shows it
    status: str | None
    deleted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object,
            "neruba_invoice": self.neruba_invoice,
            "status": "deleted" if self.deleted else self.status,
            "customer": self.customer,
            "currency": self.currency,
            "total": format_minor(self.total, self.currency),
        }


@dataclass(frozen=True)
class Discrepancy:
    kind: str
    invoice: str | None
    stripe_invoice: str | None
    neruba: dict[str, Any] | None
    stripe: dict[str, Any] | None
    currency: str
    at_stake: int  # minor units
    difference: int | None = None  # Stripe − Neruba, minor units (amount_mismatch)
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind,
            "invoice": self.invoice,
            "stripe_invoice": self.stripe_invoice,
            "neruba": self.neruba,
            "stripe": self.stripe,
            "currency": self.currency,
            "at_stake": format_minor(self.at_stake, self.currency),
            "reason": self.reason,
        }
        if self.difference is not None:
            data["difference"] = format_minor(self.difference, self.currency)
        return data


@dataclass
class Report:
    period: str
    matched: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(KINDS, 0)
        for item in self.discrepancies:
            counts[item.kind] += 1
        return counts

    def at_stake(self) -> dict[str, int]:
        """Money at stake per currency (minor units)."""
        totals: dict[str, int] = defaultdict(int)
        for item in self.discrepancies:
            totals[item.currency] += item.at_stake
        return dict(sorted(totals.items()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "matched": self.matched,
            "discrepancies": [item.as_dict() for item in self.discrepancies],
            "counts": self.counts(),
            "at_stake": {
                currency: format_minor(minor, currency)
                for currency, minor in self.at_stake().items()
            },
        }


def reconcile(period: str, neruba: Sequence[NerubaSide], stripe: Iterable[StripeSide]) -> Report:
    """Pair each Neruba invoice with the Stripe object naming it and list what disagrees."""
    report = Report(period)
    by_number: dict[str, list[StripeSide]] = defaultdict(list)
    unnamed: list[StripeSide] = []
    for item in stripe:
        if item.neruba_invoice:
            by_number[item.neruba_invoice].append(item)
        elif not item.deleted:
            unnamed.append(item)
    for invoice in sorted(neruba, key=lambda side: side.number):
        candidates = [
            item
            for item in by_number.pop(invoice.number, [])
            if item.object == invoice.stripe_object
        ]
        chosen = _choose(invoice, candidates)
        found = _compare(invoice, chosen, any(item.deleted for item in candidates))
        report.discrepancies.extend(found)
        if chosen is not None and not found:
            report.matched += 1
        for extra in candidates:
            if extra is not chosen and not extra.deleted and extra.status != "void":
                report.discrepancies.append(_only_in_stripe(extra, "duplicate"))
    for leftovers in by_number.values():
        for item in leftovers:
            if not item.deleted:
                report.discrepancies.append(_only_in_stripe(item, "unknown_invoice"))
    for item in unnamed:
        report.discrepancies.append(_only_in_stripe(item, "no_neruba_invoice"))
    report.discrepancies.sort(key=lambda d: (d.invoice or "~", d.stripe_invoice or "", d.kind))
    return report


def _choose(invoice: NerubaSide, candidates: Sequence[StripeSide]) -> StripeSide | None:
    """The Stripe object that stands for the invoice: the one the push recorded, else a live
    one, else a void one."""
    live = [item for item in candidates if not item.deleted]
    for item in live:
        if item.id == invoice.linked:
            return item
    not_void = [item for item in live if item.status != "void"]
    if not_void:
        return not_void[0]
    return live[0] if live else None


def _compare(invoice: NerubaSide, found: StripeSide | None, was_deleted: bool) -> list[Discrepancy]:
    if found is None:
        if invoice.status == "void" or abs(invoice.total) == invoice.restored:
            # never pushed or removed on both sides, or a credit note whose credit all went
            # back to grants (nothing for Stripe to credit): nothing is owed either way
            return []
        return [
            Discrepancy(
                "missing_in_stripe",
                invoice.number,
                None,
                invoice.as_dict(),
                None,
                invoice.currency,
                abs(invoice.total),
                reason="deleted_in_stripe" if was_deleted else None,
            )
        ]
    result: list[Discrepancy] = []

    def add(kind: str, at_stake: int, **extra: Any) -> None:
        result.append(
            Discrepancy(
                kind,
                invoice.number,
                found.id,
                invoice.as_dict(),
                found.as_dict(),
                invoice.currency,
                at_stake,
                **extra,
            )
        )

    if found.currency.upper() != invoice.currency:
        add("currency_mismatch", abs(invoice.total))
    else:
        neruba_total = invoice.stripe_total()
        if found.total != neruba_total:
            difference = found.total - neruba_total
            rounding = found.total == invoice.pushed_total()
            add(
                "amount_mismatch",
                abs(difference),
                difference=difference,
                reason="stripe_rounding" if rounding else None,
            )
    if invoice.stripe_customer is not None and found.customer != invoice.stripe_customer:
        add("customer_mismatch", abs(invoice.total))
    expected = {_EXPECTED.get((invoice.stripe_object, invoice.status))}
    residue = abs(abs(invoice.expected_stripe_total) - abs(invoice.total))
    settled = invoice.status == "finalized" and invoice.amount_due <= residue
    if invoice.stripe_object == "invoice" and settled:
        expected.add("paid")  # nothing due here (or only what Stripe's units cannot hold)
    if None not in expected and found.status not in expected:
        owed = invoice.amount_due if invoice.amount_due > 0 else abs(invoice.total)
        add("status_mismatch", owed, reason=f"{found.status} in Stripe, {invoice.status} here")
    return result


def _only_in_stripe(item: StripeSide, reason: str) -> Discrepancy:
    return Discrepancy(
        "missing_in_neruba",
        item.neruba_invoice,
        item.id,
        None,
        item.as_dict(),
        item.currency,
        abs(item.total),
        reason=reason,
    )
