"""`neruba compare BASELINE --period P`"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from neruba_cli.cli import values
from neruba_cli.cli.output import plural, table
from neruba_cli.cli.paths import output_folder
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.compare import Report, parse_threshold
from neruba_cli.domain.errors import UsageError
from neruba_cli.services.analysis import compare as service
from neruba_cli.services.analysis import report_files
from neruba_cli.services.invoices import read as invoices_read

EXIT_DISCREPANCY = 4
BY = ("invoice", "line")
SHOWN_ROWS = 50  # on a terminal; the files and --json hold every one

# The options compare and simulate share: they report alike (`finish`).
PeriodOption = Annotated[str, typer.Option(help="YYYY-MM, previous or current."), values.MONTH]
ByOption = Annotated[str, typer.Option("--by", help="invoice (a row per customer) or line.")]
ReportFolderOption = Annotated[
    Path | None,
    typer.Option(
        metavar="DIR", help="Folder for summary.json, customers.csv, lines.csv, report.html."
    ),
]


def register(app: typer.Typer) -> None:
    @command(app, "compare", scope="read")
    def compare(
        rt: Runtime,
        baseline: Annotated[
            str,
            typer.Argument(
                metavar="BASELINE",
                help="`stripe` (the pulled Stripe mirror) or a CSV file of invoice lines.",
                show_default=False,
            ),
        ],
        period: PeriodOption,
        tolerance: Annotated[
            str,
            typer.Option(
                metavar="AMOUNT",
                help="Per customer, major units: differences up to this are matched.",
            ),
        ] = "0.01",
        by: ByOption = "invoice",
        output: ReportFolderOption = None,
        fail_over: Annotated[
            str | None,
            typer.Option(
                "--fail-over",
                metavar="LIMIT",
                help="Exit 4 when drift exceeds this amount (25.00) or share of Neruba's "
                "total (2%); 0 fails on any difference.",
            ),
        ] = None,
        mapping: Annotated[
            list[str] | None,
            typer.Option(
                "--map",
                metavar="FIELD=COLUMN",
                help="FIELD=Column: where a field is in the CSV (repeatable).",
            ),
        ] = None,
        preset: Annotated[
            str | None,
            typer.Option("--preset", help="Column names of a known export: stripe."),
            values.one_of(service.PRESETS),
        ] = None,
    ) -> int:
        """Compare the period's invoices with a baseline, customer by customer and line by
        line, with a probable reason for each difference. Exit 4 when drift exceeds
        --fail-over (never without it)."""
        check_by(by)
        if output is not None:
            output_folder(output, "--output")
        options = service.CompareOptions(
            baseline=baseline,
            label="",
            tolerance=service.parse_tolerance(tolerance),
            threshold=None if fail_over is None else parse_threshold(fail_over),
            mapping=service.parse_mapping(mapping or []),
            preset=preset,
        )
        project = rt.read_project()
        options = replace(options, label=invoices_read.period_label(period, project, rt.now()))
        with rt.out.progress("Comparing"), rt.engine().connect() as conn:
            report = service.compare(conn, project, options)
        return finish(rt, report, by=by, output=output)


def check_by(by: str) -> None:
    if by not in BY:
        raise UsageError(f"--by {by!r}: use invoice or line")


def finish(rt: Runtime, report: Report, *, by: str, output: Path | None) -> int:
    """Write the files, print the report (JSON or tables) and pick the exit code."""
    files = report_files.write(report, output) if output is not None else None
    data: dict[str, Any] = {
        "summary": report.summary(),
        "differences": report.customer_dicts(differing_only=True),
        "lines": report.line_dicts(),
    }
    if files is not None:
        data["files"] = files
    rt.out.emit(data, lambda console: render(console, report, data, by))
    for note in report.notes:
        rt.out.warn(note)
    if files is not None:
        rt.out.say(f"Wrote {', '.join(Path(p).name for p in files.values())} to {output}")
    return EXIT_DISCREPANCY if report.fail_over_exceeded else 0


def _amount_text(value: str | None) -> Text:
    """A signed difference, coloured: red where the first side billed more, blue where less."""
    if value is None:
        return Text("—")
    number = Decimal(value)
    if number == 0:
        return Text(value)
    return Text(f"+{value}" if number > 0 else value, style="red" if number > 0 else "blue")


def _side(side: dict[str, Any] | None) -> str:
    return "—" if side is None else f"{side['total']} {side['currency']}"


def render(console: Console, report: Report, data: dict[str, Any], by: str) -> None:
    summary = data["summary"]
    ours, theirs = report.labels.ours, report.labels.theirs
    if report.kind == "simulate":
        heading = Text(f"Simulate {report.period} on {report.catalog}: ", style="bold")
        heading += Text(f"{ours} against {theirs} ({report.baseline})")
    else:
        heading = Text(f"Compare {report.period}: ", style="bold")
        heading += Text(f"{ours} against {theirs} ({report.baseline})")
        heading += Text(f", tolerance {summary['tolerance']}")
    console.print(heading)
    if by == "line":
        _render_lines(console, data["lines"], ours, theirs)
    else:
        _render_customers(console, data["differences"], ours, theirs)
    rate = summary["match_rate"]
    counts = Text(
        f"{plural(summary['customers'], 'customer')} compared: {summary['matched']} matched"
        + (f" ({rate}%)" if rate is not None else "")
        + f", {summary['differences']} differ",
        style="green" if not summary["differences"] else "yellow",
    )
    console.print(counts)
    kinds = ", ".join(f"{n} {s}" for s, n in summary["statuses"].items() if n and s != "matched")
    if kinds:
        console.print(f"  by status: {kinds}", markup=False)
    reasons = ", ".join(f"{n} {r}" for r, n in summary["reasons"].items())
    if reasons:
        console.print(f"  by reason: {reasons}", markup=False)
    for code, money in summary["currencies"].items():
        line = Text(
            f"  {code}: {ours} {money[f'{ours}_total']} · {theirs} {money[f'{theirs}_total']}"
        )
        line += Text(" · net ") + _amount_text(money["net_difference"])
        if report.kind == "simulate" and money["net_difference_percent"] is not None:
            line += Text(f" ({money['net_difference_percent']}% revenue impact)")
        drift_pct = money["drift_percent"]
        line += Text(
            f" · drift {money['drift']}"
            + (f" ({drift_pct}%)" if drift_pct is not None else "")
            + "".join(
                f" · {name} {money[key]}"
                for name, key in (("p50", "p50_drift"), ("p95", "p95_drift"))
                if money[key] is not None  # no customer differs: no spread to tell
            )
            + (f" · tolerated {money['tolerated']}" if Decimal(money["tolerated"]) else "")
        )
        console.print(line)
    if summary["fail_over"] is not None:
        exceeded = summary["fail_over_exceeded"]
        verdict = "exceeds" if exceeded else "is within"
        console.print(
            Text(
                f"drift {verdict} --fail-over {summary['fail_over']}",
                style="red" if exceeded else "green",
            )
        )


def _render_customers(
    console: Console, differences: list[dict[str, Any]], ours: str, theirs: str
) -> None:
    if not differences:
        return
    rows = [
        (
            item["customer"],
            Text(item["status"], style="red"),
            item["reason"] or "",
            _side(item[ours]),
            _side(item[theirs]),
            _amount_text(item["difference"]),
            item["drift"],
        )
        for item in differences[:SHOWN_ROWS]
    ]
    columns = ("customer", "status", "reason", ours, theirs, "difference", "drift")
    table("Differences, largest first", columns, rows)(console)
    _more(console, len(differences))


def _render_lines(console: Console, lines: list[dict[str, Any]], ours: str, theirs: str) -> None:
    if not lines:
        return
    rows = [
        (
            line["customer"],
            line["line"],
            Text(line["status"], style="green" if line["customer_status"] == "matched" else "red"),
            line["reason"] or "",
            (line[ours] or {}).get("amount") or "—",
            (line[theirs] or {}).get("amount") or "—",
            _amount_text(line["difference"]),
        )
        for line in lines[:SHOWN_ROWS]
    ]
    columns = ("customer", "line", "status", "reason", ours, theirs, "difference")
    table("Lines that differ", columns, rows)(console)
    _more(console, len(lines))


def _more(console: Console, count: int) -> None:
    if count > SHOWN_ROWS:
        console.print(
            f"… and {count - SHOWN_ROWS} more (--json or --output DIR has every one)",
            markup=False,
        )
