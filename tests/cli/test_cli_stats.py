"""`neruba stats` on every dialect, over the invoice shop of tests/support/shops.py (two
customers, events in October and November, October billed) plus events of today and yesterday,
a finalizing run and wallet credit. The Prometheus file is read back with the strict parser of
tests/support/prometheus.py."""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select

from neruba_cli.db.schema import BillingRun, Event
from neruba_cli.domain.stats import nearest_rank
from tests.support.cli import Cli, ok
from tests.support.events import event_line
from tests.support.prometheus import parse_exposition
from tests.support.shops import C1_CALLS, C1_NOVEMBER, invoice_shop

SHOP_EVENTS = (
    [(ts, "api_calls") for ts in C1_CALLS]
    + [(f"2026-10-{d}T10:00:00Z", "tokens") for d in ("03", "12", "28")]
    + [(f"2026-10-{20 + i}T12:00:00Z", "api_calls") for i in range(4)]
    + [(ts, "api_calls") for ts in C1_NOVEMBER]
)


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> Cli:
    return invoice_shop(cli, tmp_path)


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def recent_events(tmp_path: Path, now: datetime) -> tuple[Path, list[tuple[str, str]]]:
    """Three events today and yesterday (UTC), whatever the clock says."""
    stamps = [now - timedelta(hours=h) for h in (0, 1, 25)]
    made = [(s.isoformat().replace("+00:00", "Z"), "api_calls") for s in stamps]
    lines = [event_line(f"recent-{i}", "c1", meter, ts) for i, (ts, meter) in enumerate(made)]
    path = tmp_path / "recent.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, made


def expected_daily(events: list[tuple[str, str]], now: datetime, days: int) -> list[dict[str, Any]]:
    today = now.date()
    first = today - timedelta(days=days - 1)
    counted = Counter(
        (parse(ts).date().isoformat(), meter)
        for ts, meter in events
        if first <= parse(ts).date() <= today
    )
    return [{"day": d, "meter": m, "count": n} for (d, m), n in sorted(counted.items())]


def test_stats_report_and_prometheus_file(shop: Cli, engine: Engine, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    recent, made = recent_events(tmp_path, now)
    assert ok(shop, "ingest", str(recent))["accepted"] == 3
    ok(shop, "run", "bill", "--period", "2026-10", "--as-of", "2026-11-02T00:00:00Z", "--finalize")
    ok(shop, "credits", "grant", "c2", "15.00", "--idempotency-key", "g1")
    ok(shop, "credits", "grant", "c1", "0.05", "--idempotency-key", "g2")
    invoices = ok(shop, "invoice", "list")
    assert sorted((i["customer"], i["status"], i["total"]) for i in invoices) == [
        ("c1", "finalized", "56.75"),
        ("c2", "finalized", "5.56"),
    ]

    target = tmp_path / "textfile" / "neruba.prom"
    target.parent.mkdir()
    result = shop(
        "stats", "--project", "acme", "--json", "--days", "45", "--prometheus", str(target)
    )
    assert result.exit_code == 0, result.stderr
    stats = result.json()
    finished = datetime.now(UTC)
    everything = SHOP_EVENTS + made

    # events by day over the window: computed here from the known timestamps
    assert stats["window"]["days"] == 45
    since = parse(stats["window"]["since"])
    assert since == datetime.combine(now.date() - timedelta(days=44), datetime.min.time(), UTC)
    assert stats["events"] == expected_daily(everything, now, 45)
    assert sum(e["count"] for e in stats["events"]) >= 2  # today's and yesterday's at least
    assert stats["events_total"] == {"api_calls": 44, "tokens": 3}

    # ingest lag: every event was received in the window (just now)
    with engine.connect() as conn:
        rows = conn.execute(select(Event.received_at, Event.ts)).all()
    lags = [Decimal((r.received_at - r.ts) // timedelta(microseconds=1)).scaleb(-6) for r in rows]
    lag = stats["ingest_lag_seconds"]
    assert lag["events"] == len(everything) == 47
    assert Decimal(lag["p50"]) == nearest_rank(lags, 50)
    assert Decimal(lag["p95"]) == nearest_rank(lags, 95)
    assert Decimal(lag["max"]) == max(lags)
    oldest = parse(C1_CALLS[0])
    assert Decimal(lag["max"]) > Decimal((now - oldest).days * 86400 - 86400)

    run = stats["last_billing_run"]
    assert run["period"] == "2026-10" and run["run"].startswith("run_")
    runs = ok(shop, "run", "list")
    assert run["run"] == max(runs, key=lambda r: r["finished_at"] or "")["id"]
    assert Decimal(run["duration_seconds"]) >= 0

    assert stats["invoices"] == [
        {"kind": "invoice", "status": "finalized", "currency": "USD", "count": 2, "total": "62.31"}
    ]
    assert stats["wallet_liabilities"] == {"USD": "15.05"}

    # the Prometheus file: strict format, the same numbers
    text = target.read_text(encoding="utf-8")
    assert [p.name for p in target.parent.iterdir()] == ["neruba.prom"]  # no temporary left
    assert oct(os.stat(target).st_mode & 0o777) == "0o644"
    types, samples = parse_exposition(text)
    assert types["neruba_events_total"] == "counter"
    assert types["neruba_ingest_lag_seconds"] == "gauge"  # a moving sample: never a summary

    def value(name: str, **labels: str) -> Decimal:
        found = [s.value for s in samples if s.name == name and s.labels == labels]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    assert value("neruba_events_total", project="acme", meter="api_calls") == 44
    assert value("neruba_events_total", project="acme", meter="tokens") == 3
    assert value("neruba_ingest_lag_seconds", project="acme", quantile="0.5") == Decimal(lag["p50"])
    assert value("neruba_ingest_lag_seconds", project="acme", quantile="0.95") == Decimal(
        lag["p95"]
    )
    assert value("neruba_ingest_lag_sample_events", project="acme") == 47
    assert not any(s.name.endswith(("_sum", "_count")) for s in samples)
    assert value("neruba_ingest_lag_max_seconds", project="acme") == max(lags)
    with engine.connect() as conn:
        stored_end = conn.scalar(select(BillingRun.finished_at).where(BillingRun.id == run["run"]))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    exact_end = Decimal((stored_end - epoch) // timedelta(microseconds=1)).scaleb(-6)
    assert value("neruba_last_billing_run_timestamp_seconds", project="acme") == exact_end
    duration = value("neruba_last_billing_run_duration_seconds", project="acme")
    assert duration == Decimal(run["duration_seconds"])
    invoice_labels = {
        "project": "acme",
        "kind": "invoice",
        "status": "finalized",
        "currency": "USD",
    }
    assert value("neruba_invoices", **invoice_labels) == 2
    assert value("neruba_invoice_amount", **invoice_labels) == Decimal("62.31")
    assert value("neruba_wallet_liability", project="acme", currency="USD") == Decimal("15.05")
    generated = value("neruba_stats_generated_timestamp_seconds", project="acme")
    assert Decimal(now.timestamp()) - 1 < generated < Decimal(finished.timestamp()) + 1
    assert "15.05" in text and "62.31" in text  # exact decimals, not floats

    # a second write replaces the file whole
    again = shop("stats", "--project", "acme", "--prometheus", str(target), "--quiet")
    assert again.exit_code == 0, again.stderr
    assert [p.name for p in target.parent.iterdir()] == ["neruba.prom"]
    parse_exposition(target.read_text(encoding="utf-8"))


def test_stats_of_an_empty_project_and_bad_input(cli: Cli, tmp_path: Path) -> None:
    assert cli("project", "create", "empty").exit_code == 0
    result = cli("stats", "--project", "empty", "--json")
    assert result.exit_code == 0, result.stderr
    stats = result.json()
    assert stats["events"] == [] and stats["events_total"] == {}
    assert stats["ingest_lag_seconds"] == {"events": 0, "p50": None, "p95": None, "max": None}
    assert stats["last_billing_run"] is None
    assert stats["invoices"] == [] and stats["wallet_liabilities"] == {}
    target = tmp_path / "empty.prom"
    assert cli("stats", "--project", "empty", "--prometheus", str(target)).exit_code == 0
    types, samples = parse_exposition(target.read_text())
    assert "neruba_wallet_liability" in types
    assert {s.name for s in samples} == {
        "neruba_ingest_lag_sample_events",
        "neruba_stats_generated_timestamp_seconds",
    }
    missing = cli("stats", "--project", "empty", "--prometheus", str(tmp_path / "no" / "x.prom"))
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    bad = cli("stats", "--project", "empty", "--days", "0", "--json")
    assert (
        bad.exit_code == 1
        and "--days" in orjson.loads(bad.stderr.strip().splitlines()[-1])["error"]["message"]
    )
    nobody = cli("stats", "--json")
    assert nobody.exit_code == 2 and "no project selected" in nobody.stderr
