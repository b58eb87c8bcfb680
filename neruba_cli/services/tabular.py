"""Streaming CSV reading with the physical line number of every record.

Rows are yielded one at a time so memory stays flat however large the file; a bad row becomes
a `Reject` (line, reason, raw) and reading goes on.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from neruba_cli.domain.errors import InvalidInput
from neruba_cli.services.rejects import Reject


@dataclass(frozen=True)
class CsvRow:
    line: int
    values: dict[str, str]
    raw: str


def read_csv(
    path: Path, *, columns: tuple[str, ...], required: tuple[str, ...]
) -> Iterator[CsvRow | Reject]:
    """Yield rows keyed by header name; the header must name only known columns."""
    try:
        handle = path.open("r", encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        try:
            yield from _rows(handle, path, columns, required)
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{path}: not UTF-8 text ({exc.reason})") from None


def _rows(
    handle: io.TextIOBase, path: Path, columns: tuple[str, ...], required: tuple[str, ...]
) -> Iterator[CsvRow | Reject]:
    pending: list[str] = []  # physical lines of the record being parsed, for `raw`

    def physical_lines() -> Iterator[str]:
        for text in handle:
            pending.append(text)
            yield text

    reader = csv.reader(physical_lines())
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise InvalidInput(f"{path}: the file is empty; expected a header line") from None
    unknown = [name for name in header if name not in columns]
    missing = [name for name in required if name not in header]
    if unknown or missing:
        problem = f"unknown column {unknown[0]!r}" if unknown else f"missing column {missing[0]!r}"
        raise InvalidInput(f"{path}: line 1: {problem}", hint=f"columns: {', '.join(columns)}")
    while True:
        pending.clear()
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Reject(start, f"malformed CSV: {exc}", "".join(pending).rstrip("\r\n"))
            continue
        raw = "".join(pending).rstrip("\r\n")
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            yield Reject(start, f"row has {len(record)} fields, the header has {len(header)}", raw)
            continue
        yield CsvRow(start, dict(zip(header, record, strict=True)), raw)
