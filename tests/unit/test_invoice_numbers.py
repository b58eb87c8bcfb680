"""Invoice numbers: one format, written and read in domain/invoice_numbers.py."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain.invoice_numbers import (
    INVOICE_NUMBER_FORMAT,
    InvoiceNumber,
    format_number,
    parse_number,
    sequence_of,
)
from neruba_cli.domain.tenancy import validate_slug

# what domain/tenancy.py accepts as a project slug
slugs = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?", fullmatch=True)
sequences = st.integers(1, 10**9)


def test_numbers_issued_so_far_keep_their_meaning() -> None:
    assert INVOICE_NUMBER_FORMAT == 1
    assert format_number("acme", 1) == "ACME-000001"
    assert format_number("acme-eu", 42) == "ACME-EU-000042"
    assert format_number("demo", 1_234_567) == "DEMO-1234567"
    assert parse_number("ACME-000001") == InvoiceNumber("acme", 1)
    assert parse_number("ACME-EU-000042") == InvoiceNumber("acme-eu", 42)
    assert parse_number("DEMO-1234567") == InvoiceNumber("demo", 1_234_567)


@given(slugs, sequences)
def test_parse_reads_back_what_format_wrote(slug: str, sequence: int) -> None:
    validate_slug(slug)
    number = format_number(slug, sequence)
    assert re.fullmatch(r"[A-Z0-9-]+-[0-9]{6,}", number)
    assert parse_number(number) == InvoiceNumber(slug, sequence)
    assert sequence_of(number, slug) == sequence


@given(slugs, slugs, sequences)
def test_a_number_belongs_to_one_project(slug: str, other: str, sequence: int) -> None:
    number = format_number(slug, sequence)
    assert sequence_of(number, other) == (sequence if other == slug else None)


@pytest.mark.parametrize(
    "text",
    ["", "ACME", "ACME-", "ACME-00001", "acme-000001", "ACME-000000", "ACME-0000001", "-000001"],
)
def test_what_format_never_writes_does_not_parse(text: str) -> None:
    with pytest.raises(ValueError, match="not an invoice number"):
        parse_number(text)
    assert sequence_of(text, "acme") is None


def test_sequences_start_at_one() -> None:
    with pytest.raises(ValueError, match="not positive"):
        format_number("acme", 0)
