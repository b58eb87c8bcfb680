"""Pricing by property value: a charge with `group_by = ["region"]` splits its meter's events
by the values of those properties and prices each group on its own, one invoice line each.

The rules, exactly:

- **A group's value** is the property as a JSON string, compared code point for code point,
  exactly as a meter filter compares (domain/aggregation.py): `"eu"`, `"EU"` and `"eu "` are
  three groups. A missing property, `null`, a number, a boolean, an object or an array has no
  value: such events form the group shown as `(none)` (`null` in JSON), which is priced at the
  charge's own (default) price.
- **Aggregation per group.** Each group is the meter's aggregation over the events of that
  group only (`count`, `sum`, `max`, `unique_count`, `latest`, `weighted_sum` and the per-event
  values of percentage charges), with the meter's own filters applied first.
- **Price per group.** A group listed in `[[plans.charges.groups]]` (its `values` name every
  `group_by` property) is priced with the charge's parameters overridden by the group's own;
  any other group, `(none)` included, at the charge's parameters. The price model is the
  charge's. `free_units`, `min_amount` and `max_amount` apply per group (each group is rated
  as a charge of its own); a group may set its own.
- **Which lines.** Every listed group has a line, like any charge, usage or not; any other
  group has a line when it has events. Listed groups come first in catalog order, then the
  others by value (code point order, `(none)` last).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal

from neruba_cli.domain.aggregation import (
    EventRecord,
    MeterSpec,
    aggregate,
    matches,
    transaction_values,
)
from neruba_cli.domain.pricing import Charge

GroupKey = tuple[str | None, ...]
"""A group's values, in `group_by` order; None where the event has no string value."""

NONE_TEXT = "(none)"


def group_key(group_by: Sequence[str], properties: Mapping[str, object]) -> GroupKey:
    """The group an event's properties fall in."""
    return tuple(_string(properties.get(name)) for name in group_by)


def _string(value: object) -> str | None:
    return value if isinstance(value, str) else None


def listed_key(group_by: Sequence[str], values: Iterable[tuple[str, str]]) -> GroupKey:
    """The key of a catalog group (its `values` name every `group_by` property)."""
    given = dict(values)
    return tuple(given[name] for name in group_by)


def group_document(group_by: Sequence[str], key: GroupKey) -> dict[str, str | None]:
    """The group as JSON: `{"region": "eu"}`, `{"region": null}` for events without one."""
    return dict(zip(group_by, key, strict=True))


def group_text(group_by: Sequence[str], key: GroupKey) -> str:
    """The group as a line's description names it: `region: eu`, `region: (none)`."""
    return ", ".join(
        f"{name}: {NONE_TEXT if value is None else value}"
        for name, value in zip(group_by, key, strict=True)
    )


def group_condition(group: Mapping[str, object]) -> str:
    """A stored line's group as a condition on events: `region = 'eu'`, `region = (none)`."""
    return ", ".join(
        f"{name} = {repr(value) if isinstance(value, str) else NONE_TEXT}"
        for name, value in group.items()
    )


def group_from_document(group_by: Sequence[str], document: Mapping[str, object]) -> GroupKey:
    """The key of a stored line's `group`."""
    return tuple(_string(document.get(name)) for name in group_by)


def key_order(key: GroupKey) -> tuple[tuple[bool, str], ...]:
    """Groups in order of their values (code point order), no value last."""
    return tuple((value is None, value or "") for value in key)


def charge_for(charge: Charge, key: GroupKey) -> Charge:
    """The charge that prices group `key`: the listed group's, else the charge itself."""
    for group in charge.groups:
        if listed_key(charge.group_by, group.values) == key:
            return group.charge
    return charge


def billed_keys(charge: Charge, observed: Iterable[GroupKey]) -> list[GroupKey]:
    """The groups that get a line: every listed group in catalog order, then the other groups
    that have usage, by value (code point order, no value last)."""
    listed = [listed_key(charge.group_by, group.values) for group in charge.groups]
    others = sorted(set(observed) - set(listed), key=key_order)
    return listed + others


def _split(
    group_by: Sequence[str], events: Iterable[EventRecord]
) -> dict[GroupKey, list[EventRecord]]:
    groups: dict[GroupKey, list[EventRecord]] = {}
    for event in events:
        groups.setdefault(group_key(group_by, event.properties), []).append(event)
    return groups


def aggregate_groups(
    meter: MeterSpec,
    group_by: Sequence[str],
    events: Iterable[EventRecord],
    start: datetime,
    end: datetime,
    *,
    period: tuple[datetime, datetime] | None = None,
) -> dict[GroupKey, Decimal]:
    """The meter's value per group over [start, end): the pure reference billing's SQL
    (db/usage_sql.py, `group_by`) equals. Only groups with a matching event in the window
    appear (the others are 0); a recurring sum or unique_count reads every event before `end`
    (its carried value), so its window has no start."""
    inside = [
        event
        for event in events
        if (meter.carried or start <= event.timestamp) and event.timestamp < end
    ]
    return {
        key: aggregate(meter, members, start, end, period=period)
        for key, members in _split(group_by, inside).items()
        if any(matches(meter, event) for event in members)
    }


def transaction_groups(
    meter: MeterSpec,
    group_by: Sequence[str],
    events: Iterable[EventRecord],
    start: datetime,
    end: datetime,
) -> dict[GroupKey, tuple[Decimal, ...]]:
    """Percentage charges: each group's per-event values in (timestamp, sequence) order."""
    return {
        key: transaction_values(meter, members, start, end)
        for key, members in _split(group_by, events).items()
    }
