"""`neruba reconcile stripe`: a period's finalized invoices against the Stripe mirror.

This module gathers both sides from the database and hands them to the pure comparison in
`domain/reconcile.py`; it never calls Stripe (pull first, or `--pull`).
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, or_, select

from neruba_cli.db.schema import Project
from neruba_cli.db.tables import customers_t, stripe_links_t, stripe_objects_t
from neruba_cli.domain import reconcile as domain
from neruba_cli.domain import stripe_link
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.money import to_minor_units
from neruba_cli.domain.spreadsheet_cells import escaped_row
from neruba_cli.domain.stripe_money import from_stripe, stripe_to_iso_minor
from neruba_cli.services import output_files
from neruba_cli.services.invoices import read as invoices_read
from neruba_cli.services.stripe import push as stripe_push

CSV_COLUMNS = (
    "kind",
    "invoice",
    "stripe_invoice",
    "currency",
    "neruba_total",
    "stripe_total",
    "difference",
    "neruba_status",
    "stripe_status",
    "neruba_customer",
    "stripe_customer",
    "at_stake",
    "reason",
)


def reconcile_stripe(conn: Connection, project: Project, label: str) -> domain.Report:
    rows = [
        row
        for row in invoices_read.select_rows(conn, project, label=label)
        if row.status != "draft"
    ]
    return domain.reconcile(
        label, _neruba(conn, project, rows), _stripe(conn, project, rows, label)
    )


def _neruba(conn: Connection, project: Project, rows: list[Any]) -> list[domain.NerubaSide]:
    stripe_ids = dict(
        conn.execute(
            select(customers_t.c.id, customers_t.c.stripe_id).where(
                customers_t.c.project_id == project.id
            )
        ).all()
    )
    links = {
        row.invoice_id: row
        for row in conn.execute(
            select(stripe_links_t).where(stripe_links_t.c.project_id == project.id)
        ).all()
    }
    sides = []
    for row in rows:
        link = links.get(row.id)
        pushed = stripe_push.expected(project, row, link)
        restored, expected_total = 0, stripe_link.expected_total(pushed)
        if row.kind == "credit_note":
            settled = stripe_push.settlement_of(row)
            restored = settled.restored
            split = stripe_link.credit_note_split(pushed, settled.to_invoice, settled.to_wallet)
            expected_total = -split.amount
        sides.append(
            domain.NerubaSide(
                number=row.number,
                kind=row.kind,
                status=row.status,
                customer=row.customer_external_id,
                stripe_customer=stripe_ids.get(row.customer_id),
                currency=row.currency,
                total=to_minor_units(row.total, row.currency),
                amount_due=int(row.amount_due_minor),
                expected_stripe_total=_iso(expected_total, row.currency),
                restored=restored,
                linked=None if link is None else link.stripe_id,
            )
        )
    return sides


def _stripe(
    conn: Connection, project: Project, rows: list[Any], label: str
) -> list[domain.StripeSide]:
    numbers = [row.number for row in rows]
    named = stripe_objects_t.c.neruba_period == label
    if numbers:
        named = or_(named, stripe_objects_t.c.neruba_invoice.in_(numbers))
    found = conn.execute(
        select(stripe_objects_t).where(
            stripe_objects_t.c.project_id == project.id,
            stripe_objects_t.c.object.in_(("invoice", "credit_note")),
            stripe_objects_t.c.neruba_project == project.slug,
            named,
        )
    ).all()
    return [
        domain.StripeSide(
            id=row.stripe_id,
            object=row.object,
            neruba_invoice=row.neruba_invoice,
            customer=row.stripe_customer,
            currency=(row.currency or "").upper(),
            total=_iso(int(row.amount or 0), row.currency or project.currency),
            status=row.status,
            deleted=bool(row.deleted),
        )
        for row in found
    ]


def _iso(value: int, currency: str) -> int:
    """Stripe units → ISO minor units; a value ISO cannot hold exactly is rounded (and so
    still shows as an amount mismatch)."""
    try:
        return stripe_to_iso_minor(value, currency)
    except InvalidInput:
        return to_minor_units(Decimal(from_stripe(value, currency)), currency)


REPORT_FORMATS = ("csv", "json")


def report_format(path: Path, explicit: str | None) -> str:
    """`--format`, else from the `--output` name (`.csv`, `.json`); a name that says neither
    (`-`, a device) needs `--format`."""
    if explicit is not None:
        return explicit
    suffix = path.suffix.lower().removeprefix(".")
    if suffix in REPORT_FORMATS:
        return suffix
    raise InvalidInput(
        f"--output {path}: write a .csv or a .json file",
        hint="or pass --format csv|json (for - or a device)",
    )


def write_report(report: domain.Report, path: Path, fmt: str) -> None:
    """`--output`: the report as JSON or one CSV row per discrepancy, written whole
    (`services/output_files.py`: `-`, devices, temporaries)."""
    if fmt == "json":
        data = orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2) + b"\n"
    else:
        data = _csv(report).encode()
    output_files.write_output(path, data)


def _csv(report: domain.Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for item in report.discrepancies:
        neruba, stripe = item.neruba or {}, item.stripe or {}
        data = item.as_dict()
        writer.writerow(
            escaped_row(
                [
                    item.kind,
                    item.invoice or "",
                    item.stripe_invoice or "",
                    item.currency,
                    neruba.get("total", ""),
                    stripe.get("total", ""),
                    data.get("difference", ""),
                    neruba.get("status", ""),
                    stripe.get("status", ""),
                    neruba.get("stripe_customer") or "",
                    stripe.get("customer") or "",
                    data["at_stake"],
                    item.reason or "",
                ]
            )
        )
    return buffer.getvalue()
