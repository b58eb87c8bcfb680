"""The export kinds, one entry each: columns, how rows are selected and formatted, and what
the watermark counts.

Columns are a contract (documented in the README): a column is added at the end, never
renamed or moved. CSV has a header row, JSONL one object per line with the same keys in the
same order. Money is a decimal string in major units at the currency's precision, quantities
canonical decimal strings, times RFC 3339 UTC. Customers are their external ids; Neruba's own
prefixed ids (grt_, pay_, txn_, ...) and invoice numbers name the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Select, Table

from neruba_cli.db.tables import events_t, ledger_entries_t
from neruba_cli.domain.errors import InvalidInput, UsageError
from neruba_cli.domain.keys import refuse_secret
from neruba_cli.services.export import documents, journals
from neruba_cli.services.export.journals import EVENT_FIELDS, FEED_FIELDS, RowFormat
from neruba_cli.services.export.plan import FORMATS, NAME, YIELD_PER, ExportRequest, Plan

DOCUMENTS_PER_FETCH = 100  # lines: each invoice row carries its whole document


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


@dataclass(frozen=True)
class ExportKind:
    name: str
    columns: tuple[str, ...]
    query: Callable[[Plan], Select[Any]]
    rows: RowFormat
    journal: Table | None = None  # journals: the table whose id is the watermark
    invoice_period: bool = False  # --period: the invoices' period label, not a month of rows
    per_fetch: int = YIELD_PER
    # Kinds whose CSV columns depend on the rows (events): the columns and their formatter.
    csv_layout: Callable[[Connection, Plan], tuple[tuple[str, ...], RowFormat]] | None = None
    # Kinds that write more rows than they select (lines): what the progress bar counts.
    counted: Callable[[Select[Any]], Select[Any]] | None = None
    # Kinds whose rows depend on the plan (usage: the meters a plan groups)
    rows_for: Callable[[Plan], RowFormat] | None = None

    def layout(self, conn: Connection, plan: Plan) -> tuple[tuple[str, ...], RowFormat]:
        """The header and the formatter of this run."""
        if self.csv_layout is not None and plan.fmt == "csv":
            return self.csv_layout(conn, plan)
        columns = (*self.columns, *FEED_FIELDS) if plan.feed else self.columns
        return columns, self.rows if self.rows_for is None else self.rows_for(plan)


_ENTRIES = (
    ExportKind(
        "invoices",
        _words(
            "number customer kind status period period_start period_end currency subtotal "
            "credits_applied total amount_due amount_paid corrects run version finalized_at "
            "voided_at fingerprint updated_at"
        ),
        documents.invoices_query,
        documents.invoice_rows,
        invoice_period=True,
    ),
    ExportKind(
        "lines",
        _words(
            "invoice customer line kind description plan meter quantity amount currency "
            "service_start service_end events group"
        ),
        documents.lines_query,
        documents.line_rows,
        invoice_period=True,
        per_fetch=DOCUMENTS_PER_FETCH,
        counted=documents.lines_counted,
    ),
    ExportKind(
        "ledger",
        _words(
            "transaction kind reference effective_at account customer currency debit credit "
            "amount grant invoice memo created_at"
        ),
        journals.ledger_query,
        journals.ledger_rows,
        journal=ledger_entries_t,
    ),
    ExportKind(
        "events",
        (*EVENT_FIELDS, "properties"),  # CSV: properties.<name> columns instead
        journals.events_query,
        journals.events_jsonl,
        journal=events_t,
        csv_layout=journals.events_csv,
        rows_for=journals.events_jsonl_for,
    ),
    ExportKind(
        "usage",
        _words("customer meter day events quantity group"),
        journals.usage_query,
        journals.usage_rows,
        journal=events_t,
        rows_for=journals.usage_rows_for,
    ),
    ExportKind(
        "credits",
        _words(
            "grant customer currency amount remaining category priority expires_at source "
            "source_ref reason created_at revoked_at expired_at"
        ),
        documents.credits_query,
        documents.credit_rows,
    ),
    ExportKind(
        "payments",
        _words(
            "kind payment refund invoice customer currency amount applied refunded "
            "reference reason received_at created_at"
        ),
        documents.payments_query,
        documents.payment_rows,
    ),
)

KINDS: dict[str, ExportKind] = {kind.name: kind for kind in _ENTRIES}
COLUMNS: dict[str, tuple[str, ...]] = {kind.name: kind.columns for kind in _ENTRIES}
JOURNALS = tuple(kind.name for kind in _ENTRIES if kind.journal is not None)


def check_request(request: ExportRequest) -> None:
    if request.kind not in KINDS:
        raise UsageError(f"cannot export {request.kind!r}", hint=f"one of {', '.join(KINDS)}")
    if request.fmt not in FORMATS:
        raise UsageError(f"--format {request.fmt!r} is not one of: {', '.join(FORMATS)}")
    if request.name is not None:
        refuse_secret(request.name, field="--name")
    if request.name is not None and not NAME.fullmatch(request.name):
        raise InvalidInput(
            f"--name {request.name!r} is not a name",
            hint="up to 100 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    if request.overlap < timedelta(0):
        raise InvalidInput("--overlap cannot be negative")
