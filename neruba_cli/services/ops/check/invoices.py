"""Invoice sweeps: numbering, line rows and corrections, against the rules of
domain/consistency.py.

- `invoices.numbering`: numbers run 1..N without a gap and the project's counter stands at N;
- `invoices.lines`: every invoice's `invoice_lines` rows are its document's lines, one row per
  line in order (kind, description, meter, quantity, amount, event count), and add up to its
  subtotal (the document's own totals are `ledger.invoices`' business);
- `invoices.corrections`: every credit note and supplemental invoice is linked to the
  period's plain invoice (same customer, currency, month and period), at a lower revision,
  final unless both are void; plain invoices link to nothing; no revision repeats.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, select

from neruba_cli.db.schema import Project
from neruba_cli.db.tables import customers_t, invoice_lines_t, invoice_sequences_t, invoices_t
from neruba_cli.domain import consistency
from neruba_cli.domain.consistency import InvoiceFacts, LineRow
from neruba_cli.services.ops.check.result import CheckResult, Sweep

CHUNK = 500  # invoices whose documents are read at a time


def numbering(conn: Connection, project: Project, result: CheckResult) -> None:
    numbers = list(
        conn.execute(
            select(invoices_t.c.number).where(invoices_t.c.project_id == project.id)
        ).scalars()
    )
    result.checked = len(numbers)
    counter = conn.execute(
        select(invoice_sequences_t.c.last_number).where(
            invoice_sequences_t.c.project_id == project.id
        )
    ).scalar()
    for problem in consistency.numbering_problems(numbers, project.slug, counter):
        result.fail(problem)


def line_rows(conn: Connection, project: Project, result: CheckResult) -> None:
    checked = 0
    for chunk in document_chunks(conn, project):
        rows: dict[str, list[LineRow]] = {row.id: [] for row in chunk}
        for line in conn.execute(
            select(invoice_lines_t)
            .where(invoice_lines_t.c.invoice_id.in_(list(rows)))
            .order_by(invoice_lines_t.c.invoice_id, invoice_lines_t.c.position)
        ):
            rows[line.invoice_id].append(
                LineRow(
                    line.position,
                    line.kind,
                    line.description,
                    line.meter,
                    line.quantity,
                    Decimal(line.amount),
                    line.event_count,
                )
            )
        for row in chunk:
            checked += 1
            document = orjson.loads(row.content)
            for problem in consistency.line_row_problems(document, rows[row.id], row.currency):
                result.fail(f"invoice {row.number}: {problem}")
    result.checked = checked


def document_chunks(
    conn: Connection, project: Project, *, live_only: bool = False
) -> Iterator[list[Any]]:
    """Invoices with their documents, a chunk at a time (keyset on the id), so memory stays
    bounded and no result set stays open while the next query runs (MariaDB's driver
    allows one at a time)."""
    after = ""
    while True:
        query = (
            select(
                invoices_t.c.id, invoices_t.c.number, invoices_t.c.currency, invoices_t.c.content
            )
            .where(invoices_t.c.project_id == project.id, invoices_t.c.id > after)
            .order_by(invoices_t.c.id)
            .limit(CHUNK)
        )
        if live_only:
            query = query.where(invoices_t.c.status != "void")
        chunk = list(conn.execute(query).all())
        if not chunk:
            return
        yield chunk
        after = chunk[-1].id


def invoice_facts(conn: Connection, project: Project) -> list[InvoiceFacts]:
    rows = conn.execute(
        select(
            invoices_t.c.id,
            invoices_t.c.number,
            customers_t.c.external_id,
            invoices_t.c.customer_id,
            invoices_t.c.period,
            invoices_t.c.period_start,
            invoices_t.c.period_end,
            invoices_t.c.currency,
            invoices_t.c.kind,
            invoices_t.c.status,
            invoices_t.c.revision,
            invoices_t.c.subtotal,
            invoices_t.c.corrects_id,
            invoices_t.c.event_count,
        )
        .join(customers_t, customers_t.c.id == invoices_t.c.customer_id)
        .where(invoices_t.c.project_id == project.id)
        .order_by(invoices_t.c.number)
    ).all()
    return [
        InvoiceFacts(
            row.id,
            row.number,
            row.external_id,
            row.customer_id,
            row.period,
            row.period_start,
            row.period_end,
            row.currency,
            row.kind,
            row.status,
            int(row.revision),
            Decimal(row.subtotal),
            row.corrects_id,
            int(row.event_count),
        )
        for row in rows
    ]


def corrections(conn: Connection, project: Project, result: CheckResult) -> None:
    facts = invoice_facts(conn, project)
    by_id = {invoice.id: invoice for invoice in facts}
    for invoice in facts:
        target = None if invoice.corrects_id is None else by_id.get(invoice.corrects_id)
        for problem in consistency.correction_problems(invoice, target):
            result.fail(f"invoice {invoice.number}: {problem}")
    for problem in consistency.repeated_revisions(facts):
        result.fail(problem)
    result.checked = len(facts)


SWEEPS: list[tuple[str, str, Sweep]] = [
    ("invoices.numbering", "invoice numbers are gapless and match the counter", numbering),
    ("invoices.lines", "invoice line rows equal their documents' lines", line_rows),
    ("invoices.corrections", "corrections link to the final invoice they correct", corrections),
]
