"""One JSON line of input read exactly: numbers from the digits in the file, each key once.

orjson is fast, but it reads every number with a fraction or exponent, and every integer past
64 bits, as a binary float — `99999999999999999999` becomes 1e20, `1.0000000000000001`
becomes 1.0 — and keeps the last of two equal keys (`"quantity": 1, "quantity": 1000` is 1000).
Neither can be seen in what it returns. So `loads` parses with orjson and looks at the bytes
for the two things that can hide:

- a run of 16 or more digits and points (a number that may hold more than a float's 15
  significant digits, or an integer past 64 bits);
- more keys written than parsed. Without a backslash (an escaped quote) or a quote followed by
  white space in the line, every `":` ends a key, so `line.count(b'":')` must equal the
  number of keys parsed; otherwise a key may have been given twice.

Only then is the line parsed again with the standard library, exactly: integers as Python
ints (any length), numbers that a float rounds as Decimals (events.parse_quantity refuses
them where they are read, and storing refuses them elsewhere), and a key given twice in any
object is an error. Other lines, nearly all of them, pay two byte scans and a key count.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import orjson

FLOAT_DIGITS = 15
_LONG_NUMBER = re.compile(rb"[0-9][0-9.]{15}")
_SPACED = (b"\\", b'" ', b'"\t', b'"\r', b'"\n')
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
    if _LONG_NUMBER.search(raw) is None and _plain_keys(raw, value):
        return value
    return _exact(raw)


def _plain_keys(raw: bytes, value: Any) -> bool:
    for marker in _SPACED:
        if marker in raw:
            return False
    try:
        return raw.count(b'":') == _keys(value)
    except RecursionError:  # nested past Python's stack: the exact parse says so
        return False


def _keys(value: Any) -> int:
    kind = type(value)
    if kind is dict:
        count = len(value)
        for item in value.values():
            if type(item) is dict or type(item) is list:
                count += _keys(item)
        return count
    if kind is list:
        return sum(_keys(item) for item in value if type(item) is dict or type(item) is list)
    return 0


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
