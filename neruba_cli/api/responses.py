"""The JSON body of every answer: orjson's bytes (money is already a decimal string, and
timestamps RFC 3339 text, so nothing needs a custom encoder)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
