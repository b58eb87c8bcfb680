"""Error messages an operator can act on, and no silent surprises, driven through the CLI.

Each test starts from what a new user typed and checks the message says where the problem is
(file, line), what was probably meant, and which exit code a script sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.cli import Cli

METERS = """
[[meters]]
code = "api_calls"
aggregation = "sum"

[[meters]]
code = "seats"
aggregation = "count"
"""
PRO = """
[[plans]]
code = "pro"
currency = "USD"
interval = "month"
base_fee = "49.00"

  [[plans.charges]]
  meter = "api_calls"
  model = "per_unit"
  unit_amount = "0.01"
"""


def ok(cli: Cli, *args: str) -> Any:
    result = cli(*args, "--project", "acme", "--json")
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result.json()


def ok_or_rejected(cli: Cli, *args: str) -> Any:
    """Runs an import that must end with rejected lines (exit 3); its JSON summary."""
    result = cli(*args, "--project", "acme", "--json")
    assert result.exit_code == 3, (args, result.stdout, result.stderr)
    return result.json()


def fails(cli: Cli, code: int, *args: str) -> str:
    """Runs a command that must fail with `code`; its message as a person reads it."""
    result = cli(*args, "--project", "acme")
    assert result.exit_code == code, (args, result.stdout, result.stderr)
    return " ".join(result.stderr.split())


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> Cli:
    assert cli("project", "create", "acme", "--timezone", "UTC").exit_code == 0
    (tmp_path / "catalog.toml").write_text(METERS + PRO)
    ok(cli, "catalog", "apply", str(tmp_path / "catalog.toml"))
    ok(cli, "customer", "create", "cus_1", "--currency", "USD")
    return cli


def test_catalog_problems_name_the_file_and_line(cli: Cli, tmp_path: Path) -> None:
    assert cli("project", "create", "acme").exit_code == 0
    path = tmp_path / "catalog.toml"
    path.write_text(
        METERS
        + """
[[plans]]
code = "pro"
currency = "USD"
interval = "monthly"

  [[plans.charges]]
  meter = "api_calls"
  model = "graduated"
  tiers = [
    { up_to = 1000, unit_amount = "0" },
    { up_to = 500, unit_amount = "0.002" },
    { up_to = inf, unit_amount = "0.001" },
  ]

  [[plans.charges]]
  meter = "seatz"
  model = "per_unit"
"""
    )
    result = cli("catalog", "apply", str(path), "--project", "acme")
    assert result.exit_code == 1
    listing = result.stderr.splitlines()
    assert f"{path}: 4 problems; nothing was written" in listing[0]
    assert listing[1:] == [
        f"  {path}:13: plans[0].interval: 'monthly' is not one of: week, month, quarter, year",
        f"  {path}:20: plans[0].charges[0].tiers[1].up_to: bounds must ascend",
        f"  {path}:25: plans[0].charges[1].meter: unknown meter 'seatz' (meters: api_calls, "
        "seats) — did you mean 'seats'?",
        # a missing key: the line of the table that lacks it
        f"  {path}:24: plans[0].charges[1].unit_amount: is required for model per_unit",
    ]
    assert cli("catalog", "show", "--project", "acme", "--json").json()["plans"] == []


def test_simulate_names_the_catalog_line_too(shop: Cli, tmp_path: Path) -> None:
    candidate = tmp_path / "candidate.toml"
    candidate.write_text(PRO.replace('"0.01"', "0.01"))
    message = fails(shop, 1, "simulate", "--catalog", str(candidate), "--period", "2026-10")
    assert "candidate.toml:11: plans[0].charges[0].unit_amount:" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            '[database]\ndatabse_url = "sqlite:///x.db"\n',
            "unknown setting 'databse_url' in {path} [database], line 2 — did you mean 'url'?",
        ),
        (
            'database_url = "sqlite:///x.db"\n',
            "unknown setting 'database_url' in {path}, line 1 — did you mean 'url' in [database]?",
        ),
        (
            '[defaults]\nproject = "acme"\n\n[databse]\nurl = "sqlite:///x.db"\n',
            "unknown section [databse] in {path}, line 4 — did you mean [database]?",
        ),
        (
            '[database]\nproject = "acme"\n',
            "unknown setting 'project' in {path} [database], line 2 — did you mean 'project' "
            "in [defaults]?",
        ),
        (
            "[privacy]\npersonal_properties = 'email'\n",
            "{path} [privacy], line 2: personal_properties: input should be a valid list",
        ),
    ],
)
def test_config_typos_say_what_was_meant(
    bare_cli: Cli, tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "neruba.toml"
    path.write_text(content)
    result = bare_cli("project", "list", "--config", str(path))
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: " + expected.format(path=path)
    assert "Extra inputs" not in result.stderr


SEMICOLONS = {
    "customers.csv": ("customer", "import"),
    "subscriptions.csv": ("subscription", "import"),
    "events.csv": ("ingest",),
}


@pytest.mark.parametrize("name", sorted(SEMICOLONS))
def test_a_semicolon_separated_csv_is_named_as_such(shop: Cli, tmp_path: Path, name: str) -> None:
    header = {
        "customers.csv": "external_id;name;currency",
        "subscriptions.csv": "customer;plan;start",
        "events.csv": "idempotency_key;customer;meter;timestamp",
    }[name]
    path = tmp_path / name
    path.write_text(f"{header}\ncus_2;x;2026-10-01T00:00:00Z;1\n")
    message = fails(shop, 1, *SEMICOLONS[name], str(path))
    assert message.startswith(
        f"error: {path}: line 1: the header has one column {header!r} — the file looks "
        "semicolon-separated; Neruba reads comma-separated CSV"
    )
    assert "unknown column" not in message


def test_a_semicolon_csv_on_stdin_and_a_tab_separated_baseline(shop: Cli, tmp_path: Path) -> None:
    piped = shop(
        "ingest", "-", "--format", "csv", "--project", "acme",
        input="idempotency_key;customer;meter;timestamp\ne1;cus_1;api_calls;2026-10-01T00:00:00Z\n",
    )  # fmt: skip
    assert piped.exit_code == 1
    assert "error: stdin: line 1: the header has one column" in piped.stderr
    baseline = tmp_path / "legacy.csv"
    baseline.write_text("customer\tdescription\tamount\ncus_1\tPro\t49.00\n")
    message = fails(shop, 1, "compare", str(baseline), "--period", "2026-10")
    assert "the file looks tab-separated; Neruba reads comma-separated CSV" in message


def test_a_negative_grant_points_at_revoke(shop: Cli) -> None:
    for args in (("cus_1", "-5"), ("cus_1", "--priority", "2", "-5.50"), ("nobody", "-5")):
        result = shop("credits", "grant", *args, "--project", "acme", "--json")
        assert result.exit_code == 2, (args, result.stderr)
        error = result.error()
        assert error["type"] == "usage_error"
        assert error["message"] == f"AMOUNT {args[-1]} is negative: a grant is positive"
        assert "neruba credits revoke GRANT" in error["hint"]
    # a misspelt option is still reported as one, not taken for a value
    misspelt = shop("credits", "grant", "cus_1", "-5", "--curency", "EUR", "--project", "acme")
    assert misspelt.exit_code == 2 and "No such option: --curency" in misspelt.stderr
    assert ok(shop, "credits", "list", "cus_1") == []
    assert ok(shop, "ledger", "show") == []


def test_a_grant_in_another_currency_needs_a_flag(shop: Cli) -> None:
    message = fails(shop, 1, "credits", "grant", "cus_1", "5.00", "--currency", "EUR")
    assert "customer cus_1 is billed in USD, not EUR" in message
    assert "nothing was granted" in message and "--allow-other-currency" in message
    assert ok(shop, "credits", "list", "cus_1") == []
    same = ok(shop, "credits", "grant", "cus_1", "5.00", "--currency", "usd")
    assert same["currency"] == "USD"
    other = ok(
        shop, "credits", "grant", "cus_1", "7.00", "--currency", "EUR", "--allow-other-currency"
    )
    assert (other["currency"], other["amount"]) == ("EUR", "7.00")
    wallet = ok(shop, "wallet", "show", "cus_1")
    assert (wallet["balance"], wallet["other_currencies"]) == ("5.00", {"EUR": "7.00"})


BASIC = """
[[plans]]
code = "basic"
currency = "USD"
interval = "month"
base_fee = "9.00"
"""


def test_an_overlapping_subscription_is_created_with_a_warning(shop: Cli, tmp_path: Path) -> None:
    (tmp_path / "basic.toml").write_text(BASIC)
    ok(shop, "catalog", "apply", str(tmp_path / "basic.toml"))
    first = ok(shop, "subscription", "create", "cus_1", "pro", "--start", "2026-10-01T00:00:00Z")
    assert first["warnings"] == []
    second = shop(
        "subscription", "create", "cus_1", "basic", "--start", "2026-10-15T00:00:00Z",
        "--project", "acme",
    )  # fmt: skip
    assert second.exit_code == 0, second.stderr
    warning = " ".join(second.stderr.split()[second.stderr.split().index("warning:") :])
    assert warning == (
        f"warning: customer cus_1 already has subscription {first['id']} (pro, from "
        "2026-10-01T00:00:00Z with no end), which overlaps this one: each bills its base fee; "
        f"to move a customer to another plan, use `neruba subscription change {first['id']} "
        "--plan basic --at 2026-10-15T00:00:00Z` rather than a second subscription"
    )
    # the same plan again: both bill the usage of its meters, which the warning says
    (tmp_path / "more.csv").write_text("customer,plan,start\ncus_1,pro,2026-11-01T00:00:00Z\n")
    report = ok(shop, "subscription", "import", str(tmp_path / "more.csv"))
    assert report["created"] == 1 and [w["line"] for w in report["warnings"]] == [2, 2]
    assert "usage of api_calls is billed by both" in report["warnings"][0]["message"]
    listed = ok(shop, "subscription", "list", "--customer", "cus_1")
    assert [s["plan"] for s in listed] == ["pro", "basic", "pro"]
    # a subscription that ends before the new one starts is not an overlap
    ok(shop, "customer", "create", "cus_2", "--currency", "USD")
    old = ok(shop, "subscription", "create", "cus_2", "pro", "--start", "2026-10-01T00:00:00Z")
    ok(shop, "subscription", "cancel", old["id"], "--at", "2026-12-01T00:00:00Z")
    after = ok(shop, "subscription", "create", "cus_2", "basic", "--start", "2026-12-01T00:00:00Z")
    assert after["warnings"] == []


def test_a_quote_prices_one_customer_of_an_events_file(shop: Cli, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(
            f'{{"customer": "{who}", "meter": "api_calls", "timestamp": '
            f'"2026-10-0{day}T10:00:00Z", "quantity": "{quantity}"}}'
            for day, (who, quantity) in enumerate(
                [("acme_corp", 100), ("globex", 1000), ("acme_corp", 200)], start=1
            )
        )
        + "\n"
    )
    result = shop("catalog", "quote", "pro", "--events", str(events), "--project", "acme")
    assert result.exit_code == 2
    assert " ".join(result.stderr.split()) == (
        f"error: {events} holds the events of 2 customers (acme_corp, globex): a quote prices "
        "one customer's usage (pass --customer ID to quote one of them)"
    )
    one = ok(shop, "catalog", "quote", "pro", "--events", str(events), "--customer", "acme_corp")
    line = next(item for item in one["lines"] if item["meter"] == "api_calls")
    assert (one["customer"], line["quantity"], line["amount"]) == ("acme_corp", "300", "3.00")
    shown = shop(
        "catalog", "quote", "pro", "--events", str(events), "--customer", "globex",
        "--project", "acme",
    )  # fmt: skip
    assert shown.exit_code == 0 and "Quote: plan pro v1 (USD) for globex" in shown.stdout
    missing = fails(
        shop, 1, "catalog", "quote", "pro", "--events", str(events), "--customer", "globx"
    )
    assert missing == (
        f"error: {events} has no events of customer 'globx' on this plan's meters — did you "
        "mean 'globex'? (customers in it: acme_corp, globex)"
    )
    alone = fails(shop, 2, "catalog", "quote", "pro", "--customer", "globex")
    assert "--customer picks one customer's events: it needs --events FILE" in alone


def event(key: str, meter: str = "api_calls", customer: str = "cus_1", **extra: Any) -> str:
    fields = {"idempotency_key": key, "customer": customer, "meter": meter}
    return orjson.dumps({**fields, "timestamp": "2026-10-03T12:00:00Z", **extra}).decode()


def test_ingest_messages_name_the_file_and_line_and_the_near_miss(
    shop: Cli, tmp_path: Path
) -> None:
    ok(shop, "customer", "create", "globex", "--currency", "USD")
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(
        "\n".join(
            [
                event("e1"),
                event("e2", meter="api_call"),
                event("e3", customer="globx"),
                event("e4", meter="seats", quantity=3),
            ]
        )
        + "\n"
    )
    second.write_text("\n".join([event("e5", meter="API_CALLS"), event("e1", quantity="7")]) + "\n")
    result = shop("ingest", str(first), str(second), "--project", "acme")
    assert result.exit_code == 3
    batch = ok(shop, "events", "receipts")[0]["batch"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert sorted(warnings) == [
        f"warning: {first}:2: unknown meter 'api_call' — did you mean 'api_calls'?",
        f"warning: {first}:3: unknown customer 'globx' — did you mean 'globex'?",
        f"warning: {second}:1: unknown meter 'API_CALLS' — did you mean 'api_calls'?",
        f"warning: {second}:2: conflicts with event 'e1' stored by import {batch} ({first}, "
        f"{second}) line 1: same key, different payload",
        f"warning: 1 event on count meter seats carry a quantity other than 1 ({first} line 4): "
        "a count meter counts events, so each counts as 1",
    ]
    rejects = [orjson.loads(line) for line in (tmp_path / "a.jsonl.rejects.jsonl").open("rb")]
    assert sorted((item["file"], item["line"]) for item in rejects) == [
        (str(first), 2),
        (str(first), 3),
        (str(second), 1),
        (str(second), 2),
    ]
    assert list(rejects[0]) == ["file", "line", "reason", "raw"]
    # a conflict with a line of a one-file import names that file
    third = tmp_path / "c.jsonl"
    third.write_text(event("e7") + "\n")
    stored_by = ok(shop, "ingest", str(third))["batch"]
    third.write_text(event("e7", quantity="2") + "\n")
    again = ok_or_rejected(shop, "ingest", str(third))
    assert again["rejects"][0]["reason"] == (
        f"conflicts with event 'e7' stored by import {stored_by} from {third} line 1: same key, "
        "different payload"
    )
    assert again["rejects"][0]["file"] == str(third)


def test_quantities_a_count_meter_ignores_are_counted_in_the_summary(
    shop: Cli, tmp_path: Path
) -> None:
    path = tmp_path / "seats.jsonl"
    lines = [event(f"s{i}", meter="seats", quantity=q) for i, q in enumerate([3, "1.0", 1, 2] * 3)]
    path.write_text("\n".join(lines) + "\n")
    summary = ok(shop, "ingest", str(path))
    assert (summary["lines"], summary["accepted"]) == (12, 12)  # stored as always
    assert summary["warnings"] == [
        f"6 events on count meter seats carry a quantity other than 1 ({path} lines 1, 4, 5, "
        "8, 9, ...): a count meter counts events, so each counts as 1"
    ]
    # the same lines again are repeats, counted without a second check: the warning was given
    # when they were imported (services/ingest/repeats.py)
    again = ok(shop, "ingest", str(path), "--dry-run")
    assert again["duplicates"] == 12 and again["warnings"] == []
    # the same events spelt anew are checked, and warned about, as any line is
    respelt = tmp_path / "seats-again.jsonl"
    respelt.write_text("\n".join(line.replace('"seats"', '"seats" ') for line in lines) + "\n")
    again = ok(shop, "ingest", str(respelt), "--dry-run")
    assert again["duplicates"] == 12 and len(again["warnings"]) == 1


def test_empty_input_says_no_events_were_read(shop: Cli, tmp_path: Path) -> None:
    piped = shop("ingest", "-", "--project", "acme", input="")
    assert piped.exit_code == 0
    assert "warning: no events read from stdin" in piped.stderr
    as_json = shop("ingest", "-", "--project", "acme", "--json", input="\n\n")
    assert as_json.exit_code == 0
    assert (as_json.json()["lines"], as_json.json()["warnings"]) == (
        0,
        ["no events read from stdin"],
    )
    header_only = tmp_path / "empty.csv"
    header_only.write_text("idempotency_key,customer,meter,timestamp\n")
    assert ok(shop, "ingest", str(header_only))["warnings"] == [
        f"no events read from {header_only}"
    ]


def test_unknown_plans_and_customers_suggest_the_near_one(shop: Cli) -> None:
    start = ("--start", "2026-10-01T00:00:00Z")
    plan = fails(shop, 1, "subscription", "create", "cus_1", "pr", *start)
    assert "error: plan 'pr' does not exist in project 'acme' — did you mean 'pro'?" in plan
    customer = fails(shop, 1, "subscription", "create", "cus_l", "pro", *start)
    assert "customer 'cus_l' does not exist in project 'acme' — did you mean 'cus_1'?" in customer
    granted = fails(shop, 1, "credits", "grant", "CUS_1", "5")
    assert "did you mean 'cus_1'?" in granted
    charged = fails(
        shop, 1, "charge", "add", "cus_2", "--amount", "5", "--description", "x",
        "--idempotency-key", "k",
    )  # fmt: skip
    assert "unknown customer 'cus_2' — did you mean 'cus_1'?" in charged
    unrelated = fails(shop, 1, "customer", "show", "somebody")
    assert "did you mean" not in unrelated
