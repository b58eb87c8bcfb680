"""Billing runs after the fact: list them, show one and what it wrote, diff two.

`run diff A B` compares the invoices of the runs' month(s) as they stood after each run. The
state of an invoice "as of" a run is its latest revision (`invoice_revisions`) written by a run
that started at or before that run (by `started_at`, ties broken by run id, which is
time-ordered). Only invoices whose version differs between the two states are loaded and
compared line by line.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from neruba_cli.db.schema import BillingRun, Customer, Invoice, InvoiceRevision, Project
from neruba_cli.db.tables import billing_runs_t
from neruba_cli.domain.errors import NotFound
from neruba_cli.domain.invoice import diff_lines
from neruba_cli.domain.timestamps import format_ts

SUMMARY_COUNTS = (
    "invoices",
    "created",
    "updated",
    "corrections",
    "voided",
    "unchanged",
    "late_events",
    "finalized",
)


def list_runs(session: Session, project: Project, period: str | None = None) -> list[BillingRun]:
    """Runs newest first (a run that changed nothing left no record)."""
    query = select(BillingRun).where(BillingRun.project_id == project.id)
    if period is not None:
        query = query.where(BillingRun.period == period)
    return list(session.scalars(query.order_by(BillingRun.started_at.desc(), BillingRun.id.desc())))


def get_run(session: Session, project: Project, run_id: str) -> BillingRun:
    run = session.scalar(
        select(BillingRun).where(BillingRun.project_id == project.id, BillingRun.id == run_id)
    )
    if run is None:
        raise NotFound(
            f"run {run_id!r} does not exist in project {project.slug!r}",
            hint="`neruba run list` shows the runs",
        )
    return run


def failing_customers(conn: Connection, project_id: str, label: str) -> list[dict[str, Any]]:
    """The customers month `label` currently fails to bill: for each customer, what the
    latest completed run that covered it recorded (a run with `--customer` covers those
    only). Entries as in `run bill --json`'s `failed`; a run record keeps the first failures
    within its size, so a run with thousands lists the first ones."""
    rows = conn.execute(
        select(billing_runs_t.c.summary)
        .where(billing_runs_t.c.project_id == project_id, billing_runs_t.c.period == label)
        .where(billing_runs_t.c.status == "completed")
        .order_by(billing_runs_t.c.started_at.desc(), billing_runs_t.c.id.desc())
    )
    decided: set[str] = set()
    failing: list[dict[str, Any]] = []
    for (text,) in rows:
        summary = orjson.loads(text) if text else {}
        failing += [f for f in summary.get("failed") or [] if f["customer"] not in decided]
        covered = summary.get("customers")
        if covered is None:
            break
        decided.update(covered)
    return failing


def failed_labels(conn: Connection, project_id: str) -> list[str]:
    """The months with a completed run that recorded failures (candidates for
    `failing_customers`)."""
    rows = conn.execute(
        select(billing_runs_t.c.period)
        .where(billing_runs_t.c.project_id == project_id)
        .where(billing_runs_t.c.status == "completed")
        .where(billing_runs_t.c.summary.like('%"failed":[{%'))
        .distinct()
    )
    return sorted(row.period for row in rows)


def run_to_dict(run: BillingRun) -> dict[str, Any]:
    summary = orjson.loads(run.summary) if run.summary else {}
    return {
        "id": run.id,
        "period": run.period,
        "status": run.status,
        "actor": run.actor,
        "holder": run.holder,
        "started_at": format_ts(run.started_at),
        "finished_at": format_ts(run.finished_at),
        "as_of": format_ts(run.as_of),
        "fingerprint": run.fingerprint,
        **{key: summary.get(key) for key in SUMMARY_COUNTS},
        "message": run.message,
        "failed": summary.get("failed") or [],
    }


def run_invoices(session: Session, project: Project, run: BillingRun) -> list[dict[str, Any]]:
    """What the run wrote: each invoice version it stored (created, updated, a correction) and
    each draft it voided, with the total as that run left it."""
    rows = session.execute(
        select(
            InvoiceRevision.version,
            InvoiceRevision.content,
            Invoice.number,
            Invoice.revision,
            Customer.external_id,
        )
        .join(Invoice, Invoice.id == InvoiceRevision.invoice_id)
        .join(Customer, Customer.id == Invoice.customer_id)
        .where(Invoice.project_id == project.id, InvoiceRevision.run_id == run.id)
    ).all()
    written = []
    for row in rows:
        content = orjson.loads(row.content)
        first = "corrected" if row.revision > 0 else "created"
        action = "updated" if row.version > 1 else first
        written.append(
            {
                "number": row.number,
                "customer": row.external_id,
                "kind": content["kind"],
                "total": content["total"],
                "version": row.version,
                "action": action,
            }
        )
    voided = session.execute(
        select(Invoice.number, Invoice.total, Invoice.kind, Invoice.version, Customer.external_id)
        .join(Customer, Customer.id == Invoice.customer_id)
        .where(Invoice.project_id == project.id, Invoice.run_id == run.id)
        .where(Invoice.status == "void")
    ).all()
    for void in voided:
        written.append(
            {
                "number": void.number,
                "customer": void.external_id,
                "kind": void.kind,
                "total": str(void.total),
                "version": void.version,
                "action": "voided",
            }
        )
    return sorted(written, key=lambda item: (item["number"], item["version"], item["action"]))


# --------------------------------------------------------------------------- diff


@dataclass(frozen=True)
class _Version:
    invoice_id: str
    revision_id: int
    order: tuple[datetime, str]  # (started_at, run id) of the run that wrote it


def diff_runs(session: Session, project: Project, run_a: str, run_b: str) -> list[dict[str, Any]]:
    """Invoices that differ between the state after run A and the state after run B, each with
    its changed lines: `[{customer, number, before_total, after_total, lines: [{description,
    before, after}]}]`, ordered by customer and number. A side with no invoice is None."""
    first, second = get_run(session, project, run_a), get_run(session, project, run_b)
    periods = sorted({first.period, second.period})
    invoices = {
        row.id: row
        for row in session.execute(
            select(
                Invoice.id,
                Invoice.number,
                Invoice.voided_at,
                Customer.external_id,
            )
            .join(Customer, Customer.id == Invoice.customer_id)
            .where(Invoice.project_id == project.id, Invoice.period.in_(periods))
        ).all()
    }
    versions: dict[str, list[_Version]] = defaultdict(list)
    for start in range(0, len(invoices), 500):
        ids = list(invoices)[start : start + 500]
        rows = session.execute(
            select(
                InvoiceRevision.id,
                InvoiceRevision.invoice_id,
                BillingRun.started_at,
                BillingRun.id.label("run_id"),
            )
            .join(BillingRun, BillingRun.id == InvoiceRevision.run_id)
            .where(InvoiceRevision.invoice_id.in_(ids))
        ).all()
        for row in rows:
            versions[row.invoice_id].append(
                _Version(row.invoice_id, row.id, (row.started_at, row.run_id))
            )
    before = _state(invoices, versions, first)
    after = _state(invoices, versions, second)
    changed = sorted(
        (
            invoice_id
            for invoice_id in set(before) | set(after)
            if _revision(before.get(invoice_id)) != _revision(after.get(invoice_id))
        ),
        key=lambda i: (invoices[i].external_id, invoices[i].number),
    )
    contents = _contents(
        session,
        [v.revision_id for i in changed for v in (before.get(i), after.get(i)) if v is not None],
    )
    result = []
    for invoice_id in changed:
        old = _content(contents, before.get(invoice_id))
        new = _content(contents, after.get(invoice_id))
        lines = diff_lines(
            old["lines"] if old else [],
            new["lines"] if new else [],
        )
        if not lines and (old or {}).get("total") == (new or {}).get("total"):
            continue  # a new version with the same lines and total
        result.append(
            {
                "customer": invoices[invoice_id].external_id,
                "number": invoices[invoice_id].number,
                "before_total": old["total"] if old else None,
                "after_total": new["total"] if new else None,
                "lines": [
                    {"description": c.description, "before": c.before, "after": c.after}
                    for c in lines
                ],
            }
        )
    return result


def _state(
    invoices: dict[str, Any], versions: dict[str, list[_Version]], run: BillingRun
) -> dict[str, _Version]:
    """Each invoice's latest version written at or before `run` (none if voided by then)."""
    cutoff = (run.started_at, run.id)
    state: dict[str, _Version] = {}
    for invoice_id, found in versions.items():
        voided_at = invoices[invoice_id].voided_at
        if voided_at is not None and voided_at <= run.started_at:
            continue
        eligible = [v for v in found if v.order <= cutoff]
        if eligible:
            state[invoice_id] = max(eligible, key=lambda v: (v.order, v.revision_id))
    return state


def _revision(version: _Version | None) -> int | None:
    return None if version is None else version.revision_id


def _contents(session: Session, revision_ids: list[int]) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(revision_ids), 500):
        rows = session.execute(
            select(InvoiceRevision.id, InvoiceRevision.content).where(
                InvoiceRevision.id.in_(revision_ids[start : start + 500])
            )
        ).all()
        found.update({row.id: orjson.loads(row.content) for row in rows})
    return found


def _content(contents: dict[int, dict[str, Any]], version: _Version | None) -> Any:
    return None if version is None else contents[version.revision_id]
