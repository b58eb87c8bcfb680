"""Rendering: data to stdout (a Rich table, or one JSON document with --json), messages,
progress and errors to stderr. No colour or progress bars off a terminal, with NO_COLOR or
with --quiet; --quiet prints nothing but errors (and the JSON document with --json).

Tables never split a word, so ids, numbers and amounts stay whole (and `grep` finds them): on a
terminal only text with spaces wraps, and a table whose words cannot fit is printed wider than
the terminal; off a terminal (a pipe, a file, cron) every row is printed at its full width."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import orjson
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from neruba_cli.domain.errors import NerubaError
from neruba_cli.domain.keys import redact_secrets
from neruba_cli.domain.timestamps import format_ts

Renderer = Callable[[Console], None]

UNWRAPPED = 1_000_000  # columns off a terminal: a row is never wrapped, whatever COLUMNS says


class _Stdout(Console):
    """A console whose tables keep every word whole (see the module docstring)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        needed = max((_fit(self, item) for item in objects if isinstance(item, Table)), default=0)
        if needed <= self.width:
            super().print(*objects, **kwargs)
            return
        terminal = self.size
        self.size = (needed, terminal.height)  # the terminal then wraps lines, never words
        try:
            super().print(*objects, **kwargs)
        finally:
            self.size = terminal


def _fit(console: Console, grid: Table) -> int:
    """Fix each column's width so that no word is split, narrowing the widest text columns
    first; return the width the table needs (0 when it holds cells other than text)."""
    texts = _column_texts(console, grid)
    if texts is None:
        return 0
    lows = [_longest(text.split() for text in cells) for cells in texts]
    widths = [_longest(text.splitlines() for text in cells) for cells in texts]
    widths = [max(width, low) for width, low in zip(widths, lows, strict=True)]
    for column, width in zip(grid.columns, widths, strict=True):
        column.width = width
    overhead = Measurement.get(console, console.options.update_width(UNWRAPPED), grid).maximum
    overhead -= sum(widths)
    _narrow(widths, lows, excess=sum(widths) + overhead - console.width)
    for column, width in zip(grid.columns, widths, strict=True):
        column.width = width
    return sum(widths) + overhead


def _narrow(widths: list[int], lows: list[int], *, excess: int) -> None:
    """Take `excess` columns from the widest columns, none below its longest word."""
    while excess > 0:
        candidates = [i for i, width in enumerate(widths) if width > lows[i]]
        if not candidates:
            return
        widest = max(candidates, key=lambda i: widths[i])
        lower = [widths[i] for i in candidates if widths[i] < widths[widest]]
        floor = max([lows[widest], *lower])
        step = max(1, min(excess, widths[widest] - floor))
        widths[widest] -= step
        excess -= step


def _longest(groups: Iterable[Iterable[str]]) -> int:
    return max((cell_len(part) for group in groups for part in group), default=1) or 1


def _column_texts(console: Console, grid: Table) -> list[list[str]] | None:
    """Each column's header and cells as plain text; None when a cell is not text."""
    texts: list[list[str]] = []
    for column in grid.columns:
        cells: list[str] = []
        for value in (column.header, *column.cells):
            if isinstance(value, Text):
                cells.append(value.plain)
            elif isinstance(value, str):
                cells.append(console.render_str(value).plain)
            else:
                return None
        texts.append(cells)
    return texts


@dataclass
class Output:
    json: bool = False
    quiet: bool = False
    stdout_taken: bool = False

    def __post_init__(self) -> None:
        self.stdout = _Stdout(file=sys.stdout, highlight=False, soft_wrap=False)
        if not self.stdout.is_terminal:
            self.stdout.size = (UNWRAPPED, self.stdout.height)
        self.stderr = Console(file=sys.stderr, highlight=False, soft_wrap=True)

    def emit(self, data: Any, render: Renderer | None = None, *, essential: bool = False) -> None:
        """The command's result: JSON with --json, else the human rendering, which --quiet
        drops (cron then hears only of errors, and the exit code says the rest). An
        `essential` rendering is the command's product that cannot be had again (a secret
        shown once): --quiet prints it too."""
        if self.json:
            stream = sys.stderr if self.stdout_taken else sys.stdout
            stream.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
            stream.flush()
        elif render is not None and (essential or not self.quiet):
            render(self.stderr if self.stdout_taken else self.stdout)

    def give_stdout_to_data(self) -> None:
        """An output file named `-` (a report, rejects, the Prometheus text) is written to
        stdout: the command's own result (its table, or its JSON document) goes to stderr
        from now on, so that stdout holds nothing but that file."""
        self.stdout_taken = True

    def say(self, message: str) -> None:
        """A progress or confirmation message: stderr, silenced by --quiet and --json.

        Messages carry operator data (names, e-mails), so they are never read as markup.
        """
        if not self.quiet and not self.json:
            self.stderr.print(redact_secrets(message), markup=False, highlight=False)

    def warn(self, message: str) -> None:
        """Something the operator should know that is not an error: silenced by --quiet."""
        if not self.json and not self.quiet:
            self.stderr.print(Text("warning: ", style="yellow") + Text(redact_secrets(message)))

    def error(self, exc: NerubaError) -> None:
        if self.json:
            payload = {
                "error": {
                    "type": exc.kind,
                    "message": redact_secrets(exc.message),
                    "hint": exc.hint,
                    "exit_code": exc.exit_code,
                }
            }
            sys.stderr.write(orjson.dumps(payload).decode() + "\n")
        else:
            self.stderr.print(Text("error: ", style="red") + Text(redact_secrets(str(exc))))

    @property
    def interactive(self) -> bool:
        return self.stderr.is_terminal and not self.quiet and not self.json

    @contextmanager
    def progress(
        self, description: str, total: int | None = None
    ) -> Iterator[Callable[[int], None]]:
        """A progress bar on a terminal; a no-op callback in cron or with --quiet/--json."""
        if not self.interactive:
            yield lambda _done: None
            return
        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
        columns.append(MofNCompleteColumn())
        with Progress(*columns, console=self.stderr, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda done: bar.update(task, completed=done)


@contextmanager
def import_progress(out: Output, total_bytes: int | None) -> Iterator[Callable[[int, int], None]]:
    """Bytes read (with speed) and events counted (with rate) on a terminal; silent elsewhere."""
    if not out.interactive:
        yield lambda _bytes, _events: None
        return
    started = time.monotonic()
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=out.stderr, transient=True) as bar:
        task = bar.add_task("Ingesting", total=total_bytes)

        def update(done: int, events: int) -> None:
            rate = events / max(time.monotonic() - started, 1e-6)
            bar.update(task, completed=done, description=f"{events:,} events ({rate:,.0f}/s)")

        yield update


def table(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    empty: str | None = None,
) -> Renderer:
    """Rows as a table; with no rows, one line that says so (`empty`, e.g. "No invoices.")."""

    def render(console: Console) -> None:
        if not rows:
            said = empty or (f"{title}: none." if title else "Nothing to list.")
            console.print(Text(said))
            return
        grid = Table(title=title, title_justify="left", header_style="bold")
        for column in columns:
            grid.add_column(column, overflow="fold")
        for row in rows:
            grid.add_row(*(item if isinstance(item, Text) else Text(cell(item)) for item in row))
        console.print(grid)

    return render


def fields(data: dict[str, Any], title: str | None = None) -> Renderer:
    """One object as a two-column table of its keys and values."""
    return table(title, ("field", "value"), [(key, cell(value)) for key, value in data.items()])


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`1 row`, `2 rows`; `many` for a noun that does not just take an s (`entries`)."""
    return f"{count:,} {noun if count == 1 else many or noun + 's'}"


_UNITS = (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1))


def duration(seconds: float | Decimal | str | None) -> str:
    """A span read at a glance, two units at most: `850 ms`, `42 s`, `3 min 20 s`, `51 d 5 h`."""
    if seconds is None or seconds == "":
        return "-"
    value = Decimal(str(seconds))
    if abs(value) < 1:
        return f"{int(value * 1000)} ms"
    if abs(value) < 60:
        return f"{value.quantize(Decimal('0.1')).normalize():f} s"
    rest = int(value.to_integral_value(rounding=ROUND_HALF_EVEN))
    parts: list[str] = []
    for unit, size in _UNITS:
        if rest >= size or parts:
            parts.append(f"{rest // size} {unit}")
            rest %= size
        if len(parts) == 2:
            break
    return " ".join(part for part in parts if not part.startswith("0 ")) or "0 s"


_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.\d+(Z|[+-]\d{2}:\d{2})")


def timestamp(value: str) -> str:
    """An RFC 3339 timestamp to the second: tables show when, not the microsecond (--json
    keeps every digit)."""
    return _TIMESTAMP.sub(r"\1\2", value)


def cell(value: Any) -> str:
    """A value as a table shows it: yes/no for flags, timestamps to the second."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(cell(item) for item in value)
    if isinstance(value, datetime):
        return timestamp(format_ts(value) or "")
    if isinstance(value, str):
        return timestamp(value)
    return str(value)
