"""Shops several suites bill against: a project, its customers, a catalog, subscriptions and
usage, set up through the CLI the way an operator would.

- `invoice_shop`: acme (UTC); plan pro (49.00 in arrears; api_calls graduated, the first 10
  free then 0.50; tokens 0.001 each past 100 free) for c1 from October 1st, and plan basic
  (10.00 in arrears prorated by day; api_calls 0.10 each) for c2 from October 16th; October's
  events ingested and billed (drafts: c1 56.75, c2 5.56), November's calls of c1 ingested.
- `retention_shop`: acme (UTC); plan pro (10.00 in arrears; eu_calls counts events whose
  region is "eu", 0.10 each; tokens sums properties.tokens at 0.001) for c1 and c2 from
  2025-10-01, events carrying personal extras (PERSONAL) that no meter reads; 2025-10 billed
  and finalized, 2025-11 left as drafts, 2025-12 finalized then a late event with no rerun.
- `subscribed_shop`: acme (UTC) with N customers cNN on one plan from October (n % 28) + 1,
  so every October invoice has its own total; optionally their api_calls usage.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, select

from neruba_cli.db.schema import Customer, Invoice
from tests.support import catalogs
from tests.support.cli import Cli, ok
from tests.support.events import Ev, event_line, ingest, write_jsonl


def bill(cli: Cli, period: str, as_of: str, *extra: str) -> dict[str, Any]:
    """`neruba run bill --period PERIOD --as-of AS_OF`; its JSON report."""
    return dict(ok(cli, "run", "bill", "--period", period, "--as-of", as_of, *extra))


def new_project(cli: Cli, *customers: str, slug: str = "acme") -> None:
    """Project `slug` (UTC) with customers billed in USD."""
    made = cli("project", "create", slug, "--timezone", "UTC")
    assert made.exit_code == 0, made.stderr
    for external in customers:
        created = cli("customer", "create", external, "--currency", "USD", "--project", slug)
        assert created.exit_code == 0, created.stderr


def example_shop(cli: Cli) -> Cli:
    """Project acme with customers c1 and c2 and the example catalog (tests/support/catalogs)."""
    new_project(cli, "c1", "c2")
    applied = cli("catalog", "apply", str(catalogs.EXAMPLE), "--project", "acme")
    assert applied.exit_code == 0, applied.stderr
    return cli


# --------------------------------------------------------------------------- invoice shop

# Plan basic: 10.00 a month in arrears, prorated by day, and api_calls at 0.10 each.
BASIC_CATALOG = catalogs.catalog(
    meters=[catalogs.meter("api_calls", "count")],
    plans=[
        catalogs.plan(
            "basic", "10.00", catalogs.per_unit("api_calls", "0.10"), name="Basic", proration="day"
        )
    ],
)

INVOICE_CATALOG = catalogs.catalog(
    meters=[
        catalogs.meter("api_calls", "count"),
        catalogs.meter("tokens", "sum", field="properties.tokens"),
    ],
    plans=[
        catalogs.plan(
            "pro",
            "49.00",
            catalogs.graduated(
                "api_calls", catalogs.tier(10, "0"), catalogs.tier(catalogs.INF, "0.50")
            ),
            catalogs.per_unit("tokens", "0.001", free_units=100),
            name="Pro",
            proration="day",
        ),
        catalogs.plan(
            "basic",
            "10.00",
            catalogs.per_unit("api_calls", "0.10"),
            name="Basic",
            proration="day",
        ),
    ],
)
C1_CALLS = [f"2026-10-{day:02d}T{hour:02d}:00:00Z" for day in (2, 9, 17, 30) for hour in range(6)]
C1_CALLS.append("2026-10-31T23:59:59Z")  # 25 calls
C1_NOVEMBER = [f"2026-11-{day:02d}T08:00:00Z" for day in range(2, 14)]  # 12 calls


def invoice_shop(cli: Cli, tmp_path: Path) -> Cli:
    """The invoice shop (see the module docstring), October billed as drafts."""
    new_project(cli, "c1", "c2")
    catalogs.apply_catalog(cli, tmp_path, INVOICE_CATALOG)
    ok(cli, "subscription", "create", "c1", "pro", "--start", "2026-10-01T00:00:00Z")
    ok(cli, "subscription", "create", "c2", "basic", "--start", "2026-10-16T00:00:00Z")
    lines = [event_line(f"c1-call-{i}", "c1", "api_calls", ts) for i, ts in enumerate(C1_CALLS)]
    lines += [
        event_line("c1-tok-1", "c1", "tokens", "2026-10-03T10:00:00Z", tokens=100),
        event_line("c1-tok-2", "c1", "tokens", "2026-10-12T10:00:00Z", tokens=200),
        event_line("c1-tok-3", "c1", "tokens", "2026-10-28T10:00:00Z", tokens=50),
    ]
    lines += [
        event_line(f"c2-call-{i}", "c2", "api_calls", f"2026-10-{20 + i}T12:00:00Z")
        for i in range(4)
    ]
    lines += [event_line(f"c1-nov-{i}", "c1", "api_calls", ts) for i, ts in enumerate(C1_NOVEMBER)]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(reversed(lines)) + b"\n")
    assert ok(cli, "ingest", str(events))["accepted"] == len(lines)
    report = bill(cli, "2026-10", "2026-11-02T00:00:00Z")
    assert (report["invoices"], report["status"]) == (2, "completed")
    return cli


# --------------------------------------------------------------------------- retention shop

RETENTION_CATALOG = catalogs.catalog(
    meters=[
        catalogs.meter("eu_calls", "count", filter={"region": "eu"}),
        catalogs.meter("tokens", "sum", field="properties.tokens"),
    ],
    plans=[
        catalogs.plan(
            "pro",
            "10.00",
            catalogs.per_unit("eu_calls", "0.10"),
            catalogs.per_unit("tokens", "0.001"),
            proration="day",
        )
    ],
)
PERSONAL = {"email": "ann@example.com", "ip": "192.0.2.7", "user_agent": "curl/8.0"}
RETENTION_MONTHS = {
    "2025-10": datetime(2025, 10, 1, tzinfo=UTC),
    "2025-11": datetime(2025, 11, 1, tzinfo=UTC),
    "2025-12": datetime(2025, 12, 1, tzinfo=UTC),
}


def month_events(label: str, start: datetime) -> list[Ev]:
    """A month of the retention shop's usage: for c1 and c2, twelve calls (two of three in the
    EU) and twelve token counts, each carrying PERSONAL."""
    events = []
    for customer in ("c1", "c2"):
        for i in range(12):
            ts = start + timedelta(days=i * 2, hours=i)
            region = "eu" if i % 3 else "us"
            events.append(
                Ev(
                    f"{label}-{customer}-call-{i}",
                    customer,
                    "eu_calls",
                    ts,
                    properties={"region": region, **PERSONAL},
                )
            )
            events.append(
                Ev(
                    f"{label}-{customer}-tok-{i}",
                    customer,
                    "tokens",
                    ts,
                    Decimal(1),
                    properties={"tokens": 100 + i, "model": "large", **PERSONAL},
                )
            )
    return events


def retention_shop(cli: Cli, tmp_path: Path) -> Cli:
    """The retention shop (see the module docstring)."""
    new_project(cli, "c1", "c2")
    catalogs.apply_catalog(cli, tmp_path, RETENTION_CATALOG)
    for external in ("c1", "c2"):
        ok(cli, "subscription", "create", external, "pro", "--start", "2025-10-01T00:00:00Z")
    events = [e for label, start in RETENTION_MONTHS.items() for e in month_events(label, start)]
    ingest(cli, write_jsonl(tmp_path / "events.jsonl", events))
    assert bill(cli, "2025-10", "2025-11-02T00:00:00Z")["invoices"] == 2
    ok(cli, "invoice", "finalize", "--period", "2025-10")
    assert bill(cli, "2025-11", "2025-12-02T00:00:00Z")["invoices"] == 2  # drafts
    assert bill(cli, "2025-12", "2026-01-02T00:00:00Z")["invoices"] == 2
    ok(cli, "invoice", "finalize", "--period", "2025-12")
    late = Ev(
        "late-1",
        "c1",
        "tokens",
        datetime(2025, 12, 30, tzinfo=UTC),
        Decimal(1),
        properties={"tokens": 5000, **PERSONAL},
    )
    ingest(cli, write_jsonl(tmp_path / "late.jsonl", [late]))
    return cli


# --------------------------------------------------------------------------- many customers

PERIOD = "2026-10"
AS_OF = "2026-11-02T00:00:00Z"


def metered_pro(
    base_fee: str = "49.00",
    call_price: str = "0.01",
    *,
    extra_meters: tuple[dict[str, Any], ...] = (),
    extra_charges: tuple[dict[str, Any], ...] = (),
    interval: str = "month",
) -> str:
    """Plan pro: `base_fee` a month in arrears, prorated by day, plus api_calls at
    `call_price` each (and any extra meters and charges)."""
    return catalogs.catalog(
        meters=[*extra_meters, catalogs.meter("api_calls", "count")],
        plans=[
            catalogs.plan(
                "pro",
                base_fee,
                catalogs.per_unit("api_calls", call_price),
                *extra_charges,
                name="Pro",
                interval=interval,
                proration="day",
            )
        ],
    )


def pro_and_gulf(gulf_fee: str = "1.234", gulf_code: str = "gulf") -> str:
    """Plan pro at 49.00 a month in arrears, prorated by day (USD), and plan gulf at `gulf_fee`
    KWD (a three-decimal currency)."""
    return catalogs.catalog(
        plans=[
            catalogs.plan("pro", "49.00", name="Pro", proration="day"),
            catalogs.plan(
                gulf_code,
                gulf_fee,
                name="Gulf",
                currency="KWD",
                proration="day",
            ),
        ]
    )


def finalize_month(cli: Cli) -> dict[str, Any]:
    """`run bill --finalize` for October 2026, completed; its report."""
    report = bill(cli, PERIOD, AS_OF, "--finalize")
    assert report["status"] == "completed", report
    return report


def subscribed_shop(
    cli: Cli,
    tmp_path: Path,
    customers: int,
    catalog: str,
    *,
    plan: str = "pro",
    digits: int = 2,
    usage: dict[str, int] | None = None,
) -> list[str]:
    """acme with `customers` customers (c01, c02, ... with `digits` digits) on `plan` from
    October (n % 28) + 1, and `usage[name]` api_calls each on October 29th; their names."""
    assert cli("project", "create", "acme", "--timezone", "UTC").exit_code == 0
    catalogs.apply_catalog(cli, tmp_path, catalog)
    names = [f"c{n:0{digits}d}" for n in range(1, customers + 1)]
    people = ["external_id,name,email,currency"]
    people += [f"{name},Customer {name},{name}@example.com,USD" for name in names]
    (tmp_path / "customers.csv").write_text("\n".join(people) + "\n")
    ok(cli, "customer", "import", str(tmp_path / "customers.csv"))
    plans = ["customer,plan,start"]
    plans += [f"{name},{plan},2026-10-{n % 28 + 1:02d}T00:00:00Z" for n, name in enumerate(names)]
    (tmp_path / "subscriptions.csv").write_text("\n".join(plans) + "\n")
    ok(cli, "subscription", "import", str(tmp_path / "subscriptions.csv"))
    events = [
        orjson.dumps(
            {
                "idempotency_key": f"{customer}-{n}",
                "customer": customer,
                "meter": "api_calls",
                "timestamp": f"2026-10-29T{n % 24:02d}:00:00Z",
            }
        ).decode()
        for customer, count in (usage or {}).items()
        for n in range(count)
    ]
    if events:
        (tmp_path / "events.jsonl").write_text("\n".join(events) + "\n")
        ok(cli, "ingest", str(tmp_path / "events.jsonl"))
    return names


def billed_lines(engine: Engine, period: str) -> dict[str, list[dict[str, Any]]]:
    """Each customer's invoice lines of the period, straight from the database."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(Customer.external_id, Invoice.content)
            .join(Customer, Customer.id == Invoice.customer_id)
            .where(Invoice.period == period)
            .order_by(Customer.external_id, Invoice.number)
        ).all()
    found: dict[str, list[dict[str, Any]]] = {}
    for customer, content in rows:
        found.setdefault(customer, []).extend(orjson.loads(content)["lines"])
    return found
