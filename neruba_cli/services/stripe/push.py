"""`neruba stripe push`: a period's finalized invoices become Stripe invoices.

Per invoice the push walks a fixed sequence of steps — customer, invoice, one item per line,
finalize — and records how far it got in `stripe_links` after each step (one transaction per
step). Every Stripe request carries an idempotency key derived from the invoice number, version
and step, and the steps look at Stripe before acting (the invoice's items are listed before the
missing ones are added), so a push killed at any point and run again finishes the job without
creating anything twice. Corrections follow: a supplemental invoice is pushed like an invoice
(naming the invoice it corrects), a credit note becomes a Stripe credit note on the corrected
invoice's Stripe invoice, and an invoice voided in Neruba is voided in Stripe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import orjson
from sqlalchemy import Connection, Engine, Row, insert, select, update

from neruba_cli.db import locks
from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import Project
from neruba_cli.db.tables import customers_t, stripe_links_t
from neruba_cli.domain import lock_names, stripe_keys, stripe_link
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.money import RoundingMode, format_amount, to_minor_units
from neruba_cli.domain.stripe_link import PushedInvoice
from neruba_cli.services.invoices import read as invoices_read
from neruba_cli.services.stripe import mirror as stripe_mirror
from neruba_cli.services.stripe.gateway import Gateway, StripeFailure

PUSHED_STATUSES = ("finalized", "paid", "void")
# the metadata that names one push of one invoice
_IDENTITY = ("neruba_project", "neruba_invoice", "neruba_version", "neruba_generation")
DUE_DAYS = 30


@dataclass
class Outcome:
    invoice: str
    kind: str
    action: str  # created | resumed | recreated | replaced | up_to_date | voided | skipped | failed
    stripe_id: str | None = None
    total: str | None = None
    currency: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "invoice": self.invoice,
            "kind": self.kind,
            "action": self.action,
            "stripe_id": self.stripe_id,
            "total": self.total,
            "currency": self.currency,
            "error": self.error,
        }


@dataclass
class PushReport:
    period: str
    dry_run: bool
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for outcome in self.outcomes if outcome.action == "failed")

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for outcome in self.outcomes:
            counts[outcome.action] = counts.get(outcome.action, 0) + 1
        return counts

    def as_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "dry_run": self.dry_run,
            "invoices": len(self.outcomes),
            "counts": self.counts(),
            "failed": self.failed,
            "outcomes": [outcome.as_dict() for outcome in self.outcomes],
        }


def push(
    engine: Engine,
    project: Project,
    label: str,
    *,
    gateway: Callable[[], Gateway],
    dry_run: bool = False,
    replace: Sequence[str] = (),
    now: datetime,
    progress: Callable[[int], Callable[[int], None]] | None = None,
) -> PushReport:
    """Push the period's invoices; Stripe refusing one invoice does not stop the others, a
    Stripe that does not answer stops the push (run it again to resume)."""
    with engine.connect() as conn:
        rows = _rows(conn, project, label)
        known = {row.number for row in rows}
    unknown = sorted(set(replace) - known)
    if unknown:
        raise InvalidInput(
            f"--replace: {', '.join(unknown)} is not a finalized invoice of {label}",
            hint="`neruba invoice list --period` shows them",
        )
    report = PushReport(label, dry_run)
    if dry_run:
        with engine.connect() as conn:
            report.outcomes = [_plan(conn, project, row, replace) for row in rows]
        return report
    client = gateway()
    holding = locks.Holding(engine, locks.acquire(engine, lock_names.stripe_push(project.slug)))
    try:
        advance = progress(len(rows)) if progress else (lambda _n: None)
        for done, row in enumerate(rows, start=1):
            pusher = _Pusher(holding, project, client, row, now)
            try:
                report.outcomes.append(pusher.run(replace=row.number in replace))
            except StripeFailure as exc:
                if exc.http_status is None or exc.http_status >= 500 or exc.http_status == 401:
                    raise  # Stripe unreachable or the key refused: stop, a rerun resumes
                report.outcomes.append(Outcome(row.number, row.kind, "failed", error=exc.message))
            advance(done)
            holding.renew_when_due()
    finally:
        holding.release()
    return report


def _rows(conn: Connection, project: Project, label: str) -> list[Row[Any]]:
    rows = invoices_read.select_rows(conn, project, label=label)
    return [row for row in rows if row.status in PUSHED_STATUSES]


def _link(conn: Connection, project: Project, invoice_id: str) -> Row[Any] | None:
    return conn.execute(
        select(stripe_links_t).where(
            stripe_links_t.c.project_id == project.id, stripe_links_t.c.invoice_id == invoice_id
        )
    ).first()


def _pushed(project: Project, row: Row[Any], link: Row[Any] | None) -> PushedInvoice:
    content = orjson.loads(row.content)
    return PushedInvoice(
        project=project.slug,
        project_id=project.id,
        number=row.number,
        kind=row.kind,
        period=row.period,
        version=row.version if link is None else link.version,
        generation=0 if link is None else link.generation,
        customer=row.customer_external_id,
        currency=row.currency,
        lines=tuple(
            (str(line.get("description") or ""), Decimal(line["amount"]))
            for line in content["lines"]
        ),
        credits_applied=Decimal(content.get("credits_applied") or "0"),
        total=Decimal(content["total"]),
        rounding=cast(RoundingMode, project.rounding),
        corrects=row.corrects_number,
    )


@dataclass(frozen=True)
class Settled:
    """How a credit note was settled (ISO minor units): off the corrected invoice's amount
    due, into the wallet as paid credit, and back to the grants it had consumed."""

    to_invoice: int = 0
    to_wallet: int = 0
    restored: int = 0


def settlement_of(row: Row[Any]) -> Settled:
    settled = orjson.loads(row.content).get("settlement") or {}

    def minor(value: str | None) -> int:
        return to_minor_units(Decimal(value or "0"), row.currency)

    return Settled(
        minor(settled.get("to_invoice")),
        minor(settled.get("to_wallet")),
        sum(minor(item["amount"]) for item in settled.get("credits_restored") or []),
    )


def expected(project: Project, row: Row[Any], link: Row[Any] | None) -> PushedInvoice:
    """The invoice as the push writes it (for reconciliation's expected Stripe total)."""
    return _pushed(project, row, link)


def _plan(conn: Connection, project: Project, row: Row[Any], replace: Sequence[str]) -> Outcome:
    """What a push would do, from what the last push recorded (Stripe is not asked)."""
    link = _link(conn, project, row.id)
    outcome = Outcome(
        row.number,
        row.kind,
        "up_to_date",
        stripe_id=None if link is None else link.stripe_id,
        total=format_amount(row.total, row.currency),
        currency=row.currency,
    )
    if row.status == "void":
        if link is None or link.stripe_id is None:
            outcome.action = "skipped"
        elif link.state != "voided":
            outcome.action = "voided"
    elif row.number in replace:
        outcome.action = "replaced"
    elif link is None or link.stripe_id is None:
        outcome.action = "created"
    elif link.state != "finalized":
        outcome.action = "resumed"
    return outcome


class _Pusher:
    """The steps for one invoice; each records its result before the next one starts, in a
    write transaction fenced by the push's lease (`holding`). Stripe is called between those
    transactions, never inside one: a push that lost its lease after a Stripe call records
    nothing of it, and the next push finds what that call made (by idempotency key within
    Stripe's 24 hours, else by metadata) instead of making it again."""

    def __init__(
        self,
        holding: locks.Holding,
        project: Project,
        gateway: Gateway,
        row: Row[Any],
        now: datetime,
    ) -> None:
        self.holding, self.engine = holding, holding.engine
        self.project, self.gateway, self.row, self.now = project, gateway, row, now

    def run(self, *, replace: bool) -> Outcome:
        row = self.row
        link = self._ensure_link()
        outcome = Outcome(
            row.number,
            row.kind,
            "up_to_date",
            total=format_amount(row.total, row.currency),
            currency=row.currency,
        )
        if row.status == "void":
            outcome.action = self._void(link)
        elif row.kind == "credit_note":
            outcome.action = self._credit_note(link)
        else:
            outcome.action = self._invoice(link, replace=replace)
        outcome.stripe_id = self._current_link().stripe_id
        return outcome

    # -- links ----------------------------------------------------------------------------

    def _ensure_link(self) -> Row[Any]:
        with self.holding.write() as conn:
            link = _link(conn, self.project, self.row.id)
            if link is None:
                conn.execute(
                    insert(stripe_links_t).values(
                        id=new_id("slk"),
                        project_id=self.project.id,
                        invoice_id=self.row.id,
                        stripe_object="credit_note"
                        if self.row.kind == "credit_note"
                        else "invoice",
                        stripe_id=None,
                        generation=0,
                        version=self.row.version,
                        state="new",
                        pushed_at=None,
                        created_at=self.now,
                        updated_at=self.now,
                    )
                )
        return self._current_link()

    def _current_link(self) -> Row[Any]:
        with self.engine.connect() as conn:
            link = _link(conn, self.project, self.row.id)
        assert link is not None
        return link

    def _record(self, **values: Any) -> Row[Any]:
        with self.holding.write() as conn:
            conn.execute(
                update(stripe_links_t)
                .where(
                    stripe_links_t.c.project_id == self.project.id,
                    stripe_links_t.c.invoice_id == self.row.id,
                )
                .values(updated_at=self.now, **values)
            )
        return self._current_link()

    def _live(self, stripe_id: str | None) -> bool:
        if stripe_id is None:
            return False
        with self.engine.connect() as conn:
            return stripe_mirror.is_live(conn, self.project, stripe_id)

    def _mirror(self, obj: dict[str, Any]) -> None:
        with self.holding.write() as conn:
            stripe_mirror.upsert(conn, self.project, obj, observed_at=self.now)

    # -- invoices -------------------------------------------------------------------------

    def _invoice(self, link: Row[Any], *, replace: bool) -> str:
        action = "up_to_date"
        if link.state == "finalized" and not replace and self._live(link.stripe_id):
            return action  # pushed, and no pull has found it gone: Stripe is not asked again
        customer = self._customer()
        found = (
            None if link.stripe_id is None else self.gateway.retrieve("invoices", link.stripe_id)
        )
        if replace and found is not None:
            self._retire(found, link)
            link = self._record(generation=link.generation + 1, stripe_id=None, state="new")
            found, action = None, "replaced"
        elif link.stripe_id is not None and found is None:
            link = self._record(generation=link.generation + 1, stripe_id=None, state="new")
            action = "recreated"  # deleted on the Stripe side
        pushed = _pushed(self.project, self.row, link)
        if found is None and link.state == "creating":
            found = self._made_earlier(customer, pushed)  # beyond Stripe's 24 h of keys
            if found is not None:
                link = self._record(stripe_id=found["id"], state="created")
        if found is None:
            link = self._record(state="creating")
            found = self.gateway.create(
                "invoices",
                {
                    "customer": customer,
                    "currency": pushed.currency.lower(),
                    "auto_advance": False,
                    "collection_method": "send_invoice",
                    "days_until_due": DUE_DAYS,
                    "pending_invoice_items_behavior": "exclude",
                    "description": f"{pushed.number} ({pushed.period})",
                    "metadata": stripe_link.metadata(pushed),
                },
                key=stripe_link.idempotency_key(pushed, "invoice"),
            )
            link = self._record(stripe_id=found["id"], state="created")
            action = "created" if action == "up_to_date" else action
        if found["status"] == "draft":
            present = list(self.gateway.list_all("invoice_items", {"invoice": found["id"]}))
            for item in stripe_link.missing_items(pushed, present):
                self.gateway.create(
                    "invoice_items",
                    {
                        "customer": customer,
                        "invoice": found["id"],
                        "currency": pushed.currency.lower(),
                        "amount": item.amount,
                        "description": item.description,
                        "metadata": {"neruba_invoice": pushed.number, "neruba_line": item.line},
                    },
                    key=stripe_link.idempotency_key(pushed, f"item:{item.line}"),
                )
            found = self.gateway.finalize_invoice(
                found["id"], key=stripe_link.idempotency_key(pushed, "finalize")
            )
            action = "resumed" if action == "up_to_date" else action
        self._mirror(found)
        if link.state != "finalized":
            if self._offset_balance(customer, pushed, found) and action == "up_to_date":
                action = "resumed"  # finalized by a push stopped before the offset
            self._record(state="finalized", pushed_at=self.now)
        return action

    def _offset_balance(self, customer: str, pushed: PushedInvoice, found: dict[str, Any]) -> bool:
        """A Stripe invoice with a negative total credits the customer's Stripe balance when
        it is finalized, and Stripe would apply that credit to the customer's next invoice.
        Neruba already holds the credit in its wallet (and bills it on the next invoice), so a
        debit adjustment of the same amount brings Stripe's balance back (found again by its
        metadata when an interrupted push made it beyond Stripe's 24 hours of keys)."""
        amount = stripe_link.balance_offset(pushed)
        if amount <= 0 or found.get("status") == "void":
            return False
        wanted = stripe_link.balance_metadata(pushed)
        for made in self.gateway.balance_transactions(customer):
            metadata = made.get("metadata") or {}
            if all(metadata.get(k) == wanted[k] for k in (*_IDENTITY, "neruba_step")):
                return False
        self.gateway.create_balance_transaction(
            customer,
            {
                "amount": amount,
                "currency": pushed.currency.lower(),
                "description": f"{pushed.number}: credit kept in Neruba's wallet",
                "metadata": wanted,
            },
            key=stripe_link.idempotency_key(pushed, "balance"),
        )
        return True

    def _made_earlier(self, customer: str, pushed: PushedInvoice) -> dict[str, Any] | None:
        """The Stripe invoice an interrupted push made but could not record, found by its
        metadata (idempotency keys alone cover a rerun within Stripe's 24 hours)."""
        wanted = stripe_link.metadata(pushed)
        for invoice in self.gateway.list_all("invoices", {"customer": customer}):
            metadata = invoice.get("metadata") or {}
            same = all(metadata.get(k) == wanted[k] for k in _IDENTITY)
            if same and invoice.get("status") != "void":
                return invoice
        return None

    def _retire(self, found: dict[str, Any], link: Row[Any]) -> None:
        """Take a Stripe invoice out of service before it is replaced: void it, delete a
        draft; a paid one is refused, since replacing it would bill the customer twice."""
        status = found["status"]
        if status == "paid":
            raise StripeFailure(
                f"{self.row.number} is paid in Stripe ({found['id']}); replacing it would bill "
                "the customer twice",
                hint="correct it with a credit note instead (`neruba run bill` after the fix)",
                http_status=400,
            )
        if status in ("open", "uncollectible"):
            key = stripe_link.idempotency_key(_pushed(self.project, self.row, link), "void")
            self._mirror(self.gateway.void_invoice(found["id"], key=key))
        elif status == "draft":
            self.gateway.delete_draft(found["id"])

    def _customer(self) -> str:
        """The customer's Stripe id, creating the Stripe customer the first time."""
        with self.engine.connect() as conn:
            customer = conn.execute(
                select(customers_t).where(customers_t.c.id == self.row.customer_id)
            ).one()
        if customer.stripe_id:
            return str(customer.stripe_id)
        params: dict[str, Any] = {
            "metadata": {
                "neruba_customer": customer.external_id,
                "neruba_project": self.project.slug,
            }
        }
        if customer.name:
            params["name"] = customer.name
        if customer.email:
            params["email"] = customer.email
        created = self.gateway.create(
            "customers", params, key=stripe_keys.customer_key(self.project.id, customer.id)
        )
        with self.holding.write() as conn:
            conn.execute(
                update(customers_t)
                .where(customers_t.c.id == customer.id, customers_t.c.stripe_id.is_(None))
                .values(stripe_id=created["id"], updated_at=self.now)
            )
            stored = conn.execute(
                select(customers_t.c.stripe_id).where(customers_t.c.id == customer.id)
            ).scalar_one()
        return str(stored)

    # -- corrections ----------------------------------------------------------------------

    def _credit_note(self, link: Row[Any]) -> str:
        if link.state == "finalized" and (link.stripe_id is None or self._live(link.stripe_id)):
            return "up_to_date"
        if link.stripe_id is not None and self.gateway.retrieve("credit_notes", link.stripe_id):
            return "up_to_date"
        with self.engine.connect() as conn:
            original = _link(conn, self.project, self.row.corrects_id)
        if original is None or original.stripe_id is None or original.state != "finalized":
            raise StripeFailure(
                f"credit note {self.row.number} corrects {self.row.corrects_number}, which is "
                "not in Stripe yet",
                hint=f"push {self.row.corrects_number}'s period first",
                http_status=400,
            )
        pushed = _pushed(self.project, self.row, link)
        existing = [
            note
            for note in self.gateway.list_all("credit_notes", {"invoice": original.stripe_id})
            if (note.get("metadata") or {}).get("neruba_invoice") == pushed.number
            and note.get("status") != "void"
        ]
        if existing:  # made by a push that was stopped before it could record it
            self._mirror(existing[0])
            self._record(stripe_id=existing[0]["id"], state="finalized", pushed_at=self.now)
            return "resumed"
        target = self.gateway.retrieve("invoices", original.stripe_id)
        if target is None or target["status"] not in ("open", "paid"):
            state = "deleted" if target is None else target["status"]
            raise StripeFailure(
                f"credit note {self.row.number}: the Stripe invoice of "
                f"{self.row.corrects_number} ({original.stripe_id}) is {state}",
                hint="`neruba reconcile stripe` shows what to fix",
                http_status=400,
            )
        settled = settlement_of(self.row)
        split = stripe_link.credit_note_split(pushed, settled.to_invoice, settled.to_wallet)
        if split.amount <= 0:
            self._record(state="finalized", pushed_at=self.now)
            return "skipped"  # all of it restored credit: nothing for Stripe to credit
        params: dict[str, Any] = {
            "invoice": target["id"],
            "lines": stripe_link.credit_note_lines(pushed, split.amount),
            "memo": f"{pushed.number}: correction of {pushed.corrects}",
            "metadata": stripe_link.metadata(pushed),
        }
        if split.out_of_band:
            params["out_of_band_amount"] = split.out_of_band
        created = self.gateway.create(
            "credit_notes", params, key=stripe_link.idempotency_key(pushed, "credit_note")
        )
        self._mirror(created)
        self._record(stripe_id=created["id"], state="finalized", pushed_at=self.now)
        return "created"

    def _void(self, link: Row[Any]) -> str:
        if link.state == "voided":
            return "up_to_date"
        if link.stripe_id is None or link.stripe_object != "invoice":
            return "skipped"  # never reached Stripe: nothing to void there
        found = self.gateway.retrieve("invoices", link.stripe_id)
        if found is not None and found["status"] == "draft":
            self.gateway.delete_draft(found["id"])
            found = None
        if found is not None and found["status"] in ("open", "uncollectible"):
            key = stripe_link.idempotency_key(_pushed(self.project, self.row, link), "void")
            found = self.gateway.void_invoice(found["id"], key=key)
        if found is not None:
            self._mirror(found)
            if found["status"] != "void":
                raise StripeFailure(
                    f"{self.row.number} is void here but {found['status']} in Stripe "
                    f"({found['id']}); Stripe cannot void it",
                    hint="resolve it in the Stripe Dashboard (a credit note or a refund)",
                    http_status=400,
                )
        self._record(state="voided")
        return "voided"
