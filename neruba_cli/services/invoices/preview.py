"""`invoice preview`: what a customer's open billing periods would bill if they ended now.

The run's own plan, aggregate and build steps (services/billing: usage over the whole period),
writing nothing; the document has the shape of `invoice show --json` with status `preview`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from neruba_cli.db.schema import Project
from neruba_cli.db.tables import customers_t
from neruba_cli.domain.errors import NotFound
from neruba_cli.domain.invoice import BuiltInvoice
from neruba_cli.domain.periods import Period
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.billing import run as billing_run
from neruba_cli.services.tenancy.customer_hints import customer_not_found


def preview(
    engine: Engine, project: Project, customer: str, *, at: datetime
) -> list[dict[str, Any]]:
    """What the customer's billing periods that contain `at` would bill if they ended now:
    the run's own plan, aggregate and build steps (usage over the whole period), writing
    nothing."""
    found: list[dict[str, Any]] = []
    with engine.connect() as conn:
        for label in billing_run.open_period_labels(conn, project, customer, at):
            for item, built in billing_run.compute_invoices(
                conn, project, label, customer, as_of=at
            ):
                if item.period.start <= at < item.period.end:
                    found.append(preview_document(customer, label, item.period, built, at))
        if not found and not _exists(conn, project, customer):
            raise customer_not_found(conn, project, customer)
    if not found:
        raise NotFound(
            f"customer {customer!r} has no billing period containing {format_ts(at)}",
            hint="`neruba subscription list --customer` shows its subscriptions",
        )
    return sorted(found, key=lambda doc: (doc["period"]["end"], doc["period"]["start"]))


def _exists(conn: Connection, project: Project, external_id: str) -> bool:
    found = conn.execute(
        select(customers_t.c.id).where(
            customers_t.c.project_id == project.id, customers_t.c.external_id == external_id
        )
    ).first()
    return found is not None


def preview_document(
    customer: str, label: str, period: Period, built: BuiltInvoice, at: datetime
) -> dict[str, Any]:
    content = built.content
    return {
        "number": None,
        "customer": customer,
        "currency": content["currency"],
        "status": "preview",
        "period": {"start": format_ts(period.start), "end": format_ts(period.end)},
        "lines": content["lines"],
        "subtotal": content["subtotal"],
        "credits_applied": content["credits_applied"],
        "total": content["total"],
        "corrects": None,
        "run": None,
        "fingerprint": built.fingerprint,
        "credits": [],  # credit is spent at finalization
        "amount_paid": None,
        "amount_due": None,
        "settlement": None,
        "kind": content["kind"],
        "label": label,
        "version": None,
        "finalized_at": None,
        "voided_at": None,
        "void_reason": None,
        "at": format_ts(at),
    }
