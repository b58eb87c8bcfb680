"""`neruba check`"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.text import Text

from neruba_cli.cli.output import table
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.services.ops.check import runner as check_runner

EXIT_DISCREPANCY = 4


def register(app: typer.Typer) -> None:
    @command(app, "check", scope="read")
    def check(rt: Runtime) -> int:
        """Consistency sweep of the ledger, invoices, billed events and import receipts. Exit
        4 on any discrepancy, with the list; notes (late events awaiting a rerun, an import
        still running) are listed but do not fail."""
        project = rt.read_project()
        report = check_runner.run_consistent(rt.engine(), project)
        data = report.as_dict()
        rows = [
            (
                item["name"],
                Text(item["status"], style="green" if item["status"] == "ok" else "red"),
                str(item["checked"]),
                item["description"],
            )
            for item in data["checks"]
        ]
        summary = table(None, ("check", "status", "checked", "what"), rows)

        def render(console: Console) -> None:
            summary(console)
            for item in data["checks"]:
                for detail in item["details"]:
                    console.print(Text(f"{item['name']}: ", style="red") + Text(detail))
                hidden = item["problems"] - len(item["details"])
                if hidden > 0:
                    console.print(f"{item['name']}: ... and {hidden} more", markup=False)
            for item in data["checks"]:
                for note in item["notes"]:
                    console.print(Text(f"{item['name']} (note): ", style="yellow") + Text(note))
                hidden = item["noted"] - len(item["notes"])
                if hidden > 0:
                    console.print(f"{item['name']} (note): ... and {hidden} more", markup=False)

        rt.out.emit(data, render)
        if report.ok:
            return 0
        rt.out.warn(f"{data['problems']} discrepancies found")
        return EXIT_DISCREPANCY
