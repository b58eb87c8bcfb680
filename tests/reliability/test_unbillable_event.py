"""One hostile event among 10,000 customers' usage never stops a month (issue: "one bad event
blocks the whole month's billing").

The event was stored before ingest checked the property values meters read (here written
straight into the events table, as a migration-era fixture): `"tokens":
"1000000000000000000000000000000000000000"` on the meter `tokens` (`properties.tokens`). On
every database, `run bill --finalize` bills and finalizes the 9,999 other customers, skips
that one customer (nothing of it written), names it with its event, and exits 3; `check` names
the customer and the event (exit 4), and nothing else.

The shop: plan std, 20.00 a month in arrears plus api_calls (the first 40 free, then 0.05)
and tokens (`properties.tokens`, 0.0003 each past 1,000). One customer is set up through the
CLI; the other 9,999 are copies of it and the events are written straight into their tables, a
thousand rows per statement (tests/support/bulk.py), so the test spends its time billing.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from neruba_cli.db.tables import invoices_t
from tests.support import catalogs
from tests.support.bulk import clone_subscribed
from tests.support.cli import Cli, expect, ok
from tests.support.events import Ev, store_directly
from tests.support.shops import new_project

OCTOBER = datetime(2026, 10, 1, tzinfo=UTC)
CATALOG = catalogs.catalog(
    meters=[
        catalogs.meter("api_calls", "count"),
        catalogs.meter("tokens", "sum", field="properties.tokens"),
    ],
    plans=[
        catalogs.plan(
            "std",
            "20.00",
            catalogs.graduated(
                "api_calls", catalogs.tier(40, "0"), catalogs.tier(catalogs.INF, "0.05")
            ),
            catalogs.per_unit("tokens", "0.0003", free_units=1000),
        )
    ],
)

CUSTOMERS = 10_000
BAD = "c5000"
HOSTILE_KEY = "migrated-evil-tokens"


def usage(names: list[str]) -> list[Ev]:
    """Two events per customer (a call and a token count), and the hostile one."""
    rng = random.Random(18)
    events = []
    for name in names:
        at = OCTOBER + timedelta(days=28, seconds=rng.randrange(86400))
        events.append(Ev(f"{name}-call", name, "api_calls", at))
        events.append(Ev(f"{name}-tok", name, "tokens", at, properties={"tokens": 2000}))
    events.append(
        Ev(
            HOSTILE_KEY,
            BAD,
            "tokens",
            OCTOBER + timedelta(days=10),
            Decimal(1),
            {"tokens": "1000000000000000000000000000000000000000"},
        )
    )
    return events


@pytest.mark.slow
def test_one_hostile_event_among_10000_customers(cli: Cli, engine: Engine, tmp_path: Path) -> None:
    names = [f"c{i:04d}" for i in range(CUSTOMERS)]
    new_project(cli, names[0])
    catalogs.apply_catalog(cli, tmp_path, CATALOG)
    ok(cli, "subscription", "create", names[0], "std", "--start", "2026-10-01T00:00:00Z")
    clone_subscribed(engine, names[0], names[1:])
    store_directly(engine, usage(names))

    report = expect(
        cli,
        3,
        "run",
        "bill",
        "--period",
        "2026-10",
        "--as-of",
        "2026-11-02T00:00:00Z",
        "--finalize",
    )

    (failure,) = report["failed"]
    assert failure["customer"] == BAD and failure["invoice"] is None
    assert [(e["idempotency_key"], e["meter"], e["property"]) for e in failure["events"]] == [
        (HOSTILE_KEY, "tokens", "properties.tokens")
    ]
    assert failure["events"][0]["value"] == "1000000000000000000000000000000000000000"
    assert report["invoices"] == CUSTOMERS - 1 and len(report["finalized"]) == CUSTOMERS - 1
    with engine.connect() as conn:
        rows = conn.execute(
            select(invoices_t.c.status, invoices_t.c.total, func.count()).group_by(
                invoices_t.c.status, invoices_t.c.total
            )
        ).all()
    # every invoice: 20.00, 1 call inside the 40 free, 1,000 tokens past the free 1,000
    assert [(status, Decimal(total), count) for status, total, count in rows] == [
        ("finalized", Decimal("20.30"), CUSTOMERS - 1)
    ]

    checked = expect(cli, 4, "check")
    problems = [p for check in checked["checks"] for p in check["details"]]
    assert len(problems) == 2, problems
    assert any(BAD in p and HOSTILE_KEY in p and "not billed" in p for p in problems)
    assert any(HOSTILE_KEY in p and "properties.tokens" in p for p in problems)
