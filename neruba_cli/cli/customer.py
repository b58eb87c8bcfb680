"""`neruba customer ...`"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neruba_cli.cli import values
from neruba_cli.cli.output import fields, plural, table
from neruba_cli.cli.paths import output_file
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.services.ingest.rejects import RejectsWriter, default_rejects_path
from neruba_cli.services.ingest.tabular import read_csv
from neruba_cli.services.ops import privacy
from neruba_cli.services.tenancy import customers

EXIT_REJECTED = 3

app = typer.Typer()


@command(app, "create", group="customer", scope="billing", mutating=True)
def create(
    rt: Runtime,
    external_id: Annotated[
        str,
        typer.Argument(help="Your id for the customer, unique per project."),
        values.EXTERNAL_ID,
    ],
    name: Annotated[str | None, typer.Option(help="Display name."), values.NAME] = None,
    email: Annotated[
        str | None, typer.Option(help="Billing e-mail."), values.or_blank(values.EMAIL)
    ] = None,
    currency: Annotated[
        str | None,
        typer.Option(help="ISO 4217 (default: the project's)."),
        values.or_blank(values.CURRENCY),
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option(metavar="ZONE", help="IANA zone (default: the project's)."),
        values.or_blank(values.TIMEZONE),
    ] = None,
    stripe_id: Annotated[
        str | None,
        typer.Option(metavar="ID", help="Existing Stripe customer id (cus_...)."),
        values.or_blank(values.STRIPE_CUSTOMER),
    ] = None,
) -> None:
    """Create a customer."""
    with rt.transaction() as session:
        customer = customers.create(
            session,
            rt.project(session),
            external_id=external_id,
            name=name,
            email=email,
            currency=currency,
            timezone=timezone,
            stripe_id=stripe_id,
            now=rt.now(),
        )
    rt.out.emit(customers.to_dict(customer))
    rt.out.say(f"Created customer {customer.external_id} ({customer.id}).")


@command(app, "import", group="customer", scope="billing", mutating=True)
def import_(
    rt: Runtime,
    file: Annotated[
        Path, typer.Argument(help="CSV with columns " + ",".join(customers.CSV_COLUMNS))
    ],
    rejects: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Where to write rejected rows as JSONL (default: FILE.rejects.jsonl).",
        ),
    ] = None,
) -> int:
    """Create or update customers from a CSV file; bad rows are reported and the rest kept.

    Exit 3 when any row was rejected.
    """
    rejects_path = output_file(rejects or default_rejects_path(file), "--rejects")
    if str(rejects_path) == "-":
        rt.out.give_stdout_to_data()
    rows = read_csv(file, columns=customers.CSV_COLUMNS, required=customers.CSV_REQUIRED)
    with (
        RejectsWriter(rejects_path) as writer,
        rt.out.progress(f"Importing {file.name}") as progress,
        rt.transaction() as session,
    ):
        project = rt.project(session)
        report = customers.import_customers(
            session, project, rows, now=rt.now(), rejects=writer, on_progress=progress
        )
    summary = {
        "file": str(file),
        "lines": report.lines,
        "created": report.created,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "rejected": report.rejected,
        "rejects_file": str(rejects_path) if report.rejected else None,
        "rejects": [reject.as_dict() for reject in report.rejects],
    }
    rt.out.emit(summary)
    rt.out.say(
        f"{file.name}: {plural(report.lines, 'row')} — {report.created} created, "
        f"{report.updated} updated, "
        f"{report.unchanged} unchanged, {report.rejected} rejected."
    )
    for reject in report.rejects:
        rt.out.warn(f"{file}:{reject.line}: {reject.reason}")
    if report.rejected:
        rt.out.say(f"Rejected rows written to {rejects_path}.")
        return EXIT_REJECTED
    return 0


@command(app, "list", group="customer", scope="read")
def list_(rt: Runtime) -> None:
    """List the project's customers."""
    with rt.transaction() as session:
        project = rt.project(session)
        rows = [customers.to_dict(c) for c in customers.list_customers(session, project)]
    columns = ("external_id", "name", "email", "currency", "timezone", "stripe_id")
    shown = [[row[c] for c in columns] for row in rows]
    rt.out.emit(rows, table(None, columns, shown, empty="No customers."))


@command(app, "show", group="customer", scope="read")
def show(
    rt: Runtime,
    customer: Annotated[str, typer.Argument(help="External id or Neruba id (cus_...).")],
) -> None:
    """Show one customer."""
    with rt.transaction() as session:
        found = customers.get_customer(session, rt.project(session), customer)
        data = customers.to_dict(found)
    rt.out.emit(data, fields(data))
    if found.forgotten_at is not None:
        rt.out.say(
            f"Customer {found.external_id} was forgotten on {data['forgotten_at']} "
            f"by {found.forgotten_by}: personal data removed, financial records kept."
        )


@command(app, "forget", group="customer", scope="admin", mutating=True)
def forget(
    rt: Runtime,
    customer: Annotated[
        str, typer.Argument(help="External id or Neruba id (cus_...); the id itself is kept.")
    ],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm without asking.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would be removed; change nothing.")
    ] = False,
) -> None:
    """Remove a customer's personal data and keep the financial records.

    The name and e-mail are cleared, the event properties listed in `[privacy]
    personal_properties` (neruba.toml) are removed from the customer's events, and the local
    Stripe mirror and audit trail lose the customer's name and e-mail. Invoices, the ledger,
    event quantities and the external id stay. Refused when a meter reads one of those
    properties. Forgetting again scrubs what arrived since (later events, a refreshed Stripe
    mirror) and keeps the first forget's date and actor.
    """
    engine = rt.engine()
    project = rt.read_project()
    report = privacy.prepare(
        engine, project, customer, rt.settings.personal_properties, dry_run=dry_run
    )
    if not report.already_forgotten and not dry_run:
        rt.confirm(
            f"Forget customer {report.customer}? Their personal data is removed for good",
            yes=yes,
        )
    report = privacy.forget(engine, project, report, actor=rt.actor.id, now=rt.now())
    data = report.as_dict()
    rt.out.emit(data, fields(data))
    verb = "Would remove" if dry_run else "Removed"
    if report.already_forgotten:
        since = (
            f"{report.properties_removed} personal properties from {report.events} events, "
            f"{report.stripe_objects} Stripe mirror objects, {report.webhook_events} webhook "
            f"bodies and {report.audit_records} audit records"
        )
        rt.out.say(
            f"Customer {report.customer} was already forgotten on {data['forgotten_at']}; "
            f"{verb.lower()} what arrived since: {since}."
        )
        return
    rt.out.say(
        f"{verb} name, e-mail and {report.properties_removed} personal properties from "
        f"{report.events} events of customer {report.customer}; invoices and ledger kept."
    )
