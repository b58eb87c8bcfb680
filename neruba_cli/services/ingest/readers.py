"""Reading usage events from files and stdin: JSONL, CSV and CloudEvents, gzip or not.

Input is streamed line by line in binary, hashed as it is read (the receipt's SHA-256), and
never loaded whole: a line over 1 MiB is rejected and skipped without being held in memory.
Each yielded item is (line number, raw text for the rejects file, parsed object or a reason).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from neruba_cli.domain import exact_json
from neruba_cli.domain.csv_header import delimiter_problem
from neruba_cli.domain.errors import InvalidInput, UsageError
from neruba_cli.services.ingest.repeats import CHUNK, Repeats

MAX_LINE = 1 << 20
RAW_SHOWN = 2000  # bytes of an over-long or undecodable line kept in the rejects file
FORMATS = ("jsonl", "csv", "cloudevents", "charges")
_BOM = b"\xef\xbb\xbf"
_EVENT_COLUMNS = ("idempotency_key", "customer", "meter", "timestamp", "quantity", "operation")


@dataclass
class Source:
    """Everything one import reads, with the hash of all its bytes."""

    paths: Sequence[str]
    digest: Any = field(default_factory=hashlib.sha256)
    bytes_read: int = 0

    @property
    def name(self) -> str:
        return ", ".join(file_name(path) for path in self.paths)

    def parsed(
        self, fmt: str, repeats: Repeats | None = None
    ) -> Iterator[tuple[str | None, int, bytes, Any]]:
        return parsed_lines(self, fmt, repeats)


@dataclass
class Objects:
    """Events already parsed (the body of an HTTP request): the n-th object is line n, and
    the receipt's SHA-256 is the one of the bytes they were read from."""

    name: str
    objects: Sequence[Any]
    body: bytes = b""
    digest: Any = field(default_factory=hashlib.sha256)
    bytes_read: int = 0

    def parsed(
        self, fmt: str, repeats: Repeats | None = None
    ) -> Iterator[tuple[str | None, int, bytes, Any]]:
        """`repeats` is not used: objects have no line digests."""
        self.digest.update(self.body)
        self.bytes_read = len(self.body)
        for number, obj in enumerate(self.objects, 1):
            yield None, number, b"", obj


Input = Source | Objects  # what an import reads: files, or objects already parsed


def guess_format(paths: Sequence[str], explicit: str | None) -> str:
    if explicit is not None:
        if explicit not in FORMATS:
            raise UsageError(f"--format {explicit!r} is not one of: {', '.join(FORMATS)}")
        return explicit
    guesses = {_guess_one(path) for path in paths}
    if len(guesses) != 1 or None in guesses:
        raise UsageError(
            "cannot tell the format from the file names", hint="pass --format jsonl|csv|cloudevents"
        )
    return str(guesses.pop())


def _guess_one(path: str) -> str | None:
    name = path.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".cloudevents", ".ce.jsonl")):
        return "cloudevents"
    return "jsonl" if path == "-" else None


def _open(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        if path.endswith(".gz"):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None


def physical_lines(
    source: Source, *, only: str | None = None, keep_ends: bool = False
) -> Iterator[tuple[str, int, bytes | None]]:
    """(path, line number, bytes without the newline — with it when `keep_ends`), or None
    bytes for an over-long line; of every file, or of the file `only`."""
    for path in source.paths if only is None else (only,):
        handle = _open(path)
        try:
            number = 0
            while True:
                try:
                    chunk = handle.readline(MAX_LINE + 1)
                except (OSError, EOFError, zlib.error) as exc:  # a truncated or damaged .gz
                    raise InvalidInput(f"{path}: cannot read past line {number}: {exc}") from None
                if not chunk:
                    break
                number += 1
                source.digest.update(chunk)
                source.bytes_read += len(chunk)
                if number == 1 and chunk.startswith(_BOM):
                    chunk = chunk[len(_BOM) :]
                if len(chunk) > MAX_LINE and not chunk.endswith(b"\n"):
                    _skip_rest(handle, source)
                    yield path, number, None
                    continue
                yield path, number, chunk if keep_ends else chunk.rstrip(b"\r\n")
        finally:
            if handle is not sys.stdin.buffer:
                handle.close()


def _skip_rest(handle: IO[bytes], source: Source) -> None:
    while True:
        chunk = handle.readline(MAX_LINE)
        source.digest.update(chunk)
        source.bytes_read += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return


class LineError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parsed_lines(
    source: Source, fmt: str, repeats: Repeats | None = None
) -> Iterator[tuple[str, int, bytes, Any]]:
    """(file, line, raw bytes, event dict | LineError) for every non-blank line; the file as
    messages name it (`stdin` for -). With `repeats` (JSON lines), a line that repeats a
    stored event byte for byte comes with a `Repeated` instead, unparsed."""
    if fmt == "csv":
        yield from _csv_lines(source)
        return
    if repeats is not None:
        yield from _sifted(source, fmt, repeats)
        return
    for path, number, data in physical_lines(source):
        parsed = _parse(path, number, data, fmt)
        if parsed is not None:
            yield parsed


def _sifted(source: Source, fmt: str, repeats: Repeats) -> Iterator[tuple[str, int, bytes, Any]]:
    """`parsed_lines` a chunk at a time, the repeats of each chunk found before it is parsed."""
    chunk: list[tuple[str, int, bytes | None]] = []
    lines = physical_lines(source)
    while True:
        chunk.clear()
        for line in lines:
            chunk.append(line)
            if len(chunk) >= CHUNK:
                break
        if not chunk:
            return
        marks = repeats.sift([data for _, _, data in chunk])
        for (path, number, data), mark in zip(chunk, marks, strict=True):
            if mark is not None and data is not None:
                yield file_name(path), number, data, mark
                continue
            parsed = _parse(path, number, data, fmt)
            if parsed is not None:
                yield parsed


def _parse(
    path: str, number: int, data: bytes | None, fmt: str
) -> tuple[str, int, bytes, Any] | None:
    """One physical line parsed (None: a blank line)."""
    name = file_name(path)
    if data is None:
        return name, number, b"", LineError(f"line is longer than {MAX_LINE} bytes")
    if not data.strip():
        return None
    try:
        obj = exact_json.loads(data)
    except exact_json.JsonError as exc:
        return name, number, data, LineError(str(exc))
    return name, number, data, from_cloudevent(obj) if fmt == "cloudevents" else obj


def file_name(path: str) -> str:
    return "stdin" if path == "-" else path


def from_cloudevent(obj: Any) -> Any:
    """CloudEvents (as OpenMeter and others emit them): id, type = meter, subject = customer,
    time, data. `data.quantity` is the quantity; the rest of `data` becomes properties. The
    extension attribute `operation` (add or remove) is the event's operation."""
    if not isinstance(obj, dict):
        return LineError("expected a CloudEvents JSON object")
    data = obj.get("data") or {}
    if not isinstance(data, dict):
        return LineError("CloudEvents data must be a JSON object")
    event: dict[str, Any] = {
        "idempotency_key": obj.get("id"),
        "meter": obj.get("type"),
        "customer": obj.get("subject"),
        "timestamp": obj.get("time"),
        "properties": {k: v for k, v in data.items() if k != "quantity"},
    }
    if "quantity" in data:
        event["quantity"] = data["quantity"]
    if "operation" in obj:
        event["operation"] = obj["operation"]
    return event


def _csv_lines(source: Source) -> Iterator[tuple[str, int, bytes, Any]]:
    """CSV records, not lines: a quoted field may hold line breaks, and its record is one
    event whose line number is the record's first line. The parser is strict: an unterminated
    quote (which would swallow the rest of the file) or a stray quote is a reject, and reading
    goes on at the next line. A record is held whole, but none is longer than MAX_LINE: an
    over-long line rejects its record."""
    csv.field_size_limit(MAX_LINE)
    for path in source.paths:
        yield from _csv_file(source, path)


@dataclass
class _Record:
    """The physical lines of the record being parsed, and what was wrong with them."""

    start: int = 0
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    problem: str | None = None


def _csv_file(source: Source, path: str) -> Iterator[tuple[str, int, bytes, Any]]:
    name = file_name(path)
    record = _Record()
    lines = physical_lines(source, only=path, keep_ends=True)

    def texts() -> Iterator[str]:
        for _, number, data in lines:
            if not record.start:
                record.start = number
            if data is None:
                record.problem = record.problem or f"line {number} is longer than {MAX_LINE} bytes"
                yield "\n"
                continue
            record.size += len(data)
            if record.size > MAX_LINE:  # a runaway quoted field: never held whole
                record.problem = record.problem or f"record is longer than {MAX_LINE} bytes"
            else:
                record.parts.append(data)
            try:
                yield data.decode("utf-8")
            except UnicodeDecodeError:
                record.problem = record.problem or f"line {number} is not UTF-8 text"
                yield data.decode("utf-8", errors="replace")

    reader = csv.reader(texts(), strict=True)
    header: list[str] | None = None
    while True:
        record.start, record.parts, record.size, record.problem = 0, [], 0, None
        error: str | None = None
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            cells, error = [], f"malformed CSV: {exc}"
        number, raw = record.start, b"".join(record.parts).rstrip(b"\r\n")
        problem = record.problem or error
        if problem is not None:
            shown = raw[:RAW_SHOWN] if "UTF-8" in problem else raw
            yield name, number, shown, LineError(problem)
            continue
        if not any(cell.strip() for cell in cells):
            continue
        if header is None:
            header = [cell.strip() for cell in cells]
            _check_header(name, header)
            continue
        if len(cells) != len(header):
            reason = f"row has {len(cells)} fields, the header has {len(header)}"
            yield name, number, raw, LineError(reason)
            continue
        yield name, number, raw, _csv_event(header, cells)


def _check_header(path: str, header: list[str]) -> None:
    columns = (
        "columns: idempotency_key, customer, meter, timestamp, quantity, operation, "
        "properties.<name>"
    )
    wrong_delimiter = delimiter_problem(header)
    if wrong_delimiter is not None:
        raise InvalidInput(f"{path}: line 1: {wrong_delimiter}", hint=columns)
    for name in header:
        if name not in _EVENT_COLUMNS and not name.startswith("properties."):
            raise InvalidInput(f"{path}: line 1: unknown column {name!r}", hint=columns)


def _csv_event(header: list[str], cells: list[str]) -> dict[str, Any]:
    event: dict[str, Any] = {}
    properties: dict[str, str] = {}
    for name, cell in zip(header, cells, strict=True):
        if name.startswith("properties."):
            if cell != "":
                properties[name[11:]] = cell
        elif cell != "":
            event[name] = cell
    if properties:
        event["properties"] = properties
    return event


def content_digest(paths: Sequence[str]) -> str | None:
    """The SHA-256 of what an import will read (decompressed), to spot a repeated file before
    importing it; None for stdin, which can be read only once."""
    if "-" in paths:
        return None
    digest = hashlib.sha256()
    for path in paths:
        try:
            with _open(path) as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
        except (OSError, EOFError, zlib.error) as exc:  # a truncated or damaged .gz
            raise InvalidInput(f"cannot read {path}: {exc}") from None
    return digest.hexdigest()
