"""`usage show`: one customer's usage per meter over a month, in day or hour buckets, and what
the customer will pay for it.

**Which month, which buckets.** `--period` is resolved like every other `--period` (YYYY-MM,
or previous / current in the project's time zone at `as_of`), and the month is then read in
the *customer's* time zone, exactly as `run bill` reads it for that customer: a calendar
monthly invoice covers the same span the chart shows. Buckets are the customer's local days
or hours (domain/usage_chart.py), so "Tuesday" on the chart is the customer's Tuesday and the
buckets line up with the month's edges.

**What a bucket's value is.** A bucket means what the meter means, computed by billing's own
SQL (db/usage_sql.py: `usage_query`) so that it cannot drift from what invoices count:
`count`, `sum`, `max` and `unique_count` take billing's query for the month and group it by
bucket too (one statement per meter; the bucket index is a balanced CASE over the boundaries,
the same SQL on SQLite, MariaDB and PostgreSQL). `latest` and `weighted_sum` cannot be grouped
that way: their buckets are billing's query over each bucket's [start, end), sent as a few
UNION ALL statements, and only for buckets that have events (an empty bucket is 0 for
`latest`, and holds its opening level for `weighted_sum`, which is the gauge's time-weighted
average over the bucket starting from the level the earlier buckets, and for recurring meters
the earlier months, left). A recurring `sum` or `unique_count` carries its value over: each
bucket shows the value carried to the bucket's end (the running total, or the distinct values
present), from billing's query over the bucket, and the month's quantity is the value at the
month's end. Events are never looped over in Python, so memory stays flat.
`events` counts the events the meter matches (its code and filters), with or without a value
in its field. Counts, sums and events add up over the buckets to the month; a meter's
`quantity` is the month's own aggregation (what billing bills for a calendar month), which for
unique_count, max, latest and weighted_sum is not the sum of the buckets.

**Projection.** For a month still open at `as_of` it is `invoice preview` at that moment (the
customer's billing periods that contain it, usage over the whole period); for a month still to
come it is the preview at the month's start. For a month that has ended it is the
invoices stored for it (drafts, finalized and paid ones with their corrections; void ones are
left out), or, when no run billed it yet, what `run bill --period` would bill it now. Nothing is
written in any case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Integer,
    Select,
    case,
    literal,
    literal_column,
    select,
)
from sqlalchemy import union_all as sql_union_all
from sqlalchemy.orm import Session

from neruba_cli.db import usage_sql
from neruba_cli.db.schema import Customer, Project
from neruba_cli.db.tables import events_t
from neruba_cli.db.usage_sql import CURRENT
from neruba_cli.domain.aggregation import MeterSpec, rounded_units, units_text
from neruba_cli.domain.catalog import MeterDef
from neruba_cli.domain.errors import NotFound
from neruba_cli.domain.grouping import GroupKey, group_document, group_from_document, key_order
from neruba_cli.domain.money import decimal_text, format_amount
from neruba_cli.domain.periods import Period, month_period
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.domain.usage_chart import Bucket, Granularity, buckets
from neruba_cli.services.billing import run as billing_run
from neruba_cli.services.catalog import store as catalog_store
from neruba_cli.services.invoices import preview as invoices_preview
from neruba_cli.services.invoices import read as invoices_read
from neruba_cli.services.tenancy import customers

ZERO = Decimal(0)
GROUPABLE = ("count", "sum", "max", "unique_count")  # per bucket with one GROUP BY
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # where recurring gauges start, as in billing
# Per-bucket queries per UNION ALL statement: well inside SQLite's 500 compound SELECTs and
# every driver's bound parameter limit (a bucket's query binds about ten values).
_CHUNK = 48


def show(
    engine: Engine,
    project: Project,
    customer_ident: str,
    *,
    period: str,
    meter: str | None,
    by: Granularity,
    as_of: datetime,
) -> dict[str, Any]:
    """The `usage show --json` document."""
    label = invoices_read.period_label(period, project, as_of)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        customer = customers.get_customer(session, project, customer_ident)
        known = catalog_store.stored_meters(session, project)
        if meter is not None and meter not in known:
            raise NotFound(
                f"meter {meter!r} does not exist in project {project.slug!r}",
                hint=f"meters: {', '.join(sorted(known)) or 'none (apply a catalog first)'}",
            )
    span = month_period(label, customer.timezone)
    projection = _projection(engine, project, customer, label, span, as_of)
    grid = buckets(span.start, span.end, by, customer.timezone)
    with engine.connect() as conn:
        codes = [meter] if meter is not None else _meters_to_show(conn, customer, span, projection)
        meters = [
            _meter_view(conn, project, customer, known[code], span, grid, projection)
            for code in codes
            if code in known
        ]
    return {
        "customer": customer.external_id,
        "timezone": customer.timezone,
        "period": {"label": label, "start": format_ts(span.start), "end": format_ts(span.end)},
        "by": by,
        "meters": meters,
        "projection": projection,
    }


# --------------------------------------------------------------------------- usage


def _meters_to_show(
    conn: Connection, customer: Customer, span: Period, projection: dict[str, Any]
) -> list[str]:
    """The meters the customer used in the month and the meters its invoices price."""
    used = conn.scalars(
        select(events_t.c.meter)
        .where(
            events_t.c.project_id == customer.project_id,
            events_t.c.customer_id == customer.id,
            events_t.c.ts >= span.start,
            events_t.c.ts < span.end,
            CURRENT,
        )
        .distinct()
    )
    priced = {line["meter"] for line in projection["lines"] if line["meter"]}
    return sorted(set(used) | priced)


def _meter_view(
    conn: Connection,
    project: Project,
    customer: Customer,
    meter: MeterDef,
    span: Period,
    grid: Sequence[Bucket],
    projection: dict[str, Any],
) -> dict[str, Any]:
    spec = meter.spec
    usage = _Usage(conn, project.id, customer.id, span, grid)
    counting = MeterSpec(spec.code, "count", filters=spec.filters)
    events = [int(value) for value in usage.grouped(counting)]
    opening = usage.opening(spec)
    if spec.aggregation == "count":
        quantities = [Decimal(n) for n in events]
    elif spec.carried:  # a recurring sum or unique_count: the carried value at each bucket's end
        quantities = [value or ZERO for value in usage.one_by_one(spec)]
    elif spec.aggregation in GROUPABLE:
        quantities = usage.grouped(spec)
    elif spec.aggregation == "latest":
        found = usage.one_by_one(spec, [n > 0 for n in events])
        quantities = [value or ZERO for value in found]
    else:
        quantities = usage.weighted(spec, events, opening)
    total = usage.total(spec, opening)
    amounts = [
        Decimal(line["amount"]) for line in projection["lines"] if line["meter"] == spec.code
    ]
    view = {
        "meter": spec.code,
        "name": meter.name,
        "aggregation": spec.aggregation,
        "field": spec.field,
        "buckets": [
            {
                "start": format_ts(bucket.start),
                "end": format_ts(bucket.end),
                "label": bucket.label,
                "events": count,
                "quantity": decimal_text(quantity),
            }
            for bucket, count, quantity in zip(grid, events, quantities, strict=True)
        ],
        "events": sum(events),
        "quantity": decimal_text(total),
        "amount": (format_amount(sum(amounts, ZERO), projection["currency"]) if amounts else None),
    }
    group_by = _group_by(projection, spec.code)
    if group_by:
        view["groups"] = _group_views(conn, project, customer, spec, group_by, span, projection)
    return view


def _group_by(projection: dict[str, Any], meter: str) -> list[str]:
    """The properties the customer's invoices group the meter by (their lines' `group`)."""
    for line in projection["lines"]:
        if line["meter"] == meter and line.get("group"):
            return list(line["group"])
    return []


def _group_views(
    conn: Connection,
    project: Project,
    customer: Customer,
    spec: MeterSpec,
    group_by: list[str],
    span: Period,
    projection: dict[str, Any],
) -> list[dict[str, Any]]:
    """A grouped charge's meter per group over the month, by billing's SQL (the groups its
    invoices bill, and any other group with events), with the group's projected amount."""
    values = usage_sql.aggregate_groups(
        conn,
        spec,
        group_by,
        project_id=project.id,
        start=span.start,
        end=span.end,
        customer_ids=[customer.id],
    ).get(customer.id, {})
    spans = usage_sql.group_event_stats(
        conn,
        spec,
        group_by,
        project_id=project.id,
        start=span.start,
        end=span.end,
        customer_ids=[customer.id],
    ).get(customer.id, {})
    amounts: dict[GroupKey, Decimal] = {}
    for line in projection["lines"]:
        if line["meter"] == spec.code and line.get("group"):
            key = group_from_document(group_by, line["group"])
            amounts[key] = amounts.get(key, ZERO) + Decimal(line["amount"])
    keys = sorted(set(values) | set(spans) | set(amounts), key=key_order)
    return [
        {
            "group": group_document(group_by, key),
            "events": spans.get(key, (0, None, None))[0],
            "quantity": decimal_text(values.get(key, ZERO)),
            "amount": (
                format_amount(amounts[key], projection["currency"]) if key in amounts else None
            ),
        }
        for key in keys
    ]


class _Usage:
    """Billing's aggregation SQL for one customer's month: whole, or bucket by bucket."""

    def __init__(
        self,
        conn: Connection,
        project_id: str,
        customer_id: str,
        span: Period,
        grid: Sequence[Bucket],
    ) -> None:
        self.conn, self.project_id, self.customer_id = conn, project_id, customer_id
        self.span, self.grid = span, grid

    def query(
        self, spec: MeterSpec, start: datetime, end: datetime, opening: Decimal = ZERO
    ) -> Select[Any]:
        return usage_sql.usage_query(
            spec,
            dialect=self.conn.dialect.name,
            project_id=self.project_id,
            start=start,
            end=end,
            customer_ids=[self.customer_id],
            openings={self.customer_id: opening} if opening else None,
        )

    def grouped(self, spec: MeterSpec) -> list[Decimal]:
        """count, sum, max, unique_count per bucket in one statement: billing's query for the
        month, grouped by bucket as well as by customer. Empty buckets are 0."""
        query = self.query(spec, self.span.start, self.span.end)
        if query.get_final_froms() != [events_t]:  # not a plain GROUP BY over events
            return [value or ZERO for value in self.one_by_one(spec)]
        index = _bucket_index(self.grid, 0, len(self.grid)).label("bucket")
        found = [ZERO] * len(self.grid)
        grouped = query.add_columns(index).group_by(literal_column("bucket"))
        for row in self.conn.execute(grouped):
            found[int(row.bucket)] = Decimal(row.value)
        return found

    def one_by_one(
        self,
        spec: MeterSpec,
        wanted: Sequence[bool] | None = None,
        openings: Sequence[Decimal] | None = None,
    ) -> list[Decimal | None]:
        """Billing's query over each bucket that is `wanted` (None elsewhere, and where the
        query gives no row): for latest and weighted_sum, which no GROUP BY expresses."""
        queries: dict[int, Select[Any]] = {}
        for position, bucket in enumerate(self.grid):
            if wanted is None or wanted[position]:
                opening = openings[position] if openings is not None else ZERO
                queries[position] = self.query(spec, bucket.start, bucket.end, opening)
        found: list[Decimal | None] = [None] * len(self.grid)
        found_some = _union(self.conn, list(queries.values()))
        for position, value in zip(queries, found_some, strict=True):
            found[position] = value
        return found

    def opening(self, spec: MeterSpec) -> Decimal:
        """A recurring weighted_sum meter's level when the month starts (else 0), as billing
        reads it: everything before the month."""
        if spec.aggregation != "weighted_sum" or not spec.recurring:
            return ZERO
        levels = usage_sql.closing_levels(
            self.conn,
            spec,
            project_id=self.project_id,
            start=_EPOCH,
            end=self.span.start,
            customer_ids=[self.customer_id],
        )
        return levels.get(self.customer_id, ZERO)

    def weighted(self, spec: MeterSpec, events: Sequence[int], opening: Decimal) -> list[Decimal]:
        """Each bucket's time-weighted average level. Each bucket's change (Σ deltas, or its
        last absolute value) gives the level the next one opens with; a bucket without events
        holds its opening level throughout, and the others are aggregated from theirs."""
        busy = [n > 0 for n in events]
        if spec.gauge == "delta":
            changes: list[Decimal | None] = list(self.grouped(replace(spec, aggregation="sum")))
        else:
            changes = self.one_by_one(replace(spec, aggregation="latest"), busy)
        openings: list[Decimal] = []
        level = rounded_units(opening)
        for position, change in enumerate(changes):
            openings.append(Decimal(units_text(level)))
            if change is not None and busy[position]:
                units = rounded_units(change)
                level = level + units if spec.gauge == "delta" else units
        averaged = self.one_by_one(spec, busy, openings)
        return [
            (value or ZERO) if busy[position] else openings[position]
            for position, value in enumerate(averaged)
        ]

    def total(self, spec: MeterSpec, opening: Decimal) -> Decimal:
        """The month's value, as billing aggregates a calendar month."""
        row = self.conn.execute(self.query(spec, self.span.start, self.span.end, opening)).first()
        return ZERO if row is None else Decimal(row.value)


def _bucket_index(grid: Sequence[Bucket], low: int, high: int) -> ColumnElement[Any]:
    """The bucket of an event's timestamp among grid[low:high], as a balanced CASE tree: about
    log2(buckets) comparisons a row, the same SQL on every database (bounds are bound values
    of the timestamp column's own type)."""
    if high - low == 1:
        return literal_column(str(low), Integer)
    middle = (low + high) // 2
    return case(
        (events_t.c.ts < grid[middle].start, _bucket_index(grid, low, middle)),
        else_=_bucket_index(grid, middle, high),
    )


def _union(conn: Connection, queries: Sequence[Select[Any]]) -> list[Decimal | None]:
    """Run SELECT (customer_id, value) queries for one customer, many per statement; the
    value of each (None when it returned no row), in order."""
    found: list[Decimal | None] = [None] * len(queries)
    for first in range(0, len(queries), _CHUNK):
        branches = []
        for position, query in enumerate(queries[first : first + _CHUNK], start=first):
            inner = query.subquery()
            number = literal(position, Integer).label("bucket")
            branches.append(select(number, inner.c.value))
        for row in conn.execute(sql_union_all(*branches)):
            found[int(row.bucket)] = row.value
    return found


# --------------------------------------------------------------------------- projection


def _projection(
    engine: Engine,
    project: Project,
    customer: Customer,
    label: str,
    span: Period,
    as_of: datetime,
) -> dict[str, Any]:
    if span.end <= as_of:
        with engine.connect() as conn:
            stored = [
                invoices_read.document(row)
                for row in invoices_read.select_rows(
                    conn, project, label=label, customer=customer.external_id
                )
                if row.status != "void"
            ]
            if stored:
                return _summed(customer, span.end, "invoice", stored)
            computed = [
                invoices_preview.preview_document(
                    customer.external_id, label, item.period, built, span.end
                )
                for item, built in billing_run.compute_invoices(
                    conn, project, label, customer.external_id, as_of=span.end
                )
            ]
        return _summed(customer, span.end, "run", computed)
    moment = max(as_of, span.start)
    try:
        previewed = invoices_preview.preview(engine, project, customer.external_id, at=moment)
    except NotFound:
        previewed = []  # no billing period contains the moment: nothing to bill
    return _summed(customer, moment, "preview", previewed)


def _summed(
    customer: Customer, as_of: datetime, source: str, documents: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The documents' totals added up (corrections carry their own sign), and their lines."""
    currency = documents[0]["currency"] if documents else customer.currency

    def total(key: str) -> str:
        return format_amount(sum((Decimal(doc[key]) for doc in documents), ZERO), currency)

    return {
        "as_of": format_ts(as_of),
        "source": source,
        "currency": currency,
        "subtotal": total("subtotal"),
        "credits_applied": total("credits_applied"),
        "total": total("total"),
        "lines": [
            {
                "invoice": doc["number"],
                "kind": line["kind"],
                "description": line["description"],
                "meter": line.get("meter"),
                "quantity": line.get("quantity"),
                "amount": line["amount"],
                **({"group": line["group"]} if line.get("group") else {}),
            }
            for doc in documents
            for line in doc["lines"]
        ],
        "invoices": [
            {
                "number": doc["number"],
                "kind": doc["kind"],
                "status": doc["status"],
                "label": doc["label"],
                "period": doc["period"],
                "total": doc["total"],
            }
            for doc in documents
        ],
    }
