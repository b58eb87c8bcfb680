"""Writing postings to the ledger, and reading it back.

`post` is the only code that writes ledger rows. In the caller's transaction it checks the
posting's idempotency key, writes the transaction and its entries, and moves the running
balances that are views over them: each account's balance, each grant's remaining credit and
each invoice's amount due. Nothing updates or deletes an entry; a mistake is corrected by a
reversing posting.

Running balances are moved with `SET x = x + delta`, so concurrent postings serialize on the
rows they share and never lose an update. A grant's remaining credit may not go below zero: the
update carries the condition, so two processes spending the same grant cannot both succeed.

Lock order, so that concurrent transactions cannot deadlock: the invoice a transaction
settles (`FOR UPDATE`), then the customer's wallet account (`lock_account`, taken before any
other ledger row by every transaction that touches a wallet: services/credits.lock_wallet),
then the other accounts in id order, then grants, then invoices' amounts due.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Table,
    and_,
    case,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from neruba_cli.db.ids import new_id
from neruba_cli.db.schema import (
    Customer,
    Project,
)
from neruba_cli.db.tables import (
    credit_grants_t,
    customers_t,
    invoices_t,
    ledger_accounts_t,
    ledger_entries_t,
    ledger_transactions_t,
)
from neruba_cli.domain.errors import InvalidInput, NerubaError
from neruba_cli.domain.ledger import ACCOUNT_CODES, CUSTOMER_ACCOUNTS, AccountRef, Posting
from neruba_cli.domain.money import format_amount, format_minor, from_minor_units
from neruba_cli.domain.timestamps import format_ts


class IdempotencyConflict(NerubaError):
    """The key was used before for a transaction with other content."""

    kind = "idempotency_conflict"


class Overdrawn(NerubaError):
    """A posting would take a grant below zero: another process spent it first."""

    kind = "overdrawn"


@dataclass(frozen=True)
class Posted:
    transaction: str  # its id
    created: bool  # False when the key was already posted with the same content


def post(
    conn: Connection,
    project: Project,
    posting: Posting,
    *,
    effective_at: datetime,
    actor: str,
    now: datetime,
) -> Posted:
    """Write one balanced posting (or find it already written) in the caller's transaction."""
    return post_many(conn, project, [posting], effective_at=effective_at, actor=actor, now=now)[0]


def post_many(
    conn: Connection,
    project: Project,
    postings: Sequence[Posting],
    *,
    effective_at: datetime,
    actor: str,
    now: datetime,
) -> list[Posted]:
    """Write postings (or find them already written) in the caller's transaction, in a few
    statements whatever their number: a billing run finalizes invoices a hundred at a time."""
    if len({posting.key for posting in postings}) != len(postings):
        raise ValueError("two postings with one idempotency key in one batch")
    found = _existing(conn, project, postings)
    fresh = [posting for posting in postings if posting.key not in found]
    if fresh:
        ids = [new_id("txn") for _ in fresh]
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(ledger_transactions_t),
                    [
                        _transaction_row(txn_id, project, posting, effective_at, actor, now)
                        for txn_id, posting in zip(ids, fresh, strict=True)
                    ],
                )
        except IntegrityError:
            if len(postings) == 1:
                # Another process posted the same key between our look and our insert.
                again = _existing(conn, project, postings)
                if not again:
                    raise
                return [again[postings[0].key]]
            return [
                post(conn, project, posting, effective_at=effective_at, actor=actor, now=now)
                for posting in postings
            ]
        refs = {entry.account for posting in fresh for entry in posting.entries}
        accounts = account_ids(conn, project, refs, now=now)
        rows = [
            {
                "transaction_id": txn_id,
                "project_id": project.id,
                "account_id": accounts[entry.account],
                "amount": entry.amount,
                "grant_id": entry.grant,
                "invoice_id": entry.invoice,
                "effective_at": effective_at,
            }
            for txn_id, posting in zip(ids, fresh, strict=True)
            for entry in posting.entries
        ]
        for start in range(0, len(rows), 1000):
            conn.execute(insert(ledger_entries_t), rows[start : start + 1000])
        _move_balances(conn, fresh, accounts)
        found.update(
            {posting.key: Posted(txn_id, True) for txn_id, posting in zip(ids, fresh, strict=True)}
        )
    return [found[posting.key] for posting in postings]


def _transaction_row(
    txn_id: str,
    project: Project,
    posting: Posting,
    effective_at: datetime,
    actor: str,
    now: datetime,
) -> dict[str, Any]:
    return {
        "id": txn_id,
        "project_id": project.id,
        "idempotency_key": posting.key,
        "kind": posting.kind,
        "reference": posting.reference[:64],
        "content_hash": posting.content_hash,
        "memo": posting.memo[:500],
        "actor": actor[:200],
        "effective_at": effective_at,
        "created_at": now,
    }


def _existing(conn: Connection, project: Project, postings: Sequence[Posting]) -> dict[str, Posted]:
    """The postings whose key is already taken: the same content is a no-op, other content
    an error."""
    wanted = {posting.key: posting for posting in postings}
    keys = list(wanted)
    found: dict[str, Posted] = {}
    for start in range(0, len(keys), 500):
        rows = conn.execute(
            select(
                ledger_transactions_t.c.id,
                ledger_transactions_t.c.idempotency_key,
                ledger_transactions_t.c.content_hash,
                ledger_transactions_t.c.kind,
            ).where(
                ledger_transactions_t.c.project_id == project.id,
                ledger_transactions_t.c.idempotency_key.in_(keys[start : start + 500]),
            )
        ).all()
        for row in rows:
            posting = wanted[row.idempotency_key]
            if row.content_hash != posting.content_hash:
                raise IdempotencyConflict(
                    f"ledger key {posting.key!r} was already posted ({row.kind}, {row.id}) with "
                    "other amounts or accounts; nothing was written",
                    hint="a key names one transaction; use a new key for a new one",
                )
            found[posting.key] = Posted(row.id, False)
    return found


def _move_balances(
    conn: Connection, postings: Sequence[Posting], ids: dict[AccountRef, str]
) -> None:
    by_account: dict[str, int] = {}
    by_grant: dict[str, int] = {}
    by_invoice: dict[str, int] = {}
    for posting in postings:
        for entry in posting.entries:
            account = ids[entry.account]
            by_account[account] = by_account.get(account, 0) + entry.amount
            if entry.grant is not None:
                by_grant[entry.grant] = by_grant.get(entry.grant, 0) - entry.amount
            if entry.invoice is not None:
                by_invoice[entry.invoice] = by_invoice.get(entry.invoice, 0) + entry.amount
    _add(
        conn,
        ledger_accounts_t,
        ledger_accounts_t.c.balance,
        by_account,
        bump=ledger_accounts_t.c.version,
    )
    for grant, delta in sorted(by_grant.items()):
        moved = conn.execute(
            update(credit_grants_t)
            .where(credit_grants_t.c.id == grant, credit_grants_t.c.remaining_minor + delta >= 0)
            .values(remaining_minor=credit_grants_t.c.remaining_minor + delta)
        ).rowcount
        if moved != 1:
            raise Overdrawn(
                f"grant {grant} has less credit left than the posting takes; nothing was written",
                hint="another process spent it at the same time; run again",
            )
    _add(conn, invoices_t, invoices_t.c.amount_due_minor, by_invoice)


def _add(
    conn: Connection,
    table: Table,
    column: Column[Any],
    deltas: dict[str, int],
    *,
    bump: Column[Any] | None = None,
) -> None:
    """`column += delta` per row id, a few hundred rows per statement, in id order."""
    items = sorted((row_id, delta) for row_id, delta in deltas.items() if delta or bump is not None)
    for start in range(0, len(items), 300):
        chunk = items[start : start + 300]
        if len(chunk) == 1:
            change: Any = literal(chunk[0][1], BigInteger())
        else:
            change = case(
                {row_id: literal(delta, BigInteger()) for row_id, delta in chunk},
                value=table.c.id,
            )
        values: dict[Any, Any] = {column: column + change}
        if bump is not None:
            values[bump] = bump + 1
        conn.execute(
            update(table).where(table.c.id.in_([row_id for row_id, _ in chunk])).values(values)
        )


def account_ids(
    conn: Connection, project: Project, refs: Iterable[AccountRef], *, now: datetime
) -> dict[AccountRef, str]:
    """The id of each account, opened on first use (one query for all of them)."""
    wanted = set(refs)
    holders = sorted({ref.customer or "" for ref in wanted})
    found: dict[AccountRef, str] = {}
    for start in range(0, len(holders), 500):
        rows = conn.execute(
            select(
                ledger_accounts_t.c.id,
                ledger_accounts_t.c.code,
                ledger_accounts_t.c.currency,
                ledger_accounts_t.c.holder,
            ).where(
                ledger_accounts_t.c.project_id == project.id,
                ledger_accounts_t.c.holder.in_(holders[start : start + 500]),
            )
        ).all()
        for row in rows:
            ref = AccountRef(row.code, row.currency, row.holder or None)
            if ref in wanted:
                found[ref] = row.id
    missing = sorted(wanted - set(found))
    if len(missing) > 1:
        opened = {ref: new_id("acc") for ref in missing}
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(ledger_accounts_t),
                    [
                        _account_row(project, ref, account_id, now)
                        for ref, account_id in opened.items()
                    ],
                )
            return found | opened
        except IntegrityError:
            pass  # another process opened some of them meanwhile: one by one below
    for ref in missing:
        found[ref] = _account_id(conn, project, ref, now)
    return found


def _account_row(
    project: Project, ref: AccountRef, account_id: str, now: datetime
) -> dict[str, Any]:
    return {
        "id": account_id,
        "project_id": project.id,
        "code": ref.code,
        "currency": ref.currency,
        "holder": ref.customer or "",
        "customer_id": ref.customer,
        "balance": 0,
        "version": 0,
        "created_at": now,
    }


def _account_id(conn: Connection, project: Project, ref: AccountRef, now: datetime) -> str:
    holder = ref.customer or ""
    query = select(ledger_accounts_t.c.id).where(
        ledger_accounts_t.c.project_id == project.id,
        ledger_accounts_t.c.code == ref.code,
        ledger_accounts_t.c.currency == ref.currency,
        ledger_accounts_t.c.holder == holder,
    )
    found = conn.execute(query).scalar()
    if found is not None:
        return str(found)
    account_id = new_id("acc")
    try:
        with conn.begin_nested():
            conn.execute(
                insert(ledger_accounts_t).values(**_account_row(project, ref, account_id, now))
            )
    except IntegrityError:
        return str(conn.execute(query).scalar_one())  # opened by another process meanwhile
    return account_id


def lock_account(conn: Connection, project: Project, ref: AccountRef, *, now: datetime) -> str:
    """Take the account row's write lock until the caller commits: every consumer of a wallet
    takes it first, so reads of the wallet's grants that follow see the latest postings."""
    account_id = _account_id(conn, project, ref, now)
    conn.execute(
        update(ledger_accounts_t)
        .where(ledger_accounts_t.c.id == account_id)
        .values(version=ledger_accounts_t.c.version + 1)
    )
    return account_id


# --------------------------------------------------------------------------- reading


def show(
    conn: Connection,
    project: Project,
    *,
    customer: Customer | None = None,
    account: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Transactions with their entries, oldest first: all of them, one customer's, or those
    touching accounts of one code (`credit_liability` names every wallet); `limit`: the
    latest ones."""
    entry_filter = [ledger_entries_t.c.project_id == project.id]
    if customer is not None:
        entry_filter.append(ledger_accounts_t.c.customer_id == customer.id)
    if account is not None:
        code, holder = account_filter(account)
        entry_filter.append(ledger_accounts_t.c.code == code)
        if holder is not None:
            entry_filter.append(
                ledger_accounts_t.c.customer_id.in_(
                    select(customers_t.c.id).where(
                        customers_t.c.project_id == project.id,
                        customers_t.c.external_id == holder,
                    )
                )
            )
    matching = (
        select(ledger_entries_t.c.transaction_id)
        .join(ledger_accounts_t, ledger_accounts_t.c.id == ledger_entries_t.c.account_id)
        .where(and_(*entry_filter))
    )
    # Entries are numbered in the order they were written: the posting order within a moment.
    written = (
        select(ledger_entries_t.c.transaction_id, func.min(ledger_entries_t.c.id).label("seq"))
        .where(ledger_entries_t.c.project_id == project.id)
        .group_by(ledger_entries_t.c.transaction_id)
        .subquery()
    )
    order = (ledger_transactions_t.c.effective_at, written.c.seq)
    query = (
        select(ledger_transactions_t)
        .join(written, written.c.transaction_id == ledger_transactions_t.c.id)
        .where(
            ledger_transactions_t.c.project_id == project.id,
            ledger_transactions_t.c.id.in_(matching),
        )
    )
    if since is not None:
        query = query.where(ledger_transactions_t.c.effective_at >= since)
    if limit is not None:  # the latest `limit`, still printed oldest first
        if limit < 1:
            raise InvalidInput("--limit must be at least 1")
        newest = query.order_by(*(column.desc() for column in order)).limit(limit)
        transactions = list(reversed(conn.execute(newest).all()))
    else:
        transactions = list(conn.execute(query.order_by(*order)).all())
    entries = _entries_of(conn, [t.id for t in transactions])
    return [
        {
            "id": t.id,
            "kind": t.kind,
            "reference": t.reference,
            "idempotency_key": t.idempotency_key,
            "effective_at": format_ts(t.effective_at),
            "posted_at": format_ts(t.created_at),
            "actor": t.actor,
            "memo": t.memo,
            "entries": entries.get(t.id, []),
        }
        for t in transactions
    ]


def account_filter(name: str) -> tuple[str, str | None]:
    """`--account`: a code (`wallet`, `revenue:usage`, `credit_liability` for every wallet) or
    one customer's account as `ledger show` prints it (`wallet:CUSTOMER`)."""
    if name == "credit_liability":
        return "wallet", None
    code, _, customer = name.partition(":")
    if code in CUSTOMER_ACCOUNTS and customer:
        return code, customer
    if name not in ACCOUNT_CODES:
        raise InvalidInput(
            f"--account {name!r} is not an account",
            hint="one of "
            + ", ".join(sorted(ACCOUNT_CODES | {"credit_liability"}))
            + ", or wallet:CUSTOMER / receivable:CUSTOMER",
        )
    return name, None


def _entries_of(
    conn: Connection, transaction_ids: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for start in range(0, len(transaction_ids), 500):
        chunk = transaction_ids[start : start + 500]
        rows = conn.execute(
            select(
                ledger_entries_t.c.transaction_id,
                ledger_entries_t.c.amount,
                ledger_entries_t.c.grant_id,
                ledger_entries_t.c.invoice_id,
                ledger_accounts_t.c.code,
                ledger_accounts_t.c.currency,
                customers_t.c.external_id,
                invoices_t.c.number,
            )
            .join(ledger_accounts_t, ledger_accounts_t.c.id == ledger_entries_t.c.account_id)
            .outerjoin(customers_t, customers_t.c.id == ledger_accounts_t.c.customer_id)
            .outerjoin(invoices_t, invoices_t.c.id == ledger_entries_t.c.invoice_id)
            .where(ledger_entries_t.c.transaction_id.in_(chunk))
            .order_by(ledger_entries_t.c.id)
        ).all()
        for row in rows:
            amount = from_minor_units(abs(row.amount), row.currency)
            found.setdefault(row.transaction_id, []).append(
                {
                    "account": account_label(row.code, row.external_id),
                    "currency": row.currency,
                    "debit": format_amount(amount, row.currency) if row.amount > 0 else None,
                    "credit": format_amount(amount, row.currency) if row.amount < 0 else None,
                    "amount_minor": row.amount,
                    "grant": row.grant_id,
                    "invoice": row.number,
                }
            )
    return found


def account_label(code: str, customer: str | None) -> str:
    return f"{code}:{customer}" if customer is not None else code


def balances(conn: Connection, project: Project) -> list[dict[str, Any]]:
    """Every account with its running balance (on its normal side) and entry count."""
    counts = (
        select(ledger_entries_t.c.account_id, func.count().label("entries"))
        .where(ledger_entries_t.c.project_id == project.id)
        .group_by(ledger_entries_t.c.account_id)
        .subquery()
    )
    rows = conn.execute(
        select(ledger_accounts_t, customers_t.c.external_id, counts.c.entries)
        .outerjoin(customers_t, customers_t.c.id == ledger_accounts_t.c.customer_id)
        .outerjoin(counts, counts.c.account_id == ledger_accounts_t.c.id)
        .where(ledger_accounts_t.c.project_id == project.id)
        .order_by(ledger_accounts_t.c.code, ledger_accounts_t.c.currency, customers_t.c.external_id)
    ).all()
    result = []
    for row in rows:
        ref = AccountRef(row.code, row.currency, row.customer_id)
        shown = row.balance if ref.debit_normal else -row.balance
        result.append(
            {
                "account": account_label(row.code, row.external_id),
                "currency": row.currency,
                "normal": "debit" if ref.debit_normal else "credit",
                "balance": format_minor(shown, row.currency),
                "entries": int(row.entries or 0),
            }
        )
    return result
