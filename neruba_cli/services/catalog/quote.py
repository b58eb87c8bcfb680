"""`catalog quote`: usage from flags or from an events file, priced on a stored plan."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from neruba_cli.domain import aggregation, exact_json, grouping, prorated_usage
from neruba_cli.domain.aggregation import EventRecord
from neruba_cli.domain.catalog import MeterDef, PlanDef
from neruba_cli.domain.errors import InvalidInput, UsageError
from neruba_cli.domain.events import Rejected, parse_operation, parse_quantity, parse_timestamp
from neruba_cli.domain.grouping import GroupKey
from neruba_cli.domain.meter_values import check_meter_value
from neruba_cli.domain.money import decimal_from_text
from neruba_cli.domain.periods import Period
from neruba_cli.domain.pricing import Usage
from neruba_cli.domain.suggest import did_you_mean

PERCENTAGE_MODELS = ("percentage", "graduated_percentage")


@dataclass
class QuoteUsage:
    """What a quote prices: each meter's value, and a grouped charge's value per group."""

    meters: dict[str, Usage] = field(default_factory=dict)
    groups: dict[str, dict[GroupKey, Usage]] = field(default_factory=dict)

    def updated(self, other: QuoteUsage) -> QuoteUsage:
        """This usage with `other`'s values on top (flags over a file)."""
        groups = {meter: dict(values) for meter, values in self.groups.items()}
        for meter, values in other.groups.items():
            groups.setdefault(meter, {}).update(values)
        return QuoteUsage({**self.meters, **other.meters}, groups)


def usage_from_pairs(pairs: Sequence[str], plan: PlanDef) -> QuoteUsage:
    """`--usage api_calls=12000`: the period's aggregated value of each meter;
    `--usage api_calls[region=eu]=1200` one group's of a grouped charge (a grouped charge's
    plain METER=QUANTITY is the group of events without the properties, `(none)`)."""
    charges = {charge.meter: charge for charge in plan.charges}
    usage = QuoteUsage()
    for pair in pairs:
        meter, values, quantity = parse_usage_pair(pair)
        charge = charges.get(meter)
        if charge is None:
            raise InvalidInput(
                f"--usage {pair!r}: plan {plan.code} has no charge on meter {meter!r}",
                hint=f"charged meters: {', '.join(sorted(charges)) or 'none'}",
            )
        if not charge.group_by:
            if values:
                raise InvalidInput(
                    f"--usage {pair!r}: the charge on {meter} has no group_by; "
                    f"write {meter}=QUANTITY"
                )
            usage.meters[meter] = Usage(quantity)
            continue
        if values and set(values) != set(charge.group_by):
            raise InvalidInput(
                f"--usage {pair!r}: name every group_by property of {meter}: "
                + ", ".join(charge.group_by),
                hint=f"e.g. {meter}[{','.join(f'{n}=VALUE' for n in charge.group_by)}]=QUANTITY",
            )
        key = tuple(values.get(name) for name in charge.group_by)
        usage.groups.setdefault(meter, {})[key] = Usage(quantity)
    return usage


def parse_usage_pair(pair: str) -> tuple[str, dict[str, str], Decimal]:
    """One `--usage METER=QUANTITY` or `METER[PROP=VALUE,...]=QUANTITY`: the meter's code,
    the group's values (none for a plain meter) and a quantity of 0 or more."""
    values: dict[str, str] = {}
    head, bracket, rest = pair.partition("[")
    if bracket:
        inside, closed, tail = rest.partition("]")
        if not closed or not tail.startswith("="):
            raise InvalidInput(
                f"--usage {pair!r}: write METER[PROPERTY=VALUE]=QUANTITY, "
                "e.g. api_calls[region=eu]=1200"
            )
        for item in inside.split(","):
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise InvalidInput(f"--usage {pair!r}: {item!r} is not PROPERTY=VALUE")
            values[name.strip()] = value
        meter, text = head, tail[1:]
    else:
        meter, sep, text = pair.partition("=")
        if not sep:
            raise InvalidInput(f"--usage {pair!r}: write METER=QUANTITY, e.g. api_calls=12000")
    try:
        quantity = decimal_from_text(text)
    except InvalidOperation:
        raise InvalidInput(f"--usage {pair!r}: {text!r} is not a number") from None
    if not quantity.is_finite() or quantity < 0:
        raise InvalidInput(f"--usage {pair!r}: the quantity must be 0 or more")
    return meter.strip(), values, quantity


def usage_from_events(
    path: Path,
    plan: PlanDef,
    meters: dict[str, MeterDef],
    period: Period | None,
    customer: str | None = None,
    tz: str = "UTC",
) -> QuoteUsage:
    """Aggregate a JSONL events file with the meters' own rules (the pure reference), per
    group for a grouped charge.

    Without a period the events' own span is used; weighted_sum meters need a period, since
    their result is a time average over it. A quote prices one customer's usage (tiers,
    free units and minimums apply per customer), so a file holding several customers needs
    `customer` to pick one: adding them up would price usage no invoice ever bills.
    """
    by_meter: dict[str, list[EventRecord]] = defaultdict(list)
    owners: set[str | None] = set()
    for number, event in enumerate(_read_events(path), start=1):
        meter = event.get("meter")
        if not isinstance(meter, str) or meter not in meters:
            continue
        owner = event.get("customer")
        owners.add(owner if isinstance(owner, str) else None)
        if customer is None or owner == customer:
            where = f"{path}:{event['__line__']}"
            record = _record(event, where, number)
            try:  # the property the meter reads, as ingest and billing read it
                check_meter_value(meters[meter].spec, record.properties)
            except Rejected as exc:
                raise InvalidInput(f"{where}: {exc}") from None
            by_meter[meter].append(record)
    _check_customers(path, owners, customer)
    usage = QuoteUsage()
    for charge in plan.charges:
        spec = meters[charge.meter].spec
        events = by_meter.get(charge.meter, [])
        if not events and period is None:
            if not charge.group_by:
                usage.meters[charge.meter] = Usage(Decimal(0), ())
            continue
        start, end = _window(events, period, spec.aggregation, charge.meter)
        percentage = charge.model in PERCENTAGE_MODELS
        if charge.group_by:
            values = grouping.aggregate_groups(spec, charge.group_by, events, start, end)
            transactions = (
                grouping.transaction_groups(spec, charge.group_by, events, start, end)
                if percentage
                else {}
            )
            usage.groups[charge.meter] = {
                key: Usage(value, transactions.get(key, ()) if percentage else None)
                for key, value in values.items()
            }
            continue
        quantity = aggregation.aggregate(spec, events, start, end)
        transaction_list = None
        if percentage:
            transaction_list = aggregation.transaction_values(spec, events, start, end)
        prorated = None
        if charge.prorated and period is not None:  # the file is the history: prorate it
            grid = prorated_usage.weights(start, end, period, plan.proration, tz)
            prorated = prorated_usage.prorated_units(spec, events, grid)
        usage.meters[charge.meter] = Usage(quantity, transaction_list, prorated)
    return usage


def _check_customers(path: Path, owners: set[str | None], customer: str | None) -> None:
    named = sorted(owner for owner in owners if owner is not None)
    listing = ", ".join(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
    if customer is None and len(owners) > 1:
        raise UsageError(
            f"{path} holds the events of {len(owners)} customers ({listing}): a quote prices "
            "one customer's usage",
            hint="pass --customer ID to quote one of them",
        )
    if customer is not None and customer not in owners:
        hint = did_you_mean(customer, named)
        raise InvalidInput(
            f"{path} has no events of customer {customer!r} on this plan's meters"
            + (f" — {hint}" if hint else ""),
            hint=f"customers in it: {listing}" if named else None,
        )


def _window(
    events: list[EventRecord], period: Period | None, kind: str, meter: str
) -> tuple[datetime, datetime]:
    if period is not None:
        return period.start, period.end
    if kind == "weighted_sum":
        raise InvalidInput(
            f"meter {meter} is a weighted_sum: pass --period YYYY-MM to average over a period"
        )
    first = min(event.timestamp for event in events)
    last = max(event.timestamp for event in events)
    return first, last + timedelta(microseconds=1)


def _read_events(path: Path) -> Any:
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        for line_number, line in enumerate(_decoded(handle, path), start=1):
            if not line.strip():
                continue
            try:  # the lines ingest reads: exact numbers, each key once, bounded nesting
                event = exact_json.loads(line)
            except exact_json.JsonError as exc:
                raise InvalidInput(f"{path}:{line_number}: {exc}") from None
            if not isinstance(event, dict):
                raise InvalidInput(f"{path}:{line_number}: expected a JSON object")
            event["__line__"] = line_number
            yield event


def _record(event: dict[str, Any], where: str, sequence: int) -> EventRecord:
    """The event as billing would read it, by ingest's rules (domain/events.py): an RFC 3339
    timestamp with an offset, a quantity the store holds exactly (1 when absent)."""
    try:
        timestamp = parse_timestamp(event.get("timestamp"))
        value = parse_quantity(event.get("quantity", 1))
        operation = parse_operation(event.get("operation"))
    except Rejected as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    properties = event.get("properties") or {}
    if not isinstance(properties, dict):
        raise InvalidInput(f"{where}: properties must be an object")
    return EventRecord(timestamp, value, properties, sequence, operation)


def _decoded(handle: Any, path: Path) -> Any:
    for number, data in enumerate(handle, start=1):
        if number == 1 and data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        try:
            yield data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{path}:{number}: not UTF-8 text") from None
