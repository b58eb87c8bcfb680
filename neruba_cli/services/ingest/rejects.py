"""Rejected input lines: kept with their line number, reason and raw text, never dropped."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import orjson


@dataclass(frozen=True)
class Reject:
    line: int
    reason: str
    raw: str
    stored: dict[str, object] | None = None  # a conflict: the event already stored under the key
    file: str | None = None  # the input file, where one import reads several (ingest)

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        file = data.pop("file")
        if self.stored is None:
            del data["stored"]
        return data if file is None else {"file": file, **data}

    @property
    def where(self) -> str:
        """`events.jsonl:4`, or `line 4` where the file is implied."""
        return f"{self.file}:{self.line}" if self.file is not None else f"line {self.line}"


class RejectsWriter:
    """Writes rejects as JSONL beside their final path and moves the file into place only
    when the unit of work succeeds, so a failed run never leaves (or clobbers) a report."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self._partial: Path | None = None
        self._handle: IO[bytes] | None = None

    def write(self, reject: Reject) -> None:
        self.count += 1
        if self.path is None:
            return
        if self._handle is None:
            self._partial = partial_path(self.path)
            self._handle = self._partial.open("wb")
        self._handle.write(orjson.dumps(reject.as_dict()) + b"\n")

    def __enter__(self) -> RejectsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is None or self._partial is None or self.path is None:
            if exc is None and self.path is not None:  # a killed earlier run's leftover
                partial_path(self.path).unlink(missing_ok=True)
            return
        self._handle.close()
        if exc is None:
            os.replace(self._partial, self.path)
        else:
            self._partial.unlink(missing_ok=True)


def raw_text(raw: bytes) -> str:
    """A line as a reject shows it: its bytes as UTF-8, undecodable ones replaced."""
    return raw.decode("utf-8", errors="replace")


REPORTED_REJECTS = 100  # every reject goes to the file; this many are also kept for display


def keep(kept: list[Reject], item: Reject, writer: RejectsWriter) -> None:
    writer.write(item)
    if len(kept) < REPORTED_REJECTS:
        kept.append(item)


def partial_path(path: Path) -> Path:
    """Where rejects are written until the run succeeds; a rerun reuses (and so cleans) it."""
    return path.with_name(f".{path.name}.partial")


def default_rejects_path(source: Path) -> Path:
    """Beside the input: `customers.csv` -> `customers.csv.rejects.jsonl`."""
    return source.with_name(source.name + ".rejects.jsonl")
