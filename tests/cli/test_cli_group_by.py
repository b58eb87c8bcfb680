"""Pricing by property value (`group_by`) end to end on every dialect: one invoice line per
group with its own price, the groups in quote, explain, usage, simulate and exports, and a late
event in one group correcting that group's line only.

The shop: plan pro prices `calls` (the sum of the events' quantities) by region: 0.002 a call
by default, eu 0.003, apac 0.004 (listed, no usage). October for c1:

    eu    600 + 600 = 1,200 × 0.003 = 3.60
    apac              0     × 0.004 = 0.00
    EU                50    × 0.002 = 0.10   (values are compared exactly: not eu)
    us                800   × 0.002 = 1.60
    (none)      100 + 100 = 200 × 0.002 = 0.40   (no region, and a region that is a number)
                                       total 5.70
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import orjson
import pytest

from tests.support import catalogs
from tests.support.cli import Cli, ok
from tests.support.events import ingest, write_jsonl
from tests.support.shops import bill, new_project

CATALOG = """
[[meters]]
code = "calls"
aggregation = "sum"

[[plans]]
code = "pro"
currency = "USD"
interval = "month"
base_fee = "0"
base_fee_timing = "arrears"

  [[plans.charges]]
  meter = "calls"
  description = "API calls"
  group_by = ["region"]
  model = "per_unit"
  unit_amount = "0.002"

    [[plans.charges.groups]]
    values = { region = "eu" }
    unit_amount = "0.003"

    [[plans.charges.groups]]
    values = { region = "apac" }
    unit_amount = "0.004"
"""

EVENTS = [
    ("eu-1", "2026-10-02T10:00:00Z", 600, {"region": "eu"}),
    ("eu-2", "2026-10-20T10:00:00Z", 600, {"region": "eu"}),
    ("EU-1", "2026-10-05T10:00:00Z", 50, {"region": "EU"}),
    ("us-1", "2026-10-07T10:00:00Z", 800, {"region": "us"}),
    ("none-1", "2026-10-09T10:00:00Z", 100, {}),
    ("none-2", "2026-10-11T10:00:00Z", 100, {"region": 1}),
]
EXPECTED = [
    ("API calls — region: eu", {"region": "eu"}, "1200", "3.60"),
    ("API calls — region: apac", {"region": "apac"}, "0", "0.00"),
    ("API calls — region: EU", {"region": "EU"}, "50", "0.10"),
    ("API calls — region: us", {"region": "us"}, "800", "1.60"),
    ("API calls — region: (none)", {"region": None}, "200", "0.40"),
]


def _events(path: Path, rows: list[tuple[str, str, int, dict[str, object]]]) -> Path:
    return write_jsonl(
        path,
        [
            {
                "idempotency_key": key,
                "customer": "c1",
                "meter": "calls",
                "timestamp": ts,
                "quantity": quantity,
                "properties": properties,
            }
            for key, ts, quantity, properties in rows
        ],
    )


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> Cli:
    new_project(cli, "c1")
    catalogs.apply_catalog(cli, tmp_path, CATALOG)
    ok(cli, "subscription", "create", "c1", "pro", "--start", "2026-10-01T00:00:00Z")
    ingest(cli, _events(tmp_path / "october.jsonl", EVENTS))
    report = bill(cli, "2026-10", "2026-11-02T00:00:00Z")
    assert report["invoices"] == 1
    return cli


def test_one_line_per_group_at_its_own_price(shop: Cli) -> None:
    shown = ok(shop, "invoice", "show", "ACME-000001")
    got = [
        (line["description"], line["group"], line["quantity"], line["amount"])
        for line in shown["lines"]
    ]
    assert got == EXPECTED
    assert shown["total"] == "5.70"
    eu = shown["lines"][0]
    assert eu["events"]["count"] == 2
    assert eu["events"]["first"] == "2026-10-02T10:00:00Z"
    assert shown["lines"][1]["events"] == {"count": 0, "first": None, "last": None}
    text = shop("invoice", "show", "ACME-000001", "--project", "acme")
    assert text.exit_code == 0
    assert "API calls — region: eu" in text.stdout
    assert "API calls — region: (none)" in text.stdout


def test_explain_names_the_group(shop: Cli) -> None:
    explained = ok(shop, "invoice", "explain", "ACME-000001")
    lines = explained["lines"]
    assert [line["group"] for line in lines] == [group for _, group, _, _ in EXPECTED]
    assert "quantity 1200" in lines[0]["why"]
    assert "only events of group region = 'eu'" in lines[0]["events"]["note"]
    text = shop("invoice", "explain", "ACME-000001", "--project", "acme")
    assert text.exit_code == 0
    assert "group: region = 'eu'" in text.stdout
    assert "group: region = (none)" in text.stdout


def test_a_late_event_in_one_group_corrects_that_group_only(shop: Cli, tmp_path: Path) -> None:
    ok(shop, "invoice", "finalize", "ACME-000001")
    before = shop("invoice", "show", "ACME-000001", "--project", "acme", "--json").stdout
    late = [("eu-late", "2026-10-25T10:00:00Z", 100, {"region": "eu"})]
    ingest(shop, _events(tmp_path / "late.jsonl", late))
    report = bill(shop, "2026-10", "2026-11-10T00:00:00Z")
    assert report["status"] == "completed"
    listed = ok(shop, "invoice", "list")
    corrections = [row for row in listed if row["kind"] == "supplemental"]
    assert len(corrections) == 1
    correction = ok(shop, "invoice", "show", corrections[0]["number"])
    got = [
        (line["description"], line["group"], line["quantity"], line["amount"])
        for line in correction["lines"]
    ]
    assert got == [("API calls — region: eu (correction)", {"region": "eu"}, "100", "0.30")]
    assert correction["total"] == "0.30"
    after = shop("invoice", "show", "ACME-000001", "--project", "acme", "--json").stdout
    assert after == before
    again = bill(shop, "2026-10", "2026-11-10T00:00:00Z")
    assert again["status"] == "unchanged"
    assert len([r for r in ok(shop, "invoice", "list") if r["kind"] == "supplemental"]) == 1
    assert ok(shop, "invoice", "verify", "ACME-000001") is not None


def test_catalog_round_trips_the_groups(shop: Cli, tmp_path: Path) -> None:
    shown = ok(shop, "catalog", "show")
    charge = shown["plans"][0]["charges"][0]
    assert charge["group_by"] == ["region"]
    assert charge["groups"] == [
        {"values": {"region": "eu"}, "unit_amount": "0.003"},
        {"values": {"region": "apac"}, "unit_amount": "0.004"},
    ]
    exported = tmp_path / "exported.toml"
    result = shop("catalog", "export", "--output", str(exported), "--project", "acme")
    assert result.exit_code == 0, result.stderr
    again = catalogs.apply_catalog(shop, tmp_path, exported.read_text(), name="again.toml")
    assert again["changed"] is False


def test_quote_prices_each_group(shop: Cli, tmp_path: Path) -> None:
    quoted = ok(
        shop,
        "catalog",
        "quote",
        "pro",
        "--usage",
        "calls[region=eu]=1200",
        "--usage",
        "calls[region=us]=800",
        "--usage",
        "calls=200",
    )
    got = [(line["group"], line["quantity"], line["amount"]) for line in quoted["lines"]]
    assert got == [
        ({"region": "eu"}, "1200", "3.60"),
        ({"region": "apac"}, "0", "0.00"),
        ({"region": "us"}, "800", "1.60"),
        ({"region": None}, "200", "0.40"),
    ]
    assert quoted["total"] == "5.60"
    events = _events(tmp_path / "quote.jsonl", EVENTS)
    from_file = ok(shop, "catalog", "quote", "pro", "--events", str(events))
    got = [(line["group"], line["quantity"], line["amount"]) for line in from_file["lines"]]
    assert got == [(group, quantity, amount) for _, group, quantity, amount in EXPECTED]
    assert from_file["total"] == "5.70"
    text = shop("catalog", "quote", "pro", "--events", str(events), "--project", "acme")
    assert text.exit_code == 0 and "region: eu" in text.stdout
    bad = shop("catalog", "quote", "pro", "--usage", "calls[zone=eu]=1", "--project", "acme")
    assert bad.exit_code != 0 and "group_by" in bad.stderr


def test_rerun_of_an_unchanged_month_changes_nothing(shop: Cli) -> None:
    before = orjson.loads(
        shop("invoice", "show", "ACME-000001", "--project", "acme", "--json").stdout
    )
    again = bill(shop, "2026-10", "2026-11-02T00:00:00Z")
    assert again["status"] == "unchanged"
    after = orjson.loads(
        shop("invoice", "show", "ACME-000001", "--project", "acme", "--json").stdout
    )
    assert after["lines"] == before["lines"] and after["fingerprint"] == before["fingerprint"]


def test_usage_show_gives_the_meter_per_group(shop: Cli) -> None:
    shown = ok(
        shop, "usage", "show", "c1", "--period", "2026-10", "--as-of", "2026-11-05T00:00:00Z"
    )
    (calls,) = [meter for meter in shown["meters"] if meter["meter"] == "calls"]
    assert calls["quantity"] == "2250" and calls["amount"] == "5.70"
    got = [(g["group"], g["quantity"], g["events"], g["amount"]) for g in calls["groups"]]
    assert got == [
        ({"region": "EU"}, "50", 1, "0.10"),
        ({"region": "apac"}, "0", 0, "0.00"),
        ({"region": "eu"}, "1200", 2, "3.60"),
        ({"region": "us"}, "800", 1, "1.60"),
        ({"region": None}, "200", 2, "0.40"),
    ]
    lines = shown["projection"]["lines"]
    assert [line.get("group") for line in lines] == [group for _, group, _, _ in EXPECTED]
    text = shop(
        "usage", "show", "c1", "--period", "2026-10", "--as-of", "2026-11-05T00:00:00Z",
        "--project", "acme",
    )  # fmt: skip
    assert text.exit_code == 0, text.stderr
    assert "region: (none)" in text.stdout and "region: eu" in text.stdout


def test_simulate_reprices_one_group(shop: Cli, tmp_path: Path) -> None:
    ok(shop, "invoice", "finalize", "ACME-000001")
    same = tmp_path / "same.toml"
    same.write_text(CATALOG)
    report = ok(shop, "simulate", "--catalog", str(same), "--period", "2026-10")
    assert report["summary"]["differences"] == 0
    dearer = tmp_path / "dearer.toml"
    dearer.write_text(CATALOG.replace('unit_amount = "0.003"', 'unit_amount = "0.005"'))
    report = ok(shop, "simulate", "--catalog", str(dearer), "--period", "2026-10", "--by", "line")
    (difference,) = report["differences"]
    assert difference["difference"] == "2.40"
    changed = [line for line in difference["lines"] if line["status"] != "same"]
    assert [line["line"] for line in changed] == ["API calls — region: eu"]


def test_exports_carry_the_group(shop: Cli) -> None:
    lines = shop("export", "lines", "--period", "2026-10", "--project", "acme")
    assert lines.exit_code == 0, lines.stderr
    rows = list(csv.DictReader(io.StringIO(lines.stdout)))
    assert [(row["group"], row["quantity"], row["amount"]) for row in rows] == [
        ("region: eu", "1200", "3.60"),
        ("region: apac", "0", "0.00"),
        ("region: EU", "50", "0.10"),
        ("region: us", "800", "1.60"),
        ("region: (none)", "200", "0.40"),
    ]
    usage = shop("export", "usage", "--period", "2026-10", "--project", "acme")
    assert usage.exit_code == 0, usage.stderr
    rows = list(csv.DictReader(io.StringIO(usage.stdout)))
    got = sorted((row["day"], row["group"], row["events"], row["quantity"]) for row in rows)
    assert got == [
        ("2026-10-02", "region: eu", "1", "600"),
        ("2026-10-05", "region: EU", "1", "50"),
        ("2026-10-07", "region: us", "1", "800"),
        ("2026-10-09", "region: (none)", "1", "100"),
        ("2026-10-11", "region: (none)", "1", "100"),
        ("2026-10-20", "region: eu", "1", "600"),
    ]


def test_invoices_from_before_grouping_rerun_without_corrections(cli: Cli, tmp_path: Path) -> None:
    """An invoice whose lines carry no group (made before grouping, or by an ungrouped plan)
    reruns unchanged once the catalog groups the meter in a new plan version; the
    subscription moved to the new version is billed per group from then on."""
    new_project(cli, "c1")
    plain = CATALOG.split("    [[plans.charges.groups]]")[0].replace('group_by = ["region"]\n', "")
    catalogs.apply_catalog(cli, tmp_path, plain, name="plain.toml")
    subscribed = ok(cli, "subscription", "create", "c1", "pro", "--start", "2026-10-01T00:00:00Z")
    ingest(cli, _events(tmp_path / "october.jsonl", EVENTS))
    bill(cli, "2026-10", "2026-11-02T00:00:00Z")
    ok(cli, "invoice", "finalize", "ACME-000001")
    before = ok(cli, "invoice", "show", "ACME-000001")
    assert [(line["description"], line["amount"]) for line in before["lines"]] == [
        ("API calls", "4.50")  # 2250 × 0.002
    ]
    assert "group" not in before["lines"][0]
    catalogs.apply_catalog(cli, tmp_path, CATALOG)  # pro v2 groups the meter
    again = bill(cli, "2026-10", "2026-11-05T00:00:00Z")
    assert again["status"] == "unchanged"
    assert [row["number"] for row in ok(cli, "invoice", "list")] == ["ACME-000001"]
    assert ok(cli, "invoice", "show", "ACME-000001") == before
    verified = cli("invoice", "verify", "ACME-000001", "--project", "acme")
    assert verified.exit_code == 0, verified.stdout + verified.stderr
    ok(cli, "subscription", "change", subscribed["id"], "--plan", "pro", "--at",
       "2026-11-01T00:00:00Z")  # fmt: skip
    november = [("nov-eu", "2026-11-03T10:00:00Z", 100, {"region": "eu"})]
    ingest(cli, _events(tmp_path / "november.jsonl", november))
    bill(cli, "2026-11", "2026-12-02T00:00:00Z")
    invoices = ok(cli, "invoice", "list", "--period", "2026-11")
    shown = ok(cli, "invoice", "show", invoices[0]["number"])
    assert [(line["group"], line["amount"]) for line in shown["lines"]] == [
        ({"region": "eu"}, "0.30"),
        ({"region": "apac"}, "0.00"),
    ]


TIERED = """
[[meters]]
code = "gb"
aggregation = "sum"

[[meters]]
code = "pay"
aggregation = "sum"

[[plans]]
code = "tiered"
currency = "USD"
interval = "month"
base_fee = "0"
base_fee_timing = "arrears"

  [[plans.charges]]
  meter = "gb"
  group_by = ["region", "class"]
  model = "graduated"
  tiers = [ { up_to = 100, unit_amount = "0" }, { up_to = inf, unit_amount = "0.10" } ]

    [[plans.charges.groups]]
    values = { region = "eu", class = "cold" }
    tiers = [
      { up_to = 10, unit_amount = "0" },
      { up_to = inf, unit_amount = "0.02", flat_amount = "1" },
    ]

  [[plans.charges]]
  meter = "pay"
  group_by = ["method"]
  model = "percentage"
  rate = "2.9"
  fixed_amount = "0.30"

    [[plans.charges.groups]]
    values = { method = "sepa" }
    rate = "0.8"
    fixed_amount = "0"
    per_transaction_max = "5"
"""


def test_tiers_and_percentages_per_group(cli: Cli, tmp_path: Path) -> None:
    """Two properties at once, graduated tiers per group, and percentage fees per event of
    each group (in USD, half-even cents):

        gb  eu/cold   60 + 50 = 110: 100 × 0.02 + 1 flat         = 3.00
        gb  eu/(none) 30, the default tiers: all in the free tier = 0.00
        gb  us/hot    250: 150 × 0.10                             = 15.00
        pay sepa      1000 → 8 capped at 5, 100 → 0.80            = 5.80
        pay card      50 × 2.9 % + 0.30                           = 1.75
        pay (none)    20 × 2.9 % + 0.30 = 0.88                    = 0.88
    """
    new_project(cli, "c1")
    catalogs.apply_catalog(cli, tmp_path, TIERED)
    ok(cli, "subscription", "create", "c1", "tiered", "--start", "2026-10-01T00:00:00Z")
    rows = [
        ("gb", "g1", 60, {"region": "eu", "class": "cold"}),
        ("gb", "g2", 50, {"class": "cold", "region": "eu"}),
        ("gb", "g3", 30, {"region": "eu"}),
        ("gb", "g4", 250, {"region": "us", "class": "hot"}),
        ("pay", "p1", 1000, {"method": "sepa"}),
        ("pay", "p2", 100, {"method": "sepa"}),
        ("pay", "p3", 50, {"method": "card"}),
        ("pay", "p4", 20, {}),
    ]
    events = [
        {
            "idempotency_key": key,
            "customer": "c1",
            "meter": meter,
            "timestamp": f"2026-10-{index + 2:02d}T10:00:00Z",
            "quantity": quantity,
            "properties": properties,
        }
        for index, (meter, key, quantity, properties) in enumerate(rows)
    ]
    ingest(cli, write_jsonl(tmp_path / "october.jsonl", events))
    bill(cli, "2026-10", "2026-11-02T00:00:00Z")
    shown = ok(cli, "invoice", "show", "ACME-000001")
    got = [(line["description"], line["quantity"], line["amount"]) for line in shown["lines"]]
    assert got == [
        ("gb — region: eu, class: cold", "110", "3.00"),
        ("gb — region: eu, class: (none)", "30", "0.00"),
        ("gb — region: us, class: hot", "250", "15.00"),
        ("pay — method: sepa", "1100", "5.80"),
        ("pay — method: card", "50", "1.75"),
        ("pay — method: (none)", "20", "0.88"),
    ]
    assert shown["lines"][1]["group"] == {"region": "eu", "class": None}
    assert shown["total"] == "26.43"
    quoted = ok(cli, "catalog", "quote", "tiered", "--events", str(tmp_path / "october.jsonl"))
    assert [(line["quantity"], line["amount"]) for line in quoted["lines"]] == [
        (quantity, amount) for _, quantity, amount in got
    ]
