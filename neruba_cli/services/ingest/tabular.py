"""Streaming CSV reading with the physical line number of every record.

Rows are yielded one at a time so memory stays flat however large the file; a bad row becomes
a `Reject` (line, reason, raw) and reading goes on. Lines are decoded one by one, so a stray
non-UTF-8 byte rejects its own record, not the file.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from neruba_cli.domain.csv_header import delimiter_problem
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.services.ingest.rejects import Reject

_BOM = b"\xef\xbb\xbf"
MAX_FIELD = 1 << 20  # a field over 1 MiB is a broken file, not a customer name


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
        handle = path.open("rb")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        yield from _rows(handle, path, columns, required)


def _rows(
    handle: BinaryIO, path: Path, columns: tuple[str, ...], required: tuple[str, ...]
) -> Iterator[CsvRow | Reject]:
    pending: list[str] = []  # physical lines of the record being parsed, for `raw`
    undecodable: list[int] = []  # physical line numbers of the record that were not UTF-8
    number = 0

    def physical_lines() -> Iterator[str]:
        nonlocal number
        for data in handle:
            number += 1
            if number == 1 and data.startswith(_BOM):
                data = data[len(_BOM) :]
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                undecodable.append(number)
                text = data.decode("utf-8", errors="replace")
            pending.append(text)
            yield text

    csv.field_size_limit(MAX_FIELD)
    reader = csv.reader(physical_lines())
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise InvalidInput(f"{path}: the file is empty; expected a header line") from None
    if undecodable:
        raise InvalidInput(f"{path}: line 1: the header is not UTF-8 text")
    wrong_delimiter = delimiter_problem(header)
    if wrong_delimiter is not None:
        raise InvalidInput(
            f"{path}: line 1: {wrong_delimiter}", hint=f"columns: {', '.join(columns)}"
        )
    unknown = [name for name in header if name not in columns]
    missing = [name for name in required if name not in header]
    if unknown or missing:
        problem = f"unknown column {unknown[0]!r}" if unknown else f"missing column {missing[0]!r}"
        raise InvalidInput(f"{path}: line 1: {problem}", hint=f"columns: {', '.join(columns)}")
    while True:
        pending.clear()
        undecodable.clear()
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Reject(start, f"malformed CSV: {exc}", "".join(pending).rstrip("\r\n"))
            continue
        raw = "".join(pending).rstrip("\r\n")
        if undecodable:
            yield Reject(start, f"line {undecodable[0]} is not UTF-8 text", raw)
        elif not any(cell.strip() for cell in record):
            continue
        elif len(record) != len(header):
            yield Reject(start, f"row has {len(record)} fields, the header has {len(header)}", raw)
        else:
            yield CsvRow(start, dict(zip(header, record, strict=True)), raw)
