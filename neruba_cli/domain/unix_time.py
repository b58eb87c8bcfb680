"""Unix times as Stripe sends them (`created`, `status_transitions.paid_at`): whole seconds.

A signed delivery is still input: a valid signature says who sent the body, not that its
values make sense. `"created": 1e20` or `"created": "yesterday"` is refused with a message
that names the field, before anything is stored, instead of failing deep inside as an
OverflowError or a TypeError.
"""

from __future__ import annotations

from datetime import UTC, datetime

from neruba_cli.domain.errors import InvalidInput

_SHOWN = 40  # characters of a bad value repeated in a message


def from_unix_seconds(value: object, *, field: str) -> datetime:
    """A whole number of seconds since 1970-01-01T00:00:00Z, within the years 1 to 9999."""
    if isinstance(value, bool) or not isinstance(value, int):
        shown = repr(value)
        shown = shown if len(shown) <= _SHOWN else shown[: _SHOWN - 1] + "…"
        raise InvalidInput(f"{field}: {shown} is not a whole number of Unix seconds")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidInput(
            f"{field}: {value} Unix seconds is outside the years 1 to 9999"
        ) from None


def optional_unix_seconds(value: object, *, field: str) -> datetime | None:
    """`from_unix_seconds`, or None for an absent value (null or missing)."""
    return None if value is None else from_unix_seconds(value, field=field)
