"""`neruba ledger show|balances`"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from neruba_cli.cli import values
from neruba_cli.cli.output import plural, table, timestamp
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.timestamps import parse_ts
from neruba_cli.services.ledger import postings as ledger_postings
from neruba_cli.services.tenancy.customers import get_customer

app = typer.Typer()


@command(app, "show", group="ledger", scope="read")
def show(
    rt: Runtime,
    customer: Annotated[str | None, typer.Option(help="Only this customer's accounts.")] = None,
    account: Annotated[
        str | None,
        typer.Option(help="Only this account: wallet, receivable, cash, revenue:usage, ..."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(metavar="TS", help="Effective at or after (RFC 3339)."),
        values.TIMESTAMP,
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="Only the latest N transactions.")
    ] = None,
) -> None:
    """Transactions and their entries (debits and credits), oldest first."""
    with rt.transaction() as session:
        project = rt.project(session)
        who = get_customer(session, project, customer) if customer else None
        data = ledger_postings.show(
            session.connection(),
            project,
            customer=who,
            account=account,
            since=parse_ts(since, field="--since") if since else None,
            limit=limit,
        )
    rt.out.emit(data, _render(data))


def _render(transactions: list[dict[str, Any]]) -> Any:
    def render(console: Console) -> None:
        if not transactions:
            console.print(Text("No ledger transactions."))
            return
        grid = Table(header_style="bold")
        for column in ("effective", "transaction", "account", "debit", "credit", "note"):
            grid.add_column(column, overflow="fold")
        for txn in transactions:
            first = True
            for entry in txn["entries"]:
                note = entry["grant"] or entry["invoice"] or ""
                grid.add_row(
                    timestamp(txn["effective_at"]) if first else "",
                    f"{txn['kind']} {txn['reference']}" if first else "",
                    entry["account"],
                    entry["debit"] or "",
                    entry["credit"] or "",
                    note,
                )
                first = False
        console.print(grid)
        console.print(Text(plural(len(transactions), "transaction")))

    return render


@command(app, "balances", group="ledger", scope="read")
def balances(rt: Runtime) -> None:
    """Every account's balance on its normal side, and how many entries it has."""
    with rt.transaction() as session:
        project = rt.project(session)
        data = ledger_postings.balances(session.connection(), project)
    columns = ("account", "currency", "normal", "balance", "entries")
    shown = [[row[c] for c in columns] for row in data]
    rt.out.emit(data, table(None, columns, shown, empty="No balances."))
