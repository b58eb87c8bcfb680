"""The local mirror of Stripe objects: one row per Stripe id, whoever saw it last (a pull, a
push's answer or a webhook). The columns reconciliation and payment matching query are lifted
out of the object; `data` keeps all of it.

A row is only replaced by a view of the object at least as new as the one it holds
(`observed_at`), so a webhook delivered late cannot roll back what a pull just stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import Project
from neruba_cli.db.tables import stripe_objects_t
from neruba_cli.domain.unix_time import optional_unix_seconds

MIRRORED = (
    "invoice",
    "invoice_payment",
    "payment_intent",
    "charge",
    "refund",
    "credit_note",
    "dispute",
)


def _id(value: Any) -> str | None:
    """An expandable field: an id, or the expanded object carrying one."""
    if isinstance(value, dict):
        found = value.get("id")
        return str(found) if found else None
    return str(value) if value else None


def _text(value: Any, length: int) -> str | None:
    """A metadata value as a column holds it: anyone can write long values into Stripe
    metadata, and one such object must not stop a pull (the whole value stays in `data`)."""
    return str(value)[:length] if value else None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def columns(obj: dict[str, Any]) -> dict[str, Any]:
    """The queryable columns of one Stripe object."""
    kind = obj.get("object")
    metadata = obj.get("metadata") or {}
    payment = obj.get("payment") or {}
    created = obj.get("created")
    values: dict[str, Any] = {
        "object": kind,
        "stripe_customer": _id(obj.get("customer")),
        "stripe_invoice": _id(obj.get("invoice")),
        "payment_intent": _id(obj.get("payment_intent")) or _id(payment.get("payment_intent")),
        "charge": _id(obj.get("charge")),
        "neruba_project": _text(metadata.get("neruba_project"), 64),
        "neruba_invoice": _text(metadata.get("neruba_invoice"), 64),
        "neruba_period": _text(metadata.get("neruba_period"), 16),
        "status": _text(obj.get("status"), 32),
        "currency": _text((obj.get("currency") or "").upper(), 3),
        "amount": _int(obj.get("total", obj.get("amount", obj.get("amount_paid")))),
        "amount_paid": _int(obj.get("amount_paid", obj.get("amount_received"))),
        "amount_refunded": _int(obj.get("amount_refunded")),
        "stripe_created": optional_unix_seconds(created, field=f"{kind} created"),
        "deleted": bool(obj.get("deleted")),
    }
    if kind == "invoice_payment":
        values["amount"] = _int(obj.get("amount_paid"))
    return values


def upsert(
    conn: Connection,
    project: Project,
    obj: dict[str, Any],
    *,
    observed_at: datetime,
    sweep: str | None = None,
) -> None:
    """Store the object unless the mirror already holds a newer view of it."""
    if obj.get("object") not in MIRRORED or not obj.get("id"):
        return
    values = {**columns(obj), "data": orjson.dumps(obj).decode(), "observed_at": observed_at}
    if sweep is not None:
        values["sweep"] = sweep  # a push or a webhook leaves the pull's mark as it is
    where = (stripe_objects_t.c.project_id == project.id, stripe_objects_t.c.stripe_id == obj["id"])
    changed = conn.execute(
        update(stripe_objects_t)
        .where(*where, stripe_objects_t.c.observed_at <= observed_at)
        .values(**values)
    ).rowcount
    if changed:
        return
    if conn.execute(select(stripe_objects_t.c.id).where(*where)).first() is not None:
        return  # a newer view is already stored
    try:
        with conn.begin_nested():
            conn.execute(
                insert(stripe_objects_t).values(
                    id=new_id("sob"), project_id=project.id, stripe_id=obj["id"], **values
                )
            )
    except IntegrityError:  # stored by another process meanwhile
        conn.execute(
            update(stripe_objects_t)
            .where(*where, stripe_objects_t.c.observed_at <= observed_at)
            .values(**values)
        )


def get(conn: Connection, project: Project, stripe_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        select(stripe_objects_t.c.data, stripe_objects_t.c.deleted).where(
            stripe_objects_t.c.project_id == project.id, stripe_objects_t.c.stripe_id == stripe_id
        )
    ).first()
    if row is None or row.deleted:
        return None
    data: dict[str, Any] = orjson.loads(row.data)
    return data


def is_live(conn: Connection, project: Project, stripe_id: str) -> bool:
    """Whether the mirror holds the object and no pull found it gone."""
    row = conn.execute(
        select(stripe_objects_t.c.deleted).where(
            stripe_objects_t.c.project_id == project.id, stripe_objects_t.c.stripe_id == stripe_id
        )
    ).first()
    return row is not None and not row.deleted


def invoice_for_payment_intent(
    conn: Connection, project: Project, payment_intent: str
) -> str | None:
    """The Stripe invoice a payment intent paid, from the mirrored invoice payments."""
    row = conn.execute(
        select(stripe_objects_t.c.stripe_invoice).where(
            stripe_objects_t.c.project_id == project.id,
            stripe_objects_t.c.object == "invoice_payment",
            stripe_objects_t.c.payment_intent == payment_intent,
        )
    ).first()
    return None if row is None else row.stripe_invoice
