"""Rejected input lines: kept with their line number, reason and raw text, never dropped."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType

import orjson

from neruba_cli.domain.keys import looks_like_secret, redact_secrets
from neruba_cli.services import output_files


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
    when the unit of work succeeds, so a failed run never leaves (or clobbers) a report.
    The file is opened at the first reject: a run without rejects leaves an earlier file
    alone. `-` is stdout and a device or FIFO (`--rejects /dev/null`) is written in place;
    the temporary is created exclusively (`services/output_files.py`)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self._output: output_files.OutputFile | None = None

    def write(self, reject: Reject) -> None:
        self.count += 1
        if self.path is None:
            return
        if self._output is None:
            self._output = output_files.OutputFile(self.path, option="--rejects", suffix=SUFFIX)
        try:
            self._output.handle.write(orjson.dumps(reject.as_dict()) + b"\n")
        except OSError as exc:
            raise self._output.failure(exc) from None

    def __enter__(self) -> RejectsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._output is None:
            if exc is None and self.path is not None:  # a killed earlier run's leftover
                output_files.remove_stale_temporaries(self.path, SUFFIX)
            return
        if exc is None:
            self._output.commit()
        else:
            self._output.discard()


def raw_text(raw: bytes) -> str:
    """A line as a reject shows it: its bytes as UTF-8, undecodable ones replaced."""
    return raw.decode("utf-8", errors="replace")


SUFFIX = ".partial"  # a rejects file being written: `.NAME.<random>.partial`
REPORTED_REJECTS = 100  # every reject goes to the file; this many are also kept for display


def keep(kept: list[Reject], item: Reject, writer: RejectsWriter) -> None:
    """The rejects file keeps the line as it was (to be fixed and sent again); what the
    command shows hides anything shaped like a secret, as every message does."""
    writer.write(item)
    if len(kept) < REPORTED_REJECTS:
        shown = replace(item, raw=redact_secrets(item.raw)) if looks_like_secret(item.raw) else item
        kept.append(shown)


def default_rejects_path(source: Path) -> Path:
    """Beside the input: `customers.csv` -> `customers.csv.rejects.jsonl`."""
    return source.with_name(source.name + ".rejects.jsonl")
