"""weighted_sum over part of a billing period, through the CLI on every dialect: the level-seconds
are divided by the seconds of the full period the invoice covers (DESIGN: "seconds in the full
period"), never by the subscription's own window.

The shop: meter seats (weighted_sum, delta gauge, recurring: a piece opens at the level before
it); plan team prices it at 0.01 a seat, plan scale at 0.02, both with no base fee. March 2026
has 31 days (UTC).

By hand:
  c1 starts on team on Mar 5, 2500 seats from Mar 5 00:00 to the period end:
     2500 × 27/31 = 2177.419354838709… → 2177.41935483871 (12 places) → 21.77 (not 2500 → 25.00).
  c2 starts on team on Mar 1 with 2500 seats and moves to scale on Mar 5:
     team  2500 × 4/31  = 322.58064516129  → 3.23
     scale 2500 × 27/31 = 2177.41935483871 → 43.55; the two quantities add up to 2500.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.catalogs import catalog, meter, per_unit, plan
from tests.support.cli import Cli, ok

CATALOG = catalog(
    meters=[meter("seats", "weighted_sum", recurring=True)],
    plans=[
        plan("team", "0.00", per_unit("seats", "0.01")),
        plan("scale", "0.00", per_unit("seats", "0.02")),
    ],
)
AS_OF = "2026-04-02T00:00:00Z"


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> Cli:
    assert cli("project", "create", "acme").exit_code == 0
    (tmp_path / "catalog.toml").write_text(CATALOG)
    ok(cli, "catalog", "apply", str(tmp_path / "catalog.toml"))
    for customer in ("c1", "c2"):
        ok(cli, "customer", "create", customer)
    ok(cli, "subscription", "create", "c1", "team", "--start", "2026-03-05T00:00:00Z")
    sub = ok(cli, "subscription", "create", "c2", "team", "--start", "2026-03-01T00:00:00Z")
    ok(cli, "subscription", "change", sub["id"], "--plan", "scale", "--at", "2026-03-05T00:00:00Z")
    events = [
        {"idempotency_key": "s1", "customer": "c1", "meter": "seats", "quantity": "2500",
         "timestamp": "2026-03-05T00:00:00Z"},
        {"idempotency_key": "s2", "customer": "c2", "meter": "seats", "quantity": "2500",
         "timestamp": "2026-03-01T00:00:00Z"},
    ]  # fmt: skip
    path = tmp_path / "seats.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(event) for event in events) + b"\n")
    ok(cli, "ingest", str(path))
    return cli


def seat_lines(cli: Cli, customer: str) -> list[tuple[str, str]]:
    found = [
        row
        for row in ok(cli, "invoice", "list", "--period", "2026-03")
        if row["customer"] == customer
    ]
    assert len(found) == 1, found
    shown = ok(cli, "invoice", "show", found[0]["number"])
    return [
        (line["quantity"], line["amount"]) for line in shown["lines"] if line["meter"] == "seats"
    ]


def test_a_subscription_starting_mid_period_bills_its_share_of_the_period(shop: Cli) -> None:
    preview = ok(shop, "invoice", "preview", "c1", "--at", "2026-03-20T00:00:00Z")
    assert _seat_amounts(preview) == [("2177.41935483871", "21.77")]
    ok(shop, "run", "bill", "--period", "2026-03", "--as-of", AS_OF)
    assert seat_lines(shop, "c1") == [("2177.41935483871", "21.77")]


def test_a_plan_change_mid_period_splits_the_period_by_the_same_divisor(shop: Cli) -> None:
    ok(shop, "run", "bill", "--period", "2026-03", "--as-of", AS_OF)
    lines = seat_lines(shop, "c2")
    assert lines == [("322.58064516129", "3.23"), ("2177.41935483871", "43.55")]
    assert sum(Decimal(quantity) for quantity, _ in lines) == 2500
    # the stored invoices recompute to themselves, and a rerun changes nothing
    verified = ok(shop, "invoice", "verify", "--period", "2026-03")
    assert (verified["checked"], verified["ok"], verified["mismatches"]) == (2, 2, 0)
    again = ok(shop, "run", "bill", "--period", "2026-03", "--as-of", AS_OF)
    assert (again["status"], again["changes"]) == ("unchanged", [])


def _seat_amounts(preview: Any) -> list[tuple[str, str]]:
    return [
        (line["quantity"], line["amount"]) for line in preview["lines"] if line["meter"] == "seats"
    ]
