"""The ledger's pure posting rules and the credit allocation rules (domain/ledger.py,
domain/credits.py): a stateful model of a project's ledger built only from the rules, focused
properties of the rules, and examples of each posting's accounts and signs."""

from __future__ import annotations

import functools
import itertools
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from neruba_cli.domain.credits import GrantState, allocate, by_line, consumption_order, returnable
from neruba_cli.domain.ledger import (
    BREAKAGE,
    CASH,
    MAX_MINOR,
    PROMOTIONAL,
    RECEIVABLE,
    REVENUE_KINDS,
    WALLET,
    AccountRef,
    Allocation,
    Balances,
    Category,
    CreditNoteSettlement,
    CreditReturns,
    Entry,
    GrantFacts,
    InvoiceFacts,
    LedgerError,
    PaymentFacts,
    Posting,
    check_balanced,
    content_hash,
    credit_expired,
    credit_granted,
    credit_note_settled,
    credit_revoked,
    credits_applied,
    invoice_finalized,
    invoice_voided,
    lapse_account,
    overdrawn_grants,
    payment_recorded,
    payment_refunded,
    settle_credit_note,
    sum_settlement,
)

BASE = datetime(2026, 1, 1, tzinfo=UTC)
CUSTOMERS = ("cus_a", "cus_b", "cus_c")
CURRENCIES = ("USD", "JPY")


def hours(n: int) -> datetime:
    return BASE + timedelta(hours=n)


def moves(posting: Posting | None) -> dict[tuple[str, str | None, str | None, str | None], int]:
    """A posting's entries as {(account code, customer, grant, invoice): amount}."""
    assert posting is not None
    result: dict[tuple[str, str | None, str | None, str | None], int] = {}
    for e in posting.entries:
        slot = (e.account.code, e.account.customer, e.grant, e.invoice)
        result[slot] = result.get(slot, 0) + e.amount
    return result


def currency_totals(entries: Any) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for entry in entries:
        totals[entry.account.currency] += entry.amount
    return dict(totals)


# =========================================================================== stateful model


class Conflict(Exception):
    """A key already posted with other content (TigerBeetle's exists_with_different_fields)."""


@dataclass
class GrantRecord:
    facts: GrantFacts
    priority: int
    expires_at: datetime | None
    created_at: datetime
    granted: bool = False  # by credit_granted (not an overpayment's or a credit note's)
    revoked: bool = False
    expired: bool = False  # its expiry was posted
    # what it held when it could no longer be spent (revoked, or past its expiry): from then
    # on only its own revocation or expiry moves it, to zero
    frozen: int | None = None

    def ended(self, at: datetime) -> bool:
        """Can no longer be spent: revoked, or past its expiry (posted or not)."""
        return self.revoked or (self.expires_at is not None and self.expires_at <= at)

    def state(self, remaining: int) -> GrantState:
        return GrantState(
            self.facts.id,
            self.facts.currency,
            remaining,
            self.priority,
            self.expires_at,
            self.created_at,
            self.facts.category,
            self.revoked,
        )


@dataclass
class InvoiceRecord:
    facts: InvoiceFacts
    allocations: list[Allocation] = field(default_factory=list)  # in consumption order
    # per grant, given back by its credit notes (to the wallet or lapsed)
    restored: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    voided: bool = False
    owed: int = 0  # what it should still owe, tallied from the events


@dataclass
class PaymentRecord:
    facts: PaymentFacts
    applied: int
    refunded: int = 0


amounts = st.integers(1, 5_000)
expiries = st.none() | st.integers(1, 6)  # hours after the grant


positive_lines = st.dictionaries(
    st.sampled_from(REVENUE_KINDS[:3]), st.integers(0, 5_000), min_size=1, max_size=3
)
negative_lines = st.dictionaries(
    st.sampled_from(REVENUE_KINDS), st.integers(-3_000, 0), min_size=1, max_size=4
)
one_off = st.none() | st.integers(-5_000, 2_000)


@st.composite
def revenues(draw: st.DrawFn) -> dict[str, int]:
    """An invoice's revenue by line kind: a positive subtotal, zero lines now and then, and
    sometimes a negative one-off charge (a discount) smaller than the rest."""
    revenue = dict(draw(positive_lines))
    first = min(revenue)
    revenue[first] = revenue[first] or 1
    charge = draw(one_off)
    if charge is not None:
        revenue["charge"] = max(charge, 1 - sum(revenue.values()))
    return revenue


@st.composite
def note_revenues(draw: st.DrawFn) -> dict[str, int]:
    """A credit note's (negative) revenue by line kind."""
    revenue = dict(draw(negative_lines))
    first = min(revenue)
    revenue[first] = revenue[first] or -1
    return revenue


class LedgerMachine(RuleBasedStateMachine):
    """One project's ledger in memory, driven only by the domain rules. A posting moves
    `Balances` only when its key is new; the same key again is a no-op when the content hash
    matches and a conflict when it does not."""

    def __init__(self) -> None:
        super().__init__()
        self.balances = Balances()
        self.hashes: dict[str, str] = {}  # key → content hash
        self.log: list[Posting] = []  # applied postings, in order
        self.clock = 0
        self.serial = 0
        self.grants: dict[str, GrantRecord] = {}
        self.invoices: dict[str, InvoiceRecord] = {}  # regular invoices, by internal id
        self.notes: dict[str, InvoiceFacts] = {}  # credit notes, by internal id
        self.payments: dict[str, PaymentRecord] = {}
        # what the money events should have done to the project accounts, tallied from the
        # events themselves (not from the postings): account → shown balance
        self.expected: dict[AccountRef, int] = defaultdict(int)

    # ------------------------------------------------------------------ helpers

    @property
    def now(self) -> datetime:
        return hours(self.clock)

    def next_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}_{self.serial:05d}"

    def remaining(self, grant: str) -> int:
        return self.balances.grants.get(grant, 0)

    def due(self, invoice: str) -> int:
        return self.balances.invoices.get(invoice, 0)

    def post(self, posting: Posting) -> bool:
        """Apply the posting if its key is new (True); a no-op when the key was posted with
        the same content (False); Conflict when with other content."""
        digest = posting.content_hash
        known = self.hashes.get(posting.key)
        if known is not None:
            if known != digest:
                raise Conflict(posting.key)
            return False
        check_balanced(posting.entries)
        assert all(total == 0 for total in currency_totals(posting.entries).values())
        assert overdrawn_grants(posting, self.balances.grants) == [], posting
        for entry in posting.entries:
            grant = self.grants.get(entry.grant) if entry.grant is not None else None
            if grant is not None and grant.ended(self.now):
                # credit of a grant that can no longer be spent never comes back to it
                assert posting.kind in ("credit_revoked", "credit_expired"), posting
                assert posting.reference == grant.facts.id and entry.amount > 0, posting
        self.balances.apply(posting)
        self.hashes[posting.key] = digest
        self.log.append(posting)
        return True

    def record(self, posting: Posting | None) -> None:
        """A new money event: its key must never have been used for anything else."""
        if posting is None:
            return
        assert posting.key not in self.hashes, f"key {posting.key!r} reused by a new event"
        assert self.post(posting)

    def new_grant(
        self,
        customer: str,
        currency: str,
        amount: int,
        category: Category,
        priority: int = 1,
        expires_at: datetime | None = None,
    ) -> GrantRecord:
        facts = GrantFacts(self.next_id("grt"), customer, currency, amount, category)
        grant = GrantRecord(facts, priority, expires_at, self.now)
        self.grants[facts.id] = grant
        return grant

    def tally_removed(self, grant: GrantRecord, amount: int, how: str) -> None:
        """Credit leaving a grant by revocation or expiry, on the project accounts."""
        currency = grant.facts.currency
        if grant.facts.category == "promotional":
            self.expected[AccountRef(PROMOTIONAL, currency)] -= amount
        elif how == "revoked":
            self.expected[AccountRef(CASH, currency)] -= amount
        else:
            self.expected[AccountRef(BREAKAGE, currency)] += amount

    def tally_lapsed(self, allocation: Allocation, currency: str) -> None:
        """Credit given back that lapses at once, on the project accounts: as the grant's own
        expiry would (breakage for paid credit, the promotion's expense reversed)."""
        if allocation.lapse == "paid":
            self.expected[AccountRef(BREAKAGE, currency)] += allocation.amount
        elif allocation.lapse == "promotional":
            self.expected[AccountRef(PROMOTIONAL, currency)] -= allocation.amount

    def with_lapses(self, allocations: list[Allocation]) -> list[Allocation]:
        """Credit to give back, marked to lapse where its grant can no longer be spent
        (revoked, or past its expiry now): the domain's lapse rule, exercised here for credit
        notes and voids alike (services/invoices/settlement.py uses it when voiding)."""
        marked = []
        for allocation in allocations:
            grant = self.grants[allocation.grant]
            lapse = grant.facts.category if grant.ended(self.now) else None
            marked.append(Allocation(allocation.grant, allocation.amount, lapse))
        return marked

    def give_back(self, given: list[Allocation], currency: str, posting: Posting | None) -> None:
        """Record a posting giving credit back (a credit note's or a void's): credit of a grant
        still usable returns to it; credit of one that can no longer be spent lapses and leaves
        the grant as it was."""
        before = {a.grant: self.remaining(a.grant) for a in given}
        back: dict[str, int] = defaultdict(int)
        for allocation in given:
            grant = self.grants[allocation.grant]
            if allocation.lapse is None:
                back[allocation.grant] += allocation.amount
                assert not grant.ended(self.now)
            else:
                assert grant.ended(self.now) and allocation.lapse == grant.facts.category
                how = "revoked" if grant.revoked else "expiry posted" if grant.expired else "due"
                event(f"credit given back lapses ({allocation.lapse}, {how})")
        self.record(posting)
        for allocation in given:
            assert self.remaining(allocation.grant) == before[allocation.grant] + back.get(
                allocation.grant, 0
            )
            self.tally_lapsed(allocation, currency)

    def net_paid(self, invoice: str) -> int:
        return sum(
            p.applied - p.refunded for p in self.payments.values() if p.facts.invoice == invoice
        )

    # ------------------------------------------------------------------ rules

    @initialize(
        customer=st.sampled_from(CUSTOMERS),
        currency=st.sampled_from(CURRENCIES),
        category=st.sampled_from(["paid", "promotional"]),
        amount=amounts,
        expires_in=expiries,
        revenue=revenues(),
    )
    def some_credit_and_an_invoice(
        self,
        customer: str,
        currency: str,
        category: Category,
        amount: int,
        expires_in: int | None,
        revenue: dict[str, int],
    ) -> None:
        """Start with a grant and an invoice, so that every kind of step can run from the
        first one on."""
        self.grant_credit(customer, currency, category, amount, 1, expires_in)
        self.finalize_invoice(customer, currency, revenue)

    @rule(
        customer=st.sampled_from(CUSTOMERS),
        currency=st.sampled_from(CURRENCIES),
        category=st.sampled_from(["paid", "promotional"]),
        amount=amounts,
        priority=st.integers(1, 3),
        expires_in=expiries,
    )
    def grant_credit(
        self,
        customer: str,
        currency: str,
        category: Category,
        amount: int,
        priority: int,
        expires_in: int | None,
    ) -> None:
        expires_at = None if expires_in is None else hours(self.clock + expires_in)
        grant = self.new_grant(customer, currency, amount, category, priority, expires_at)
        posting = credit_granted(grant.facts)
        self.record(posting)
        grant.granted = True
        counter = CASH if category == "paid" else PROMOTIONAL
        self.expected[AccountRef(counter, currency)] += amount
        assert self.remaining(grant.facts.id) == amount

    @rule(by=st.integers(1, 3))
    def advance_clock(self, by: int) -> None:
        self.clock += by
        for grant in self.grants.values():
            if grant.frozen is None and grant.ended(self.now):
                grant.frozen = self.remaining(grant.facts.id)

    @rule(
        customer=st.sampled_from(CUSTOMERS),
        currency=st.sampled_from(CURRENCIES),
        revenue=revenues(),
        data=st.data(),
    )
    def finalize_invoice_for_a_credit_holder(
        self, customer: str, currency: str, revenue: dict[str, int], data: st.DataObject
    ) -> None:
        """Mostly for a customer holding credit in the currency (maybe expiring right now)."""
        holders = sorted(
            {
                (g.facts.customer, g.facts.currency)
                for g in self.grants.values()
                if self.remaining(g.facts.id) > 0
            }
        )
        if holders and data.draw(st.sampled_from([True, True, True, False])):
            customer, currency = data.draw(st.sampled_from(holders))
        self.finalize_invoice(customer, currency, revenue)

    def finalize_invoice(self, customer: str, currency: str, revenue: dict[str, int]) -> None:
        n = self.next_id("inv")
        facts = InvoiceFacts(n, f"INV-{n[4:]}", customer, currency, revenue)
        self.record(invoice_finalized(facts))
        for kind, amount in revenue.items():
            self.expected[AccountRef(f"revenue:{kind}", currency)] += amount
        assert self.due(facts.id) == facts.subtotal > 0
        invoice = InvoiceRecord(facts, owed=facts.subtotal)
        self.invoices[facts.id] = invoice

        mine = [g for g in self.grants.values() if g.facts.customer == customer]
        states = [g.state(self.remaining(g.facts.id)) for g in mine]  # all currencies
        allocations = allocate(facts.subtotal, states, currency=currency, at=self.now)
        used = sum(a.amount for a in allocations)
        assert used <= facts.subtotal
        assert len({a.grant for a in allocations}) == len(allocations)
        for allocation in allocations:
            grant = self.grants[allocation.grant]
            assert grant.facts.customer == customer and grant.facts.currency == currency
            assert not grant.revoked, "a revoked grant was spent"
            assert grant.expires_at is None or grant.expires_at > self.now, "expired grant spent"
            assert 0 < allocation.amount <= self.remaining(allocation.grant)
        if used < facts.subtotal:  # whatever credit was usable is all spent
            for state in states:
                if state.currency == currency and state.usable(self.now):
                    assert Allocation(state.id, state.remaining) in allocations
        self.record(credits_applied(facts, allocations))
        event(f"invoice paid by {min(len(allocations), 3)} grant(s)")
        invoice.allocations = allocations
        invoice.owed -= used

        # where the credit landed, line by line
        lines = [revenue[kind] for kind in sorted(revenue)]
        landed = by_line(lines, allocations)
        assert sum(a.amount for paid in landed for a in paid) == used
        for line, paid in zip(lines, landed, strict=True):
            assert sum(a.amount for a in paid) <= max(line, 0)

    @precondition(lambda self: any(not g.revoked for g in self.grants.values()))
    @rule(data=st.data())
    def revoke_grant(self, data: st.DataObject) -> None:
        grant = self.grants[
            data.draw(st.sampled_from(sorted(g for g, r in self.grants.items() if not r.revoked)))
        ]
        left = self.remaining(grant.facts.id)
        if grant.ended(self.now) and not grant.expired:
            # past its expiry, not yet posted: what is left lapses as the expiry would post
            # it, never back to cash (as services/ledger/credits.py `_revoke` does)
            self.record(credit_expired(grant.facts, left))
            grant.expired = True
            how = "expired"
            event("revoked a grant past its expiry")
        else:
            self.record(credit_revoked(grant.facts, left, "operator"))
            how = "revoked"
        grant.revoked = True
        grant.frozen = 0
        self.tally_removed(grant, left, how)
        assert self.remaining(grant.facts.id) == 0

    def _due_to_expire(self) -> list[GrantRecord]:
        return [
            g
            for g in self.grants.values()
            if not g.revoked and not g.expired and g.expires_at is not None
            if g.expires_at <= self.now
        ]

    @precondition(lambda self: bool(self._due_to_expire()))
    @rule()
    def expire_grants(self) -> None:
        for grant in self._due_to_expire():
            left = self.remaining(grant.facts.id)
            self.record(credit_expired(grant.facts, left))
            grant.expired = True
            grant.frozen = 0
            self.tally_removed(grant, left, "expired")
            assert self.remaining(grant.facts.id) == 0

    def _payable(self) -> list[str]:
        return sorted(i for i, r in self.invoices.items() if not r.voided)

    @precondition(lambda self: bool(self._payable()))
    @rule(data=st.data(), over=st.integers(-3_000, 3_000))
    def record_payment(self, data: st.DataObject, over: int) -> None:
        invoice = self.invoices[data.draw(st.sampled_from(self._payable()))]
        outstanding = max(self.due(invoice.facts.id), 0)
        amount = max(outstanding + over, 1)
        excess = amount - min(amount, outstanding)
        overpayment = None
        if excess:
            overpayment = self.new_grant(
                invoice.facts.customer, invoice.facts.currency, excess, "paid"
            ).facts.id
        facts = PaymentFacts(
            self.next_id("pay"),
            invoice.facts.customer,
            invoice.facts.currency,
            amount,
            invoice.facts.id,
            invoice.facts.number,
        )
        before = self.due(invoice.facts.id)
        posting = payment_recorded(facts, outstanding=outstanding, overpayment_grant=overpayment)
        self.record(posting)
        applied = amount - excess
        self.payments[facts.id] = PaymentRecord(facts, applied)
        invoice.owed -= applied
        self.expected[AccountRef(CASH, facts.currency)] += amount
        assert self.due(invoice.facts.id) == before - applied
        if overpayment is not None:
            event("overpayment into the wallet")
            assert self.remaining(overpayment) == excess

    def _refundable(self) -> list[str]:
        return sorted(p for p, r in self.payments.items() if r.applied > r.refunded)

    @precondition(lambda self: bool(self._refundable()))
    @rule(data=st.data())
    def refund_payment(self, data: st.DataObject) -> None:
        payment = self.payments[data.draw(st.sampled_from(self._refundable()))]
        amount = data.draw(st.integers(1, payment.applied - payment.refunded))
        before = self.due(payment.facts.invoice)
        self.record(payment_refunded(payment.facts, self.next_id("rfd"), amount))
        payment.refunded += amount
        self.invoices[payment.facts.invoice].owed += amount
        self.expected[AccountRef(CASH, payment.facts.currency)] -= amount
        assert self.due(payment.facts.invoice) == before + amount

    @precondition(lambda self: bool(self._payable()))
    @rule(
        data=st.data(),
        revenue=note_revenues(),
        policy=st.sampled_from(["restore", "keep"]),
    )
    def issue_credit_note(
        self, data: st.DataObject, revenue: dict[str, int], policy: CreditReturns
    ) -> None:
        corrected = self.invoices[data.draw(st.sampled_from(self._payable()))]
        n = self.next_id("cn")
        note = InvoiceFacts(
            n, f"CN-{n[3:]}", corrected.facts.customer, corrected.facts.currency, revenue
        )
        self.record(invoice_finalized(note))
        for kind, amount in revenue.items():
            self.expected[AccountRef(f"revenue:{kind}", note.currency)] += amount
        self.notes[note.id] = note
        assert self.due(note.id) == note.subtotal < 0

        amount = -note.subtotal
        outstanding = max(self.due(corrected.facts.id), 0)
        consumed = sum(a.amount for a in corrected.allocations)
        left = returnable(corrected.allocations, corrected.restored)
        assert all(a.lapse is None for a in left)
        back = self.with_lapses(left)
        # marking before or after working out what is left comes to the same
        assert returnable(self.with_lapses(corrected.allocations), corrected.restored) == back
        assert sum(a.amount for a in back) == consumed - sum(corrected.restored.values())
        for allocation in back:
            spent = sum(a.amount for a in corrected.allocations if a.grant == allocation.grant)
            assert 0 < allocation.amount <= spent - corrected.restored.get(allocation.grant, 0)
        settlement = settle_credit_note(
            amount, outstanding=outstanding, returnable=back, policy=policy
        )
        assert sum_settlement(settlement) == amount
        assert settlement.to_invoice <= outstanding
        if policy == "keep":
            assert settlement.restored == ()
        offered = {a.grant: a.lapse for a in back}
        assert all(a.lapse == offered[a.grant] for a in settlement.restored)
        wallet_grant = None
        if settlement.to_wallet:
            wallet_grant = self.new_grant(
                note.customer, note.currency, settlement.to_wallet, "paid"
            ).facts.id
        before = self.due(corrected.facts.id)
        self.give_back(
            list(settlement.restored),
            note.currency,
            credit_note_settled(note, corrected.facts, settlement, wallet_grant=wallet_grant),
        )
        assert self.due(note.id) == 0
        assert self.due(corrected.facts.id) == before - settlement.to_invoice
        for allocation in settlement.restored:
            corrected.restored[allocation.grant] = (
                corrected.restored.get(allocation.grant, 0) + allocation.amount
            )
        corrected.notes.append(note.id)
        corrected.owed -= settlement.to_invoice
        event(f"credit note ({policy}): restored {bool(settlement.restored)}")
        event(f"credit note: to invoice {bool(settlement.to_invoice)}")
        event(f"credit note: to wallet {bool(settlement.to_wallet)}")
        if len(corrected.notes) > 1:
            event("second credit note on an invoice")

    def _voidable(self) -> list[str]:
        return sorted(
            i
            for i, r in self.invoices.items()
            if not r.voided and not r.notes and self.net_paid(i) == 0
        )

    @precondition(lambda self: bool(self._voidable()))
    @rule(data=st.data())
    def void_invoice(self, data: st.DataObject) -> None:
        invoice = self.invoices[data.draw(st.sampled_from(self._voidable()))]
        facts = invoice.facts
        returned = self.with_lapses(invoice.allocations)
        self.give_back(returned, facts.currency, invoice_voided(facts, returned))
        for kind, amount in facts.revenue.items():
            self.expected[AccountRef(f"revenue:{kind}", facts.currency)] -= amount
        invoice.voided = True
        invoice.owed = 0
        event(f"voided an invoice with credits {bool(invoice.allocations)}")
        assert self.due(facts.id) == 0

    @precondition(lambda self: bool(self.log))
    @rule(data=st.data(), factor=st.integers(2, 5))
    def replay(self, data: st.DataObject, factor: int) -> None:
        posting = data.draw(st.sampled_from(self.log))
        before = self.snapshot()
        assert not self.post(posting)
        # the same content rebuilt (entries in another order, another memo) is the same posting
        rebuilt = Posting(
            posting.kind, posting.key, posting.reference, posting.entries[::-1], "again"
        )
        assert rebuilt.content_hash == posting.content_hash
        assert not self.post(rebuilt)
        # the same key with other content is a conflict, and moves nothing
        scaled = tuple(
            Entry(e.account, e.amount * factor, e.grant, e.invoice) for e in posting.entries
        )
        others = [
            Posting(posting.kind, posting.key, posting.reference, scaled),
            Posting(posting.kind, posting.key, posting.reference + "x", posting.entries),
            Posting(
                "credit_revoked" if posting.kind != "credit_revoked" else "credit_expired",
                posting.key,
                posting.reference,
                posting.entries,
            ),
        ]
        for other in others:
            assert other.content_hash != posting.content_hash
            with pytest.raises(Conflict):
                self.post(other)
        # a rule run again on the same facts (a retried command) posts the same thing; on
        # other facts under the same key (a changed grant or invoice) it is a conflict
        granted = sorted(g for g, record in self.grants.items() if record.granted)
        grant = self.grants[data.draw(st.sampled_from(granted))]
        assert not self.post(credit_granted(grant.facts))
        with pytest.raises(Conflict):
            self.post(credit_granted(replace(grant.facts, amount=grant.facts.amount + factor)))
        invoice = self.invoices[data.draw(st.sampled_from(sorted(self.invoices)))].facts
        same = invoice_finalized(invoice)
        assert same is not None and not self.post(same)
        more = {**invoice.revenue, "minimum": invoice.revenue.get("minimum", 0) + factor}
        changed = invoice_finalized(replace(invoice, revenue=more))
        assert changed is not None
        with pytest.raises(Conflict):
            self.post(changed)
        assert self.snapshot() == before

    # ------------------------------------------------------------------ invariants

    def snapshot(self) -> tuple[dict[AccountRef, int], dict[str, int], dict[str, int], int]:
        b = self.balances
        return dict(b.accounts), dict(b.grants), dict(b.invoices), len(self.log)

    @invariant()
    def accounts_sum_to_zero_per_currency(self) -> None:
        totals: dict[str, int] = defaultdict(int)
        for account, balance in self.balances.accounts.items():
            totals[account.currency] += balance
        assert all(total == 0 for total in totals.values()), totals

    @invariant()
    def grants_stay_within_their_amount(self) -> None:
        assert set(self.balances.grants) <= set(self.grants)
        for grant_id, grant in self.grants.items():
            assert 0 <= self.remaining(grant_id) <= grant.facts.amount, grant
            if grant.revoked or grant.expired:
                assert self.remaining(grant_id) == 0
            if grant.ended(self.now):
                assert self.remaining(grant_id) == grant.frozen, grant

    @invariant()
    def wallets_are_the_sum_of_their_grants(self) -> None:
        held: dict[tuple[str, str], int] = defaultdict(int)
        for grant_id, grant in self.grants.items():
            held[grant.facts.customer, grant.facts.currency] += self.remaining(grant_id)
        for customer in CUSTOMERS:
            for currency in CURRENCIES:
                shown = self.balances.shown(AccountRef(WALLET, currency, customer))
                assert shown == held[customer, currency] >= 0

    @invariant()
    def amounts_due_are_never_negative(self) -> None:
        for invoice_id, invoice in self.invoices.items():
            assert self.due(invoice_id) == invoice.owed >= 0
        for note_id in self.notes:
            assert self.due(note_id) == 0
        receivable: dict[tuple[str, str], int] = defaultdict(int)
        for invoice_id, due in self.balances.invoices.items():
            facts = self.invoices[invoice_id].facts if invoice_id in self.invoices else None
            facts = facts or self.notes[invoice_id]
            receivable[facts.customer, facts.currency] += due
        for customer in CUSTOMERS:
            for currency in CURRENCIES:
                account = AccountRef(RECEIVABLE, currency, customer)
                assert self.balances.shown(account) == receivable[customer, currency]

    @invariant()
    def project_accounts_match_the_events(self) -> None:
        for currency in CURRENCIES:
            project = [AccountRef(CASH, currency), AccountRef(BREAKAGE, currency)]
            project += [AccountRef(PROMOTIONAL, currency)]
            project += [AccountRef(f"revenue:{kind}", currency) for kind in REVENUE_KINDS]
            for account in project:
                assert self.balances.shown(account) == self.expected[account], account

    @invariant()
    def replaying_everything_changes_nothing(self) -> None:
        before = self.snapshot()
        for posting in self.log:
            check_balanced(posting.entries)
            assert not any(currency_totals(posting.entries).values())
            assert not self.post(posting)
        assert self.snapshot() == before
        assert len(self.hashes) == len(self.log)


LedgerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLedgerModel = LedgerMachine.TestCase


# =========================================================================== allocation order

times = st.integers(0, 6).map(hours)
creations = st.integers(-3, 0).map(hours)
revocations = st.sampled_from([False, False, False, True])


@st.composite
def grant_states(draw: st.DrawFn) -> list[GrantState]:
    """Grants drawn from a small palette of priorities and expiries per example, so that
    ties (same priority, same expiry) that only the age or the id decides are common."""
    priorities = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
    expiries = draw(st.lists(st.none() | times, min_size=1, max_size=3))
    count = draw(st.integers(0, 10))
    return [
        GrantState(
            id=f"g{index}",
            currency=draw(st.sampled_from(CURRENCIES)),
            remaining=draw(st.integers(-5, 1_000)),
            priority=draw(st.sampled_from(priorities)),
            expires_at=draw(st.sampled_from(expiries)),
            created_at=draw(creations),
            category=draw(st.sampled_from(["paid", "promotional"])),
            revoked=draw(revocations),
        )
        for index in range(count)
    ]


def _before(a: GrantState, b: GrantState) -> int:
    """The documented order, spelled out: priority, then the earliest expiry (never last),
    then the oldest; the id breaks ties."""
    if a.priority != b.priority:
        return -1 if a.priority < b.priority else 1
    if (a.expires_at is None) != (b.expires_at is None):
        return -1 if b.expires_at is None else 1
    if a.expires_at is not None and b.expires_at is not None and a.expires_at != b.expires_at:
        return -1 if a.expires_at < b.expires_at else 1
    if a.created_at != b.created_at:
        return -1 if a.created_at < b.created_at else 1
    return -1 if a.id < b.id else (1 if a.id > b.id else 0)


@settings(max_examples=300, deadline=None)
@given(
    grant_states(),
    st.integers(-100, 4_000),
    st.sampled_from(CURRENCIES),
    st.integers(0, 3).map(hours),
)
def test_allocate_spends_usable_grants_greedily_in_order(
    grants: list[GrantState], amount: int, currency: str, at: datetime
) -> None:
    allocations = allocate(amount, grants, currency=currency, at=at)
    by_id = {g.id: g for g in grants}
    usable = [
        g
        for g in grants
        if g.currency == currency
        and not g.revoked
        and g.remaining > 0
        and (g.expires_at is None or g.expires_at > at)
    ]
    ordered = sorted(usable, key=functools.cmp_to_key(_before))
    assert [g.id for g in consumption_order(usable)] == [g.id for g in ordered]
    # the greedy prefix of the order, never more than the amount or a grant's remaining
    expected, left = [], max(amount, 0)
    for grant in ordered:
        if left == 0:
            break
        take = min(grant.remaining, left)
        expected.append(Allocation(grant.id, take))
        left -= take
    assert allocations == expected
    assert sum(a.amount for a in allocations) == min(
        max(amount, 0), sum(g.remaining for g in usable)
    )
    for allocation in allocations:
        grant = by_id[allocation.grant]
        assert 0 < allocation.amount <= grant.remaining
        assert grant.expires_at is None or grant.expires_at > at
        assert not grant.revoked and grant.currency == currency
    for first, second in itertools.pairwise(allocations):
        assert _before(by_id[first.grant], by_id[second.grant]) < 0


def test_allocate_order_examples() -> None:
    def g(id: str, priority: int, expires: int | None, created: int, left: int = 100) -> GrantState:
        return GrantState(
            id, "USD", left, priority, None if expires is None else hours(expires), hours(created)
        )

    grants = [
        g("never_old", 1, None, -9),
        g("late", 1, 10, -8),
        g("early_new", 1, 5, -1),
        g("early_old", 1, 5, -5),
        g("p2_soon", 2, 4, -9),  # soonest expiry, but priority 2
        g("p1_gone", 1, 3, -9),  # expires exactly when the invoice is finalized
    ]
    allocations = allocate(450, grants, currency="USD", at=hours(3))
    assert allocations == [
        Allocation("early_old", 100),
        Allocation("early_new", 100),
        Allocation("late", 100),
        Allocation("never_old", 100),
        Allocation("p2_soon", 50),
    ]
    assert allocate(0, grants, currency="USD", at=hours(0)) == []
    assert allocate(-5, grants, currency="USD", at=hours(0)) == []
    assert allocate(100, grants, currency="JPY", at=hours(0)) == []
    revoked = GrantState("r", "USD", 100, 1, None, hours(0), revoked=True)
    assert allocate(100, [revoked], currency="USD", at=hours(0)) == []
    assert GrantState("x", "USD", 1, 1, hours(3), hours(0)).usable(hours(3)) is False
    assert GrantState("x", "USD", 1, 1, hours(3), hours(0)).usable(hours(2)) is True


# =========================================================================== returns of credit


lapses: st.SearchStrategy[Category | None] = st.sampled_from([None, None, "paid", "promotional"])


@st.composite
def spent(draw: st.DrawFn) -> list[Allocation]:
    """An invoice's allocations, as allocate returns them: one per grant, positive (some
    marked to lapse, as the services mark credit of a grant that can no longer be spent)."""
    count = draw(st.integers(0, 6))
    return [
        Allocation(f"g{index}", draw(st.integers(1, 500)), draw(lapses)) for index in range(count)
    ]


@settings(max_examples=300, deadline=None)
@given(spent(), st.data())
def test_returnable_is_what_is_left_most_recent_first(
    applied: list[Allocation], data: st.DataObject
) -> None:
    grant_ids = [a.grant for a in applied] + ["stranger"]
    returned = data.draw(st.dictionaries(st.sampled_from(grant_ids), st.integers(0, 600)))
    result = returnable(applied, returned)
    by_grant = {a.grant: a.amount for a in applied}
    lapse = {a.grant: a.lapse for a in applied}
    assert all(a.amount > 0 for a in result)
    for allocation in result:
        assert allocation.amount == by_grant[allocation.grant] - returned.get(allocation.grant, 0)
        assert allocation.lapse == lapse[allocation.grant]  # passed through
    # marking what is left to lapse, or what was spent, comes to the same
    unmarked = [Allocation(a.grant, a.amount) for a in applied]
    assert [
        Allocation(a.grant, a.amount, lapse[a.grant]) for a in returnable(unmarked, returned)
    ] == result
    assert sum(a.amount for a in result) == sum(
        max(a.amount - returned.get(a.grant, 0), 0) for a in applied
    )
    order = [a.grant for a in applied]
    positions = [order.index(a.grant) for a in result]
    assert positions == sorted(positions, reverse=True)  # most recently consumed first


@settings(max_examples=200, deadline=None)
@given(spent(), st.lists(st.integers(1, 800), max_size=5), st.integers(0, 1_000))
def test_successive_credit_notes_restore_at_most_what_was_spent(
    applied: list[Allocation], notes: list[int], outstanding: int
) -> None:
    """Notes under `restore` give credit back most recent first, never more than spent."""
    returned: dict[str, int] = {}
    given_back: list[Allocation] = []
    for amount in notes:
        back = returnable(applied, returned)
        settlement = settle_credit_note(
            amount, outstanding=outstanding, returnable=back, policy="restore"
        )
        assert sum_settlement(settlement) == amount
        for allocation in settlement.restored:
            returned[allocation.grant] = returned.get(allocation.grant, 0) + allocation.amount
            given_back.append(allocation)
        outstanding -= settlement.to_invoice
    spent_by_grant = {a.grant: a.amount for a in applied}
    assert all(returned[g] <= spent_by_grant[g] for g in returned)
    # all notes together gave back a suffix of the spending: the latest grants in full first
    total = sum(returned.values())
    expected: dict[str, int] = {}
    for allocation in reversed(applied):
        take = min(allocation.amount, total)
        if take:
            expected[allocation.grant] = take
        total -= take
    assert returned == expected


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 3_000),
    st.integers(0, 3_000),
    spent().map(lambda a: a[::-1]),
    st.sampled_from(["restore", "keep"]),
)
def test_settle_credit_note_splits_the_whole_amount(
    amount: int, outstanding: int, back: list[Allocation], policy: CreditReturns
) -> None:
    settlement = settle_credit_note(amount, outstanding=outstanding, returnable=back, policy=policy)
    assert sum_settlement(settlement) == amount
    assert settlement.to_invoice >= 0 and settlement.to_wallet >= 0
    assert all(a.amount > 0 for a in settlement.restored)
    restored = sum(a.amount for a in settlement.restored)
    if policy == "keep":
        assert settlement.restored == ()
    else:
        # credits first, in the order given, as much as the note covers
        assert restored == min(amount, sum(a.amount for a in back))
        for given_back, offered in zip(settlement.restored, back, strict=False):
            assert given_back.grant == offered.grant and given_back.amount <= offered.amount
            assert given_back.lapse == offered.lapse
        for given_back, offered in zip(settlement.restored[:-1], back, strict=False):
            assert given_back == offered
    # then what the invoice still owes, then the wallet
    assert settlement.to_invoice == min(outstanding, amount - restored)
    if settlement.to_wallet:
        assert settlement.to_invoice == outstanding


def test_settle_credit_note_examples() -> None:
    back = [Allocation("g2", 300), Allocation("g1", 200)]
    assert settle_credit_note(
        1_000, outstanding=400, returnable=back, policy="restore"
    ) == CreditNoteSettlement(400, (Allocation("g2", 300), Allocation("g1", 200)), 100)
    assert settle_credit_note(
        400, outstanding=400, returnable=back, policy="restore"
    ) == CreditNoteSettlement(0, (Allocation("g2", 300), Allocation("g1", 100)), 0)
    assert settle_credit_note(
        1_000, outstanding=400, returnable=back, policy="keep"
    ) == CreditNoteSettlement(400, (), 600)
    # credit of grants that can no longer be spent is marked to lapse, whole or in part
    ended = [Allocation("g2", 300, "paid"), Allocation("g1", 200, "promotional")]
    assert settle_credit_note(
        400, outstanding=400, returnable=ended, policy="restore"
    ) == CreditNoteSettlement(
        0, (Allocation("g2", 300, "paid"), Allocation("g1", 100, "promotional")), 0
    )
    mixed = [Allocation("g2", 300), Allocation("g1", 200, "paid")]
    assert settle_credit_note(
        600, outstanding=50, returnable=mixed, policy="restore"
    ) == CreditNoteSettlement(50, (Allocation("g2", 300), Allocation("g1", 200, "paid")), 50)
    assert settle_credit_note(
        600, outstanding=50, returnable=mixed, policy="keep"
    ) == CreditNoteSettlement(50, (), 550)
    with pytest.raises(LedgerError):
        settle_credit_note(-1, outstanding=0, returnable=[], policy="keep")
    with pytest.raises(LedgerError):
        settle_credit_note(1, outstanding=-1, returnable=[], policy="keep")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-500, 1_000), max_size=6), st.data())
def test_by_line_covers_the_credit_over_positive_lines(
    lines: list[int], data: st.DataObject
) -> None:
    positive = sum(max(line, 0) for line in lines)
    total = data.draw(st.integers(0, positive))
    cuts = sorted(data.draw(st.lists(st.integers(0, total), max_size=4)))
    bounds = [0, *cuts, total]
    allocations = [
        Allocation(f"g{i}", hi - lo) for i, (lo, hi) in enumerate(itertools.pairwise(bounds))
    ]
    landed = by_line(lines, allocations)
    assert len(landed) == len(lines)
    assert sum(a.amount for paid in landed for a in paid) == total
    for line, paid in zip(lines, landed, strict=True):
        assert sum(a.amount for a in paid) <= max(line, 0)
        assert all(a.amount > 0 for a in paid)
    # every grant lands in full, in the order it was spent, filling lines in invoice order
    flat = [a for paid in landed for a in paid]
    per_grant: dict[str, int] = defaultdict(int)
    for allocation in flat:
        per_grant[allocation.grant] += allocation.amount
    assert per_grant == {a.grant: a.amount for a in allocations if a.amount > 0}
    assert [a.grant for a in flat] == sorted((a.grant for a in flat), key=lambda g: int(g[1:]))
    covered = [sum(a.amount for a in paid) for paid in landed]
    first_short = next(
        (i for i, (line, got) in enumerate(zip(lines, covered, strict=True)) if got < max(line, 0)),
        len(lines),
    )
    assert all(got == 0 for got in covered[first_short + 1 :])


# =========================================================================== postings


def usd(code: str, customer: str | None = None) -> AccountRef:
    return AccountRef(code, "USD", customer)


@st.composite
def balanced_entries(draw: st.DrawFn) -> list[Entry]:
    """Two or more non-zero entries per currency, summing to zero per currency."""
    entries: list[Entry] = []
    for currency in draw(
        st.lists(st.sampled_from(CURRENCIES), min_size=1, max_size=2, unique=True)
    ):
        debits = draw(st.lists(st.integers(1, 10_000), min_size=1, max_size=3))
        credits_ = draw(st.lists(st.integers(1, 10_000), min_size=1, max_size=3))
        gap = sum(debits) - sum(credits_)
        if gap > 0:
            credits_.append(gap)
        elif gap < 0:
            debits.append(-gap)
        for amount in debits:
            entries.append(Entry(AccountRef(CASH, currency), amount))
        for amount in credits_:
            if draw(st.booleans()):
                wallet = AccountRef(WALLET, currency, "cus_a")
                entries.append(Entry(wallet, -amount, grant=f"g{amount}"))
            else:
                entries.append(Entry(AccountRef("revenue:usage", currency), -amount))
    return entries


@settings(max_examples=200, deadline=None)
@given(balanced_entries(), st.randoms(use_true_random=False))
def test_balanced_postings_are_accepted_and_hashed_independently_of_order(
    entries: list[Entry], rng: Any
) -> None:
    posting = Posting("credit_granted", "k", "ref", tuple(entries))
    shuffled = list(entries)
    rng.shuffle(shuffled)
    again = Posting("credit_granted", "other-key", "ref", tuple(shuffled), memo="other memo")
    assert again.content_hash == posting.content_hash  # neither order, key nor memo count
    assert posting.content_hash.startswith("sha256:")
    assert content_hash("credit_revoked", "ref", entries) != posting.content_hash
    assert content_hash("credit_granted", "ref2", entries) != posting.content_hash


@settings(max_examples=200, deadline=None)
@given(balanced_entries(), st.data())
def test_changing_any_amount_changes_the_hash_and_unbalances(
    entries: list[Entry], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(entries) - 1))
    delta = data.draw(st.integers(-50, 50).filter(bool))
    original = entries[index]
    assume(original.amount + delta != 0)
    changed = list(entries)
    changed[index] = Entry(
        original.account, original.amount + delta, original.grant, original.invoice
    )
    assert content_hash("credit_granted", "r", changed) != content_hash(
        "credit_granted", "r", entries
    )
    with pytest.raises(LedgerError, match="sum to zero"):
        Posting("credit_granted", "k", "r", tuple(changed))


@settings(max_examples=200, deadline=None)
@given(
    balanced_entries(),
    st.data(),
    st.sampled_from([0, 1.0, 0.5, Decimal("1"), Decimal("0.01"), True, "1"]),
)
def test_postings_refuse_zero_and_non_integer_entries(
    entries: list[Entry], data: st.DataObject, bad: Any
) -> None:
    index = data.draw(st.integers(0, len(entries) - 1))
    spoiled = list(entries)
    spoiled[index] = Entry(entries[index].account, bad, entries[index].grant)
    with pytest.raises(LedgerError):
        Posting("credit_granted", "k", "r", tuple(spoiled))
    with pytest.raises(LedgerError):
        check_balanced(spoiled)


def test_posting_shape_is_checked() -> None:
    cash, wallet = usd(CASH), usd(WALLET, "cus_a")
    with pytest.raises(LedgerError, match="at least two"):
        Posting("credit_granted", "k", "r", ())
    with pytest.raises(LedgerError, match="at least two"):
        Posting("credit_granted", "k", "r", (Entry(cash, 0),))
    with pytest.raises(LedgerError, match="sum to zero"):
        Posting("credit_granted", "k", "r", (Entry(cash, 100), Entry(wallet, -99)))
    with pytest.raises(LedgerError, match="sum to zero"):  # balanced only across currencies
        Posting(
            "credit_granted",
            "k",
            "r",
            (Entry(cash, 100), Entry(AccountRef(WALLET, "JPY", "cus_a"), -100)),
        )
    with pytest.raises(LedgerError, match="zero entry"):
        Posting("credit_granted", "k", "r", (Entry(cash, 0), Entry(wallet, 0)))
    with pytest.raises(LedgerError, match="not an integer"):
        floats: Any = (1.0, -1.0)
        Posting("credit_granted", "k", "r", (Entry(cash, floats[0]), Entry(wallet, floats[1])))
    with pytest.raises(LedgerError, match="grant"):
        Posting("credit_granted", "k", "r", (Entry(cash, 1, grant="g"), Entry(wallet, -1)))
    with pytest.raises(LedgerError, match="invoice"):
        Posting("credit_granted", "k", "r", (Entry(cash, 1, invoice="i"), Entry(wallet, -1)))
    with pytest.raises(LedgerError, match="unknown account"):
        AccountRef("revenue:tips", "USD")
    with pytest.raises(LedgerError, match="per customer"):
        AccountRef(WALLET, "USD")
    with pytest.raises(LedgerError, match="per customer"):
        AccountRef(CASH, "USD", "cus_a")


# =========================================================================== posting rules

INVOICE = InvoiceFacts("inv_1", "INV-1", "cus_a", "USD", {"usage": 4000, "base_fee": 900})


def test_invoice_finalized_owes_the_subtotal_and_recognises_revenue_by_kind() -> None:
    posting = invoice_finalized(INVOICE)
    assert posting is not None
    assert (posting.kind, posting.key, posting.reference) == (
        "invoice_finalized",
        "invoice:INV-1:finalized",
        "INV-1",
    )
    assert moves(posting) == {
        (RECEIVABLE, "cus_a", None, "inv_1"): 4900,
        ("revenue:usage", None, None, None): -4000,
        ("revenue:base_fee", None, None, None): -900,
    }
    assert all(e.account.currency == "USD" for e in posting.entries)
    # a credit note posts the mirror image
    note = InvoiceFacts("cn_1", "CN-1", "cus_a", "USD", {"usage": -1500, "charge": -500})
    assert moves(invoice_finalized(note)) == {
        (RECEIVABLE, "cus_a", None, "cn_1"): -2000,
        ("revenue:usage", None, None, None): 1500,
        ("revenue:charge", None, None, None): 500,
    }
    # lines that cancel out owe nothing but still move revenue; nothing at all is no posting
    even = InvoiceFacts("inv_2", "INV-2", "cus_a", "USD", {"usage": 700, "charge": -700})
    assert moves(invoice_finalized(even)) == {
        ("revenue:usage", None, None, None): -700,
        ("revenue:charge", None, None, None): 700,
    }
    assert invoice_finalized(InvoiceFacts("inv_3", "INV-3", "cus_a", "USD", {"usage": 0})) is None


def test_credits_applied_take_credit_from_the_wallet_against_the_receivable() -> None:
    posting = credits_applied(INVOICE, [Allocation("g1", 1000), Allocation("g2", 500)])
    assert posting is not None and posting.key == "invoice:INV-1:credits"
    assert moves(posting) == {
        (WALLET, "cus_a", "g1", None): 1000,
        (WALLET, "cus_a", "g2", None): 500,
        (RECEIVABLE, "cus_a", None, "inv_1"): -1500,
    }
    assert credits_applied(INVOICE, []) is None
    with pytest.raises(LedgerError):
        credits_applied(INVOICE, [Allocation("g1", 0)])


@pytest.mark.parametrize(("category", "counter"), [("paid", CASH), ("promotional", PROMOTIONAL)])
def test_credit_granted_debits_its_source_and_credits_the_wallet(
    category: Category, counter: str
) -> None:
    grant = GrantFacts("g1", "cus_a", "USD", 2500, category)
    posting = credit_granted(grant)
    assert (posting.kind, posting.key, posting.reference) == (
        "credit_granted",
        "grant:g1:granted",
        "g1",
    )
    assert moves(posting) == {
        (counter, None, None, None): 2500,
        (WALLET, "cus_a", "g1", None): -2500,
    }
    balances = Balances()
    balances.apply(posting)
    assert balances.grants == {"g1": 2500}
    assert balances.shown(usd(WALLET, "cus_a")) == 2500
    assert balances.shown(usd(counter)) == 2500
    with pytest.raises(LedgerError):
        credit_granted(GrantFacts("g0", "cus_a", "USD", 0, category))


@pytest.mark.parametrize(("category", "counter"), [("paid", CASH), ("promotional", PROMOTIONAL)])
def test_credit_revoked_returns_what_is_left_to_its_source(
    category: Category, counter: str
) -> None:
    grant = GrantFacts("g1", "cus_a", "USD", 2500, category)
    posting = credit_revoked(grant, 700, "mistake")
    assert posting is not None
    assert (posting.key, posting.memo) == ("grant:g1:revoked", "mistake")
    assert moves(posting) == {(WALLET, "cus_a", "g1", None): 700, (counter, None, None, None): -700}
    assert credit_revoked(grant, 0) is None
    # one revocation per grant: credit given back to it later lapses in the giving posting
    again = credit_revoked(grant, 50)
    assert again is not None and again.key == "grant:g1:revoked"


@pytest.mark.parametrize(
    ("category", "counter"), [("paid", BREAKAGE), ("promotional", PROMOTIONAL)]
)
def test_credit_expired_is_breakage_or_reverses_the_promotion(
    category: Category, counter: str
) -> None:
    grant = GrantFacts("g1", "cus_a", "USD", 2500, category)
    posting = credit_expired(grant, 1200)
    assert posting is not None and posting.key == "grant:g1:expired"
    assert moves(posting) == {
        (WALLET, "cus_a", "g1", None): 1200,
        (counter, None, None, None): -1200,
    }
    balances = Balances()
    balances.apply(credit_granted(grant))
    balances.apply(posting)
    assert balances.grants == {"g1": 1300}
    if category == "paid":
        assert balances.shown(usd(BREAKAGE)) == 1200  # revenue, shown positive
    else:
        assert balances.shown(usd(PROMOTIONAL)) == 1300  # the expense that was really given
    assert credit_expired(grant, 0) is None
    # the grant's expiry goes where credit given back to it after its expiry lapses
    assert lapse_account(category, "USD") == usd(counter)
    assert lapse_account(category, "JPY") == AccountRef(counter, "JPY")


PAYMENT = PaymentFacts("pay_1", "cus_a", "USD", 3000, "inv_1", "INV-1")


def test_payment_recorded_brings_cash_in_against_the_receivable() -> None:
    posting = payment_recorded(PAYMENT, outstanding=4900, overpayment_grant=None)
    assert (posting.kind, posting.key, posting.reference) == (
        "payment_recorded",
        "payment:pay_1",
        "pay_1",
    )
    assert moves(posting) == {
        (CASH, None, None, None): 3000,
        (RECEIVABLE, "cus_a", None, "inv_1"): -3000,
    }
    # the excess over what is owed becomes credit in the wallet
    over = payment_recorded(PAYMENT, outstanding=1000, overpayment_grant="g9")
    assert moves(over) == {
        (CASH, None, None, None): 3000,
        (RECEIVABLE, "cus_a", None, "inv_1"): -1000,
        (WALLET, "cus_a", "g9", None): -2000,
    }
    nothing_owed = payment_recorded(PAYMENT, outstanding=-50, overpayment_grant="g9")
    assert moves(nothing_owed) == {
        (CASH, None, None, None): 3000,
        (WALLET, "cus_a", "g9", None): -3000,
    }
    with pytest.raises(LedgerError, match="overpayment"):
        payment_recorded(PAYMENT, outstanding=1000, overpayment_grant=None)
    with pytest.raises(LedgerError):
        payment_recorded(
            PaymentFacts("p", "cus_a", "USD", 0, "inv_1", "INV-1"),
            outstanding=10,
            overpayment_grant=None,
        )


def test_payment_refunded_pays_cash_out_and_the_invoice_owes_it_again() -> None:
    posting = payment_refunded(PAYMENT, "rfd_1", 1200)
    assert (posting.kind, posting.key, posting.reference) == (
        "payment_refunded",
        "refund:rfd_1",
        "pay_1",
    )
    assert moves(posting) == {
        (RECEIVABLE, "cus_a", None, "inv_1"): 1200,
        (CASH, None, None, None): -1200,
    }
    with pytest.raises(LedgerError):
        payment_refunded(PAYMENT, "rfd_2", 0)


def test_credit_note_settled_closes_the_note_against_invoice_grants_and_wallet() -> None:
    note = InvoiceFacts("cn_1", "CN-1", "cus_a", "USD", {"usage": -2000})
    settlement = CreditNoteSettlement(900, (Allocation("g2", 600), Allocation("g1", 300)), 200)
    posting = credit_note_settled(note, INVOICE, settlement, wallet_grant="g_new")
    assert posting is not None
    assert (posting.kind, posting.key, posting.reference) == (
        "credit_note_settled",
        "invoice:CN-1:settled",
        "CN-1",
    )
    assert moves(posting) == {
        (RECEIVABLE, "cus_a", None, "cn_1"): 2000,
        (RECEIVABLE, "cus_a", None, "inv_1"): -900,
        (WALLET, "cus_a", "g2", None): -600,
        (WALLET, "cus_a", "g1", None): -300,
        (WALLET, "cus_a", "g_new", None): -200,
    }
    balances = Balances()
    finalized = invoice_finalized(note)
    assert finalized is not None
    balances.apply(finalized)
    balances.apply(posting)
    assert balances.invoices["cn_1"] == 0
    with pytest.raises(LedgerError, match="needs a grant"):
        credit_note_settled(note, INVOICE, settlement, wallet_grant=None)
    # a note correcting nothing puts it all in the wallet
    alone = credit_note_settled(note, None, CreditNoteSettlement(0, (), 2000), wallet_grant="g3")
    assert moves(alone) == {
        (RECEIVABLE, "cus_a", None, "cn_1"): 2000,
        (WALLET, "cus_a", "g3", None): -2000,
    }


def test_credit_note_settled_lets_credit_of_an_ended_grant_lapse() -> None:
    """Credit given back to a promotion past its expiry reverses the promotion's expense;
    to a revoked paid grant, it is breakage (the cash went back at the revocation)."""
    note = InvoiceFacts("cn_1", "CN-1", "cus_a", "USD", {"usage": -2000})
    settlement = CreditNoteSettlement(
        900,
        (
            Allocation("g2", 600, "promotional"),
            Allocation("g1", 300),
            Allocation("g3", 100, "paid"),
        ),
        100,
    )
    posting = credit_note_settled(note, INVOICE, settlement, wallet_grant="g_new")
    assert moves(posting) == {
        (RECEIVABLE, "cus_a", None, "cn_1"): 2000,
        (RECEIVABLE, "cus_a", None, "inv_1"): -900,
        (PROMOTIONAL, None, None, None): -600,
        (WALLET, "cus_a", "g1", None): -300,
        (BREAKAGE, None, None, None): -100,
        (WALLET, "cus_a", "g_new", None): -100,
    }
    assert posting is not None
    assert all(e.grant is None for e in posting.entries if e.account.code != WALLET)
    balances = Balances()
    g1 = GrantFacts("g1", "cus_a", "USD", 500, "paid")
    g2 = GrantFacts("g2", "cus_a", "USD", 800, "promotional")
    g3 = GrantFacts("g3", "cus_a", "USD", 250, "paid")
    spent = [Allocation("g1", 300), Allocation("g2", 600), Allocation("g3", 100)]
    for step in (
        credit_granted(g1),
        credit_granted(g2),
        credit_granted(g3),
        invoice_finalized(INVOICE),
        credits_applied(INVOICE, spent),
        credit_expired(g2, 200),
        credit_revoked(g3, 150),
        invoice_finalized(note),
        posting,
    ):
        assert step is not None
        assert overdrawn_grants(step, balances.grants) == []
        balances.apply(step)
    # the ended grants stay empty; only the usable one and the new one hold credit
    assert balances.grants == {"g1": 500, "g2": 0, "g3": 0, "g_new": 100}
    assert balances.shown(usd(WALLET, "cus_a")) == 600
    assert balances.shown(usd(PROMOTIONAL)) == 0  # the promotion went wholly unused
    assert balances.shown(usd(BREAKAGE)) == 100
    assert balances.shown(usd(CASH)) == 500 + 250 - 150
    assert balances.invoices == {"inv_1": 4900 - 1000 - 900, "cn_1": 0}


def test_invoice_voided_reverses_revenue_and_returns_credits() -> None:
    returned = [Allocation("g1", 1000), Allocation("g2", 500)]
    posting = invoice_voided(INVOICE, returned)
    assert posting is not None
    assert (posting.kind, posting.key) == ("invoice_voided", "invoice:INV-1:voided")
    assert moves(posting) == {
        (RECEIVABLE, "cus_a", None, "inv_1"): -3400,  # -4900 owed, +1500 the credits paid
        ("revenue:usage", None, None, None): 4000,
        ("revenue:base_fee", None, None, None): 900,
        (WALLET, "cus_a", "g1", None): -1000,
        (WALLET, "cus_a", "g2", None): -500,
    }
    balances = Balances()
    for step in (
        credit_granted(GrantFacts("g1", "cus_a", "USD", 1000, "paid")),
        credit_granted(GrantFacts("g2", "cus_a", "USD", 800, "promotional")),
        invoice_finalized(INVOICE),
        credits_applied(INVOICE, returned),
        posting,
    ):
        assert step is not None
        assert overdrawn_grants(step, balances.grants) == []
        balances.apply(step)
    assert balances.invoices == {"inv_1": 0}
    assert balances.grants == {"g1": 1000, "g2": 800}
    assert balances.shown(usd("revenue:usage")) == balances.shown(usd("revenue:base_fee")) == 0
    # all paid by credit: the receivable entries cancel out and are left out
    full = InvoiceFacts("inv_9", "INV-9", "cus_a", "USD", {"usage": 500})
    assert moves(invoice_voided(full, [Allocation("g1", 500)])) == {
        ("revenue:usage", None, None, None): 500,
        (WALLET, "cus_a", "g1", None): -500,
    }


def test_invoice_voided_lets_credit_of_an_ended_grant_lapse() -> None:
    """Credit of a paid grant revoked since is breakage, not back in the wallet."""
    returned = [Allocation("g1", 1000, "paid"), Allocation("g2", 500)]
    posting = invoice_voided(INVOICE, returned)
    assert posting is not None
    assert moves(posting) == {
        (RECEIVABLE, "cus_a", None, "inv_1"): -3400,
        ("revenue:usage", None, None, None): 4000,
        ("revenue:base_fee", None, None, None): 900,
        (BREAKAGE, None, None, None): -1000,
        (WALLET, "cus_a", "g2", None): -500,
    }
    g1 = GrantFacts("g1", "cus_a", "USD", 1200, "paid")
    balances = Balances()
    for step in (
        credit_granted(g1),
        credit_granted(GrantFacts("g2", "cus_a", "USD", 800, "promotional")),
        invoice_finalized(INVOICE),
        credits_applied(INVOICE, [Allocation("g1", 1000), Allocation("g2", 500)]),
        credit_revoked(g1, 200),
        posting,
    ):
        assert step is not None
        assert overdrawn_grants(step, balances.grants) == []
        balances.apply(step)
    assert balances.invoices == {"inv_1": 0}
    assert balances.grants == {"g1": 0, "g2": 800}  # the revoked grant stays empty
    assert balances.shown(usd(WALLET, "cus_a")) == 800
    assert balances.shown(usd(CASH)) == 1000  # 1200 in, 200 back at the revocation: once
    assert balances.shown(usd(BREAKAGE)) == 1000
    assert balances.shown(usd(PROMOTIONAL)) == 800
    # several lapsing grants of one category come to one entry on their lapse account
    full = InvoiceFacts("inv_9", "INV-9", "cus_a", "USD", {"usage": 900})
    lapsed = [
        Allocation("g1", 500, "paid"),
        Allocation("g3", 300, "paid"),
        Allocation("g2", 100, "promotional"),
    ]
    assert moves(invoice_voided(full, lapsed)) == {
        ("revenue:usage", None, None, None): 900,
        (BREAKAGE, None, None, None): -800,
        (PROMOTIONAL, None, None, None): -100,
    }


def test_balances_show_each_account_on_its_normal_side() -> None:
    balances = Balances()
    for posting in (
        credit_granted(GrantFacts("g1", "cus_a", "USD", 1000, "paid")),
        invoice_finalized(INVOICE),
        credits_applied(INVOICE, [Allocation("g1", 400)]),
        payment_recorded(PAYMENT, outstanding=4500, overpayment_grant=None),
    ):
        assert posting is not None
        balances.apply(posting)
    assert balances.shown(usd(CASH)) == 4000  # debit-normal
    assert balances.shown(usd(RECEIVABLE, "cus_a")) == 1500
    assert balances.shown(usd(WALLET, "cus_a")) == 600  # credit-normal, shown positive
    assert balances.shown(usd("revenue:usage")) == 4000
    assert balances.shown(usd(BREAKAGE)) == 0
    assert balances.accounts[usd(WALLET, "cus_a")] == -600  # raw: a credit
    assert balances.invoices == {"inv_1": 1500}
    assert balances.grants == {"g1": 600}


def test_overdrawn_grants_names_the_grants_a_posting_would_take_below_zero() -> None:
    posting = credits_applied(INVOICE, [Allocation("g1", 500), Allocation("g2", 100)])
    assert posting is not None
    assert overdrawn_grants(posting, {"g1": 500, "g2": 100}) == []
    assert overdrawn_grants(posting, {"g1": 499, "g2": 100}) == ["g1"]
    assert overdrawn_grants(posting, {}) == ["g1", "g2"]


# =========================================================================== limits


def test_amounts_beyond_the_ledgers_64_bit_columns_are_refused() -> None:
    # 200,000,000,000,000,000.00 USD passes money.parse_amount (under 10**26) but is 2·10**19
    # minor units: more than a BIGINT entry holds
    with pytest.raises(LedgerError, match="64-bit"):
        credit_granted(GrantFacts("g1", "cus_a", "USD", 2 * 10**19, "paid"))
    largest = credit_granted(GrantFacts("g1", "cus_a", "USD", MAX_MINOR, "paid"))
    assert largest.content_hash.startswith("sha256:")
