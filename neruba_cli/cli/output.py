"""Rendering: data to stdout (a Rich table, or one JSON document with --json), messages,
progress and errors to stderr. No colour or progress bars off a terminal, with NO_COLOR or
with --quiet."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from rich.console import Console
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

Renderer = Callable[[Console], None]


@dataclass
class Output:
    json: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        self.stdout = Console(file=sys.stdout, highlight=False, soft_wrap=False)
        self.stderr = Console(file=sys.stderr, highlight=False, soft_wrap=True)

    def emit(self, data: Any, render: Renderer | None = None) -> None:
        """The command's result: JSON with --json, else the human rendering (or nothing)."""
        if self.json:
            sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
            sys.stdout.flush()
        elif render is not None:
            render(self.stdout)

    def say(self, message: str) -> None:
        """A progress or confirmation message: stderr, silenced by --quiet and --json.

        Messages carry operator data (names, e-mails), so they are never read as markup.
        """
        if not self.quiet and not self.json:
            self.stderr.print(redact_secrets(message), markup=False, highlight=False)

    def warn(self, message: str) -> None:
        if not self.json:
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


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Renderer:
    def render(console: Console) -> None:
        grid = Table(title=title, title_justify="left", header_style="bold")
        for column in columns:
            grid.add_column(column, overflow="fold")
        for row in rows:
            grid.add_row(*(cell if isinstance(cell, Text) else Text(_cell(cell)) for cell in row))
        console.print(grid)

    return render


def fields(data: dict[str, Any], title: str | None = None) -> Renderer:
    """One object as a two-column table of its keys and values."""
    return table(title, ("field", "value"), [(key, _cell(value)) for key, value in data.items()])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    return str(value)
