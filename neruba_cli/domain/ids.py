"""Prefixed, time-ordered identifiers (`cus_01jd...`), as in Stripe's API design.

The prefix tells a reader what an id names in a log line; the time-ordered body keeps listings
in creation order without another column, and the random tail keeps ids unguessable.
"""

from __future__ import annotations

import secrets
import time

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"

PREFIXES = frozenset(
    {
        "proj",
        "cus",
        "mem",
        "ivt",
        "aud",
        "key",
        "inv",
        "run",
        "evt",
        "grt",
        "txn",
        "acc",
        "pay",
        "rfd",
    }
    | {"mtr", "pln", "plv", "sub", "sph", "bat", "chg"}
    | {"slk", "sob", "swh", "spl"}  # Stripe link, mirrored object, webhook event, pull sweep
    | {"ret"}  # retention run
)


def new_id(prefix: str, *, now_ms: int | None = None) -> str:
    """A 26-character ULID-style body (48-bit milliseconds + 80 random bits) behind a prefix."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    millis = int(time.time() * 1000) if now_ms is None else now_ms
    value = (millis << 80) | secrets.randbits(80)
    body = "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))
    return f"{prefix}_{body}"


def has_prefix(value: str, prefix: str) -> bool:
    return value.startswith(f"{prefix}_") and len(value) == len(prefix) + 27
