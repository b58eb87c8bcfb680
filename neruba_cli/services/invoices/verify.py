"""`invoice verify`: each invoice's stored document checked against itself and against a
recomputation.

For each invoice: (a) its fingerprint is the SHA-256 of its stored inputs (of their business
part, or of the whole document for an invoice of the legacy form); (b) its stored document is
whole (totals, lines, the revision the run recorded); (c) for the customer-period's latest live
invoice, recomputing it now through the run's own code path (services/billing) gives the same
business inputs, the same fingerprint and the same document. Nothing here prices anything
itself.

Only business inputs are compared, so the check holds in another database the same inputs
were loaded into (in any order) and the invoices copied to: lines name their subscriptions by
the ids the stored inputs knew them by. An invoice of the legacy form, whose fingerprint covers
subscription ids, is checked on its business inputs and document there, with a note that its
fingerprint cannot be reproduced with this database's ids.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Row, select

from neruba_cli.db.schema import Project
from neruba_cli.db.tables import invoice_revisions_t, invoices_t
from neruba_cli.domain import consistency
from neruba_cli.domain.consistency import InvoiceTotals
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.invoice import (
    FINAL,
    LEGACY_FORM,
    BuiltInvoice,
    CarriedUsage,
    business_document,
    canonical_json,
    correction_kind,
    correction_lines,
    diff_lines,
    in_form,
    inputs_fingerprint,
    inputs_form,
    invoice_content,
    setup_document,
    subscription_ids,
    with_subscription_ids,
    without_fee_descriptions,
)
from neruba_cli.domain.late_events import Treatment, treatment
from neruba_cli.domain.periods import Period
from neruba_cli.services.billing import run as billing_run
from neruba_cli.services.invoices import settlement
from neruba_cli.services.invoices.read import get, invoice_query, select_rows


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
                invoice_query(project)
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
    if inputs_fingerprint(inputs) == row.fingerprint:
        verdict.checks["fingerprint"] = "ok"
    else:
        verdict.fail(
            "fingerprint",
            f"the stored fingerprint {row.fingerprint} is not the SHA-256 of the stored inputs "
            f"({inputs_fingerprint(inputs)})",
        )
    content = orjson.loads(row.content)
    problems = consistency.document_problems(
        InvoiceTotals(
            row.status,
            row.currency,
            Decimal(row.subtotal),
            Decimal(row.credits_applied),
            Decimal(row.total),
            content,
            row.amount_due_minor,
            row.amount_paid_minor,
        )
    )
    recorded = conn.execute(
        select(invoice_revisions_t.c.content, invoice_revisions_t.c.fingerprint).where(
            invoice_revisions_t.c.invoice_id == row.id, invoice_revisions_t.c.version == row.version
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
    if built is None and row.status in FINAL and _reverses_everything(row, live):
        # what `run bill` writes for a period its month no longer bills (a backdated
        # cancellation, a time zone move): a correction that takes back all that was billed
        verdict.checks["recomputed"] = "ok"
        verdict.notes.append(
            f"month {row.period} no longer bills this period; {row.number} reverses all that "
            "was billed for it"
        )
        return
    if built is None:
        verdict.fail(
            "recomputed",
            f"month {row.period} no longer bills this period (subscriptions or catalog changed)",
        )
        return
    stored_inputs = orjson.loads(row.inputs)
    content = with_subscription_ids(built.content, subscription_ids(stored_inputs, built.inputs))
    if _business(stored_inputs) != _business(built.inputs):
        changed = _inputs_difference(stored_inputs, built.inputs)
        usage_only = _business(setup_document(stored_inputs)) == _business(
            setup_document(built.inputs)
        )
        decided = treatment(
            project.late_events, final=row.status in FINAL, terms_changed=not usage_only
        )
        if decided in (Treatment.IGNORE, Treatment.CARRY):
            verdict.checks["recomputed"] = "ok"
            where = (
                "ignores them"
                if decided is Treatment.IGNORE
                else "carries them to the next invoice"
            )
            verdict.notes.append(f"{changed}; the project's late_events policy {where}")
            return
        if row.status in FINAL and not _amounts_changed(row, content, live):
            # What `run bill` decides too: a correction is written only for lines whose
            # amount changed, so late usage that moves no rounded amount leaves it as billed.
            verdict.checks["recomputed"] = "ok"
            verdict.notes.append(f"{changed}; no amount changed, so there is nothing to correct")
            return
        hint = f"run `neruba run bill --period {row.period}` to " + (
            "write the correction" if row.status in FINAL else "recompute the draft"
        )
        verdict.fail("recomputed", f"inputs changed: {changed} ({hint})")
        return
    if row.corrects_id is None:
        expected = content
    else:
        billed = [
            orjson.loads(other.content)["lines"]
            for other in live
            if other.revision < row.revision and other.status in FINAL
        ]
        lines = correction_lines(content["lines"], billed, row.currency)
        total = sum((Decimal(line["amount"]) for line in lines), Decimal(0))
        expected = invoice_content(
            correction_kind(total),
            row.currency,
            Period(row.period_start, row.period_end),
            built.content["period"]["label"],
            lines,
        )
    stored = settlement.as_billed(orjson.loads(row.content))
    if not _same_document(stored, expected) and _same_document(
        without_fee_descriptions(stored), without_fee_descriptions(expected)
    ):
        verdict.notes.append(
            "its base-fee lines keep the text they were written with (before lines named "
            "their days); every amount agrees"
        )
        stored = expected
    if not _same_document(stored, expected):
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
    form = inputs_form(stored_inputs)
    recomputed = inputs_fingerprint(in_form(built.inputs, form))
    if recomputed != row.fingerprint:
        if form != LEGACY_FORM:
            verdict.fail("recomputed", f"recomputed fingerprint {recomputed} differs")
            return
        verdict.notes.append(
            "fingerprint of the legacy form, over internal ids (subscription ids) that differ "
            "in this database: its business inputs and document were checked instead"
        )
    verdict.checks["recomputed"] = "ok"


def _reverses_everything(row: Row[Any], live: list[Row[Any]]) -> bool:
    """Whether this finalized correction leaves nothing billed for its customer-period."""
    if row.corrects_id is None:
        return False
    billed = [
        orjson.loads(other.content)["lines"]
        for other in live
        if other.revision <= row.revision and other.status in FINAL
    ]
    return not correction_lines([], billed, row.currency)


def _amounts_changed(row: Row[Any], content: dict[str, Any], live: list[Row[Any]]) -> bool:
    """Whether a correction of this finalized invoice would have any line: the run's own rule
    (`correction_lines` against every finalized document of the customer-period)."""
    billed = [
        orjson.loads(other.content)["lines"]
        for other in live
        if other.revision <= row.revision and other.status in FINAL
    ]
    return bool(correction_lines(content["lines"], billed, row.currency))


def _business(inputs: dict[str, Any]) -> bytes:
    """The business inputs of a stored or recomputed inputs document, in whatever form it was
    written: what must agree for the recomputation to be the same invoice."""
    return canonical_json(business_document(inputs))


def _same_document(stored: dict[str, Any], expected: dict[str, Any]) -> bool:
    """The same document, or the same lines in another order: lines of two subscriptions
    starting at the same instant follow their ids, which differ between databases."""
    if canonical_json(stored) == canonical_json(expected):
        return True
    lines_apart = {**stored, "lines": None} == {**expected, "lines": None}
    return lines_apart and sorted(map(canonical_json, stored["lines"])) == sorted(
        map(canonical_json, expected["lines"])
    )


def _inputs_difference(stored: dict[str, Any], now: dict[str, Any]) -> str:
    if _business(setup_document(stored)) != _business(setup_document(now)):
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
