"""What the routes read from paths, queries and bodies before the services see it.

A path names a customer or an invoice; a value that no stored id can equal (control
characters, longer than any id column) is simply not found, as any other unknown id, and
never reaches the database (PostgreSQL refuses a NUL in text outright). Text in a JSON body
must be encodable as UTF-8: JSON allows lone surrogates (`"\\ud800"`), the databases do not.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator

from neruba_cli.api.errors import ApiError, naming
from neruba_cli.domain.timestamps import parse_ts

MAX_IDENTIFIER = 200  # longer than any external id (128) or invoice number (64)


def storable(value: str) -> bool:
    """Whether `value` could be an id stored in the database."""
    if len(value) > MAX_IDENTIFIER:
        return False
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        return False
    return _encodable(value)


def _encodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def identifier(value: str, what: str) -> str:
    """`value` from a path, or the 404 of an unknown `what` when no stored id can equal it."""
    if not storable(value):
        raise ApiError(404, f"{what} {value[:MAX_IDENTIFIER]!r} does not exist")
    return value


def _utf8(value: str) -> str:
    if not _encodable(value):
        raise ValueError("text must be valid Unicode (no lone surrogates)")
    return value


# A string field of a request body.
Text = Annotated[str, AfterValidator(_utf8)]


def moment(value: str | None, param: str, default: datetime) -> datetime:
    """An RFC 3339 query parameter (with an offset), or `default` when it is absent."""
    if value is None:
        return default
    with naming(param):
        return parse_ts(value, field=param)
