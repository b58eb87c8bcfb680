"""Prefixed, time-ordered identifiers (`cus_01jd...`), as in Stripe's API design.

The prefix tells a reader what an id names in a log line; the time-ordered body keeps listings
in creation order without another column, and the random tail keeps ids unguessable.

The clock and the randomness come from the caller (`neruba_cli.db.ids.new_id` passes the system
clock and the operating system's CSPRNG), so the format is a pure function a test can pin.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
# base64's base 32 digits, in order, spelled as Crockford's: one C call encodes a body
_FROM_RFC4648 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode())
BODY_LENGTH = 26  # 130 bits in base 32: 48 bits of milliseconds, 80 random bits (2 unused)
RANDOM_BITS = 80
MAX_MILLIS = (1 << 48) - 1

RandomBits = Callable[[int], int]
"""A source of randomness: `k` -> a uniformly random integer of `k` bits (`secrets.randbits`)."""

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
    | {"req"}  # an HTTP request (`Request-Id`)
    | {"idm"}  # the stored answer of a request sent with an Idempotency-Key
)


@dataclass(frozen=True)
class ParsedId:
    prefix: str
    millis: int  # when it was made, in milliseconds since the Unix epoch
    random: int  # the 80 random bits


def make_id(prefix: str, *, now_ms: int, randbits: RandomBits) -> str:
    """A 26-character ULID-style body (48-bit milliseconds + 80 random bits) behind a prefix."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    if not 0 <= now_ms <= MAX_MILLIS:
        raise ValueError(f"{now_ms} ms does not fit an id's 48-bit clock")
    random = randbits(RANDOM_BITS)
    if not 0 <= random < 1 << RANDOM_BITS:
        raise ValueError(f"the source of randomness returned more than {RANDOM_BITS} bits")
    value = (now_ms << RANDOM_BITS) | random
    # 160 bits are 32 digits; the body is the last 26 (the 30 bits above it are zero)
    body = base64.b32encode(value.to_bytes(20, "big"))[6:].translate(_FROM_RFC4648)
    return f"{prefix}_{body.decode()}"


def parse_id(value: str) -> ParsedId:
    """The parts of an id `make_id` wrote; ValueError for anything else."""
    prefix, _, body = value.partition("_")
    if prefix not in PREFIXES or len(body) != BODY_LENGTH:
        raise ValueError(f"{value!r} is not a Neruba id")
    number = 0
    for char in body:
        digit = _CROCKFORD.find(char)
        if digit < 0:
            raise ValueError(f"{value!r} is not a Neruba id")
        number = number << 5 | digit
    if number >> 128:
        raise ValueError(f"{value!r} is not a Neruba id")
    return ParsedId(prefix, number >> RANDOM_BITS, number & ((1 << RANDOM_BITS) - 1))


def has_prefix(value: str, prefix: str) -> bool:
    return value.startswith(f"{prefix}_") and len(value) == len(prefix) + 1 + BODY_LENGTH
