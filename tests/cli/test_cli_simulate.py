"""`neruba simulate`: a past month's stored usage priced on a candidate catalog, compared
with the invoices issued, without writing anything. The shop is test_cli_compare's: pro at
49.00 a month in arrears, prorated by day, and api_calls at 0.01 each (`metered_pro`)."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, func, select

from neruba_cli.db.schema import Base
from tests.support.catalogs import meter, per_unit
from tests.support.cli import Cli, expect, ok
from tests.support.shops import (
    PERIOD,
    billed_lines,
    finalize_month,
    metered_pro,
    subscribed_shop,
)

CENT = Decimal("0.01")


CATALOG = metered_pro()
RAISED = metered_pro("59.00", "0.015")
WITH_SEATS = metered_pro(
    extra_meters=(meter("seats", "max"),),
    extra_charges=(per_unit("seats", "1.00", min_amount="5.00"),),
)


def rows_by_table(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in Base.metadata.sorted_tables
        }


def repriced(line: dict[str, Any], fee: Decimal, unit: Decimal) -> Decimal:
    """What a line of the shop costs at another base fee and unit price (half-even cents)."""
    if line["kind"] == "base_fee":
        fraction = Fraction(line["proration"])
        exact = fee * fraction.numerator / fraction.denominator
    else:
        exact = Decimal(line["quantity"]) * unit
    return exact.quantize(CENT, rounding=ROUND_HALF_EVEN)


def test_a_price_change_gives_the_expected_deltas_and_writes_nothing(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    subscribed_shop(cli, tmp_path, 8, CATALOG, digits=3, usage={"c002": 30, "c005": 123})
    finalize_month(cli)
    issued = billed_lines(engine, PERIOD)
    expected = {
        customer: sum(
            (
                repriced(line, Decimal(59), Decimal("0.015")) - Decimal(line["amount"])
                for line in lines
            ),
            Decimal(0),
        )
        for customer, lines in issued.items()
    }
    assert expected["c001"] == Decimal("10.00")  # a whole month: the fee's full 10.00
    candidate = tmp_path / "raised.toml"
    candidate.write_text(RAISED)
    before = rows_by_table(engine)
    out = tmp_path / "what-if"

    report = ok(
        cli, "simulate", "--catalog", str(candidate), "--period", PERIOD, "--output", str(out)
    )
    assert rows_by_table(engine) == before, "simulate wrote to the database"
    summary = report["summary"]
    assert (summary["kind"], summary["catalog"], summary["sides"]) == (
        "simulate",
        "raised.toml",
        ["simulated", "issued"],
    )
    assert (summary["customers"], summary["differences"]) == (8, 8)
    assert summary["statuses"]["amount_differs"] == 8 and summary["reasons"] == {"price_change": 8}
    deltas = {d["customer"]: Decimal(d["difference"]) for d in report["differences"]}
    assert deltas == expected
    impact = sum(expected.values(), Decimal(0))
    issued_total = sum(
        (Decimal(line["amount"]) for lines in issued.values() for line in lines), Decimal(0)
    )
    usd = summary["currencies"]["USD"]
    assert usd["issued_total"] == f"{issued_total:.2f}"
    assert usd["simulated_total"] == f"{issued_total + impact:.2f}"
    assert usd["net_difference"] == f"{impact:.2f}"
    assert usd["net_difference_percent"] == f"{(impact * 100 / issued_total).quantize(CENT)}"
    ordered = sorted(expected.values())
    assert usd["p50_drift"] == f"{ordered[3]:.2f}" and usd["p95_drift"] == f"{ordered[7]:.2f}"
    line_kinds = {(line["customer"], line["kind"]) for line in report["lines"]}
    assert ("c005", "usage") in line_kinds and ("c001", "usage") not in line_kinds
    assert orjson.loads((out / "summary.json").read_bytes()) == summary
    assert "Neruba simulate: 2026-10 on raised.toml" in (out / "report.html").read_text()

    human = cli("simulate", "--catalog", str(candidate), "--period", PERIOD, "--project", "acme")
    assert human.exit_code == 0, human.stderr
    assert "revenue impact" in human.stdout and "8 customers compared: 0 matched" in human.stdout
    assert rows_by_table(engine) == before


def test_the_stored_catalog_simulates_to_what_was_issued(sqlite_cli: Cli, tmp_path: Path) -> None:
    cli = sqlite_cli
    subscribed_shop(cli, tmp_path, 5, CATALOG, digits=3, usage={"c003": 12})
    finalize_month(cli)
    same = tmp_path / "same.toml"
    same.write_text(CATALOG)
    report = ok(cli, "simulate", "--catalog", str(same), "--period", PERIOD)
    assert (report["summary"]["customers"], report["summary"]["differences"]) == (5, 0)
    assert report["summary"]["match_rate"] == "100.00"
    only = ok(
        cli,
        "simulate",
        "--catalog",
        str(same),
        "--period",
        PERIOD,
        "--customer",
        "c003",
        "--customer",
        "c004",
    )
    assert only["summary"]["customers"] == 2


def test_a_new_meter_and_charge_show_as_new_lines(sqlite_cli: Cli, tmp_path: Path) -> None:
    cli = sqlite_cli
    subscribed_shop(cli, tmp_path, 3, CATALOG, digits=3)
    finalize_month(cli)
    seats = tmp_path / "seats.toml"
    seats.write_text(WITH_SEATS)
    report = ok(cli, "simulate", "--catalog", str(seats), "--period", PERIOD, "--by", "line")
    assert report["summary"]["reasons"] == {"new_charge": 3}
    for difference in report["differences"]:
        assert difference["difference"] == "5.00"
        (line,) = difference["lines"]
        assert (line["line"], line["status"], line["reason"]) == (
            "seats (minimum commitment)",
            "only_in_simulated",
            "new_charge",
        )
    assert "seats" not in str(ok(cli, "catalog", "show")), "the candidate's meter was stored"


def test_what_a_simulation_cannot_do_is_refused(sqlite_cli: Cli, tmp_path: Path) -> None:
    cli = sqlite_cli
    subscribed_shop(cli, tmp_path, 2, CATALOG, digits=3)
    finalize_month(cli)
    yearly = tmp_path / "yearly.toml"
    yearly.write_text(metered_pro(interval="year"))
    error = expect(cli, 1, "simulate", "--catalog", str(yearly), "--period", PERIOD)
    assert "plan pro" in error["message"] and "interval or currency" in error["hint"]
    broken = tmp_path / "broken.toml"
    broken.write_text('[[plans]]\ncode = "pro"\nbase_fee = 49.0\n')
    assert expect(cli, 1, "simulate", "--catalog", str(broken), "--period", PERIOD)["type"] == (
        "invalid_input"
    )
    (tmp_path / "bad.toml").write_text("[[plans]\n")
    assert (
        "invalid TOML"
        in expect(cli, 1, "simulate", "--catalog", str(tmp_path / "bad.toml"), "--period", PERIOD)[
            "message"
        ]
    )
    same = tmp_path / "same.toml"
    same.write_text(CATALOG)
    unknown = expect(
        cli, 1, "simulate", "--catalog", str(same), "--period", PERIOD, "--customer", "nobody"
    )
    assert unknown["type"] == "not_found"
