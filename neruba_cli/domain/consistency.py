"""The rules `neruba check` holds stored rows to beyond the ledger: invoice line rows against
their documents, corrections against the invoices they correct, event counts against the
events stored, import receipts against what they imported. Plain values in, problems out as
sentences an operator can act on; services/ops/check.py only reads the rows.

Why these rules and not stricter ones is written beside each: a rule that fails on a normal
sequence of ingest and runs would teach operators to ignore the sweep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from neruba_cli.domain.invoice import line_key
from neruba_cli.domain.money import format_amount

FINAL = ("finalized", "paid")
CORRECTIONS = ("credit_note", "supplemental")
KINDS = ("invoice", *CORRECTIONS)


# --------------------------------------------------------------------------- line rows


@dataclass(frozen=True)
class LineRow:
    """One `invoice_lines` row."""

    position: int
    kind: str
    description: str
    meter: str | None
    quantity: Decimal | None
    amount: Decimal
    event_count: int | None


def line_row_problems(
    document: Mapping[str, Any], rows: Sequence[LineRow], currency: str
) -> list[str]:
    """The stored line rows say what the document's lines say, one row per line in order, and
    add up to the document's subtotal. Exports and sweeps read the rows, so a row that drifted
    from the document would bill one thing and report another."""
    lines: Sequence[Mapping[str, Any]] = document["lines"]
    problems: list[str] = []
    if len(rows) != len(lines):
        problems.append(f"has {len(rows)} line rows but its document has {len(lines)} lines")
    positions = [row.position for row in rows]
    if positions != list(range(1, len(rows) + 1)):
        problems.append(f"its line rows are at positions {positions}, not 1..{len(rows)}")
    for row, line in zip(rows, lines, strict=False):
        problems += _row_differences(row, line, currency)
    stored = sum((row.amount for row in rows), Decimal(0))
    if format_amount(stored, currency) != document["subtotal"]:
        problems.append(
            f"its line rows add up to {format_amount(stored, currency)}, its subtotal says "
            f"{document['subtotal']}"
        )
    return problems


def _row_differences(row: LineRow, line: Mapping[str, Any], currency: str) -> list[str]:
    events = line.get("events") or {}
    quantity = line.get("quantity")
    expected: dict[str, Any] = {
        "kind": line["kind"],
        "description": str(line["description"])[:500],
        "meter": line.get("meter"),
        "quantity": None if quantity is None else Decimal(quantity),
        "amount": format_amount(Decimal(line["amount"]), currency),
        "event count": events.get("count"),
    }
    stored: dict[str, Any] = {
        "kind": row.kind,
        "description": row.description,
        "meter": row.meter,
        "quantity": row.quantity,
        "amount": format_amount(row.amount, currency),
        "event count": row.event_count,
    }
    return [
        f"line {row.position}: the row's {name} is {_shown(stored[name])}, its document's "
        f"{_shown(expected[name])}"
        for name in expected
        if stored[name] != expected[name]
    ]


def _shown(value: Any) -> str:
    return "empty" if value is None else str(value)


# --------------------------------------------------------------------------- corrections


@dataclass(frozen=True)
class InvoiceFacts:
    """The columns of an invoice row the correction and counting rules read."""

    id: str
    number: str
    customer: str  # external id, for messages
    customer_id: str
    label: str
    period_start: datetime
    period_end: datetime
    currency: str
    kind: str
    status: str
    revision: int
    subtotal: Decimal
    corrects_id: str | None
    event_count: int

    @property
    def window(self) -> tuple[str, datetime, datetime]:
        return (self.customer_id, self.period_start, self.period_end)


def correction_problems(invoice: InvoiceFacts, target: InvoiceFacts | None) -> list[str]:
    """A correction (credit note or supplemental invoice) is a later revision of one
    customer-period's invoice, written by a run once that invoice was final
    (services/billing/writer.py: `corrects` is the period's first final invoice, `revision`
    the next free one); its kind says the sign of its lines. A plain invoice corrects nothing:
    it may carry a revision above 0, but only because earlier ones were voided.

    A void correction may point at an invoice voided after it (voiding an invoice requires its
    corrections void first), so only live corrections need a final target."""
    if invoice.kind not in KINDS:
        return [f"has kind {invoice.kind!r}, not one of {', '.join(KINDS)}"]
    if invoice.kind == "invoice":
        if invoice.corrects_id is not None:
            name = "another invoice" if target is None else target.number
            return [f"is a plain invoice but is linked as a correction of {name}"]
        return []
    problems: list[str] = []
    what = invoice.kind.replace("_", " ")
    if invoice.revision <= 0:
        problems.append(f"is a {what} at revision {invoice.revision}; corrections start at 1")
    if invoice.kind == "credit_note" and invoice.subtotal >= 0:
        problems.append(f"is a credit note but its subtotal {invoice.subtotal} is not negative")
    if invoice.kind == "supplemental" and invoice.subtotal < 0:
        problems.append(f"is a supplemental invoice but its subtotal {invoice.subtotal} < 0")
    if invoice.corrects_id is None:
        return [*problems, f"is a {what} that corrects no invoice (corrects_id is empty)"]
    if target is None:
        return [*problems, f"is a {what} of an invoice that is not in this project"]
    problems += [
        f"corrects {target.number} of another {name}: {mine} here, {theirs} there"
        for name, mine, theirs in (
            ("customer", invoice.customer, target.customer),
            ("currency", invoice.currency, target.currency),
            ("month", invoice.label, target.label),
            ("period start", invoice.period_start, target.period_start),
            ("period end", invoice.period_end, target.period_end),
        )
        if mine != theirs
    ]
    if target.kind != "invoice":
        problems.append(f"corrects {target.number}, a {target.kind}, not the period's invoice")
    if target.revision >= invoice.revision:
        problems.append(
            f"is revision {invoice.revision} but corrects {target.number} at revision "
            f"{target.revision}"
        )
    if target.status == "draft" or (target.status == "void" and invoice.status != "void"):
        problems.append(f"corrects {target.number}, which is {target.status}, not final")
    return problems


def repeated_revisions(invoices: Sequence[InvoiceFacts]) -> list[str]:
    """Each revision of a customer-period is written once: two rows with one revision mean
    two runs wrote the same invoice (the unique key should have refused the second)."""
    seen: dict[tuple[tuple[str, datetime, datetime], int], str] = {}
    problems = []
    for invoice in sorted(invoices, key=lambda i: i.number):
        key = (invoice.window, invoice.revision)
        if key in seen:
            problems.append(
                f"{invoice.number} and {seen[key]} are both revision {invoice.revision} of "
                f"{invoice.customer}'s period {invoice.label}"
            )
        else:
            seen[key] = invoice.number
    return problems


# --------------------------------------------------------------------------- events billed


@dataclass(frozen=True)
class WindowEvents:
    """The events stored in one invoice's period, as the sweep counted them."""

    total: int  # every event of the customer in the period, any meter
    by_meter: Mapping[str, int]
    settled: int  # those committed before the invoice's current version was computed


def live_invoices_problems(live: Sequence[InvoiceFacts]) -> list[str]:
    """One customer-period has one live plain invoice; its corrections carry differences.
    Two live invoices would each count (and bill) the period's events."""
    plain = sorted(i.number for i in live if i.kind == "invoice")
    if len(plain) > 1:
        first = live[0]
        return [
            f"{' and '.join(plain)} are all live invoices of {first.customer}'s period "
            f"{first.label}: its events are counted {len(plain)} times"
        ]
    return []


def event_count_problems(invoice: InvoiceFacts, stored: WindowEvents) -> list[str]:
    """`event_count` is how many of the customer's events in the period the run that wrote
    the invoice saw (and later runs, where they only booked events that changed nothing).
    Events are append-only, so it can never exceed what is stored now; and a run counts
    every event committed before it started, so it can never be below those."""
    problems = []
    if invoice.event_count > stored.total:
        problems.append(
            f"counts {invoice.event_count} events but its period holds {stored.total}: "
            "events were deleted or counted twice"
        )
    if invoice.event_count < stored.settled:
        problems.append(
            f"was computed after {stored.settled} events of its period were stored but counts "
            f"{invoice.event_count}: {stored.settled - invoice.event_count} never counted"
        )
    return problems


def line_count_problems(
    lines: Sequence[Mapping[str, Any]],
    stored: Mapping[str, int],
    carried_from: Mapping[str, Mapping[str, int] | None],
) -> list[str]:
    """A usage line counts the events of its meter in its stretch of the period (a plan piece),
    so no line counts more events than its meter has in the period, the pieces of one
    subscription (which never overlap) add up to no more than that either, and no line
    appears twice. Lines carried from an earlier invoice (`late_from`, policy next_invoice)
    count that invoice's period, given in `carried_from` by number (None when the number is
    not an invoice of the project).

    Lines are not held to equal the stored counts: a correction only carries lines whose
    amount changed, so a line keeps its count from when its amount last moved."""
    problems: list[str] = []
    keys: set[tuple[Any, ...]] = set()
    per_subscription: dict[tuple[Any, ...], list[int]] = {}
    for line in lines:
        events = line.get("events")
        if line["kind"] != "usage" or not events:
            continue
        key = line_key(line)
        if key in keys:
            problems.append(f"bills line {line['description']!r} twice")
        keys.add(key)
        meter = str(line.get("meter"))
        source = line.get("late_from")
        where = stored
        if source is not None:
            found = carried_from.get(source)
            if found is None:
                problems.append(f"carries late usage from {source}, not an invoice of this project")
                continue
            where = found
        held = where.get(meter, 0)
        count = int(events["count"])
        label = f"carried from {source}" if source is not None else "in its period"
        if count > held:
            problems.append(
                f"line {line['description']!r} counts {count} {meter} events but only {held} "
                f"are stored {label}"
            )
        per_subscription.setdefault((line.get("subscription"), meter, source), []).append(count)
    for (subscription, meter, source), counts in per_subscription.items():
        held = (stored if source is None else carried_from.get(source) or {}).get(meter, 0)
        count = sum(counts)
        if len(counts) > 1 and count > held:
            problems.append(
                f"the {meter} lines of subscription {subscription} count {count} events "
                f"together but only {held} are stored: some are counted twice"
            )
    return problems


def awaiting_note(
    latest: InvoiceFacts, stored: WindowEvents, policy: str, carried_onto: Sequence[str]
) -> str | None:
    """Events stored after the latest invoice of a period was computed are not a fault: the
    next run of its month prices them (a draft is recomputed; a final invoice is corrected,
    ignored or carried by the project's `late_events` policy)."""
    waiting = stored.total - latest.event_count
    if waiting <= 0:
        return None
    plural = "event" if waiting == 1 else "events"
    head = (
        f"{latest.customer} {latest.label}: {waiting} {plural} stored after {latest.number} "
        "was computed"
    )
    rerun = f"`neruba run bill --period {latest.label}`"
    if latest.status not in FINAL:
        return f"{head}; {rerun} counts them"
    if policy == "ignore":
        return f"{head}; policy ignore: {rerun} books them without billing"
    if policy == "next_invoice":
        if carried_onto:
            return f"{head}; policy next_invoice carried them onto {', '.join(carried_onto)}"
        return f"{head}; policy next_invoice: the next month's run carries them"
    return f"{head}; {rerun} corrects it"


# --------------------------------------------------------------------------- import batches


@dataclass(frozen=True)
class BatchFacts:
    id: str
    source: str
    status: str  # running | completed | failed
    lines: int
    accepted: int
    duplicates: int
    conflicts: int
    rejected: int
    stored: int  # events and one-off charges rows carrying this batch id


def batch_problems(batch: BatchFacts) -> list[str]:
    """A receipt counts what its import stored. A completed one is exact: every line is
    accepted, a duplicate, a conflict or rejected, and every accepted line is a row of its
    own. A running (killed) or failed import saved its counts with each committed batch, so
    it may have stored more than its last counts say but never less: it must not claim rows
    it did not store."""
    problems = []
    classified = batch.accepted + batch.duplicates + batch.conflicts + batch.rejected
    if batch.status == "completed":
        if batch.stored != batch.accepted:
            problems.append(f"accepted {batch.accepted} lines but {batch.stored} rows carry it")
        if batch.lines != classified:
            problems.append(
                f"read {batch.lines} lines but classified {classified} ({batch.accepted} "
                f"accepted, {batch.duplicates} duplicates, {batch.conflicts} conflicts, "
                f"{batch.rejected} rejected)"
            )
    elif batch.accepted > batch.stored:
        problems.append(
            f"is {batch.status} and claims {batch.accepted} accepted lines but only "
            f"{batch.stored} rows carry it"
        )
    return problems
