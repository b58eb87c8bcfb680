"""Request bodies: read within `[api] max_body_bytes` (413 beyond it), parsed exactly.

A body is parsed with `domain/exact_json` as `neruba ingest` parses a line: numbers keep their
digits (a quantity `0.1` stays 0.1, never a binary float) and a key given twice is refused.
A body over the limit is read to its end without being kept (up to `DRAIN_BYTES`), so the
client gets its 413 instead of a broken connection.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from neruba_cli.api.errors import ApiError
from neruba_cli.domain import exact_json

DRAIN_BYTES = 64 << 20  # past this much, a body over the limit is cut off


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {limit} bytes (max_body_bytes)")


async def read_body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    declared = request.headers.get("content-length", "")
    over = declared.isdigit() and int(declared) > limit
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            over = True
        if over:
            chunks.clear()
            if size > DRAIN_BYTES:
                break
            continue
        chunks.append(chunk)
    if over:
        raise too_large(limit)
    return b"".join(chunks)


async def json_body(request: Request, limit: int) -> Any:
    """The body's JSON value: 413 over `limit` bytes, 400 when it is not JSON."""
    body = await read_body(request, limit)
    return parse(body)


def parse(body: bytes) -> Any:
    if not body.strip():
        raise ApiError(400, "the body is empty: a JSON object is expected")
    try:
        return exact_json.loads(body)
    except exact_json.JsonError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
