"""`neruba ingest` on every dialect: replay safety, conflicts, rejects, formats, receipts."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select

from neruba_cli.db.schema import Event
from neruba_cli.services.ingest import pipeline as ingest_service
from tests.support.cli import Cli
from tests.support.events import event, write_jsonl
from tests.support.shops import example_shop


@pytest.fixture
def shop(cli: Cli) -> Cli:
    return example_shop(cli)


def ingest(cli: Cli, *args: str, code: int = 0) -> dict:
    result = cli("ingest", *args, "--project", "acme", "--json")
    assert result.exit_code == code, result.stderr
    return result.json()


def stored(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Event)).scalar_one()


def test_the_same_file_twice_counts_once(shop: Cli, tmp_path: Path, engine) -> None:
    events = [event(f"e{i}", quantity=str(i % 7), customer=f"c{1 + i % 2}") for i in range(2500)]
    source = write_jsonl(tmp_path / "usage.jsonl", events)
    first = ingest(shop, str(source))
    assert (first["lines"], first["accepted"], first["duplicates"]) == (2500, 2500, 0)
    assert first["batch"].startswith("bat_") and first["periods"] == ["2026-10"]
    second = shop("ingest", str(source), "--project", "acme", "--json")
    assert second.exit_code == 0
    again = second.json()
    assert (again["accepted"], again["duplicates"]) == (0, 2500)
    assert again["already_imported"] == [first["batch"]]
    assert "already imported" in shop("ingest", str(source), "--project", "acme").stderr
    assert stored(engine) == 2500


def test_conflicts_malformed_and_naive_lines(shop: Cli, tmp_path: Path, engine) -> None:
    source = tmp_path / "mixed.jsonl"
    lines = [
        orjson.dumps(event("k1", quantity="1")),
        orjson.dumps(event("k2")),
        b'{"idempotency_key": "k3", "customer": "c1"',  # line 3: malformed JSON
        orjson.dumps(event("k4", timestamp="2026-10-03T12:00:00")),  # line 4: naive
        orjson.dumps(event("k1", quantity="5")),  # line 5: conflicts with line 1
        orjson.dumps(event("k2")),  # line 6: a duplicate
    ]
    source.write_bytes(b"\n".join(lines) + b"\n")
    summary = ingest(shop, str(source), code=3)
    assert {
        k: summary[k] for k in ("lines", "accepted", "duplicates", "conflicts", "rejected")
    } == {
        "lines": 6,
        "accepted": 2,
        "duplicates": 1,
        "conflicts": 1,
        "rejected": 2,
    }
    rejects = [
        orjson.loads(line)
        for line in (tmp_path / "mixed.jsonl.rejects.jsonl").read_bytes().splitlines()
    ]
    by_line = {item["line"]: item for item in rejects}
    assert set(by_line) == {3, 4, 5}
    assert by_line[3]["reason"].startswith("invalid JSON")
    assert by_line[4]["reason"] == "timestamp has no time-zone offset"
    assert "conflicts with event 'k1'" in by_line[5]["reason"]
    assert by_line[5]["stored"]["quantity"] == "1" and by_line[5]["raw"].endswith('"5"}')
    assert stored(engine) == 2


def test_validation_reasons(shop: Cli, tmp_path: Path) -> None:
    cases = [
        (event("a", quantity=True), "quantity must be a number, not a boolean"),
        (event("b", quantity="NaN"), "quantity must be finite"),
        (event("c", quantity="0.0000000000001"), "more than 12 decimal places"),
        (event("d", quantity=0.12345678901234567), "more than 15 significant digits"),
        (event("e", meter="nope"), "unknown meter 'nope'"),
        (event("f", customer="ghost"), "unknown customer 'ghost'"),
        (event("g", quantity="-1"), "negative quantity"),
        (event("h", timestamp="2999-01-01T00:00:00Z"), "in the future"),
        (event("i", quanity="2"), "unknown field 'quanity'"),
        (event("j", properties=[1]), "properties must be a JSON object"),
        (
            {"customer": "c1", "meter": "api_calls", "timestamp": "2026-10-03T12:00:00Z"},
            "idempotency_key is required",
        ),
    ]
    source = write_jsonl(tmp_path / "bad.jsonl", [case for case, _ in cases])
    summary = ingest(shop, str(source), code=3)
    assert summary["rejected"] == len(cases) and summary["accepted"] == 0
    reasons = {item["line"]: item["reason"] for item in summary["rejects"]}
    for line, (_, fragment) in enumerate(cases, start=1):
        assert fragment in reasons[line], (line, reasons[line])


def test_options_assume_timezone_create_customers_and_dry_run(
    shop: Cli, tmp_path: Path, engine
) -> None:
    source = write_jsonl(
        tmp_path / "opts.jsonl",
        [
            event("n1", timestamp="2026-10-03T12:00:00"),
            event("n2", customer="newbie"),
        ],
    )
    dry = ingest(
        shop, str(source), "--dry-run", "--assume-timezone", "Europe/Paris", "--create-customers"
    )
    assert dry["dry_run"] is True and dry["batch"] is None and stored(engine) == 0
    done = ingest(shop, str(source), "--assume-timezone", "Europe/Paris", "--create-customers")
    assert done["accepted"] == 2 and stored(engine) == 2
    listed = shop("events", "list", "--customer", "c1", "--project", "acme", "--json").json()
    assert listed[0]["timestamp"] == "2026-10-03T10:00:00Z"
    assert shop("customer", "show", "newbie", "--project", "acme").exit_code == 0


def test_csv_cloudevents_gzip_and_stdin(shop: Cli, tmp_path: Path, engine) -> None:
    csv = tmp_path / "events.csv"
    csv.write_text(
        "\ufeffidempotency_key,customer,meter,timestamp,quantity,properties.tokens\n"
        "c-1,c1,tokens,2026-10-03T12:00:00Z,,1500\n"
        "c-2,c1,tokens,2026-10-03T12:00:00Z,2\n"
    )
    summary = ingest(shop, str(csv), code=3)
    assert (summary["accepted"], summary["rejected"]) == (1, 1)
    assert summary["rejects"][0]["reason"] == "row has 5 fields, the header has 6"
    cloud = write_jsonl(
        tmp_path / "events.cloudevents",
        [
            {
                "specversion": "1.0",
                "id": "ce-1",
                "source": "app",
                "type": "tokens",
                "subject": "c2",
                "time": "2026-10-04T00:00:00Z",
                "data": {"tokens": 42, "model": "x"},
            },
        ],
    )
    assert ingest(shop, str(cloud))["accepted"] == 1
    packed = tmp_path / "more.jsonl.gz"
    packed.write_bytes(gzip.compress(orjson.dumps(event("gz-1")) + b"\n"))
    assert ingest(shop, str(packed))["accepted"] == 1
    piped = shop(
        "ingest",
        "-",
        "--project",
        "acme",
        "--json",
        input=orjson.dumps(event("in-1")).decode() + "\n",
    )
    assert piped.exit_code == 0 and piped.json()["accepted"] == 1
    assert stored(engine) == 4
    tokens = shop("events", "list", "--meter", "tokens", "--project", "acme", "--json").json()
    assert {row["idempotency_key"]: row["properties"] for row in tokens} == {
        "c-1": {"tokens": "1500"},
        "ce-1": {"tokens": 42, "model": "x"},
    }


def test_an_over_long_line_is_rejected_without_loading_it(shop: Cli, tmp_path: Path) -> None:
    source = tmp_path / "long.jsonl"
    huge = orjson.dumps(event("big", properties={"blob": "x" * (1 << 21)}))
    source.write_bytes(huge + b"\n" + orjson.dumps(event("small")) + b"\n")
    summary = ingest(shop, str(source), code=3)
    assert (summary["accepted"], summary["rejected"]) == (1, 1)
    assert summary["rejects"][0]["line"] == 1 and "longer than" in summary["rejects"][0]["reason"]


def test_receipts_are_listed(shop: Cli, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "r.jsonl", [event("r1"), event("r2")])
    first = ingest(shop, str(source))
    receipts = shop("events", "receipts", "--project", "acme", "--json").json()
    assert receipts[0]["batch"] == first["batch"]
    assert (receipts[0]["status"], receipts[0]["accepted"], receipts[0]["sha256"]) == (
        "completed",
        2,
        first["sha256"],
    )
    assert receipts[0]["periods"] == ["2026-10"]


def test_ingest_errors(shop: Cli, tmp_path: Path) -> None:
    missing = shop("ingest", str(tmp_path / "nope.jsonl"), "--project", "acme")
    assert missing.exit_code == 1 and "no such file" in missing.stderr
    unknown = shop("ingest", str(tmp_path / "x.txt"), "--project", "acme")
    assert unknown.exit_code in (1, 2)
    (tmp_path / "x.txt").write_text("")
    guess = shop("ingest", str(tmp_path / "x.txt"), "--project", "acme")
    assert guess.exit_code == 2 and "--format" in guess.stderr


def test_one_off_charges(shop: Cli, tmp_path: Path) -> None:
    def add(*extra: str, code: int = 0) -> dict:
        args = ["charge", "add", "c1", "--amount", "25.00", "--description", "Onboarding"]
        result = shop(*args, *extra, "--project", "acme", "--json")
        assert result.exit_code == code, result.stderr
        return result.json()

    first = add("--idempotency-key", "setup-1", "--at", "2026-10-05T00:00:00Z")
    assert (first["outcome"], first["amount"], first["at"]) == (
        "accepted",
        "25",
        "2026-10-05T00:00:00Z",
    )
    again = add("--idempotency-key", "setup-1", "--at", "2026-10-05T00:00:00Z")
    assert again["outcome"] == "duplicate"
    clash = shop(
        "charge",
        "add",
        "c1",
        "--amount",
        "30.00",
        "--description",
        "Onboarding",
        "--idempotency-key",
        "setup-1",
        "--at",
        "2026-10-05T00:00:00Z",
        "--project",
        "acme",
        "--json",
    )
    assert clash.exit_code == 3 and clash.json()["stored"]["amount"] == "25"
    cents = shop(
        "charge",
        "add",
        "c1",
        "--amount",
        "1.005",
        "--description",
        "x",
        "--idempotency-key",
        "k2",
        "--project",
        "acme",
    )
    assert cents.exit_code == 1 and "more decimal places than USD allows (2)" in cents.stderr
    floaty = write_jsonl(
        tmp_path / "charges.jsonl",
        [
            {
                "type": "charge",
                "idempotency_key": "f1",
                "customer": "c2",
                "amount": "9.99",
                "description": "Extra seat",
                "timestamp": "2026-10-06T00:00:00Z",
            },
            {
                "type": "charge",
                "idempotency_key": "f2",
                "customer": "c2",
                "amount": 9.99,
                "description": "Float",
                "timestamp": "2026-10-06T00:00:00Z",
            },
            event("mixed-1"),
        ],
    )
    summary = ingest(shop, str(floaty), code=3)
    assert (summary["accepted"], summary["rejected"]) == (2, 1)
    assert "write money as a string" in summary["rejects"][0]["reason"]


def test_a_left_over_partial_rejects_file_is_cleaned_by_the_next_run(
    shop: Cli, tmp_path: Path
) -> None:
    """A killed run's temporary, an hour old, goes; a younger one may be a run still
    writing and stays."""
    source = write_jsonl(tmp_path / "p.jsonl", [event("p1")])
    leftover = tmp_path / ".p.jsonl.rejects.jsonl.0123abcd.partial"
    leftover.write_text('{"line": 9, "reason": "from a killed run", "raw": ""}\n')
    two_hours_ago = time.time() - 7200
    os.utime(leftover, (two_hours_ago, two_hours_ago))
    running = tmp_path / ".p.jsonl.rejects.jsonl.89abcdef.partial"
    running.write_text("")
    assert ingest(shop, str(source))["accepted"] == 1
    assert not leftover.exists()
    assert running.exists()


def test_a_large_import_refreshes_postgresql_statistics(
    shop: Cli, tmp_path: Path, engine, dialect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Billing right after a bulk import must not plan from an empty table's statistics."""
    if dialect != "postgresql":
        pytest.skip("PostgreSQL only: the others keep their statistics themselves")
    monkeypatch.setattr(ingest_service, "ANALYZE_AFTER", 3)

    def analyzed() -> int:
        with engine.connect() as conn:
            return int(
                conn.exec_driver_sql(
                    "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'events'"
                ).scalar_one()
            )

    before = analyzed()
    ingest(shop, str(write_jsonl(tmp_path / "two.jsonl", [event("s1"), event("s2")])))
    assert analyzed() == before  # below the threshold: nothing to refresh
    ingest(shop, str(write_jsonl(tmp_path / "three.jsonl", [event(f"t{i}") for i in range(3)])))
    for _ in range(50):  # the server publishes its activity counters within a moment
        if analyzed() == before + 1:
            break
        time.sleep(0.1)
    assert analyzed() == before + 1
