"""`neruba usage show`: a customer's usage per meter as a bar chart, and the projected amount."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from neruba_cli.cli import values
from neruba_cli.cli.output import Renderer
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.grouping import group_text
from neruba_cli.domain.usage_chart import bar, bar_eighths, granularity
from neruba_cli.services.analysis import usage as analysis_usage

app = typer.Typer()

# The bar gets what the terminal leaves after the label and number columns, within limits that
# keep it readable from 80 columns to wide screens (off a terminal, rows are never wrapped: the
# bar is then as long as it gets).
MIN_BAR, MAX_BAR = 10, 60
GAP = "  "


@command(app, "show", group="usage", scope="read")
def show(
    rt: Runtime,
    customer: Annotated[str, typer.Argument(help="Customer external id (or cus_ id).")],
    period: Annotated[
        str,
        typer.Option(
            "--period",
            help="A month: YYYY-MM, previous or current (project time zone), read in the "
            "customer's time zone as billing reads it.",
        ),
        values.MONTH,
    ] = "current",
    meter: Annotated[
        str | None, typer.Option("--meter", help="Only this meter.", show_default=False)
    ] = None,
    by: Annotated[
        str,
        typer.Option("--by", help="Bucket size: day or hour (customer's local time)."),
        values.read_by(granularity),
    ] = "day",
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            metavar="TS",
            help="Project as of this moment (RFC 3339; default now); also what previous and "
            "current mean.",
            show_default=False,
        ),
        values.TIMESTAMP,
    ] = None,
) -> None:
    """Usage per meter in day or hour buckets, and what the period will bill if it ended now.

    Open month: the projection is `invoice preview` at --as-of.
    Ended month: its invoices (void ones left out), or what a run would bill before one exists.
    """
    size = granularity(by)
    moment = rt.moment(as_of)
    project = rt.read_project()
    data = analysis_usage.show(
        rt.engine(), project, customer, period=period, meter=meter, by=size, as_of=moment
    )
    rt.out.emit(data, _render(data))


# --------------------------------------------------------------------------- rendering


def _render(data: dict[str, Any]) -> Renderer:
    def render(console: Console) -> None:
        period = data["period"]
        console.print(
            Text(f"{data['customer']} · {period['label']} in {data['timezone']} · by {data['by']}")
        )
        console.print(Text(f"{period['start']} → {period['end']}", style="dim"))
        projection = data["projection"]
        if not data["meters"]:
            console.print(Text("\nNo metered usage in this period."))
        for meter in data["meters"]:
            console.print()
            _chart(console, meter, projection["currency"])
        console.print()
        _projection(console, projection)

    return render


def _chart(console: Console, meter: dict[str, Any], currency: str) -> None:
    title = f"{meter['meter']} · {meter['aggregation']}"
    if meter["aggregation"] != "count":
        title += f" of {meter['field']}"
    console.print(Text(title, style="bold"))
    rows = meter["buckets"]
    quantities = [row["quantity"] for row in rows]
    if not meter["events"] and not any(Decimal(q) for q in quantities):
        console.print(Text(_summary(meter, currency, "no events in this period")))
        return  # a bar chart of zeros says nothing a line does not
    counts = [f"{row['events']:,}" for row in rows]
    label_width = max(len(row["label"]) for row in rows)
    value_width = max(len("quantity"), *(len(q) for q in quantities))
    count_width = max(len("events"), *(len(c) for c in counts))
    spare = console.width - label_width - value_width - count_width - 3 * len(GAP)
    width = max(MIN_BAR, min(MAX_BAR, spare))
    largest = max(Decimal(q) for q in quantities)
    header = Text(GAP.join(["".ljust(label_width), "".ljust(width)]) + GAP, style="dim")
    header.append(GAP.join(["quantity".rjust(value_width), "events".rjust(count_width)]))
    console.print(header, no_wrap=True, overflow="crop")
    for row, quantity, count in zip(rows, quantities, counts, strict=True):
        blocks = bar(bar_eighths(Decimal(quantity), largest, width))
        line = Text(row["label"].ljust(label_width) + GAP)
        line.append(blocks.ljust(width), style="cyan")
        line.append(GAP + quantity.rjust(value_width) + GAP + count.rjust(count_width))
        console.print(line, no_wrap=True, overflow="crop")
    console.print(Text(_summary(meter, currency, f"events {meter['events']:,}")))
    if meter.get("groups"):
        _groups(console, meter["groups"], currency)


def _groups(console: Console, groups: list[dict[str, Any]], currency: str) -> None:
    """A grouped charge's meter per group (its invoices price each group on its own)."""
    grid = Table(header_style="bold")
    grid.add_column("group", overflow="fold")
    for column in ("quantity", "events", f"projected {currency}"):
        grid.add_column(column, justify="right")
    for group in groups:
        named = group["group"]
        grid.add_row(
            Text(group_text(list(named), tuple(named.values()))),
            group["quantity"],
            f"{group['events']:,}",
            group["amount"] or "",
        )
    console.print(grid)


def _summary(meter: dict[str, Any], currency: str, events: str) -> str:
    summary = f"{events} · quantity {meter['quantity']}"
    if meter["amount"] is not None:
        summary += f" · projected {meter['amount']} {currency}"
    return summary


def _projection(console: Console, projection: dict[str, Any]) -> None:
    sources = {
        "preview": "if the period ended",
        "invoice": "invoiced, period ended",
        "run": "not billed yet, period ended",
    }
    console.print(
        Text(f"Projection ({sources[projection['source']]} {projection['as_of']})", style="bold")
    )
    if projection["invoices"]:
        billed = Table(header_style="bold")
        for column in ("invoice", "status", "period start", "period end", "total"):
            billed.add_column(column, justify="right" if column == "total" else "left")
        for invoice in projection["invoices"]:
            billed.add_row(
                Text(invoice["number"] or "(preview)"),
                Text(invoice["status"] if invoice["kind"] == "invoice" else invoice["kind"]),
                invoice["period"]["start"],
                invoice["period"]["end"],
                invoice["total"],
            )
        console.print(billed)
    else:
        console.print(Text("No billing period: nothing to bill."))
    grid = Table(header_style="bold")
    grid.add_column("description", overflow="fold")
    grid.add_column("quantity", justify="right")
    grid.add_column("amount", justify="right")
    for line in projection["lines"]:
        grid.add_row(Text(line["description"]), line["quantity"] or "", line["amount"])
    grid.add_section()
    grid.add_row("subtotal", "", projection["subtotal"])
    grid.add_row("credits applied", "", projection["credits_applied"])
    total = f"{projection['total']} {projection['currency']}"
    grid.add_row(Text("projected total", style="bold"), "", Text(total, style="bold"))
    console.print(grid)
