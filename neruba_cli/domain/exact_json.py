"""One JSON line of input read exactly: numbers from the digits in the file, each key once.

orjson is fast, but it reads every number with a fraction or exponent, and every integer past
64 bits, as a binary float — `99999999999999999999` becomes 1e20, `1.0000000000000001`
becomes 1.0 — and keeps the last of two equal keys (`"quantity": 1, "quantity": 1000` is 1000).
Neither can be seen in what it returns. So `loads` parses with orjson and compares what it
returned with the bytes, in one walk over the value:

- a key given twice leaves its quotes in the bytes: without a backslash in the line (an
  escaped quote), the line holds exactly two quotes per key and per string of the value;
- a number only loses digits where orjson returned a float, and then only when the line has a
  run of 16 or more digits and points.

Only a line with a backslash, quotes that do not add up, or a float and a long run of digits
is parsed again with the standard library, exactly: integers as Python ints (any length),
numbers that a float rounds as Decimals (events.parse_quantity refuses them where they are
read, and storing refuses them elsewhere), and a key given twice in any object is an error.
Other lines, nearly all of them, pay one walk over the value and two byte scans.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import orjson

FLOAT_DIGITS = 15
_LONG_NUMBER = re.compile(rb"[0-9][0-9.]{15}")
_MAX_INT_TEXT = 4000  # below Python's 4300-digit limit on int(); longer ones stay Decimal


class JsonError(ValueError):
    """Why a line is not one JSON value Neruba reads: the message is the reject's reason."""


def loads(data: bytes | str) -> Any:
    """The JSON value of one line, numbers exact and keys unique (see the module docstring)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise JsonError(f"invalid JSON: {exc}") from None
    raw = data.encode() if isinstance(data, str) else data
    if b"\\" in raw:
        return _exact(raw)
    try:
        tally = _tally(value)
    except RecursionError:  # nested past Python's stack: the exact parse says so
        return _exact(raw)
    if raw.count(b'"') != 2 * (tally & _STRINGS):
        return _exact(raw)
    if tally > _STRINGS and _LONG_NUMBER.search(raw) is not None:
        return _exact(raw)
    return value


_FLOAT = 1 << 40  # _tally's unit for floats, above the count of keys and strings
_STRINGS = _FLOAT - 1


def _tally(value: Any) -> int:
    """Keys and strings in a parsed value, plus _FLOAT for each float."""
    kind = type(value)
    if kind is str:
        return 1
    if kind is float:
        return _FLOAT
    if kind is dict:
        count = len(value)
        items = value.values()
    elif kind is list:
        count = 0
        items = value
    else:
        return 0
    for item in items:
        kind = type(item)
        if kind is str:
            count += 1
        elif kind is float:
            count += _FLOAT
        elif kind is dict or kind is list:
            count += _tally(item)
    return count


def _exact(raw: bytes) -> Any:
    try:
        return json.loads(raw, object_pairs_hook=_unique, parse_float=_float, parse_int=_int)
    except RecursionError:
        raise JsonError("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # JsonError from the hooks; nothing else after orjson's parse
        raise JsonError(str(exc)) from None


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    made = dict(pairs)
    if len(made) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonError(f"duplicate key {key[:60]!r} in a JSON object")
            seen.add(key)
    return made


def _float(text: str) -> float | Decimal:
    """A float when it holds the written number's digits (at most 15 significant), else the
    exact Decimal."""
    mantissa = text.lower().partition("e")[0].lstrip("-").replace(".", "").lstrip("0")
    if len(mantissa.rstrip("0")) <= FLOAT_DIGITS:
        return float(text)
    return Decimal(text)


def _int(text: str) -> int | Decimal:
    return int(text) if len(text) <= _MAX_INT_TEXT else Decimal(text)
