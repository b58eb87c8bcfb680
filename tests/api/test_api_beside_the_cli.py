"""The operator's CLI and `neruba serve` share one database: commands that read and then
write (create a customer, subscribe it, grant credit, make a key, bill) run while the server
writes events and audit records as fast as a client can send them, and neither side fails.

On SQLite this is the case that matters: a transaction that read before another process
committed cannot write any more, so such commands take the write lock when they begin
(`db.engine.write_session`) and wait their turn instead of failing."""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from neruba_cli.db.tables import events_t
from tests.support import catalogs
from tests.support.api import client, key
from tests.support.cli import Cli, ok
from tests.support.shops import new_project

CATALOG = catalogs.catalog(
    meters=[catalogs.meter("api_calls", "count")],
    plans=[catalogs.plan("metered", "10.00", catalogs.per_unit("api_calls", "0.05"))],
)
ROUNDS = 6


def call(n: int) -> dict[str, Any]:
    return {
        "idempotency_key": f"call-{n}",
        "customer": "c1",
        "meter": "api_calls",
        "timestamp": f"2026-10-{n % 28 + 1:02d}T{n % 24:02d}:00:00Z",
    }


def test_operator_commands_run_while_the_server_writes(
    cli: Cli, serve: Any, tmp_path: Path, engine: Engine
) -> None:
    new_project(cli, "c1")
    catalogs.apply_catalog(cli, tmp_path, CATALOG)
    ok(cli, "subscription", "create", "c1", "metered", "--start", "2026-10-01T00:00:00Z")
    server = serve(cli.db_url)
    secret = key(cli, "ingest")
    stop = threading.Event()
    sent: list[int] = []
    refused: list[str] = []

    def feed() -> None:
        with client(server, secret) as http:
            n = 0
            while not stop.is_set() or n < 20:
                answer = http.post("/v1/events", json=call(n))
                if answer.status_code != 200:
                    refused.append(answer.text)
                n += 1
            sent.append(n)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        for n in range(ROUNDS):
            name = f"x{n}"
            ok(cli, "customer", "create", name, "--currency", "USD")
            ok(cli, "subscription", "create", name, "metered", "--start", "2026-10-01T00:00:00Z")
            grant = ok(cli, "credits", "grant", name, "5.00")
            assert grant["amount"] == "5.00"
            ok(cli, "key", "create", "--scope", "read")
    finally:
        stop.set()
        feeder.join()
    assert refused == []
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(events_t)).scalar_one()
    assert stored == sent[0]
    report = ok(cli, "run", "bill", "--period", "2026-10", "--as-of", "2026-11-02T00:00:00Z")
    assert report["status"] == "completed"
    invoices = {i["customer"]: i for i in ok(cli, "invoice", "list", "--period", "2026-10")}
    assert invoices["c1"]["total"] == str(Decimal("10.00") + Decimal("0.05") * sent[0])
    for n in range(ROUNDS):
        assert invoices[f"x{n}"]["subtotal"] == "10.00"
