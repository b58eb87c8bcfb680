"""`neruba credits ...`: grant, revoke, list, expire."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from neruba_cli.cli import values
from neruba_cli.cli.arguments import NegativeNumbers
from neruba_cli.cli.output import plural, table
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.credits import MAX_PRIORITY
from neruba_cli.domain.timestamps import parse_ts
from neruba_cli.services.ledger import credits

app = typer.Typer()

CustomerArg = Annotated[str, typer.Argument(help="Customer external id (or cus_ id).")]
LIST_COLUMNS = ("id", "amount", "remaining", "currency", "priority", "expires_at", "category")


@command(app, "grant", group="credits", scope="credits", mutating=True, cls=NegativeNumbers)
def grant(
    rt: Runtime,
    customer: CustomerArg,
    amount: Annotated[
        str,
        typer.Argument(help="A positive amount in major units, e.g. 50.00."),
        values.read_by(credits.check_amount),
    ],
    currency: Annotated[
        str | None,
        typer.Option(help="ISO 4217 code (default: the customer's currency)."),
        values.CURRENCY,
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(metavar="TS", help="When it expires (RFC 3339, e.g. 2027-01-01T00:00:00Z)."),
        values.TIMESTAMP,
    ] = None,
    priority: Annotated[
        int, typer.Option(min=1, max=MAX_PRIORITY, metavar="N", help="1 is spent before 2.")
    ] = credits.DEFAULT_PRIORITY,
    category: Annotated[
        str, typer.Option(help="paid or promotional."), values.one_of(credits.CATEGORIES)
    ] = "promotional",
    reason: Annotated[
        str | None, typer.Option(metavar="TEXT", help="Why (kept with the grant).")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            metavar="KEY", help="Grant once per key: a repeat is a no-op, other arguments an error."
        ),
    ] = None,
    allow_other_currency: Annotated[
        bool,
        typer.Option(
            "--allow-other-currency",
            help="Grant in a currency the customer is not billed in (credit loaded ahead of "
            "moving them to it); only invoices in that currency spend it.",
        ),
    ] = False,
) -> None:
    """Grant credit to a customer: posted to the ledger, spent by invoices at finalization."""
    request = credits.GrantRequest(
        customer=customer,
        amount=amount,
        currency=currency,
        expires_at=parse_ts(expires, field="--expires") if expires else None,
        priority=priority,
        category=category,
        reason=reason,
        idempotency_key=idempotency_key,
        other_currency=allow_other_currency,
    )
    project = rt.read_project()
    data, created = credits.grant(rt.engine(), project, request, actor=rt.actor.id, now=rt.now())
    data["created"] = created
    rt.out.emit(data)
    if created:
        rt.out.say(
            f"Granted {data['amount']} {data['currency']} to {data['customer']}: {data['id']}."
        )
    else:
        rt.out.say(f"Already granted with this idempotency key: {data['id']} (nothing changed).")


@command(app, "revoke", group="credits", scope="credits", mutating=True)
def revoke(
    rt: Runtime,
    grant_id: Annotated[str, typer.Argument(metavar="GRANT", help="Grant id (grt_...).")],
    reason: Annotated[
        str, typer.Option(metavar="TEXT", help="Why (kept with the grant).")
    ] = "revoked",
) -> None:
    """Remove what is left of a grant (what was spent stays spent)."""
    project = rt.read_project()
    data = credits.revoke(
        rt.engine(), project, grant_id, reason=reason, actor=rt.actor.id, now=rt.now()
    )
    rt.out.emit(data)
    rt.out.say(f"Revoked {data['revoked']} {data['currency']} left on {data['id']}.")


@command(app, "list", group="credits", scope="read")
def list_(rt: Runtime, customer: CustomerArg) -> None:
    """A customer's grants: amount, remaining, expiry, priority, category, status."""
    with rt.transaction() as session:
        project = rt.project(session)
        data = credits.list_grants(session.connection(), project, customer, at=rt.now())
    columns = (*LIST_COLUMNS, "status", "reason")
    shown = [[item[c] for c in columns] for item in data]
    rt.out.emit(data, table(None, columns, shown, empty="No credit grants."))


@command(app, "expire", group="credits", scope="credits", mutating=True)
def expire(
    rt: Runtime,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", metavar="TS", help="Expire grants expired by then (default: now)."),
        values.TIMESTAMP,
    ] = None,
) -> None:
    """Post the expiry of what is left on expired grants (for cron; a rerun does nothing)."""
    now = rt.now()
    moment = rt.moment(as_of, now)
    project = rt.read_project()
    report = credits.expire(rt.engine(), project, as_of=moment, actor=rt.actor.id, now=now)
    data = report.as_dict()
    columns = ("id", "customer", "expires_at", "expired", "currency", "category")
    rows: list[list[Any]] = [[item[c] for c in columns] for item in report.expired]
    rt.out.emit(data, table(None, columns, rows) if rows else None)
    rt.out.say(f"Expired {plural(len(report.expired), 'grant')}.")
