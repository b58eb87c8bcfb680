"""`--output DIR` of `compare` and `simulate`: summary.json, customers.csv, lines.csv and a
self-contained report.html, written together.

Every file is first written beside its final name and then renamed into place, all renames
after all writes, so a reader (or a crash) never sees half a file, and a failure while writing
leaves the previous report as it was (`services/output_files.py`: temporaries created
exclusively, a device or FIFO in the folder written in place). The CSV files escape cells a
spreadsheet would run as formulas (`domain/spreadsheet_cells.py`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson

from neruba_cli.domain import report_html
from neruba_cli.domain.compare import Report
from neruba_cli.domain.errors import InvalidInput
from neruba_cli.domain.spreadsheet_cells import escaped_row
from neruba_cli.services import output_files

FILES = ("summary.json", "customers.csv", "lines.csv", "report.html")


def customer_columns(report: Report) -> tuple[str, ...]:
    ours, theirs = report.labels.ours, report.labels.theirs
    return (
        "customer",
        "status",
        "reason",
        "currency",
        f"{ours}_total",
        f"{theirs}_currency",
        f"{theirs}_total",
        "difference",
        "drift",
        "tolerated",
        "differing_lines",
        f"{ours}_documents",
        f"{theirs}_documents",
    )


def line_columns(report: Report) -> tuple[str, ...]:
    ours, theirs = report.labels.ours, report.labels.theirs
    return (
        "customer",
        "customer_status",
        "line",
        "kind",
        "meter",
        "status",
        "reason",
        "currency",
        f"{ours}_quantity",
        f"{theirs}_quantity",
        f"{ours}_amount",
        f"{theirs}_amount",
        "difference",
        f"{ours}_sources",
        f"{theirs}_sources",
    )


def contents(report: Report) -> dict[str, bytes]:
    """The four files' bytes, by name."""
    summary = report.summary()
    customers = report.customer_dicts()
    lines = report.line_dicts()
    return {
        "summary.json": orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n",
        "customers.csv": _customers_csv(report, customers).encode(),
        "lines.csv": _lines_csv(report, lines).encode(),
        "report.html": report_html.render(summary, customers, lines).encode(),
    }


def write(report: Report, folder: Path) -> dict[str, str]:
    """Write the report into `folder` (created if missing); the paths written, by name."""
    if folder.exists() and not folder.is_dir():
        raise InvalidInput(f"--output {folder}: not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(f"--output {folder}: cannot create it: {exc.strerror}") from None
    output_files.write_outputs(
        {folder / name: data for name, data in contents(report).items()}, option="--output"
    )
    return {name: str(folder / name) for name in FILES}


def _csv(columns: tuple[str, ...], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(escaped_row(row) for row in rows)
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _customers_csv(report: Report, customers: list[dict[str, Any]]) -> str:
    ours, theirs = report.labels.ours, report.labels.theirs
    rows = []
    for item in customers:
        mine, other = item[ours] or {}, item[theirs] or {}
        rows.append(
            [
                item["customer"],
                item["status"],
                _cell(item["reason"]),
                item["currency"],
                _cell(mine.get("total")),
                _cell(other.get("currency")),
                _cell(other.get("total")),
                _cell(item["difference"]),
                item["drift"],
                item["tolerated"],
                len(item["lines"]),
                " ".join(mine.get("documents") or []),
                " ".join(other.get("documents") or []),
            ]
        )
    return _csv(customer_columns(report), rows)


def _lines_csv(report: Report, lines: list[dict[str, Any]]) -> str:
    ours, theirs = report.labels.ours, report.labels.theirs
    rows = []
    for line in lines:
        mine, other = line[ours] or {}, line[theirs] or {}
        rows.append(
            [
                line["customer"],
                line["customer_status"],
                line["line"],
                _cell(line["kind"]),
                _cell(line["meter"]),
                line["status"],
                _cell(line["reason"]),
                line["currency"],
                _cell(mine.get("quantity")),
                _cell(other.get("quantity")),
                _cell(mine.get("amount")),
                _cell(other.get("amount")),
                line["difference"],
                " ".join(mine.get("sources") or []),
                " ".join(other.get("sources") or []),
            ]
        )
    return _csv(line_columns(report), rows)
