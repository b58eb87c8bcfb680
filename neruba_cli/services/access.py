"""Who is acting. Every command resolves its actor here, so the audit trail has one source."""

from __future__ import annotations

import getpass
from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    kind: str  # "operator" (a local OS user) or, with API keys, "key"
    id: str


def current_operator() -> Actor:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return Actor(kind="operator", id=user)
