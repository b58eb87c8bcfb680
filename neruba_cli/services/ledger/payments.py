"""Payments and refunds against finalized invoices, as ledger postings.

A payment posts cash in and lowers what the invoice owes, up to its amount due; the invoice is
`paid` once nothing is due, and a partial payment leaves it `finalized` with the rest due. Any
excess (an overpayment) becomes paid credit in the customer's wallet: a grant with no expiry
that later invoices consume like any other.

Idempotency: `--idempotency-key`, else the invoice and `--reference` (a bank or PSP reference
names one payment), else none (every call is a new payment). A repeated key with the same
invoice, amount and reference is a no-op; with others it is an error.
"""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Row, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from neruba_cli.db import locks
from neruba_cli.db.engine import begin_write
from neruba_cli.db.ids import new_id
from neruba_cli.db.retry import retrying
from neruba_cli.db.schema import Project
from neruba_cli.db.tables import customers_t, invoices_t, payments_t, refunds_t
from neruba_cli.domain.errors import InvalidInput, NotFound
from neruba_cli.domain.invoice import FINAL
from neruba_cli.domain.ledger import PaymentFacts, payment_recorded, payment_refunded
from neruba_cli.domain.money import format_minor, parse_amount
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.invoices import settlement
from neruba_cli.services.ledger import credits
from neruba_cli.services.ledger import postings as ledger_postings
from neruba_cli.services.ledger.postings import IdempotencyConflict


@dataclass(frozen=True)
class PaymentRequest:
    invoice: str  # number
    amount: str
    reference: str | None = None
    at: datetime | None = None
    idempotency_key: str | None = None


def _minor(text: str, currency: str, field: str) -> int:
    amount = parse_amount(text, field=field)
    if amount <= 0:
        raise InvalidInput(f"{field} {text!r} must be positive")
    return credits.minor_units(text, amount, currency, field)


def _hash(document: dict[str, Any]) -> str:
    encoded = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(encoded).hexdigest()


def _invoice(conn: Connection, project: Project, number: str, *, lock: bool) -> Row[Any]:
    query = select(invoices_t).where(
        invoices_t.c.project_id == project.id, invoices_t.c.number == number.strip()
    )
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotFound(
            f"invoice {number!r} does not exist in project {project.slug!r}",
            hint="`neruba invoice list` shows the numbers",
        )
    return row


def _transaction(engine: Engine, lease: locks.Lease | None) -> AbstractContextManager[Connection]:
    """The write transaction: fenced by the caller's lease when it holds one (a Stripe
    applier), so a caller whose lease is gone records nothing."""
    return begin_write(engine) if lease is None else locks.fenced(engine, lease)


def record(
    engine: Engine,
    project: Project,
    request: PaymentRequest,
    *,
    actor: str,
    now: datetime,
    lease: locks.Lease | None = None,
) -> tuple[dict[str, Any], bool]:
    """Record a payment; (payment, created). With `lease`, the transaction is fenced by it."""

    def attempt() -> tuple[dict[str, Any], bool]:
        try:
            return _record(engine, project, request, actor=actor, now=now, lease=lease)
        except IntegrityError:
            if request.idempotency_key is None and request.reference is None:
                raise
            # The same payment recorded by another process meanwhile: compare with it.
            return _record(engine, project, request, actor=actor, now=now, lease=lease)

    return retrying(attempt)


def _record(
    engine: Engine,
    project: Project,
    request: PaymentRequest,
    *,
    actor: str,
    now: datetime,
    lease: locks.Lease | None,
) -> tuple[dict[str, Any], bool]:
    received_at = request.at or now
    if received_at > now:
        raise InvalidInput(f"--at {format_ts(received_at)} is in the future")
    reference = None if request.reference is None else request.reference.strip()
    if reference is not None and not reference:
        raise InvalidInput("--reference is empty")
    with _transaction(engine, lease) as conn:
        invoice = _invoice(conn, project, request.invoice, lock=True)
        if invoice.status not in FINAL:
            raise InvalidInput(
                f"invoice {invoice.number} is {invoice.status}; payments are recorded against "
                "finalized invoices",
                hint="`neruba invoice finalize` it first" if invoice.status == "draft" else None,
            )
        if invoice.subtotal <= 0:
            raise InvalidInput(f"{invoice.kind} {invoice.number} has nothing to pay")
        if received_at < invoice.finalized_at:
            raise InvalidInput(
                f"--at {format_ts(received_at)} is before {invoice.number} was finalized "
                f"({format_ts(invoice.finalized_at)})",
                hint="a payment received before finalization is recorded as of finalization",
            )
        amount = _minor(request.amount, invoice.currency, "AMOUNT")
        key = request.idempotency_key or (
            f"{invoice.number}:{reference}" if reference else new_id("pay")
        )
        args_hash = _hash({"invoice": invoice.id, "amount": amount, "reference": reference})
        previous = _previous(
            conn, payments_t, project, key, args_hash, "payment", "invoice, amount or reference"
        )
        if previous is not None:
            return payment_dict(conn, previous), False
        payment_id = new_id("pay")
        outstanding = max(invoice.amount_due_minor, 0)
        applied = min(amount, outstanding)
        excess_grant = new_id("grt") if amount > applied else None
        conn.execute(
            insert(payments_t).values(
                id=payment_id,
                project_id=project.id,
                invoice_id=invoice.id,
                customer_id=invoice.customer_id,
                currency=invoice.currency,
                amount_minor=amount,
                applied_minor=applied,
                refunded_minor=0,
                overpayment_grant_id=excess_grant,
                reference=reference,
                idempotency_key=key,
                args_hash=args_hash,
                received_at=received_at,
                created_at=now,
            )
        )
        if excess_grant is not None:
            credits.lock_wallet(conn, project, invoice.customer_id, invoice.currency, now=now)
            credits.insert_grant(
                conn,
                project,
                grant_id=excess_grant,
                customer_id=invoice.customer_id,
                currency=invoice.currency,
                minor=amount - applied,
                priority=credits.DEFAULT_PRIORITY,
                category="paid",
                expires_at=None,
                reason=f"overpayment of {invoice.number}",
                source="overpayment",
                source_ref=payment_id,
                idempotency_key=None,
                args_hash="",
                now=now,
            )
        facts = _facts(payment_id, invoice, amount)
        posting = payment_recorded(facts, outstanding=outstanding, overpayment_grant=excess_grant)
        ledger_postings.post(conn, project, posting, effective_at=received_at, actor=actor, now=now)
        _move_paid(conn, invoice.id, applied, now)
        row = conn.execute(select(payments_t).where(payments_t.c.id == payment_id)).one()
        return payment_dict(conn, row), True


def _previous(
    conn: Connection,
    table: Table,
    project: Project,
    key: str,
    args_hash: str,
    what: str,
    fields: str,
) -> Row[Any] | None:
    """The payment or refund already recorded under `key`: None when there is none, an error
    when it was recorded with other arguments."""
    previous = conn.execute(
        select(table).where(table.c.project_id == project.id, table.c.idempotency_key == key)
    ).first()
    if previous is not None and previous.args_hash != args_hash:
        raise IdempotencyConflict(
            f"{what} key {key!r} was already used for {previous.id} with another {fields}; "
            f"nothing was recorded",
            hint=f"a key (or a payment's reference) names one {what}",
        )
    return previous


def _facts(payment_id: str, invoice: Row[Any], amount: int) -> PaymentFacts:
    return PaymentFacts(
        payment_id, invoice.customer_id, invoice.currency, amount, invoice.id, invoice.number
    )


def _move_paid(conn: Connection, invoice_id: str, delta: int, now: datetime) -> None:
    conn.execute(
        update(invoices_t)
        .where(invoices_t.c.id == invoice_id)
        .values(amount_paid_minor=invoices_t.c.amount_paid_minor + delta)
    )
    settlement.mark_paid_when_settled(conn, invoice_id, now)


def refund(
    engine: Engine,
    project: Project,
    payment_id: str,
    *,
    amount: str | None,
    reason: str | None,
    idempotency_key: str | None,
    actor: str,
    now: datetime,
    lease: locks.Lease | None = None,
) -> tuple[dict[str, Any], bool]:
    """Pay back (part of) what a payment settled: the invoice owes it again. An overpayment's
    credit is returned by revoking its grant (`credits revoke`). With `lease`, the
    transaction is fenced by it."""
    return retrying(
        lambda: _refund(
            engine, project, payment_id, amount, reason, idempotency_key, actor, now, lease
        )
    )


def _refund(
    engine: Engine,
    project: Project,
    payment_id: str,
    amount: str | None,
    reason: str | None,
    idempotency_key: str | None,
    actor: str,
    now: datetime,
    lease: locks.Lease | None,
) -> tuple[dict[str, Any], bool]:
    with _transaction(engine, lease) as conn:
        payment = conn.execute(
            select(payments_t)
            .where(payments_t.c.project_id == project.id, payments_t.c.id == payment_id)
            .with_for_update()
        ).first()
        if payment is None:
            raise NotFound(f"payment {payment_id!r} does not exist in project {project.slug!r}")
        refundable = payment.applied_minor - payment.refunded_minor
        asked = None if amount is None else _minor(amount, payment.currency, "AMOUNT")
        minor = refundable if asked is None else asked
        key = idempotency_key or new_id("rfd")
        # the amount as asked: "the rest" stays the same request when it is repeated
        args_hash = _hash({"payment": payment.id, "amount": asked, "reason": reason})
        if _previous(conn, refunds_t, project, key, args_hash, "refund", "amount or reason"):
            return payment_dict(conn, payment), False
        if minor <= 0 or minor > refundable:
            raise InvalidInput(
                f"payment {payment.id} has {format_minor(refundable, payment.currency)} "
                f"{payment.currency} left to refund; cannot refund "
                f"{format_minor(minor, payment.currency)}",
                hint="an overpayment's credit is returned with `neruba credits revoke`",
            )
        refund_id = new_id("rfd")
        conn.execute(
            insert(refunds_t).values(
                id=refund_id,
                project_id=project.id,
                payment_id=payment.id,
                amount_minor=minor,
                reason=reason,
                idempotency_key=key,
                args_hash=args_hash,
                refunded_at=now,
                created_at=now,
            )
        )
        invoice = conn.execute(
            select(invoices_t).where(invoices_t.c.id == payment.invoice_id).with_for_update()
        ).one()
        posting = payment_refunded(
            _facts(payment.id, invoice, payment.amount_minor), refund_id, minor
        )
        ledger_postings.post(conn, project, posting, effective_at=now, actor=actor, now=now)
        conn.execute(
            update(payments_t)
            .where(payments_t.c.id == payment.id)
            .values(refunded_minor=payments_t.c.refunded_minor + minor)
        )
        _move_paid(conn, invoice.id, -minor, now)
        row = conn.execute(select(payments_t).where(payments_t.c.id == payment.id)).one()
        return payment_dict(conn, row), True


def payment_dict(conn: Connection, row: Row[Any]) -> dict[str, Any]:
    invoice = conn.execute(
        select(
            invoices_t.c.number,
            invoices_t.c.status,
            invoices_t.c.amount_due_minor,
            customers_t.c.external_id,
        )
        .join(customers_t, customers_t.c.id == invoices_t.c.customer_id)
        .where(invoices_t.c.id == row.invoice_id)
    ).one()
    currency = row.currency
    return {
        "id": row.id,
        "invoice": invoice.number,
        "customer": invoice.external_id,
        "currency": currency,
        "amount": format_minor(row.amount_minor, currency),
        "applied": format_minor(row.applied_minor, currency),
        "overpayment": format_minor(row.amount_minor - row.applied_minor, currency),
        "overpayment_grant": row.overpayment_grant_id,
        "refunded": format_minor(row.refunded_minor, currency),
        "reference": row.reference,
        "idempotency_key": row.idempotency_key,
        "received_at": format_ts(row.received_at),
        "invoice_status": invoice.status,
        "invoice_amount_due": format_minor(invoice.amount_due_minor, currency),
    }


def list_payments(
    conn: Connection, project: Project, *, invoice: str | None = None, customer: str | None = None
) -> list[dict[str, Any]]:
    query = (
        select(payments_t)
        .join(invoices_t, invoices_t.c.id == payments_t.c.invoice_id)
        .join(customers_t, customers_t.c.id == payments_t.c.customer_id)
        .where(payments_t.c.project_id == project.id)
        .order_by(payments_t.c.received_at, payments_t.c.id)
    )
    if invoice is not None:
        query = query.where(invoices_t.c.number == invoice)
    if customer is not None:
        query = query.where(customers_t.c.external_id == customer)
    return [payment_dict(conn, row) for row in conn.execute(query).all()]
