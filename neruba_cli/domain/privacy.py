"""Forgetting a customer: what personal data goes, what stays, and when it may not go.

`neruba customer forget ID` keeps every financial record intact and explainable:

- **Goes**: the customer's name and e-mail (set to NULL); the event properties that the
  config names as personal (`[privacy] personal_properties`), removed from the customer's
  events; the same name and e-mail in earlier `customer create` audit arguments; the
  customer's name, e-mail, phone, address and shipping details in the local Stripe mirror
  and in the stored bodies of Stripe webhook deliveries about the customer (Stripe itself
  keeps its own copy: delete the customer in Stripe as well).
- **Stays**: the external id (invoices, the ledger and Stripe link by it, so the operator must
  choose external ids that are not personal data), quantities, timestamps, the payload hash
  of each event (a hash reveals nothing, and re-importing an original line must still be a
  duplicate), invoices and their documents (they name the customer by external id only), the
  ledger, credits and payments.
- **Refused**: stripping a property a meter reads — invoices of a rerun would change. The
  operator takes it out of `personal_properties` or changes the catalog first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from neruba_cli.domain.aggregation import MeterSpec
from neruba_cli.domain.errors import InvalidInput

_PROPERTY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Keys of Stripe objects (invoices, charges, payment intents, credit notes) that carry the
# customer's personal details; the mirror keeps the rest (amounts, statuses, ids).
STRIPE_PERSONAL_KEYS = (
    "customer_name",
    "customer_email",
    "customer_phone",
    "customer_address",
    "customer_shipping",
    "receipt_email",
    "billing_details",
    "shipping",
    "name",
    "email",
    "phone",
    "address",
)
FORGOTTEN = "[forgotten]"  # what replaces a personal value kept inside another record


@dataclass(frozen=True)
class MeterUse:
    """A meter that reads a property the config calls personal."""

    property: str
    meter: str
    where: str  # "catalog" or the plan version (CODE@N) that froze the meter
    how: str  # "field" or "filter"

    def __str__(self) -> str:
        source = "the catalog" if self.where == "catalog" else f"plan version {self.where}"
        return f"meter {self.meter!r} ({source}) reads property {self.property!r} as its {self.how}"


def personal_properties(names: Iterable[str]) -> tuple[str, ...]:
    """Validate the configured names; sorted and unique."""
    clean = set()
    for name in names:
        if not isinstance(name, str) or not _PROPERTY.match(name):
            raise InvalidInput(
                f"[privacy] personal_properties: {name!r} is not a property name",
                hint="letters, digits and _, as in events' properties",
            )
        clean.add(name)
    return tuple(sorted(clean))


def meter_uses(personal: Iterable[str], meters: Iterable[tuple[str, MeterSpec]]) -> list[MeterUse]:
    """Every (personal property, meter) pair where the meter reads the property."""
    wanted = set(personal)
    uses: set[MeterUse] = set()
    for where, spec in meters:
        if spec.property_name in wanted:
            uses.add(MeterUse(spec.property_name, spec.code, where, "field"))
        for name, _ in spec.filters:
            if name in wanted:
                uses.add(MeterUse(name, spec.code, where, "filter"))
    return sorted(uses, key=lambda u: (u.property, u.meter, u.where, u.how))


def without(properties: Mapping[str, Any], personal: Iterable[str]) -> tuple[dict[str, Any], int]:
    """The properties minus the personal ones, and how many were removed. Order is kept."""
    drop = set(personal)
    remaining = {key: value for key, value in properties.items() if key not in drop}
    return remaining, len(properties) - len(remaining)


def scrub_stripe_object(data: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """A mirrored Stripe object with the customer's personal details set to null; the object
    keeps its shape (and every amount, status and id) so reconciliation still reads it."""
    scrubbed = dict(data)
    changed = False
    for key in STRIPE_PERSONAL_KEYS:
        if scrubbed.get(key) is not None:
            scrubbed[key] = None
            changed = True
    return scrubbed, changed


def scrub_audit_arguments(arguments: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Recorded arguments of a `customer create` with the name and e-mail replaced."""
    scrubbed = dict(arguments)
    changed = False
    for key in ("name", "email"):
        if key in scrubbed and scrubbed[key] != FORGOTTEN:
            scrubbed[key] = FORGOTTEN
            changed = True
    return scrubbed, changed
