"""Correcting stored usage: the rules of `events void`, `events amend` and `ingest --replace`.

A stored event is never deleted. A correction writes a new *version* of it and keeps the one
it supersedes, with who, when and why:

- **void**: the event stops counting (its row and key stay, so a replay of its line is still
  a duplicate); voiding a voided event changes nothing;
- **amend**: its quantity and/or properties change; its key, customer, meter and timestamp
  never do (a different moment or customer is a different event: void it and ingest a new
  one). A voided event cannot be amended;
- **replace** (`ingest FILE --replace --customer C --meter M --from T1 --to T2`): the file is
  the whole truth about that window. Its lines whose key is stored in the window with other
  values amend it (a voided one comes back), new keys are stored, and the window's stored
  events the file leaves out are voided.

Billing reads only current, non-voided versions; the project's late-event policy decides what
a correction does to a finalized invoice, exactly as for a late event.

A key's payload hash stays the one of the line that first stored it. A plain `ingest` line
with a stored key is a duplicate when it repeats the key's first line (replaying the original
file after a correction: the correction stands) or the event's current version (replaying the
file of an `ingest --replace`); the summary counts both as `duplicates_of_corrected`. Any
other values under the key are a conflict, as before: corrections go through these commands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from neruba_cli.domain.errors import InvalidInput, UsageError
from neruba_cli.domain.exact_json import JsonError
from neruba_cli.domain.exact_json import loads as json_loads
from neruba_cli.domain.timestamps import format_ts

VOID = "void"
AMEND = "amend"
REPLACE = "replace"
CHANGES = (VOID, AMEND, REPLACE)
MAX_REASON = 1000
MAX_KEYS = 10_000  # keys one `events void` takes


def check_reason(text: str) -> str:
    """The reason every correction records: some words, at most MAX_REASON characters."""
    reason = text.strip()
    if not reason:
        raise UsageError("--reason: say why the events are corrected (it is kept with them)")
    if len(reason) > MAX_REASON:
        raise UsageError(f"--reason is longer than {MAX_REASON} characters")
    return reason


def check_keys(keys: Sequence[str]) -> list[str]:
    """The keys of `events void`, each once, in the order given."""
    unique = list(dict.fromkeys(keys))
    if not unique:
        raise UsageError("name at least one event key")
    if len(unique) > MAX_KEYS:
        raise UsageError(f"at most {MAX_KEYS} keys per command (got {len(unique)})")
    return unique


def property_assignments(items: Sequence[str]) -> dict[str, Any]:
    """`--property k=v` values: `v` is read as JSON when it is JSON (`3`, `true`, `"10"`),
    else as a string (`eu`)."""
    assigned: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--property {item!r}: expected NAME=VALUE, e.g. region=eu")
        if name in assigned:
            raise UsageError(f"--property {name} is given twice")
        try:
            value = json_loads(text) if text else ""
        except (JsonError, ValueError):
            value = text
        assigned[name] = value
    return assigned


@dataclass(frozen=True)
class StoredVersion:
    """The current version of a stored event, as the correction found it."""

    key: str
    customer: str  # external id
    meter: str
    timestamp: datetime
    quantity: Decimal
    properties: Mapping[str, Any]
    voided: bool
    version: int
    operation: str = "add"


def amended_line(
    stored: StoredVersion, quantity: str | None, properties: Mapping[str, Any]
) -> dict[str, Any]:
    """The event line the amendment stands for: the stored one with the new quantity and the
    properties merged in. It is validated as an ingested line would be."""
    if stored.voided:
        raise InvalidInput(
            f"event {stored.key!r} is voided: an amendment cannot bring it back",
            hint="ingest it again under a new key, or `ingest --replace` its window",
        )
    if quantity is None and not properties:
        raise UsageError("say what changes: --quantity Q and/or --property NAME=VALUE")
    line: dict[str, Any] = {
        "idempotency_key": stored.key,
        "customer": stored.customer,
        "meter": stored.meter,
        "timestamp": _text(stored.timestamp),
        "quantity": str(stored.quantity) if quantity is None else quantity,
        "properties": {**stored.properties, **properties},
    }
    if stored.operation != "add":
        line["operation"] = stored.operation
    return line


def same_values(
    stored: StoredVersion,
    quantity: Decimal,
    properties: Mapping[str, Any],
    operation: str = "add",
) -> bool:
    """The new version would hold what the current one holds (a correction with nothing to
    change writes nothing)."""
    return (
        not stored.voided
        and stored.quantity == quantity
        and dict(stored.properties) == dict(properties)
        and stored.operation == operation
    )


@dataclass(frozen=True)
class ReplaceWindow:
    """`ingest --replace`: one customer's events of one meter in [start, end)."""

    customer: str
    meter: str
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise UsageError("--to must be after --from")

    def outside(self, customer: str, meter: str, timestamp: datetime) -> str | None:
        """Why an event of the replacing file does not belong to the window, or None."""
        if customer != self.customer:
            return f"customer {customer!r} is not the replaced window's {self.customer!r}"
        if meter != self.meter:
            return f"meter {meter!r} is not the replaced window's {self.meter!r}"
        if not self.start <= timestamp < self.end:
            return (
                f"timestamp {_text(timestamp)} is outside the replaced window "
                f"[{_text(self.start)}, {_text(self.end)})"
            )
        return None

    def as_dict(self) -> dict[str, str]:
        return {
            "customer": self.customer,
            "meter": self.meter,
            "from": _text(self.start),
            "to": _text(self.end),
        }


def _text(moment: datetime) -> str:
    return format_ts(moment) or ""
