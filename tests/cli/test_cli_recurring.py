"""Recurring sum and unique_count meters through the CLI on every dialect: the value carries
over between periods (seats, licences), billed from the running total at each period's end.

The shop: meter seats (sum of quantity, recurring) and users (unique_count of
properties.user, recurring), both at 10.00 a unit on plan team (no base fee), calendar months
from Jan 1, 2026.

By hand:
  seats: +10 on Jan 1, +5 on Jan 15, -3 on Feb 10 → Jan 15, Feb 12, Mar 12 (no event in March)
         → 150.00, 120.00, 120.00.
  users: u1, u2, u3 in January, u1 again and u4 in February, u2 removed on Feb 10
         → Jan 3, Feb 3 (u1, u3, u4 present at the end of February), Mar 3
         → 30.00, 30.00, 30.00.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.catalogs import catalog, meter, per_unit, plan
from tests.support.cli import Cli, ok

CATALOG = catalog(
    meters=[
        meter("seats", "sum", recurring=True, allow_negative=True),
        meter("users", "unique_count", field="properties.user", recurring=True),
    ],
    plans=[plan("team", "0.00", per_unit("seats", "10.00"), per_unit("users", "10.00"))],
)
MONTHS = {"2026-01": "2026-02-01", "2026-02": "2026-03-01", "2026-03": "2026-04-01"}


def seat(key: str, quantity: str, at: str) -> dict[str, Any]:
    return {"idempotency_key": key, "customer": "c1", "meter": "seats", "quantity": quantity,
            "timestamp": at}  # fmt: skip


def user(key: str, name: str, at: str) -> dict[str, Any]:
    return {"idempotency_key": key, "customer": "c1", "meter": "users",
            "properties": {"user": name}, "timestamp": at}  # fmt: skip


EVENTS = [
    seat("s1", "10", "2026-01-01T09:00:00Z"),
    seat("s2", "5", "2026-01-15T09:00:00Z"),
    seat("s3", "-3", "2026-02-10T09:00:00Z"),
    user("u1", "u1", "2026-01-02T00:00:00Z"),
    user("u2", "u2", "2026-01-03T00:00:00Z"),
    user("u3", "u3", "2026-01-20T00:00:00Z"),
    user("u4", "u1", "2026-02-02T00:00:00Z"),
    user("u5", "u4", "2026-02-03T00:00:00Z"),
    {**user("u6", "u2", "2026-02-10T00:00:00Z"), "operation": "remove"},
]


def write_events(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(event) for event in events) + b"\n")
    return path


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> Cli:
    assert cli("project", "create", "acme").exit_code == 0
    (tmp_path / "catalog.toml").write_text(CATALOG)
    ok(cli, "catalog", "apply", str(tmp_path / "catalog.toml"))
    ok(cli, "customer", "create", "c1")
    ok(cli, "subscription", "create", "c1", "team", "--start", "2026-01-01T00:00:00Z")
    ok(cli, "ingest", str(write_events(tmp_path / "events.jsonl", EVENTS)))
    return cli


def lines(cli: Cli, period: str) -> dict[str, tuple[str, str]]:
    found = ok(cli, "invoice", "list", "--period", period)
    assert len(found) == 1, found
    shown = ok(cli, "invoice", "show", found[0]["number"])
    return {
        line["meter"]: (line["quantity"], line["amount"])
        for line in shown["lines"]
        if line["kind"] == "usage"
    }


def test_recurring_sum_and_unique_count_carry_over_between_periods(shop: Cli) -> None:
    for period, as_of in MONTHS.items():
        ok(shop, "run", "bill", "--period", period, "--as-of", f"{as_of}T01:00:00Z")
    assert lines(shop, "2026-01") == {"seats": ("15", "150.00"), "users": ("3", "30.00")}
    assert lines(shop, "2026-02") == {"seats": ("12", "120.00"), "users": ("3", "30.00")}
    assert lines(shop, "2026-03") == {"seats": ("12", "120.00"), "users": ("3", "30.00")}
    # the stored invoices recompute to themselves, and a rerun of every month changes nothing
    for period, as_of in MONTHS.items():
        verified = ok(shop, "invoice", "verify", "--period", period)
        assert (verified["checked"], verified["ok"], verified["mismatches"]) == (1, 1, 0)
        again = ok(shop, "run", "bill", "--period", period, "--as-of", f"{as_of}T01:00:00Z")
        assert (again["status"], again["changes"]) == ("unchanged", []), again


def test_a_line_counts_the_events_its_meter_reads(shop: Cli) -> None:
    """A unique_count line over a string property counts the period's events that name a
    value, removes included (u4, u5 and the removal u6 in February); the seats line counts
    the February change."""
    ok(shop, "run", "bill", "--period", "2026-02", "--as-of", "2026-03-01T01:00:00Z")
    found = ok(shop, "invoice", "list", "--period", "2026-02")
    shown = ok(shop, "invoice", "show", found[0]["number"])
    events = {line["meter"]: line["events"] for line in shown["lines"] if line["meter"]}
    assert events["users"] == {
        "count": 3, "first": "2026-02-02T00:00:00Z", "last": "2026-02-10T00:00:00Z"
    }  # fmt: skip
    assert events["seats"]["count"] == 1


def test_a_preview_shows_the_carried_value(shop: Cli) -> None:
    preview = ok(shop, "invoice", "preview", "c1", "--at", "2026-03-20T00:00:00Z")
    found = {line["meter"]: line["quantity"] for line in preview["lines"] if line["meter"]}
    assert found == {"seats": "12", "users": "3"}


def test_usage_show_charts_the_carried_value(shop: Cli) -> None:
    shown = ok(shop, "usage", "show", "c1", "--period", "2026-02", "--meter", "seats",
               "--as-of", "2026-03-05T00:00:00Z")  # fmt: skip
    (seats,) = shown["meters"]
    days = [bucket["quantity"] for bucket in seats["buckets"]]
    assert days[:9] == ["15"] * 9 and days[9:] == ["12"] * 19  # -3 on Feb 10
    assert seats["quantity"] == "12"
    assert seats["amount"] == "120.00"


def ingest(cli: Cli, path: Path, *args: str, code: int = 0) -> dict[str, Any]:
    result = cli("ingest", str(path), *args, "--project", "acme", "--json")
    assert result.exit_code == code, result.stderr
    summary: dict[str, Any] = result.json()
    return summary


def test_operations_in_every_format_and_their_rejects(shop: Cli, tmp_path: Path) -> None:
    csv = tmp_path / "more.csv"
    csv.write_text(
        "idempotency_key,customer,meter,timestamp,operation,properties.user\n"
        "c1,c1,users,2026-03-02T00:00:00Z,remove,u3\n"
        "c2,c1,users,2026-03-02T00:00:00Z,,u9\n"
        "c3,c1,users,2026-03-02T00:00:00Z,delete,u8\n"
    )
    summary = ingest(shop, csv, code=3)
    assert (summary["accepted"], summary["rejected"]) == (2, 1)
    (reject,) = summary["rejects"]
    assert reject["line"] == 3 + 1 and reject["reason"] == (
        'operation must be "add" or "remove", not \'delete\''
    )
    cloud = tmp_path / "more.ce.jsonl"
    cloud.write_bytes(
        orjson.dumps({"id": "ce1", "type": "users", "subject": "c1", "operation": "remove",
                      "time": "2026-03-03T00:00:00Z", "data": {"user": "u9"}}) + b"\n"
    )  # fmt: skip
    assert ingest(shop, cloud, "--format", "cloudevents")["accepted"] == 1
    # March: u1 and u4 present (u3 and u9 removed, u2 removed in February)
    ok(shop, "run", "bill", "--period", "2026-03", "--as-of", "2026-04-01T01:00:00Z")
    assert lines(shop, "2026-03")["users"] == ("2", "20.00")
    # a replay with another operation is a conflict; remove on a sum meter is refused
    bad = write_events(
        tmp_path / "bad.jsonl",
        [
            {**user("u6", "u2", "2026-02-10T00:00:00Z"), "operation": "add"},
            {**seat("s9", "1", "2026-03-05T00:00:00Z"), "operation": "remove"},
            {**user("u7", "u5", "2026-03-05T00:00:00Z"), "operation": 1},
        ],
    )
    summary = ingest(shop, bad, code=3)
    assert (summary["accepted"], summary["conflicts"], summary["rejected"]) == (0, 1, 2)
    reasons = {item["line"]: item["reason"] for item in summary["rejects"]}
    assert "conflicts with event 'u6'" in reasons[1]
    assert reasons[2] == (
        'operation "remove" applies to unique_count meters; meter seats is a sum '
        "(send a negative quantity to lower it)"
    )
    assert reasons[3] == 'operation must be "add" or "remove", not 1'
    # the original file replays as duplicates: "add" written out is the same event as omitted
    replay = write_events(tmp_path / "replay.jsonl", [{**user("u1", "u1", "2026-01-02T00:00:00Z"),
                                                       "operation": "add"}])  # fmt: skip
    assert ingest(shop, replay)["duplicates"] == 1


def test_an_events_export_ingests_back_with_its_removes(shop: Cli, tmp_path: Path) -> None:
    for fmt in ("jsonl", "csv"):
        path = tmp_path / f"events.{fmt}"
        result = shop("export", "events", "--output", str(path), "--project", "acme", "--quiet")
        assert result.exit_code == 0, result.stderr
        if fmt == "jsonl":
            rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
            removes = [row["idempotency_key"] for row in rows if row["operation"] == "remove"]
            assert removes == ["u6"]
        summary = ingest(shop, path)
        assert (summary["accepted"], summary["duplicates"]) == (0, len(EVENTS)), summary
