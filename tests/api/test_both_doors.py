"""The same tests of money and idempotency hold through both doors: the CLI run with a scoped
key (NERUBA_API_KEY) and the HTTP API (`neruba serve`) with the same key. Each scenario is
written once against tests/support/doors.py and runs through each door on each database:
replayed events never count twice and a conflicting payload never replaces the stored event,
a late event after finalization is billed as a correction, granted credit is spent by the
invoice and leaves the wallet, and one shop built through the CLI and one built through HTTP
bill exactly the same money."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import catalogs
from tests.support.api import key
from tests.support.cli import Cli, ok
from tests.support.doors import ALL_SCOPES, COUNTS, CliDoor, Door, HttpDoor, money_view

PERIOD = "2026-10"
AS_OF = "2026-11-02T00:00:00Z"
START = "2026-10-01T00:00:00Z"
# Plan pro: 20.00 a month in arrears; api_calls 0.10 each; tokens (the sum of
# properties.tokens) 0.001 each past 100 free.
CATALOG = catalogs.catalog(
    meters=[
        catalogs.meter("api_calls", "count"),
        catalogs.meter("tokens", "sum", field="properties.tokens"),
    ],
    plans=[
        catalogs.plan(
            "pro",
            "20.00",
            catalogs.per_unit("api_calls", "0.10"),
            catalogs.per_unit("tokens", "0.001", free_units=100),
            name="Pro",
            proration="day",
        )
    ],
)


def call(n: int, customer: str = "c1", day: int = 3) -> dict[str, Any]:
    return {
        "idempotency_key": f"{customer}-call-{n}",
        "customer": customer,
        "meter": "api_calls",
        "timestamp": f"2026-10-{day:02d}T{n % 24:02d}:00:00Z",
    }


def tokens(n: int, amount: int, customer: str = "c1") -> dict[str, Any]:
    return {
        "idempotency_key": f"{customer}-tok-{n}",
        "customer": customer,
        "meter": "tokens",
        "timestamp": f"2026-10-{10 + n:02d}T08:00:00Z",
        "properties": {"tokens": amount},
    }


def project(cli: Cli, tmp_path: Path, slug: str) -> str:
    """Project `slug` (UTC, the catalog above); the secret of a key that may do what an
    application does: ingest, read, create customers, grant credit."""
    made = cli("project", "create", slug, "--timezone", "UTC")
    assert made.exit_code == 0, made.stderr
    catalogs.apply_catalog(cli, tmp_path, CATALOG, project=slug, name=f"{slug}.toml")
    return key(cli, *ALL_SCOPES, project=slug)


def run_bill(cli: Cli, *extra: str, slug: str = "acme") -> dict[str, Any]:
    """The operator bills October (`neruba run bill`); its report."""
    return dict(ok(cli, "run", "bill", "--period", PERIOD, "--as-of", AS_OF, *extra, project=slug))


def subscribe(cli: Cli, door: Door, customer: str, slug: str = "acme") -> None:
    """The door creates the customer, the operator puts it on plan pro from October 1st."""
    created = door.create_customer(customer)
    assert (created["external_id"], created["currency"]) == (customer, "USD")
    ok(cli, "subscription", "create", customer, "pro", "--start", START, project=slug)


@pytest.fixture(params=["cli", "http"])
def door(request: pytest.FixtureRequest, cli: Cli, serve: Any, tmp_path: Path) -> Iterator[Door]:
    """Project acme (the catalog above) and a door into it with an application's key."""
    secret = project(cli, tmp_path, "acme")
    if request.param == "cli":
        yield CliDoor(cli, secret, tmp_path)
        return
    opened = HttpDoor(serve(cli.db_url), secret)
    yield opened
    opened.close()


def counts(
    accepted: int = 0, duplicates: int = 0, conflicts: int = 0, rejected: int = 0
) -> dict[str, int]:
    return {
        "accepted": accepted,
        "duplicates": duplicates,
        "conflicts": conflicts,
        "rejected": rejected,
    }


def counted(answer: dict[str, Any]) -> dict[str, int]:
    return {name: answer[name] for name in COUNTS}


def lines_by_meter(document: dict[str, Any]) -> dict[str | None, tuple[Any, str]]:
    return {line["meter"]: (line["quantity"], line["amount"]) for line in document["lines"]}


def only_invoice(door: Door, **filters: str) -> dict[str, Any]:
    rows = door.invoices(period=PERIOD, **filters)
    assert len(rows) == 1, rows
    return door.invoice(rows[0]["number"])


def test_replayed_events_count_once_and_a_conflict_keeps_the_stored_event(
    cli: Cli, door: Door
) -> None:
    subscribe(cli, door, "c1")
    events = [call(n) for n in range(5)] + [tokens(1, 300), tokens(2, 200)]
    assert counted(door.ingest(events)) == counts(accepted=7)
    assert counted(door.ingest(events)) == counts(duplicates=7)
    assert counted(door.ingest([events[0]])) == counts(duplicates=1)  # one event alone
    changed = {**events[5], "properties": {"tokens": 9999}}
    assert counted(door.ingest([changed])) == counts(conflicts=1)
    # the good event of a batch is kept beside the conflict
    assert counted(door.ingest([changed, call(5)])) == counts(accepted=1, conflicts=1)
    assert counted(door.ingest([call(6), call(6)])) == counts(accepted=1, duplicates=1)
    unknown = {**call(7), "meter": "api_cals"}  # no such meter: rejected, never stored
    assert counted(door.ingest([unknown])) == counts(rejected=1)
    assert counted(door.ingest([unknown, call(7)])) == counts(accepted=1, rejected=1)

    (preview,) = door.usage("c1", "2026-10-20T00:00:00Z")
    assert lines_by_meter(preview)["api_calls"] == ("8", "0.80")
    assert lines_by_meter(preview)["tokens"] == ("500", "0.40")  # 300 + 200, the first 100 free

    run_bill(cli)
    invoice = only_invoice(door)
    assert lines_by_meter(invoice) == {
        None: (None, "20.00"),
        "api_calls": ("8", "0.80"),
        "tokens": ("500", "0.40"),
    }
    assert (invoice["status"], invoice["subtotal"], invoice["total"]) == ("draft", "21.20", "21.20")


def test_a_late_event_after_finalization_is_billed_as_a_correction(cli: Cli, door: Door) -> None:
    subscribe(cli, door, "c1")
    assert door.ingest([call(n) for n in range(3)])["accepted"] == 3
    original = run_bill(cli, "--finalize")["finalized"][0]

    late = door.ingest([call(3, day=30), tokens(4, 150)])
    assert counted(late) == counts(accepted=2)
    assert [stale["number"] for stale in late["stale_invoices"]] == [original]
    again = door.ingest([call(3, day=30)])
    assert counted(again) == counts(duplicates=1)

    report = run_bill(cli)
    assert report["corrections"] == 1, report
    rows = door.invoices(period=PERIOD)
    assert len(rows) == 2
    assert rows[0]["number"] == original
    correction = door.invoice(rows[1]["number"])
    assert correction["corrects"] == original
    assert door.invoice(original)["total"] == "20.30"  # a finalized invoice never changes
    assert (correction["subtotal"], correction["total"]) == ("0.15", "0.15")  # 0.10 + 0.05
    explained = door.explain(correction["number"])
    assert explained["number"] == correction["number"]
    assert sum(Decimal(line["amount"]) for line in explained["lines"]) == Decimal("0.15")


def test_granted_credit_is_spent_by_the_invoice_and_leaves_the_wallet(cli: Cli, door: Door) -> None:
    subscribe(cli, door, "c1")
    granted = door.grant("c1", "15.00", "grant-1")
    assert granted == {
        "customer": "c1",
        "amount": "15.00",
        "remaining": "15.00",
        "currency": "USD",
        "priority": 1,
        "category": "promotional",
        "status": "active",
    }
    assert door.grant("c1", "15.00", "grant-1") == granted  # the same key: one grant
    assert door.wallet("c1")["balance"] == "15.00"
    assert door.charge("c1", "2.50", "Onboarding", "setup-1", "2026-10-05T00:00:00Z") == "accepted"
    assert door.charge("c1", "2.50", "Onboarding", "setup-1", "2026-10-05T00:00:00Z") == "duplicate"
    assert door.ingest([call(n) for n in range(3)])["accepted"] == 3

    run_bill(cli, "--finalize")
    invoice = only_invoice(door)
    assert (invoice["subtotal"], invoice["credits_applied"], invoice["total"]) == (
        "22.80",  # 20.00 + 3 calls at 0.10 + the 2.50 charge
        "15.00",
        "7.80",
    )
    assert [paid["amount"] for paid in invoice["credits"]] == ["15.00"]
    wallet = door.wallet("c1")
    assert wallet["balance"] == "0.00"
    assert [(g["amount"], g["remaining"], g["status"]) for g in wallet["grants"]] == [
        ("15.00", "0.00", "used")
    ]
    assert door.wallet("c1", as_of="2026-10-31T00:00:00Z")["balance"] == "0.00"


# --------------------------------------------------------------------------- one shop, two doors


def build(cli: Cli, door: Door, slug: str) -> None:
    """The same shop, whichever door: two customers, usage with replays and a conflict,
    a charge, a grant, October billed and finalized, a late event corrected."""
    for customer in ("c1", "c2"):
        subscribe(cli, door, customer, slug)
    usage = [call(n) for n in range(12)] + [call(n, "c2", day=20) for n in range(4)]
    usage += [tokens(1, 250), tokens(2, 90, "c2")]
    door.ingest(usage)
    door.ingest(usage[:5])
    door.ingest([usage[0]])
    door.ingest([{**usage[-1], "properties": {"tokens": 5}}])  # a conflict: ignored
    door.charge("c2", "4.25", "Migration", "mig-1", "2026-10-07T00:00:00Z")
    door.grant("c1", "5.00", "welcome")
    run_bill(cli, "--finalize", slug=slug)
    door.ingest([call(40, day=31)])
    run_bill(cli, slug=slug)


def test_a_shop_built_through_either_door_bills_the_same_invoices(
    cli: Cli, serve: Any, tmp_path: Path
) -> None:
    through_cli = project(cli, tmp_path, "acme")
    through_http = project(cli, tmp_path, "beta")
    server = serve(cli.db_url)
    doors = {
        "acme": (CliDoor(cli, through_cli, tmp_path), HttpDoor(server, through_cli)),
        "beta": (CliDoor(cli, through_http, tmp_path), HttpDoor(server, through_http)),
    }
    build(cli, doors["acme"][0], "acme")
    build(cli, doors["beta"][1], "beta")

    views = {}
    for slug, (by_cli, by_http) in doors.items():
        listed = by_cli.invoices()
        assert by_http.invoices() == listed
        assert len(listed) == 3  # c1, c2 and c1's correction
        documents = []
        for row in listed:
            shown = by_cli.invoice(row["number"])
            assert by_http.invoice(row["number"]) == shown  # the same JSON, ids and all
            explained = by_cli.explain(row["number"])
            assert by_http.explain(row["number"]) == explained
            documents.append((money_view(shown), money_view(explained)))
        for customer in ("c1", "c2"):
            moment = "2026-11-15T00:00:00Z"
            assert by_http.wallet(customer, moment) == by_cli.wallet(customer, moment)
        views[slug] = documents
        by_http.close()
    assert views["acme"] == views["beta"]
    totals = [(shown["customer"], shown["total"]) for shown, _ in views["acme"]]
    assert totals == [("c1", "16.35"), ("c2", "24.65"), ("c1", "0.10")]


# --------------------------------------------------------------------------- property

POOL = [call(n) for n in range(6)] + [call(n, "c2") for n in range(4)]
POOL += [tokens(n, 60 * n) for n in range(1, 4)] + [tokens(n, 75, "c2") for n in range(1, 3)]

# A delivery: a list of sends, each one event (POST /v1/events) or a batch, events repeating.
deliveries = st.lists(
    st.one_of(
        st.integers(0, len(POOL) - 1).map(lambda i: [i]),
        st.lists(st.integers(0, len(POOL) - 1), min_size=2, max_size=8).map(list),
    ),
    min_size=1,
    max_size=6,
)


def expected_totals(sent: set[int]) -> dict[str, Decimal]:
    """An independent biller: 20.00 + 0.10 a call + 0.001 a token past 100."""
    totals = {}
    for customer in ("c1", "c2"):
        events = [POOL[i] for i in sent if POOL[i]["customer"] == customer]
        calls = sum(1 for e in events if e["meter"] == "api_calls")
        used = sum(e["properties"]["tokens"] for e in events if e["meter"] == "tokens")
        totals[customer] = (
            Decimal("20.00")
            + Decimal("0.10") * calls
            + max(Decimal(0), Decimal(used - 100) * Decimal("0.001"))
        )
    return totals


def test_events_sent_over_http_bill_as_the_same_events_ingested_by_the_cli(
    cli: Cli, serve: Any, tmp_path: Path
) -> None:
    server = serve(cli.db_url)
    shops = itertools.count(1)

    @settings(max_examples=4, database=None)
    @given(deliveries)
    def sent_either_way(delivery: list[list[int]]) -> None:
        number = next(shops)
        by_http = HttpDoor(server, project(cli, tmp_path, f"http{number}"))
        by_cli = CliDoor(cli, project(cli, tmp_path, f"cli{number}"), tmp_path)
        for door, slug in ((by_http, f"http{number}"), (by_cli, f"cli{number}")):
            for customer in ("c1", "c2"):
                subscribe(cli, door, customer, slug)
        seen: set[int] = set()
        for send in delivery:
            answer = by_http.ingest([POOL[i] for i in send])
            fresh = len(set(send) - seen)
            assert counted(answer) == counts(accepted=fresh, duplicates=len(send) - fresh)
            seen |= set(send)
        # the CLI gets every send as one file, in the same order
        everything = [POOL[i] for send in delivery for i in send]
        assert by_cli.ingest(everything)["accepted"] == len(seen)
        billed = {}
        for door, slug in ((by_http, f"http{number}"), (by_cli, f"cli{number}")):
            run_bill(cli, slug=slug)
            billed[slug.rstrip("0123456789")] = {
                row["customer"]: row["total"] for row in door.invoices()
            }
        by_http.close()
        assert billed["http"] == billed["cli"]
        assert {c: Decimal(t) for c, t in billed["http"].items()} == expected_totals(seen)

    sent_either_way()
