"""The bodies the read routes answer with: the JSON the CLI twin prints with `--json`.

Every field is declared in the order the service writes it, and amounts and timestamps stay
the strings the services format (decimal strings, RFC 3339 in UTC): the API re-encodes
nothing. The parts whose keys vary by line kind (invoice lines, their explanation, tiers)
are open objects.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Open(BaseModel):
    """A body that may gain keys in a later version; clients ignore the ones they don't know."""

    model_config = ConfigDict(extra="allow")


class Customer(Open):
    id: str = Field(description="Neruba's id (cus_...).")
    external_id: str = Field(description="Your id for the customer, unique per project.")
    name: str | None
    email: str | None
    currency: str
    timezone: str
    stripe_id: str | None
    created_at: str
    updated_at: str
    forgotten_at: str | None
    forgotten_by: str | None


class Span(BaseModel):
    start: str
    end: str


class InvoiceHeading(Open):
    """What names an invoice: the first keys of its list form and of its explanation."""

    number: str
    customer: str
    kind: str
    status: str
    label: str = Field(description="The month whose run billed it (YYYY-MM).")
    period: Span
    currency: str


class InvoiceSummary(InvoiceHeading):
    """The list form of an invoice (`neruba invoice list --json`)."""

    subtotal: str
    credits_applied: str
    total: str
    amount_paid: str | None
    amount_due: str | None
    corrects: str | None
    run: str | None
    fingerprint: str | None
    version: int | None


class InvoiceDocument(Open):
    """The invoice JSON (`neruba invoice show NUMBER --json`)."""

    number: str | None
    customer: str
    currency: str
    status: str
    period: Span
    lines: list[dict[str, Any]]
    subtotal: str
    credits_applied: str
    total: str
    corrects: str | None
    run: str | None
    fingerprint: str | None
    credits: list[dict[str, Any]]
    amount_paid: str | None
    amount_due: str | None
    settlement: dict[str, Any] | None
    kind: str
    label: str
    version: int | None
    finalized_at: str | None
    voided_at: str | None
    void_reason: str | None


class PreviewDocument(InvoiceDocument):
    """An invoice document of an open period (`neruba invoice preview --json`): no number,
    status `preview`, and the moment it was computed for."""

    at: str


class Usage(BaseModel):
    """A customer's open billing periods containing `at`, each as it would bill now."""

    customer: str
    at: str
    periods: list[PreviewDocument]


class Correction(BaseModel):
    number: str
    status: str


class Explanation(InvoiceHeading):
    """Why each amount is what it is (`neruba invoice explain NUMBER --json`)."""

    lines: list[dict[str, Any]]
    subtotal: str
    credits_applied: str
    credits: list[dict[str, Any]]
    total: str
    amount_paid: str | None
    amount_due: str | None
    settlement: dict[str, Any] | None
    corrects: str | None
    corrected_by: list[Correction]
    correction_note: str | None
    run: str | None
    fingerprint: str | None
    version: int | None
    event_count: int | None


class Grant(Open):
    id: str
    customer: str
    amount: str
    remaining: str
    currency: str
    priority: int
    expires_at: str | None
    category: str | None
    status: str
    reason: str | None
    source: str | None
    source_ref: str | None
    idempotency_key: str | None
    created_at: str
    revoked_at: str | None
    revoke_reason: str | None


class Wallet(Open):
    """A customer's credit (`neruba wallet show --json`): the balance in the customer's
    currency, other currencies' balances, and each grant with what remains of it."""

    customer: str
    currency: str
    balance: str
    as_of: str
    other_currencies: dict[str, str]
    grants: list[Grant]
