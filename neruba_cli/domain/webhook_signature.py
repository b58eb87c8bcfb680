"""Verify the Stripe-Signature header before any webhook body is believed.

Stripe signs each delivery with the endpoint's secret: HMAC-SHA256 over `"<t>."` followed by
the raw request body, sent as `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`. Any other scheme
(such as `v0`) is ignored, as Stripe advises, so a sender cannot downgrade verification to a
weaker scheme. Verification works on the raw bytes, because parsing and re-serialising the
JSON changes whitespace and key order and so the signature.

The signature is checked before the timestamp. A forged body is then reported as forged, and
a genuine but old delivery as stale; checking the clock first would call a forgery with an old
`t` "stale" and send the operator looking at clocks instead of at an attacker.

No message here ever contains a secret: secrets are never interpolated, and a mismatch is
described by its likely causes, not by the values compared.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from neruba_cli.domain.errors import InvalidInput

SECRET_ENV = "STRIPE_WEBHOOK_SECRET"
DEFAULT_TOLERANCE = 300  # seconds; Stripe's libraries use the same default
_HEADER = "Stripe-Signature header"
_DIGITS = re.compile(r"[0-9]+")
_SECRET_HINT = (
    f"set {SECRET_ENV} to the endpoint's signing secret (whsec_...); "
    "separate several with commas while rolling a secret"
)


class SignatureError(InvalidInput):
    """The delivery cannot be trusted: unsigned, mis-signed, or outside the time tolerance."""

    kind = "signature_invalid"


@dataclass(frozen=True)
class SignatureHeader:
    """The parts of a Stripe-Signature header that verification uses."""

    timestamp: int
    v1: tuple[str, ...]


def parse_header(header: str) -> SignatureHeader:
    """Read `t` and every `v1` from the header; other schemes are skipped, not trusted."""
    if not isinstance(header, str) or not header.strip():
        raise SignatureError(f"{_HEADER} is empty", hint="was the header passed through?")
    timestamps: list[str] = []
    v1: list[str] = []
    for item in header.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise SignatureError(f"{_HEADER} has an item {item.strip()!r} that is not key=value")
        if key == "t":
            timestamps.append(value)
        elif key == "v1" and value:
            v1.append(value)
    if not timestamps:
        raise SignatureError(f"{_HEADER} has no timestamp (t=...)")
    if len(timestamps) > 1:
        raise SignatureError(f"{_HEADER} has {len(timestamps)} timestamps; expected one t=...")
    if not _DIGITS.fullmatch(timestamps[0]):
        raise SignatureError(
            f"{_HEADER} timestamp {timestamps[0]!r} is not a whole number of Unix seconds"
        )
    if not v1:
        raise SignatureError(
            f"no v1 signature in {_HEADER}", hint="only v1 (HMAC-SHA256) signatures are accepted"
        )
    return SignatureHeader(timestamp=int(timestamps[0]), v1=tuple(v1))


def compute_signature(payload: bytes, secret: str, timestamp: int) -> str:
    """The hex v1 signature Stripe would send for this body, secret and timestamp."""
    if not isinstance(payload, bytes | bytearray):
        # A str here almost always means the body was decoded or re-serialised already.
        raise TypeError("payload must be the raw request body as bytes")
    signed = b"%d." % timestamp + bytes(payload)
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """A complete Stripe-Signature header, for tests and for tools that replay deliveries."""
    return f"t={timestamp},v1={compute_signature(payload, secret, timestamp)}"


def verify(
    payload: bytes,
    header: str,
    secrets: Sequence[str],
    *,
    now: int,
    tolerance: int = DEFAULT_TOLERANCE,
) -> SignatureHeader:
    """Accept the delivery if any secret matches any v1 and `t` is within `tolerance` of `now`.

    Several secrets are accepted so that a secret can be rolled without dropping deliveries
    signed with the old one; several v1 entries appear while Stripe itself rolls. `now` is a
    parameter so that the check stays a pure function of its inputs.
    """
    if isinstance(secrets, str):
        raise TypeError("secrets must be a sequence of secrets; use parse_secrets() on a string")
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise InvalidInput(
            f"webhook tolerance must be a whole number of seconds, at least 0; got {tolerance!r}"
        )
    if not secrets:
        raise InvalidInput("no webhook secret configured", hint=_SECRET_HINT)
    if any(not secret.strip() for secret in secrets):
        raise InvalidInput("a webhook secret is blank", hint=_SECRET_HINT)
    parsed = parse_header(header)
    expected = [
        compute_signature(payload, secret, parsed.timestamp).encode("ascii") for secret in secrets
    ]
    # Compared as bytes: compare_digest refuses non-ASCII str, and a header is attacker input.
    offered = [signature.encode("utf-8") for signature in parsed.v1]
    if not any(hmac.compare_digest(e, o) for e in expected for o in offered):
        raise SignatureError(
            "signature does not match any webhook secret "
            "(forged payload, wrong secret, or the body was changed)",
            hint="verify the raw request body exactly as received, with the endpoint's secret",
        )
    age = now - parsed.timestamp
    if age > tolerance:
        raise SignatureError(
            f"timestamp {_when(parsed.timestamp)} is {age} s older than now; "
            f"tolerance is {tolerance} s (stale or replayed delivery)"
        )
    if -age > tolerance:
        raise SignatureError(
            f"timestamp {_when(parsed.timestamp)} is {-age} s in the future; "
            f"tolerance is {tolerance} s (is this host's clock behind?)"
        )
    return parsed


def parse_secrets(value: str | None) -> tuple[str, ...]:
    """STRIPE_WEBHOOK_SECRET as a tuple: comma-separated while an old secret is being rolled."""
    secrets: list[str] = []
    for part in (value or "").split(","):
        secret = part.strip()
        if secret and secret not in secrets:
            secrets.append(secret)
    if not secrets:
        raise InvalidInput(f"{SECRET_ENV} is not set or is empty", hint=_SECRET_HINT)
    return tuple(secrets)


def _when(timestamp: int) -> str:
    """RFC 3339 for a message; the raw number if it is beyond what datetime can show."""
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return f"t={timestamp}"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
