"""Cursor pagination, the same on every list: `limit` and `cursor` in, `{"data", "next_cursor"}`
out.

A page is a keyset read: the rows after the last sort key of the previous page, in the order
of a key unique in the project (a customer's external id, an invoice's number), never an
OFFSET. Rows written while a reader walks the pages therefore neither repeat nor push an
unread row out of sight. The cursor is opaque to callers: url-safe base64 of the list it
belongs to and the last key it saw; a cursor that does not decode, or belongs to another
list, is a 422 naming `cursor`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

import orjson
from fastapi import Query
from pydantic import BaseModel

from neruba_cli.api.errors import ApiError

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_CURSOR = 1024  # characters; a real cursor is far shorter

T = TypeVar("T")
Item = TypeVar("Item")


class Page(BaseModel, Generic[T]):
    """One page of a list; `next_cursor` is null on the last page."""

    data: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class PageRequest:
    """What a list route reads: up to `limit` rows whose key sorts after `after`."""

    limit: int
    after: str | None

    @property
    def fetch(self) -> int:
        """One row more than the page holds: its presence says another page follows."""
        return self.limit + 1


def encode(listing: str, last: str) -> str:
    raw = orjson.dumps({"l": listing, "k": last})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(listing: str, cursor: str) -> str:
    refused = ApiError(422, "cursor: not a cursor this list gave", param="cursor")
    if len(cursor) > MAX_CURSOR:
        raise refused
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise refused from None
    if not isinstance(data, dict) or data.get("l") != listing or not isinstance(data.get("k"), str):
        raise refused
    return str(data["k"])


def pages(listing: str) -> Callable[..., PageRequest]:
    """The dependency of a list route: `limit` (1 to MAX_LIMIT) and `cursor` as query
    parameters, the cursor checked against `listing`."""

    def dependency(
        limit: Annotated[
            int, Query(ge=1, le=MAX_LIMIT, description=f"Rows per page (1 to {MAX_LIMIT}).")
        ] = DEFAULT_LIMIT,
        cursor: Annotated[
            str | None,
            Query(description="The previous page's `next_cursor`; omit for the first page."),
        ] = None,
    ) -> PageRequest:
        return PageRequest(limit=limit, after=decode(listing, cursor) if cursor else None)

    dependency.__name__ = f"{listing}_page"
    return dependency


def page(
    listing: str, request: PageRequest, rows: Sequence[Item], key: Callable[[Item], str]
) -> tuple[list[Item], str | None]:
    """The rows of the page and the cursor of the next one (None when none follows), from
    up to `request.fetch` rows read in key order."""
    shown = list(rows[: request.limit])
    more = len(rows) > request.limit
    return shown, encode(listing, key(shown[-1])) if more and shown else None
