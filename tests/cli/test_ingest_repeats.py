"""Importing again: a JSON line that repeats a stored event byte for byte is a duplicate
without being checked again (services/ingest/repeats.py), on every dialect; every other line
is classified as before (duplicate by payload, conflict, new)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from neruba_cli.db.schema import Event, Project
from neruba_cli.domain.events import line_digest
from neruba_cli.services.catalog import store as catalog_store
from neruba_cli.services.ingest import pipeline, repeats
from neruba_cli.services.ingest.readers import Source
from neruba_cli.services.ingest.rejects import RejectsWriter
from neruba_cli.services.ingest.repeats import Repeats
from tests.support.cli import Cli, ok
from tests.support.events import event, write_jsonl
from tests.support.shops import example_shop


def counts(report: dict) -> tuple[int, int, int, int, int]:
    return (
        report["lines"],
        report["accepted"],
        report["duplicates"],
        report["conflicts"],
        report["rejected"],
    )


def test_a_repeated_line_is_a_duplicate_without_a_second_check(
    cli: Cli, tmp_path: Path, engine: Engine
) -> None:
    """A line accepted under `--max-future 2h` repeats its event byte for byte: imported again
    under the default 5 minutes it is a duplicate, where a check would refuse it; the same
    event spelt with its fields in another order is checked, and so refused."""
    example_shop(cli)
    ahead = (datetime.now(UTC) + timedelta(minutes=90)).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = event("ahead-1", timestamp=ahead)
    source = write_jsonl(tmp_path / "ahead.jsonl", [line])
    assert counts(ok(cli, "ingest", str(source), "--max-future", "2h")) == (1, 1, 0, 0, 0)
    assert counts(ok(cli, "ingest", str(source))) == (1, 0, 1, 0, 0)

    reordered = tmp_path / "reordered.jsonl"
    reordered.write_bytes(orjson.dumps(dict(reversed(list(line.items())))) + b"\n")
    report = cli("ingest", str(reordered), "--project", "acme", "--json")
    assert report.exit_code == 3 and counts(report.json()) == (1, 0, 0, 0, 1)


def test_a_mixed_file_is_classified_line_by_line(cli: Cli, tmp_path: Path, engine: Engine) -> None:
    """Stored lines repeated byte for byte, the same payloads spelt otherwise, another payload
    under a stored key, and new lines, over several chunks: each counted as a first import of
    the same lines would count it, and only the new ones stored."""
    example_shop(cli)
    first = [event(f"e{i}", quantity=str(i % 7), customer=f"c{1 + i % 2}") for i in range(7000)]
    assert counts(ok(cli, "ingest", str(write_jsonl(tmp_path / "a.jsonl", first)))) == (
        7000, 7000, 0, 0, 0,
    )  # fmt: skip
    lines = [orjson.dumps(item) for item in first]
    lines[10] = orjson.dumps({**first[10], "properties": {}})  # same payload, other bytes
    lines[20] = orjson.dumps({**first[20], "quantity": "99"})  # another payload: a conflict
    lines += [orjson.dumps(event(f"new{i}")) for i in range(5)]
    again = tmp_path / "b.jsonl"
    again.write_bytes(b"\n".join(lines) + b"\n")
    report = cli("ingest", str(again), "--project", "acme", "--json")
    assert report.exit_code == 3, report.stderr  # the conflict
    assert counts(report.json()) == (7005, 5, 6999, 1, 0)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Event)).scalar_one() == 7005
        stored = dict(conn.execute(select(Event.idempotency_key, Event.line_digest)).all())
    # each stored as its line's digest, whichever insert the dialect used for the batch
    written = {item["idempotency_key"]: line_digest(orjson.dumps(item), None) for item in first}
    assert {key: stored[key] for key in written} == written


def test_a_repeat_of_a_corrected_event_is_counted_as_one(cli: Cli, tmp_path: Path) -> None:
    example_shop(cli)
    source = write_jsonl(tmp_path / "u.jsonl", [event("v1"), event("v2")])
    ok(cli, "ingest", str(source))
    ok(cli, "events", "void", "v1", "--reason", "test traffic")
    report = ok(cli, "ingest", str(source))
    assert counts(report) == (2, 0, 2, 0, 0)
    assert report["duplicates_of_corrected"] == 1


def test_the_time_zone_of_naive_timestamps_is_part_of_the_line(
    cli: Cli, tmp_path: Path, engine: Engine
) -> None:
    """The same naive line read in another zone is another event: a conflict, not a repeat."""
    example_shop(cli)
    source = write_jsonl(tmp_path / "naive.jsonl", [event("n1", timestamp="2026-10-03T12:00:00")])
    paris = ("--assume-timezone", "Europe/Paris")
    assert counts(ok(cli, "ingest", str(source), *paris)) == (1, 1, 0, 0, 0)
    assert counts(ok(cli, "ingest", str(source), *paris)) == (1, 0, 1, 0, 0)
    elsewhere = cli(
        "ingest", str(source), "--assume-timezone", "America/New_York", "--project", "acme",
        "--json",
    )  # fmt: skip
    assert elsewhere.exit_code == 3 and counts(elsewhere.json()) == (1, 0, 0, 1, 0)


def test_only_json_lines_carry_a_digest(cli: Cli, tmp_path: Path, engine: Engine) -> None:
    example_shop(cli)
    line = event("j1")
    ok(cli, "ingest", str(write_jsonl(tmp_path / "j.jsonl", [line])))
    csv = tmp_path / "c.csv"
    csv.write_text(
        "idempotency_key,customer,meter,timestamp,quantity\n"
        "c1-csv,c1,api_calls,2026-10-03T12:00:00Z,1\n"
    )
    ok(cli, "ingest", str(csv), "--format", "csv")
    with engine.connect() as conn:
        digests = dict(conn.execute(select(Event.idempotency_key, Event.line_digest)).all())
    assert digests == {"j1": line_digest(orjson.dumps(line), None), "c1-csv": None}


def test_lookups_pause_while_chunks_find_no_repeats(cli: Cli, engine: Engine) -> None:
    """A first import looks up one chunk in PROBE_EVERY, not every chunk."""
    example_shop(cli)
    with engine.connect() as conn:
        project_id = conn.execute(select(Project.id)).scalar_one()
    sifting = Repeats(engine, project_id, None)
    lines: list[bytes | None] = [orjson.dumps(event(f"x{i}")) for i in range(10)]
    assert sifting.sift(lines) == [None] * 10 and not sifting.armed
    looked = 0
    for _ in range(repeats.PROBE_EVERY * 2):
        sifting.sift(lines)
        looked += sifting.idle == 0
    assert looked == 2


def test_line_digest_depends_on_the_bytes_and_the_zone() -> None:
    line = b'{"idempotency_key":"k","customer":"c1"}'
    assert line_digest(line, None) == line_digest(bytes(line), None)
    assert -(1 << 63) <= line_digest(line, None) < 1 << 63
    assert line_digest(line + b" ", None) != line_digest(line, None)
    paris, new_york = ZoneInfo("Europe/Paris"), ZoneInfo("America/New_York")
    assert (
        len({line_digest(line, None), line_digest(line, paris), line_digest(line, new_york)}) == 3
    )


def test_an_import_of_repeats_reports_its_progress(
    cli: Cli, tmp_path: Path, engine: Engine
) -> None:
    """The progress bar moves through a file of repeats as through any other: every 1,000
    lines read, and once at the end."""
    example_shop(cli)
    source = write_jsonl(tmp_path / "p.jsonl", [event(f"p{i}") for i in range(2500)])
    ok(cli, "ingest", str(source))
    seen: list[int] = []
    with Session(engine) as session:
        project = session.scalars(select(Project).where(Project.slug == "acme")).one()
        meters = catalog_store.stored_meters(session, project)
    summary = pipeline.ingest(
        engine,
        project,
        Source([str(source)]),
        pipeline.IngestOptions(fmt="jsonl"),
        meters=meters,
        rejects=RejectsWriter(None),
        actor="test",
        now=datetime.now(UTC),
        on_progress=lambda _read, lines: seen.append(lines),
    )
    assert (summary.duplicates, summary.accepted) == (2500, 0)
    assert seen == [1000, 2000, 2500]
