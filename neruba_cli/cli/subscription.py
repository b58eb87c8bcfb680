"""`neruba subscription ...`"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neruba_cli.cli import values
from neruba_cli.cli.output import plural, table
from neruba_cli.cli.paths import output_file
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.billing_periods import final_run
from neruba_cli.domain.catalog import MAX_TRIAL_DAYS
from neruba_cli.domain.timestamps import parse_ts
from neruba_cli.services.catalog import subscriptions
from neruba_cli.services.ingest.rejects import RejectsWriter, default_rejects_path
from neruba_cli.services.ingest.tabular import read_csv

EXIT_REJECTED = 3

app = typer.Typer()


def _emit_one(rt: Runtime, data: dict[str, object], message: str) -> None:
    rt.out.emit(data)
    rt.out.say(message)


@command(app, "create", group="subscription", scope="billing", mutating=True)
def create(
    rt: Runtime,
    customer: Annotated[str, typer.Argument(help="Customer external id.")],
    plan: Annotated[
        str, typer.Argument(help="Plan code (current version) or PLAN@VERSION."), values.PLAN
    ],
    start: Annotated[
        str, typer.Option(metavar="TS", help="Start, RFC 3339 with an offset."), values.TIMESTAMP
    ],
    anchor: Annotated[
        str, typer.Option(help="calendar or anniversary."), values.one_of(subscriptions.ANCHORS)
    ] = "calendar",
    trial_days: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=MAX_TRIAL_DAYS,
            metavar="DAYS",
            help="Days without base fee (default: the plan's).",
        ),
    ] = None,
) -> None:
    """Subscribe a customer to a plan; a warning says when they hold one that overlaps it."""
    with rt.transaction() as session:
        project = rt.project(session)
        created = subscriptions.create_subscription(
            session,
            project,
            customer,
            plan,
            start=parse_ts(start, field="--start"),
            anchor=anchor,
            trial_days=trial_days,
            now=rt.now(),
        )
        data = subscriptions.to_dict(session, created)
        data["warnings"] = subscriptions.overlap_warnings(session, created)
    _emit_one(rt, data, f"Created {data['id']}: {customer} on {data['plan']} v{data['version']}.")
    for warning in data["warnings"]:
        rt.out.warn(warning)


@command(app, "change", group="subscription", scope="billing", mutating=True)
def change(
    rt: Runtime,
    subscription: Annotated[str, typer.Argument(help="Subscription id (sub_...).")],
    plan: Annotated[str, typer.Option(help="The new plan (or PLAN@VERSION)."), values.PLAN],
    at: Annotated[
        str,
        typer.Option(metavar="TS", help="When the change takes effect, RFC 3339."),
        values.TIMESTAMP,
    ],
) -> None:
    """Move a subscription to another plan, or to a plan's newer version, at a moment."""
    with rt.transaction() as session:
        project = rt.project(session)
        changed = subscriptions.change_plan(
            session, project, subscription, plan, at=parse_ts(at, field="--at")
        )
        data = subscriptions.to_dict(session, changed)
    _emit_one(rt, data, f"{subscription} moves to {data['plan']} v{data['version']} at {at}.")


@command(app, "cancel", group="subscription", scope="billing", mutating=True)
def cancel(
    rt: Runtime,
    subscription: Annotated[str, typer.Argument(help="Subscription id (sub_...).")],
    at: Annotated[
        str,
        typer.Option(metavar="TS", help="When the subscription ends, RFC 3339."),
        values.TIMESTAMP,
    ],
) -> None:
    """End a subscription at a moment (its last period is prorated)."""
    with rt.transaction() as session:
        project = rt.project(session)
        ended = subscriptions.cancel(session, project, subscription, at=parse_ts(at, field="--at"))
        data = subscriptions.to_dict(session, ended)
        final = final_run(parse_ts(data["end"]), data["timezone"])
    _emit_one(
        rt,
        data,
        f"{subscription} ends at {data['end']}; its last period is billed by the run of "
        f"{final} (neruba run bill --period {final}).",
    )


@command(app, "list", group="subscription", scope="read")
def list_(
    rt: Runtime,
    customer: Annotated[str | None, typer.Option(help="Only this customer's.")] = None,
) -> None:
    """List subscriptions with their plan, version and dates."""
    with rt.transaction() as session:
        project = rt.project(session)
        found = subscriptions.list_subscriptions(session, project, customer)
        rows = [subscriptions.to_dict(session, item) for item in found]
    columns = ("id", "customer", "plan", "version", "start", "end", "anchor", "trial_ends")
    shown = [[row[c] for c in columns] for row in rows]
    rt.out.emit(rows, table(None, columns, shown, empty="No subscriptions."))


@command(app, "import", group="subscription", scope="billing", mutating=True)
def import_(
    rt: Runtime,
    file: Annotated[Path, typer.Argument(help="CSV: customer,plan,start[,anchor][,trial_days]")],
    rejects: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Rejected rows as JSONL (default: FILE.rejects.jsonl)."),
    ] = None,
) -> int:
    """Create subscriptions from a CSV file; exit 3 when rows were rejected."""
    rejects_path = output_file(rejects or default_rejects_path(file), "--rejects")
    if str(rejects_path) == "-":
        rt.out.give_stdout_to_data()
    rows = read_csv(file, columns=subscriptions.CSV_COLUMNS, required=subscriptions.CSV_REQUIRED)
    with (
        RejectsWriter(rejects_path) as writer,
        rt.out.progress(f"Importing {file.name}") as progress,
        rt.transaction() as session,
    ):
        report = subscriptions.import_subscriptions(
            session, rt.project(session), rows, now=rt.now(), rejects=writer, on_progress=progress
        )
    rt.out.emit(
        {
            "file": str(file),
            "lines": report.lines,
            "created": report.created,
            "unchanged": report.unchanged,
            "rejected": report.rejected,
            "rejects_file": str(rejects_path) if report.rejected else None,
            "rejects": [reject.as_dict() for reject in report.rejects],
            "warnings": report.warnings,
        }
    )
    rt.out.say(
        f"{file.name}: {plural(report.lines, 'row')} — {report.created} created, "
        f"{report.unchanged} unchanged, {report.rejected} rejected."
    )
    for reject in report.rejects:
        rt.out.warn(f"{file}:{reject.line}: {reject.reason}")
    for warning in report.warnings:
        rt.out.warn(f"{file}:{warning['line']}: {warning['message']}")
    return EXIT_REJECTED if report.rejected else 0
