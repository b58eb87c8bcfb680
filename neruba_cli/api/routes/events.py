"""Usage ingest over HTTP: the same validation, idempotency and conflict rules as
`neruba ingest`, through the same code path."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["usage"])
