"""Money Stripe collected or paid back, applied to Neruba's invoices through the ledger.

Stripe reports running totals: an invoice's `amount_paid`, a charge's `amount_refunded`. Neruba
records the difference to what it already holds from Stripe as one payment (or refund) whose
idempotency key names the Stripe object and that running total, so a pull and a webhook that
both see the same state record it once, and an older state seen late records nothing. One lease
per project serialises the read-then-record step, and fences the record: an applier whose lease
expired (paused past it) or was released records nothing (LockLost, exit 5).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from neruba_cli.db import locks
from neruba_cli.db.schema import Project
from neruba_cli.db.tables import invoices_t, payments_t, refunds_t, stripe_cursors_t
from neruba_cli.domain import lock_names, stripe_keys
from neruba_cli.domain.errors import InvalidInput, NotFound
from neruba_cli.domain.money import format_minor
from neruba_cli.domain.stripe_money import stripe_to_iso_minor
from neruba_cli.domain.unix_time import from_unix_seconds, optional_unix_seconds
from neruba_cli.services.ledger import payments
from neruba_cli.services.stripe import mirror as stripe_mirror

# The lease covers one read-then-record step (a few queries), so it can be short. A process of
# this host killed inside that step is taken over at once (db/locks.py); one on another host
# cannot be seen to be dead, and with the default ten-minute lease it would make every pull
# and webhook elsewhere wait 60 s per invoice and fail, for ten minutes. This lease expires
# before the next applier's wait runs out.
APPLY_TTL = timedelta(seconds=30)
APPLY_WAIT = 60.0


def _lock(engine: Engine, project: Project) -> locks.Lease:
    return locks.acquire(
        engine,
        lock_names.stripe_apply(project.slug),
        ttl=APPLY_TTL,
        wait=APPLY_WAIT,
        poll_interval=0.05,
    )


def apply_invoice(
    engine: Engine, project: Project, obj: dict[str, Any], *, actor: str, now: datetime
) -> str | None:
    """Record what Stripe collected on an invoice Neruba pushed; a message, or None when there
    was nothing new."""
    metadata = obj.get("metadata") or {}
    number = metadata.get("neruba_invoice")
    if metadata.get("neruba_project") != project.slug or not number:
        return None
    currency = str(obj.get("currency") or "").upper()
    paid = stripe_to_iso_minor(int(obj.get("amount_paid") or 0), currency)
    if paid <= 0:
        return None
    lease = _lock(engine, project)
    try:
        with engine.connect() as conn:
            invoice = conn.execute(
                select(invoices_t).where(
                    invoices_t.c.project_id == project.id, invoices_t.c.number == number
                )
            ).first()
            if invoice is None:
                raise NotFound(f"Stripe invoice {obj['id']} names {number}, unknown here")
            if invoice.currency != currency:
                raise InvalidInput(
                    f"Stripe invoice {obj['id']} is in {currency}, {number} in {invoice.currency}; "
                    "its payment was not applied",
                    hint="`neruba reconcile stripe` lists it as a currency mismatch",
                )
            recorded = _sum(conn, payments_t, project, stripe_keys.paid_prefix(obj["id"]))
        if paid <= recorded:
            return None
        delta = paid - recorded
        request = payments.PaymentRequest(
            invoice=number,
            amount=format_minor(delta, currency),
            reference=str(obj["id"]),
            at=_paid_at(obj, invoice.finalized_at, now),
            idempotency_key=stripe_keys.paid_key(obj["id"], paid),
        )
        payment, _created = payments.record(
            engine, project, request, actor=actor, now=now, lease=lease
        )
    finally:
        locks.release(engine, lease)
    return (
        f"{number}: {format_minor(delta, currency)} {currency} paid in Stripe ({obj['id']}), "
        f"{payment['invoice_status']}"
    )


def apply_charge(
    engine: Engine, project: Project, obj: dict[str, Any], *, actor: str, now: datetime
) -> str | None:
    """Record what Stripe refunded on a charge that paid one of our invoices."""
    currency = str(obj.get("currency") or "").upper()
    refunded = stripe_to_iso_minor(int(obj.get("amount_refunded") or 0), currency)
    if refunded <= 0:
        return None
    charge = str(obj["id"])
    prefix = stripe_keys.refunded_prefix(charge)
    lease = _lock(engine, project)
    try:
        with engine.connect() as conn:
            stripe_invoice = _invoice_of(conn, project, obj)
            if stripe_invoice is None:
                return None  # a charge that paid no invoice of this project
            recorded = _sum(conn, refunds_t, project, prefix)
            if refunded <= recorded:
                return None
            paid = conn.execute(
                select(payments_t)
                .where(
                    payments_t.c.project_id == project.id,
                    payments_t.c.idempotency_key.startswith(
                        stripe_keys.paid_prefix(stripe_invoice), autoescape=True
                    ),
                )
                .order_by(payments_t.c.received_at.desc(), payments_t.c.id.desc())
            ).all()
        left = refunded - recorded
        for payment in paid:
            if left <= 0:
                break
            part = min(left, payment.applied_minor - payment.refunded_minor)
            if part <= 0:
                continue
            payments.refund(
                engine,
                project,
                payment.id,
                amount=format_minor(part, currency),
                reason=f"refunded in Stripe ({charge})",
                idempotency_key=stripe_keys.refunded_key(charge, refunded, payment.id),
                actor=actor,
                now=now,
                lease=lease,
            )
            left -= part
    finally:
        locks.release(engine, lease)
    done = refunded - recorded - left
    if done <= 0:
        return None
    message = f"{charge}: {format_minor(done, currency)} {currency} refunded in Stripe"
    if left > 0:
        # what Stripe took beyond the invoice (its rounding up, or an overpayment) is wallet
        # credit here, returned by revoking that grant rather than by a refund
        message += (
            f"; {format_minor(left, currency)} {currency} of it paid more than the invoice and "
            "is wallet credit here (`neruba credits revoke` returns it)"
        )
    return message


def _invoice_of(conn: Connection, project: Project, charge: dict[str, Any]) -> str | None:
    intent = charge.get("payment_intent")
    intent = intent.get("id") if isinstance(intent, dict) else intent
    if not intent:
        return None
    stripe_invoice = stripe_mirror.invoice_for_payment_intent(conn, project, str(intent))
    if stripe_invoice is None:
        if _swept_after(conn, project, charge):
            return None  # a complete pull found no invoice payment for it: not an invoice's
        raise NotFound(
            f"charge {charge['id']}: no invoice payment for {intent} in the mirror",
            hint="run `neruba stripe pull`, then `neruba stripe webhook reprocess`",
        )
    mirrored = stripe_mirror.get(conn, project, stripe_invoice)
    metadata = (mirrored or {}).get("metadata") or {}
    return stripe_invoice if metadata.get("neruba_project") == project.slug else None


def _swept_after(conn: Connection, project: Project, charge: dict[str, Any]) -> bool:
    """Whether a complete pull of invoice payments started after the charge was made."""
    swept = conn.execute(
        select(stripe_cursors_t.c.started_at).where(
            stripe_cursors_t.c.project_id == project.id,
            stripe_cursors_t.c.object == "invoice_payment",
            stripe_cursors_t.c.completed_at.is_not(None),
            stripe_cursors_t.c.since.is_(None),
        )
    ).scalar()
    created = optional_unix_seconds(charge.get("created"), field="charge created")
    return swept is not None and created is not None and swept > created


def _sum(conn: Connection, table: Any, project: Project, prefix: str) -> int:
    amount = table.c.amount_minor
    total = conn.execute(
        select(func.coalesce(func.sum(amount), 0)).where(
            table.c.project_id == project.id,
            table.c.idempotency_key.startswith(prefix, autoescape=True),
        )
    ).scalar_one()
    return int(total)


def _paid_at(obj: dict[str, Any], finalized_at: datetime | None, now: datetime) -> datetime | None:
    """When Stripe says it was paid, when that lies between finalization and now (else now:
    a payment is never recorded before the invoice existed or in the future)."""
    stamp = (obj.get("status_transitions") or {}).get("paid_at")
    if not stamp:
        return None
    at = from_unix_seconds(stamp, field="status_transitions.paid_at")
    if (finalized_at is not None and at < finalized_at) or at > now:
        return None
    return at
