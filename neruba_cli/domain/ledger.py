"""The ledger's posting rules: what each money event moves, from which account to which.

Every balance Neruba shows — a wallet, a grant's remaining credit, what an invoice still owes,
revenue by kind — is a sum over ledger entries. A *posting* is one balanced transaction: two or
more entries in integer minor units that sum to zero per currency. Amounts are signed: positive
debits, negative credits. The rules below are pure: the services read the state a rule needs
(which grants are left, what an invoice still owes), call the rule, and write what it returns in
one database transaction.

Chart of accounts (per project and currency; the customer accounts also per customer):

- `receivable` (customer, debit-normal): what the customer owes; entries name the invoice they
  belong to, so each invoice's amount due is a sum too.
- `wallet` (customer, credit-normal): credits the customer holds — the project's credit
  liability, one account per customer; entries name the grant they belong to.
- `revenue:base_fee|usage|minimum|charge` (credit-normal): invoiced revenue by line kind.
- `revenue:breakage` (credit-normal): paid credits that expired unused.
- `expense:promotional` (debit-normal): promotional credits granted (reversed when they expire
  or are revoked unused).
- `cash` (debit-normal): cash and payment-provider clearing.

Idempotency: a posting's key is unique per project. Its *content hash* covers the kind, the
reference and the entries (not the time it was posted), so submitting the same key again with
the same content is a no-op, and with other content an error (TigerBeetle's
`exists_with_different_fields`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import orjson

PostingKind = Literal[
    "invoice_finalized",
    "credits_applied",
    "credit_granted",
    "credit_revoked",
    "credit_expired",
    "payment_recorded",
    "payment_refunded",
    "credit_note_settled",
    "invoice_voided",
]
Category = Literal["paid", "promotional"]

RECEIVABLE = "receivable"
WALLET = "wallet"
CASH = "cash"
BREAKAGE = "revenue:breakage"
PROMOTIONAL = "expense:promotional"
REVENUE_KINDS = ("base_fee", "usage", "minimum", "charge")
CUSTOMER_ACCOUNTS = frozenset({RECEIVABLE, WALLET})
DEBIT_NORMAL = frozenset({RECEIVABLE, CASH, PROMOTIONAL})
ACCOUNT_CODES = frozenset(
    {RECEIVABLE, WALLET, CASH, BREAKAGE, PROMOTIONAL} | {f"revenue:{k}" for k in REVENUE_KINDS}
)


MAX_MINOR = 2**63 - 1  # entries and balances are 64-bit integers (BIGINT)


class LedgerError(ValueError):
    """A posting that breaks a ledger invariant: a bug upstream, never written."""


@dataclass(frozen=True, order=True)
class AccountRef:
    code: str
    currency: str
    customer: str | None = None  # the customer's internal id, for customer accounts

    def __post_init__(self) -> None:
        if self.code not in ACCOUNT_CODES:
            raise LedgerError(f"unknown account {self.code!r}")
        if (self.customer is not None) != (self.code in CUSTOMER_ACCOUNTS):
            raise LedgerError(
                f"account {self.code!r} is per customer iff it is {WALLET}/{RECEIVABLE}"
            )

    @property
    def debit_normal(self) -> bool:
        return self.code in DEBIT_NORMAL


@dataclass(frozen=True)
class Entry:
    account: AccountRef
    amount: int  # minor units: positive debit, negative credit
    grant: str | None = None  # wallet entries: the grant the credit belongs to
    invoice: str | None = None  # receivable entries: the invoice the amount belongs to


@dataclass(frozen=True)
class Posting:
    kind: PostingKind
    key: str  # idempotency key, unique per project
    reference: str  # invoice number, grant id or payment id
    entries: tuple[Entry, ...]
    memo: str = ""

    def __post_init__(self) -> None:
        check_balanced(self.entries)

    @property
    def content_hash(self) -> str:
        return content_hash(self.kind, self.reference, self.entries)


def check_balanced(entries: Sequence[Entry]) -> None:
    """At least two non-zero entries, integers only, summing to zero per currency."""
    if len(entries) < 2:
        raise LedgerError("a transaction needs at least two entries")
    totals: dict[str, int] = {}
    for entry in entries:
        if type(entry.amount) is not int:
            raise LedgerError(f"entry amount {entry.amount!r} is not an integer of minor units")
        if entry.amount == 0:
            raise LedgerError("a zero entry moves nothing")
        if abs(entry.amount) > MAX_MINOR:
            raise LedgerError(f"entry amount {entry.amount} exceeds the ledger's 64-bit range")
        if entry.grant is not None and entry.account.code != WALLET:
            raise LedgerError("only wallet entries name a grant")
        if entry.invoice is not None and entry.account.code != RECEIVABLE:
            raise LedgerError("only receivable entries name an invoice")
        currency = entry.account.currency
        totals[currency] = totals.get(currency, 0) + entry.amount
    unbalanced = {currency: total for currency, total in totals.items() if total}
    if unbalanced:
        raise LedgerError(f"entries do not sum to zero: {unbalanced}")


def content_hash(kind: str, reference: str, entries: Iterable[Entry]) -> str:
    rows = sorted(
        (
            e.account.code,
            e.account.currency,
            e.account.customer or "",
            e.grant or "",
            e.invoice or "",
            e.amount,
        )
        for e in entries
    )
    document = {"kind": kind, "reference": reference, "entries": rows}
    return "sha256:" + hashlib.sha256(orjson.dumps(document)).hexdigest()


def _posting(
    kind: PostingKind, key: str, reference: str, entries: Iterable[Entry], memo: str = ""
) -> Posting | None:
    """A posting of the non-zero entries, or None when nothing moves."""
    kept = tuple(entry for entry in entries if entry.amount != 0)
    if not kept:
        return None
    return Posting(kind, key, reference, kept, memo)


def _merge(entries: Iterable[Entry]) -> list[Entry]:
    """Entries on the same account, grant and invoice added up (order of first appearance)."""
    totals: dict[tuple[AccountRef, str | None, str | None], int] = {}
    for entry in entries:
        slot = (entry.account, entry.grant, entry.invoice)
        totals[slot] = totals.get(slot, 0) + entry.amount
    return [
        Entry(account, amount, grant, invoice)
        for (account, grant, invoice), amount in totals.items()
    ]


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class InvoiceFacts:
    """What the ledger needs of a finalized invoice, credit note or supplemental invoice."""

    id: str
    number: str
    customer: str
    currency: str
    revenue: Mapping[str, int]  # line kind → minor units (negative on credit notes)

    @property
    def subtotal(self) -> int:
        return sum(self.revenue.values())


@dataclass(frozen=True)
class GrantFacts:
    id: str
    customer: str
    currency: str
    amount: int
    category: Category


@dataclass(frozen=True)
class Allocation:
    """Part of a grant spent on (or given back from) an invoice. `lapse`: when credit is given
    back to a grant that can no longer be spent (revoked, or past its expiry), it lapses at
    once — to where the grant's own lapse goes (`lapse_account`) — instead of reaching the
    wallet; `lapse` is then the grant's category."""

    grant: str
    amount: int
    lapse: Category | None = None


def _receivable(facts: InvoiceFacts | GrantFacts, amount: int, invoice: str) -> Entry:
    return Entry(AccountRef(RECEIVABLE, facts.currency, facts.customer), amount, invoice=invoice)


def _wallet(customer: str, currency: str, amount: int, grant: str) -> Entry:
    return Entry(AccountRef(WALLET, currency, customer), amount, grant=grant)


def _counter_account(grant: GrantFacts) -> AccountRef:
    """Where a grant's credit came from: cash for paid credits, an expense for promotions."""
    return AccountRef(CASH if grant.category == "paid" else PROMOTIONAL, grant.currency)


def lapse_account(category: Category, currency: str) -> AccountRef:
    """Where credit goes when it lapses unused: breakage revenue for paid credit, the
    promotion's expense reversed for promotional credit."""
    return AccountRef(BREAKAGE if category == "paid" else PROMOTIONAL, currency)


def _given_back(customer: str, currency: str, allocation: Allocation) -> Entry:
    """Credit returning from an invoice: to its grant, or lapsing at once."""
    if allocation.lapse is not None:
        return Entry(lapse_account(allocation.lapse, currency), -allocation.amount)
    return _wallet(customer, currency, -allocation.amount, allocation.grant)


# --------------------------------------------------------------------------- rules


def invoice_finalized(invoice: InvoiceFacts) -> Posting | None:
    """The customer owes the invoice's subtotal; revenue is recognised by line kind.
    A credit note (negative lines) posts the mirror image."""
    entries = [_receivable(invoice, invoice.subtotal, invoice.id)]
    for kind in sorted(invoice.revenue):
        entries.append(
            Entry(AccountRef(f"revenue:{kind}", invoice.currency), -invoice.revenue[kind])
        )
    return _posting(
        "invoice_finalized", f"invoice:{invoice.number}:finalized", invoice.number, _merge(entries)
    )


def credits_applied(invoice: InvoiceFacts, allocations: Sequence[Allocation]) -> Posting | None:
    """Credits leave the wallet, grant by grant, and pay part of what the invoice is owed."""
    used = sum(a.amount for a in allocations)
    if any(a.amount <= 0 for a in allocations):
        raise LedgerError("credits applied must be positive")
    entries = [_wallet(invoice.customer, invoice.currency, a.amount, a.grant) for a in allocations]
    entries.append(_receivable(invoice, -used, invoice.id))
    return _posting("credits_applied", f"invoice:{invoice.number}:credits", invoice.number, entries)


def credit_granted(grant: GrantFacts) -> Posting:
    if grant.amount <= 0:
        raise LedgerError("a grant must be positive")
    posting = _posting(
        "credit_granted",
        f"grant:{grant.id}:granted",
        grant.id,
        [
            Entry(_counter_account(grant), grant.amount),
            _wallet(grant.customer, grant.currency, -grant.amount, grant.id),
        ],
    )
    assert posting is not None
    return posting


def credit_revoked(grant: GrantFacts, remaining: int, reason: str = "") -> Posting | None:
    """What is left of the grant leaves the wallet, back to where it came from."""
    return _posting(
        "credit_revoked",
        f"grant:{grant.id}:revoked",
        grant.id,
        [
            _wallet(grant.customer, grant.currency, remaining, grant.id),
            Entry(_counter_account(grant), -remaining),
        ],
        reason,
    )


def credit_expired(grant: GrantFacts, remaining: int) -> Posting | None:
    """What is left at expiry leaves the wallet: unused paid credit is breakage revenue, an
    unused promotion reverses its expense."""
    counter = lapse_account(grant.category, grant.currency)
    return _posting(
        "credit_expired",
        f"grant:{grant.id}:expired",
        grant.id,
        [_wallet(grant.customer, grant.currency, remaining, grant.id), Entry(counter, -remaining)],
    )


@dataclass(frozen=True)
class PaymentFacts:
    id: str
    customer: str
    currency: str
    amount: int
    invoice: str  # internal id
    number: str  # the invoice's number


def payment_recorded(
    payment: PaymentFacts, *, outstanding: int, overpayment_grant: str | None
) -> Posting:
    """Cash in; the invoice's receivable goes down by up to what it still owes; any excess
    becomes credit in the customer's wallet (a paid grant, `overpayment_grant`)."""
    if payment.amount <= 0:
        raise LedgerError("a payment must be positive")
    applied = min(payment.amount, max(outstanding, 0))
    excess = payment.amount - applied
    if excess and overpayment_grant is None:
        raise LedgerError("an overpayment needs a grant to hold the excess")
    entries = [
        Entry(AccountRef(CASH, payment.currency), payment.amount),
        Entry(
            AccountRef(RECEIVABLE, payment.currency, payment.customer),
            -applied,
            invoice=payment.invoice,
        ),
    ]
    if excess:
        assert overpayment_grant is not None
        entries.append(_wallet(payment.customer, payment.currency, -excess, overpayment_grant))
    posting = _posting("payment_recorded", f"payment:{payment.id}", payment.id, entries)
    assert posting is not None
    return posting


def payment_refunded(payment: PaymentFacts, refund_id: str, amount: int) -> Posting:
    """Cash out; the invoice owes the refunded amount again."""
    if amount <= 0:
        raise LedgerError("a refund must be positive")
    posting = _posting(
        "payment_refunded",
        f"refund:{refund_id}",
        payment.id,
        [
            Entry(
                AccountRef(RECEIVABLE, payment.currency, payment.customer),
                amount,
                invoice=payment.invoice,
            ),
            Entry(AccountRef(CASH, payment.currency), -amount),
        ],
    )
    assert posting is not None
    return posting


@dataclass(frozen=True)
class CreditNoteSettlement:
    """Where a credit note's amount goes (all minor units, positive)."""

    to_invoice: int  # lowers what the corrected invoice still owes
    restored: tuple[Allocation, ...]  # credits given back to the grants they came from
    to_wallet: int  # the rest, as new credit (a paid grant)


CreditReturns = Literal["restore", "keep"]


def settle_credit_note(
    amount: int,
    *,
    outstanding: int,
    returnable: Sequence[Allocation],
    policy: CreditReturns,
) -> CreditNoteSettlement:
    """Split a credit note's `amount` (positive) between the corrected invoice and the wallet.

    `restore`: first give back the credits the corrected invoice consumed (most recently
    consumed first, up to what was consumed and not yet given back; credit of a grant that can
    no longer be spent lapses at once, see Allocation), then lower what it still owes, and put
    any rest in the wallet. `keep`: credits stay spent; lower what is owed, the rest goes to
    the wallet."""
    if amount < 0 or outstanding < 0:
        raise LedgerError("settlement amounts are positive")
    left = amount
    restored: list[Allocation] = []
    if policy == "restore":
        for allocation in returnable:
            take = min(allocation.amount, left)
            if take > 0:
                restored.append(Allocation(allocation.grant, take, allocation.lapse))
                left -= take
    to_invoice = min(outstanding, left)
    left -= to_invoice
    return CreditNoteSettlement(to_invoice, tuple(restored), left)


def credit_note_settled(
    note: InvoiceFacts,
    corrected: InvoiceFacts | None,
    settlement: CreditNoteSettlement,
    *,
    wallet_grant: str | None,
) -> Posting | None:
    """Close the credit note's (negative) receivable against the corrected invoice, the
    grants it restores and the wallet."""
    entries = [_receivable(note, sum_settlement(settlement), note.id)]
    if settlement.to_invoice:
        assert corrected is not None
        entries.append(_receivable(corrected, -settlement.to_invoice, corrected.id))
    entries += [_given_back(note.customer, note.currency, a) for a in settlement.restored]
    if settlement.to_wallet:
        if wallet_grant is None:
            raise LedgerError("credit put in the wallet needs a grant to hold it")
        entries.append(_wallet(note.customer, note.currency, -settlement.to_wallet, wallet_grant))
    return _posting("credit_note_settled", f"invoice:{note.number}:settled", note.number, entries)


def sum_settlement(settlement: CreditNoteSettlement) -> int:
    return settlement.to_invoice + sum(a.amount for a in settlement.restored) + settlement.to_wallet


def invoice_voided(invoice: InvoiceFacts, returned: Sequence[Allocation]) -> Posting | None:
    """Undo a finalized invoice: revenue and receivable reversed, its credits given back
    (or lapsing, for grants that can no longer be spent)."""
    entries = [_receivable(invoice, -invoice.subtotal, invoice.id)]
    for kind in sorted(invoice.revenue):
        entries.append(
            Entry(AccountRef(f"revenue:{kind}", invoice.currency), invoice.revenue[kind])
        )
    used = sum(a.amount for a in returned)
    entries += [_given_back(invoice.customer, invoice.currency, a) for a in returned]
    entries.append(_receivable(invoice, used, invoice.id))
    return _posting(
        "invoice_voided", f"invoice:{invoice.number}:voided", invoice.number, _merge(entries)
    )


# --------------------------------------------------------------------------- balances


@dataclass
class Balances:
    """Account balances and per-grant / per-invoice sub-balances after a run of postings:
    the reference the database's running balances are checked against."""

    accounts: dict[AccountRef, int] = field(default_factory=dict)
    grants: dict[str, int] = field(default_factory=dict)  # grant → remaining (positive)
    invoices: dict[str, int] = field(default_factory=dict)  # invoice → amount due

    def apply(self, posting: Posting) -> None:
        for entry in posting.entries:
            self.accounts[entry.account] = self.accounts.get(entry.account, 0) + entry.amount
            if entry.grant is not None:
                self.grants[entry.grant] = self.grants.get(entry.grant, 0) - entry.amount
            if entry.invoice is not None:
                self.invoices[entry.invoice] = self.invoices.get(entry.invoice, 0) + entry.amount

    def shown(self, account: AccountRef) -> int:
        """The balance on the account's normal side (a wallet's credit shows positive)."""
        raw = self.accounts.get(account, 0)
        return raw if account.debit_normal else -raw


def overdrawn_grants(posting: Posting, remaining: Mapping[str, int]) -> list[str]:
    """Grants this posting would take below zero, given what each has left."""
    after = dict(remaining)
    for entry in posting.entries:
        if entry.grant is not None:
            after[entry.grant] = after.get(entry.grant, 0) - entry.amount
    return sorted(grant for grant, left in after.items() if left < 0)
