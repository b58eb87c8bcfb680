"""The document exports: invoices, their lines, credit grants, payments and refunds.

Documents change after they are written (an invoice is finalized and paid, a grant consumed,
a payment refunded), so an incremental run exports the rows *changed* at or after its
watermark, each kind saying what a change is (`changed`). Consumers upsert by the row's key.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    String,
    cast,
    exists,
    literal,
    null,
    or_,
    select,
    union_all,
)

from neruba_cli.db.tables import (
    credit_grants_t,
    customers_t,
    invoice_lines_t,
    invoices_t,
    ledger_entries_t,
    ledger_transactions_t,
    payments_t,
    refunds_t,
)
from neruba_cli.domain.grouping import group_text
from neruba_cli.domain.invoice import FINAL
from neruba_cli.domain.money import format_amount, format_minor
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.export.plan import Plan

_corrected = invoices_t.alias("corrected")


def _posted_since(column: Any, moment: datetime) -> ColumnElement[bool]:
    """A ledger posting written at or after `moment` names this invoice or grant."""
    return exists(
        select(1)
        .select_from(
            ledger_entries_t.join(
                ledger_transactions_t,
                ledger_transactions_t.c.id == ledger_entries_t.c.transaction_id,
            )
        )
        .where(column, ledger_transactions_t.c.created_at >= moment)
    )


def _invoice_query(plan: Plan, *, content: bool) -> Select[Any]:
    """Invoices changed (`updated_at`, or a ledger posting on them) since the watermark;
    `content`: their stored documents, for the lines."""

    def changed(moment: datetime) -> ColumnElement[bool]:
        return or_(
            invoices_t.c.updated_at >= moment,
            _posted_since(ledger_entries_t.c.invoice_id == invoices_t.c.id, moment),
        )

    columns: list[Any] = [
        invoices_t.c.number,
        customers_t.c.external_id,
        invoices_t.c.kind,
        invoices_t.c.status,
        invoices_t.c.period,
        invoices_t.c.period_start,
        invoices_t.c.period_end,
        invoices_t.c.currency,
        invoices_t.c.subtotal,
        invoices_t.c.credits_applied,
        invoices_t.c.total,
        invoices_t.c.amount_due_minor,
        invoices_t.c.amount_paid_minor,
        _corrected.c.number.label("corrects"),
        invoices_t.c.run_id,
        invoices_t.c.version,
        invoices_t.c.finalized_at,
        invoices_t.c.voided_at,
        invoices_t.c.fingerprint,
        invoices_t.c.updated_at,
    ]
    if content:
        columns = [invoices_t.c.number, customers_t.c.external_id, invoices_t.c.content]
    query = (
        select(*columns)
        .join(customers_t, customers_t.c.id == invoices_t.c.customer_id)
        .where(
            *plan.where(
                project=invoices_t.c.project_id,
                customer=invoices_t.c.customer_id,
                moment=invoices_t.c.updated_at,
                changed=changed,
            )
        )
        .order_by(invoices_t.c.number)
    )
    if not content:
        query = query.outerjoin(_corrected, _corrected.c.id == invoices_t.c.corrects_id)
    if plan.label is not None:
        query = query.where(invoices_t.c.period == plan.label)
    return query


def invoices_query(plan: Plan) -> Select[Any]:
    return _invoice_query(plan, content=False)


def lines_query(plan: Plan) -> Select[Any]:
    return _invoice_query(plan, content=True)


def lines_counted(query: Select[Any]) -> Select[Any]:
    """The invoice lines of the invoices a lines export reads (invoice_lines mirrors each
    document's lines): what its progress bar counts."""
    numbers = query.with_only_columns(invoices_t.c.id).order_by(None)
    return select(invoice_lines_t.c.id).where(invoice_lines_t.c.invoice_id.in_(numbers))


def invoice_rows(rows: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
    for r in rows:
        cur = r.currency
        yield (
            r.number,
            r.external_id,
            r.kind,
            r.status,
            r.period,
            format_ts(r.period_start),
            format_ts(r.period_end),
            cur,
            format_amount(r.subtotal, cur),
            format_amount(r.credits_applied, cur),
            format_amount(r.total, cur),
            format_minor(r.amount_due_minor, cur) if r.status in FINAL else None,
            format_minor(r.amount_paid_minor, cur),
            r.corrects,
            r.run_id,
            r.version,
            format_ts(r.finalized_at),
            format_ts(r.voided_at),
            r.fingerprint,
            format_ts(r.updated_at),
        )


def line_rows(rows: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
    """The lines of each invoice's stored document, exactly as `invoice show` prints them."""
    for r in rows:
        content = orjson.loads(r.content)
        currency = content["currency"]
        for position, line in enumerate(content["lines"], start=1):
            service = line.get("service") or {}
            events = line.get("events") or {}
            yield (
                r.number,
                r.external_id,
                position,
                line["kind"],
                line["description"],
                line.get("plan"),
                line.get("meter"),
                line.get("quantity"),
                line["amount"],
                currency,
                service.get("start"),
                service.get("end"),
                events.get("count"),
                _group(line.get("group")),
            )


def _group(group: Any) -> str | None:
    """A grouped line's group as text (`region: eu`), as its description names it."""
    if not isinstance(group, dict):
        return None
    return group_text(list(group), tuple(group.values()))


def credits_query(plan: Plan) -> Select[Any]:
    def changed(moment: datetime) -> ColumnElement[bool]:
        return or_(
            credit_grants_t.c.created_at >= moment,
            credit_grants_t.c.revoked_at >= moment,
            credit_grants_t.c.expired_at >= moment,
            _posted_since(ledger_entries_t.c.grant_id == credit_grants_t.c.id, moment),
        )

    return (
        select(credit_grants_t, customers_t.c.external_id)
        .join(customers_t, customers_t.c.id == credit_grants_t.c.customer_id)
        .where(
            *plan.where(
                project=credit_grants_t.c.project_id,
                customer=credit_grants_t.c.customer_id,
                moment=credit_grants_t.c.created_at,
                changed=changed,
                at=credit_grants_t.c.created_at,
            )
        )
        .order_by(credit_grants_t.c.created_at, credit_grants_t.c.id)
    )


def credit_rows(rows: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
    for r in rows:
        cur = r.currency
        yield (
            r.id,
            r.external_id,
            cur,
            format_minor(r.amount_minor, cur),
            format_minor(r.remaining_minor, cur),
            r.category,
            r.priority,
            format_ts(r.expires_at),
            r.source,
            r.source_ref,
            r.reason,
            format_ts(r.created_at),
            format_ts(r.revoked_at),
            format_ts(r.expired_at),
        )


def payments_query(plan: Plan) -> Select[Any]:
    """Payments and refunds in one stream, in the order the money moved."""

    def refunded_since(moment: datetime) -> ColumnElement[bool]:
        return or_(
            payments_t.c.created_at >= moment,
            exists(
                select(1).where(
                    refunds_t.c.payment_id == payments_t.c.id, refunds_t.c.created_at >= moment
                )
            ),
        )

    paid = (
        select(
            literal("payment", String()).label("kind"),
            payments_t.c.id.label("payment"),
            cast(null(), String()).label("refund"),
            invoices_t.c.number.label("invoice"),
            customers_t.c.external_id.label("customer"),
            payments_t.c.currency,
            payments_t.c.amount_minor.label("amount"),
            payments_t.c.applied_minor.label("applied"),
            payments_t.c.refunded_minor.label("refunded"),
            payments_t.c.reference,
            cast(null(), String()).label("reason"),
            payments_t.c.received_at.label("at"),
            payments_t.c.created_at,
            literal(0, BigInteger()).label("sort"),
        )
        .join(invoices_t, invoices_t.c.id == payments_t.c.invoice_id)
        .join(customers_t, customers_t.c.id == payments_t.c.customer_id)
        .where(
            *plan.where(
                project=payments_t.c.project_id,
                customer=payments_t.c.customer_id,
                moment=payments_t.c.created_at,
                changed=refunded_since,
                at=payments_t.c.received_at,
            )
        )
    )
    refunded = (
        select(
            literal("refund", String()),
            payments_t.c.id,
            refunds_t.c.id,
            invoices_t.c.number,
            customers_t.c.external_id,
            payments_t.c.currency,
            -refunds_t.c.amount_minor,
            cast(null(), BigInteger()),
            cast(null(), BigInteger()),
            payments_t.c.reference,
            refunds_t.c.reason,
            refunds_t.c.refunded_at,
            refunds_t.c.created_at,
            literal(1, BigInteger()),
        )
        .select_from(refunds_t)
        .join(payments_t, payments_t.c.id == refunds_t.c.payment_id)
        .join(invoices_t, invoices_t.c.id == payments_t.c.invoice_id)
        .join(customers_t, customers_t.c.id == payments_t.c.customer_id)
        .where(
            *plan.where(
                project=refunds_t.c.project_id,
                customer=payments_t.c.customer_id,
                moment=refunds_t.c.created_at,
                at=refunds_t.c.refunded_at,
            )
        )
    )
    both = union_all(paid, refunded).subquery("money")
    return select(both).order_by(both.c.at, both.c.sort, both.c.payment, both.c.refund)


def payment_rows(rows: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
    for r in rows:
        cur = r.currency
        yield (
            r.kind,
            r.payment,
            r.refund,
            r.invoice,
            r.customer,
            cur,
            format_minor(int(r.amount), cur),
            None if r.applied is None else format_minor(int(r.applied), cur),
            None if r.refunded is None else format_minor(int(r.refunded), cur),
            r.reference,
            r.reason,
            format_ts(r.at),
            format_ts(r.created_at),
        )
