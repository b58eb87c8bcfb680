"""`neruba usage show` end to end on every dialect: buckets counted by hand, and a projection
that is exactly what `invoice preview`, or the billed invoice, says.

The shop: project acme (UTC); plan pro is 49.00 a month in arrears plus api_calls at 0.10 a
unit. c1 lives in New York (UTC-4 in October), c2 in UTC; both are on pro from September 1st
(their local midnight). Meters: api_calls (sum of quantity, priced); not priced: users
(unique_count of properties.user), seats (weighted_sum, recurring), peak (max), storage (latest
of properties.gb), disk (weighted_sum, absolute gauge).

c1's October by hand, in New York days:
  api_calls  Oct 1: 10 + 5 (the 5 at 03:30Z is still 23:30 on Oct 1)     2 events, 15
             Oct 3: 20 + 20 (both 08:xx local) + 2.5 (09:00 local)      3 events, 42.5
             Oct 31: 7 (03:00Z on Nov 1 is 23:00 on Oct 31)             1 event,  7
             64.5 → 6.45; the 1000 at 03:59:59Z on Oct 1 is September's (Sep 30 local).
  users      Oct 5: a, b; Oct 6: a → 2 and 1 per day, 2 distinct in the month
  seats      +2 at Oct 11 00:00 local, -1 at Oct 21 12:00 local: 0 for 10 days, 2 for 10, 1.5
             on Oct 21, 1 for 10; the month 31.5 seat-days / 31 = 1.016129032258; November
             opens at 1 (recurring).
  peak       Oct 8: 4 then 9 → 9; Oct 12: 6; the month 9
  storage    Oct 7: 5 then 3 → 3; Oct 9: one event without gb → 0; the month's last value 3
  disk       10 from Oct 15 12:00 local, 4 from Oct 16 00:00: Oct 15 averages 5, then 4;
             the month (10 × 0.5 + 4 × 16) / 31 = 2.225806451613
  October invoice 49.00 + 6.45 = 55.45; September 49.00 + 1000 × 0.10 = 149.00.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.catalogs import catalog, meter, per_unit, plan
from tests.support.cli import Cli, fails, ok

CATALOG = catalog(
    meters=[
        meter("api_calls", "sum"),
        meter("users", "unique_count", field="properties.user"),
        meter("seats", "weighted_sum", name="Seats", recurring=True, allow_negative=True),
        meter("peak", "max"),
        meter("storage", "latest", field="properties.gb"),
        meter("disk", "weighted_sum", gauge="absolute"),
    ],
    plans=[plan("pro", "49.00", per_unit("api_calls", "0.10"), name="Pro", proration="day")],
)

EVENTS: list[tuple[str, str, str, str, dict[str, Any] | None]] = [
    ("s1", "api_calls", "2026-10-01T03:59:59Z", "1000", None),
    ("a1", "api_calls", "2026-10-01T04:00:00Z", "10", None),
    ("a2", "api_calls", "2026-10-02T03:30:00Z", "5", None),
    ("a3", "api_calls", "2026-10-03T12:00:00Z", "20", None),
    ("a4", "api_calls", "2026-10-03T12:30:00Z", "20", None),
    ("a5", "api_calls", "2026-10-03T13:00:00Z", "2.5", None),
    ("a6", "api_calls", "2026-11-01T03:00:00Z", "7", None),
    ("n1", "api_calls", "2026-11-01T04:30:00Z", "3", None),
    ("u1", "users", "2026-10-05T15:00:00Z", "1", {"user": "a"}),
    ("u2", "users", "2026-10-05T16:00:00Z", "1", {"user": "b"}),
    ("u3", "users", "2026-10-06T15:00:00Z", "1", {"user": "a"}),
    ("p1", "seats", "2026-10-11T04:00:00Z", "2", None),
    ("p2", "seats", "2026-10-21T16:00:00Z", "-1", None),
    ("m1", "peak", "2026-10-08T14:00:00Z", "4", None),
    ("m2", "peak", "2026-10-08T15:00:00Z", "9", None),
    ("m3", "peak", "2026-10-12T15:00:00Z", "6", None),
    ("g1", "storage", "2026-10-07T14:00:00Z", "1", {"gb": "5"}),
    ("g2", "storage", "2026-10-07T20:00:00Z", "1", {"gb": 3}),
    ("g3", "storage", "2026-10-09T14:00:00Z", "1", {}),
    ("d1", "disk", "2026-10-15T16:00:00Z", "10", None),
    ("d2", "disk", "2026-10-16T04:00:00Z", "4", None),
]
OCTOBER_AS_OF = "2026-10-20T00:00:00Z"
MEMBER_KEYS = {"meter", "name", "aggregation", "field", "buckets", "events", "quantity", "amount"}
PROJECTION_KEYS = {
    "as_of",
    "source",
    "currency",
    "subtotal",
    "credits_applied",
    "total",
    "lines",
    "invoices",
}


def usage(cli: Cli, customer: str, *args: str) -> dict[str, Any]:
    return dict(ok(cli, "usage", "show", customer, *args))


def meter(view: dict[str, Any], code: str) -> dict[str, Any]:
    (found,) = [m for m in view["meters"] if m["meter"] == code]
    return dict(found)


def nonzero(found: dict[str, Any]) -> dict[str, tuple[int, str]]:
    """label → (events, quantity) of the buckets that are not empty."""
    return {
        b["label"]: (b["events"], b["quantity"])
        for b in found["buckets"]
        if b["events"] or b["quantity"] != "0"
    }


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> Cli:
    assert cli("project", "create", "acme", "--timezone", "UTC").exit_code == 0
    for external, tz in (("c1", "America/New_York"), ("c2", "UTC")):
        created = ok(cli, "customer", "create", external, "--currency", "USD", "--timezone", tz)
        assert created["external_id"] == external
    (tmp_path / "catalog.toml").write_text(CATALOG)
    ok(cli, "catalog", "apply", str(tmp_path / "catalog.toml"))
    ok(cli, "subscription", "create", "c1", "pro", "--start", "2026-09-01T00:00:00-04:00")
    ok(cli, "subscription", "create", "c2", "pro", "--start", "2026-09-01T00:00:00Z")
    lines = [
        orjson.dumps(
            {
                "idempotency_key": key,
                "customer": "c1",
                "meter": code,
                "timestamp": ts,
                "quantity": quantity,
                "properties": properties or {},
            }
        ).decode()
        for key, code, ts, quantity, properties in EVENTS
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    report = ok(cli, "ingest", str(tmp_path / "events.jsonl"))
    assert (report["accepted"], report["rejected"]) == (len(EVENTS), 0)
    return cli


def test_day_buckets_are_the_customers_local_days_with_the_empty_ones(shop: Cli) -> None:
    view = usage(shop, "c1", "--period", "2026-10", "--as-of", OCTOBER_AS_OF)
    assert set(view) == {"customer", "timezone", "period", "by", "meters", "projection"}
    assert (view["customer"], view["timezone"], view["by"]) == ("c1", "America/New_York", "day")
    assert view["period"] == {
        "label": "2026-10",
        "start": "2026-10-01T04:00:00Z",
        "end": "2026-11-01T04:00:00Z",
    }
    assert [m["meter"] for m in view["meters"]] == [
        "api_calls",
        "disk",
        "peak",
        "seats",
        "storage",
        "users",
    ]
    calls = meter(view, "api_calls")
    assert set(calls) == MEMBER_KEYS
    assert (calls["aggregation"], calls["field"], calls["name"]) == ("sum", "quantity", None)
    days = calls["buckets"]
    assert len(days) == 31 and [b["label"] for b in days[:2]] == ["2026-10-01", "2026-10-02"]
    assert days[0] == {
        "start": "2026-10-01T04:00:00Z",
        "end": "2026-10-02T04:00:00Z",
        "label": "2026-10-01",
        "events": 2,
        "quantity": "15",
    }
    assert days[-1]["end"] == view["period"]["end"]
    assert all(a["end"] == b["start"] for a, b in pairwise(days))
    assert days[1] == {**days[1], "events": 0, "quantity": "0"}  # an empty day is there
    assert nonzero(calls) == {
        "2026-10-01": (2, "15"),
        "2026-10-03": (3, "42.5"),
        "2026-10-31": (1, "7"),
    }
    assert (calls["events"], calls["quantity"], calls["amount"]) == (6, "64.5", "6.45")

    users = meter(view, "users")  # distinct per day; the month's distinct count is not a sum
    assert nonzero(users) == {"2026-10-05": (2, "2"), "2026-10-06": (1, "1")}
    assert (users["events"], users["quantity"], users["amount"]) == (3, "2", None)

    seats = meter(view, "seats")  # the average level of each day; the month's average
    by_day = {b["label"]: b["quantity"] for b in seats["buckets"]}
    assert by_day["2026-10-10"] == "0" and by_day["2026-10-11"] == "2"
    assert (by_day["2026-10-20"], by_day["2026-10-21"], by_day["2026-10-22"]) == ("2", "1.5", "1")
    assert by_day["2026-10-31"] == "1"
    assert (seats["events"], seats["quantity"], seats["name"]) == (2, "1.016129032258", "Seats")

    peak = meter(view, "peak")
    assert nonzero(peak) == {"2026-10-08": (2, "9"), "2026-10-12": (1, "6")}
    assert (peak["events"], peak["quantity"]) == (3, "9")
    storage = meter(view, "storage")  # the day's last value; g3 has none, so Oct 9 is 0
    assert nonzero(storage) == {"2026-10-07": (2, "3"), "2026-10-09": (1, "0")}
    assert (storage["events"], storage["quantity"]) == (3, "3")
    disk = {b["label"]: b["quantity"] for b in meter(view, "disk")["buckets"]}
    assert (disk["2026-10-14"], disk["2026-10-15"], disk["2026-10-16"]) == ("0", "5", "4")
    assert disk["2026-10-31"] == "4" and meter(view, "disk")["quantity"] == "2.225806451613"


def test_hour_buckets_and_a_fall_back_night(shop: Cli) -> None:
    view = usage(shop, "c1", "--period", "2026-10", "--by", "hour", "--meter", "api_calls",
                 "--as-of", OCTOBER_AS_OF)  # fmt: skip
    assert view["by"] == "hour" and [m["meter"] for m in view["meters"]] == ["api_calls"]
    hours = view["meters"][0]["buckets"]
    assert len(hours) == 31 * 24
    assert hours[0]["start"] == "2026-10-01T04:00:00Z" and hours[0]["label"] == "2026-10-01 00:00"
    assert nonzero(view["meters"][0]) == {
        "2026-10-01 00:00": (1, "10"),
        "2026-10-01 23:00": (1, "5"),
        "2026-10-03 08:00": (2, "40"),
        "2026-10-03 09:00": (1, "2.5"),
        "2026-10-31 23:00": (1, "7"),
    }
    november = usage(shop, "c1", "--period", "2026-11", "--by", "hour", "--meter", "api_calls",
                     "--as-of", "2026-11-05T00:00:00Z")  # fmt: skip
    hours = november["meters"][0]["buckets"]
    assert len(hours) == 30 * 24 + 1  # New York's clocks fall back on November 1st
    assert [b["label"] for b in hours[1:3]] == ["2026-11-01 01:00-04:00", "2026-11-01 01:00-05:00"]
    assert nonzero(november["meters"][0]) == {"2026-11-01 00:00": (1, "3")}


def test_meter_filter_and_a_recurring_gauge_carried_into_the_next_month(shop: Cli) -> None:
    view = usage(shop, "c1", "--period", "2026-11", "--meter", "seats",
                 "--as-of", "2026-11-05T00:00:00Z")  # fmt: skip
    (seats,) = view["meters"]
    assert seats["meter"] == "seats" and len(seats["buckets"]) == 30
    assert {b["quantity"] for b in seats["buckets"]} == {"1"}  # the level October left
    assert (seats["events"], seats["quantity"], seats["amount"]) == (0, "1", None)
    assert view["projection"]["total"] == "49.30"  # the projection is the customer's, whole


def test_the_projection_of_an_open_month_is_invoice_preview_at_the_same_moment(shop: Cli) -> None:
    view = usage(shop, "c1", "--period", "2026-10", "--as-of", OCTOBER_AS_OF)
    preview = ok(shop, "invoice", "preview", "c1", "--at", OCTOBER_AS_OF)
    projection = view["projection"]
    assert set(projection) == PROJECTION_KEYS
    assert (projection["source"], projection["as_of"]) == ("preview", OCTOBER_AS_OF)
    for key in ("currency", "subtotal", "credits_applied", "total"):
        assert projection[key] == preview[key]
    assert projection["total"] == "55.45"
    assert [(line["description"], line["meter"], line["quantity"], line["amount"])
            for line in projection["lines"]] == [
        (line["description"], line["meter"], line["quantity"], line["amount"])
        for line in preview["lines"]
    ]  # fmt: skip
    assert [line["amount"] for line in projection["lines"]] == ["49.00", "6.45"]
    assert projection["invoices"] == [
        {
            "number": None,
            "kind": "invoice",
            "status": "preview",
            "label": "2026-10",
            "period": {"start": view["period"]["start"], "end": view["period"]["end"]},
            "total": "55.45",
        }
    ]


def test_an_ended_month_shows_what_a_run_would_bill_then_the_invoice(shop: Cli) -> None:
    before = usage(shop, "c1", "--period", "previous", "--as-of", "2026-10-05T00:00:00Z")
    assert before["period"]["label"] == "2026-09"
    projection = before["projection"]
    assert (projection["source"], projection["as_of"]) == ("run", before["period"]["end"])
    assert (projection["total"], projection["invoices"][0]["number"]) == ("149.00", None)
    assert nonzero(meter(before, "api_calls")) == {"2026-09-30": (1, "1000")}

    bill = ok(shop, "run", "bill", "--period", "2026-09", "--as-of", "2026-10-02T00:00:00Z",
              "--finalize")  # fmt: skip
    assert bill["status"] == "completed"
    (number,) = [i["number"] for i in ok(shop, "invoice", "list", "--customer", "c1")]
    invoice = ok(shop, "invoice", "show", number)
    after = usage(shop, "c1", "--period", "2026-09", "--as-of", "2026-10-05T00:00:00Z")
    billed = after["projection"]
    assert billed["source"] == "invoice"
    assert (billed["total"], billed["subtotal"]) == (invoice["total"], invoice["subtotal"])
    assert billed["total"] == projection["total"] == "149.00"
    assert billed["invoices"] == [
        {
            "number": number,
            "kind": "invoice",
            "status": invoice["status"],
            "label": "2026-09",
            "period": invoice["period"],
            "total": "149.00",
        }
    ]
    assert {line["invoice"] for line in billed["lines"]} == {number}
    assert meter(after, "api_calls")["amount"] == "100.00"

    ok(shop, "invoice", "void", number, "--reason", "test", "--yes")
    voided = usage(shop, "c1", "--period", "2026-09", "--as-of", "2026-10-05T00:00:00Z")
    assert voided["projection"]["source"] == "run"  # a void invoice bills nothing


def test_a_month_without_events_has_empty_buckets_and_still_a_projection(shop: Cli) -> None:
    view = usage(shop, "c2", "--period", "2026-10", "--as-of", OCTOBER_AS_OF)
    assert view["period"]["start"] == "2026-10-01T00:00:00Z"
    (calls,) = view["meters"]  # the priced meter, though nothing was used
    assert calls["meter"] == "api_calls" and len(calls["buckets"]) == 31
    assert nonzero(calls) == {} and (calls["events"], calls["quantity"]) == (0, "0")
    assert (calls["amount"], view["projection"]["total"]) == ("0.00", "49.00")


def test_without_subscription_the_projection_is_empty(shop: Cli) -> None:
    ok(shop, "customer", "create", "c3", "--currency", "EUR")
    view = usage(shop, "c3", "--period", "2026-10", "--as-of", OCTOBER_AS_OF)
    assert view["meters"] == []
    projection = view["projection"]
    assert (projection["currency"], projection["total"], projection["lines"]) == ("EUR", "0.00", [])
    human = shop("usage", "show", "c3", "--period", "2026-10", "--project", "acme")
    assert human.exit_code == 0 and "No metered usage" in human.stdout


def test_default_period_is_the_current_month(shop: Cli) -> None:
    view = usage(shop, "c2")
    now = datetime.now(UTC)
    assert view["period"]["label"] == now.strftime("%Y-%m") and view["by"] == "day"
    assert view["projection"]["source"] == "preview"


def test_an_unknown_customer_or_meter_exits_1(shop: Cli) -> None:
    error = fails(shop, 1, "usage", "show", "nobody")
    assert error["type"] == "not_found" and "nobody" in error["message"]
    error = fails(shop, 1, "usage", "show", "c1", "--meter", "ghost")
    assert error["type"] == "not_found" and "ghost" in error["message"]
    assert "api_calls" in error["hint"]


def test_a_bad_bucket_size_period_or_moment_exits_2(shop: Cli) -> None:
    for args, message in [
        (("--by", "week"), "--by: 'week' is not a bucket size"),
        (("--period", "2026-13"), "--period: '2026-13' is not a month"),
        (("--as-of", "2026-10-01"), "--as-of: '2026-10-01' has no time-zone offset"),
    ]:
        for customer in ("c1", "nobody"):  # the value is refused before the customer is sought
            error = fails(shop, 2, "usage", "show", customer, *args)
            assert (error["type"], error["message"]) == ("usage_error", message), args


@pytest.mark.parametrize("columns", ["80", "120"])
def test_the_human_output_draws_bars_and_the_projected_amount(shop: Cli, columns: str) -> None:
    args = ("--period", "2026-10", "--as-of", OCTOBER_AS_OF, "--meter", "api_calls")
    terminal = {"COLUMNS": columns, "TTY_COMPATIBLE": "1"}  # off a terminal rows are unwrapped
    result = shop("usage", "show", "c1", *args, "--project", "acme", env=terminal)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "\x1b[" not in out  # NO_COLOR: plain text
    lines = out.splitlines()
    assert all(len(line) <= int(columns) for line in lines)
    (oct3,) = [line for line in lines if line.startswith("2026-10-03 ")]
    (oct1,) = [line for line in lines if line.startswith("2026-10-01 ")]
    (oct2,) = [line for line in lines if line.startswith("2026-10-02 ")]
    assert oct3.split()[-2:] == ["42.5", "3"] and oct2.split()[-2:] == ["0", "0"]
    assert "█" not in oct2
    assert oct3.count("█") > oct1.count("█") > 0  # the largest day has the longest bar
    assert "events 6 · quantity 64.5 · projected 6.45 USD" in out
    assert "projected total" in out and "55.45 USD" in out
    assert "c1 · 2026-10 in America/New_York · by day" in out
