"""`neruba stats`"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from neruba_cli.cli.output import duration, fields, plural, table, timestamp
from neruba_cli.cli.paths import output_file
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain import prometheus
from neruba_cli.services.ops import stats as ops_stats


def register(app: typer.Typer) -> None:
    """Wired by the root; the command itself is defined here."""

    @command(app, "stats", scope="read")
    def stats(
        rt: Runtime,
        days: Annotated[
            int,
            typer.Option("--days", metavar="N", help="Window for events by day and ingest lag."),
        ] = ops_stats.DEFAULT_DAYS,
        prometheus_file: Annotated[
            Path | None,
            typer.Option(
                "--prometheus",
                help="Also write the figures in Prometheus text format to FILE, atomically "
                "(for node_exporter's textfile collector: name it *.prom), or to - (stdout).",
                show_default=False,
                metavar="FILE",
            ),
        ] = None,
    ) -> int:
        """Operating figures of the project: events by meter and day, ingest lag, the last
        billing run, invoices by status and currency, wallet liabilities."""
        if prometheus_file is not None:
            output_file(prometheus_file, "--prometheus")
            if str(prometheus_file) == "-":
                rt.out.give_stdout_to_data()
        project = rt.read_project()
        report = ops_stats.collect(rt.engine(), project, now=rt.now(), days=days)
        if prometheus_file is not None:
            text = prometheus.render(ops_stats.families(report))
            ops_stats.write_textfile(prometheus_file, text)
            if str(prometheus_file) != "-":
                rt.out.say(f"Wrote {prometheus_file}")
        data = report.as_dict()
        rt.out.emit(data, lambda console: _render(console, data))
        return 0


def _render(console: Console, data: dict[str, object]) -> None:
    lag = data["ingest_lag_seconds"]
    run = data["last_billing_run"]
    assert isinstance(lag, dict)
    summary = [
        ("project", data["project"]),
        ("window", f"{data['window']['days']} days since {data['window']['since']}"),  # type: ignore[index]
        (
            "ingest lag",
            f"p50 {duration(lag['p50'])}  p95 {duration(lag['p95'])}  max {duration(lag['max'])}"
            f"  over {plural(lag['events'], 'event')}",
        ),
        (
            "last billing run",
            "none"
            if not isinstance(run, dict)
            else f"{run['run']} {run['period']} finished {timestamp(run['finished_at'])} "
            f"in {duration(run['duration_seconds'])}",
        ),
    ]
    fields(dict(summary))(console)
    events = data["events"]
    assert isinstance(events, list)
    if events:
        rows = [(e["day"], e["meter"], e["count"]) for e in events]
        table("Events by day (UTC)", ("day", "meter", "events"), rows)(console)
    invoices = data["invoices"]
    assert isinstance(invoices, list)
    if invoices:
        rows = [(i["kind"], i["status"], i["currency"], i["count"], i["total"]) for i in invoices]
        table("Invoices", ("kind", "status", "currency", "count", "total"), rows)(console)
    wallets = data["wallet_liabilities"]
    assert isinstance(wallets, dict)
    if wallets:
        rows = [(currency, amount) for currency, amount in wallets.items()]
        table("Wallet liabilities (owed to customers)", ("currency", "amount"), rows)(console)
