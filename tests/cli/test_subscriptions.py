"""Subscriptions end to end on every dialect: create, change, cancel, list, import."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.catalogs import EXAMPLE
from tests.support.cli import Cli


@pytest.fixture
def shop(cli: Cli) -> Cli:
    assert cli("project", "create", "acme", "--timezone", "Europe/Paris").exit_code == 0
    for external, currency in (("c1", "USD"), ("c2", "USD"), ("eu1", "EUR")):
        created = cli("customer", "create", external, "--currency", currency, "--project", "acme")
        assert created.exit_code == 0
    applied = cli("catalog", "apply", str(EXAMPLE), "--project", "acme")
    assert applied.exit_code == 0, applied.stderr
    return cli


def run(cli: Cli, *args: str) -> dict:
    result = cli("subscription", *args, "--project", "acme", "--json")
    assert result.exit_code == 0, result.stderr
    return result.json()


def test_create_uses_the_current_version_and_the_plans_trial(shop: Cli) -> None:
    created = run(shop, "create", "c1", "pro", "--start", "2026-10-15T10:00:00+02:00")
    assert created["id"].startswith("sub_")
    assert (created["customer"], created["plan"], created["version"]) == ("c1", "pro", 1)
    assert created["start"] == "2026-10-15T08:00:00Z" and created["end"] is None
    assert (created["trial_days"], created["timezone"]) == (14, "Europe/Paris")
    # 14 days later at the same Paris wall-clock time, across the end of summer time
    assert created["trial_ends"] == "2026-10-29T09:00:00Z"
    no_trial = run(
        shop,
        "create",
        "c2",
        "starter",
        "--start",
        "2026-10-01T00:00:00Z",
        "--anchor",
        "anniversary",
        "--trial-days",
        "0",
    )
    assert (no_trial["trial_days"], no_trial["trial_ends"], no_trial["anchor"]) == (
        0,
        None,
        "anniversary",
    )


def test_create_errors(shop: Cli) -> None:
    cases = [
        (("eu1", "pro", "--start", "2026-10-01T00:00:00Z"), 1, "billed in EUR, plan pro in USD"),
        (("nobody", "pro", "--start", "2026-10-01T00:00:00Z"), 1, "customer 'nobody' does not"),
        (("c1", "gold", "--start", "2026-10-01T00:00:00Z"), 1, "plan 'gold' does not exist"),
        # a value that cannot be read: a usage error
        (("c1", "pro", "--start", "2026-10-01T00:00:00"), 2, "--start: '2026-10-01T00:00:00'"),
        (("c1", "pro", "--start", "2026-10-01T00:00:00Z", "--anchor", "monthly"), 2, "--anchor"),
    ]
    for args, code, fragment in cases:
        result = shop("subscription", "create", *args, "--project", "acme")
        assert result.exit_code == code and fragment in result.stderr, (args, result.stderr)
    assert run(shop, "list") == []


def test_change_and_cancel(shop: Cli, tmp_path: Path) -> None:
    sub = run(shop, "create", "c1", "starter", "--start", "2026-10-01T00:00:00Z")["id"]
    changed = run(shop, "change", sub, "--plan", "pro", "--at", "2026-10-20T12:00:00Z")
    assert [(p["plan"], p["start"], p["end"]) for p in changed["phases"]] == [
        ("starter", "2026-10-01T00:00:00Z", "2026-10-20T12:00:00Z"),
        ("pro", "2026-10-20T12:00:00Z", None),
    ]
    again = shop(
        "subscription",
        "change",
        sub,
        "--plan",
        "pro",
        "--at",
        "2026-10-25T00:00:00Z",
        "--project",
        "acme",
    )
    assert again.exit_code == 1 and "already on pro v1" in again.stderr

    def change(at: str) -> str:
        result = shop(
            "subscription", "change", sub, "--plan", "enterprise", "--at", at, "--project", "acme"
        )
        assert result.exit_code == 1
        return result.stderr

    assert "already has a change after" in change("2026-10-10T00:00:00Z")
    assert "is not inside subscription" in change("2026-09-01T00:00:00Z")
    for moment in ("2026-09-01T00:00:00Z", "2026-10-01T00:00:00Z"):  # before, and at, the start
        early = shop("subscription", "cancel", sub, "--at", moment, "--project", "acme")
        assert early.exit_code == 1 and "is not after the start" in early.stderr
    between = shop(
        "subscription", "cancel", sub, "--at", "2026-10-10T00:00:00Z", "--project", "acme"
    )
    assert between.exit_code == 1 and "has a plan change at or after" in between.stderr
    ended = run(shop, "cancel", sub, "--at", "2026-11-10T00:00:00Z")
    assert ended["end"] == "2026-11-10T00:00:00Z"
    assert ended["phases"][-1]["end"] == "2026-11-10T00:00:00Z"
    twice = shop("subscription", "cancel", sub, "--at", "2026-11-12T00:00:00Z", "--project", "acme")
    assert twice.exit_code == 1 and "already ends" in twice.stderr
    listed = run(shop, "list", "--customer", "c1")
    assert [(s["id"], s["plan"]) for s in listed] == [(sub, "pro")]


def test_moving_a_subscription_to_a_new_plan_version(shop: Cli, tmp_path: Path) -> None:
    sub = run(shop, "create", "c1", "pro", "--start", "2026-10-01T00:00:00Z")["id"]
    newer = tmp_path / "pro2.toml"
    newer.write_text(EXAMPLE.read_text().replace('base_fee = "49.00"', 'base_fee = "59.00"'))
    assert shop("catalog", "apply", str(newer), "--project", "acme").exit_code == 0
    kept = run(shop, "list")[0]
    assert (kept["plan"], kept["version"]) == ("pro", 1)  # subscriptions keep their version
    moved = run(shop, "change", sub, "--plan", "pro", "--at", "2026-11-01T00:00:00Z")
    assert [(p["plan"], p["version"]) for p in moved["phases"]] == [("pro", 1), ("pro", 2)]


def test_import_is_idempotent_and_reports_bad_rows(shop: Cli, tmp_path: Path) -> None:
    source = tmp_path / "subs.csv"
    source.write_text(
        "customer,plan,start,anchor,trial_days\n"
        "c1,pro,2026-10-01T00:00:00Z,calendar,0\n"
        "c2,starter,2026-10-05T00:00:00+02:00,anniversary,\n"
        "eu1,pro,2026-10-01T00:00:00Z,,\n"
        "c2,gold,2026-10-01T00:00:00Z,,\n"
        "c1,pro,yesterday,,\n"
    )
    first = shop("subscription", "import", str(source), "--project", "acme", "--json")
    assert first.exit_code == 3, first.stderr
    report = first.json()
    assert (report["created"], report["rejected"]) == (2, 3)
    assert [r["line"] for r in report["rejects"]] == [4, 5, 6]
    assert "billed in EUR" in report["rejects"][0]["reason"]
    second = shop("subscription", "import", str(source), "--project", "acme", "--json").json()
    assert (second["created"], second["unchanged"], second["rejected"]) == (0, 2, 3)
    assert len(run(shop, "list")) == 2


def test_a_retried_create_does_not_subscribe_twice(shop: Cli) -> None:
    args = ("create", "c1", "pro", "--start", "2026-10-01T00:00:00Z")
    run(shop, *args)
    again = shop("subscription", *args, "--project", "acme")
    assert again.exit_code == 1 and "already has subscription" in again.stderr
    assert len(run(shop, "list")) == 1


def test_changing_after_a_cancel_keeps_the_end(shop: Cli) -> None:
    sub = run(shop, "create", "c1", "starter", "--start", "2026-10-01T00:00:00Z")["id"]
    run(shop, "cancel", sub, "--at", "2026-12-01T00:00:00Z")
    moved = run(shop, "change", sub, "--plan", "pro", "--at", "2026-11-01T00:00:00Z")
    assert moved["end"] == "2026-12-01T00:00:00Z"
    assert moved["phases"][-1] == {
        "plan": "pro",
        "version": 1,
        "start": "2026-11-01T00:00:00Z",
        "end": "2026-12-01T00:00:00Z",
    }


def test_import_honours_trial_days_and_refuses_odd_digits(shop: Cli, tmp_path: Path) -> None:
    source = tmp_path / "subs.csv"
    source.write_text(
        "customer,plan,start,trial_days\n"
        "c1,pro,2026-10-01T00:00:00Z,0\n"
        "c2,pro,2026-10-01T00:00:00Z,\u00b2\n"
    )
    result = shop("subscription", "import", str(source), "--project", "acme", "--json")
    assert result.exit_code == 3, result.stderr
    assert "not a whole number" in result.json()["rejects"][0]["reason"]
    listed = run(shop, "list")
    assert [(s["customer"], s["trial_days"]) for s in listed] == [("c1", 0)]


def test_out_of_range_moments_are_clear_errors(shop: Cli) -> None:
    result = shop(
        "subscription",
        "create",
        "c1",
        "pro",
        "--start",
        "9999-12-31T23:00:00-05:00",
        "--project",
        "acme",
    )
    assert result.exit_code == 2 and "outside the years 1 to 9999" in result.stderr
