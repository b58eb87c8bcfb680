"""`neruba compare BASELINE --period P`: what Neruba billed against a baseline.

This module gathers the two sides and hands them to the pure comparison in
`domain/compare.py`; it writes nothing. The sides:

- **Neruba**: the project's finalized and paid documents of the period (invoices,
  supplemental invoices and credit notes, so corrections count); drafts and voids are left
  out. Lines come from each document's stored content; prepaid credit applied to an invoice
  is a way of paying, not a charge, so it is not compared.
- **A CSV baseline** (a legacy system's export): one row per invoice line (see
  `BASELINE_FIELDS`; columns found by name, `--map field=Column` renames, `--preset stripe`
  reads Stripe's invoice line item export). Rows of other periods are left out. Any bad row
  stops the comparison with the file, line and reason (exit 1): a partial baseline would
  report drift that is not there.
- **`stripe`**: the Stripe mirror (pull first): this project's invoices and credit notes of
  the period (`metadata.neruba_period`) that are neither drafts nor void, line by line; the
  push's "Credits applied" item is left out like Neruba's credit. Whatever the mirrored
  lines do not add up to (a total changed in Stripe, lines the mirror does not hold) is an
  extra line "(not itemized in the Stripe mirror)".

Customers match by external id, or by Stripe id (`customers.stripe_id`). For the reason
`late_event`, the events of a usage line received after its period ended are read back.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from neruba_cli.db.schema import Project
from neruba_cli.db.tables import customers_t, events_t, stripe_objects_t
from neruba_cli.db.usage_sql import CURRENT
from neruba_cli.domain import aggregation
from neruba_cli.domain import compare as domain
from neruba_cli.domain.billing_periods import month_label
from neruba_cli.domain.csv_header import delimiter_problem
from neruba_cli.domain.errors import InvalidInput, UsageError
from neruba_cli.domain.invoice import FINAL
from neruba_cli.domain.money import normalize_currency, parse_amount
from neruba_cli.domain.stripe_link import CREDITS_LINE
from neruba_cli.domain.stripe_money import from_stripe
from neruba_cli.services.catalog import store as catalog_store
from neruba_cli.services.invoices import read as invoices_read

STRIPE = "stripe"
UNITEMIZED = "(not itemized in the Stripe mirror)"
LATE_EVENTS_READ = 100_000  # beyond this, a late part is only counted, not summed
MAX_REPORTED_PROBLEMS = 5

# The baseline's fields and the column names each is found under (compared after folding
# case and turning every run of other characters into "_": "Customer ID" is customer_id).
BASELINE_FIELDS = (
    "customer",
    "invoice",
    "period",
    "invoice_date",
    "description",
    "meter",
    "quantity",
    "amount",
    "currency",
)
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "customer": ("customer", "customer_id", "external_id"),
    "invoice": ("invoice", "invoice_id", "invoice_number"),
    "period": ("period", "billing_period", "month"),
    "invoice_date": ("invoice_date", "date"),
    "description": ("description", "line"),
    "meter": ("meter", "meter_code"),
    "quantity": ("quantity", "qty"),
    "amount": ("amount", "line_amount"),
    "currency": ("currency",),
}
PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    # Stripe's "Invoice line items" export (Dashboard → Invoices → Export): amounts in major
    # units, timestamps in UTC. The invoice's period is its earliest line "Period Start".
    "stripe": {
        "customer": ("customer_id", "customer"),
        "invoice": ("invoice_id", "invoice", "invoice_number"),
        "period": ("period_start_utc", "period_start"),
        "invoice_date": (
            "invoice_date_utc",
            "invoice_date",
            "invoice_created_utc",
            "created_utc",
            "created",
            "date_utc",
        ),
        "description": ("description", "line_item_description"),
        "meter": ("neruba_meter_metadata", "meter"),
        "quantity": ("quantity",),
        "amount": ("amount", "line_item_amount"),
        "currency": ("currency",),
    },
}

_LABEL = re.compile(r"^(\d{4})-(\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class CompareOptions:
    baseline: str  # "stripe" or a CSV path
    label: str  # YYYY-MM, resolved
    tolerance: Decimal
    threshold: domain.Threshold | None = None
    mapping: Mapping[str, str] = field(default_factory=dict)
    preset: str | None = None


# --------------------------------------------------------------------------- customers


@dataclass(frozen=True)
class KnownCustomer:
    id: str
    external_id: str
    currency: str
    timezone: str


@dataclass
class Directory:
    """The project's customers by external id and by Stripe id."""

    by_external: dict[str, KnownCustomer]
    by_stripe: dict[str, str]

    def resolve(self, raw: str) -> KnownCustomer | None:
        found = self.by_external.get(raw)
        if found is None and raw in self.by_stripe:
            found = self.by_external[self.by_stripe[raw]]
        return found


def load_directory(conn: Connection, project: Project) -> Directory:
    rows = conn.execute(
        select(
            customers_t.c.id,
            customers_t.c.external_id,
            customers_t.c.currency,
            customers_t.c.timezone,
            customers_t.c.stripe_id,
        ).where(customers_t.c.project_id == project.id)
    ).all()
    by_external = {
        row.external_id: KnownCustomer(row.id, row.external_id, row.currency, row.timezone)
        for row in rows
    }
    by_stripe = {row.stripe_id: row.external_id for row in rows if row.stripe_id}
    return Directory(by_external, by_stripe)


# --------------------------------------------------------------------------- Neruba's side


def neruba_sides(
    conn: Connection, project: Project, label: str, only: Sequence[str] = ()
) -> tuple[list[domain.CustomerSide], list[str]]:
    """Each customer's finalized and paid documents of the period, and notes on what was left
    out (drafts)."""
    lines: dict[str, list[domain.SourceLine]] = defaultdict(list)
    documents: dict[str, list[str]] = defaultdict(list)
    currencies: dict[str, tuple[str, str]] = {}
    mixed: list[str] = []
    drafts = 0
    for row in invoices_read.select_rows(conn, project, label=label):
        customer = row.customer_external_id
        if only and customer not in only:
            continue
        if row.status == "draft":
            drafts += 1
        if row.status not in FINAL:
            continue
        first = currencies.setdefault(customer, (row.currency, row.number))
        if first[0] != row.currency:
            mixed.append(f"{customer}: {row.number} is in {row.currency}, {first[1]} in {first[0]}")
            continue
        content = orjson.loads(row.content)
        lines[customer] += domain.invoice_lines(content["lines"], row.number)
        documents[customer].append(row.number)
    _refuse_mixed_currencies("Neruba", mixed)
    notes = []
    if drafts:
        notes.append(
            f"{drafts} draft invoice(s) of {label} are not compared: finalize them first "
            f"(`neruba invoice finalize --period {label}`)"
        )
    sides = [
        domain.CustomerSide(customer, currencies[customer][0], tuple(lines[customer]), tuple(docs))
        for customer, docs in documents.items()
    ]
    return sides, notes


def _refuse_mixed_currencies(side: str, mixed: Sequence[str]) -> None:
    """Amounts in two currencies never add up: like a CSV baseline billing one customer in two
    currencies, documents of one customer in two currencies stop the comparison."""
    if mixed:
        shown = "; ".join(mixed[:MAX_REPORTED_PROBLEMS])
        more = len(mixed) - MAX_REPORTED_PROBLEMS
        raise InvalidInput(
            f"{side}: {len(mixed)} document(s) bill a customer in a second currency: {shown}"
            + (f"; and {more} more" if more > 0 else ""),
            hint="one customer is billed in one currency; nothing was compared",
        )


# --------------------------------------------------------------------------- the Stripe mirror


def stripe_sides(
    conn: Connection, project: Project, label: str, directory: Directory
) -> tuple[list[domain.CustomerSide], list[str]]:
    rows = conn.execute(
        select(
            stripe_objects_t.c.stripe_id,
            stripe_objects_t.c.object,
            stripe_objects_t.c.data,
            stripe_objects_t.c.deleted,
        )
        .where(
            stripe_objects_t.c.project_id == project.id,
            stripe_objects_t.c.object.in_(("invoice", "credit_note")),
            stripe_objects_t.c.neruba_project == project.slug,
            stripe_objects_t.c.neruba_period == label,
        )
        .order_by(stripe_objects_t.c.stripe_id)
    ).all()
    lines: dict[str, list[domain.SourceLine]] = defaultdict(list)
    documents: dict[str, list[str]] = defaultdict(list)
    currencies: dict[str, tuple[str, str]] = {}
    mixed: list[str] = []
    known: dict[str, bool] = {}
    notes: list[str] = []
    for row in rows:
        data: dict[str, Any] = orjson.loads(row.data)
        if row.deleted or data.get("deleted") or data.get("status") in ("draft", "void"):
            continue
        customer, is_known = _stripe_customer(data, directory)
        currency = normalize_currency(str(data.get("currency") or project.currency))
        first = currencies.setdefault(customer, (currency, row.stripe_id))
        if first[0] != currency:
            mixed.append(f"{customer}: {row.stripe_id} is in {currency}, {first[1]} in {first[0]}")
            continue
        found, note = _stripe_lines(row.stripe_id, row.object, data, currency)
        lines[customer] += found
        if note:
            notes.append(note)
        documents[customer].append(row.stripe_id)
        known[customer] = is_known
    _refuse_mixed_currencies("Stripe", mixed)
    sides = [
        domain.CustomerSide(c, currencies[c][0], tuple(lines[c]), tuple(docs), known[c])
        for c, docs in documents.items()
    ]
    return sides, notes


def _stripe_customer(data: Mapping[str, Any], directory: Directory) -> tuple[str, bool]:
    raw = data.get("customer")
    stripe_id = raw.get("id") if isinstance(raw, dict) else raw
    if stripe_id and stripe_id in directory.by_stripe:
        return directory.by_stripe[stripe_id], True
    named = (data.get("metadata") or {}).get("neruba_customer")
    if named and named in directory.by_external:
        return str(named), True
    return str(stripe_id or named or "?"), False


def _stripe_lines(
    stripe_id: str, kind: str, data: Mapping[str, Any], currency: str
) -> tuple[list[domain.SourceLine], str | None]:
    """A Stripe invoice's lines (a credit note's, negated) without the credits item, and a
    remainder line where they do not add up to the document's total."""
    sign = -1 if kind == "credit_note" else 1
    listed = (data.get("lines") or {}).get("data") or []
    credits = Decimal(0)
    found = []
    for item in listed:
        amount = from_stripe(int(item.get("amount") or 0), currency) * sign
        if str((item.get("metadata") or {}).get("neruba_line")) == CREDITS_LINE:
            credits += amount
            continue
        found.append(
            domain.SourceLine(
                description=str(item.get("description") or ""),
                amount=amount,
                source=stripe_id,
            )
        )
    charges = from_stripe(int(data.get("total") or 0), currency) * sign - credits
    remainder = charges - sum((line.amount for line in found), Decimal(0))
    note = None
    if remainder != 0:
        found.append(domain.SourceLine(UNITEMIZED, remainder, kind="unitemized", source=stripe_id))
        more = (data.get("lines") or {}).get("has_more")
        why = "the mirror holds only its first lines" if more else "its total differs"
        note = f"Stripe {stripe_id}: its lines do not add up to its total ({why})"
    return found, note


# --------------------------------------------------------------------------- a CSV baseline


@dataclass(frozen=True)
class BaselineRow:
    line: int
    customer: str
    invoice: str | None
    when: date | datetime | str | None  # a label "YYYY-MM", a date, or an instant
    description: str
    meter: str | None
    quantity: Decimal | None
    amount: Decimal
    currency: str | None
    dated_by_invoice: bool = False  # `when` is the invoice date (no period cell)


def header_key(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.casefold()).strip("_")


def parse_mapping(pairs: Iterable[str]) -> dict[str, str]:
    """`--map field=Column` (repeatable)."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        name = name.strip().lower()
        if not sep or not column.strip():
            raise UsageError(f"--map {pair!r}: write FIELD=COLUMN, e.g. --map amount=Total")
        if name not in BASELINE_FIELDS:
            raise UsageError(
                f"--map {pair!r}: {name!r} is not a baseline field",
                hint=f"fields: {', '.join(BASELINE_FIELDS)}",
            )
        mapping[name] = column.strip()
    return mapping


def resolve_columns(
    header: Sequence[str], path: Path, mapping: Mapping[str, str], preset: str | None
) -> dict[str, int]:
    """Field → column index, from --map, else the preset's or the default names."""
    if preset is not None and preset not in PRESETS:
        raise UsageError(f"--preset {preset!r} is not known", hint=f"use {', '.join(PRESETS)}")
    names = PRESETS[preset] if preset else DEFAULT_COLUMNS
    exact = {name: index for index, name in enumerate(header)}
    folded: dict[str, int] = {}
    for index, name in enumerate(header):
        folded.setdefault(header_key(name), index)
    columns: dict[str, int] = {}
    for name in BASELINE_FIELDS:
        if name in mapping:
            wanted = mapping[name]
            found = exact.get(wanted, folded.get(header_key(wanted)))
            if found is None:
                raise InvalidInput(
                    f"{path}: line 1: no column {wanted!r} (mapped to {name} with --map)",
                    hint=f"the header has: {', '.join(header)}",
                )
            columns[name] = found
            continue
        for candidate in names[name]:
            if candidate in folded:
                columns[name] = folded[candidate]
                break
    missing = [name for name in ("customer", "amount") if name not in columns]
    if "description" not in columns and "meter" not in columns:
        missing.append("description (or meter)")
    wrong_delimiter = delimiter_problem(header)
    if missing and wrong_delimiter is not None:
        raise InvalidInput(f"{path}: line 1: {wrong_delimiter}")
    if missing:
        first = missing[0].split(" ")[0]
        raise InvalidInput(
            f"{path}: line 1: no column for {', '.join(missing)}",
            hint=f"name one with --map, e.g. --map {first}=COLUMN; the header has: "
            f"{', '.join(header)}",
        )
    return columns


def read_baseline(
    path: Path, mapping: Mapping[str, str] | None = None, preset: str | None = None
) -> list[BaselineRow]:
    """Every row of the file, or InvalidInput naming the file, the lines and what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidInput(f"{path}: line {line}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise InvalidInput(f"{path}: the file is empty; expected a header line") from None
    except csv.Error as exc:
        raise InvalidInput(f"{path}: line 1: malformed CSV: {exc}") from None
    columns = resolve_columns(header, path, mapping or {}, preset)
    rows: list[BaselineRow] = []
    problems: list[str] = []
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(f"line {start}: malformed CSV: {exc}")
            continue
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            problems.append(f"line {start}: {len(record)} fields, the header has {len(header)}")
            continue
        try:
            rows.append(_row(start, record, columns))
        except InvalidInput as exc:
            problems.append(f"line {start}: {exc.message}")
    if problems:
        shown = "; ".join(problems[:MAX_REPORTED_PROBLEMS])
        more = len(problems) - MAX_REPORTED_PROBLEMS
        raise InvalidInput(
            f"{path}: {len(problems)} bad line(s): {shown}"
            + (f"; and {more} more" if more > 0 else ""),
            hint="fix them and run again; nothing was compared",
        )
    return rows


def _row(line: int, record: Sequence[str], columns: Mapping[str, int]) -> BaselineRow:
    def cell(name: str) -> str:
        index = columns.get(name)
        return record[index].strip() if index is not None else ""

    customer = cell("customer")
    if not customer:
        raise InvalidInput("customer is empty")
    description, meter = cell("description"), cell("meter")
    if not description and not meter:
        raise InvalidInput("description and meter are both empty")
    amount_text = cell("amount")
    if not amount_text:
        raise InvalidInput("amount is empty")
    amount = parse_amount(amount_text, field="amount")
    quantity_text = cell("quantity")
    quantity = None
    if quantity_text:
        try:
            quantity = Decimal(quantity_text)
        except InvalidOperation:
            raise InvalidInput(f"quantity {quantity_text!r} is not a number") from None
        if not quantity.is_finite():
            raise InvalidInput(f"quantity {quantity_text!r} is not a number")
    currency_text = cell("currency")
    currency = normalize_currency(currency_text) if currency_text else None
    period_text = cell("period")
    when_text = period_text or cell("invoice_date")
    return BaselineRow(
        line=line,
        customer=customer,
        invoice=cell("invoice") or None,
        when=parse_when(when_text) if when_text else None,
        description=description or meter,
        meter=meter or None,
        quantity=quantity,
        amount=amount,
        currency=currency,
        dated_by_invoice=bool(when_text) and not period_text,
    )


def parse_when(text: str) -> date | datetime | str:
    """A period cell: YYYY-MM, a date (YYYY-MM-DD) or a timestamp (UTC unless it says)."""
    value = text.strip()
    label = _LABEL.match(value)
    if label:
        if not 1 <= int(label.group(2)) <= 12:
            raise InvalidInput(f"period {text!r} is not a month")
        return value
    try:
        if _DATE.match(value):
            return date.fromisoformat(value)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"period {text!r} is not a month, a date or a timestamp",
            hint="e.g. 2026-10, 2026-10-31 or 2026-10-01T00:00:00Z",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def label_of(when: date | datetime | str, timezone: str) -> str:
    if isinstance(when, str):
        return when
    if isinstance(when, datetime):
        return month_label(when, timezone)
    return f"{when.year:04d}-{when.month:02d}"


def csv_sides(
    rows: Sequence[BaselineRow], source: str, project: Project, label: str, directory: Directory
) -> tuple[list[domain.CustomerSide], list[str]]:
    """The rows of period `label`, one side per customer. A row's period is its invoice's
    (the earliest of the invoice's rows) when the file names invoices, else its own; a file
    without periods is all one period."""
    resolved: list[tuple[BaselineRow, KnownCustomer | None, str | None]] = []
    by_invoice: dict[tuple[str, str], str] = {}
    for row in rows:
        known = directory.resolve(row.customer)
        tz = known.timezone if known else project.timezone
        row_label = None if row.when is None else label_of(row.when, tz)
        resolved.append((row, known, row_label))
        if row.invoice is not None and row_label is not None:
            key = (row.customer, row.invoice)
            by_invoice[key] = min(by_invoice.get(key, row_label), row_label)
    lines: dict[str, list[domain.SourceLine]] = defaultdict(list)
    documents: dict[str, list[str]] = defaultdict(list)
    currencies: dict[str, tuple[str, int]] = {}
    known_ids: dict[str, bool] = {}
    skipped = 0
    problems = []
    for row, known, row_label in resolved:
        if row.invoice is not None:
            row_label = by_invoice.get((row.customer, row.invoice), row_label)
        if row_label is not None and row_label != label:
            skipped += 1
            continue
        customer = known.external_id if known else row.customer
        currency = row.currency or (known.currency if known else project.currency)
        first = currencies.setdefault(customer, (currency, row.line))
        if first[0] != currency:
            problems.append(
                f"line {row.line}: {customer} is billed in {currency} here and in {first[0]} "
                f"on line {first[1]}"
            )
            continue
        lines[customer].append(
            domain.SourceLine(
                description=row.description,
                amount=row.amount,
                quantity=row.quantity,
                meter=row.meter,
                source=f"{source}:{row.line}",
            )
        )
        document = row.invoice or source
        if document not in documents[customer]:
            documents[customer].append(document)
        known_ids[customer] = known is not None
    if problems:
        raise InvalidInput(
            f"{source}: {len(problems)} bad line(s): {'; '.join(problems[:MAX_REPORTED_PROBLEMS])}",
            hint="one customer is billed in one currency; nothing was compared",
        )
    # An invoice date only approximates the period: an invoice for October is often dated
    # 2026-11-01, so a file dated only by invoice could drop every row of the period asked
    # for. Rather than compare nothing (and report every customer as missing), stop and ask
    # for the real period.
    if rows and skipped == len(rows) and all(row.dated_by_invoice for row in rows):
        found = sorted({row_label for _, _, row_label in resolved if row_label is not None})
        shown = ", ".join(found[:10]) + (" …" if len(found) > 10 else "")
        raise InvalidInput(
            f"{source}: no row is of {label}: its periods come from invoice dates "
            f"({shown}), as the file has no period column",
            hint="add a `period` column (YYYY-MM) or name one with --map period=COLUMN",
        )
    notes = []
    if skipped:
        notes.append(f"{skipped} row(s) of {source} belong to other periods and were left out")
    unknown = sorted(c for c, is_known in known_ids.items() if not is_known)
    if unknown:
        shown = ", ".join(unknown[:10]) + (" …" if len(unknown) > 10 else "")
        notes.append(
            f"{len(unknown)} baseline customer(s) are not customers of the project: {shown}"
        )
    sides = [
        domain.CustomerSide(c, currencies[c][0], tuple(lines[c]), tuple(docs), known_ids[c])
        for c, docs in documents.items()
    ]
    return sides, notes


# --------------------------------------------------------------------------- late events


def late_evidence(
    conn: Connection,
    project: Project,
    questions: Sequence[domain.LateQuestion],
    directory: Directory,
) -> dict[tuple[str, str], domain.LateUsage]:
    """For each usage line in question: its events received after its period ended."""
    if not questions:
        return {}
    with Session(bind=conn) as session:
        meters = catalog_store.stored_meters(session, project)
    found: dict[tuple[str, str], domain.LateUsage] = {}
    for question in questions:
        customer = directory.by_external.get(question.customer)
        if customer is None:
            continue
        rows = conn.execute(
            select(events_t.c.ts, events_t.c.quantity, events_t.c.properties)
            .where(
                events_t.c.project_id == project.id,
                events_t.c.customer_id == customer.id,
                events_t.c.meter == question.meter,
                events_t.c.ts >= question.start,
                events_t.c.ts < question.end,
                events_t.c.received_at > question.end,
                CURRENT,
            )
            .limit(LATE_EVENTS_READ + 1)
        ).all()
        meter = meters.get(question.meter)
        if meter is None:
            found[(question.customer, question.key)] = domain.LateUsage(len(rows), None)
            continue
        spec = meter.spec
        records = [_record(row) for row in rows]
        matching = [record for record in records if aggregation.matches(spec, record)]
        quantity = None
        if spec.aggregation in ("count", "sum") and len(rows) <= LATE_EVENTS_READ:
            quantity = aggregation.aggregate(spec, matching, question.start, question.end)
        found[(question.customer, question.key)] = domain.LateUsage(len(matching), quantity)
    return found


def _record(row: Any) -> aggregation.EventRecord:
    ts = row.ts if row.ts.tzinfo else row.ts.replace(tzinfo=UTC)
    properties = json.loads(row.properties or "{}", parse_float=Decimal)
    return aggregation.EventRecord(ts, Decimal(row.quantity), properties)


# --------------------------------------------------------------------------- the comparison


def compare(conn: Connection, project: Project, options: CompareOptions) -> domain.Report:
    rows: list[BaselineRow] = []
    if options.baseline != STRIPE:
        rows = read_baseline(Path(options.baseline), options.mapping, options.preset)
    elif options.mapping or options.preset:
        raise UsageError("--map and --preset describe a CSV file; `stripe` needs neither")
    directory = load_directory(conn, project)
    ours, notes = neruba_sides(conn, project, options.label)
    if options.baseline == STRIPE:
        theirs, more = stripe_sides(conn, project, options.label, directory)
        source = STRIPE
    else:
        source = Path(options.baseline).name
        theirs, more = csv_sides(rows, source, project, options.label, directory)
    pairings = domain.match(ours, theirs)
    late = late_evidence(conn, project, domain.late_questions(pairings), directory)
    results = domain.assess(pairings, tolerance=options.tolerance, late=late)
    return domain.Report(
        kind="compare",
        period=options.label,
        baseline=source,
        labels=domain.Labels(),
        tolerance=options.tolerance,
        results=tuple(results),
        threshold=options.threshold,
        notes=tuple(notes + more),
    )


def parse_tolerance(text: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value < 0:
        raise UsageError(f"--tolerance: {text!r} is not an amount", hint="major units, e.g. 0.01")
    return value
