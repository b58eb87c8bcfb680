"""Rules for projects (tenants) and customers: what a valid slug, e-mail and row look like."""

from __future__ import annotations

import re
from dataclasses import dataclass

from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.keys import refuse_secret
from neruba_cli.domain.money import ROUNDING_MODES, RoundingMode, normalize_currency
from neruba_cli.domain.timestamps import validate_timezone

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_EXTERNAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/+-]{0,127}$")
_STRIPE_CUSTOMER = re.compile(r"^cus_[A-Za-z0-9]{1,60}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME = 200
MODES = ("live", "test")


@dataclass(frozen=True)
class ProjectSpec:
    slug: str
    name: str
    currency: str
    timezone: str
    rounding: RoundingMode


@dataclass(frozen=True)
class CustomerSpec:
    external_id: str
    name: str | None
    email: str | None
    currency: str
    timezone: str
    stripe_id: str | None


def validate_slug(slug: str) -> str:
    """Slugs appear in invoice numbers and lock names, so they stay short and plain."""
    refuse_secret(slug, field="project slug")
    if not _SLUG.match(slug):
        raise InvalidInput(
            f"project slug {slug!r} is not valid",
            hint="use 1-40 lower-case letters, digits and inner hyphens, e.g. acme-eu",
        )
    return slug


def validate_email(email: str) -> str:
    cleaned = refuse_secret(email.strip(), field="email")
    if not _EMAIL.match(cleaned) or len(cleaned) > 254 or _CONTROL.search(cleaned):
        raise InvalidInput(f"email {email!r} is not an e-mail address")
    return cleaned


def validate_mode(mode: str) -> str:
    """Test-mode projects get `nrb_test_` keys, so a test key can never touch live data."""
    if mode not in MODES:
        raise InvalidInput(f"mode: {mode!r} is not a project mode", hint="use live or test")
    return mode


def validate_rounding(mode: str) -> RoundingMode:
    for known in ROUNDING_MODES:
        if mode == known:
            return known
    raise InvalidInput(
        f"rounding: {mode!r} is not a rounding mode", hint="use half_even or half_up"
    )


def project_spec(
    slug: str, name: str | None, currency: str, timezone: str, rounding: str
) -> ProjectSpec:
    slug = validate_slug(slug)
    return ProjectSpec(
        slug=slug,
        name=_clean_name(name, "name") or slug,
        currency=normalize_currency(currency),
        timezone=validate_timezone(timezone),
        rounding=validate_rounding(rounding),
    )


def customer_spec(
    *,
    external_id: str,
    name: str | None,
    email: str | None,
    currency: str | None,
    timezone: str | None,
    stripe_id: str | None,
    defaults: ProjectSpec,
) -> CustomerSpec:
    """Validate one customer; empty optional fields fall back to the project's defaults."""
    external_id = validate_external_id(external_id)
    email = _blank_to_none(email)
    if email is not None:
        email = validate_email(email)
    stripe_id = _blank_to_none(stripe_id)
    if stripe_id is not None:
        stripe_id = validate_stripe_customer(stripe_id)
    currency = _blank_to_none(currency)
    timezone = _blank_to_none(timezone)
    return CustomerSpec(
        external_id=external_id,
        name=_clean_name(name, "name"),
        email=email,
        currency=normalize_currency(currency) if currency else defaults.currency,
        timezone=validate_timezone(timezone) if timezone else defaults.timezone,
        stripe_id=stripe_id,
    )


def validate_external_id(external_id: str) -> str:
    """The operator's own id for a customer: it names the customer on every command."""
    cleaned = (external_id or "").strip()
    if not cleaned:
        raise InvalidInput("external_id is required")
    refuse_secret(cleaned, field="external_id")
    if not _EXTERNAL_ID.match(cleaned):
        raise InvalidInput(
            f"external_id {cleaned!r} is not valid",
            hint="up to 128 letters, digits and _ . : @ / + -, starting with a letter or digit",
        )
    return cleaned


def validate_stripe_customer(stripe_id: str) -> str:
    cleaned = stripe_id.strip()
    if not _STRIPE_CUSTOMER.match(cleaned):
        raise InvalidInput(f"stripe_id {cleaned!r} is not a Stripe customer id (cus_...)")
    return cleaned


def validate_name(name: str) -> str | None:
    """A display name: at most MAX_NAME characters, no control characters; blank is none."""
    return _clean_name(name, "name")


def _blank_to_none(value: str | None) -> str | None:
    if value is None:
        return None
    stripped = value.strip()
    return stripped or None


def _clean_name(value: str | None, field: str) -> str | None:
    cleaned = _blank_to_none(value)
    if cleaned is not None:
        refuse_secret(cleaned, field=field)
    if cleaned is not None and len(cleaned) > MAX_NAME:
        raise InvalidInput(f"{field} is longer than {MAX_NAME} characters")
    if cleaned is not None and _CONTROL.search(cleaned):
        raise InvalidInput(f"{field} contains a control character (a tab, NUL or line break)")
    return cleaned
