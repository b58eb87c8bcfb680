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
from neruba_cli.domain import event_corrections
from neruba_cli.domain.charges import validate_charge
from neruba_cli.domain.errors import InvalidInput, UsageError
from neruba_cli.domain.events import Rejected
from neruba_cli.domain.money import decimal_text
from neruba_cli.domain.timestamps import (
    format_ts,
    parse_fixed_duration,
    parse_since,
    parse_ts,
    validate_timezone,
)
from neruba_cli.services.billing import run as billing_run
from neruba_cli.services.catalog import store as catalog_store
from neruba_cli.services.ingest import charges as ingest_charges
from neruba_cli.services.ingest import corrections
from neruba_cli.services.ingest import pipeline as ingest_pipeline
from neruba_cli.services.ingest import reads as ingest_reads
from neruba_cli.services.ingest import receipts as ingest_receipts
from neruba_cli.services.ingest import replace as ingest_replace
from neruba_cli.services.ingest.readers import Source, content_digest, guess_format
from neruba_cli.services.ingest.receipts import IngestSummary
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
        replace: Annotated[
            bool,
            typer.Option(
                "--replace",
                help="Replace the stored events of one customer's meter in [--from, --to) "
                "with the file's, atomically (a backfill).",
            ),
        ] = False,
        customer: Annotated[
            str | None, typer.Option(help="--replace: the customer (external id).")
        ] = None,
        meter: Annotated[str | None, typer.Option(help="--replace: the meter code.")] = None,
        from_: Annotated[
            str | None,
            typer.Option("--from", metavar="TS", help="--replace: window start (RFC 3339)."),
            values.TIMESTAMP,
        ] = None,
        to: Annotated[
            str | None,
            typer.Option(metavar="TS", help="--replace: window end, excluded (RFC 3339)."),
            values.TIMESTAMP,
        ] = None,
        reason: Annotated[
            str | None,
            typer.Option(metavar="TEXT", help="--replace: why (kept with the replaced events)."),
        ] = None,
    ) -> int:
        """Import usage events; replaying a file never double-counts. Exit 3 on rejects."""
        fmt = guess_format(files, format)
        window_options = {"--customer": customer, "--meter": meter, "--from": from_, "--to": to}
        if not replace:
            given = [name for name, value in window_options.items() if value is not None]
            if reason is not None:
                given.append("--reason")
            if given:
                raise UsageError(f"{', '.join(given)}: only with --replace")
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
        if replace:
            missing = [name for name, value in window_options.items() if value is None]
            if missing:
                raise UsageError(f"--replace needs {', '.join(missing)}")
            if fmt == "charges" or create_customers:
                raise UsageError("--replace replaces usage events: no charges, no new customers")
            assert customer and meter and from_ and to
            window = event_corrections.ReplaceWindow(
                customer, meter, parse_ts(from_, field="--from"), parse_ts(to, field="--to")
            )
            why = event_corrections.check_reason(
                reason if reason is not None else f"replaced by ingest --replace of {first}"
            )
            replace_options = ingest_replace.ReplaceOptions(
                fmt=fmt,
                window=window,
                reason=why,
                dry_run=dry_run,
                max_future=options.max_future,
            )
            with RejectsWriter(rejects_path) as writer:
                summary = ingest_replace.replace(
                    rt.engine(),
                    project,
                    Source(files),
                    replace_options,
                    meters=meters,
                    rejects=writer,
                    actor=rt.actor.id,
                    now=rt.now(),
                )
            return _report(rt, summary, dry_run, rejects_path)
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
        return _report(rt, summary, dry_run, rejects_path)


def _report(rt: Runtime, summary: IngestSummary, dry_run: bool, rejects_path: Path) -> int:
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
        if summary.replaced is not None:
            rt.out.say("Nothing was replaced: every line must belong to the window.")
        rt.out.say(f"Rejected and conflicting lines are in {rejects_path}.")
        return EXIT_REJECTED
    return 0


def _receipt_view(data: dict[str, Any]) -> dict[str, Any]:
    keys = ("batch", "source", "lines", "accepted", "duplicates", "conflicts", "rejected")
    view = {key: data[key] for key in keys}
    if data.get("replaced") is not None:
        window = data["replaced"]
        view["replaced"] = (
            f"{window['customer']} {window['meter']} [{window['from']}, {window['to']})"
        )
        view["amended"] = data["amended"]
        view["voided"] = data["voided"]
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
    history: Annotated[
        bool,
        typer.Option(
            "--history", help="Voided events too, and every version corrections superseded."
        ),
    ] = False,
) -> None:
    """List stored events, newest first (the current ones; --history: every version)."""
    start = parse_since(since, now=rt.now()) if since else None
    with rt.transaction() as session:
        rows = ingest_reads.list_events(
            session,
            rt.project(session),
            customer=customer,
            meter=meter,
            since=start,
            limit=limit,
            history=history,
        )
    if not history:
        columns = ("timestamp", "customer", "meter", "quantity", "idempotency_key", "batch")
        shown = [[row[c] for c in columns] for row in rows]
        rt.out.emit(rows, table(None, columns, shown, empty="No events."))
        return
    columns = ("timestamp", "customer", "meter", "idempotency_key", "version", "quantity", "status")
    shown = []
    for row in rows:
        head = [row["timestamp"], row["customer"], row["meter"], row["idempotency_key"]]
        for old in row["history"]:
            change = (
                f"superseded ({old['superseded_by']}) {old['changed_at']} by "
                f"{old['changed_by']}: {old['reason']}"
            )
            shown.append([*head, old["version"], old["quantity"], change])
        status = "voided" if row["voided"] else "current"
        shown.append([*head, row["version"], row["quantity"], status])
    rt.out.emit(rows, table(None, columns, shown, empty="No events."))


@command(events_app, "void", group="events", scope="ingest", mutating=True)
def void(
    rt: Runtime,
    keys: Annotated[list[str], typer.Argument(metavar="KEY", help="Idempotency keys.")],
    reason: Annotated[str, typer.Option(metavar="TEXT", help="Why (kept with the events).")],
) -> None:
    """Void stored events: billing stops counting them; the original stays, with who, when
    and why. Exit 1 naming any unknown key (then nothing is voided)."""
    wanted = event_corrections.check_keys(keys)
    why = event_corrections.check_reason(reason)
    project = rt.read_project()
    report = corrections.void_events(
        rt.engine(), project, wanted, reason=why, actor=rt.actor.id, now=rt.now()
    )
    _emit_correction(rt, report)


@command(events_app, "amend", group="events", scope="ingest", mutating=True)
def amend(
    rt: Runtime,
    key: Annotated[str, typer.Argument(metavar="KEY", help="Idempotency key.")],
    reason: Annotated[str, typer.Option(metavar="TEXT", help="Why (kept with the event).")],
    quantity: Annotated[str | None, typer.Option(metavar="Q", help="The new quantity.")] = None,
    property_: Annotated[
        list[str] | None,
        typer.Option(
            "--property",
            metavar="NAME=VALUE",
            help="Set a property (VALUE is read as JSON when it is JSON, else as text).",
        ),
    ] = None,
) -> None:
    """Amend a stored event's quantity or properties; the original stays, with who, when and
    why. Exit 1 for an unknown or voided key (nothing is written)."""
    why = event_corrections.check_reason(reason)
    assigned = event_corrections.property_assignments(property_ or [])
    with rt.transaction() as session:
        project = rt.project(session)
        meters = catalog_store.stored_meters(session, project)
    report = corrections.amend_event(
        rt.engine(),
        project,
        key,
        quantity=quantity,
        properties=assigned,
        reason=why,
        meters=meters,
        actor=rt.actor.id,
        now=rt.now(),
    )
    _emit_correction(rt, report)


def _emit_correction(rt: Runtime, report: corrections.CorrectionReport) -> None:
    data = report.as_dict()
    columns = ("idempotency_key", "outcome", "customer", "meter", "timestamp", "quantity")
    shown = [[row[c] for c in columns] for row in data["events"]]
    rt.out.emit(data, table(None, columns, shown))
    for stale in report.stale_invoices:
        rt.out.warn(
            f"finalized invoice {stale['number']} counted the corrected events; "
            f"`{stale['rerun']}` applies the project's late-event policy"
        )


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
    project = rt.read_project()
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
