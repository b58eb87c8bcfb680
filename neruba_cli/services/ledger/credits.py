"""Credit grants: granting, revoking, expiring, listing, the wallet view, and spending credit
on an invoice at finalization.

Every change to a grant's credit is a ledger posting (domain/ledger.py) written with
services/ledger.post; the grant row's `remaining_minor` moves with it in the same transaction.
Whatever spends a wallet (an invoice, a revoke, an expiry) first takes the wallet account's row
lock, then reads the grants, so two processes never spend the same credit twice.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any, cast

import orjson
from sqlalchemy import Connection, Engine, Row, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from neruba_cli.db.engine import begin_write
from neruba_cli.db.ids import new_id
from neruba_cli.db.retry import retrying
from neruba_cli.db.schema import Project
from neruba_cli.db.tables import (
    credit_grants_t,
    customers_t,
    ledger_entries_t,
)
from neruba_cli.domain.credits import MAX_PRIORITY, GrantState, allocate
from neruba_cli.domain.errors import InvalidInput, NotFound, UsageError
from neruba_cli.domain.ledger import (
    MAX_MINOR,
    WALLET,
    AccountRef,
    Allocation,
    Category,
    GrantFacts,
    credit_expired,
    credit_granted,
    credit_revoked,
)
from neruba_cli.domain.money import (
    format_minor,
    normalize_currency,
    parse_amount,
    to_minor_units,
)
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.ledger import postings as ledger_postings
from neruba_cli.services.ledger.postings import IdempotencyConflict
from neruba_cli.services.tenancy.customer_hints import customer_not_found

CATEGORIES = ("paid", "promotional")
DEFAULT_PRIORITY = 1


@dataclass(frozen=True)
class GrantRequest:
    customer: str  # external id or cus_ id
    amount: str
    currency: str | None = None
    expires_at: datetime | None = None
    priority: int = DEFAULT_PRIORITY
    category: str = "promotional"
    reason: str | None = None
    idempotency_key: str | None = None
    other_currency: bool = False  # deliberately in a currency the customer is not billed in


def _customer(conn: Connection, project: Project, ident: str) -> Row[Any]:
    row = conn.execute(
        select(customers_t).where(
            customers_t.c.project_id == project.id,
            (customers_t.c.external_id == ident) | (customers_t.c.id == ident),
        )
    ).first()
    if row is None:
        raise customer_not_found(conn, project, ident)
    return row


def _parsed(request: GrantRequest, customer: Row[Any]) -> tuple[str, int]:
    """Currency and amount in minor units: what the grant's idempotency compares."""
    currency = normalize_currency(request.currency or customer.currency)
    amount = parse_amount(request.amount, field="AMOUNT")
    if amount <= 0:
        raise InvalidInput(f"AMOUNT {request.amount!r} must be positive")
    return currency, minor_units(request.amount, amount, currency)


def check_amount(text: str) -> Decimal:
    """A grant's AMOUNT: a decimal number more than zero. A negative one is a request for
    another command: the error says which."""
    amount = parse_amount(text, field="AMOUNT")
    if amount < 0:
        raise UsageError(
            f"AMOUNT {text} is negative: a grant is positive",
            hint="to take credit back use `neruba credits revoke GRANT`; "
            "`neruba credits list CUSTOMER` shows the grants",
        )
    if amount == 0:
        raise InvalidInput(f"AMOUNT {text!r} must be positive")
    return amount


def _refuse_negative(text: str) -> None:
    """A negative grant is refused before anything else (the rest of the amount's validation
    comes with the customer's currency)."""
    with contextlib.suppress(InvalidInput):
        check_amount(text)


def _check_currency(request: GrantRequest, customer: Row[Any], currency: str) -> None:
    """Credit in a currency the customer is not billed in is never spent by their invoices:
    almost always a slip, so it takes a flag (for credit loaded ahead of a currency change)."""
    if currency == customer.currency or request.other_currency:
        return
    raise InvalidInput(
        f"customer {customer.external_id} is billed in {customer.currency}, not {currency}: "
        f"a {currency} grant would not be spent on their invoices; nothing was granted",
        hint=f"leave out --currency to grant {customer.currency}, or pass "
        "--allow-other-currency to grant it anyway",
    )


def _check_terms(request: GrantRequest, now: datetime) -> None:
    """The rest of a new grant's validation (a repeated grant is not checked again: its
    expiry may have passed since)."""
    if request.category not in CATEGORIES:
        raise InvalidInput(
            f"--category {request.category!r} is not a category", hint="paid or promotional"
        )
    if not 1 <= request.priority <= MAX_PRIORITY:
        raise InvalidInput(f"--priority must be between 1 and {MAX_PRIORITY}")
    if request.expires_at is not None and request.expires_at <= now:
        raise UsageError(  # a bad --expires, told apart from a repeat only here
            f"--expires {format_ts(request.expires_at)} is not in the future",
            hint="a grant that has already expired could never be spent",
        )
    if request.reason is not None and len(request.reason) > 500:
        raise InvalidInput("--reason is longer than 500 characters")


def minor_units(text: str, amount: Decimal, currency: str, field: str = "AMOUNT") -> int:
    """A positive amount as ledger minor units: whole minor units, within 64 bits."""
    try:
        minor = to_minor_units(amount, currency)
    except InvalidInput:
        raise InvalidInput(
            f"{field} {text!r} has more decimals than {currency} has minor units"
        ) from None
    if minor > MAX_MINOR:
        raise InvalidInput(f"{field} {text!r} is larger than the ledger holds")
    return minor


def _args_hash(customer_id: str, currency: str, minor: int, request: GrantRequest) -> str:
    document = {
        "customer": customer_id,
        "currency": currency,
        "amount": minor,
        "expires_at": format_ts(request.expires_at),
        "priority": request.priority,
        "category": request.category,
        "reason": request.reason,
    }
    return (
        "sha256:" + hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()
    )


def grant(
    engine: Engine, project: Project, request: GrantRequest, *, actor: str, now: datetime
) -> tuple[dict[str, Any], bool]:
    """A new grant, posted to the ledger; (grant, created). The same idempotency key with the
    same arguments returns the first grant; with other arguments it is an error."""

    def attempt() -> tuple[dict[str, Any], bool]:
        try:
            return _grant(engine, project, request, actor=actor, now=now)
        except IntegrityError:
            if request.idempotency_key is None:
                raise
            # Another process granted with the same key between our look and our insert:
            # the unique key kept one grant; compare with it.
            return _grant(engine, project, request, actor=actor, now=now)

    return retrying(attempt)


def _grant(
    engine: Engine, project: Project, request: GrantRequest, *, actor: str, now: datetime
) -> tuple[dict[str, Any], bool]:
    with begin_write(engine) as conn:
        return grant_in(conn, project, request, actor=actor, now=now)


def grant_in(
    conn: Connection, project: Project, request: GrantRequest, *, actor: str, now: datetime
) -> tuple[dict[str, Any], bool]:
    """`grant` in the caller's write transaction (`begin_write`), e.g. one that also records
    the request's idempotency key; the caller retries it as `grant` does."""
    _refuse_negative(request.amount)
    customer = _customer(conn, project, request.customer)
    currency, minor = _parsed(request, customer)
    args_hash = _args_hash(customer.id, currency, minor, request)
    # Every transaction that touches a wallet locks it first (services/ledger/postings.py).
    lock_wallet(conn, project, customer.id, currency, now=now)
    if request.idempotency_key is not None:
        previous = _by_key(conn, project, request.idempotency_key)
        if previous is not None:
            if previous.args_hash != args_hash:
                raise IdempotencyConflict(
                    f"idempotency key {request.idempotency_key!r} already granted "
                    f"{previous.id} with other arguments; nothing was granted",
                    hint="a key names one grant; use a new key for a new grant",
                )
            return grant_dict(previous, now), False
    _check_currency(request, customer, currency)
    _check_terms(request, now)
    grant_id = new_id("grt")
    insert_grant(
        conn,
        project,
        grant_id=grant_id,
        customer_id=customer.id,
        currency=currency,
        minor=minor,
        priority=request.priority,
        category=request.category,
        expires_at=request.expires_at,
        reason=request.reason,
        source="grant",
        source_ref=None,
        idempotency_key=request.idempotency_key,
        args_hash=args_hash,
        now=now,
    )
    facts = GrantFacts(grant_id, customer.id, currency, minor, cast(Category, request.category))
    ledger_postings.post(
        conn, project, credit_granted(facts), effective_at=now, actor=actor, now=now
    )
    return grant_dict(_get(conn, project, grant_id), now), True


def insert_grant(conn: Connection, project: Project, **values: Any) -> None:
    """The grant row, with nothing left yet: its posting brings the credit in."""
    now = values.pop("now")
    conn.execute(
        insert(credit_grants_t).values(
            id=values.pop("grant_id"),
            project_id=project.id,
            customer_id=values.pop("customer_id"),
            amount_minor=values.pop("minor"),
            remaining_minor=0,
            created_at=now,
            **values,
        )
    )


def _by_key(conn: Connection, project: Project, key: str) -> Row[Any] | None:
    return conn.execute(
        _grant_query(project).where(credit_grants_t.c.idempotency_key == key)
    ).first()


def _grant_query(project: Project) -> Any:
    return (
        select(credit_grants_t, customers_t.c.external_id.label("customer_external_id"))
        .join(customers_t, customers_t.c.id == credit_grants_t.c.customer_id)
        .where(credit_grants_t.c.project_id == project.id)
    )


def _get(conn: Connection, project: Project, grant_id: str, *, lock: bool = False) -> Row[Any]:
    if lock:  # the grant's row only (MariaDB would also lock the joined customer row)
        conn.execute(
            select(credit_grants_t.c.id).where(credit_grants_t.c.id == grant_id).with_for_update()
        )
    row = conn.execute(_grant_query(project).where(credit_grants_t.c.id == grant_id)).first()
    if row is None:
        raise NotFound(
            f"grant {grant_id!r} does not exist in project {project.slug!r}",
            hint="`neruba credits list CUSTOMER` shows the grants",
        )
    return row


def status(row: Row[Any], at: datetime, remaining: int | None = None) -> str:
    """revoked, expired, used (nothing left) or active, at a moment."""
    if row.revoked_at is not None and row.revoked_at <= at:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= at:
        return "expired"
    if (row.remaining_minor if remaining is None else remaining) == 0:
        return "used"
    return "active"


def grant_dict(row: Row[Any], at: datetime) -> dict[str, Any]:
    currency = row.currency
    return {
        "id": row.id,
        "customer": row.customer_external_id,
        "amount": format_minor(row.amount_minor, currency),
        "remaining": format_minor(row.remaining_minor, currency),
        "currency": currency,
        "priority": row.priority,
        "expires_at": format_ts(row.expires_at),
        "category": row.category,
        "status": status(row, at),
        "reason": row.reason,
        "source": row.source,
        "source_ref": row.source_ref,
        "idempotency_key": row.idempotency_key,
        "created_at": format_ts(row.created_at),
        "revoked_at": format_ts(row.revoked_at),
        "revoke_reason": row.revoke_reason,
    }


def _facts(row: Row[Any]) -> GrantFacts:
    return GrantFacts(row.id, row.customer_id, row.currency, row.amount_minor, row.category)


def revoke(
    engine: Engine, project: Project, grant_id: str, *, reason: str, actor: str, now: datetime
) -> dict[str, Any]:
    """Remove what is left of a grant (the spent part stays spent)."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput("--reason must say why the grant is revoked")
    if len(reason) > 500:
        raise InvalidInput("--reason is longer than 500 characters")
    return retrying(lambda: _revoke(engine, project, grant_id, reason, actor=actor, now=now))


def _revoke(
    engine: Engine, project: Project, grant_id: str, reason: str, *, actor: str, now: datetime
) -> dict[str, Any]:
    with begin_write(engine) as conn:
        row = _get(conn, project, grant_id)
        ledger_postings.lock_account(conn, project, _wallet(row), now=now)
        row = _get(conn, project, grant_id, lock=True)
        if row.revoked_at is not None:
            raise InvalidInput(f"grant {grant_id} was already revoked ({row.revoke_reason})")
        values: dict[str, Any] = {"revoked_at": now, "revoke_reason": reason}
        if row.expires_at is not None and row.expires_at <= now and row.expired_at is None:
            # Past its expiry: what is left lapses as `credits expire` would post it (breakage
            # or the promotion's expense), never back to cash.
            posting = credit_expired(_facts(row), row.remaining_minor)
            effective, values["expired_at"] = row.expires_at, now
        else:
            posting = credit_revoked(_facts(row), row.remaining_minor, reason)
            effective = now
        if posting is not None:
            ledger_postings.post(
                conn, project, posting, effective_at=effective, actor=actor, now=now
            )
        conn.execute(update(credit_grants_t).where(credit_grants_t.c.id == row.id).values(**values))
        result = grant_dict(_get(conn, project, grant_id), now)
    result["revoked"] = format_minor(row.remaining_minor, row.currency)
    return result


def _wallet(row: Row[Any]) -> AccountRef:
    return AccountRef(WALLET, row.currency, row.customer_id)


@dataclass
class ExpiryReport:
    as_of: datetime
    expired: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"as_of": format_ts(self.as_of), "expired": self.expired, "count": len(self.expired)}


def expire(
    engine: Engine, project: Project, *, as_of: datetime, actor: str, now: datetime
) -> ExpiryReport:
    """Post the expiry of what is left on every grant expired at `as_of` (cron). Each grant
    is its own transaction, effective at its expiry; a rerun finds nothing left to do."""
    if as_of > now:
        raise InvalidInput(
            f"--as-of {format_ts(as_of)} is in the future; credit cannot expire before its time"
        )
    with engine.connect() as conn:
        due = conn.execute(
            _grant_query(project)
            .where(credit_grants_t.c.expires_at <= as_of)
            .where(credit_grants_t.c.expired_at.is_(None), credit_grants_t.c.revoked_at.is_(None))
            .order_by(credit_grants_t.c.expires_at, credit_grants_t.c.id)
        ).all()
    expired = []
    for candidate in due:
        item = retrying(partial(_expire_one, engine, project, candidate, actor=actor, now=now))
        if item is not None:
            expired.append(item)
    return ExpiryReport(as_of, expired)


def _expire_one(
    engine: Engine, project: Project, candidate: Row[Any], *, actor: str, now: datetime
) -> dict[str, Any] | None:
    with begin_write(engine) as conn:
        ledger_postings.lock_account(conn, project, _wallet(candidate), now=now)
        row = _get(conn, project, candidate.id, lock=True)
        if row.expired_at is not None or row.revoked_at is not None:
            return None  # another process got there first
        posting = credit_expired(_facts(row), row.remaining_minor)
        if posting is not None:
            ledger_postings.post(
                conn, project, posting, effective_at=row.expires_at, actor=actor, now=now
            )
        conn.execute(
            update(credit_grants_t).where(credit_grants_t.c.id == row.id).values(expired_at=now)
        )
        item = grant_dict(row, now)
        item["expired"] = format_minor(row.remaining_minor, row.currency)
        return item


def list_grants(
    conn: Connection, project: Project, customer: str, *, at: datetime
) -> list[dict[str, Any]]:
    row = _customer(conn, project, customer)
    grants = conn.execute(
        _grant_query(project)
        .where(credit_grants_t.c.customer_id == row.id)
        .order_by(credit_grants_t.c.created_at, credit_grants_t.c.id)
    ).all()
    return [grant_dict(grant, at) for grant in grants]


def wallet(
    conn: Connection, project: Project, customer: str, *, as_of: datetime, now: datetime
) -> dict[str, Any]:
    """The customer's credit as of a moment: the wallet balance (the sum of its entries up to
    then) and each grant's remaining credit then."""
    row = _customer(conn, project, customer)
    every = conn.execute(
        _grant_query(project)
        .where(credit_grants_t.c.customer_id == row.id)
        .order_by(credit_grants_t.c.created_at, credit_grants_t.c.id)
    ).all()
    remaining = _remaining_as_of(conn, [g.id for g in every], as_of)
    # a grant made later but posted as of earlier (an overpayment received earlier) counts
    grants = [g for g in every if g.created_at <= as_of or remaining.get(g.id, 0)]
    by_currency: dict[str, int] = {}
    items = []
    for grant_row in grants:
        item = grant_dict(grant_row, as_of)
        left = remaining.get(grant_row.id, 0)
        item["remaining"] = format_minor(left, grant_row.currency)
        item["status"] = status(grant_row, as_of, left)
        by_currency[grant_row.currency] = by_currency.get(grant_row.currency, 0) + left
        items.append(item)
    currency = row.currency
    return {
        "customer": row.external_id,
        "currency": currency,
        "balance": format_minor(by_currency.get(currency, 0), currency),
        "as_of": format_ts(as_of),
        "other_currencies": {
            code: format_minor(units, code)
            for code, units in sorted(by_currency.items())
            if code != currency
        },
        "grants": items,
    }


def _remaining_as_of(conn: Connection, grant_ids: Sequence[str], as_of: datetime) -> dict[str, int]:
    if not grant_ids:
        return {}
    rows = conn.execute(
        select(ledger_entries_t.c.grant_id, func.sum(ledger_entries_t.c.amount))
        .where(
            ledger_entries_t.c.grant_id.in_(list(grant_ids)),
            ledger_entries_t.c.effective_at <= as_of,
        )
        .group_by(ledger_entries_t.c.grant_id)
    ).all()
    return {grant_id: -int(total) for grant_id, total in rows}


# --------------------------------------------------------------------------- spending


def spend_on_invoice(
    conn: Connection,
    project: Project,
    *,
    customer_id: str,
    currency: str,
    amount: int,
    now: datetime,
) -> list[Allocation]:
    """Which grants pay up to `amount` of an invoice finalized now, with the wallet locked
    for the rest of the caller's transaction (the caller posts the allocations)."""
    if amount <= 0 or (customer_id, currency) not in customers_with_credit(
        conn, project, {customer_id}
    ):
        return []
    lock_wallet(conn, project, customer_id, currency, now=now)
    rows = conn.execute(
        select(credit_grants_t)
        .where(
            credit_grants_t.c.project_id == project.id, credit_grants_t.c.customer_id == customer_id
        )
        .where(credit_grants_t.c.currency == currency, credit_grants_t.c.remaining_minor > 0)
        .where(credit_grants_t.c.revoked_at.is_(None))
        .with_for_update()
    ).all()
    states = [
        GrantState(
            row.id,
            row.currency,
            row.remaining_minor,
            row.priority,
            row.expires_at,
            row.created_at,
            row.category,
        )
        for row in rows
    ]
    return allocate(amount, states, currency=currency, at=now)


def customers_with_credit(
    conn: Connection, project: Project, customer_ids: set[str]
) -> set[tuple[str, str]]:
    """(customer, currency) pairs holding some credit, among these customers: the invoices
    of the others are finalized without touching a wallet."""
    found: set[tuple[str, str]] = set()
    ids = sorted(customer_ids)
    for start in range(0, len(ids), 500):
        rows = conn.execute(
            select(credit_grants_t.c.customer_id, credit_grants_t.c.currency)
            .where(credit_grants_t.c.project_id == project.id)
            .where(credit_grants_t.c.customer_id.in_(ids[start : start + 500]))
            .where(credit_grants_t.c.remaining_minor > 0)
            .distinct()
        ).all()
        found.update((row.customer_id, row.currency) for row in rows)
    return found


def lock_wallet(
    conn: Connection, project: Project, customer_id: str, currency: str, *, now: datetime
) -> None:
    """The wallet's row lock, which every transaction touching the wallet takes before any
    other ledger row (services/ledger/postings.py): granting, spending, revoking, expiring, an
    overpayment, a credit note or a void giving credit back."""
    ledger_postings.lock_account(conn, project, AccountRef(WALLET, currency, customer_id), now=now)


def allocations_document(allocations: Sequence[Allocation], currency: str) -> list[dict[str, str]]:
    return [{"grant": a.grant, "amount": format_minor(a.amount, currency)} for a in allocations]


def allocations_from(items: Sequence[dict[str, str]], currency: str) -> list[Allocation]:
    return [
        Allocation(item["grant"], to_minor_units(Decimal(item["amount"]), currency))
        for item in items
    ]


def grants_by_id(conn: Connection, project: Project, ids: Sequence[str]) -> dict[str, Row[Any]]:
    rows = conn.execute(_grant_query(project).where(credit_grants_t.c.id.in_(list(ids)))).all()
    return {row.id: row for row in rows}


def explain_allocations(
    conn: Connection, project: Project, allocations: Sequence[Allocation], currency: str
) -> list[dict[str, Any]]:
    """Each grant that paid part of an invoice, with the terms that put it in that order."""
    if not allocations:
        return []
    rows = grants_by_id(conn, project, [a.grant for a in allocations])
    explained = []
    for allocation in allocations:
        row = rows.get(allocation.grant)
        explained.append(
            {
                "grant": allocation.grant,
                "amount": format_minor(allocation.amount, currency),
                "category": None if row is None else row.category,
                "priority": None if row is None else row.priority,
                "expires_at": None if row is None else format_ts(row.expires_at),
                "reason": None if row is None else row.reason,
            }
        )
    return explained
