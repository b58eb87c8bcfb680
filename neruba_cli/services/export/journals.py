"""The journal exports: ledger entries, usage events and daily usage.

Journals are append-only and numbered by an autoincrement id (events.id, ledger_entries.id):
an incremental run exports the rows with `previous < id <= high` (watermarks.py). The events
export is exactly what `neruba ingest` reads back: JSONL with `properties` as an object, CSV
with one `properties.<name>` column per property name present in the exported events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Date,
    Select,
    String,
    case,
    cast,
    func,
    or_,
    select,
    true,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from neruba_cli.db import usage_sql
from neruba_cli.db.tables import (
    customers_t,
    event_versions_t,
    events_t,
    invoices_t,
    ledger_accounts_t,
    ledger_entries_t,
    ledger_transactions_t,
)
from neruba_cli.db.usage_sql import CURRENT, UsageValue
from neruba_cli.domain.grouping import group_text
from neruba_cli.domain.money import decimal_text, format_minor
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.export.plan import YIELD_PER, Plan

EVENT_FIELDS = ("idempotency_key", "customer", "meter", "timestamp", "quantity", "operation")
"""`operation` is "remove" for a unique_count event that removes its value, else empty (add):
what `neruba ingest` reads back."""
FEED_FIELDS = ("version", "voided")
"""The last columns of a named or `--since` events export (a change feed): the event's
current version (1, 2 after a correction, ...) and whether it is voided."""

RowFormat = Callable[[Iterator[Any]], Iterator[tuple[Any, ...]]]


def ledger_query(plan: Plan) -> Select[Any]:
    line_customer = customers_t.alias("holder")
    return (
        select(
            ledger_transactions_t.c.id.label("transaction"),
            ledger_transactions_t.c.kind,
            ledger_transactions_t.c.reference,
            ledger_transactions_t.c.effective_at,
            ledger_accounts_t.c.code,
            line_customer.c.external_id,
            ledger_accounts_t.c.currency,
            ledger_entries_t.c.amount,
            ledger_entries_t.c.grant_id,
            invoices_t.c.number,
            ledger_transactions_t.c.memo,
            ledger_transactions_t.c.created_at,
        )
        .select_from(ledger_entries_t)
        .join(
            ledger_transactions_t, ledger_transactions_t.c.id == ledger_entries_t.c.transaction_id
        )
        .join(ledger_accounts_t, ledger_accounts_t.c.id == ledger_entries_t.c.account_id)
        .outerjoin(line_customer, line_customer.c.id == ledger_accounts_t.c.customer_id)
        .outerjoin(invoices_t, invoices_t.c.id == ledger_entries_t.c.invoice_id)
        .where(
            *plan.where(
                project=ledger_entries_t.c.project_id,
                customer=ledger_accounts_t.c.customer_id,
                moment=ledger_transactions_t.c.created_at,
                sequence=ledger_entries_t.c.id,
                at=ledger_transactions_t.c.effective_at,
            )
        )
        .order_by(ledger_entries_t.c.id)
    )


def ledger_rows(rows: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
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
        # the project's events through (project_id, customer_id, meter, voided, ts), sorts them
        # all by id before the first row; this way it walks the rowid range in order.
        project = UnaryExpression(project, operator=custom_op("+"))
    # A change feed: the events new since, and those corrected since (voided ones too: the
    # consumer drops them), as they are now; an event corrected after this run's high-water
    # correction waits for the next run, so each version is exported once.
    feed: dict[str, Any] = (
        {"corrected": events_t.c.correction, "changed": partial(_changed_since, plan)}
        if plan.feed
        else {}
    )
    where = plan.where(
        project=project,
        customer=events_t.c.customer_id,
        moment=events_t.c.received_at,
        sequence=events_t.c.id,
        at=events_t.c.ts,
        **feed,
    )
    if plan.feed and plan.since is not None:
        return where
    return [*where, CURRENT]  # voided events are not usage; amended ones export as amended


def _changed_since(plan: Plan, since: datetime) -> ColumnElement[bool]:
    """`--since TIME`: events received since, or corrected since."""
    corrected = select(event_versions_t.c.event_id).where(
        event_versions_t.c.project_id == plan.project.id, event_versions_t.c.changed_at >= since
    )
    return or_(events_t.c.received_at >= since, events_t.c.id.in_(corrected))


def events_query(plan: Plan) -> Select[Any]:
    return (
        select(
            events_t.c.idempotency_key,
            customers_t.c.external_id,
            events_t.c.meter,
            type_coerce(events_t.c.ts, String()).label("ts"),  # the driver's value: see _time_text
            type_coerce(events_t.c.quantity, String()).label("quantity"),  # no Decimal round trip
            events_t.c.operation,
            events_t.c.properties,
            *((events_t.c.version, events_t.c.voided) if plan.feed else ()),
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


def event_rows(
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
    for key, customer, meter, ts, quantity, operation, properties in rows:
        if ts.__class__ is str and len(ts) == 26 and ts[10] == " ":
            tail = ts[11:19] if ts.endswith(".000000") else ts[11:]
            stamp = f"{ts[:10]}T{tail}Z"
        else:
            stamp = time_text(ts)
        if quantity.__class__ is not str:
            quantity = number_text(quantity)
        if property_names is None:
            yield key, customer, meter, stamp, quantity, operation, fragment(properties)
        elif not names:
            yield key, customer, meter, stamp, quantity, operation
        else:
            found = loads(properties) if properties != "{}" else empty
            yield (
                key,
                customer,
                meter,
                stamp,
                quantity,
                operation,
                *[_cell(found.get(name)) for name in names],
            )


def feed_rows(
    rows: Iterator[Any], property_names: Sequence[str] | None
) -> Iterator[tuple[Any, ...]]:
    """A change feed's rows: `event_rows` and the event's version and voided flag (JSON
    true/false; CSV `true`/`false`)."""
    flags: tuple[Any, Any] = ("false", "true") if property_names is not None else (False, True)
    states: deque[tuple[Any, Any]] = deque()
    take = states.popleft

    def events() -> Iterator[tuple[Any, ...]]:
        for row in rows:
            states.append((row[7], row[8]))
            yield row[:7]

    for formatted in event_rows(events(), property_names):
        version, voided = take()
        yield (*formatted, int(version), flags[bool(voided)])


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


def usage_query(plan: Plan) -> Select[Any]:
    """Events and their summed quantity per customer, meter and UTC day, in the database; for
    a meter a plan groups (`group_by`), per group as well (columns g0, g1, …: one per grouped
    property, NULL for the meters that property does not group)."""
    dialect = plan.dialect
    if dialect == "sqlite":
        day: Any = func.date(events_t.c.ts)
        total: Any = func.neruba_sum(events_t.c.quantity)
    else:
        day = cast(events_t.c.ts, Date) if dialect == "postgresql" else func.date(events_t.c.ts)
        total = func.sum(events_t.c.quantity)
    groups = [
        case((events_t.c.meter.in_(meters), usage_sql.property_group(dialect, name))).label(
            f"g{index}"
        )
        for index, (name, meters) in enumerate(_grouped_properties(plan))
    ]
    return (
        select(
            customers_t.c.external_id,
            events_t.c.meter,
            day.label("day"),
            func.count().label("events"),
            type_coerce(total, UsageValue()).label("quantity"),
            *groups,
        )
        .join(customers_t, customers_t.c.id == events_t.c.customer_id)
        .where(*_event_filters(plan))
        .group_by(customers_t.c.external_id, events_t.c.meter, day, *groups)
        .order_by(customers_t.c.external_id, events_t.c.meter, day, *groups)
    )


def _grouped_properties(plan: Plan) -> list[tuple[str, list[str]]]:
    """Each grouped property and the meters it groups, in a fixed order."""
    meters: dict[str, list[str]] = {}
    for meter, names in plan.groupings:
        for name in names:
            meters.setdefault(name, []).append(meter)
    return sorted(meters.items())


def usage_rows_for(plan: Plan) -> Callable[[Iterator[Any]], Iterator[tuple[Any, ...]]]:
    """The usage rows of this plan: the group column names each grouped meter's group."""
    return usage_rows_for_groupings(plan.groupings)


def usage_rows_for_groupings(
    groupings: tuple[tuple[str, tuple[str, ...]], ...],
) -> Callable[[Iterator[Any]], Iterator[tuple[Any, ...]]]:
    properties = sorted({name for _, names in groupings for name in names})
    grouped = dict(groupings)

    def rows(found: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
        for r in found:
            day = r.day if isinstance(r.day, str) else r.day.isoformat()
            group = None
            names = grouped.get(r.meter)
            if names:
                values = {
                    name: usage_sql.group_value(r._mapping[f"g{index}"])
                    for index, name in enumerate(properties)
                }
                group = group_text(names, tuple(values[name] for name in names))
            yield (
                r.external_id,
                r.meter,
                day[:10],
                int(r.events),
                decimal_text(r.quantity),
                group,
            )

    return rows


def usage_rows(rows: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
    """The usage rows when no plan groups a meter."""
    return usage_rows_for_groupings(())(rows)


def events_jsonl(rows: Iterator[Any]) -> Iterator[tuple[Any, ...]]:
    """Events as JSONL: `properties` as the stored JSON object."""
    return event_rows(rows, None)


def events_jsonl_for(plan: Plan) -> RowFormat:
    """The JSONL rows of this run: a change feed's carry `version` and `voided`."""
    return partial(feed_rows, property_names=None) if plan.feed else events_jsonl


def events_csv(conn: Connection, plan: Plan) -> tuple[tuple[str, ...], RowFormat]:
    """Events as CSV: one `properties.<name>` column per property name present in the
    exported events (a first pass over them finds the names)."""
    names = property_names(conn, plan)
    columns = (*EVENT_FIELDS, *(f"properties.{name}" for name in names))
    if plan.feed:
        return (*columns, *FEED_FIELDS), partial(feed_rows, property_names=names)
    return columns, partial(event_rows, property_names=names)
