"""Usage events as they arrive: one raw object in, a valid event or a reason out.

Pure and fast: this runs once per line of every import. The rules:

- `idempotency_key`, `customer` and `meter` are non-empty strings (keys up to 255 characters);
  an unknown top-level field is refused (a typo such as `quanity` would otherwise silently
  bill 1).
- `timestamp` is RFC 3339 with an offset; a naive one is refused unless the import names a
  time zone to read it in. Events further in the future than the allowed skew are refused.
- `quantity` is optional (1) and exact: an integer, a decimal string, or a JSON number with at
  most 15 significant digits (a JSON parser reads numbers as binary floats, which keep 15
  digits exactly; longer ones must be written as strings). NaN, infinities and booleans are
  refused; so is anything the store cannot hold exactly (12 decimal places, 26 integer digits).
- `properties` is a JSON object (default empty).
- `operation` is `"add"` (the default) or `"remove"`: a `unique_count` meter's event adds its
  value to the distinct values present, or removes it (a seat given back mid-period).

Two events with the same idempotency key are the same event when their canonical payloads
(customer, meter, timestamp, quantity, properties, and the operation when it is `remove`:
payloads of `add` events are what they were before operations existed) are equal: a
duplicate. Otherwise the second is a conflict, never stored and never dropped silently.

A JSON line is also stored with its `line_digest`: the same bytes read with the same time
zone for naive timestamps are the same event, so a line an import finds stored under its key
with its digest is a duplicate without being parsed or checked again (re-importing a file).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, NamedTuple

import orjson

from neruba_cli.domain.keys import looks_like_secret
from neruba_cli.domain.money import canonical, decimal_from_text, decimal_text
from neruba_cli.domain.suggest import did_you_mean
from neruba_cli.domain.timestamps import MIN_YEAR, parse_rfc3339

FIELDS = frozenset(
    {
        "type",
        "idempotency_key",
        "customer",
        "meter",
        "timestamp",
        "quantity",
        "properties",
        "operation",
    }
)
Operation = Literal["add", "remove"]
OPERATIONS: tuple[Operation, ...] = ("add", "remove")
MAX_KEY = 255
MAX_SCALE = 12
MAX_INTEGER_DIGITS = 26
FLOAT_DIGITS = 15
ONE = Decimal(1)


class Rejected(Exception):
    """Why a line was not accepted; the message goes to the rejects file as `reason`."""


_REASON_FIELD = re.compile(
    r"(?:unknown field '(?P<unknown>[^']+)'"
    r"|unknown (?P<named>meter|customer)\b"
    r"|negative (?P<negative>quantity)\b"
    r"|conflicts with (?:event|charge) "
    r"|(?P<field>idempotency_key|customer|meter|timestamp|quantity|operation|type|amount"
    r"|description|properties(?:\.\S+)?)\b)"
)


def reason_field(reason: str) -> str | None:
    """The input field a reject's reason is about (`quantity`, `properties.tokens`, an
    unknown field's name; `idempotency_key` for a conflict), or None (not a JSON object)."""
    found = _REASON_FIELD.match(reason)
    if found is None:
        return None
    named = [value for value in found.groups() if value is not None]
    return named[0] if named else "idempotency_key"


@dataclass(frozen=True, slots=True)
class EventInput:
    idempotency_key: str
    customer: str
    meter: str
    timestamp: datetime  # aware UTC
    quantity: Decimal
    properties: dict[str, Any]
    operation: Operation = "add"

    def canonical_payload(self) -> bytes:
        stamp = self.timestamp.isoformat(timespec="microseconds")
        return _canonical_payload(self, stamp, quantity_text(self.quantity))

    def payload_hash(self) -> str:
        return hashlib.sha256(self.canonical_payload()).hexdigest()


def _canonical_payload(event: EventInput, stamp: str, quantity: str) -> bytes:
    body = [event.customer, event.meter, stamp, quantity, event.properties]
    if event.operation == "remove":  # only then: an add's payload is what it always was
        body.append("remove")
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def line_digest(raw: bytes, assume_tz: tzinfo | None) -> int:
    """A signed 64-bit digest of one JSON line's bytes and the time zone its naive timestamps
    are read in (`--assume-tz`): the only input besides the bytes that changes which event a
    line is. Two different lines under one idempotency key share a digest with a chance of
    2^-64, so a match is taken as the same line."""
    if assume_tz is None:
        digest = hashlib.blake2b(raw, digest_size=8)
    else:  # the zone's name, then a NUL (no JSON line starts with one), then the line
        digest = hashlib.blake2b(str(assume_tz).encode() + b"\x00", digest_size=8)
        digest.update(raw)
    return int.from_bytes(digest.digest(), "big", signed=True)


def stored_operation(operation: Operation) -> str | None:
    """The `events.operation` column's value: NULL for an add, so rows stored before
    operations existed read as what they are."""
    return "remove" if operation == "remove" else None


def read_operation(stored: str | None) -> Operation:
    """The operation of a stored row (`stored_operation` read back)."""
    return "remove" if stored == "remove" else "add"


def parse_operation(value: Any) -> Operation:
    """`operation`: "add" (also when absent or null) or "remove", else Rejected."""
    if value is None or value == "add":
        return "add"
    if value == "remove":
        return "remove"
    shown = repr(value) if not isinstance(value, str) or len(value) <= 40 else repr(value[:37])
    raise Rejected(f'operation must be "add" or "remove", not {shown}')


class CheckedEvent(NamedTuple):
    """A valid event with what storing it needs, each computed once: the canonical payload's
    SHA-256, the UTC timestamp as `isoformat(timespec="microseconds")` and the quantity's
    canonical text (what `quantity_text` gives)."""

    event: EventInput
    payload_hash: str
    stamp: str
    quantity_text: str


def quantity_text(value: Decimal) -> str:
    return format(canonical(value), "f")


def validate_event(
    raw: Any, *, now: datetime, max_future: timedelta, assume_tz: tzinfo | None = None
) -> EventInput:
    return EventChecker(now=now, max_future=max_future, assume_tz=assume_tz).check(raw).event


class EventChecker:
    """`validate_event` with its limits bound once: the per-line hot path of every import."""

    __slots__ = ("assume_tz", "latest", "max_future", "now")

    def __init__(
        self, *, now: datetime, max_future: timedelta, assume_tz: tzinfo | None = None
    ) -> None:
        self.now = now
        self.max_future = max_future
        self.assume_tz = assume_tz
        try:  # `timestamp - now > max_future`, as one comparison
            self.latest: datetime | None = now + max_future
        except OverflowError:  # beyond year 9999: no timestamp can be that far ahead
            self.latest = None

    def check(self, raw: Any) -> CheckedEvent:
        if not isinstance(raw, dict):
            raise Rejected("expected a JSON object")
        if not FIELDS.issuperset(raw):
            for name in raw:
                if name not in FIELDS:
                    raise Rejected(_unknown_field(name))
        kind = raw.get("type", "event")
        if kind != "event":
            raise Rejected(f"type {kind!r} is not event or charge")
        key = identifier(_text(raw, "idempotency_key"), "idempotency_key")
        if len(key) > MAX_KEY:
            raise Rejected(f"idempotency_key is longer than {MAX_KEY} characters")
        customer = identifier(_text(raw, "customer"), "customer")
        meter = _text(raw, "meter")
        timestamp = parse_timestamp(raw.get("timestamp"), self.assume_tz)
        latest = self.latest
        if latest is not None and timestamp > latest:
            ahead = timestamp - self.now
            raise Rejected(
                f"timestamp is {_describe(ahead)} in the future (more than the allowed "
                f"{_describe(self.max_future)})"
            )
        quantity, text = _quantity(raw.get("quantity"))
        properties = raw.get("properties")
        if properties is None:
            properties = {}
        elif not isinstance(properties, dict):
            raise Rejected("properties must be a JSON object")
        operation = parse_operation(raw.get("operation"))
        event = EventInput(key, customer, meter, timestamp, quantity, properties, operation)
        stamp = timestamp.isoformat(timespec="microseconds")
        try:
            payload = _canonical_payload(event, stamp, text)
        except orjson.JSONEncodeError:  # a number of exact_json's that JSON cannot store
            raise Rejected(_unstorable(properties, "properties")) from None
        if b"\\u0000" in payload and _has_nul(properties):  # the scan only when it may be
            raise Rejected("properties contain a NUL character (\\u0000)")
        digest = hashlib.sha256(payload).hexdigest()
        return CheckedEvent(event, digest, stamp, text)


_ONE = (ONE, "1")
_QUANTITIES: dict[str, tuple[Decimal, str]] = {}  # recent decimal strings, parsed
_QUANTITIES_KEPT = 16384


@functools.lru_cache(maxsize=256)
def _unknown_field(name: str) -> str:
    """The reason, with the field probably meant (`quanity` → `quantity`)."""
    hint = did_you_mean(name, sorted(FIELDS))
    return f"unknown field {name!r}" + (f" — {hint}" if hint else "")


def _quantity(given: Any) -> tuple[Decimal, str]:
    """`parse_quantity` (1 when absent) and its canonical text; decimal strings, which
    repeat a lot within a file, are remembered."""
    if given is None:
        return _ONE
    kind = type(given)
    if kind is int:  # an integer is its own canonical spelling
        text = str(given)
        if len(text) - (given < 0) > MAX_INTEGER_DIGITS:
            raise Rejected(f"quantity has more than {MAX_INTEGER_DIGITS} integer digits")
        return Decimal(given), text
    if kind is not str:  # floats, booleans, anything else: the full rules
        value = parse_quantity(given)
        return value, quantity_text(value)
    found = _QUANTITIES.get(given)
    if found is None:
        value = parse_quantity(given)
        found = (value, decimal_text(value))
        if len(_QUANTITIES) >= _QUANTITIES_KEPT:
            _QUANTITIES.clear()
        _QUANTITIES[given] = found
    return found


def identifier(value: str, name: str) -> str:
    """An id stored in clear (an idempotency key, a customer id) must not be a secret pasted
    into the wrong field: the line is rejected, and the reason does not repeat the value."""
    if "_" in value and looks_like_secret(value):
        raise Rejected(
            f"{name} looks like a secret (an API key, invite token or Stripe key), not an id"
        )
    return value


def _text(raw: dict[str, Any], name: str) -> str:
    value = raw.get(name)
    if value is None:
        raise Rejected(f"{name} is required")
    if not isinstance(value, str):
        raise Rejected(f"{name} must be a string")
    value = value.strip()
    if not value:
        raise Rejected(f"{name} is empty")
    if "\x00" in value:
        raise Rejected(f"{name} contains a NUL character (\\u0000)")
    return value


def _has_nul(value: Any) -> bool:
    """Whether a NUL character is in any string of a JSON value (object keys too): PostgreSQL
    cannot store one in text, so no database is asked to (the same file, the same outcome)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in key or _has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


INT64 = (-(1 << 63), (1 << 64) - 1)
"""The integers stored properties hold (orjson's range: signed and unsigned 64-bit)."""


def _unstorable(value: Any, path: str) -> str:
    """Why a property value cannot be stored as it was written: a JSON number with more digits
    than a float holds, or an integer beyond 64 bits (exact_json keeps both exact)."""
    if isinstance(value, dict):
        items: Any = ((f"{path}.{key}", item) for key, item in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        if isinstance(value, Decimal):
            try:
                parse_quantity(value, path)
            except Rejected as exc:
                return str(exc)
        if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
            return (
                f"{path} {value} is beyond the 64-bit integers a property holds; "
                "write it as a string"
            )
        return ""
    for where, item in items:
        reason = _unstorable(item, where)
        if reason:
            return reason
    return "properties cannot be stored as JSON" if path == "properties" else ""


def parse_timestamp(value: Any, assume_tz: tzinfo | None = None) -> datetime:
    """An event's RFC 3339 timestamp (timestamps.parse_rfc3339) in UTC, within the years
    MIN_YEAR to 9999 there."""
    if not isinstance(value, str):
        raise Rejected("timestamp is required" if value is None else "timestamp must be a string")
    try:
        moment = parse_rfc3339(value)
    except ValueError as exc:
        raise Rejected(f"timestamp {exc}") from None
    if moment.tzinfo is None:
        if assume_tz is None:
            raise Rejected("timestamp has no time-zone offset")
        moment = moment.replace(tzinfo=assume_tz)
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is past year 9999 in UTC
        raise Rejected(f"timestamp {value!r} is out of range in UTC") from None
    if utc.year < MIN_YEAR:
        raise Rejected(f"timestamp {value!r} is before the year {MIN_YEAR} in UTC")
    return utc


def parse_quantity(value: Any, name: str = "quantity") -> Decimal:
    """A number billing reads — `quantity`, or a property a meter reads (`name` says which,
    for the reason) — exactly as stored, or Rejected. JSON numbers are read from the digits
    in the file: an integer is exact at any length; a number with a fraction or an exponent
    has at most FLOAT_DIGITS significant digits (readers.exact_json hands one with more as a
    Decimal, which is refused here: a float would have rounded it). Strings are ASCII
    decimals (money.decimal_from_text)."""
    if isinstance(value, bool):
        raise Rejected(f"{name} must be a number, not a boolean")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise Rejected(f"{name} must be finite")
        text = repr(value)
        if _significant_digits(text) > FLOAT_DIGITS:
            raise Rejected(_too_many_digits(name, text))
        amount = Decimal(text)
    elif isinstance(value, Decimal):  # a JSON number whose digits a float cannot hold
        if not value.is_finite():
            raise Rejected(f"{name} must be finite")
        _bounded(value, name)
        if len(value.as_tuple().digits) > FLOAT_DIGITS:
            raise Rejected(_too_many_digits(name, str(value), f'"{value}"'))
        amount = value
    elif isinstance(value, str):
        try:
            amount = decimal_from_text(value)
        except InvalidOperation:
            raise Rejected(
                f"{name} {value[:40]!r} is not a number (ASCII digits, an optional sign, "
                "point and exponent)"
            ) from None
        if not amount.is_finite():
            raise Rejected(f"{name} must be finite")
    else:
        raise Rejected(f"{name} must be a number or a decimal string")
    return _storable(amount, name)


def _too_many_digits(name: str, text: str, example: str = '"0.1234567890123456"') -> str:
    return (
        f"{name} {text} has more than {FLOAT_DIGITS} significant digits; "
        f"write it as a string, e.g. {example}"
    )


def _bounded(amount: Decimal, name: str) -> None:
    """The bounds, from the exponent alone: canonical() writes every digit out, and
    "1e999999999" (or "0e999999999") would take minutes and gigabytes to write."""
    if amount.is_zero():
        return
    if amount.adjusted() >= MAX_INTEGER_DIGITS:
        raise Rejected(f"{name} has more than {MAX_INTEGER_DIGITS} integer digits")
    if amount.adjusted() < -MAX_SCALE:
        raise Rejected(f"{name} has more than {MAX_SCALE} decimal places")


def _storable(amount: Decimal, name: str = "quantity") -> Decimal:
    if amount.is_zero():
        return Decimal(0)
    _bounded(amount, name)
    value = canonical(amount)
    _, digits, exp = value.as_tuple()
    assert isinstance(exp, int)
    if -exp > MAX_SCALE:
        raise Rejected(f"{name} has more than {MAX_SCALE} decimal places")
    if len(digits) + exp > MAX_INTEGER_DIGITS:
        raise Rejected(f"{name} has more than {MAX_INTEGER_DIGITS} integer digits")
    return value


def _significant_digits(text: str) -> int:
    mantissa = text.lower().split("e")[0].lstrip("-").replace(".", "").lstrip("0")
    return len(mantissa.rstrip("0")) or 1


def _describe(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
