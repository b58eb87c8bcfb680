"""`neruba export invoices|lines|ledger|events|usage|credits|payments`"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from neruba_cli.cli import values
from neruba_cli.cli.paths import output_file
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.errors import UsageError
from neruba_cli.domain.timestamps import parse_fixed_duration
from neruba_cli.services.export import kinds as export_kinds
from neruba_cli.services.export import plan as export_plan
from neruba_cli.services.export import watermarks as export_watermarks
from neruba_cli.services.export import writing as export_writing

app = typer.Typer()

HELP = {
    "invoices": "Invoices, credit notes and supplemental invoices: one row per document, "
    "with totals, amount due and paid.",
    "lines": "Invoice lines as the invoices print them: one row per line, with plan, meter, "
    "quantity, amount and service period.",
    "ledger": "Ledger entries: one row per entry (debits positive), with its transaction.",
    "events": "Usage events, in the format `neruba ingest` reads back (CSV: properties.<name> "
    "columns; with --raw, or as JSONL, when a cell may start with = + - @).",
    "usage": "Events and summed quantity per customer, meter and UTC day.",
    "credits": "Credit grants with what remains of them.",
    "payments": "Payments and refunds (kind payment|refund), in the order the money moved.",
}


def _export(
    rt: Runtime,
    kind: str,
    *,
    period: str | None,
    since: str | None,
    customer: str | None,
    fmt: str | None,
    output: str,
    compress: bool,
    name: str | None,
    overlap: str,
    raw: bool = False,
) -> None:
    compress = compress or output.lower().endswith(".gz")
    if output != "-":
        output_file(Path(output), "--output")
    if output == "-" and compress and sys.stdout.isatty():
        raise UsageError("--gzip would write binary to the terminal", hint="pass --output FILE")
    request = export_plan.ExportRequest(
        kind=kind,
        fmt=export_writing.guess_format(output, fmt),
        period=period,
        customer=customer,
        since=since,
        name=name,
        overlap=parse_fixed_duration(overlap, field="--overlap"),
    )
    export_kinds.check_request(request)
    project = rt.read_project()
    engine = rt.engine()
    to_file = output != "-"
    with export_watermarks.named_lease(engine, project, request) as lease:
        plan = export_watermarks.make_plan(engine, project, request, now=rt.now())
        total = export_writing.count(engine, plan) if to_file and rt.out.interactive else None
        with (
            rt.out.progress(f"Exporting {kind}", total) as bar,
            export_writing.destination(output, compress=compress) as out,
        ):
            shown = bar if to_file else (lambda _done: None)
            rows = export_writing.write(
                engine, plan, out, export_watermarks.keep_alive(engine, lease, shown), raw=raw
            )
        if lease is not None and name is not None:
            export_watermarks.store_watermark(
                engine, project, name, kind, plan.watermark, lease=lease, now=rt.now()
            )
    result = export_plan.ExportResult(
        kind=kind,
        fmt=request.fmt,
        rows=rows,
        output=output,
        gzip=compress,
        since=None if plan.since is None else plan.since.text(),
        watermark=plan.watermark,
        name=name,
    )
    if rt.options.json and not to_file:  # stdout carries the data: the summary goes aside
        sys.stderr.write(orjson.dumps(result.as_dict()).decode() + "\n")
    elif rt.options.json:
        rt.out.emit(result.as_dict())
    else:
        where = "stdout" if not to_file else output
        mark = plan.watermark
        after = (
            f"stored as {name!r}: the next --name {name} run starts there"
            if name
            else f"next time: --since {mark}"
        )
        noun = "row" if rows == 1 else "rows"
        rt.out.say(f"Exported {rows:,} {noun} of {kind} to {where}. Watermark {mark} ({after}).")


def _watermark_name(text: str) -> None:
    """`--name`, checked as every export request checks it."""
    export_kinds.check_request(export_plan.ExportRequest(kind="events", fmt="csv", name=text))


def _register(kind: str) -> None:

    def run(
        rt: Runtime,
        period: Annotated[
            str | None,
            typer.Option(
                help="YYYY-MM, previous or current: invoices of that period; other rows in that "
                "month (project time zone)."
            ),
            values.MONTH,
        ] = None,
        since: Annotated[
            str | None,
            typer.Option(
                help="Only rows new or changed since: a watermark printed by an earlier export, "
                "or a time (RFC 3339, a date, or 7d ago)."
            ),
        ] = None,
        customer: Annotated[
            str | None, typer.Option(help="Only this customer's rows (external id).")
        ] = None,
        fmt: Annotated[
            str | None,
            typer.Option(
                "--format", help="csv or jsonl (default: from the --output name, else csv)."
            ),
            values.one_of(export_plan.FORMATS),
        ] = None,
        output: Annotated[
            str,
            typer.Option(
                "--output",
                "-o",
                metavar="FILE",
                help="File (written whole or not at all), - for stdout, or a device or FIFO "
                "(written in place).",
            ),
        ] = "-",
        compress: Annotated[
            bool, typer.Option("--gzip", help="Compress with gzip (implied by a .gz name).")
        ] = False,
        name: Annotated[
            str | None,
            typer.Option(
                help="Incremental: start where the last complete run of this name stopped, and "
                "store the new watermark when the file is complete."
            ),
            values.read_by(_watermark_name),
        ] = None,
        overlap: Annotated[
            str,
            typer.Option(
                metavar="DURATION",
                help="invoices, lines, credits, payments: how far the watermark stays behind "
                "now, for commands still committing (rows in it come again next run).",
            ),
            values.FIXED_DURATION,
        ] = "300s",
        raw: Annotated[
            bool,
            typer.Option(
                "--raw",
                help="CSV: write cells as stored, without the ' before a cell that starts "
                "with = + - @ (a spreadsheet formula); for programs such as neruba ingest, "
                "never for a spreadsheet.",
            ),
        ] = False,
    ) -> None:
        _export(
            rt,
            kind,
            period=period,
            since=since,
            customer=customer,
            fmt=fmt,
            output=output,
            compress=compress,
            name=name,
            overlap=overlap,
            raw=raw,
        )

    run.__name__ = f"export_{kind}"
    run.__doc__ = HELP[kind]
    since = values.Value(  # watermarks are ids for journals, times for documents
        lambda text, _name, now: export_watermarks.parse_since_option(text, kind, now=now)
    )
    # A named export stores its watermark and holds a lease: it changes state, so it needs
    # the `export` scope as well and is audited; a plain export only reads.
    command(
        app,
        kind,
        group="export",
        scope="read",
        writes_with={"name": "export"},
        checks={"since": since},
    )(run)


for _kind in export_kinds.KINDS:
    _register(_kind)
