"""Streaming an export's rows to CSV or JSONL, in constant memory, to a file or stdout.

Each kind is one SELECT read through a server-side cursor (PostgreSQL, MariaDB; SQLite's
cursor is lazy anyway) a fetch at a time and written as it comes, in chunks, so memory stays
flat however many rows there are. Aggregation (usage) is done by the database. A file is
written whole or not at all: under a temporary name, renamed when complete.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from typing import IO, Any

import orjson
from sqlalchemy import Engine, func, select

from neruba_cli.domain import spreadsheet_cells
from neruba_cli.services import output_files
from neruba_cli.services.export.kinds import KINDS
from neruba_cli.services.export.plan import Plan, Progress

CHUNK_ROWS = 1000  # rows buffered between writes (and progress updates)


def count(engine: Engine, plan: Plan) -> int:
    """How many rows the export will write: the progress bar's total."""
    kind = KINDS[plan.kind]
    query = kind.query(plan)
    if kind.counted is not None:
        query = kind.counted(query)
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(query.subquery())).scalar_one())


class _Appender:
    __slots__ = ("write",)

    def __init__(self, parts: list[Any]) -> None:
        self.write = parts.append


class _Writer:
    """Rows to bytes, a chunk at a time: one write (and one compression call) per
    CHUNK_ROWS rows rather than per row."""

    def __init__(
        self, out: IO[bytes], fmt: str, columns: Sequence[str], *, raw: bool = False
    ) -> None:
        self.out = out
        self.rows = 0
        self._parts: list[Any] = []
        if fmt == "csv":
            # csv.writer calls `write` once per row: give it list.append itself.
            self._csv = csv.writer(_Appender(self._parts), lineterminator="\n")
            self._csv.writerow(columns)
            if raw:
                self.add = self._csv.writerow
            else:  # a spreadsheet must not run a cell as a formula
                writerow, escaped_row = self._csv.writerow, spreadsheet_cells.escaped_row
                self.add = lambda row: writerow(escaped_row(row))
            self._join: Callable[[list[Any]], bytes] = lambda parts: "".join(parts).encode()
        else:
            names = tuple(columns)
            dumps, option = orjson.dumps, orjson.OPT_APPEND_NEWLINE

            def add(row: Sequence[Any]) -> None:
                self._parts.append(dumps(dict(zip(names, row, strict=True)), option=option))

            self.add = add  # type: ignore[assignment]
            self._join = b"".join

    def spill(self) -> None:
        if self._parts:
            self.out.write(self._join(self._parts))
            self._parts.clear()

    def write_all(self, rows: Iterator[Sequence[Any]], progress: Progress) -> int:
        add, pending = self.add, 0
        for row in rows:
            add(row)
            pending += 1
            if pending == CHUNK_ROWS:
                self.rows += pending
                pending = 0
                self.spill()
                progress(self.rows)
        self.rows += pending
        self.spill()
        progress(self.rows)
        return self.rows


def write(
    engine: Engine, plan: Plan, out: IO[bytes], progress: Progress, *, raw: bool = False
) -> int:
    """Stream the plan's rows to `out` (binary, already compressed if wanted); the row count.
    CSV cells that a spreadsheet would run as formulas get a leading `'` unless `raw`
    (`domain/spreadsheet_cells.py`)."""
    dialect = engine.dialect.name
    with engine.connect() as conn:
        if dialect in ("mysql", "mariadb"):
            # The server-side cursor waits on us while we compress and write: give it time.
            conn.exec_driver_sql("SET SESSION net_write_timeout = 3600")
        kind = KINDS[plan.kind]
        columns, formatted = kind.layout(conn, plan)
        writer = _Writer(out, plan.fmt, columns, raw=raw)
        query = kind.query(plan)
        with conn.execute(query, execution_options={"yield_per": kind.per_fetch}) as result:
            rows: Iterator[Any] = chain.from_iterable(result.partitions())
            return writer.write_all(formatted(rows), progress)


def guess_format(output: str, explicit: str | None) -> str:
    """--format, else from the output name (`.jsonl`, `.ndjson`, `.json`, maybe `.gz`), else
    CSV."""
    if explicit is not None:
        return explicit
    name = output.lower().removesuffix(".gz")
    return "jsonl" if name.endswith((".jsonl", ".ndjson", ".json")) else "csv"


@contextmanager
def destination(output: str, *, compress: bool) -> Iterator[IO[bytes]]:
    """Where the bytes go: stdout (`-`), a device or FIFO written in place, or a file written
    under a temporary name and renamed over FILE only when the block ends without an error, so
    a failed or killed export never leaves a partial file under the real name
    (`services/output_files.py` says how each is written)."""
    with output_files.open_output(output) as raw, _compressed(raw, compress) as out:
        yield out


@contextmanager
def _compressed(raw: IO[bytes], compress: bool) -> Iterator[IO[bytes]]:
    if not compress:
        yield raw
        return
    # No name and a zero time in the header: the same rows give the same bytes. Level 6 is
    # gzip(1)'s default: a few percent larger than Python's 9, at about half the CPU.
    packed = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
    try:
        yield packed  # type: ignore[misc]
    finally:
        packed.close()  # writes the trailer; leaves `raw` open
