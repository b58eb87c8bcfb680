"""Prorated usage charges through the CLI on every dialect: each unit of a recurring meter is
billed for the share of the period it existed (day proration, UTC calendar months).

The shop: meter seats (recurring sum) and users (recurring unique_count of properties.user).
Plan per_seat prices both at 10.00 a unit, prorated; plan volume_seats prices seats by volume
(up to 10 at 10.00, above at 8.00), prorated. c1 is on per_seat, c2 on volume_seats, from
Jan 1, 2026; both get the same seats.

By hand (days counted as `service_fraction` counts them: the day a unit arrives counts whole,
and so does the day it leaves):
  seats: +10 on Jan 1, +5 on Jan 15 09:00, -3 on Feb 10 09:00.
    Jan: 10 × 31/31 + 5 × 17/31 = 12.741935… → 12.74194 (rounded up to 5 places)
    Feb: 12 × 28/28 + 3 × 10/28 (Feb 1–10) = 13.071428… → 13.07143
    Mar: 12 (no change)
    per_unit 10.00:   127.4194 → 127.42, 130.7143 → 130.71, 120.00
    volume (tier from the unprorated 15, 12, 12: all above 10, so 8.00):
                      101.93552 → 101.94, 104.57144 → 104.57, 96.00
  users: u1 on Jan 1, u2 on Jan 15 09:00, u2 removed on Feb 10 09:00.
    Jan: 1 + 17/31 = 1.548387… → 1.54839 → 15.4839 → 15.48
    Feb: 1 + 10/28 = 1.357142… → 1.35715 → 13.5715 → 13.57
    Mar: 1 → 10.00
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.catalogs import INF, catalog, charge, meter, per_unit, plan, tier
from tests.support.cli import Cli, ok

CATALOG = catalog(
    meters=[
        meter("seats", "sum", recurring=True, allow_negative=True),
        meter("users", "unique_count", field="properties.user", recurring=True),
    ],
    plans=[
        plan(
            "per_seat",
            "0.00",
            per_unit("seats", "10.00", prorated=True),
            per_unit("users", "10.00", prorated=True),
        ),
        plan(
            "volume_seats",
            "0.00",
            charge(
                "seats",
                "volume",
                tiers=[tier(10, "10.00"), tier(INF, "8.00")],
                prorated=True,
            ),
        ),
    ],
)
MONTHS = {"2026-01": "2026-02-01", "2026-02": "2026-03-01", "2026-03": "2026-04-01"}


def events() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for customer in ("c1", "c2"):
        for key, quantity, at in (
            ("s1", "10", "2026-01-01T00:00:00Z"),
            ("s2", "5", "2026-01-15T09:00:00Z"),
            ("s3", "-3", "2026-02-10T09:00:00Z"),
        ):
            found.append({"idempotency_key": f"{customer}-{key}", "customer": customer,
                          "meter": "seats", "quantity": quantity, "timestamp": at})  # fmt: skip
    for key, name, at, operation in (
        ("u1", "u1", "2026-01-01T00:00:00Z", "add"),
        ("u2", "u2", "2026-01-15T09:00:00Z", "add"),
        ("u3", "u2", "2026-02-10T09:00:00Z", "remove"),
    ):
        found.append({"idempotency_key": key, "customer": "c1", "meter": "users",
                      "properties": {"user": name}, "timestamp": at,
                      "operation": operation})  # fmt: skip
    return found


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> Cli:
    assert cli("project", "create", "acme").exit_code == 0
    (tmp_path / "catalog.toml").write_text(CATALOG)
    ok(cli, "catalog", "apply", str(tmp_path / "catalog.toml"))
    for customer, plan_code in (("c1", "per_seat"), ("c2", "volume_seats")):
        ok(cli, "customer", "create", customer)
        ok(cli, "subscription", "create", customer, plan_code, "--start", "2026-01-01T00:00:00Z")
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(event) for event in events()) + b"\n")
    ok(cli, "ingest", str(path))
    return cli


def usage_lines(cli: Cli, period: str, customer: str) -> dict[str, Any]:
    found = [
        row for row in ok(cli, "invoice", "list", "--period", period) if row["customer"] == customer
    ]
    assert len(found) == 1, found
    shown = ok(cli, "invoice", "show", found[0]["number"])
    return {line["meter"]: line for line in shown["lines"] if line["kind"] == "usage"}


def figures(lines: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {
        meter: (line["quantity"], line["prorated"]["unprorated_quantity"], line["amount"])
        for meter, line in lines.items()
    }


def test_prorated_charges_bill_each_unit_for_its_share_of_the_period(shop: Cli) -> None:
    for period, as_of in MONTHS.items():
        ok(shop, "run", "bill", "--period", period, "--as-of", f"{as_of}T01:00:00Z")
    assert figures(usage_lines(shop, "2026-01", "c1")) == {
        "seats": ("12.74194", "15", "127.42"),
        "users": ("1.54839", "2", "15.48"),
    }
    assert figures(usage_lines(shop, "2026-02", "c1")) == {
        "seats": ("13.07143", "12", "130.71"),
        "users": ("1.35715", "1", "13.57"),
    }
    assert figures(usage_lines(shop, "2026-03", "c1")) == {
        "seats": ("12", "12", "120.00"),
        "users": ("1", "1", "10.00"),
    }
    volume = [figures(usage_lines(shop, period, "c2"))["seats"] for period in MONTHS]
    assert volume == [
        ("12.74194", "15", "101.94"),
        ("13.07143", "12", "104.57"),
        ("12", "12", "96.00"),
    ]
    tiers = usage_lines(shop, "2026-01", "c2")["seats"]["tiers"]
    assert [(t["up_to"], t["quantity"], t["unit_amount"]) for t in tiers] == [
        ("inf", "12.74194", "8")
    ]
    assert usage_lines(shop, "2026-01", "c1")["seats"]["prorated"]["by"] == "day"
    # the invoices recompute to themselves, and reruns change nothing
    for period, as_of in MONTHS.items():
        verified = ok(shop, "invoice", "verify", "--period", period)
        assert (verified["checked"], verified["ok"], verified["mismatches"]) == (2, 2, 0)
        again = ok(shop, "run", "bill", "--period", period, "--as-of", f"{as_of}T01:00:00Z")
        assert (again["status"], again["changes"]) == ("unchanged", []), again


def test_preview_prices_the_prorated_units(shop: Cli) -> None:
    preview = ok(shop, "invoice", "preview", "c1", "--at", "2026-01-20T00:00:00Z")
    found = {line["meter"]: (line["quantity"], line["amount"]) for line in preview["lines"]}
    assert found == {"seats": ("12.74194", "127.42"), "users": ("1.54839", "15.48")}


def test_the_catalog_refuses_prorated_where_it_means_nothing(cli: Cli, tmp_path: Path) -> None:
    assert cli("project", "create", "acme").exit_code == 0
    bad = catalog(
        meters=[
            meter("calls", "count"),
            meter("plain", "sum"),
            meter("seats", "sum", recurring=True),
        ],
        plans=[
            plan(
                "p",
                "0.00",
                per_unit("calls", "1.00", prorated=True),
                per_unit("plain", "1.00", prorated=True),
                charge("seats", "package", package_size=10, package_amount="5", prorated=True),
            ),
            plan("q", "0.00", per_unit("seats", "1.00", prorated=True), proration="none"),
        ],
    )
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    result = cli("catalog", "apply", str(path), "--project", "acme")
    assert result.exit_code == 1
    lines = [line.strip() for line in result.stderr.splitlines() if ".prorated" in line]
    assert len(lines) == 4, result.stderr
    assert lines[0].endswith(
        "plans[0].charges[0].prorated: needs a recurring sum or unique_count meter (units "
        "that exist for part of a period); meter calls is a count"
    )
    assert lines[1].endswith(
        "meter plain is a sum that is not recurring (set recurring = true on it)"
    )
    assert lines[2].endswith(
        "plans[0].charges[2].prorated: applies to per_unit, graduated, volume charges; a "
        "package charge has no price per unit to prorate"
    )
    assert lines[3].endswith(
        'plans[1].charges[0].prorated: the plan\'s proration is "none": prorate by "day" or '
        '"second"'
    )
    assert all(line.startswith(f"{path}:") for line in lines)  # file and line


def test_quote_prorates_an_events_file_over_its_period(shop: Cli, tmp_path: Path) -> None:
    path = tmp_path / "c1.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events() if e["customer"] == "c1"))
    quoted = ok(shop, "catalog", "quote", "per_seat", "--events", str(path), "--period",
                "2026-02")  # fmt: skip
    found = {line["meter"]: (line["quantity"], line["amount"]) for line in quoted["lines"]}
    assert found == {"seats": ("13.07143", "130.71"), "users": ("1.35715", "13.57")}
    # --usage has no history: the units are present the whole period
    quoted = ok(shop, "catalog", "quote", "per_seat", "--usage", "seats=15")
    found = {line["meter"]: (line["quantity"], line["amount"]) for line in quoted["lines"]}
    assert found["seats"] == ("15", "150.00")


def test_explain_says_where_the_prorated_units_come_from(shop: Cli) -> None:
    ok(shop, "run", "bill", "--period", "2026-01", "--as-of", "2026-02-01T01:00:00Z")
    (row,) = [
        r for r in ok(shop, "invoice", "list", "--period", "2026-01") if r["customer"] == "c1"
    ]
    explained = ok(shop, "invoice", "explain", row["number"])
    (seats,) = [line for line in explained["lines"] if line["meter"] == "seats"]
    assert seats["recurring"] is True
    assert seats["prorated"] == {"unprorated_quantity": "15", "by": "day"}
    assert seats["why"] == (
        "2 events in the period (sum, recurring: carried since the first event) → 15 at the "
        "end of the service period; each unit prorated by day for the share of the period it "
        "existed → 12.74194 units = 127.42 USD (exact 127.4194)"
    )


def test_a_cancellation_mid_day_counts_its_last_day(shop: Cli) -> None:
    """c1 cancels on Jan 20 at 15:00: 10 seats × 20/31 (Jan 1–20) + 5 × 6/31 (Jan 15–20) =
    230/31 = 7.419354… → 7.41936 → 74.19, the last day counted as the base fee counts it."""
    (sub,) = ok(shop, "subscription", "list", "--customer", "c1")
    ok(shop, "subscription", "cancel", sub["id"], "--at", "2026-01-20T15:00:00Z")
    ok(shop, "run", "bill", "--period", "2026-01", "--as-of", "2026-02-01T01:00:00Z")
    seats = usage_lines(shop, "2026-01", "c1")["seats"]
    assert (seats["quantity"], seats["amount"]) == ("7.41936", "74.19")
