"""Where an export starts and where the next one will: `--since`, `--name` and watermarks.

`--since` and the watermark stored under `--name` mean one of two things:

- Journals (events, usage, ledger) are append-only and numbered by an autoincrement id
  (events.id, ledger_entries.id). Their watermark is that number, and a run exports the rows
  with `previous < id <= high`. `high` is the largest id *after every transaction still writing
  the table has finished*: on PostgreSQL a SHARE lock (`LOCK TABLE ... IN SHARE MODE`) and on
  MariaDB `LOCK TABLES ... READ` wait for those writers and keep new ones out for the instant
  it takes to read MAX(id); SQLite has a single writer, whose uncommitted rows always get ids
  above every committed one. So no row is ever skipped because it committed late with a
  smaller id (ids are handed out in insert order, not commit order), and none is exported
  twice: exactly once across runs. (Timestamps cannot do this: an import stamps all its
  batches with the time it started, and commits them over minutes.) usage rows of an
  incremental run are therefore increments over the events that arrived since: add them up.
- Documents (invoices, lines, credits, payments) change after they are written: an invoice is
  finalized and paid, a grant consumed, a payment refunded. Their watermark is a time and a
  run exports the rows *changed* at or after it (invoices: `updated_at` or a ledger posting on
  the invoice; credits: created, revoked, expired or a posting on the grant; payments: created
  or refunded). The new watermark is the export's start minus `overlap` (default 5 minutes),
  earlier still while a billing run holds its lease (a run stamps everything it writes with
  its start time), so a change committed by a command still running is picked up by the next
  run. Rows in the overlap are exported again: consumers upsert by the row's key (number,
  (invoice, line), grant, payment/refund), which they must do anyway since a document
  reappears whenever it changes. At least once, never skipped.

A named export (`--name`) holds a lease (`SLUG:export:NAME:KIND`), so two cron hosts never run
it at once, and stores its new watermark only after the file is complete under its real name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, select, update
from sqlalchemy.exc import DBAPIError

from neruba_cli.db import locks
from neruba_cli.db.schema import ExportWatermark, Project
from neruba_cli.db.tables import (
    billing_runs_t,
    customers_t,
    event_versions_t,
    export_watermarks_t,
    locks_t,
)
from neruba_cli.domain import lock_names
from neruba_cli.domain.errors import InvalidInput, LockHeld, NotFound
from neruba_cli.domain.periods import month_period
from neruba_cli.domain.timestamps import format_ts, parse_since, parse_ts
from neruba_cli.services.billing import plan as billing_plan
from neruba_cli.services.export.kinds import JOURNALS, KINDS, check_request
from neruba_cli.services.export.plan import ExportRequest, Plan, Progress, Since
from neruba_cli.services.invoices import read as invoices_read

LOCK_WAIT_SECONDS = 120  # longest wait for the writers in flight when reading a high-water id
# An events watermark: the last event id and the last correction exported. A plain id (from
# before corrections were exported) counts every correction of those events as new.
EVENTS_MARK = re.compile(r"(\d+)(?::(\d+))?")


def parse_since_option(text: str, kind: str, *, now: datetime) -> Since:
    """`--since`: a watermark printed by an earlier run (an id for journals; `ID:CORRECTION`
    for events), or a time."""
    raw = text.strip()
    events_mark = EVENTS_MARK.fullmatch(raw)
    if kind == "events" and events_mark is not None:
        return Since(sequence=int(events_mark[1]), corrections=int(events_mark[2] or 0))
    if kind == "usage" and events_mark is not None:  # an events watermark: the events part
        return Since(sequence=int(events_mark[1]))
    if raw.isdigit():
        if kind not in JOURNALS:
            raise InvalidInput(
                f"--since {text!r}: {kind} watermarks are times, not ids",
                hint="pass the watermark an earlier `export " + kind + "` printed, or a time",
            )
        return Since(sequence=int(raw))
    return Since(moment=parse_since(raw, now=now))


def make_plan(engine: Engine, project: Project, request: ExportRequest, *, now: datetime) -> Plan:
    """Resolve the filters, where this run starts and the watermark it ends at. Call it
    before reading (journals wait here, briefly, for the writers in flight)."""
    check_request(request)
    kind = request.kind
    with engine.connect() as conn:
        customer_id = _customer_id(conn, project, request.customer)
        since = (
            parse_since_option(request.since, kind, now=now)
            if request.since is not None
            else _stored(conn, project, request.name, kind)
        )
    label = window = None
    if request.period is not None:
        if KINDS[kind].invoice_period:
            label = invoices_read.period_label(request.period, project, now)
        else:
            label_text = invoices_read.period_label(request.period, project, now)
            month = month_period(label_text, project.timezone)
            window = (month.start, month.end)
    high: int | None = None
    high_corrections: int | None = None
    journal = KINDS[kind].journal
    if journal is not None:
        high = settled_max(engine, journal)
        watermark = str(max(high, since.sequence or 0) if since is not None else high)
        if kind == "events":
            high_corrections = settled_max(engine, event_versions_t)
            done = (since.corrections or 0) if since is not None else 0
            watermark = f"{watermark}:{max(high_corrections, done)}"
    else:
        moment = documents_watermark(engine, project, now=now, overlap=request.overlap)
        if since is not None and since.moment is not None and since.moment > moment:
            moment = since.moment  # never move a watermark backwards
        watermark = str(format_ts(moment))
    return Plan(
        kind=kind,
        fmt=request.fmt,
        dialect=engine.dialect.name,
        project=project,
        label=label,
        window=window,
        customer_id=customer_id,
        since=since,
        high=high,
        watermark=watermark,
        high_corrections=high_corrections,
        feed=kind == "events" and (since is not None or request.name is not None),
        groupings=_groupings(engine, project) if kind == "usage" else (),
    )


def _groupings(engine: Engine, project: Project) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Each meter some plan version groups (`group_by`), with the properties (all versions'
    together, in the order they first appear)."""
    found: dict[str, list[str]] = {}
    with engine.connect() as conn:
        versions = billing_plan.plan_versions(conn, project)
    for key in sorted(versions, key=lambda k: versions[k].key):
        for charge in versions[key].plan.charges:
            names = found.setdefault(charge.meter, []) if charge.group_by else None
            for name in charge.group_by:
                if names is not None and name not in names:
                    names.append(name)
    return tuple((meter, tuple(names)) for meter, names in sorted(found.items()))


def _customer_id(conn: Connection, project: Project, external_id: str | None) -> str | None:
    if external_id is None:
        return None
    found = conn.execute(
        select(customers_t.c.id).where(
            customers_t.c.project_id == project.id, customers_t.c.external_id == external_id
        )
    ).scalar()
    if found is None:
        raise NotFound(
            f"customer {external_id!r} does not exist in project {project.slug!r}",
            hint="`neruba customer list` shows the external ids",
        )
    return str(found)


def _stored(conn: Connection, project: Project, name: str | None, kind: str) -> Since | None:
    if name is None:
        return None
    text = stored_watermark(conn, project, name, kind)
    if text is None:
        return None
    mark = EVENTS_MARK.fullmatch(text) if kind == "events" else None
    if mark is not None:
        return Since(sequence=int(mark[1]), corrections=int(mark[2] or 0))
    return Since(sequence=int(text)) if kind in JOURNALS else Since(moment=parse_ts(text))


def stored_watermark(conn: Connection, project: Project, name: str, kind: str) -> str | None:
    found = conn.execute(
        select(export_watermarks_t.c.watermark).where(
            export_watermarks_t.c.project_id == project.id,
            export_watermarks_t.c.name == name,
            export_watermarks_t.c.kind == kind,
        )
    ).scalar()
    return None if found is None else str(found)


def store_watermark(
    engine: Engine,
    project: Project,
    name: str,
    kind: str,
    watermark: str,
    *,
    lease: locks.Lease,
    now: datetime,
) -> None:
    """Record where the next run starts, fenced by the export's lease: a run whose lease was
    taken over (it was paused past its expiry) cannot move the watermark."""
    key = (
        export_watermarks_t.c.project_id == project.id,
        export_watermarks_t.c.name == name,
        export_watermarks_t.c.kind == kind,
    )
    with locks.fenced(engine, lease) as conn:
        changed = conn.execute(
            update(ExportWatermark).where(*key).values(watermark=watermark, updated_at=now)
        ).rowcount
        if changed == 0:
            conn.execute(
                insert(ExportWatermark).values(
                    project_id=project.id,
                    name=name,
                    kind=kind,
                    watermark=watermark,
                    updated_at=now,
                )
            )


def settled_max(engine: Engine, table: Any) -> int:
    """The largest id of `table` once every transaction writing it has committed or rolled
    back: ids are given out at insert time, so without the wait an id below a committed one
    could still appear later and be skipped by `id > watermark`."""
    dialect = engine.dialect.name
    biggest = select(func.coalesce(func.max(table.c.id), 0))
    try:
        if dialect == "postgresql":
            with engine.begin() as conn:
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_WAIT_SECONDS}s'")
                conn.exec_driver_sql(f"LOCK TABLE {table.name} IN SHARE MODE")
                return int(conn.execute(biggest).scalar_one())
        if dialect in ("mysql", "mariadb"):
            with engine.connect() as conn:
                conn.exec_driver_sql(f"SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}")
                conn.exec_driver_sql(f"LOCK TABLES {table.name} READ")
                try:
                    return int(conn.execute(biggest).scalar_one())
                finally:
                    conn.exec_driver_sql("UNLOCK TABLES")
                    conn.rollback()
    except DBAPIError as exc:
        if "lock" not in str(exc.orig).lower():
            raise
        raise LockHeld(
            f"a transaction has been writing {table.name} for over {LOCK_WAIT_SECONDS} s",
            hint="try again when the import or billing run in progress has finished",
        ) from None
    with engine.connect() as conn:  # SQLite: one writer at a time, ids in commit order
        return int(conn.execute(biggest).scalar_one())


def documents_watermark(
    engine: Engine, project: Project, *, now: datetime, overlap: timedelta
) -> datetime:
    """Where the next run of a document export starts: `overlap` before now, or before the
    start of a billing run still holding its lease (everything a run writes carries its start
    time, and it commits over minutes). A run that died without releasing its lease stops
    counting when the lease expires."""
    live = and_(
        locks_t.c.name.startswith(lock_names.billing_prefix(project.slug), autoescape=True),
        locks_t.c.holder.is_not(None),
        locks_t.c.expires_at > now,
    )
    with engine.connect() as conn:
        acquired = conn.execute(select(func.min(locks_t.c.acquired_at)).where(live)).scalar()
        started = conn.execute(
            select(func.min(billing_runs_t.c.started_at))
            .select_from(
                billing_runs_t.join(
                    locks_t,
                    and_(
                        locks_t.c.holder == billing_runs_t.c.holder,
                        locks_t.c.token == billing_runs_t.c.lock_token,
                    ),
                )
            )
            .where(
                billing_runs_t.c.project_id == project.id,
                billing_runs_t.c.status == "running",
                live,
            )
        ).scalar()
    return min(moment for moment in (now, acquired, started) if moment is not None) - overlap


@contextmanager
def named_lease(engine: Engine, project: Project, request: ExportRequest) -> Iterator[Any]:
    """A named export runs alone: a second cron host gets exit 5 rather than a second copy."""
    if request.name is None:
        yield None
        return
    with locks.held(engine, lock_names.export(project.slug, request.name, request.kind)) as lease:
        yield lease


def keep_alive(engine: Engine, lease: locks.Lease | None, progress: Progress) -> Progress:
    """Renew the lease while a long export runs, so it never lapses under a live holder."""
    if lease is None:
        return progress
    state = {"lease": lease}

    def tick(done: int) -> None:
        progress(done)
        current = state["lease"]
        if current.expires_at - locks.utcnow() < locks.DEFAULT_TTL / 2:
            state["lease"] = locks.renew(engine, current)

    return tick
