"""`neruba wallet show`"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from neruba_cli.cli import values
from neruba_cli.cli.output import table, timestamp
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.services.ledger import credits

app = typer.Typer()


@command(app, "show", group="wallet", scope="read")
def show(
    rt: Runtime,
    customer: Annotated[str, typer.Argument(help="Customer external id (or cus_ id).")],
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", metavar="TS", help="The balance at this moment (RFC 3339)."),
        values.TIMESTAMP,
    ] = None,
) -> None:
    """The wallet balance (the sum of its ledger entries) and each grant's remaining credit."""
    now = rt.now()
    moment = rt.moment(as_of, now)
    with rt.transaction() as session:
        project = rt.project(session)
        data = credits.wallet(session.connection(), project, customer, as_of=moment, now=now)
    rt.out.emit(data, _render(data))


def _render(data: dict[str, Any]) -> Any:
    columns = ("id", "amount", "remaining", "priority", "expires_at", "category", "status")
    shown = [[g[c] for c in columns] for g in data["grants"]]
    grants = table(None, columns, shown, empty="No credit grants.")

    def render(console: Console) -> None:
        console.print(
            f"{data['customer']}: balance {data['balance']} {data['currency']} "
            f"(as of {timestamp(data['as_of'])})",
            markup=False,
        )
        for code, amount in data["other_currencies"].items():
            console.print(f"  also {amount} {code}", markup=False)
        grants(console)

    return render
