"""`neruba simulate --catalog NEW.toml --period P`"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neruba_cli.cli.compare import ByOption, PeriodOption, ReportFolderOption, check_by, finish
from neruba_cli.cli.paths import output_folder
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.services.analysis import simulate as service
from neruba_cli.services.catalog.files import read_catalog_file
from neruba_cli.services.invoices import read as invoices_read


def register(app: typer.Typer) -> None:
    @command(app, "simulate", scope="read")
    def simulate(
        rt: Runtime,
        catalog: Annotated[
            Path,
            typer.Option(
                "--catalog", metavar="FILE", help="Candidate catalog TOML ([[meters]], [[plans]])."
            ),
        ],
        period: PeriodOption,
        customer: Annotated[
            list[str] | None,
            typer.Option("--customer", help="Only this customer (repeatable)."),
        ] = None,
        by: ByOption = "invoice",
        output: ReportFolderOption = None,
    ) -> int:
        """What-if pricing: bill a past month's stored usage on a candidate catalog and
        compare it with the invoices issued (per customer, per line, revenue impact). Writes
        nothing to the database."""
        check_by(by)
        if output is not None:
            output_folder(output, "--output")
        candidate = read_catalog_file(catalog)
        project = rt.read_project()
        label = invoices_read.period_label(period, project, rt.now())
        with rt.out.progress("Simulating"):
            report = service.simulate(
                rt.engine(),
                project,
                candidate.data,
                source=catalog.name,
                text=candidate.text,
                label=label,
                customers=tuple(customer or ()),
                now=rt.now(),
            )
        return finish(rt, report, by=by, output=output)
