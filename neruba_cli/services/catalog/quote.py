"""`catalog quote`: usage from flags or from an events file, priced on a stored plan."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from neruba_cli.domain import aggregation, exact_json
from neruba_cli.domain.aggregation import EventRecord
from neruba_cli.domain.catalog import MeterDef, PlanDef
from neruba_cli.domain.errors import InvalidInput, UsageError
from neruba_cli.domain.events import Rejected, parse_quantity, parse_timestamp
from neruba_cli.domain.meter_values import check_meter_value
from neruba_cli.domain.money import decimal_from_text
from neruba_cli.domain.periods import Period
from neruba_cli.domain.pricing import Usage
from neruba_cli.domain.suggest import did_you_mean

PERCENTAGE_MODELS = ("percentage", "graduated_percentage")


def usage_from_pairs(pairs: Sequence[str], plan: PlanDef) -> dict[str, Usage]:
    """`--usage api_calls=12000`: the period's aggregated value of each meter."""
    charged = {charge.meter for charge in plan.charges}
    usage: dict[str, Usage] = {}
    for pair in pairs:
        meter, quantity = parse_usage_pair(pair)
        if meter not in charged:
            raise InvalidInput(
                f"--usage {pair!r}: plan {plan.code} has no charge on meter {meter!r}",
                hint=f"charged meters: {', '.join(sorted(charged)) or 'none'}",
            )
        usage[meter] = Usage(quantity)
    return usage


def parse_usage_pair(pair: str) -> tuple[str, Decimal]:
    """One `--usage METER=QUANTITY`: the meter's code and a quantity of 0 or more."""
    meter, sep, text = pair.partition("=")
    if not sep:
        raise InvalidInput(f"--usage {pair!r}: write METER=QUANTITY, e.g. api_calls=12000")
    try:
        quantity = decimal_from_text(text)
    except InvalidOperation:
        raise InvalidInput(f"--usage {pair!r}: {text!r} is not a number") from None
    if not quantity.is_finite() or quantity < 0:
        raise InvalidInput(f"--usage {pair!r}: the quantity must be 0 or more")
    return meter.strip(), quantity


def usage_from_events(
    path: Path,
    plan: PlanDef,
    meters: dict[str, MeterDef],
    period: Period | None,
    customer: str | None = None,
) -> dict[str, Usage]:
    """Aggregate a JSONL events file with the meters' own rules (the pure reference).

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
    usage: dict[str, Usage] = {}
    for charge in plan.charges:
        spec = meters[charge.meter].spec
        events = by_meter.get(charge.meter, [])
        if not events and period is None:
            usage[charge.meter] = Usage(Decimal(0), ())
            continue
        start, end = _window(events, period, spec.aggregation, charge.meter)
        quantity = aggregation.aggregate(spec, events, start, end)
        transactions = None
        if charge.model in PERCENTAGE_MODELS:
            transactions = aggregation.transaction_values(spec, events, start, end)
        usage[charge.meter] = Usage(quantity, transactions)
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
    except Rejected as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    properties = event.get("properties") or {}
    if not isinstance(properties, dict):
        raise InvalidInput(f"{where}: properties must be an object")
    return EventRecord(timestamp, value, properties, sequence)


def _decoded(handle: Any, path: Path) -> Any:
    for number, data in enumerate(handle, start=1):
        if number == 1 and data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        try:
            yield data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{path}:{number}: not UTF-8 text") from None
