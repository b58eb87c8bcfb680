"""`neruba ingest` and `neruba events ...`"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer

from neruba_cli.cli import values
from neruba_cli.cli.output import fields, import_progress, table
from neruba_cli.cli.paths import output_file
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.charges import validate_charge
from neruba_cli.domain.errors import InvalidInput, UsageError
from neruba_cli.domain.events import Rejected
from neruba_cli.domain.money import decimal_text
from neruba_cli.domain.timestamps import (
    format_ts,
    parse_fixed_duration,
    parse_since,
    validate_timezone,
)
from neruba_cli.services.billing import run as billing_run
from neruba_cli.services.catalog import store as catalog_store
from neruba_cli.services.ingest import charges as ingest_charges
from neruba_cli.services.ingest import pipeline as ingest_pipeline
from neruba_cli.services.ingest import reads as ingest_reads
from neruba_cli.services.ingest import receipts as ingest_receipts
from neruba_cli.services.ingest.readers import Source, content_digest, guess_format
from neruba_cli.services.ingest.rejects import RejectsWriter, default_rejects_path

EXIT_REJECTED = 3
events_app = typer.Typer()


def register(app: typer.Typer) -> None:
    @command(app, "ingest", scope="ingest", mutating=True)
    def ingest_(
        rt: Runtime,
        files: Annotated[
            list[str],
            typer.Argument(metavar="FILE", help="JSONL/CSV files (.gz too), or - for stdin."),
        ],
        format: Annotated[
            str | None,
            typer.Option(
                "--format", help="jsonl, csv, cloudevents or charges (default: by extension)."
            ),
        ] = None,
        rejects: Annotated[
            Path | None,
            typer.Option(metavar="FILE", help="Rejected and conflicting lines as JSONL."),
        ] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Validate and count only.")
        ] = False,
        assume_timezone: Annotated[
            str | None,
            typer.Option(metavar="ZONE", help="Read timestamps without an offset in this zone."),
            values.TIMEZONE,
        ] = None,
        create_customers: Annotated[
            bool, typer.Option("--create-customers", help="Create unknown customers.")
        ] = False,
        max_future: Annotated[
            str,
            typer.Option(
                metavar="DURATION", help="How far in the future an event may be (clock skew)."
            ),
            values.FIXED_DURATION,
        ] = "1h",
    ) -> int:
        """Import usage events; replaying a file never double-counts. Exit 3 on rejects."""
        fmt = guess_format(files, format)
        for path in files:
            if path != "-" and not os.path.isfile(path):
                raise InvalidInput(f"cannot read {path}: no such file")
        if files.count("-") > 1:
            raise UsageError("stdin (-) can be read only once")
        first = files[0]
        rejects_path = rejects or default_rejects_path(Path("stdin" if first == "-" else first))
        output_file(rejects_path, "--rejects")
        if str(rejects_path) == "-":
            rt.out.give_stdout_to_data()
        options = ingest_pipeline.IngestOptions(
            fmt=fmt,
            dry_run=dry_run,
            assume_tz=ZoneInfo(validate_timezone(assume_timezone)) if assume_timezone else None,
            create_customers=create_customers,
            max_future=parse_fixed_duration(max_future, field="--max-future"),
        )
        with rt.transaction() as session:
            project = rt.project(session)
            meters = catalog_store.stored_meters(session, project)
        source = Source(files)
        earlier = ingest_receipts.imports_with_digest(rt.engine(), project, content_digest(files))
        if earlier:
            rt.out.warn(
                f"{source.name}: this content was already imported ({', '.join(earlier)}); "
                "every line will be checked and counted as a duplicate"
            )
        total = sum(os.path.getsize(p) for p in files if p != "-" and not p.endswith(".gz"))
        with (
            RejectsWriter(rejects_path) as writer,
            import_progress(rt.out, total or None) as progress,
        ):
            summary = ingest_pipeline.ingest(
                rt.engine(),
                project,
                source,
                options,
                meters=meters,
                rejects=writer,
                actor=rt.actor.id,
                now=rt.now(),
                on_progress=progress,
            )
        data = {
            **summary.as_dict(),
            "dry_run": dry_run,
            "rejects_file": str(rejects_path) if summary.rejected + summary.conflicts else None,
            "rejects": [reject.as_dict() for reject in summary.rejects],
        }
        rt.out.emit(data, fields(_receipt_view(data)))
        for stale in summary.stale_invoices:
            rt.out.warn(
                f"finalized invoice {stale['number']} got new events from {summary.source}; "
                f"`{stale['rerun']}` picks them up"
            )
        for reject in summary.rejects[:20]:
            rt.out.warn(f"{reject.where}: {reject.reason}")
        for warning in summary.warnings:
            rt.out.warn(warning)
        if summary.rejected + summary.conflicts:
            rt.out.say(f"Rejected and conflicting lines are in {rejects_path}.")
            return EXIT_REJECTED
        return 0


def _receipt_view(data: dict[str, Any]) -> dict[str, Any]:
    keys = ("batch", "source", "lines", "accepted", "duplicates", "conflicts", "rejected")
    view = {key: data[key] for key in keys}
    view["events from"] = data["first_event"]
    view["events to"] = data["last_event"]
    view["periods"] = ", ".join(data["periods"])
    view["stale invoices"] = ", ".join(s["number"] for s in data["stale_invoices"]) or "none"
    view["seconds"] = data["seconds"]
    return view


@command(events_app, "receipts", group="events", scope="read")
def receipts(
    rt: Runtime,
    limit: Annotated[
        int, typer.Option(min=1, metavar="N", help="At most this many, newest first.")
    ] = 50,
) -> None:
    """List import receipts: source, hash, counts, event range, periods touched."""
    with rt.transaction() as session:
        project = rt.project(session)
        conn = session.connection()
        rows = [
            ingest_reads.receipt_dict(
                batch,
                billing_run.stale_invoices(
                    conn, project.id, batch.id, batch.first_event_at, batch.last_event_at
                ),
            )
            for batch in ingest_reads.list_receipts(session, project, limit)
        ]
    columns = (
        "batch",
        "source",
        "status",
        "lines",
        "accepted",
        "duplicates",
        "conflicts",
        "rejected",
    )
    shown = [[row[c] for c in columns] for row in rows]
    rt.out.emit(rows, table(None, columns, shown, empty="No import receipts."))


@command(events_app, "list", group="events", scope="read")
def list_(
    rt: Runtime,
    customer: Annotated[str | None, typer.Option(help="Customer external id.")] = None,
    meter: Annotated[str | None, typer.Option(help="Meter code.")] = None,
    since: Annotated[
        str | None,
        typer.Option(metavar="WHEN", help="A timestamp, a date or a duration ago."),
        values.SINCE,
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, metavar="N", help="At most this many, newest first.")
    ] = 100,
) -> None:
    """List stored events, newest first."""
    start = parse_since(since, now=rt.now()) if since else None
    with rt.transaction() as session:
        rows = ingest_reads.list_events(
            session, rt.project(session), customer=customer, meter=meter, since=start, limit=limit
        )
    columns = ("timestamp", "customer", "meter", "quantity", "idempotency_key", "batch")
    shown = [[row[c] for c in columns] for row in rows]
    rt.out.emit(rows, table(None, columns, shown, empty="No events."))


charge_app = typer.Typer()


@command(charge_app, "add", group="charge", scope="billing", mutating=True)
def charge_add(
    rt: Runtime,
    customer: Annotated[str, typer.Argument(help="Customer external id.")],
    amount: Annotated[
        str,
        typer.Option(help="Amount in the customer's currency, e.g. 25.00."),
        values.positive_amount(hint="grant credits to give money back"),
    ],
    description: Annotated[str, typer.Option(metavar="TEXT", help="The invoice line's text.")],
    idempotency_key: Annotated[
        str, typer.Option(metavar="KEY", help="Adding the same key again does nothing.")
    ],
    at: Annotated[
        str | None,
        typer.Option(metavar="TS", help="When it applies (default: now), RFC 3339."),
        values.TIMESTAMP,
    ] = None,
) -> int:
    """Add a one-off charge. Exit 3 if the key was used for a different charge."""
    now = rt.now()
    raw: dict[str, Any] = {
        "idempotency_key": idempotency_key,
        "customer": customer,
        "amount": amount,
        "description": description,
    }
    if at is not None:
        raw["timestamp"] = at
    try:
        charge = validate_charge(raw, now=now, max_future=timedelta(days=366))
    except Rejected as exc:  # every field of the charge came from this command line
        raise UsageError(str(exc)) from None
    with rt.transaction() as session:
        project = rt.project(session)
    outcome, summary = ingest_charges.record_charge(rt.engine(), project, charge, now=now)
    if outcome == "rejected":
        raise InvalidInput(summary.rejects[0].reason)
    data: dict[str, Any] = {
        "outcome": outcome,
        "idempotency_key": charge.idempotency_key,
        "customer": charge.customer,
        "amount": decimal_text(charge.amount),
        "description": charge.description,
        "at": format_ts(charge.timestamp),
    }
    if outcome == "conflict":
        data["stored"] = summary.rejects[0].stored
    rt.out.emit(data)
    messages = {
        "accepted": f"Added charge {charge.idempotency_key} for {customer}.",
        "duplicate": f"Charge {charge.idempotency_key} was already added; nothing changed.",
        "conflict": f"Key {charge.idempotency_key} was used for a different charge; not added.",
    }
    rt.out.say(messages[outcome])
    return EXIT_REJECTED if outcome == "conflict" else 0
