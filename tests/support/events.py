"""Usage events and the files that carry them: one event as a dataclass or as a JSON line,
a JSONL file of them, and ingesting one through the CLI."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, insert, select

from neruba_cli.db.tables import customers_t, events_t, projects_t
from tests.support.cli import Cli


@dataclass
class Ev:
    """One usage event, as a test reasons about it (timestamps as datetimes)."""

    key: str
    customer: str
    meter: str
    ts: datetime
    quantity: Decimal = Decimal(1)
    properties: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {
            "idempotency_key": self.key,
            "customer": self.customer,
            "meter": self.meter,
            "timestamp": self.ts.isoformat(),
            "quantity": str(self.quantity),
            "properties": self.properties,
        }


def event_line(key: str, customer: str, meter: str, ts: str, **properties: Any) -> bytes:
    """One event as a JSON line (no quantity: 1), its properties only when given."""
    payload: dict[str, Any] = {
        "idempotency_key": key,
        "customer": customer,
        "meter": meter,
        "timestamp": ts,
    }
    if properties:
        payload["properties"] = properties
    return orjson.dumps(payload)


def event(key: str, **fields: object) -> dict[str, object]:
    """One event as a dict: an API call of c1 on October 3rd 2026 at noon UTC unless `fields`
    say otherwise (any field, even one the product refuses)."""
    base: dict[str, object] = {
        "idempotency_key": key,
        "customer": "c1",
        "meter": "api_calls",
        "timestamp": "2026-10-03T12:00:00Z",
    }
    return {**base, **fields}


def charge(key: str = "setup-c1", **fields: object) -> dict[str, object]:
    """One one-off charge as a dict (a `--format charges` line, a `POST /v1/charges` body): a
    25.00 setup fee of c1 on October 5th 2026 unless `fields` say otherwise."""
    base: dict[str, object] = {
        "idempotency_key": key,
        "customer": "c1",
        "amount": "25.00",
        "description": "Setup",
        "timestamp": "2026-10-05T00:00:00Z",
    }
    return {**base, **fields}


def write_jsonl(path: Path, events: list[Ev] | list[dict[str, Any]]) -> Path:
    """A JSONL file of events (`Ev`s or plain dicts), one per line."""
    path.write_bytes(
        b"".join(orjson.dumps(e.json() if isinstance(e, Ev) else e) + b"\n" for e in events)
    )
    return path


def ingest(cli: Cli, path: Path, slug: str = "acme") -> dict[str, Any]:
    """`neruba ingest PATH` accepting events up to ten years ahead: every line accepted or a
    duplicate, none rejected or in conflict; the JSON summary."""
    result = cli("ingest", str(path), "--project", slug, "--max-future", "3650d", "--json")
    assert result.exit_code == 0, result.stderr
    summary: dict[str, Any] = result.json()
    assert summary["rejected"] == 0 and summary["conflicts"] == 0, summary
    return summary


def store_directly(engine: Engine, events: list[Ev], slug: str = "acme") -> None:
    """Write events straight into the events table, bypassing ingest and its checks: events
    stored by an older version or another path (a migration-era fixture). One multi-row
    insert per thousand events."""
    with engine.begin() as conn:
        project_id = conn.execute(
            select(projects_t.c.id).where(projects_t.c.slug == slug)
        ).scalar_one()
        customers = dict(
            conn.execute(
                select(customers_t.c.external_id, customers_t.c.id).where(
                    customers_t.c.project_id == project_id
                )
            ).all()
        )
        rows = [
            {
                "project_id": project_id,
                "idempotency_key": e.key,
                "customer_id": customers[e.customer],
                "meter": e.meter,
                "ts": e.ts,
                "quantity": e.quantity,
                "properties": orjson.dumps(e.properties).decode(),
                "payload_hash": hashlib.sha256(orjson.dumps(e.json())).hexdigest(),
                "batch_id": None,
                "line": None,
                "received_at": e.ts,
            }
            for e in events
        ]
        for start in range(0, len(rows), 1000):
            conn.execute(insert(events_t), rows[start : start + 1000])
