"""`neruba export`: stream invoices, invoice lines, the ledger, events, daily usage, credit
grants and payments to CSV or JSONL, in constant memory, optionally incrementally.

Streaming. Each kind is one SELECT read through a server-side cursor (PostgreSQL, MariaDB;
SQLite's cursor is lazy anyway) `YIELD_PER` rows at a time and written as it comes, in chunks,
so memory stays flat however many rows there are. Aggregation (usage) is done by the database.

Columns are a contract (COLUMNS below, documented in the README): CSV has a header row, JSONL
one object per line with the same keys in the same order. Money is a decimal string in major
units at the currency's precision, quantities canonical decimal strings, times RFC 3339 UTC.
Customers are their external ids; Neruba's own prefixed ids (grt_, pay_, txn_, ...) and invoice
numbers name the rest. The events export is exactly what `neruba ingest` reads back: JSONL
with `properties` as an object, CSV with one `properties.<name>` column per property name
present in the exported events (found by a first pass over them).

Incremental exports. `--since` and the watermark stored under `--name` mean one of two things:

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

import csv
import gzip
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import chain
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Date,
    Engine,
    Select,
    String,
    and_,
    cast,
    exists,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    true,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from neruba_cli.db import locks
from neruba_cli.db.schema import (
    BillingRun,
    CreditGrant,
    Customer,
    Event,
    ExportWatermark,
    Invoice,
    InvoiceLine,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Lock,
    Payment,
    Project,
    Refund,
)
from neruba_cli.db.usage_sql import UsageValue
from neruba_cli.domain.errors import InvalidInput, LockHeld, NerubaError, NotFound, UsageError
from neruba_cli.domain.money import decimal_text, format_amount, format_minor
from neruba_cli.domain.periods import month_period
from neruba_cli.domain.timestamps import format_ts, parse_since, parse_ts
from neruba_cli.services.billing import plan as billing_plan
from neruba_cli.services.billing import run as billing_run
from neruba_cli.services.invoices import read as invoices_read

KINDS = ("invoices", "lines", "ledger", "events", "usage", "credits", "payments")
FORMATS = ("csv", "jsonl")
JOURNALS = ("events", "usage", "ledger")  # sequence watermarks; the rest are documents
DEFAULT_OVERLAP = timedelta(minutes=5)
YIELD_PER = 2000
DOCUMENTS_PER_FETCH = 100  # lines: each invoice row carries its whole document
CHUNK_ROWS = 1000  # rows buffered between writes (and progress updates)
LOCK_WAIT_SECONDS = 120  # longest wait for the writers in flight when reading a high-water id
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
EVENT_FIELDS = ("idempotency_key", "customer", "meter", "timestamp", "quantity")

# The contract: a column is added at the end, never renamed or moved (README: Exports).
COLUMNS: dict[str, tuple[str, ...]] = {
    "invoices": tuple(
        "number customer kind status period period_start period_end currency subtotal "
        "credits_applied total amount_due amount_paid corrects run version finalized_at "
        "voided_at fingerprint updated_at".split()
    ),
    "lines": tuple(
        "invoice customer line kind description plan meter quantity amount currency "
        "service_start service_end events".split()
    ),
    "ledger": tuple(
        "transaction kind reference effective_at account customer currency debit credit "
        "amount grant invoice memo created_at".split()
    ),
    "events": (*EVENT_FIELDS, "properties"),  # CSV: properties.<name> columns instead
    "usage": tuple("customer meter day events quantity".split()),
    "credits": tuple(
        "grant customer currency amount remaining category priority expires_at source "
        "source_ref reason created_at revoked_at expired_at".split()
    ),
    "payments": tuple(
        "kind payment refund invoice customer currency amount applied refunded "
        "reference reason received_at created_at".split()
    ),
}

events_t = Event.__table__
customers_t = Customer.__table__
invoices_t = Invoice.__table__
lines_t = InvoiceLine.__table__
entries_t = LedgerEntry.__table__
transactions_t = LedgerTransaction.__table__
accounts_t = LedgerAccount.__table__
grants_t = CreditGrant.__table__
payments_t = Payment.__table__
refunds_t = Refund.__table__
watermarks_t = ExportWatermark.__table__
runs_t = BillingRun.__table__
locks_t = Lock.__table__
_corrected = invoices_t.alias("corrected")

Progress = Callable[[int], None]


# --------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class ExportRequest:
    kind: str
    fmt: str
    period: str | None = None
    customer: str | None = None
    since: str | None = None
    name: str | None = None
    overlap: timedelta = DEFAULT_OVERLAP


@dataclass(frozen=True)
class Since:
    """Where an incremental run starts: after an id (journals) or at a moment."""

    sequence: int | None = None
    moment: datetime | None = None

    def text(self) -> str:
        return str(self.sequence) if self.sequence is not None else str(format_ts(self.moment))


@dataclass(frozen=True)
class Plan:
    """Everything the SELECT needs, resolved once before reading."""

    kind: str
    fmt: str
    dialect: str
    project: Project
    label: str | None  # invoices/lines: the invoice period label
    window: tuple[datetime, datetime] | None  # other kinds: the month, in the project's zone
    customer_id: str | None
    since: Since | None
    high: int | None  # journals: the highest id this run exports
    watermark: str  # what the next run starts from


@dataclass(frozen=True)
class ExportResult:
    kind: str
    fmt: str
    rows: int
    output: str
    gzip: bool
    since: str | None
    watermark: str
    name: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "format": self.fmt,
            "rows": self.rows,
            "output": self.output,
            "gzip": self.gzip,
            "since": self.since,
            "watermark": self.watermark,
            "name": self.name,
        }


def check_request(request: ExportRequest) -> None:
    if request.kind not in KINDS:
        raise UsageError(f"cannot export {request.kind!r}", hint=f"one of {', '.join(KINDS)}")
    if request.fmt not in FORMATS:
        raise UsageError(f"--format {request.fmt!r} is not one of: {', '.join(FORMATS)}")
    if request.name is not None and not NAME.fullmatch(request.name):
        raise InvalidInput(
            f"--name {request.name!r} is not a name",
            hint="up to 100 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    if request.overlap < timedelta(0):
        raise InvalidInput("--overlap cannot be negative")


def parse_since_option(text: str, kind: str, *, now: datetime) -> Since:
    """`--since`: a watermark printed by an earlier run (an id for journals), or a time."""
    raw = text.strip()
    if raw.isdigit():
        if kind not in JOURNALS:
            raise InvalidInput(
                f"--since {text!r}: {kind} watermarks are times, not ids",
                hint="pass the watermark an earlier `export " + kind + "` printed, or a time",
            )
        return Since(sequence=int(raw))
    return Since(moment=parse_since(raw, now=now))


def lock_name(project: Project, name: str, kind: str) -> str:
    return f"{project.slug}:export:{name}:{kind}"


# --------------------------------------------------------------------------- planning


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
        if kind in ("invoices", "lines"):
            label = invoices_read.period_label(request.period, project, now)
        else:
            label_text = invoices_read.period_label(request.period, project, now)
            month = month_period(label_text, project.timezone)
            window = (month.start, month.end)
    high: int | None = None
    if kind in JOURNALS:
        high = settled_max(engine, events_t if kind != "ledger" else entries_t)
        watermark = str(max(high, since.sequence or 0) if since is not None else high)
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
    )


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
    return Since(sequence=int(text)) if kind in JOURNALS else Since(moment=parse_ts(text))


def stored_watermark(conn: Connection, project: Project, name: str, kind: str) -> str | None:
    found = conn.execute(
        select(watermarks_t.c.watermark).where(
            watermarks_t.c.project_id == project.id,
            watermarks_t.c.name == name,
            watermarks_t.c.kind == kind,
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
        watermarks_t.c.project_id == project.id,
        watermarks_t.c.name == name,
        watermarks_t.c.kind == kind,
    )
    with engine.begin() as conn:
        locks.fence(conn, lease)
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
        locks_t.c.name.like(f"{billing_run.lock_name(project, '')}%"),
        locks_t.c.holder.is_not(None),
        locks_t.c.expires_at > now,
    )
    with engine.connect() as conn:
        acquired = conn.execute(select(func.min(locks_t.c.acquired_at)).where(live)).scalar()
        started = conn.execute(
            select(func.min(runs_t.c.started_at))
            .select_from(
                runs_t.join(
                    locks_t,
                    and_(
                        locks_t.c.holder == runs_t.c.holder, locks_t.c.token == runs_t.c.lock_token
                    ),
                )
            )
            .where(runs_t.c.project_id == project.id, runs_t.c.status == "running", live)
        ).scalar()
    return min(moment for moment in (now, acquired, started) if moment is not None) - overlap


# --------------------------------------------------------------------------- the queries


def _filters(
    plan: Plan,
    *,
    project: Any,
    customer: Any,
    moment: Any,
    sequence: Any = None,
    changed: Callable[[datetime], ColumnElement[bool]] | None = None,
    at: Any = None,
) -> list[ColumnElement[bool]]:
    """The WHERE clause every kind shares: project, customer, month, since, high-water."""
    where: list[ColumnElement[bool]] = [project == plan.project.id]
    if plan.customer_id is not None:
        where.append(customer == plan.customer_id)
    if plan.window is not None and at is not None:
        where += [at >= plan.window[0], at < plan.window[1]]
    if sequence is not None and plan.high is not None:
        where.append(sequence <= plan.high)
    if plan.since is not None:
        if plan.since.sequence is not None:
            where.append(sequence > plan.since.sequence)
        elif plan.since.moment is not None:
            where.append(changed(plan.since.moment) if changed else moment >= plan.since.moment)
    return where


def _posted_since(column: Any, moment: datetime) -> ColumnElement[bool]:
    """A ledger posting written at or after `moment` names this invoice or grant."""
    return exists(
        select(1)
        .select_from(
            entries_t.join(transactions_t, transactions_t.c.id == entries_t.c.transaction_id)
        )
        .where(column, transactions_t.c.created_at >= moment)
    )


def _invoice_query(plan: Plan, *, content: bool) -> Select[Any]:
    def changed(moment: datetime) -> ColumnElement[bool]:
        return or_(
            invoices_t.c.updated_at >= moment,
            _posted_since(entries_t.c.invoice_id == invoices_t.c.id, moment),
        )

    columns: list[Any] = [
        invoices_t.c.number,
        customers_t.c.external_id,
        invoices_t.c.kind,
        invoices_t.c.status,
        invoices_t.c.period,
        invoices_t.c.period_start,
        invoices_t.c.period_end,
        invoices_t.c.currency,
        invoices_t.c.subtotal,
        invoices_t.c.credits_applied,
        invoices_t.c.total,
        invoices_t.c.amount_due_minor,
        invoices_t.c.amount_paid_minor,
        _corrected.c.number.label("corrects"),
        invoices_t.c.run_id,
        invoices_t.c.version,
        invoices_t.c.finalized_at,
        invoices_t.c.voided_at,
        invoices_t.c.fingerprint,
        invoices_t.c.updated_at,
    ]
    if content:
        columns = [invoices_t.c.number, customers_t.c.external_id, invoices_t.c.content]
    query = (
        select(*columns)
        .join(customers_t, customers_t.c.id == invoices_t.c.customer_id)
        .where(
            *_filters(
                plan,
                project=invoices_t.c.project_id,
                customer=invoices_t.c.customer_id,
                moment=invoices_t.c.updated_at,
                changed=changed,
            )
        )
        .order_by(invoices_t.c.number)
    )
    if not content:
        query = query.outerjoin(_corrected, _corrected.c.id == invoices_t.c.corrects_id)
    if plan.label is not None:
        query = query.where(invoices_t.c.period == plan.label)
    return query


def _invoice_rows(rows: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
    final = billing_plan.FINAL
    for r in rows:
        cur = r.currency
        yield (
            r.number,
            r.external_id,
            r.kind,
            r.status,
            r.period,
            format_ts(r.period_start),
            format_ts(r.period_end),
            cur,
            format_amount(r.subtotal, cur),
            format_amount(r.credits_applied, cur),
            format_amount(r.total, cur),
            format_minor(r.amount_due_minor, cur) if r.status in final else None,
            format_minor(r.amount_paid_minor, cur),
            r.corrects,
            r.run_id,
            r.version,
            format_ts(r.finalized_at),
            format_ts(r.voided_at),
            r.fingerprint,
            format_ts(r.updated_at),
        )


def _line_rows(rows: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
    """The lines of each invoice's stored document, exactly as `invoice show` prints them."""
    for r in rows:
        content = orjson.loads(r.content)
        currency = content["currency"]
        for position, line in enumerate(content["lines"], start=1):
            service = line.get("service") or {}
            events = line.get("events") or {}
            yield (
                r.number,
                r.external_id,
                position,
                line["kind"],
                line["description"],
                line.get("plan"),
                line.get("meter"),
                line.get("quantity"),
                line["amount"],
                currency,
                service.get("start"),
                service.get("end"),
                events.get("count"),
            )


def _ledger_query(plan: Plan) -> Select[Any]:
    line_customer = customers_t.alias("holder")
    return (
        select(
            transactions_t.c.id.label("transaction"),
            transactions_t.c.kind,
            transactions_t.c.reference,
            transactions_t.c.effective_at,
            accounts_t.c.code,
            line_customer.c.external_id,
            accounts_t.c.currency,
            entries_t.c.amount,
            entries_t.c.grant_id,
            invoices_t.c.number,
            transactions_t.c.memo,
            transactions_t.c.created_at,
        )
        .select_from(entries_t)
        .join(transactions_t, transactions_t.c.id == entries_t.c.transaction_id)
        .join(accounts_t, accounts_t.c.id == entries_t.c.account_id)
        .outerjoin(line_customer, line_customer.c.id == accounts_t.c.customer_id)
        .outerjoin(invoices_t, invoices_t.c.id == entries_t.c.invoice_id)
        .where(
            *_filters(
                plan,
                project=entries_t.c.project_id,
                customer=accounts_t.c.customer_id,
                moment=transactions_t.c.created_at,
                sequence=entries_t.c.id,
                at=transactions_t.c.effective_at,
            )
        )
        .order_by(entries_t.c.id)
    )


def _ledger_rows(rows: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
    for (
        txn,
        kind,
        reference,
        effective,
        code,
        customer,
        cur,
        minor,
        grant,
        invoice,
        memo,
        at,
    ) in rows:
        amount = format_minor(minor, cur)
        yield (
            txn,
            kind,
            reference,
            format_ts(effective),
            code,
            customer,
            cur,
            amount if minor > 0 else None,
            format_minor(-minor, cur) if minor < 0 else None,
            amount,
            grant,
            invoice,
            memo,
            format_ts(at),
        )


def _event_filters(plan: Plan) -> list[ColumnElement[bool]]:
    project: Any = events_t.c.project_id
    if plan.dialect == "sqlite":
        # `+column`: SQLite's idiom for "not through an index". On its own the planner reads
        # the project's events through (project_id, customer_id, meter, ts) and sorts them
        # all by id before the first row; this way it walks the rowid range in order.
        project = UnaryExpression(project, operator=custom_op("+"))
    return _filters(
        plan,
        project=project,
        customer=events_t.c.customer_id,
        moment=events_t.c.received_at,
        sequence=events_t.c.id,
        at=events_t.c.ts,
    )


def _events_query(plan: Plan) -> Select[Any]:
    return (
        select(
            events_t.c.idempotency_key,
            customers_t.c.external_id,
            events_t.c.meter,
            type_coerce(events_t.c.ts, String()).label("ts"),  # the driver's value: see _time_text
            type_coerce(events_t.c.quantity, String()).label("quantity"),  # no Decimal round trip
            events_t.c.properties,
        )
        .join(customers_t, customers_t.c.id == events_t.c.customer_id)
        .where(*_event_filters(plan))
        .order_by(events_t.c.id)
    )


def _time_text(value: Any) -> str:
    """`format_ts` of a stored time as the driver returns it, without building an aware
    datetime per row: SQLite's text ('2026-10-03 12:00:00.000000', the layout SQLAlchemy and
    ingest both write), or the naive UTC datetime of the server drivers."""
    if isinstance(value, str):
        if len(value) == 26 and value[10] == " ":
            if value.endswith(".000000"):
                return f"{value[:10]}T{value[11:19]}Z"
            return f"{value[:10]}T{value[11:]}Z"
        value = datetime.fromisoformat(value)
    return str(format_ts(value))


def _number_text(value: Any) -> str:
    """Canonical decimal text: SQLite stores it so; the servers return a Decimal."""
    return value if isinstance(value, str) else decimal_text(Decimal(value))


def _event_rows(
    rows: Iterator[Any], property_names: Sequence[str] | None
) -> Iterator[tuple[Any, ...]]:
    """JSONL (property_names None): properties as the stored JSON object, verbatim. CSV: one
    cell per property name, strings as they are, other JSON values as their JSON text.

    The hot path of the biggest export, so rows are unpacked rather than read by attribute,
    and SQLite's timestamp text is rewritten inline (what `_time_text` does)."""
    fragment, loads, time_text, number_text = (
        orjson.Fragment,
        orjson.loads,
        _time_text,
        _number_text,
    )
    names = property_names or ()
    empty: dict[str, Any] = {}
    for key, customer, meter, ts, quantity, properties in rows:
        if ts.__class__ is str and len(ts) == 26 and ts[10] == " ":
            tail = ts[11:19] if ts.endswith(".000000") else ts[11:]
            stamp = f"{ts[:10]}T{tail}Z"
        else:
            stamp = time_text(ts)
        if quantity.__class__ is not str:
            quantity = number_text(quantity)
        if property_names is None:
            yield key, customer, meter, stamp, quantity, fragment(properties)
        elif not names:
            yield key, customer, meter, stamp, quantity
        else:
            found = loads(properties) if properties != "{}" else empty
            yield (
                key,
                customer,
                meter,
                stamp,
                quantity,
                *[_cell(found.get(name)) for name in names],
            )


def _cell(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def property_names(conn: Connection, plan: Plan) -> list[str]:
    """Every property name of the events this export writes (CSV needs them in its header),
    listed by the database where it can (SQLite json_each, PostgreSQL jsonb_object_keys),
    else by reading the properties once."""
    where = [*_event_filters(plan), events_t.c.properties != "{}"]
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            keys = func.json_each(events_t.c.properties).table_valued("key").alias("property")
            query = select(keys.c.key).select_from(events_t).join(keys, true())
        else:
            query = select(func.jsonb_object_keys(cast(events_t.c.properties, JSONB)))
        return sorted(str(name) for name in conn.execute(query.where(*where).distinct()).scalars())
    names: set[str] = set()
    query = select(events_t.c.properties).where(*where)
    with conn.execute(query, execution_options={"yield_per": YIELD_PER}) as result:
        for part in result.partitions():
            for (text,) in part:
                names.update(orjson.loads(text))
    return sorted(names)


def _usage_query(plan: Plan, dialect: str) -> Select[Any]:
    """Events and their summed quantity per customer, meter and UTC day, in the database."""
    if dialect == "sqlite":
        day: Any = func.date(events_t.c.ts)
        total: Any = func.neruba_sum(events_t.c.quantity)
    else:
        day = cast(events_t.c.ts, Date) if dialect == "postgresql" else func.date(events_t.c.ts)
        total = func.sum(events_t.c.quantity)
    return (
        select(
            customers_t.c.external_id,
            events_t.c.meter,
            day.label("day"),
            func.count().label("events"),
            type_coerce(total, UsageValue()).label("quantity"),
        )
        .join(customers_t, customers_t.c.id == events_t.c.customer_id)
        .where(*_event_filters(plan))
        .group_by(customers_t.c.external_id, events_t.c.meter, day)
        .order_by(customers_t.c.external_id, events_t.c.meter, day)
    )


def _usage_rows(rows: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
    for r in rows:
        day = r.day if isinstance(r.day, str) else r.day.isoformat()
        yield (r.external_id, r.meter, day[:10], int(r.events), decimal_text(r.quantity))


def _credits_query(plan: Plan) -> Select[Any]:
    def changed(moment: datetime) -> ColumnElement[bool]:
        return or_(
            grants_t.c.created_at >= moment,
            grants_t.c.revoked_at >= moment,
            grants_t.c.expired_at >= moment,
            _posted_since(entries_t.c.grant_id == grants_t.c.id, moment),
        )

    return (
        select(grants_t, customers_t.c.external_id)
        .join(customers_t, customers_t.c.id == grants_t.c.customer_id)
        .where(
            *_filters(
                plan,
                project=grants_t.c.project_id,
                customer=grants_t.c.customer_id,
                moment=grants_t.c.created_at,
                changed=changed,
                at=grants_t.c.created_at,
            )
        )
        .order_by(grants_t.c.created_at, grants_t.c.id)
    )


def _credit_rows(rows: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
    for r in rows:
        cur = r.currency
        yield (
            r.id,
            r.external_id,
            cur,
            format_minor(r.amount_minor, cur),
            format_minor(r.remaining_minor, cur),
            r.category,
            r.priority,
            format_ts(r.expires_at),
            r.source,
            r.source_ref,
            r.reason,
            format_ts(r.created_at),
            format_ts(r.revoked_at),
            format_ts(r.expired_at),
        )


def _payments_query(plan: Plan) -> Select[Any]:
    """Payments and refunds in one stream, in the order the money moved."""

    def refunded_since(moment: datetime) -> ColumnElement[bool]:
        return or_(
            payments_t.c.created_at >= moment,
            exists(
                select(1).where(
                    refunds_t.c.payment_id == payments_t.c.id, refunds_t.c.created_at >= moment
                )
            ),
        )

    paid = (
        select(
            literal("payment", String()).label("kind"),
            payments_t.c.id.label("payment"),
            cast(null(), String()).label("refund"),
            invoices_t.c.number.label("invoice"),
            customers_t.c.external_id.label("customer"),
            payments_t.c.currency,
            payments_t.c.amount_minor.label("amount"),
            payments_t.c.applied_minor.label("applied"),
            payments_t.c.refunded_minor.label("refunded"),
            payments_t.c.reference,
            cast(null(), String()).label("reason"),
            payments_t.c.received_at.label("at"),
            payments_t.c.created_at,
            literal(0, BigInteger()).label("sort"),
        )
        .join(invoices_t, invoices_t.c.id == payments_t.c.invoice_id)
        .join(customers_t, customers_t.c.id == payments_t.c.customer_id)
        .where(
            *_filters(
                plan,
                project=payments_t.c.project_id,
                customer=payments_t.c.customer_id,
                moment=payments_t.c.created_at,
                changed=refunded_since,
                at=payments_t.c.received_at,
            )
        )
    )
    refunded = (
        select(
            literal("refund", String()),
            payments_t.c.id,
            refunds_t.c.id,
            invoices_t.c.number,
            customers_t.c.external_id,
            payments_t.c.currency,
            -refunds_t.c.amount_minor,
            cast(null(), BigInteger()),
            cast(null(), BigInteger()),
            payments_t.c.reference,
            refunds_t.c.reason,
            refunds_t.c.refunded_at,
            refunds_t.c.created_at,
            literal(1, BigInteger()),
        )
        .select_from(refunds_t)
        .join(payments_t, payments_t.c.id == refunds_t.c.payment_id)
        .join(invoices_t, invoices_t.c.id == payments_t.c.invoice_id)
        .join(customers_t, customers_t.c.id == payments_t.c.customer_id)
        .where(
            *_filters(
                plan,
                project=refunds_t.c.project_id,
                customer=payments_t.c.customer_id,
                moment=refunds_t.c.created_at,
                at=refunds_t.c.refunded_at,
            )
        )
    )
    both = union_all(paid, refunded).subquery("money")
    return select(both).order_by(both.c.at, both.c.sort, both.c.payment, both.c.refund)


def _payment_rows(rows: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
    for r in rows:
        cur = r.currency
        yield (
            r.kind,
            r.payment,
            r.refund,
            r.invoice,
            r.customer,
            cur,
            format_minor(int(r.amount), cur),
            None if r.applied is None else format_minor(int(r.applied), cur),
            None if r.refunded is None else format_minor(int(r.refunded), cur),
            r.reference,
            r.reason,
            format_ts(r.at),
            format_ts(r.created_at),
        )


def _main_query(plan: Plan, dialect: str) -> tuple[Select[Any], int]:
    """The kind's SELECT and how many rows to fetch at a time."""
    kind = plan.kind
    if kind == "invoices":
        return _invoice_query(plan, content=False), YIELD_PER
    if kind == "lines":
        return _invoice_query(plan, content=True), DOCUMENTS_PER_FETCH
    if kind == "ledger":
        return _ledger_query(plan), YIELD_PER
    if kind == "events":
        return _events_query(plan), YIELD_PER
    if kind == "usage":
        return _usage_query(plan, dialect), YIELD_PER
    if kind == "credits":
        return _credits_query(plan), YIELD_PER
    return _payments_query(plan), YIELD_PER


def count(engine: Engine, plan: Plan) -> int:
    """How many rows the export will write: the progress bar's total."""
    query, _ = _main_query(plan, engine.dialect.name)
    if plan.kind == "lines":  # invoice_lines mirrors each document's lines
        numbers = query.with_only_columns(invoices_t.c.id).order_by(None)
        query = select(lines_t.c.id).where(lines_t.c.invoice_id.in_(numbers))
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(query.subquery())).scalar_one())


# --------------------------------------------------------------------------- writing


class _Appender:
    __slots__ = ("write",)

    def __init__(self, parts: list[Any]) -> None:
        self.write = parts.append


class _Writer:
    """Rows to bytes, a chunk at a time: one write (and one compression call) per
    CHUNK_ROWS rows rather than per row."""

    def __init__(self, out: IO[bytes], fmt: str, columns: Sequence[str]) -> None:
        self.out = out
        self.rows = 0
        self._parts: list[Any] = []
        if fmt == "csv":
            # csv.writer calls `write` once per row: give it list.append itself.
            self._csv = csv.writer(_Appender(self._parts), lineterminator="\n")
            self._csv.writerow(columns)
            self.add = self._csv.writerow
            self._join: Callable[[list[Any]], bytes] = lambda parts: "".join(parts).encode()
        else:
            names = tuple(columns)
            dumps, option = orjson.dumps, orjson.OPT_APPEND_NEWLINE

            def add(row: Sequence[Any]) -> None:
                self._parts.append(dumps(dict(zip(names, row, strict=True)), option=option))

            self.add = add  # type: ignore[assignment]
            self._join = b"".join

    def spill(self) -> None:
        if self._parts:
            self.out.write(self._join(self._parts))
            self._parts.clear()

    def write_all(self, rows: Iterator[Sequence[Any]], progress: Progress) -> int:
        add, pending = self.add, 0
        for row in rows:
            add(row)
            pending += 1
            if pending == CHUNK_ROWS:
                self.rows += pending
                pending = 0
                self.spill()
                progress(self.rows)
        self.rows += pending
        self.spill()
        progress(self.rows)
        return self.rows


def write(engine: Engine, plan: Plan, out: IO[bytes], progress: Progress) -> int:
    """Stream the plan's rows to `out` (binary, already compressed if wanted); the row count."""
    dialect = engine.dialect.name
    with engine.connect() as conn:
        if dialect in ("mysql", "mariadb"):
            # The server-side cursor waits on us while we compress and write: give it time.
            conn.exec_driver_sql("SET SESSION net_write_timeout = 3600")
        columns = COLUMNS[plan.kind]
        names: list[str] | None = None
        if plan.kind == "events" and plan.fmt == "csv":
            names = property_names(conn, plan)
            columns = (*EVENT_FIELDS, *(f"properties.{name}" for name in names))
        writer = _Writer(out, plan.fmt, columns)
        query, batch = _main_query(plan, dialect)
        with conn.execute(query, execution_options={"yield_per": batch}) as result:
            rows: Iterator[Any] = chain.from_iterable(result.partitions())
            formatted = {
                "invoices": _invoice_rows,
                "lines": _line_rows,
                "ledger": _ledger_rows,
                "usage": _usage_rows,
                "credits": _credit_rows,
                "payments": _payment_rows,
            }.get(plan.kind)
            stream = formatted(rows) if formatted else _event_rows(rows, names)
            return writer.write_all(stream, progress)


# --------------------------------------------------------------------------- destinations


def guess_format(output: str, explicit: str | None) -> str:
    """--format, else from the output name (`.jsonl`, `.ndjson`, `.json`, maybe `.gz`), else
    CSV."""
    if explicit is not None:
        return explicit
    name = output.lower().removesuffix(".gz")
    return "jsonl" if name.endswith((".jsonl", ".ndjson", ".json")) else "csv"


@contextmanager
def destination(output: str, *, compress: bool) -> Iterator[IO[bytes]]:
    """Where the bytes go. A file is written as FILE.tmp and renamed over FILE only when the
    block ends without an error, so a failed or killed export never leaves a partial file
    under the real name (at worst a stale FILE.tmp, replaced by the next run)."""
    if output == "-":
        raw = sys.stdout.buffer
        sys.stdout.flush()
        try:
            with _compressed(raw, compress) as out:
                yield out
            raw.flush()
        except BrokenPipeError:
            _silence_stdout()
            raise NerubaError("stdout was closed before the export was complete") from None
        except OSError as exc:
            raise NerubaError(f"cannot write to stdout: {exc.strerror or exc}") from None
        return
    path = Path(output)
    if path.is_dir():
        raise InvalidInput(f"--output {output}: is a folder", hint="name a file in it")
    if not path.parent.exists():
        raise InvalidInput(f"--output {output}: folder {path.parent} does not exist")
    temporary = path.with_name(path.name + ".tmp")
    try:
        handle = open(temporary, "wb")  # noqa: SIM115 (closed below on every path)
    except OSError as exc:
        raise InvalidInput(f"cannot write {temporary}: {exc.strerror}") from None
    try:
        with _compressed(handle, compress) as out:
            yield out
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.replace(temporary, path)
    except BaseException as exc:
        with suppress(OSError):
            handle.close()  # flushing what is left may fail again (a full disk)
        temporary.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise NerubaError(
                f"cannot write {output}: {exc.strerror or exc}; nothing was written there"
            ) from None
        raise
    _sync_folder(path.parent)


def _silence_stdout() -> None:
    """After a closed pipe (`export ... | head`), keep Python's exit-time flush from
    reporting it a second time."""
    with suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


@contextmanager
def _compressed(raw: IO[bytes], compress: bool) -> Iterator[IO[bytes]]:
    if not compress:
        yield raw
        return
    # No name and a zero time in the header: the same rows give the same bytes. Level 6 is
    # gzip(1)'s default: a few percent larger than Python's 9, at about half the CPU.
    packed = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
    try:
        yield packed  # type: ignore[misc]
    finally:
        packed.close()  # writes the trailer; leaves `raw` open


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the use case


@contextmanager
def named_lease(engine: Engine, project: Project, request: ExportRequest) -> Iterator[Any]:
    """A named export runs alone: a second cron host gets exit 5 rather than a second copy."""
    if request.name is None:
        yield None
        return
    lease = locks.acquire(engine, lock_name(project, request.name, request.kind))
    try:
        yield lease
    finally:
        locks.release(engine, lease)


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
