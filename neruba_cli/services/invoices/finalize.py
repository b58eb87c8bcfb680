"""`invoice finalize`: drafts become immutable, posted to the ledger and settled.

One invoice by number, or every draft of a month whose period has ended. Finalizing takes the
same lease lock as `run bill` for the invoice's month and fences every write with it, so it
never interleaves with a run writing that month.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Row

from neruba_cli.db import locks
from neruba_cli.db.retry import retrying
from neruba_cli.db.schema import Project
from neruba_cli.db.tables import invoices_t
from neruba_cli.domain import lock_names
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.invoice_limits import Unbillable
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.invoices import settlement
from neruba_cli.services.invoices.read import get, invoice_query

WRITE_BATCH = 100


@dataclass
class FinalizeReport:
    period: str
    finalized: list[str] = field(default_factory=list)
    still_open: list[tuple[str, datetime]] = field(default_factory=list)  # number, period end
    unpostable: list[tuple[str, str]] = field(default_factory=list)  # number, why


def finalize(
    engine: Engine,
    project: Project,
    *,
    number: str | None = None,
    label: str | None = None,
    now: datetime,
    actor: str = "system",
    holder: str | None = None,
) -> FinalizeReport:
    """Drafts become immutable. One invoice by number, or every draft of a month whose period
    has ended; under the month's run lock, every write fenced by it."""
    if (number is None) == (label is None):
        raise InvalidInput("name one invoice NUMBER or --period P, not both and not neither")
    if number is not None:
        with engine.connect() as conn:
            row = get(conn, project, number)
        _check_finalizable(row, now)
        report = FinalizeReport(period=row.period)
        with locks.held(
            engine, lock_names.billing(project.slug, row.period), holder=holder
        ) as lease:
            _finalize_ids(engine, project, lease, [row], now, actor, strict=True)
        report.finalized.append(row.number)
        return report
    assert label is not None
    report = FinalizeReport(period=label)
    with locks.held(engine, lock_names.billing(project.slug, label), holder=holder) as lease:
        with engine.connect() as conn:
            drafts = conn.execute(
                invoice_query(project)
                .where(invoices_t.c.period == label, invoices_t.c.status == "draft")
                .order_by(invoices_t.c.number)
            ).all()
        ended = []
        for row in drafts:
            if row.period_end > now:
                continue
            try:
                settlement.check_postable(row)
            except Unbillable as exc:
                report.unpostable.append((row.number, exc.message))
                continue
            ended.append(row)
        report.still_open = [(row.number, row.period_end) for row in drafts if row.period_end > now]
        if report.still_open and not ended and not report.unpostable:
            number, end = report.still_open[0]
            raise InvalidInput(
                f"the billing periods of {label} have not ended yet ({number} runs until "
                f"{format_ts(end)}); nothing was finalized",
                hint="finalize after the period ends; until then a run recomputes the drafts",
            )
        for start in range(0, len(ended), WRITE_BATCH):
            chunk = ended[start : start + WRITE_BATCH]
            report.finalized += _finalize_ids(
                engine, project, lease, chunk, now, actor, strict=False
            )
    return report


def _check_finalizable(row: Row[Any], now: datetime) -> None:
    if row.status != "draft":
        raise InvalidInput(
            f"invoice {row.number} is {row.status}; only drafts can be finalized",
            hint="a finalized invoice never changes; late events produce a correction",
        )
    if row.period_end > now:
        raise InvalidInput(
            f"invoice {row.number}'s period has not ended yet (it runs until "
            f"{format_ts(row.period_end)}); it cannot be finalized",
            hint="finalize after the period ends; until then a run recomputes the draft",
        )
    settlement.check_postable(row)


def _finalize_ids(
    engine: Engine,
    project: Project,
    lease: locks.Lease,
    rows: Sequence[Row[Any]],
    now: datetime,
    actor: str,
    *,
    strict: bool,
) -> list[str]:
    """Finalize, post and settle a chunk of drafts in one fenced transaction."""
    if not rows:
        return []

    def attempt() -> list[str]:
        with locks.fenced(engine, lease) as conn:
            return settlement.finalize(
                conn, project, [row.id for row in rows], now=now, actor=actor, strict=strict
            )

    return retrying(attempt)
