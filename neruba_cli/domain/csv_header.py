"""What a CSV header says about the file's dialect.

Neruba reads comma-separated CSV. A file exported with semicolons (spreadsheets in many
locales) or tabs parses as a single column named after the whole header line; reporting that
as "unknown column 'customer;plan;start'" hides the real problem, so the header is checked for
it before its column names are.
"""

from __future__ import annotations

from collections.abc import Sequence

_OTHER_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}


def delimiter_problem(header: Sequence[str]) -> str | None:
    """A message when a one-column header looks separated by something other than commas."""
    if len(header) != 1:
        return None
    name = header[0]
    counts = {char: name.count(char) for char in _OTHER_DELIMITERS}
    found = max(counts, key=lambda char: counts[char])
    if counts[found] == 0:
        return None
    return (
        f"the header has one column {name!r} — the file looks "
        f"{_OTHER_DELIMITERS[found]}-separated; Neruba reads comma-separated CSV"
    )
