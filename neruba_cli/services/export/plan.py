"""What an export was asked for, what it resolved to, and what it wrote.

A `Plan` is everything the SELECT of an export needs, resolved once before reading
(watermarks.py, `make_plan`); its `where` is the WHERE clause every kind shares.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, or_

from neruba_cli.db.schema import Project
from neruba_cli.domain.timestamps import format_ts

FORMATS = ("csv", "jsonl")
DEFAULT_OVERLAP = timedelta(minutes=5)
YIELD_PER = 2000  # rows a fetch from a server-side cursor
Progress = Callable[[int], None]  # rows written so far
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # --name


@dataclass(frozen=True)
class ExportRequest:
    kind: str
    fmt: str
    period: str | None = None
    customer: str | None = None
    since: str | None = None
    name: str | None = None
    overlap: timedelta = DEFAULT_OVERLAP


@dataclass(frozen=True)
class Since:
    """Where an incremental run starts: after an id (journals) or at a moment. An events
    watermark also names the last correction exported (`ID:CORRECTION`)."""

    sequence: int | None = None
    moment: datetime | None = None
    corrections: int | None = None

    def text(self) -> str:
        if self.sequence is None:
            return str(format_ts(self.moment))
        if self.corrections is None:
            return str(self.sequence)
        return f"{self.sequence}:{self.corrections}"


@dataclass(frozen=True)
class Plan:
    """Everything the SELECT needs, resolved once before reading."""

    kind: str
    fmt: str
    dialect: str
    project: Project
    label: str | None  # invoices/lines: the invoice period label
    window: tuple[datetime, datetime] | None  # other kinds: the month, in the project's zone
    customer_id: str | None
    since: Since | None
    high: int | None  # journals: the highest id this run exports
    watermark: str  # what the next run starts from
    # events: the highest correction this run exports (events corrected later wait for the
    # next run), and whether the run is a change feed (named or `--since`: every event new or
    # corrected since, voided ones too, with `version` and `voided` columns)
    high_corrections: int | None = None
    feed: bool = False
    # usage: the properties the catalog's plans group each meter by (meter, properties)
    groupings: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def where(
        self,
        *,
        project: Any,
        customer: Any,
        moment: Any,
        sequence: Any = None,
        changed: Callable[[datetime], ColumnElement[bool]] | None = None,
        at: Any = None,
        corrected: Any = None,
    ) -> list[ColumnElement[bool]]:
        """The WHERE clause every kind shares: project, customer, month, since, high-water.
        Each kind names its columns: `moment` (when a document was written; `changed`, when
        it changed, if that is more than one column), `sequence` (a journal's id), `at`
        (what the month filter applies to) and `corrected` (events: the latest correction,
        NULL for none; a row corrected since is selected as well as a new one)."""
        where: list[ColumnElement[bool]] = [project == self.project.id]
        if self.customer_id is not None:
            where.append(customer == self.customer_id)
        if self.window is not None and at is not None:
            where += [at >= self.window[0], at < self.window[1]]
        if sequence is not None and self.high is not None:
            where.append(sequence <= self.high)
        if corrected is not None and self.high_corrections is not None:
            where.append(or_(corrected.is_(None), corrected <= self.high_corrections))
        if self.since is not None:
            if self.since.sequence is not None and corrected is not None:
                after = self.since.corrections or 0
                where.append(or_(sequence > self.since.sequence, corrected > after))
            elif self.since.sequence is not None:
                where.append(sequence > self.since.sequence)
            elif self.since.moment is not None:
                since = self.since.moment
                where.append(changed(since) if changed else moment >= since)
        return where


@dataclass(frozen=True)
class ExportResult:
    kind: str
    fmt: str
    rows: int
    output: str
    gzip: bool
    since: str | None
    watermark: str
    name: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "format": self.fmt,
            "rows": self.rows,
            "output": self.output,
            "gzip": self.gzip,
            "since": self.since,
            "watermark": self.watermark,
            "name": self.name,
        }
