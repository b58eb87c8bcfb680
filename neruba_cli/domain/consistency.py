"""The rules `neruba check` holds stored rows to: the ledger's double entry and every figure
kept beside it (account balances, grants, wallets, invoice totals), invoice numbering, invoice
line rows against their documents, corrections against the invoices they correct, event
counts against the events stored, import receipts against what they imported. Plain values
in, problems out as sentences an operator can act on; services/ops/check/ only reads the rows.

Why these rules and not stricter ones is written beside each: a rule that fails on a normal
sequence of ingest and runs would teach operators to ignore the sweep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from neruba_cli.domain.invoice import FINAL, line_key
from neruba_cli.domain.invoice_numbers import sequence_of
from neruba_cli.domain.late_events import Treatment, treatment
from neruba_cli.domain.money import format_amount, format_minor, to_minor_units

CORRECTIONS = ("credit_note", "supplemental")
KINDS = ("invoice", *CORRECTIONS)


# --------------------------------------------------------------------------- ledger


@dataclass(frozen=True)
class TransactionTotal:
    """A transaction's entries in one currency (one row with no currency when it has none)."""

    transaction: str
    idempotency_key: str
    currency: str | None
    total: int | None  # sum of the entries, minor units
    entries: int


def transaction_problems(totals: Sequence[TransactionTotal]) -> tuple[list[str], int]:
    """Double entry: every transaction's entries sum to zero in each currency, and a posting
    has at least two entries. The problems (sums first, then entry counts) and how many
    transactions were checked."""
    problems: list[str] = []
    entries: dict[str, int] = {}
    for row in totals:
        entries[row.transaction] = entries.get(row.transaction, 0) + row.entries
        if row.total is not None and row.total != 0:
            currency = row.currency or ""
            problems.append(
                f"transaction {row.transaction} ({row.idempotency_key}) sums to "
                f"{format_minor(row.total, currency)} {currency}, not zero"
            )
    for transaction, count in entries.items():
        if count < 2:
            problems.append(
                f"transaction {transaction} has {count} entries; a posting needs at least two"
            )
    return problems, len(entries)


@dataclass(frozen=True)
class AccountBalance:
    name: str  # the account's code, with the customer's external id for a customer account
    currency: str
    balance: int  # as stored on the account, minor units
    entries: int  # the sum of its entries


def account_problems(account: AccountBalance) -> list[str]:
    """An account's stored balance is a cache of its entries: it must equal their sum."""
    if account.entries == account.balance:
        return []
    currency = account.currency
    return [
        f"account {account.name} ({currency}) has balance "
        f"{format_minor(account.balance, currency)} but its entries sum to "
        f"{format_minor(account.entries, currency)}"
    ]


@dataclass(frozen=True)
class GrantFacts:
    id: str
    currency: str
    amount: int  # granted, minor units
    remaining: int  # as stored on the grant
    posted: int  # what its ledger entries leave
    revoked: bool
    expired: bool


def grant_problems(grant: GrantFacts) -> list[str]:
    """A grant's remaining credit is what its entries leave, nothing once it is revoked or
    expired (what was left is posted away then), and between zero and what was granted."""
    currency = grant.currency
    problems = []
    if grant.posted != grant.remaining:
        problems.append(
            f"grant {grant.id} shows {format_minor(grant.remaining, currency)} {currency} "
            f"remaining but its entries leave {format_minor(grant.posted, currency)}"
        )
    if (grant.revoked or grant.expired) and grant.remaining:
        state = "revoked" if grant.revoked else "expired"
        problems.append(
            f"grant {grant.id} is {state} but still holds "
            f"{format_minor(grant.remaining, currency)} {currency}"
        )
    if not 0 <= grant.remaining <= grant.amount:
        problems.append(
            f"grant {grant.id} has {format_minor(grant.remaining, currency)} {currency} "
            f"remaining of {format_minor(grant.amount, currency)} granted"
        )
    return problems


@dataclass(frozen=True)
class WalletFacts:
    customer_id: str
    customer: str  # external id, for messages
    currency: str
    held: int  # the wallet account's credit balance, minor units


def wallet_problems(
    wallets: Sequence[WalletFacts], remaining: Mapping[tuple[str, str], int]
) -> list[str]:
    """A customer's wallet (per currency) holds exactly what its grants have left, never
    less than nothing; grants with credit left always have a wallet. `remaining` is the
    grants' remaining credit by (customer id, currency)."""
    problems = []
    seen = set()
    for wallet in wallets:
        key = (wallet.customer_id, wallet.currency)
        seen.add(key)
        left = remaining.get(key, 0)
        if wallet.held != left:
            problems.append(
                f"wallet of {wallet.customer} holds {format_minor(wallet.held, wallet.currency)} "
                f"{wallet.currency} but its grants have "
                f"{format_minor(left, wallet.currency)} left"
            )
        if wallet.held < 0:
            problems.append(f"wallet of {wallet.customer} is overdrawn ({wallet.currency})")
    for key, left in remaining.items():
        if key not in seen and left:
            problems.append(f"grants of customer {key[0]} hold credit but no wallet was posted")
    return problems


@dataclass(frozen=True)
class InvoiceTotals:
    """An invoice row's figures and its stored document."""

    status: str
    currency: str
    subtotal: Decimal
    credits_applied: Decimal
    total: Decimal
    document: Mapping[str, Any]
    amount_due: int  # minor units
    amount_paid: int


def document_problems(invoice: InvoiceTotals) -> list[str]:
    """The invoice row's totals against its document: lines add up to the subtotal, the total
    is the subtotal less the credits applied, and the row says what the document says."""
    currency = invoice.currency
    content = invoice.document
    problems = []
    lines = sum((Decimal(line["amount"]) for line in content["lines"]), Decimal(0))
    if format_amount(lines, currency) != content["subtotal"]:
        problems.append(
            f"its lines add up to {format_amount(lines, currency)}, its subtotal says "
            f"{content['subtotal']}"
        )
    expected = Decimal(content["subtotal"]) - Decimal(content["credits_applied"])
    if format_amount(expected, currency) != content["total"]:
        problems.append(f"total {content['total']} is not subtotal less credits applied")
    for name in ("subtotal", "credits_applied", "total"):
        stored = format_amount(getattr(invoice, name), currency)
        if stored != content[name]:
            problems.append(
                f"the row's {name} {stored} differs from its document's {content[name]}"
            )
    return problems


def invoice_problems(invoice: InvoiceTotals, posted: Mapping[str, int], paid: int) -> list[str]:
    """What disagrees between an invoice and its receivable postings (`posted`: their sums by
    the kind of transaction that wrote them) and its payments net of refunds (`paid`). A
    draft has no postings and a void invoice owes nothing; a final one posted its subtotal
    and its credits, owes what its receivable entries say, and is paid when nothing is due."""
    currency = invoice.currency
    problems = document_problems(invoice)
    due = sum(posted.values())
    if invoice.status == "draft":
        if posted:
            problems.append("a draft has ledger postings")
        return problems
    if invoice.status == "void":
        if due:
            problems.append(f"void but still owes {format_minor(due, currency)} in the ledger")
        return problems
    subtotal = to_minor_units(invoice.subtotal, currency)
    finalized = posted.get("invoice_finalized", 0)
    if finalized != subtotal:
        problems.append(
            f"subtotal {format_minor(subtotal, currency)} but "
            f"{format_minor(finalized, currency)} posted"
        )
    credits = to_minor_units(invoice.credits_applied, currency)
    if -posted.get("credits_applied", 0) != credits:
        problems.append(
            f"credits applied {format_minor(credits, currency)} but "
            f"{format_minor(-posted.get('credits_applied', 0), currency)} posted"
        )
    if due != invoice.amount_due:
        problems.append(
            f"amount due {format_minor(invoice.amount_due, currency)} but the ledger says "
            f"{format_minor(due, currency)}"
        )
    if paid != invoice.amount_paid:
        problems.append(
            f"amount paid {format_minor(invoice.amount_paid, currency)} but payments net of "
            f"refunds are {format_minor(paid, currency)}"
        )
    if subtotal < 0 and invoice.amount_due != 0:
        problems.append(
            f"its negative total was never settled ({format_minor(invoice.amount_due, currency)} "
            "left against the invoice it corrects or the wallet)"
        )
    if invoice.status == "paid" and invoice.amount_due > 0:
        problems.append(f"marked paid but {format_minor(invoice.amount_due, currency)} is due")
    if invoice.status == "finalized" and subtotal > 0 and invoice.amount_due <= 0:
        problems.append("nothing is due but it is not marked paid")
    return problems


# --------------------------------------------------------------------------- numbering


def numbering_problems(numbers: Sequence[str], slug: str, counter: int | None) -> list[str]:
    """Invoice numbers (SLUG-000001, ...) run 1, 2, ... N without a gap (a void invoice keeps
    its number), and the project's counter stands at N: a gap would look like a deleted
    invoice to an auditor."""
    found = sorted(_sequence_number(number, slug) for number in numbers)  # -1: not one of ours
    expected = list(range(1, len(found) + 1))
    problems = []
    if found != expected:
        missing = sorted(set(expected) - set(found))[:10]
        extra = sorted(set(found) - set(expected))[:10]
        problems.append(
            f"invoice numbers are not 1..{len(found)} without gaps"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
        )
    if (counter or 0) != len(found):
        problems.append(f"the invoice counter stands at {counter or 0} for {len(found)} invoices")
    return problems


def _sequence_number(number: str, slug: str) -> int:
    sequence = sequence_of(number, slug)
    return -1 if sequence is None else sequence


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
    decided = treatment(policy, final=latest.status in FINAL)
    if decided is Treatment.RECOMPUTE:
        return f"{head}; {rerun} counts them"
    if decided is Treatment.IGNORE:
        return f"{head}; policy ignore: {rerun} books them without billing"
    if decided is Treatment.CARRY:
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
