"""`neruba run ...`: billing runs (bill a month; list, show and diff past runs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text

from neruba_cli.cli import values
from neruba_cli.cli.output import Output, fields, plural, table
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.money import format_amount
from neruba_cli.domain.timestamps import format_ts
from neruba_cli.services.billing import run as billing_run
from neruba_cli.services.billing import runs

app = typer.Typer()

Starter = Callable[[int], Callable[[int], None]]
EXIT_UNBILLED = 3  # the run completed, but some customers could not be billed


@command(app, "bill", group="run", scope="billing", mutating=True)
def bill(
    rt: Runtime,
    period: Annotated[
        str, typer.Option(help="The month to bill: YYYY-MM, previous or current."), values.MONTH
    ],
    as_of: Annotated[
        str | None,
        typer.Option(metavar="TS", help="Bill as if it were this moment, RFC 3339 (default: now)."),
        values.TIMESTAMP,
    ] = None,
    customer: Annotated[
        list[str] | None,
        typer.Option("--customer", help="Only this customer (external id); repeatable."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Compute and show everything, write nothing.")
    ] = False,
    finalize: Annotated[
        bool,
        typer.Option("--finalize", help="Finalize the month's drafts whose period has ended."),
    ] = False,
    allow_future: Annotated[
        bool,
        typer.Option(
            "--allow-future",
            help="Bill a month that has not started at --as-of (fees in advance, ahead of time).",
        ),
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            min=0, metavar="SECONDS", help="Seconds to wait for a run that holds the lock."
        ),
    ] = 0.0,
    lease: Annotated[
        int,
        typer.Option(
            min=1, metavar="SECONDS", help="Seconds the run's lock lasts without renewal."
        ),
    ] = 600,
) -> int:
    """Bill a month: create or recompute drafts, correct finalized invoices for late events.

    A rerun whose inputs did not change writes nothing and says "no changes". A customer
    whose invoice cannot be priced exactly or stored (a stored event reads a value no invoice
    can hold) is skipped and listed with the events that caused it; the others are billed
    and finalized. Exit 3 when the run completed with customers it could not bill; exit 5
    when another run holds the month's lock. A month that has not started at the as-of
    instant (`2027-05` typed for `2026-05`) is refused, exit 2, with nothing written, unless
    `--allow-future`; a dry run of it is computed with a warning.
    """
    moment = rt.moment(as_of)
    options = billing_run.RunOptions(
        label=period,
        as_of=moment,
        customers=tuple(customer or ()),
        dry_run=dry_run,
        finalize=finalize,
        allow_future=allow_future,
        wait=wait,
        lease=timedelta(seconds=lease),
    )
    project = rt.read_project()
    with _progress(rt.out, "Billing") as start:
        report = billing_run.run_bill(
            rt.engine(),
            project,
            options,
            actor=rt.actor.id,
            now=rt.now(),
            progress_total=start,
        )
    for warning in report.warnings:
        rt.out.warn(warning)
    data = report_to_dict(report)
    rt.out.emit(data, _render_report(data))
    return EXIT_UNBILLED if report.failed else 0


def report_to_dict(report: billing_run.RunReport) -> dict[str, Any]:
    """`run bill --json`: the documented keys first, then the details."""
    counts = billing_run.run_summary(report)
    status = "dry_run" if report.dry_run else report.status
    changes = []
    for outcome in report.outcomes:
        if outcome.action == "unchanged" and not outcome.late_events:
            continue  # late events are listed even where nothing changed: where they landed
        change: dict[str, Any] = {
            "customer": outcome.customer,
            "period_start": format_ts(outcome.period.start),
            "period_end": format_ts(outcome.period.end),
            "action": outcome.action,
            "number": outcome.number,
            "total": _money(outcome.total, outcome.currency),
            "late_events": outcome.late_events,
            "landed": outcome.landed,
        }
        if report.dry_run:
            change["invoice"] = outcome.content
        changes.append(change)
    return {
        "run": report.run,
        "period": report.period,
        "status": status,
        "invoices": counts["invoices"],
        "corrections": counts["corrections"],
        "late_events": counts["late_events"],
        "unchanged": counts["unchanged"],
        "fingerprint": report.fingerprint,
        "created": counts["created"],
        "updated": counts["updated"],
        "voided": counts["voided"],
        "finalized": list(report.finalized),
        "dry_run": report.dry_run,
        "changes": changes,
        "failed": [failure.as_dict() for failure in report.failed],
    }


def _money(value: Decimal | None, currency: str | None) -> str | None:
    if value is None:
        return None
    return str(value) if currency is None else format_amount(value, currency)


@contextmanager
def _progress(out: Output, description: str) -> Iterator[Starter | None]:
    """A bar over the run's work items on a terminal; nothing in cron, --quiet or --json."""
    if not out.interactive:
        yield None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=out.stderr, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def start(total: int) -> Callable[[int], None]:
            bar.update(task, total=total)
            return lambda done: bar.advance(task, done)

        yield start


def _render_report(data: dict[str, Any]) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        changes = data["changes"]
        if changes:
            grid = Table(title=None, header_style="bold")
            for column in ("customer", "period", "action", "number", "total", "late events"):
                grid.add_column(column, overflow="fold", no_wrap=column == "period")
            for change in changes:
                grid.add_row(
                    Text(change["customer"]),
                    Text(f"{change['period_start'][:10]} → {change['period_end'][:10]}"),
                    Text(change["action"]),
                    Text(change["number"] or ""),
                    Text(change["total"] or ""),
                    Text(_landed(change)),
                )
            console.print(grid)
        console.print(Text(summary_line(data)))
        for failure in data["failed"]:
            _render_failure(console, failure)

    return render


def _render_failure(console: Console, failure: dict[str, Any]) -> None:
    """A customer the run skipped: why, and the stored events that caused it."""
    kept = f" ({failure['invoice']} left as it was)" if failure["invoice"] else ""
    console.print(
        Text(
            f"not billed: {failure['customer']} "
            f"{failure['period_start'][:10]} → {failure['period_end'][:10]}: "
            f"{failure['reason']}{kept}",
            style="red",
        )
    )
    for event in failure["events"]:
        console.print(
            Text(
                f"  event {event['idempotency_key']}: meter {event['meter']} reads "
                f"{event['property']} = {event['value']} ({event['reason']})"
            )
        )


def _landed(change: dict[str, Any]) -> str:
    if not change["late_events"]:
        return ""
    where = change["landed"] or change["action"]  # a dry run has no numbers yet
    return f"{change['late_events']} → {where}"


def summary_line(data: dict[str, Any]) -> str:
    """One line: what the run did, or "no changes"."""
    prefix = f"{data['period']}: " + ("dry run: " if data["dry_run"] else "")
    parts = [f"{data[key]} {key}" for key in ("created", "updated") if data[key]]
    if data["corrections"]:
        parts.append(plural(data["corrections"], "correction"))
    if data["voided"]:
        parts.append(f"{data['voided']} voided")
    if data["finalized"]:
        parts.append(f"{len(data['finalized'])} finalized")
    late = f", {plural(data['late_events'], 'late event')}" if data["late_events"] else ""
    failed = f"; {plural(len(data['failed']), 'customer')} not billed" if data["failed"] else ""
    if not parts:
        unchanged = plural(data["unchanged"], "invoice")
        return f"{prefix}no changes ({unchanged} unchanged{late}){failed}"
    if data["dry_run"]:
        prefix += "nothing written; would have "
    run = f" in {data['run']}" if data["run"] else ""
    return f"{prefix}{', '.join(parts)}{run} ({data['unchanged']} unchanged{late}){failed}"


# --------------------------------------------------------------------------- past runs


@command(app, "list", group="run", scope="read")
def list_(
    rt: Runtime,
    period: Annotated[
        str | None, typer.Option(help="Only runs of this month (YYYY-MM)."), values.CALENDAR_MONTH
    ] = None,
) -> None:
    """List billing runs, newest first (a run that changed nothing leaves no record)."""
    with rt.transaction() as session:
        project = rt.project(session)
        rows = [runs.run_to_dict(run) for run in runs.list_runs(session, project, period)]

    def render(console: Console) -> None:
        if not rows:
            console.print(Text("No billing runs."))
            return
        grid = Table(header_style="bold")
        for column in ("id", "period", "status", "started", "result"):
            grid.add_column(column, no_wrap=column != "result", overflow="fold")
        for row in rows:
            started = (row["started_at"] or "")[:19].replace("T", " ")
            grid.add_row(row["id"], row["period"], row["status"], started, _result(row))
        console.print(grid)

    rt.out.emit(rows, render)


def _result(row: dict[str, Any]) -> Text:
    """What a run did, in a few words: `3 created, 1 correction, 40 late events`."""
    parts = [f"{row[key]} {key}" for key in ("created", "updated") if row.get(key)]
    if row.get("corrections"):
        parts.append(plural(row["corrections"], "correction"))
    for key in ("voided", "finalized"):
        if row.get(key):
            parts.append(f"{row[key]} {key}")
    if row.get("late_events"):
        parts.append(plural(row["late_events"], "late event"))
    if row.get("failed"):
        parts.append(f"{plural(len(row['failed']), 'customer')} not billed")
    return Text(", ".join(parts) or (row.get("message") or ""))


@command(app, "show", group="run", scope="read")
def show(
    rt: Runtime,
    run: Annotated[str, typer.Argument(help="Run id (run_...).")],
) -> None:
    """Show a run, its counts and the invoices it wrote."""
    with rt.transaction() as session:
        project = rt.project(session)
        found = runs.get_run(session, project, run)
        data = {**runs.run_to_dict(found), "written": runs.run_invoices(session, project, found)}

    def render(console: Console) -> None:
        fields({k: v for k, v in data.items() if k != "written"})(console)
        columns = ("number", "customer", "kind", "total", "action")
        written = [[w[c] for c in columns] for w in data["written"]]
        table("invoices written", columns, written, empty="It wrote no invoices.")(console)

    rt.out.emit(data, render)


@command(app, "diff", group="run", scope="read")
def diff(
    rt: Runtime,
    run_a: Annotated[str, typer.Argument(help="The earlier run (before).")],
    run_b: Annotated[str, typer.Argument(help="The later run (after).")],
) -> None:
    """What changed between the invoices as run A left them and as run B left them."""
    with rt.transaction() as session:
        project = rt.project(session)
        changes = runs.diff_runs(session, project, run_a, run_b)

    def render(console: Console) -> None:
        if not changes:
            console.print(Text(f"no differences between {run_a} and {run_b}"))
            return
        for change in changes:
            head = Text(f"{change['customer']}  {change['number']}  ", style="bold")
            head += _arrow(change["before_total"], change["after_total"])
            console.print(head)
            for line in change["lines"]:
                console.print(
                    Text(f"  {line['description']}: ") + _arrow(line["before"], line["after"])
                )

    rt.out.emit(changes, render)


def _arrow(before: str | None, after: str | None) -> Text:
    text = Text()
    text.append(before if before is not None else "(none)", style="red")
    text.append(" → ")
    text.append(after if after is not None else "(none)", style="green")
    return text
