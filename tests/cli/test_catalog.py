"""The catalog: validation with paths, apply/version/export round trips, show and quote."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import tomli_w

from neruba_cli.domain.catalog import CatalogInvalid, parse_catalog
from tests.support.catalogs import EXAMPLE
from tests.support.cli import Cli


def load_example() -> dict:
    return tomllib.loads(EXAMPLE.read_text())


def problems(data: dict) -> list[str]:
    with pytest.raises(CatalogInvalid) as caught:
        parse_catalog(data, source="catalog.toml")
    return [str(problem) for problem in caught.value.problems]


# --- validation (pure) --------------------------------------------------------------------


def test_the_example_uses_every_aggregation_and_model() -> None:
    catalog = parse_catalog(load_example(), source="example")
    assert {m.spec.aggregation for m in catalog.meters} == {
        "count",
        "sum",
        "max",
        "unique_count",
        "latest",
        "weighted_sum",
    }
    models = {charge.model for plan in catalog.plans for charge in plan.charges}
    assert models == {
        "per_unit",
        "graduated",
        "volume",
        "package",
        "percentage",
        "graduated_percentage",
    }


def test_float_money_is_rejected_with_its_path_and_the_fix() -> None:
    data = load_example()
    data["plans"][0]["charges"][0]["unit_amount"] = 0.002
    assert problems(data) == [
        'plans[0].charges[0].unit_amount: write money as a string, e.g. "0.002"'
    ]


def test_descending_tiers_name_the_tier() -> None:
    data = load_example()
    data["plans"][1]["charges"][0]["tiers"][1]["up_to"] = 500
    assert problems(data) == ["plans[1].charges[0].tiers[1].up_to: bounds must ascend"]


def test_unknown_meter_and_unknown_model() -> None:
    data = load_example()
    data["plans"][0]["charges"][0]["meter"] = "api_cals"
    data["plans"][2]["charges"][1]["model"] = "tiered"
    found = problems(data)
    assert found[0].startswith("plans[0].charges[0].meter: unknown meter 'api_cals' (meters: ")
    assert found[1].startswith("plans[2].charges[1].model: 'tiered' is not one of: per_unit,")
    assert len(found) == 2


def test_every_problem_is_reported_at_once() -> None:
    data = {
        "meters": [
            {"code": "Calls", "aggregation": "average"},
            {"code": "gauge", "aggregation": "max", "recurring": True},
        ],
        "plans": [
            {
                "code": "p",
                "currency": "usd",
                "interval": "fortnight",
                "base_fee": 49.0,
                "charges": [
                    {
                        "meter": "gauge",
                        "model": "graduated",
                        "tiers": [{"up_to": 10, "unit_amount": "1"}, {"up_to": 20}],
                    },
                    {"meter": "nope", "model": "package", "package_size": 0, "unit_amount": "1"},
                ],
            }
        ],
        "extras": {},
    }
    found = problems(data)
    expected = [
        "extras: unknown section",
        "meters[0].code: must be 1-64 lower-case letters",
        "meters[0].aggregation: 'average' is not one of",
        "meters[1].recurring: a max meter cannot be recurring",
        "plans[0].interval: 'fortnight' is not one of",
        'plans[0].base_fee: write money as a string, e.g. "49.0"',
        "plans[0].charges[0].tiers[1].up_to: the last tier must be up_to = inf",
        "plans[0].charges[1].meter: unknown meter 'nope'",
        "plans[0].charges[1].unit_amount: does not apply to model package (it belongs to per_unit)",
        "plans[0].charges[1].package_amount: is required for model package",
        "plans[0].charges[1].package_size: must be greater than 0",
    ]
    for fragment in expected:
        assert any(problem.startswith(fragment) for problem in found), (fragment, found)
    assert len(found) == len(expected)


def test_tier_rules() -> None:
    base = {"meters": [{"code": "m", "aggregation": "sum"}]}

    def plan(tiers: list, model: str = "graduated") -> dict:
        charge = {"meter": "m", "model": model, "tiers": tiers}
        return {
            **base,
            "plans": [{"code": "p", "currency": "USD", "interval": "month", "charges": [charge]}],
        }

    assert problems(plan([{"up_to": 0.5, "unit_amount": "1"}, {"up_to": float("inf")}])) == [
        'plans[0].charges[0].tiers[0].up_to: write fractional bounds as a string, e.g. "0.5"'
    ]
    ok = parse_catalog(
        plan([{"up_to": "0.5", "unit_amount": "1"}, {"up_to": "inf", "unit_amount": "2"}]),
        source="x",
    )
    assert str(ok.plans[0].charges[0].tiers[0].up_to) == "0.5"
    assert problems(plan([{"up_to": float("inf")}, {"up_to": float("inf")}])) == [
        "plans[0].charges[0].tiers[1].up_to: no tier may follow the inf tier"
    ]
    found = problems(plan([{"up_to": float("inf"), "unit_amount": "1"}], "graduated_percentage"))
    assert found == [
        "plans[0].charges[0].tiers[0].unit_amount: graduated_percentage tiers take rate, "
        "not unit_amount"
    ]


# --- apply, versions, export, show (every dialect) ----------------------------------------


@pytest.fixture
def acme(cli: Cli) -> Cli:
    assert cli("project", "create", "acme").exit_code == 0
    return cli


def apply(cli: Cli, path: Path, *extra: str) -> dict:
    result = cli("catalog", "apply", str(path), "--project", "acme", "--json", *extra)
    assert result.exit_code == 0, result.stderr
    return result.json()


def test_apply_twice_changes_nothing_and_export_round_trips(acme: Cli, tmp_path: Path) -> None:
    first = apply(acme, EXAMPLE)
    assert first["changed"] is True
    assert {p["code"]: (p["outcome"], p["version"]) for p in first["plans"]} == {
        "starter": ("created", 1),
        "pro": ("created", 1),
        "enterprise": ("created", 1),
    }
    again = apply(acme, EXAMPLE)
    assert again["changed"] is False
    assert all(p["outcome"] == "unchanged" for p in again["plans"])
    exported = tmp_path / "exported.toml"
    result = acme("catalog", "export", "--output", str(exported), "--project", "acme")
    assert result.exit_code == 0, result.stderr
    assert "up_to = inf" in exported.read_text()
    assert apply(acme, exported)["changed"] is False
    stdout = acme("catalog", "export", "--project", "acme")
    assert tomllib.loads(stdout.stdout) == tomllib.loads(exported.read_text())


def test_changing_a_plan_makes_a_new_version(acme: Cli, tmp_path: Path) -> None:
    apply(acme, EXAMPLE)
    data = load_example()
    data["plans"][1]["base_fee"] = "59.00"
    changed = tmp_path / "changed.toml"
    changed.write_text(tomli_w.dumps(data))
    dry = apply(acme, changed, "--dry-run")
    assert dry["dry_run"] is True
    assert {p["code"]: p["outcome"] for p in dry["plans"]}["pro"] == "new version"
    shown = acme("catalog", "show", "--project", "acme", "--json").json()
    assert {p["code"]: p["version"] for p in shown["plans"]}["pro"] == 1  # dry run wrote nothing
    report = apply(acme, changed)
    assert {p["code"]: (p["outcome"], p["version"]) for p in report["plans"]}["pro"] == (
        "new version",
        2,
    )
    shown = acme("catalog", "show", "--project", "acme", "--json").json()
    pro = next(p for p in shown["plans"] if p["code"] == "pro")
    assert (pro["version"], pro["base_fee"]) == (2, "59")
    assert acme("catalog", "quote", "pro@1", "--project", "acme", "--json").json()["version"] == 1


def test_a_changed_meter_reversions_the_plans_that_read_it(acme: Cli, tmp_path: Path) -> None:
    apply(acme, EXAMPLE)
    meter_only = tmp_path / "meter.toml"
    meter_only.write_text('[[meters]]\ncode = "api_calls"\naggregation = "sum"\n')
    report = apply(acme, meter_only)
    assert report["meters"] == [{"code": "api_calls", "outcome": "updated"}]
    assert {p["code"]: p["version"] for p in report["plans"]} == {"starter": 2, "pro": 2}


def test_a_bad_catalog_writes_nothing(acme: Cli, tmp_path: Path) -> None:
    data = load_example()
    data["plans"][0]["charges"][0]["unit_amount"] = 0.002
    data["plans"][1]["charges"][0]["tiers"][1]["up_to"] = 500
    data["plans"][2]["charges"][0]["meter"] = "ghost"
    data["plans"][2]["charges"][1]["model"] = "tiered"
    bad = tmp_path / "bad.toml"
    bad.write_text(tomli_w.dumps(data))
    result = acme("catalog", "apply", str(bad), "--project", "acme")
    assert result.exit_code == 1
    assert f"{bad}: 4 problems; nothing was written" in result.stderr
    for path in (
        "plans[0].charges[0].unit_amount",
        "plans[1].charges[0].tiers[1].up_to",
        "plans[2].charges[0].meter",
        "plans[2].charges[1].model",
    ):
        assert path in result.stderr
    shown = acme("catalog", "show", "--project", "acme", "--json").json()
    assert shown == {"meters": [], "plans": []}
    broken = tmp_path / "broken.toml"
    broken.write_text("[[plans]\n")
    result = acme("catalog", "apply", str(broken), "--project", "acme")
    assert result.exit_code == 1 and "invalid TOML" in result.stderr


def test_show_renders_plans_and_tiers(acme: Cli) -> None:
    apply(acme, EXAMPLE)
    shown = acme("catalog", "show", "--project", "acme")
    assert shown.exit_code == 0
    for fragment in (
        "Meters",
        "weighted_sum",
        "Plan pro v1",
        "USD per month",
        "pro · api_calls tiers (graduated)",
        "0.002",
        "inf",
    ):
        assert fragment in shown.stdout, fragment


# --- quote --------------------------------------------------------------------------------


def quote(cli: Cli, *args: str) -> dict:
    result = cli("catalog", "quote", *args, "--project", "acme", "--json")
    assert result.exit_code == 0, result.stderr
    return result.json()


def test_quote_graduated_as_in_the_design_example(acme: Cli) -> None:
    apply(acme, EXAMPLE)
    data = quote(acme, "pro", "--usage", "api_calls=12000")
    line = next(item for item in data["lines"] if item["meter"] == "api_calls")
    # 1000 free, 9000 x 0.002 = 18.00, 2000 x 0.001 = 2.00
    assert (line["amount"], line["charge_model"], line["quantity"]) == (
        "20.00",
        "graduated",
        "12000",
    )
    assert [tier["amount"] for tier in line["tiers"]] == ["0", "18", "2"]
    assert data["lines"][0] == {
        "kind": "base_fee",
        "meter": None,
        "charge_model": None,
        "quantity": None,
        "amount": "49.00",
        "amount_exact": "49",
        "tiers": [],
    }
    minimum = [item for item in data["lines"] if item["kind"] == "minimum"]
    assert minimum and minimum[0]["meter"] == "active_users" and minimum[0]["amount"] == "20.00"
    assert data["total"] == "89.00"  # 49 + 20 + the 20.00 minimum of active_users


def test_quote_tiny_unit_prices_round_once(acme: Cli) -> None:
    apply(acme, EXAMPLE)
    data = quote(acme, "pro", "--usage", "tokens=1334567")
    line = next(item for item in data["lines"] if item["meter"] == "tokens")
    # (1,334,567 - 100,000 free) x 0.0000125 = 15.4320875 -> 15.43
    assert (line["amount_exact"], line["amount"]) == ("15.4320875", "15.43")


def test_quote_from_an_events_file(acme: Cli, tmp_path: Path) -> None:
    apply(acme, EXAMPLE)
    events = tmp_path / "events.jsonl"
    lines = [
        json.dumps(
            {
                "meter": "payments",
                "timestamp": f"2026-10-0{day}T10:00:00Z",
                "properties": {"amount": int(amount)},
            }
        )
        for day, amount in enumerate(["10", "20", "30", "100", "1000"], start=1)
    ]
    events.write_text("\n".join(lines) + "\n")
    data = quote(acme, "pro", "--events", str(events))
    line = next(item for item in data["lines"] if item["meter"] == "payments")
    # 3 free; 100 x 2.9 % + 0.30 = 3.20; 1000 x 2.9 % + 0.30 = 29.30 -> capped at 10
    assert (line["quantity"], line["amount"]) == ("1160", "13.20")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"meter": "payments", "timestamp": "2026-10-01T10:00:00"}\n')
    result = acme("catalog", "quote", "pro", "--events", str(bad), "--project", "acme")
    assert result.exit_code == 1 and f"{bad}:1" in result.stderr and "offset" in result.stderr


def test_quote_errors(acme: Cli) -> None:
    apply(acme, EXAMPLE)
    unknown = acme("catalog", "quote", "gold", "--project", "acme")
    assert unknown.exit_code == 1 and "plan 'gold' does not exist" in unknown.stderr
    meter = acme("catalog", "quote", "starter", "--usage", "tokens=5", "--project", "acme")
    assert meter.exit_code == 1 and "has no charge on meter 'tokens'" in meter.stderr
    currency = acme("catalog", "quote", "starter", "--currency", "EUR", "--project", "acme")
    assert currency.exit_code == 1 and "priced in USD" in currency.stderr
    version = acme("catalog", "quote", "starter@7", "--project", "acme")
    assert version.exit_code == 1 and "no version 7" in version.stderr


def test_out_of_range_and_odd_values_are_rejected_with_paths() -> None:
    base = {"meters": [{"code": "m", "aggregation": "sum"}]}

    def plan(**charge: object) -> dict:
        full = {"meter": "m", **charge}
        return {
            **base,
            "plans": [
                {
                    "code": "p",
                    "currency": "USD",
                    "interval": "month",
                    "trial_days": 99999999999,
                    "charges": [full],
                }
            ],
        }

    found = problems(plan(model="per_unit", unit_amount="1E+40"))
    assert any(p.startswith("plans[0].charges[0].unit_amount: '1E+40' is larger") for p in found)
    assert any(
        p.startswith("plans[0].trial_days: must be a whole number of days, 0 to 3650")
        for p in found
    )
    found = problems(plan(model="percentage", rate="2", free_units="2.5"))
    assert any(p.startswith("plans[0].charges[0].free_units: counts free events") for p in found)
    found = problems(plan(model="graduated", tiers=[{"up_to": "1e999999"}, {"up_to": "inf"}]))
    assert any(p.startswith("plans[0].charges[0].tiers[0].up_to: is out of range") for p in found)


def test_quote_uses_the_project_rounding_and_time_zone(cli: Cli, tmp_path: Path) -> None:
    assert (
        cli(
            "project", "create", "up", "--rounding", "half_up", "--timezone", "Asia/Tokyo"
        ).exit_code
        == 0
    )
    catalog = tmp_path / "c.toml"
    catalog.write_text(
        '[[meters]]\ncode = "m"\naggregation = "count"\n'
        '[[plans]]\ncode = "p"\ncurrency = "USD"\ninterval = "month"\n'
        '[[plans.charges]]\nmeter = "m"\nmodel = "per_unit"\nunit_amount = "0.005"\n'
    )
    assert cli("catalog", "apply", str(catalog), "--project", "up").exit_code == 0
    quoted = cli("catalog", "quote", "p", "--usage", "m=1", "--project", "up", "--json").json()
    assert quoted["total"] == "0.01"  # half_up; half_even would give 0.00
    events = tmp_path / "e.jsonl"
    events.write_text(
        '{"meter": "m", "timestamp": "2026-09-30T15:30:00Z"}\n'  # Oct 1, 00:30 in Tokyo
        '{"meter": "m", "timestamp": "2026-10-31T15:30:00Z"}\n'  # Nov 1, 00:30 in Tokyo
    )
    october = cli(
        "catalog",
        "quote",
        "p",
        "--events",
        str(events),
        "--period",
        "2026-10",
        "--project",
        "up",
        "--json",
    ).json()
    assert october["lines"][0]["quantity"] == "1"


def test_export_json_keeps_inf_as_a_string(acme: Cli) -> None:
    apply(acme, EXAMPLE)
    document = acme("catalog", "export", "--project", "acme", "--json").json()
    bounds = [
        t["up_to"] for p in document["plans"] for c in p["charges"] for t in c.get("tiers", [])
    ]
    assert "inf" in bounds and None not in bounds


def test_non_utf8_files_are_clear_errors(acme: Cli, tmp_path: Path) -> None:
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[[meters]]\ncode = "caf\xe9"\n')
    result = acme("catalog", "apply", str(latin), "--project", "acme")
    assert result.exit_code == 1 and "not UTF-8" in result.stderr
    apply(acme, EXAMPLE)
    events = tmp_path / "bad.jsonl"
    events.write_bytes(b'{"meter": "api_calls", "timestamp": "2026-10-01T00:00:00Z"}\n\xff\n')
    result = acme("catalog", "quote", "pro", "--events", str(events), "--project", "acme")
    assert result.exit_code == 1 and f"{events}:2: not UTF-8" in result.stderr
    odd = acme("catalog", "quote", "pro@\u00b2", "--project", "acme")
    assert odd.exit_code == 2 and "PLAN 'pro@²': write a version as PLAN@N" in odd.stderr
