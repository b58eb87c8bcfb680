"""`neruba retention ...`"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Annotated, Any

import typer

from neruba_cli.cli import values
from neruba_cli.cli.output import Output, fields, plural, table
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.retention import NOT_OLD_ENOUGH, check_as_of, parse_age
from neruba_cli.services.ops import retention

app = typer.Typer()


@command(app, "apply", group="retention", scope="admin", mutating=True)
def apply(
    rt: Runtime,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="AGE",
            help="Only months that ended longer ago than this: 13m (months), 90d, 8w, 2y.",
        ),
        values.AGE,
    ],
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of", metavar="TS", help="Measure the age from this moment (default: now)."
        ),
        values.TIMESTAMP,
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report the months and events; change nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm without asking.")] = False,
) -> None:
    """Remove the event properties no meter reads, for finalized, settled months.

    A month qualifies when it ended more than --older-than ago, all its invoices are final
    (finalized, paid or void), no events arrived after its last billing run, and, where the
    project pushes to Stripe, every final invoice was pushed. Properties that a meter reads
    are kept, so a rerun of those months gives the same invoices. Rerunning after an
    interruption finishes the job. --as-of may not lie in the future (exit 2).
    """
    age = parse_age(older_than)
    now = rt.now()
    moment = rt.moment(as_of, now)
    check_as_of(moment, now)  # before asking for confirmation
    engine = rt.engine()
    project = rt.read_project()
    if not dry_run:
        rt.confirm(
            f"Drop event properties no meter reads from {project.slug}'s months that ended "
            f"before {older_than} ago? This cannot be undone",
            yes=yes,
        )
    with _progress(rt.out) as progress_total:
        report = retention.apply(
            engine,
            project,
            age,
            as_of=moment,
            dry_run=dry_run,
            actor=rt.actor.id,
            now=now,
            progress_total=progress_total,
        )
    data = report.as_dict()
    rt.out.emit(data, fields(_human(data)))
    verb = "Would drop" if dry_run else "Dropped"
    periods = ", ".join(report.periods) or "none"
    rt.out.say(
        f"{verb} {plural(report.properties_dropped, 'property', 'properties')} from "
        f"{plural(report.events, 'event')} of {plural(len(report.periods), 'month')}: {periods}."
    )
    for skipped in report.skipped:
        if skipped["code"] != NOT_OLD_ENOUGH:
            rt.out.warn(f"{skipped['period']} kept: {skipped['reason']}")


@command(app, "list", group="retention", scope="read")
def list_(rt: Runtime) -> None:
    """The retention runs of the project: when, which months, how many events changed."""
    with rt.transaction() as session:
        project = rt.project(session)
        rows = retention.list_runs(session.connection(), project)
    columns = ("run", "older_than", "periods", "events", "properties_dropped", "status")
    for row in rows:
        if row["message"]:
            rt.out.warn(f"{row['run']}: {row['message']}")
    rendered = [[", ".join(row[c]) if c == "periods" else row[c] for c in columns] for row in rows]
    rt.out.emit(rows, table(None, columns, rendered, empty="No retention runs."))


def _human(data: dict[str, Any]) -> dict[str, Any]:
    shown = dict(data)
    shown["periods"] = ", ".join(data["periods"]) or "none"
    shown["kept_properties"] = ", ".join(data["kept_properties"]) or "none"
    shown["skipped"] = ", ".join(f"{s['period']} ({s['reason']})" for s in data["skipped"])
    return shown


@contextmanager
def _progress(out: Output) -> Iterator[Callable[[int], Callable[[int], None]]]:
    """A bar over the events of the eligible months, once their number is known."""
    with ExitStack() as stack:

        def start(total: int) -> Callable[[int], None]:
            return stack.enter_context(out.progress("Dropping event properties", total=total))

        yield start
