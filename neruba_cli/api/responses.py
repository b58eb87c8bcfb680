"""The JSON body of every answer: orjson's bytes (money is already a decimal string, and
timestamps RFC 3339 text, so nothing needs a custom encoder).

A `JSONResponse` by class, so the OpenAPI document describes a route's answer with its
response model (FastAPI documents any other response class as a plain string)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class JsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
