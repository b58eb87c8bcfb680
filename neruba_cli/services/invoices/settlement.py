"""What finalizing or voiding an invoice does to the ledger, in the same transaction as the
status change.

Finalizing an invoice posts what the customer owes and the revenue by line kind, then spends
the customer's credit on it (domain/credits.py: priority, then earliest expiry, then oldest;
never an expired grant; never more than the total). The invoice document records which grants
paid what, its `credits_applied` and the `total` still due — a new version of the document,
kept as a revision like every other.

A credit note (a correction with a negative total) is settled at finalization against the
invoice it corrects, under the project's `credit_returns` policy (domain/ledger.py,
`settle_credit_note`): `restore` gives back the credits the corrected invoice consumed first,
then lowers what it still owes, then puts the rest in the wallet as paid credit; `keep` leaves
spent credit spent. Under either policy, credit of a grant that can no longer be spent (revoked,
or past its expiry) stays spent, so the note lowers what is owed instead. Voiding gives spent
credit back (see `void`).

An invoice whose amount due reaches zero this way (credits, a credit note, payments) is `paid`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Row, insert, select, update

from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import Project
from neruba_cli.db.tables import invoice_revisions_t, invoices_t
from neruba_cli.domain import credits as credit_rules
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.invoice import FINAL, canonical_json
from neruba_cli.domain.invoice_limits import Unbillable, check_document, check_totals
from neruba_cli.domain.ledger import (
    Allocation,
    CreditReturns,
    InvoiceFacts,
    credit_note_settled,
    credits_applied,
    invoice_finalized,
    invoice_voided,
    settle_credit_note,
)
from neruba_cli.domain.money import format_minor, to_minor_units
from neruba_cli.services.ledger import credits
from neruba_cli.services.ledger import postings as ledger_postings

SETTLEMENT_KEYS = ("credits", "settlement")


def finalize(
    conn: Connection,
    project: Project,
    invoice_ids: Sequence[str],
    *,
    now: datetime,
    actor: str,
    strict: bool = False,
) -> list[str]:
    """Drafts → finalized, each posted and settled; the numbers finalized. `strict`: a draft
    that changed meanwhile is an error rather than skipped.

    Most invoices only post what the customer owes (no credit to spend, nothing to settle):
    those are written together in a few statements; the others one by one."""
    rows = conn.execute(
        select(invoices_t)
        .where(invoices_t.c.id.in_(list(invoice_ids)))
        .order_by(invoices_t.c.number)
    ).all()
    drafts = [row for row in rows if row.status == "draft"]
    if strict and len(drafts) != len(invoice_ids):
        changed = next((row for row in rows if row.status != "draft"), None)
        raise InvalidInput(
            f"invoice {changed.number if changed else invoice_ids[0]} changed while it was "
            "being finalized; nothing was written",
            hint="`neruba invoice show` it and try again",
        )
    if not drafts:
        return []
    moved = conn.execute(
        update(invoices_t)
        .where(invoices_t.c.id.in_([row.id for row in drafts]), invoices_t.c.status == "draft")
        .values(status="finalized", finalized_at=now, updated_at=now)
    ).rowcount
    if moved != len(drafts):
        raise InvalidInput(
            "invoices changed while they were being finalized; nothing was written",
            hint="run the command again",
        )
    holding = credits.customers_with_credit(conn, project, {row.customer_id for row in drafts})
    plain, settled = [], []
    for row in drafts:
        content = orjson.loads(row.content)
        invoice = facts(row, content)
        spends = invoice.subtotal > 0 and (row.customer_id, row.currency) in holding
        if invoice.subtotal < 0 or spends:
            settled.append(row)
        else:
            plain.append(invoice)
    _lock_for_settlement(conn, project, settled, now)
    postings = [p for p in (invoice_finalized(invoice) for invoice in plain) if p is not None]
    if postings:
        ledger_postings.post_many(conn, project, postings, effective_at=now, actor=actor, now=now)
    for row in settled:  # (read before its status changed; nothing _settle uses did)
        _settle(conn, project, row, now=now, actor=actor)
    return [row.number for row in drafts]


def _lock_for_settlement(
    conn: Connection, project: Project, rows: Sequence[Row[Any]], now: datetime
) -> None:
    """Before any posting: the invoices the credit notes correct, then the wallets, in a
    fixed order (services/ledger/postings.py's lock order)."""
    corrected = sorted({row.corrects_id for row in rows if row.corrects_id is not None})
    if corrected:
        conn.execute(
            select(invoices_t.c.id)
            .where(invoices_t.c.id.in_(corrected))
            .order_by(invoices_t.c.id)
            .with_for_update()
        )
    for customer_id, currency in sorted({(row.customer_id, row.currency) for row in rows}):
        credits.lock_wallet(conn, project, customer_id, currency, now=now)


def check_postable(row: Row[Any], content: dict[str, Any] | None = None) -> None:
    """Refuse, with a clear error, a draft whose amounts the ledger cannot hold (stored
    before amounts were checked): posting it would break the ledger's 64-bit range."""
    content = content if content is not None else orjson.loads(row.content)
    try:
        check_totals((row.subtotal, row.total), row.currency, row.number)
        check_document(content, row.currency)
    except Unbillable as exc:
        message = exc.message
        if not message.startswith("invoice "):
            message = f"invoice {row.number} cannot be posted: {message}"
        raise Unbillable(
            message,
            meter=exc.meter,
            hint="it stays a draft; `neruba run bill --period P` names the event(s) behind it",
        ) from None


def facts(row: Row[Any], content: dict[str, Any] | None = None) -> InvoiceFacts:
    """The invoice as the ledger sees it: revenue by line kind, in minor units."""
    content = content if content is not None else orjson.loads(row.content)
    check_postable(row, content)
    revenue: dict[str, int] = {}
    for line in content["lines"]:
        units = to_minor_units(Decimal(line["amount"]), row.currency)
        revenue[line["kind"]] = revenue.get(line["kind"], 0) + units
    return InvoiceFacts(row.id, row.number, row.customer_id, row.currency, revenue)


def _settle(
    conn: Connection, project: Project, row: Row[Any], *, now: datetime, actor: str
) -> None:
    content = orjson.loads(row.content)
    invoice = facts(row, content)
    # Lock order: the corrected invoice, then the wallet, then the accounts of the postings
    # (as a payment does: its invoice, then the wallet), so they cannot deadlock.
    if invoice.subtotal < 0 and row.corrects_id is not None:
        conn.execute(
            select(invoices_t.c.id).where(invoices_t.c.id == row.corrects_id).with_for_update()
        )
    credits.lock_wallet(conn, project, row.customer_id, row.currency, now=now)
    _post(conn, project, invoice_finalized(invoice), now, actor)
    if invoice.subtotal > 0:
        allocations = credits.spend_on_invoice(
            conn,
            project,
            customer_id=row.customer_id,
            currency=row.currency,
            amount=invoice.subtotal,
            now=now,
        )
        if allocations:
            _post(conn, project, credits_applied(invoice, allocations), now, actor)
            applied = sum(a.amount for a in allocations)
            content["credits"] = credits.allocations_document(allocations, row.currency)
            content["credits_applied"] = format_minor(applied, row.currency)
            content["total"] = format_minor(invoice.subtotal - applied, row.currency)
            _new_version(conn, row, content, now)
    elif invoice.subtotal < 0:
        _settle_credit_note(conn, project, row, invoice, content, now=now, actor=actor)
    mark_paid_when_settled(conn, row.id, now)


def _settle_credit_note(
    conn: Connection,
    project: Project,
    row: Row[Any],
    note: InvoiceFacts,
    content: dict[str, Any],
    *,
    now: datetime,
    actor: str,
) -> None:
    corrected = None
    if row.corrects_id is not None:
        corrected = conn.execute(
            select(invoices_t).where(invoices_t.c.id == row.corrects_id).with_for_update()
        ).one()
        if corrected.status not in FINAL:
            corrected = None
    outstanding, returnable = 0, []
    if corrected is not None:
        outstanding = max(corrected.amount_due_minor, 0)
        applied = credits.allocations_from(
            orjson.loads(corrected.content).get("credits") or [], row.currency
        )
        returned = _returned(conn, project, corrected)
        returnable = _live_only(conn, project, credit_rules.returnable(applied, returned), now)
    policy: CreditReturns = "keep" if project.credit_returns == "keep" else "restore"
    settlement = settle_credit_note(
        -note.subtotal, outstanding=outstanding, returnable=returnable, policy=policy
    )
    wallet_grant = None
    if settlement.to_wallet:
        wallet_grant = _new_paid_grant(conn, project, row, settlement.to_wallet, "credit_note", now)
    corrected_facts = facts(corrected) if corrected is not None else None
    posting = credit_note_settled(note, corrected_facts, settlement, wallet_grant=wallet_grant)
    _post(conn, project, posting, now, actor)

    content["settlement"] = {
        "corrects": None if corrected is None else corrected.number,
        "to_invoice": format_minor(settlement.to_invoice, row.currency),
        "credits_restored": credits.allocations_document(settlement.restored, row.currency),
        "to_wallet": format_minor(settlement.to_wallet, row.currency),
        "wallet_grant": wallet_grant,
        "policy": policy,
    }
    _new_version(conn, row, content, now)
    if corrected is not None:
        mark_paid_when_settled(conn, corrected.id, now)


def _returned(conn: Connection, project: Project, corrected: Row[Any]) -> dict[str, int]:
    """Credit the corrected invoice's earlier credit notes already gave back, per grant."""
    notes = conn.execute(
        select(invoices_t.c.content, invoices_t.c.currency).where(
            invoices_t.c.corrects_id == corrected.id, invoices_t.c.status.in_(FINAL)
        )
    ).all()
    returned: dict[str, int] = {}
    for note in notes:
        settlement = orjson.loads(note.content).get("settlement") or {}
        given = settlement.get("credits_restored") or []
        for allocation in credits.allocations_from(given, note.currency):
            returned[allocation.grant] = returned.get(allocation.grant, 0) + allocation.amount
    return returned


def _ended(
    conn: Connection, project: Project, grant_ids: Sequence[str], now: datetime
) -> dict[str, Row[Any]]:
    """The grants among these that can no longer be spent: revoked, or past their expiry."""
    rows = credits.grants_by_id(conn, project, grant_ids)
    return {
        grant_id: row
        for grant_id, row in rows.items()
        if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now)
    }


def _live_only(
    conn: Connection, project: Project, allocations: Sequence[Allocation], now: datetime
) -> list[Allocation]:
    """Credit a credit note may give back: only to grants that can still be spent. Credit of
    a revoked or expired grant stays spent (as under `keep`), so the note lowers what the
    invoice owes instead and the customer loses nothing."""
    ended = _ended(conn, project, [a.grant for a in allocations], now)
    return [a for a in allocations if a.grant not in ended]


def void(conn: Connection, project: Project, row: Row[Any], *, now: datetime, actor: str) -> None:
    """Reverse a finalized invoice in the ledger: revenue and receivable, and the credit it
    spent goes back — to its grant while the grant can still be spent; credit of an expired
    grant (or a revoked promotion) lapses as it would have; credit of a revoked paid grant is
    the customer's money and comes back as new paid credit. (The caller checked nothing was
    paid.)"""
    if row.status not in FINAL:
        return
    content = orjson.loads(row.content)
    spent = credits.allocations_from(content.get("credits") or [], row.currency)
    if spent:  # the wallet first, then the grants (services/ledger/postings.py's lock order)
        credits.lock_wallet(conn, project, row.customer_id, row.currency, now=now)
    ended = _ended(conn, project, [a.grant for a in spent], now)
    returned: list[Allocation] = []
    refunded = 0
    for allocation in spent:
        grant = ended.get(allocation.grant)
        if grant is None:
            returned.append(allocation)
        elif grant.revoked_at is not None and grant.category == "paid":
            refunded += allocation.amount
        else:
            returned.append(Allocation(allocation.grant, allocation.amount, grant.category))
    if refunded:
        wallet_grant = _new_paid_grant(conn, project, row, refunded, "void", now)
        returned.append(Allocation(wallet_grant, refunded))
    _post(conn, project, invoice_voided(facts(row, content), returned), now, actor)


def _new_paid_grant(
    conn: Connection, project: Project, row: Row[Any], amount: int, source: str, now: datetime
) -> str:
    """Paid credit in the customer's wallet (no expiry), to be posted by the caller."""
    grant_id = new_id("grt")
    credits.insert_grant(
        conn,
        project,
        grant_id=grant_id,
        customer_id=row.customer_id,
        currency=row.currency,
        minor=amount,
        priority=credits.DEFAULT_PRIORITY,
        category="paid",
        expires_at=None,
        reason=f"{'credit note' if source == 'credit_note' else source} {row.number}",
        source=source,
        source_ref=row.number,
        idempotency_key=None,
        args_hash="",
        now=now,
    )
    return grant_id


def check_voidable(row: Row[Any]) -> None:
    if row.status in FINAL and row.kind == "credit_note":
        raise InvalidInput(
            f"credit note {row.number} is finalized and settled; it cannot be voided",
            hint="a later run corrects the period again if the usage changes",
        )
    if row.amount_paid_minor > 0:
        raise InvalidInput(
            f"invoice {row.number} has payments recorded "
            f"({format_minor(row.amount_paid_minor, row.currency)}); it cannot be voided",
            hint="refund the payments first (`neruba payment refund`)",
        )


def mark_paid_when_settled(conn: Connection, invoice_id: str, now: datetime) -> None:
    """finalized ↔ paid as the amount due reaches zero or becomes owed again. An invoice with
    nothing to pay (a zero or negative subtotal) stays finalized."""
    row = conn.execute(
        select(invoices_t.c.status, invoices_t.c.subtotal, invoices_t.c.amount_due_minor).where(
            invoices_t.c.id == invoice_id
        )
    ).one()
    if row.status not in FINAL or row.subtotal <= 0:
        return
    wanted = "paid" if row.amount_due_minor <= 0 else "finalized"
    if wanted != row.status:
        conn.execute(
            update(invoices_t)
            .where(invoices_t.c.id == invoice_id)
            .values(status=wanted, updated_at=now)
        )


def as_billed(content: dict[str, Any]) -> dict[str, Any]:
    """The document as the billing run computed it, without what finalization added
    (credits spent, a credit note's settlement): what `invoice verify` recomputes."""
    billed = {key: value for key, value in content.items() if key not in SETTLEMENT_KEYS}
    if "credits" in content:
        billed["credits_applied"] = format_minor(0, content["currency"])
        billed["total"] = content["subtotal"]
    return billed


def _new_version(conn: Connection, row: Row[Any], content: dict[str, Any], now: datetime) -> None:
    """The finalized document with what settlement added, as the invoice's next version."""
    version = row.version + 1
    text = canonical_json(content).decode()
    conn.execute(
        update(invoices_t)
        .where(invoices_t.c.id == row.id)
        .values(
            content=text,
            credits_applied=Decimal(content["credits_applied"]),
            total=Decimal(content["total"]),
            version=version,
            updated_at=now,
        )
    )
    conn.execute(
        insert(invoice_revisions_t).values(
            invoice_id=row.id,
            version=version,
            run_id=row.run_id,
            fingerprint=row.fingerprint,
            content=text,
            created_at=now,
        )
    )


def _post(conn: Connection, project: Project, posting: Any, now: datetime, actor: str) -> None:
    if posting is not None:
        ledger_postings.post(conn, project, posting, effective_at=now, actor=actor, now=now)
