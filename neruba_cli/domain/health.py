"""What `neruba doctor` concludes from what it saw: plain values in, a status and a sentence out.

The service gathers facts (rows, lock states, clock readings, whether a process still runs);
the rules that turn them into ok / warn / fail live here so they can be tested with plain
values, without a database, a dead process or a wrong clock.

How serious each finding is, and why:

- **A stuck billing run is a warning, not a failure.** A run writes whole invoices, a batch per
  transaction, each fenced by its lease (services/billing/writer.py), so a run whose process
  died left nothing half-written: only a `running` record and a month some customers may not
  be invoiced for yet. Rerunning the month finishes the work and closes the old record.
- **A stuck import batch is a warning.** Events are committed a batch at a time and are
  idempotent by key, so importing the same file again completes it without double counting.
  Imports hold no lease, so "stuck" can only mean "running for longer than any import takes".
- **Failed webhook events are a warning**: they wait, whole, for `stripe webhook reprocess`.
- **A malformed STRIPE_API_KEY is a failure**: every Stripe command would fail with it. A
  missing key is fine unless the project has already pushed to Stripe.
- **Clock skew** beyond a few seconds is a warning; beyond five minutes a failure: leases
  expire by the clock, and every stored timestamp (received_at, created_at, finalized_at)
  would disagree with the database's other writers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Status = Literal["ok", "warn", "fail"]

SKEW_WARN = timedelta(seconds=5)
SKEW_FAIL = timedelta(seconds=300)
STUCK_IMPORT_AGE = timedelta(hours=1)


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


# --------------------------------------------------------------------------- billing runs


@dataclass(frozen=True)
class RunFacts:
    """A `running` billing run and the state of its month's lock, as read together."""

    id: str
    period: str
    holder: str
    lock_token: int
    lock_name: str
    lock_holder: str | None  # None: the lock is free (or its row is gone)
    lock_token_now: int | None
    lock_expires_at: datetime | None
    holder_alive: bool | None = None  # None: not knowable from here (another host)


def abandoned_reason(run: RunFacts, now: datetime) -> str | None:
    """Why the run's process can no longer be working on it; None while its lease is live.

    A run is alive only while the lock still names its holder and fencing token and has not
    expired; anything else means no write of it can commit any more (fence() refuses)."""
    if run.lock_holder is None:
        return "its lease was released"
    if run.lock_holder != run.holder or run.lock_token_now != run.lock_token:
        return f"its lease passed to {run.lock_holder}"
    if run.lock_expires_at is not None and run.lock_expires_at <= now:
        return "its lease expired"
    if run.holder_alive is False:
        return f"its process {run.holder} is gone (the lease still names it)"
    return None


def runs_check(runs: list[RunFacts], now: datetime) -> Check:
    stuck = [(run, reason) for run in runs if (reason := abandoned_reason(run, now)) is not None]
    live = len(runs) - len(stuck)
    if not stuck:
        return Check("runs", "ok", f"{live} running, none stuck" if live else "none stuck")
    parts = []
    for run, reason in stuck:
        step = f"rerun `neruba run bill --period {run.period}`"
        if run.holder_alive is False and reason.startswith("its process"):
            # the lease has not expired yet: a rerun on this host takes it over from the dead
            # process (db/locks.py); another host would wait for its expiry
            step += f" on this host (elsewhere, `neruba locks release {run.lock_name}` first)"
        parts.append(f"{run.id} ({run.period}): {reason}; {step}")
    detail = (
        f"{len(stuck)} stuck: "
        + "; ".join(parts)
        + ". Nothing is half-written (a run commits whole invoices); the rerun bills what"
        " is missing and marks the old run failed"
    )
    return Check("runs", "warn", detail)


@dataclass(frozen=True)
class UnbilledFacts:
    """A customer the latest run of a month that covered it could not bill."""

    project: str  # slug
    period: str  # YYYY-MM
    customer: str
    reason: str
    events: tuple[str, ...] = ()  # idempotency keys of the events that caused it


def unbilled_check(unbilled: list[UnbilledFacts]) -> Check:
    """A warning, not a failure: the rest of the month is billed (and finalized); these
    customers wait until what made their invoice unbillable is dealt with and the month is
    run again (docs/guides/billing.md, "Customers a run could not bill")."""
    if not unbilled:
        return Check("unbilled", "ok", "the latest runs billed every customer")
    shown = [
        f"{u.project} {u.period} {u.customer}: {u.reason}"
        + (f" (event {', '.join(u.events)})" if u.events else "")
        for u in unbilled[:10]
    ]
    more = f"; and {len(unbilled) - 10} more" if len(unbilled) > 10 else ""
    return Check(
        "unbilled",
        "warn",
        f"{len(unbilled)} not billed by the latest run of their month: "
        + "; ".join(shown)
        + more
        + ". `neruba check` names them; rerun the month once the cause is dealt with",
    )


# --------------------------------------------------------------------------- imports


@dataclass(frozen=True)
class BatchFacts:
    id: str
    source: str
    started_at: datetime


def imports_check(batches: list[BatchFacts], now: datetime) -> Check:
    """Import batches still `running` after STUCK_IMPORT_AGE: imports hold no lease, so their
    age is the only sign that the process stopped."""
    stuck = [b for b in batches if now - b.started_at > STUCK_IMPORT_AGE]
    if not stuck:
        recent = len(batches)
        return Check("imports", "ok", f"{recent} running, none stuck" if recent else "none stuck")
    named = ", ".join(f"{b.id} ({b.source}, started {_ago(now - b.started_at)} ago)" for b in stuck)
    detail = (
        f"{len(stuck)} import(s) running for over {_ago(STUCK_IMPORT_AGE)}: {named}. If no"
        " `neruba ingest` is still working on them, import the same file again (replay-safe:"
        " what was committed counts as duplicates)"
    )
    return Check("imports", "warn", detail)


# --------------------------------------------------------------------------- webhooks


def webhooks_check(failed: int, oldest: datetime | None, now: datetime) -> Check:
    if failed == 0:
        return Check("webhooks", "ok", "no failed Stripe webhook events")
    since = f", oldest received {_ago(now - oldest)} ago" if oldest is not None else ""
    detail = (
        f"{failed} failed Stripe webhook event(s){since}: "
        "fix the cause, then `neruba stripe webhook reprocess`"
    )
    return Check("webhooks", "warn", detail)


# --------------------------------------------------------------------------- stripe key


def stripe_check(
    present: bool, well_formed: bool, mode: str | None, problem: str | None, pushed: int
) -> Check:
    """Never sees the key itself: only what the gateway's validation made of it."""
    if not present:
        if pushed:
            detail = (
                f"not configured, but {pushed} invoice(s) were pushed to Stripe: set "
                "STRIPE_API_KEY for `stripe pull`, `reconcile stripe` and further pushes"
            )
            return Check("stripe", "warn", detail)
        return Check("stripe", "ok", "not configured")
    if not well_formed:
        return Check("stripe", "fail", problem or "STRIPE_API_KEY is malformed")
    return Check("stripe", "ok", f"STRIPE_API_KEY is set ({mode} mode; not called)")


# --------------------------------------------------------------------------- clock


def skew_status(skew: timedelta) -> Status:
    size = abs(skew)
    if size > SKEW_FAIL:
        return "fail"
    if size > SKEW_WARN:
        return "warn"
    return "ok"


def clock_check(
    local: datetime,
    server: datetime | None,
    newest_stored: datetime | None,
    *,
    newest_what: str = "stored record",
) -> Check:
    """`server` is None for an embedded database (same machine, same clock). `newest_stored`
    is the latest timestamp this or another writer stored: a clock behind it went backwards."""
    findings: list[tuple[Status, str]] = []
    if server is None:
        findings.append(("ok", "embedded database shares this clock"))
    else:
        skew = server - local
        status = skew_status(skew)
        direction = "ahead of" if skew > timedelta(0) else "behind"
        seconds = f"{abs(skew).total_seconds():.3f}"
        text = f"database clock is {seconds} s {direction} this machine's"
        if status != "ok":
            text += " (leases and timestamps depend on agreeing clocks: sync both with NTP)"
        findings.append((status, text))
    if newest_stored is not None and newest_stored - local > SKEW_WARN:
        behind = newest_stored - local
        status = skew_status(behind)
        findings.append(
            (
                status,
                f"this clock is {behind.total_seconds():.3f} s earlier than the newest "
                f"{newest_what} ({newest_stored.isoformat()}): time went backwards here, or "
                "another writer's clock is ahead",
            )
        )
    worst = _worst(status for status, _text in findings)
    return Check("clock", worst, "; ".join(text for _status, text in findings))


def _worst(statuses: Iterable[Status]) -> Status:
    seen = set(statuses)
    if "fail" in seen:
        return "fail"
    return "warn" if "warn" in seen else "ok"


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400}d {seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"
