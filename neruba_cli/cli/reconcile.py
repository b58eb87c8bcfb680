"""`neruba reconcile stripe`"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from neruba_cli.cli import values
from neruba_cli.cli.output import table
from neruba_cli.cli.paths import output_file
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.money import format_minor
from neruba_cli.services.invoices import read as invoices_read
from neruba_cli.services.stripe import pull as stripe_pull
from neruba_cli.services.stripe import reconcile
from neruba_cli.services.stripe.gateway import Gateway

EXIT_DISCREPANCY = 4

app = typer.Typer()


@command(app, "stripe", group="reconcile", scope="billing", mutating=True)
def stripe(
    rt: Runtime,
    period: Annotated[str, typer.Option(help="YYYY-MM, previous or current."), values.MONTH],
    output: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Also write the report to FILE.csv or FILE.json (- for stdout, a device or "
            "FIFO is written in place).",
        ),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="csv or json (default: from the --output name; needed for - or a device).",
        ),
        values.one_of(reconcile.REPORT_FORMATS),
    ] = None,
    pull: Annotated[
        bool,
        typer.Option(
            "--pull",
            help="Refresh the Stripe mirror first (payments are not applied: the report shows "
            "what disagrees, `stripe pull` settles it).",
        ),
    ] = False,
) -> int:
    """The period's finalized invoices against the Stripe mirror: missing on either side,
    amount, currency, status and customer mismatches. Exit 4 when anything disagrees."""
    if output is not None:
        output_file(output, "--output")
        fmt = reconcile.report_format(output, fmt)
        if str(output) == "-":
            rt.out.give_stdout_to_data()
    project = rt.read_project()
    label = invoices_read.period_label(period, project, rt.now())
    if pull:
        pulled = stripe_pull.pull(
            rt.engine(),
            project,
            gateway=Gateway.from_environment,
            since=None,
            actor=rt.actor.id,
            now=rt.now(),
            apply=False,
        )
        for error in pulled.errors:
            rt.out.warn(error)
    with rt.engine().connect() as conn:
        report = reconcile.reconcile_stripe(conn, project, label)
    if output is not None and fmt is not None:
        reconcile.write_report(report, output, fmt)
    data = report.as_dict()
    rows = [
        (
            Text(item["kind"], style="red"),
            item["invoice"] or "",
            item["stripe_invoice"] or "",
            _side(item["neruba"]),
            _side(item["stripe"]),
            f"{item['at_stake']} {item['currency']}",
            item["reason"] or "",
        )
        for item in data["discrepancies"]
    ]
    stake = ", ".join(
        f"{format_minor(minor, currency)} {currency}"
        for currency, minor in report.at_stake().items()
    )
    kinds = ", ".join(f"{count} {kind}" for kind, count in report.counts().items() if count)
    summary = f"{report.matched} matched" + (f", {kinds}; at stake {stake}" if kinds else "")

    def render(console: Console) -> None:
        if rows:
            columns = ("kind", "invoice", "stripe id", "neruba", "stripe", "at stake", "reason")
            table(f"Reconcile {label} with Stripe", columns, rows)(console)
        console.print(Text(summary, style="red" if rows else "green"))

    rt.out.emit(data, render)
    return EXIT_DISCREPANCY if report.discrepancies else 0


def _side(side: dict[str, Any] | None) -> str:
    """One side of a discrepancy in a cell: total and status, or a dash when it is missing."""
    if side is None:
        return "—"
    return f"{side['total']} {side['status']}"
