"""`invoice void`: status → void, with when and why; a finalized invoice is reversed.

The number stays taken, so numbers stay gapless. Voiding takes the same lease lock as
`run bill` for the invoice's month and fences its write with it, so it never interleaves with
a run writing that month; the ledger reversal and the credits going back to their grants are
written in the same transaction (settlement.py).
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Engine, Row, select, update

from neruba_cli.db import locks
from neruba_cli.db.retry import retrying
from neruba_cli.db.schema import Project
from neruba_cli.db.tables import invoices_t
from neruba_cli.domain import lock_names
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.services.invoices import settlement
from neruba_cli.services.invoices.read import document, get


def void(
    engine: Engine,
    project: Project,
    number: str,
    *,
    reason: str,
    now: datetime,
    actor: str = "system",
    holder: str | None = None,
) -> dict[str, Any]:
    """Status → void, with when and why. The number stays taken, so numbers stay gapless.
    A finalized invoice is reversed in the ledger and its credits go back to their grants."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput("--reason must say why the invoice is voided")
    if len(reason) > 500:
        raise InvalidInput("--reason is longer than 500 characters")
    with engine.connect() as conn:
        row = get(conn, project, number)
        live_corrections = conn.execute(
            select(invoices_t.c.number)
            .where(invoices_t.c.corrects_id == row.id, invoices_t.c.status != "void")
            .order_by(invoices_t.c.number)
        ).all()
    if row.status == "void":
        raise InvalidInput(f"invoice {row.number} is already void ({row.void_reason})")
    settlement.check_voidable(row)
    if live_corrections:
        listed = ", ".join(n for (n,) in live_corrections)
        raise InvalidInput(
            f"invoice {row.number} has corrections that are not void ({listed})",
            hint="void the corrections first",
        )
    with locks.held(engine, lock_names.billing(project.slug, row.period), holder=holder) as lease:
        retrying(partial(_void_locked, engine, project, lease, row, reason, now, actor))
    with engine.connect() as conn:
        return document(get(conn, project, row.number))


def _void_locked(
    engine: Engine,
    project: Project,
    lease: locks.Lease,
    row: Row[Any],
    reason: str,
    now: datetime,
    actor: str,
) -> None:
    with locks.fenced(engine, lease) as conn:
        # A run may have written a correction between the check above and the lock.
        corrected = conn.execute(
            select(invoices_t.c.number)
            .where(invoices_t.c.corrects_id == row.id, invoices_t.c.status != "void")
            .limit(1)
        ).first()
        if corrected is not None:
            raise InvalidInput(
                f"invoice {row.number} was corrected by {corrected[0]} meanwhile; nothing was "
                "written",
                hint="void the corrections first",
            )
        changed = conn.execute(
            update(invoices_t)
            .where(invoices_t.c.id == row.id, invoices_t.c.status == row.status)
            .where(invoices_t.c.version == row.version)
            .where(invoices_t.c.amount_paid_minor == 0)  # a payment may have landed meanwhile
            .values(status="void", voided_at=now, void_reason=reason, updated_at=now)
        ).rowcount
        if changed != 1:
            raise InvalidInput(
                f"invoice {row.number} changed while it was being voided (a run or a payment); "
                "nothing was written",
                hint="`neruba invoice show` it and try again",
            )
        settlement.void(conn, project, row, now=now, actor=actor)
