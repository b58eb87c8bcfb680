"""`neruba demo`"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from neruba_cli.cli import values
from neruba_cli.cli.catalog import render_quote
from neruba_cli.cli.compare import render as render_compare
from neruba_cli.cli.output import table
from neruba_cli.cli.paths import output_folder
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.errors import UsageError
from neruba_cli.services.ops.demo import DEMO_PROJECT, DEMO_USAGE, run_demo
from neruba_cli.services.tenancy.access import PUBLIC, operator_access


def register(app: typer.Typer) -> None:
    @command(app, "demo", scope=PUBLIC)
    def demo(
        rt: Runtime,
        directory: Annotated[
            Path | None,
            typer.Option(
                "--dir", help="Folder for the demo database (default: a new temp folder)."
            ),
        ] = None,
        as_of: Annotated[
            str | None,
            typer.Option(
                metavar="TS",
                help="Run the demo as if it were this moment, RFC 3339 (default: now); it "
                "bills the calendar month before it.",
            ),
            values.TIMESTAMP,
        ] = None,
    ) -> None:
        """Run Neruba end to end on a throwaway SQLite database and show what it did."""
        if rt.options.db:
            raise UsageError("demo always uses its own SQLite database; use --dir to place it")
        moment = rt.moment(as_of)
        if directory is not None:
            output_folder(directory, "--dir")
        folder = directory or Path(tempfile.mkdtemp(prefix="neruba-demo-"))
        result = run_demo(folder.resolve(), actor=operator_access().actor, now=moment)

        def render(console: Console) -> None:
            def line(text: str) -> None:
                console.print(text, markup=False, highlight=False)

            console.print(Text("Neruba demo", style="bold") + Text(f" in {result.folder}"))
            for number, step in enumerate(result.steps, start=1):
                line(f"  {number}. {step}")
            columns = ("external_id", "name", "currency", "timezone")
            rows = [[row[c] for c in columns] for row in result.customers]
            table(f"Customers of project {DEMO_PROJECT}", columns, rows)(console)
            for reject in result.customer_import.rejects:
                line(f"  rejected line {reject.line}: {reject.reason}")
            document = result.as_dict()["quote"]
            if document is not None:
                line(f"\nA quote on plan pro for {', '.join(DEMO_USAGE)}:")
                render_quote(console, document)
            invoice_columns = (
                "number",
                "customer",
                "kind",
                "status",
                "subtotal",
                "credits_applied",
                "total",
                "amount_due",
            )
            headings = ("number", "customer", "kind", "status", "subtotal", "credits", "total")
            invoice_rows = [[row[c] for c in invoice_columns] for row in result.invoices]
            if invoice_rows:
                line("")
                table("Invoices", (*headings, "due"), invoice_rows)(console)
            if result.compare_report is not None:
                line("")
                report = result.compare_report
                data = {
                    "summary": report.summary(),
                    "differences": report.customer_dicts(differing_only=True),
                    "lines": report.line_dicts(),
                }
                render_compare(console, report, data, "invoice")
            line("\nTry it yourself on the demo database:")
            on_demo = f"--db {result.database_url} --project {DEMO_PROJECT}"
            line(f"  neruba invoice show DEMO-000001 {on_demo}")
            line(f"  neruba invoice explain DEMO-000002 {on_demo}")
            line(f"  neruba wallet show cus_initech {on_demo}")
            line(f"  neruba ledger show {on_demo}")
            line(f"  neruba check {on_demo}")
            line(f"  neruba run list {on_demo}")
            line(f"  neruba customer list --db {result.database_url} --project {DEMO_PROJECT}")
            line(f"  neruba catalog show --db {result.database_url} --project {DEMO_PROJECT}")
            line(f"  neruba audit list --db {result.database_url}")

        rt.out.emit(result.as_dict(), render)
