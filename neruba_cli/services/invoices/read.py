"""Reading invoices: one by number, a filtered list, the list form and the invoice document.

The document (`invoice show --json`) is built from the stored row and its stored `content`
only: lines exactly as the run wrote them, nothing computed at read time, so a finalized
invoice prints the same bytes every time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Row, select

from neruba_cli.db.schema import Project
from neruba_cli.db.tables import customers_t, invoices_t
from neruba_cli.domain.billing_periods import resolve_label
from neruba_cli.domain.errors import InvalidInput, NotFound
from neruba_cli.domain.invoice import FINAL
from neruba_cli.domain.money import format_amount, format_minor
from neruba_cli.domain.timestamps import format_ts

STATUSES = ("draft", "finalized", "void", "paid")

_corrected = invoices_t.alias("corrected")


def invoice_query(project: Project) -> Any:
    """Invoices of the project with their customer's external id and the number they correct."""
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
    row = conn.execute(invoice_query(project).where(invoices_t.c.number == number.strip())).first()
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
    after: str | None = None,
    limit: int | None = None,
) -> list[Row[Any]]:
    """The project's invoices by number (unique in a project); with `after`, those numbered
    after it, so a reader walking pages neither repeats nor skips one."""
    query = invoice_query(project)
    if after is not None:
        query = query.where(invoices_t.c.number > after)
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
    return list(conn.execute(query.order_by(invoices_t.c.number).limit(limit)).all())


def listing(
    conn: Connection,
    project: Project,
    *,
    period: str | None = None,
    status: str | None = None,
    customer: str | None = None,
    now: datetime,
    after: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """`invoice list` and `GET /v1/invoices`: the list form of the invoices of a month
    (YYYY-MM, previous or current), a status and a customer, each filter optional."""
    label = period_label(period, project, now) if period else None
    rows = select_rows(
        conn, project, label=label, status=status, customer=customer, after=after, limit=limit
    )
    return [summary(row) for row in rows]


def show(conn: Connection, project: Project, number: str) -> dict[str, Any]:
    """`invoice show --json` and `GET /v1/invoices/{number}`: the invoice document."""
    return document(get(conn, project, number))


def heading(row: Row[Any]) -> dict[str, Any]:
    """What names an invoice, the first keys of its list form and of its explanation."""
    return {
        "number": row.number,
        "customer": row.customer_external_id,
        "kind": row.kind,
        "status": row.status,
        "label": row.period,
        "period": {"start": format_ts(row.period_start), "end": format_ts(row.period_end)},
        "currency": row.currency,
    }


def summary(row: Row[Any]) -> dict[str, Any]:
    """The list form of an invoice (`invoice list --json`)."""
    currency = row.currency
    return {
        **heading(row),
        "subtotal": format_amount(row.subtotal, currency),
        "credits_applied": format_amount(row.credits_applied, currency),
        "total": format_amount(row.total, currency),
        "amount_paid": format_minor(row.amount_paid_minor, currency),
        "amount_due": amount_due(row),
        "corrects": row.corrects_number,
        "run": row.run_id,
        "fingerprint": row.fingerprint,
        "version": row.version,
    }


def amount_due(row: Row[Any]) -> str | None:
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
        "amount_due": amount_due(row),
        "settlement": content.get("settlement"),
        "kind": row.kind,
        "label": row.period,
        "version": row.version,
        "finalized_at": format_ts(row.finalized_at),
        "voided_at": format_ts(row.voided_at),
        "void_reason": row.void_reason,
    }
