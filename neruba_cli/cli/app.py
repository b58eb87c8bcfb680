"""The root of the `neruba` command: wires the command groups, nothing else."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from neruba_cli import __version__
from neruba_cli.cli import (
    audit,
    catalog,
    check,
    compare,
    credits,
    customer,
    db,
    demo,
    doctor,
    export,
    ingest,
    init,
    invoice,
    key,
    ledger,
    locks,
    member,
    payment,
    project,
    reconcile,
    retention,
    run,
    simulate,
    stats,
    stripe,
    subscription,
    usage,
    wallet,
)
from neruba_cli.cli.output import Output
from neruba_cli.domain.errors import UsageError

app = typer.Typer(
    name="neruba",
    help="Neruba: usage, hybrid and prepaid billing, run from a terminal or from cron.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"neruba {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Exit codes: 0 ok, 1 error, 2 usage, 3 rejected lines, 4 discrepancies, 5 lock held."""


init.register(app)
demo.register(app)
doctor.register(app)
check.register(app)
stats.register(app)
compare.register(app)
simulate.register(app)
ingest.register(app)
app.add_typer(db.app, name="db")
app.add_typer(project.app, name="project")
app.add_typer(customer.app, name="customer")
app.add_typer(catalog.app, name="catalog")
app.add_typer(subscription.app, name="subscription")
app.add_typer(run.app, name="run")
app.add_typer(invoice.app, name="invoice")
app.add_typer(credits.app, name="credits")
app.add_typer(wallet.app, name="wallet")
app.add_typer(ledger.app, name="ledger")
app.add_typer(payment.app, name="payment")
app.add_typer(stripe.app, name="stripe")
app.add_typer(reconcile.app, name="reconcile")
app.add_typer(export.app, name="export")
app.add_typer(key.app, name="key")
app.add_typer(member.members_app, name="member")
app.add_typer(member.invites_app, name="invite")
app.add_typer(locks.app, name="locks")
app.add_typer(audit.app, name="audit")
app.add_typer(usage.app, name="usage")
app.add_typer(retention.app, name="retention")


def main() -> None:
    """The console script. With --json, even a usage error (a bad flag) is JSON on stderr."""
    if "--json" not in sys.argv[1:]:
        app()
        return
    try:
        result = app(standalone_mode=False)
    except Exception as exc:
        exit_code, describe = getattr(exc, "exit_code", None), getattr(exc, "format_message", None)
        if not isinstance(exit_code, int) or describe is None:
            raise
        Output(json=True).error(UsageError(describe()))
        sys.exit(exit_code)
    sys.exit(result if isinstance(result, int) else 0)
