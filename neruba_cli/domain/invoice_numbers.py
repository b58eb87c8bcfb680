"""Invoice numbers: `ACME-000001`, written here and read here.

The project's slug in capitals, a hyphen, and the project's gapless counter with at least six
digits (`ACME-1234567` once it passes 999999). Numbers are printed on invoices, sent to Stripe
and kept by customers, so every number ever issued must keep parsing: this is format 1, and a
different numbering would be a new project setting, never a new reading of issued numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INVOICE_NUMBER_FORMAT = 1
DIGITS = 6

_NUMBER = re.compile(r"^(?P<prefix>[A-Z0-9](?:[A-Z0-9-]*[A-Z0-9])?)-(?P<sequence>[0-9]{6,})$")


@dataclass(frozen=True)
class InvoiceNumber:
    slug: str  # the project's slug, lower case as stored
    sequence: int  # 1, 2, ... without gaps per project


def format_number(slug: str, sequence: int) -> str:
    """The number of the project's `sequence`-th invoice."""
    if sequence < 1:
        raise ValueError(f"invoice sequence {sequence} is not positive")
    return f"{slug.upper()}-{sequence:0{DIGITS}d}"


def parse_number(number: str) -> InvoiceNumber:
    """The slug and sequence of a number `format_number` wrote; ValueError for anything else
    (including `ACME-0000001`, which is not how 1 is written)."""
    match = _NUMBER.match(number)
    if match is None:
        raise ValueError(f"{number!r} is not an invoice number")
    parsed = InvoiceNumber(match["prefix"].lower(), int(match["sequence"]))
    if parsed.sequence < 1 or format_number(parsed.slug, parsed.sequence) != number:
        raise ValueError(f"{number!r} is not an invoice number")
    return parsed


def sequence_of(number: str, slug: str) -> int | None:
    """The sequence of one of the project's numbers, None when it is not one of them."""
    try:
        parsed = parse_number(number)
    except ValueError:
        return None
    return parsed.sequence if parsed.slug == slug else None
