"""Typed table handles: the Core `Table` of every model in db/schema.py.

Bulk paths, reports and sweeps query with SQLAlchemy Core; they take their tables from here
rather than from `Model.__table__`, which SQLAlchemy types as a bare `FromClause` (no
`insert()`, no `update()` for the type checker). A handle is named after its table with `_t`,
so it never collides with the rows a function holds (`invoices`, `customers`). A test checks
that every table of the schema has its handle here.
"""

from __future__ import annotations

from sqlalchemy import Table

from neruba_cli.db import schema


def _table(model: type[schema.Base]) -> Table:
    table = model.__table__
    if not isinstance(table, Table):  # a mapped class always has one; this narrows the type
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return table


projects_t = _table(schema.Project)
members_t = _table(schema.Member)
customers_t = _table(schema.Customer)
audit_records_t = _table(schema.AuditRecord)
locks_t = _table(schema.Lock)
api_keys_t = _table(schema.ApiKey)
invites_t = _table(schema.Invite)
meters_t = _table(schema.Meter)
plans_t = _table(schema.Plan)
plan_versions_t = _table(schema.PlanVersion)
subscriptions_t = _table(schema.Subscription)
subscription_phases_t = _table(schema.SubscriptionPhase)
events_t = _table(schema.Event)
event_versions_t = _table(schema.EventVersion)
import_batches_t = _table(schema.ImportBatch)
charges_t = _table(schema.Charge)
billing_runs_t = _table(schema.BillingRun)
invoice_sequences_t = _table(schema.InvoiceSequence)
invoices_t = _table(schema.Invoice)
invoice_lines_t = _table(schema.InvoiceLine)
invoice_revisions_t = _table(schema.InvoiceRevision)
ledger_accounts_t = _table(schema.LedgerAccount)
ledger_transactions_t = _table(schema.LedgerTransaction)
ledger_entries_t = _table(schema.LedgerEntry)
credit_grants_t = _table(schema.CreditGrant)
payments_t = _table(schema.Payment)
refunds_t = _table(schema.Refund)
stripe_links_t = _table(schema.StripeLink)
stripe_objects_t = _table(schema.StripeObject)
stripe_cursors_t = _table(schema.StripeCursor)
stripe_webhook_events_t = _table(schema.StripeWebhookEvent)
export_watermarks_t = _table(schema.ExportWatermark)
retention_runs_t = _table(schema.RetentionRun)
idempotency_records_t = _table(schema.IdempotencyRecord)
