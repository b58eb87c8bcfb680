"""API keys and invite tokens: format, checksum, hashing, scopes and roles.

A key is `nrb_live_` (or `nrb_test_`) + 32 random base62 characters + a 6-character base62
CRC32 of everything before it. The checksum lets secret scanners (and Neruba itself) tell a
real key from a typo or a forgery offline, before any database lookup. Only a SHA-256 of the
secret is stored: keys are high-entropy, so a fast hash is enough, and a stolen table cannot
be replayed. The first characters are kept in clear as a lookup prefix.

The randomness comes from the caller (`neruba_cli.services.tenancy.tokens` passes the operating
system's CSPRNG), so the format is a pure function a test can pin.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from neruba_cli.domain.errors import InvalidInput

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
LOOKUP_RANDOM_CHARS = 8  # random characters kept in clear after the kind, for lookup and lists

KEY_KINDS = {"live": "nrb_live_", "test": "nrb_test_"}
INVITE_KIND = "nrb_inv_"
KEY_PATTERN = re.compile(r"^nrb_(live|test)_[0-9A-Za-z]{38}$")
# Neruba keys and invites, and Stripe secret/restricted keys and webhook secrets pasted by mistake
_ANY_SECRET = re.compile(
    r"(nrb_(?:live|test|inv)_[0-9A-Za-z]{8})[0-9A-Za-z]{30,}"
    r"|((?:sk|rk)_(?:live|test)_[0-9A-Za-z]{4}|whsec_[0-9A-Za-z]{4})[0-9A-Za-z]{8,}"
)
INVITE_PATTERN = re.compile(r"^nrb_inv_[0-9A-Za-z]{38}$")

# `export` moves an incremental export's state (`export ... --name`: its watermark and lease);
# it is last so that the scopes of keys stored before it existed keep their canonical order.
SCOPES: tuple[str, ...] = ("ingest", "billing", "credits", "read", "admin", "export")
# A scope a key holds without naming it: `admin` (which already moves every other kind of
# project state) may also move an export's, so keys made before `export` existed keep working.
IMPLIED_BY: dict[str, frozenset[str]] = {"export": frozenset({"admin"})}
ROLES: dict[str, frozenset[str]] = {
    "viewer": frozenset({"read"}),
    "billing": frozenset({"read", "billing", "credits", "ingest"}),
    "admin": frozenset(SCOPES),
    "owner": frozenset(SCOPES),
}


@dataclass(frozen=True)
class ParsedSecret:
    kind: str  # "live", "test" or "inv"
    prefix: str  # what is stored in clear for lookup


def checksum(text: str) -> str:
    """CRC32 of `text` in base62, left-padded to six characters."""
    value = zlib.crc32(text.encode("ascii"))
    digits = ""
    while value:
        value, rest = divmod(value, 62)
        digits = BASE62[rest] + digits
    return digits.rjust(CHECKSUM_LENGTH, "0")


def compose(kind_prefix: str, random_part: str) -> str:
    """The full secret from its kind prefix and random body; the caller supplies randomness."""
    if len(random_part) != RANDOM_LENGTH or any(ch not in BASE62 for ch in random_part):
        raise ValueError("random part must be 32 base62 characters")
    body = kind_prefix + random_part
    return body + checksum(body)


RandomBelow = Callable[[int], int]
"""A source of randomness: `n` -> a uniformly random integer in [0, n) (`secrets.randbelow`)."""


def generate(kind_prefix: str, *, randbelow: RandomBelow) -> str:
    """A new secret of the given kind, its 32 characters drawn from `randbelow`."""
    if kind_prefix not in (*KEY_KINDS.values(), INVITE_KIND):
        raise ValueError(f"unknown secret kind {kind_prefix!r}")
    return compose(kind_prefix, "".join(BASE62[randbelow(62)] for _ in range(RANDOM_LENGTH)))


def lookup_prefix(secret: str) -> str:
    kind_prefix = secret[: secret.index("_", 4) + 1]
    return secret[: len(kind_prefix) + LOOKUP_RANDOM_CHARS]


def parse_secret(secret: str, *, what: str = "API key") -> ParsedSecret:
    """Check the format and checksum; the message never repeats the secret."""
    text = secret.strip()
    pattern = INVITE_PATTERN if what == "invite token" else KEY_PATTERN
    if not pattern.match(text):
        expected = "nrb_inv_..." if what == "invite token" else "nrb_live_... or nrb_test_..."
        raise InvalidInput(
            f"the {what} is malformed", hint=f"expected {expected} with 38 letters and digits"
        )
    body, given = text[:-CHECKSUM_LENGTH], text[-CHECKSUM_LENGTH:]
    if not hmac.compare_digest(checksum(body), given):
        raise InvalidInput(f"the {what} fails its checksum: it was mistyped or forged")
    kind = text.split("_")[1]
    return ParsedSecret(kind=kind, prefix=lookup_prefix(text))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.strip().encode("ascii")).hexdigest()


def same_hash(left: str, right: str) -> bool:
    """Constant-time comparison, so response time says nothing about how much matched."""
    return hmac.compare_digest(left.encode("ascii"), right.encode("ascii"))


def parse_scopes(values: Iterable[str]) -> frozenset[str]:
    scopes: set[str] = set()
    for value in values:
        for scope in value.split(","):
            name = scope.strip().lower()
            if name not in SCOPES:
                raise InvalidInput(
                    f"unknown scope {scope.strip()!r}", hint=f"scopes: {', '.join(SCOPES)}"
                )
            scopes.add(name)
    if not scopes:
        raise InvalidInput("at least one --scope is required", hint=f"scopes: {', '.join(SCOPES)}")
    return frozenset(scopes)


def role_scopes(role: str) -> frozenset[str]:
    try:
        return ROLES[role]
    except KeyError:
        raise InvalidInput(f"unknown role {role!r}", hint=f"roles: {', '.join(ROLES)}") from None


def holds_scope(scopes: frozenset[str], scope: str) -> bool:
    """Whether a key with `scopes` may do what `scope` allows (named or implied)."""
    return scope in scopes or not scopes.isdisjoint(IMPLIED_BY.get(scope, ()))


def format_scopes(scopes: Iterable[str]) -> str:
    """Stored and shown in the canonical order of SCOPES, comma-separated."""
    chosen = set(scopes)
    return ",".join(scope for scope in SCOPES if scope in chosen)


def looks_like_secret(text: str) -> bool:
    """Whether `text` holds anything shaped like a key, an invite token or a Stripe secret:
    the same shapes `redact_secrets` hides."""
    return _ANY_SECRET.search(text) is not None


def refuse_secret(text: str, *, field: str) -> str:
    """A name or id must not be a secret pasted into the wrong argument: it would be stored
    in clear (customer ids, export names in watermarks and lock names, key names). The
    message names the field, never the value."""
    if looks_like_secret(text):
        raise InvalidInput(
            f"{field} looks like a secret (an API key, invite token or Stripe key), "
            "not a name or id",
            hint="it was not stored; secrets are read from the environment only "
            "(NERUBA_API_KEY, STRIPE_API_KEY)",
        )
    return text


def redact_secrets(text: str) -> str:
    """Replace anything shaped like a key or invite token by its visible prefix.

    Applied to every error message and audit record, so a secret pasted into the wrong
    argument (`key revoke nrb_live_...`) is never echoed or stored.
    """
    return _ANY_SECRET.sub(lambda match: (match.group(1) or match.group(2)) + "…", text)
