"""`neruba invoice ...`: list, show, explain, finalize, void, verify, preview."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from neruba_cli.cli import values
from neruba_cli.cli.output import Renderer, plural, table
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.errors import UsageError
from neruba_cli.domain.grouping import group_condition
from neruba_cli.domain.timestamps import format_ts, parse_ts
from neruba_cli.services.invoices import explain as invoices_explain
from neruba_cli.services.invoices import finalize as invoices_finalize
from neruba_cli.services.invoices import preview as invoices_preview
from neruba_cli.services.invoices import read as invoices_read
from neruba_cli.services.invoices import verify as invoices_verify
from neruba_cli.services.invoices import void as invoices_void

EXIT_DISCREPANCY = 4
EXIT_UNPOSTABLE = 3  # finalized the others; some drafts cannot be posted

app = typer.Typer()

NumberArg = Annotated[str, typer.Argument(help="Invoice number, e.g. ACME-000001.")]
PeriodOption = Annotated[
    str | None,
    typer.Option("--period", help="A month: YYYY-MM, previous or current (project time zone)."),
    values.MONTH,
]


def _one_of(number: str | None, period: str | None) -> None:
    if (number is None) == (period is None):
        raise UsageError("name one invoice NUMBER or --period P (not both)")


@command(app, "list", group="invoice", scope="read")
def list_(
    rt: Runtime,
    period: PeriodOption = None,
    status: Annotated[
        str | None,
        typer.Option(help="draft, finalized, void or paid.", show_default=False),
        values.one_of(invoices_read.STATUSES),
    ] = None,
    customer: Annotated[str | None, typer.Option(help="Customer external id.")] = None,
) -> None:
    """List invoices, by number."""
    with rt.transaction() as session:
        data = invoices_read.listing(
            session.connection(),
            rt.project(session),
            period=period,
            status=status,
            customer=customer,
            now=rt.now(),
        )
    columns = ("number", "customer", "kind", "status", "label", "total", "currency", "corrects")
    shown = [[item[c] for c in columns] for item in data]
    rt.out.emit(data, table(None, columns, shown, empty="No invoices."))


@command(app, "show", group="invoice", scope="read")
def show(rt: Runtime, number: NumberArg) -> None:
    """Show an invoice: its lines and totals (--json: the invoice document)."""
    with rt.transaction() as session:
        data = invoices_read.show(session.connection(), rt.project(session), number)
    rt.out.emit(data, _render_document(data))


@command(app, "explain", group="invoice", scope="read")
def explain(rt: Runtime, number: NumberArg) -> None:
    """Why each amount is what it is: meter, events, tiers, proration, minimums, credits."""
    with rt.transaction() as session:
        data = invoices_explain.explain_number(session.connection(), rt.project(session), number)
    rt.out.emit(data, _render_explanation(data))


@command(app, "finalize", group="invoice", scope="billing", mutating=True)
def finalize(
    rt: Runtime,
    number: Annotated[
        str | None, typer.Argument(help="Invoice number (or use --period).", show_default=False)
    ] = None,
    period: PeriodOption = None,
) -> int:
    """Make drafts immutable: one by number, or every draft of a month whose period ended.

    A draft whose amounts the ledger cannot hold is refused (exit 1); with --period it is
    left as a draft and listed, the others are finalized, and the exit code is 3. Takes the
    month's run lock: exit 5 while a run holds it."""
    _one_of(number, period)
    now = rt.now()
    project = rt.read_project()
    label = invoices_read.period_label(period, project, now) if period else None
    report = invoices_finalize.finalize(
        rt.engine(), project, number=number, label=label, now=now, actor=rt.actor.id
    )
    data = {
        "period": report.period,
        "finalized": report.finalized,
        "still_open": [
            {"number": open_number, "period_end": format_ts(end)}
            for open_number, end in report.still_open
        ],
        "unpostable": [{"number": n, "reason": why} for n, why in report.unpostable],
    }
    rt.out.emit(data)
    if report.finalized:
        rt.out.say(f"Finalized {len(report.finalized)}: {', '.join(report.finalized)}.")
    else:
        rt.out.say(f"No drafts to finalize in {report.period}.")
    if report.still_open:
        rt.out.warn(
            f"{len(report.still_open)} drafts of {report.period} are still open and were left "
            f"as drafts: {', '.join(n for n, _ in report.still_open)}"
        )
    for _number, why in report.unpostable:
        rt.out.warn(f"left as a draft: {why}")
    return EXIT_UNPOSTABLE if report.unpostable else 0


@command(app, "void", group="invoice", scope="billing", mutating=True)
def void(
    rt: Runtime,
    number: NumberArg,
    reason: Annotated[str, typer.Option(metavar="TEXT", help="Why (kept with the invoice).")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm without asking.")] = False,
) -> None:
    """Void an invoice (it keeps its number: numbers stay gapless). Asks to confirm."""
    with rt.transaction() as session:
        project = rt.project(session)
        current = invoices_read.summary(invoices_read.get(session.connection(), project, number))
    rt.confirm(
        f"Void invoice {current['number']} ({current['customer']}, {current['status']}, "
        f"total {current['total']} {current['currency']})?",
        yes=yes,
    )
    data = invoices_void.void(
        rt.engine(), project, number, reason=reason, now=rt.now(), actor=rt.actor.id
    )
    rt.out.emit(data)
    rt.out.say(f"Voided {data['number']}: {data['void_reason']}")


@command(app, "verify", group="invoice", scope="read")
def verify(
    rt: Runtime,
    number: Annotated[
        str | None, typer.Argument(help="Invoice number (or use --period).", show_default=False)
    ] = None,
    period: PeriodOption = None,
) -> int:
    """Prove invoices reproducible; exit 4 on any mismatch.

    Checks each fingerprint against the stored inputs, the stored document, and a
    recomputation from the database through the run's own code path."""
    _one_of(number, period)
    project = rt.read_project()
    label = invoices_read.period_label(period, project, rt.now()) if period else None
    report = invoices_verify.verify(rt.engine(), project, number=number, label=label)
    data = report.as_dict()
    data["period"] = label
    rows = [
        [
            item["number"],
            item["customer"],
            item["status"],
            Text(item["result"], style="green" if item["result"] == "ok" else "red"),
            "; ".join(item["problems"] or item["notes"]),
        ]
        for item in data["invoices"]
    ]
    columns = ("number", "customer", "status", "result", "detail")
    rt.out.emit(data, table(None, columns, rows, empty="No invoices to verify."))
    mismatches = plural(data["mismatches"], "mismatch", "mismatches")
    rt.out.say(f"{data['checked']} checked: {data['ok']} ok, {mismatches}.")
    return EXIT_DISCREPANCY if report.mismatches else 0


@command(app, "preview", group="invoice", scope="read")
def preview(
    rt: Runtime,
    customer: Annotated[str, typer.Argument(help="Customer external id.")],
    at: Annotated[
        str | None,
        typer.Option(metavar="TS", help="A moment in the open period (default: now), RFC 3339."),
        values.TIMESTAMP,
    ] = None,
) -> None:
    """What the open period containing --at would bill if it ended now (writes nothing).

    --json prints one invoice document (number null, status "preview"), or an array of them
    when several billing periods of the customer contain --at."""
    moment = parse_ts(at, field="--at") if at else rt.now()
    project = rt.read_project()
    found = invoices_preview.preview(rt.engine(), project, customer, at=moment)

    def render(console: Console) -> None:
        for document in found:
            _render_document(document)(console)

    rt.out.emit(found[0] if len(found) == 1 else found, render)


# --------------------------------------------------------------------------- rendering


def _render_document(data: dict[str, Any]) -> Renderer:
    def render(console: Console) -> None:
        number = data["number"] or "(no number)"
        period = data["period"]
        console.print(
            Text(
                f"{number} · {data['kind']} · {data['status']} · {data['customer']} · "
                f"{period['start']} → {period['end']} · {data['currency']}"
            )
        )
        if data.get("corrects"):
            console.print(Text(f"corrects {data['corrects']}"))
        grid = Table(header_style="bold")
        grid.add_column("description", overflow="fold")
        grid.add_column("quantity", justify="right")
        grid.add_column("amount", justify="right")
        for line in data["lines"]:
            grid.add_row(Text(line["description"]), line.get("quantity") or "", line["amount"])
        grid.add_section()
        grid.add_row("subtotal", "", data["subtotal"])
        grid.add_row("credits applied", "", data["credits_applied"])
        grid.add_row(Text("total", style="bold"), "", Text(data["total"], style="bold"))
        if data.get("amount_due") is not None:
            grid.add_row("amount paid", "", data["amount_paid"])
            grid.add_row("amount due", "", data["amount_due"])
        console.print(grid)
        for paid in data.get("credits") or []:
            console.print(Text(f"credit {paid['grant']}: {paid['amount']}"))
        settled = data.get("settlement")
        if settled:
            console.print(Text(_settlement_text(settled)))
        if data.get("void_reason"):
            console.print(Text(f"void since {data['voided_at']}: {data['void_reason']}"))

    return render


def _event_span(events: dict[str, Any]) -> str:
    """`12 from … to …`, or `none` for a meter nothing was sent to in the period."""
    if not events["count"]:
        return "none"
    count = plural(events["count"], "event")
    if events["first"] == events["last"]:
        return f"{count} at {events['first']}"
    return f"{count} from {events['first']} to {events['last']}"


def _settlement_text(settled: dict[str, Any]) -> str:
    parts = [f"{settled['to_invoice']} off {settled['corrects'] or 'nothing'}"]
    parts += [f"{c['amount']} back to {c['grant']}" for c in settled["credits_restored"]]
    if settled["wallet_grant"]:
        parts.append(f"{settled['to_wallet']} to the wallet ({settled['wallet_grant']})")
    return f"settled ({settled['policy']}): " + "; ".join(parts)


def _render_explanation(data: dict[str, Any]) -> Renderer:
    def render(console: Console) -> None:
        period = data["period"]
        console.print(
            Text(
                f"{data['number']} · {data['kind']} · {data['status']} · {data['customer']} · "
                f"{period['start']} → {period['end']} · total {data['total']} {data['currency']}"
            )
        )
        if data["correction_note"]:
            console.print(Text(f"corrects {data['corrects']}: {data['correction_note']}"))
        for line in data["lines"]:
            console.print(Text(f"\n{line['position']}. {line['description']}", style="bold"))
            facts = [
                ("amount", line["amount"]),
                ("why", line["why"]),
                ("meter", line["meter"]),
                ("aggregation", line["aggregation"]),
                ("filters", line["filters"]),
                ("group", group_condition(line["group"]) if line.get("group") else None),
                ("charge model", line["charge_model"]),
                ("plan", line["plan"]),
                ("fee period", line.get("fee_dates")),
                ("quantity", line["quantity"]),
                ("free units", line["free_units"]),
                ("billable", line["billable_quantity"]),
                ("proration", line["proration"]),
                ("minimum", line["min_amount"]),
                ("maximum", line["max_amount"]),
                ("credits applied", line["credits_applied"]),
            ]
            events = line["events"]
            if events is not None:
                facts.append(("events", _event_span(events)))
                facts.append(("list them", events.get("command")))
                facts.append(("note", events.get("note")))
            for name, value in facts:
                if value not in (None, "", {}):
                    console.print(Text(f"   {name}: {value}"), soft_wrap=True)
            tiers = [tier for tier in line["tiers"] if tier]
            if tiers:
                grid = Table(header_style="bold", padding=(0, 1))
                for column in ("up_to", "quantity", "unit_amount", "rate", "flat", "amount"):
                    grid.add_column(column, justify="right")
                for tier in tiers:
                    grid.add_row(
                        tier["up_to"],
                        tier["quantity"],
                        tier["unit_amount"],
                        tier["rate"],
                        tier["flat_amount"],
                        tier["amount"],
                    )
                console.print(grid)
        if data["corrected_by"]:
            listed = ", ".join(f"{c['number']} ({c['status']})" for c in data["corrected_by"])
            console.print(Text(f"\ncorrected by {listed}"))
        console.print(
            Text(
                f"\nsubtotal {data['subtotal']} · credits applied {data['credits_applied']} · "
                f"total {data['total']}"
            )
        )
        for paid in data["credits"]:
            console.print(
                Text(
                    f"credit {paid['grant']} paid {paid['amount']} ({paid['category']}, "
                    f"priority {paid['priority']}, expires {paid['expires_at'] or 'never'})"
                )
            )

    return render
