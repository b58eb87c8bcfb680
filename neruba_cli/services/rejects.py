"""Rejected input lines: kept with their line number, reason and raw text, never dropped."""

from __future__ import annotations

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

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class RejectsWriter:
    """Writes rejects as JSONL, opening the file only when the first reject arrives."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self._handle: IO[bytes] | None = None

    def write(self, reject: Reject) -> None:
        self.count += 1
        if self.path is None:
            return
        if self._handle is None:
            self._handle = self.path.open("wb")
        self._handle.write(orjson.dumps(reject.as_dict()) + b"\n")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RejectsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        if exc is not None and self.path is not None:
            self.path.unlink(missing_ok=True)  # the unit of work failed: leave no partial report


def default_rejects_path(source: Path) -> Path:
    """Beside the input: `customers.csv` -> `customers.csv.rejects.jsonl`."""
    return source.with_name(source.name + ".rejects.jsonl")
