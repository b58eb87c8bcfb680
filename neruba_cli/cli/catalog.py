"""`neruba catalog ...`: meters and plans from TOML, and a price calculator."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any

import tomli_w
import typer
from rich.console import Console

from neruba_cli.cli import values
from neruba_cli.cli.output import cell, table
from neruba_cli.cli.paths import output_file
from neruba_cli.cli.runtime import Runtime, command
from neruba_cli.domain.catalog import meter_document, plan_document
from neruba_cli.domain.errors import InvalidInput, UsageError
from neruba_cli.domain.grouping import group_text
from neruba_cli.domain.periods import month_period
from neruba_cli.domain.quote import quote_document, quote_plan
from neruba_cli.services import output_files
from neruba_cli.services.catalog import quote
from neruba_cli.services.catalog import store as catalog_store
from neruba_cli.services.catalog.files import read_catalog_file
from neruba_cli.services.tenancy import projects

app = typer.Typer()


@command(app, "apply", group="catalog", scope="admin", mutating=True)
def apply(
    rt: Runtime,
    file: Annotated[Path, typer.Argument(help="Catalog TOML ([[meters]] and [[plans]]).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and report only.")] = False,
    allow_unreadable_events: Annotated[
        bool,
        typer.Option(
            "--allow-unreadable-events",
            help="Apply a new or changed meter even when stored events hold values it cannot "
            "read (a warning names them; billing reports their customers).",
        ),
    ] = False,
) -> None:
    """Create or change meters and plans; a changed plan gets a new version.

    A new or changed meter that reads a property is checked against the stored events of its
    code: values billing cannot read exactly refuse the apply (exit 1), naming the events."""
    catalog = read_catalog_file(file)
    with rt.transaction() as session:
        project = rt.project(session)
        parsed = catalog_store.parse_for_project(
            session, project, catalog.data, source=catalog.source, text=catalog.text
        )
        report = catalog_store.apply_catalog(
            session,
            project,
            parsed,
            now=rt.now(),
            dry_run=dry_run,
            allow_unreadable=allow_unreadable_events,
        )
    result = {**report.as_dict(), "dry_run": dry_run}
    rt.out.emit(result)
    for warning in report.warnings:
        rt.out.warn(warning)
    verb = "Would apply" if dry_run else "Applied"
    if not report.changed:
        rt.out.say(f"{file}: the catalog already matches; nothing to change.")
        return
    for code, outcome in report.meters.items():
        rt.out.say(f"{verb}: meter {code} {outcome}")
    for code, outcome in report.plans.items():
        rt.out.say(f"{verb}: plan {code} {outcome} (v{report.versions[code]})")


@command(app, "show", group="catalog", scope="read")
def show(rt: Runtime) -> None:
    """Show meters and the current version of every plan, tiers included."""
    with rt.transaction() as session:
        project = rt.project(session)
        meters = sorted(
            catalog_store.stored_meters(session, project).values(), key=lambda m: m.code
        )
        plans = catalog_store.current_plans(session, project)
    data = {
        "meters": [meter_document(meter) for meter in meters],
        "plans": [
            {**plan_document(p.plan), "version": p.version, "fingerprint": p.fingerprint}
            for p in plans
        ],
    }
    rt.out.emit(data, lambda console: _render_catalog(console, data))


def _render_catalog(console: Console, data: dict[str, Any]) -> None:
    rows = [
        (m["code"], m["aggregation"], m["field"], _pairs(m.get("filter")), _gauge(m))
        for m in data["meters"]
    ]
    table("Meters", ("code", "aggregation", "field", "filter", "gauge"), rows)(console)
    for plan in data["plans"]:
        title = (
            f"Plan {plan['code']} v{plan['version']} — {plan['currency']} per {plan['interval']}: "
            f"base fee {plan['base_fee']} ({plan['base_fee_timing']}), proration "
            f"{plan['proration']}, trial {plan['trial_days']} days"
        )
        charges = [(c["meter"], c["model"], _params(c)) for c in plan["charges"]]
        for charge in plan["charges"]:  # a grouped charge: a row per group with its own price
            for group in charge.get("groups", []):
                name = _group_name(charge, group)
                charges.append((f"  {charge['meter']} · {name}", "", _params(group)))
        table(title, ("meter", "model", "price"), charges)(console)
        for charge in plan["charges"]:
            for priced in [charge, *charge.get("groups", [])]:
                if "tiers" not in priced:
                    continue
                price = "rate %" if charge["model"] == "graduated_percentage" else "unit_amount"
                tiers = [
                    (t["up_to"], t.get("rate", t.get("unit_amount")), t.get("flat_amount", "0"))
                    for t in priced["tiers"]
                ]
                heading = f"  {plan['code']} · {charge['meter']} tiers ({charge['model']})"
                if priced is not charge:
                    heading += f" · {_group_name(charge, priced)}"
                table(heading, ("up_to", price, "flat_amount"), tiers)(console)


def _group_name(charge: dict[str, Any], group: dict[str, Any]) -> str:
    """A priced group as invoice lines name it, its values in group_by order."""
    names = charge["group_by"]
    return group_text(names, tuple(group["values"][name] for name in names))


def _pairs(values: dict[str, str] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (values or {}).items())


def _gauge(meter: dict[str, Any]) -> str:
    if meter["aggregation"] != "weighted_sum":
        return "recurring" if meter.get("recurring") else ""  # a recurring sum, unique_count
    return f"{meter['gauge']}{', recurring' if meter['recurring'] else ''}"


def _params(charge: dict[str, Any]) -> str:
    skip = {"meter", "model", "tiers", "description", "groups", "values"}
    shown = [
        f"group_by={', '.join(v)}" if k == "group_by" else f"{k}={cell(v)}"
        for k, v in charge.items()
        if k not in skip
    ]
    if "tiers" in charge and "values" in charge:
        shown.append("tiers (below)")
    return ", ".join(shown) or "—"


@command(app, "export", group="catalog", scope="read")
def export(
    rt: Runtime,
    output: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Write the TOML here instead of stdout (written whole; - is stdout, a device "
            "or FIFO is written in place).",
        ),
    ] = None,
) -> None:
    """Export the current catalog as TOML; applying it back changes nothing."""
    if output is not None:
        output_file(output, "--output")
    if output is not None and str(output) == "-":
        output = None  # stdout, as without --output
    with rt.transaction() as session:
        document = catalog_store.export_document(session, rt.project(session))
    text = tomli_w.dumps(catalog_store.toml_ready(copy.deepcopy(document)))
    if output is None:
        if rt.out.json:
            rt.out.emit(document)
        else:
            typer.echo(text, nl=False)
        return
    output_files.write_output(output, text.encode("utf-8"))
    rt.out.emit({"output": str(output), "meters": len(document["meters"])})
    rt.out.say(f"Wrote {output}.")


@command(app, "quote", group="catalog", scope="read")
def quote_(
    rt: Runtime,
    plan: Annotated[str, typer.Argument(help="Plan code, or PLAN@VERSION."), values.PLAN],
    usage: Annotated[
        list[str] | None,
        typer.Option(
            "--usage",
            metavar="METER=QUANTITY",
            help="METER=QUANTITY, repeatable; METER[PROPERTY=VALUE]=QUANTITY for one group "
            "of a grouped charge.",
        ),
        values.read_by(quote.parse_usage_pair),
    ] = None,
    events: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="A JSONL events file to aggregate with the meters."),
    ] = None,
    customer: Annotated[
        str | None,
        typer.Option(help="Only this customer's events; needed when --events holds several."),
    ] = None,
    period: Annotated[
        str | None,
        typer.Option(help="YYYY-MM: only events in it; needed for weighted_sum."),
        values.CALENDAR_MONTH,
    ] = None,
    currency: Annotated[
        str | None, typer.Option(help="Check the plan is priced in this currency."), values.CURRENCY
    ] = None,
) -> None:
    """Price one customer's usage on a plan for one full period, storing nothing."""
    if customer is not None and events is None:
        raise UsageError("--customer picks one customer's events: it needs --events FILE")
    code, version = catalog_store.parse_plan_ref(plan)
    with rt.transaction() as session:
        project = rt.project(session)
        stored = catalog_store.get_plan(session, project, code, version)
        defaults = projects.spec_of(project)
    if currency and currency.strip().upper() != stored.plan.currency:
        raise InvalidInput(f"plan {code} is priced in {stored.plan.currency}, not {currency}")
    amounts = quote.usage_from_pairs(usage or [], stored.plan)
    if events is not None:
        window = month_period(period, defaults.timezone) if period else None
        from_file = quote.usage_from_events(
            events, stored.plan, stored.meters, window, customer=customer, tz=defaults.timezone
        )
        amounts = from_file.updated(amounts)
    result = quote_plan(
        stored.plan, amounts.meters, rounding=defaults.rounding, groups=amounts.groups
    )
    data = {**quote_document(result), "version": stored.version, "customer": customer}
    rt.out.emit(data, lambda console: render_quote(console, data))


def _meter_cell(line: dict[str, Any]) -> str:
    """The meter, and a grouped charge's group: `api_calls (region: eu)`."""
    meter = line["meter"] or ""
    group = line.get("group")
    if not group:
        return meter
    return f"{meter} ({group_text(list(group), tuple(group.values()))})"


def render_quote(console: Console, data: dict[str, Any]) -> None:
    rows = [
        (
            line["kind"],
            _meter_cell(line),
            line["charge_model"] or "",
            line["quantity"] or "",
            line["amount_exact"],
            line["amount"],
        )
        for line in data["lines"]
    ]
    rows.append(("total", "", "", "", "", data["total"]))
    version = f" v{data['version']}" if "version" in data else ""
    whose = f" for {data['customer']}" if data.get("customer") else ""
    title = f"Quote: plan {data['plan']}{version} ({data['currency']}){whose}"
    columns = ("line", "meter", "model", "quantity", "exact", "amount")
    table(title, columns, rows)(console)
