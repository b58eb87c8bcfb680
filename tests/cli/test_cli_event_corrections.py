"""Correcting stored usage: `events void`, `events amend` (and `events list --history`).

The shop is `invoice_shop` (tests/support/shops.py): c1 on pro (api_calls: 10 free then 0.50;
tokens read from `properties.tokens`, 0.001 each past 100), c2 on basic, October billed
(c1 56.75 = 49.00 + 15 calls × 0.50 + 250 tokens × 0.001; c2 5.56).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support import catalogs
from tests.support.cli import Cli, expect, fails, ok
from tests.support.events import event_line, ingest, write_jsonl
from tests.support.shops import invoice_shop, subscribed_shop

AS_OF = "2026-11-02T00:00:00Z"


def bill(cli: Cli, *extra: str) -> dict[str, Any]:
    report: dict[str, Any] = ok(cli, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, *extra)
    return report


def shown(cli: Cli, number: str) -> str:
    result = cli("invoice", "show", number, "--project", "acme", "--json")
    assert result.exit_code == 0, result.stderr
    return result.stdout


def invoices(cli: Cli) -> dict[str, tuple[str, str, str, str]]:
    rows = ok(cli, "invoice", "list", "--period", "2026-10")
    return {
        row["number"]: (row["customer"], row["kind"], row["status"], row["total"]) for row in rows
    }


def test_void_and_amend_correct_a_finalized_month_once(cli: Cli, tmp_path: Path) -> None:
    invoice_shop(cli, tmp_path)
    bill(cli, "--finalize")
    before = {number: shown(cli, number) for number in ("ACME-000001", "ACME-000002")}

    voided = ok(cli, "events", "void", "c1-call-0", "--reason", "test traffic")
    assert voided["voided"] == 1 and voided["unchanged"] == 0
    (event,) = voided["events"]
    assert (event["idempotency_key"], event["outcome"], event["version"]) == (
        "c1-call-0",
        "voided",
        2,
    )
    assert [s["number"] for s in voided["stale_invoices"]] == ["ACME-000001"]
    amended = ok(
        cli, "events", "amend", "c1-tok-2", "--property", "tokens=1200", "--reason", "bad export"
    )
    assert amended["amended"] == 1
    (event,) = amended["events"]
    assert event["before"]["properties"] == {"tokens": 200}
    assert event["properties"] == {"tokens": 1200}

    report = bill(cli)

    # 24 calls: 14 × 0.50 = 7.00 (was 7.50); 1350 tokens: 1.25 (was 0.25): +0.50 for c1 alone
    assert report["corrections"] == 1, report
    assert {number: shown(cli, number) for number in before} == before
    listed = invoices(cli)
    (correction,) = [n for n in listed if n not in before]
    assert listed[correction] == ("c1", "supplemental", "draft", "0.50")
    ok(cli, "check")  # exit 0: no finding
    verified = cli("invoice", "verify", "ACME-000001", "--project", "acme", "--json")
    assert verified.exit_code == 0, verified.stdout + verified.stderr
    again = bill(cli)
    assert again["corrections"] == 0 and again["invoices"] == 0, again


def test_history_shows_every_version_and_list_only_the_current(cli: Cli, tmp_path: Path) -> None:
    invoice_shop(cli, tmp_path)
    ok(cli, "events", "amend", "c1-tok-1", "--property", "tokens=150", "--reason", "recount")
    ok(cli, "events", "void", "c1-tok-1", "--reason", "duplicate of c1-tok-2")

    current = ok(cli, "events", "list", "--customer", "c1", "--meter", "tokens")
    assert sorted(e["idempotency_key"] for e in current) == ["c1-tok-2", "c1-tok-3"]
    history = ok(cli, "events", "list", "--customer", "c1", "--meter", "tokens", "--history")
    (tok1,) = [e for e in history if e["idempotency_key"] == "c1-tok-1"]
    assert (tok1["version"], tok1["voided"], tok1["properties"]) == (3, True, {"tokens": 150})
    first, second = tok1["history"]
    assert (first["version"], first["properties"], first["superseded_by"], first["reason"]) == (
        1,
        {"tokens": 100},
        "amend",
        "recount",
    )
    assert (second["version"], second["superseded_by"], second["reason"]) == (
        2,
        "void",
        "duplicate of c1-tok-2",
    )
    assert first["changed_by"] and first["changed_at"]
    text = cli("events", "list", "--customer", "c1", "--history", "--project", "acme")
    assert text.exit_code == 0 and "superseded (amend)" in text.stdout and "voided" in text.stdout


def test_replaying_the_original_file_does_not_resurrect_it(cli: Cli, tmp_path: Path) -> None:
    invoice_shop(cli, tmp_path)
    ok(cli, "events", "void", "c1-call-0", "c1-call-1", "--reason", "test traffic")
    ok(cli, "events", "amend", "c1-tok-2", "--property", "tokens=1200", "--reason", "bad export")

    replay = ok(cli, "ingest", str(tmp_path / "events.jsonl"))

    assert replay["accepted"] == 0 and replay["conflicts"] == 0
    assert replay["duplicates"] == replay["lines"]
    assert replay["duplicates_of_corrected"] == 3
    assert any("voided or amended" in w for w in replay["warnings"])
    history = ok(cli, "events", "list", "--customer", "c1", "--history", "--limit", "1000")
    by_key = {e["idempotency_key"]: e for e in history}
    assert by_key["c1-call-0"]["voided"] and by_key["c1-call-1"]["voided"]
    assert by_key["c1-tok-2"]["properties"] == {"tokens": 1200}


def test_unknown_keys_voided_keys_and_bad_values_write_nothing(cli: Cli, tmp_path: Path) -> None:
    invoice_shop(cli, tmp_path)

    error = fails(cli, 1, "events", "void", "c1-call-0", "nope-1", "--reason", "x")
    assert "nope-1" in error["message"] and "nothing was changed" in error["message"]
    listed = ok(cli, "events", "list", "--customer", "c1", "--history", "--limit", "1000")
    assert all(e["version"] == 1 and not e["voided"] for e in listed)

    ok(cli, "events", "void", "c1-call-0", "--reason", "test traffic")
    again = ok(cli, "events", "void", "c1-call-0", "--reason", "test traffic")
    assert (again["voided"], again["unchanged"]) == (0, 1)
    assert again["events"][0]["outcome"] == "already voided"
    refused = fails(cli, 1, "events", "amend", "c1-call-0", "--quantity", "2", "--reason", "x")
    assert "voided" in refused["message"]
    bad = fails(cli, 1, "events", "amend", "c1-tok-1", "--property", "tokens=abc", "--reason", "x")
    assert "c1-tok-1" in bad["message"]
    assert fails(cli, 1, "events", "amend", "nope", "--quantity", "2", "--reason", "x")
    expect(cli, 2, "events", "void", "c1-call-1", "--reason", "  ")
    same = ok(cli, "events", "amend", "c1-tok-1", "--property", "tokens=100", "--reason", "x")
    assert (same["amended"], same["unchanged"]) == (0, 1)
    history = ok(cli, "events", "list", "--customer", "c1", "--meter", "tokens", "--history")
    assert all(e["version"] == 1 for e in history)


# --------------------------------------------------------------------------- 1% of a month

SUM_CATALOG = catalogs.catalog(
    meters=[catalogs.meter("api_calls", "sum")],
    plans=[catalogs.plan("basic", "10.00", catalogs.per_unit("api_calls", "0.10"), name="Basic")],
)


@pytest.mark.slow
def test_late_amendments_for_one_percent_of_customers_correct_each_once(
    cli: Cli, tmp_path: Path
) -> None:
    """200 customers billed and finalized; then c001 gets an amendment, c002 a void, and c003
    an amendment of a property no meter reads (no money moves): the rerun writes exactly one
    correction each for c001 and c002, every finalized invoice's document stays byte for byte,
    and `check` and `invoice verify` agree."""
    names = subscribed_shop(cli, tmp_path, 200, SUM_CATALOG, plan="basic", digits=3)
    events = [
        {
            "idempotency_key": f"{name}-{n}",
            "customer": name,
            "meter": "api_calls",
            "timestamp": f"2026-10-29T{n:02d}:00:00Z",
            "quantity": str(n + 1),
            "properties": {"source": "export-1"},
        }
        for name in names
        for n in range(3)
    ]
    ingest(cli, write_jsonl(tmp_path / "october.jsonl", events))
    first = ok(cli, "run", "bill", "--period", "2026-10", "--as-of", AS_OF, "--finalize")
    assert first["invoices"] == 200
    finals = {row["number"]: row["customer"] for row in ok(cli, "invoice", "list")}
    assert len(finals) == 200
    before = {number: shown(cli, number) for number in finals}

    ok(cli, "events", "amend", "c001-0", "--quantity", "5", "--reason", "meter reset")
    ok(cli, "events", "void", "c002-1", "--reason", "test traffic")
    ok(cli, "events", "amend", "c003-2", "--property", "source=export-2", "--reason", "relabel")

    report = ok(cli, "run", "bill", "--period", "2026-10", "--as-of", AS_OF)

    assert report["corrections"] == 2, report
    after = {row["number"]: row for row in ok(cli, "invoice", "list")}
    written = {n: row for n, row in after.items() if n not in finals}
    assert sorted((row["customer"], row["kind"], row["total"]) for row in written.values()) == [
        ("c001", "supplemental", "0.40"),  # 1 → 5 calls
        ("c002", "credit_note", "-0.20"),  # the 2-call event voided
    ]
    assert {number: shown(cli, number) for number in finals} == before
    ok(cli, "check")
    verified = ok(cli, "invoice", "verify", "--period", "2026-10")
    assert verified["invoices"], verified
    again = ok(cli, "run", "bill", "--period", "2026-10", "--as-of", AS_OF)
    assert (again["corrections"], again["invoices"]) == (0, 0), again


# --------------------------------------------------------------------------- ingest --replace

WINDOW = ["--customer", "c1", "--meter", "tokens"]
OCTOBER = ["--from", "2026-10-01T00:00:00Z", "--to", "2026-11-01T00:00:00Z"]


def tokens(key: str, day: int, amount: int, customer: str = "c1") -> bytes:
    return event_line(key, customer, "tokens", f"2026-10-{day:02d}T10:00:00Z", tokens=amount)


def replace(cli: Cli, path: Path, code: int = 0, *extra: str) -> dict[str, Any]:
    report: dict[str, Any] = expect(
        cli, code, "ingest", str(path), "--replace", *WINDOW, *OCTOBER, *extra
    )
    return report


def test_replace_swaps_a_window_for_the_file_atomically(cli: Cli, tmp_path: Path) -> None:
    invoice_shop(cli, tmp_path)
    bill(cli, "--finalize")
    before = shown(cli, "ACME-000001")
    backfill = tmp_path / "tokens-fixed.jsonl"
    backfill.write_bytes(
        b"\n".join(
            [tokens("c1-tok-1", 3, 100), tokens("c1-tok-2", 12, 300), tokens("c1-tok-4", 20, 80)]
        )
        + b"\n"
    )

    report = replace(cli, backfill, 0, "--reason", "fixed export")

    assert (report["lines"], report["accepted"], report["duplicates"]) == (3, 2, 1)
    assert (report["amended"], report["voided"], report["conflicts"]) == (1, 1, 0)
    assert report["replaced"]["customer"] == "c1" and report["batch"]
    assert [s["number"] for s in report["stale_invoices"]] == ["ACME-000001"]
    (receipt,) = [r for r in ok(cli, "events", "receipts") if r["batch"] == report["batch"]]
    assert (receipt["accepted"], receipt["voided"], receipt["replaced"]["meter"]) == (
        2,
        1,
        "tokens",
    )
    history = ok(cli, "events", "list", "--customer", "c1", "--meter", "tokens", "--history")
    by_key = {e["idempotency_key"]: e for e in history}
    assert by_key["c1-tok-3"]["voided"]
    assert by_key["c1-tok-3"]["history"][0]["reason"] == "fixed export"
    assert by_key["c1-tok-3"]["history"][0]["superseded_by"] == "replace"
    assert by_key["c1-tok-2"]["properties"] == {"tokens": 300}
    assert by_key["c1-tok-2"]["batch"] == report["batch"]
    ok(cli, "check")

    # replaying it changes nothing, with --replace or without
    again = replace(cli, backfill)
    assert (again["accepted"], again["duplicates"], again["voided"]) == (0, 3, 0)
    plain = ok(cli, "ingest", str(backfill))
    assert (plain["accepted"], plain["duplicates"], plain["conflicts"]) == (0, 3, 0)
    assert plain["duplicates_of_corrected"] == 1  # c1-tok-2's line is its current version

    # 480 tokens: 380 × 0.001 = 0.38, was 0.25
    run = bill(cli)
    assert run["corrections"] == 1
    assert shown(cli, "ACME-000001") == before
    corrections = [row for row in invoices(cli).values() if row[1] != "invoice"]
    assert corrections == [("c1", "supplemental", "draft", "0.13")]
    ok(cli, "check")


def test_replace_refuses_a_file_that_leaves_its_window(cli: Cli, tmp_path: Path) -> None:
    invoice_shop(cli, tmp_path)
    stored = ok(cli, "events", "list", "--history", "--limit", "1000")
    receipts = ok(cli, "events", "receipts")
    cases = {
        "other-customer": tokens("c2-tok-1", 3, 5, customer="c2"),
        "outside": event_line("c1-tok-9", "c1", "tokens", "2026-11-03T10:00:00Z", tokens=5),
        "other-meter": event_line("c1-call-99", "c1", "api_calls", "2026-10-03T10:00:00Z"),
        "moved-key": tokens("c1-call-0", 2, 5),  # stored as an api_calls event
    }
    for name, line in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(tokens("c1-tok-1", 3, 999) + b"\n" + line + b"\n")
        report = replace(cli, path, 3)
        assert report["batch"] is None and report["rejected"] + report["conflicts"] == 1, name
        (reject,) = report["rejects"]
        assert reject["line"] == 2, (name, reject)
    assert ok(cli, "events", "list", "--history", "--limit", "1000") == stored
    assert ok(cli, "events", "receipts") == receipts

    good = tmp_path / "good.jsonl"
    good.write_bytes(tokens("c1-tok-1", 3, 100) + b"\n")
    assert fails(cli, 2, "ingest", str(good), "--replace", *WINDOW)["type"] == "usage_error"
    assert fails(cli, 2, "ingest", str(good), *WINDOW)["type"] == "usage_error"
    unknown = ["--customer", "nobody", "--meter", "tokens", *OCTOBER]
    assert fails(cli, 1, "ingest", str(good), "--replace", *unknown)["type"] == "not_found"
    dry = replace(cli, good, 0, "--dry-run")
    assert (dry["batch"], dry["voided"], dry["duplicates"]) == (None, 2, 1)
    assert ok(cli, "events", "list", "--history", "--limit", "1000") == stored


# --------------------------------------------------------------------------- policies


def test_corrections_follow_the_late_event_policy(cli: Cli, tmp_path: Path) -> None:
    """`next_invoice`: November's invoice carries the void's difference (a negative line
    marked late_from); `ignore`: the run books it and bills nothing. Finalized invoices stay
    as they were either way, and `check` agrees."""
    invoice_shop(cli, tmp_path)
    bill(cli, "--finalize")
    before = shown(cli, "ACME-000001")
    ok(cli, "project", "update", "acme", "--late-events", "next_invoice")
    ok(cli, "events", "void", "c1-call-0", "--reason", "test traffic")

    october = bill(cli)
    assert october["corrections"] == 0
    november = ok(cli, "run", "bill", "--period", "2026-11", "--as-of", "2026-12-02T00:00:00Z")
    assert november["corrections"] == 0
    c1 = next(
        row for row in ok(cli, "invoice", "list", "--period", "2026-11") if row["customer"] == "c1"
    )
    lines = ok(cli, "invoice", "show", c1["number"])["lines"]
    carried = [line for line in lines if line.get("late_from") == "ACME-000001"]
    assert [line["amount"] for line in carried] == ["-0.50"], lines
    assert shown(cli, "ACME-000001") == before
    ok(cli, "check")

    ok(cli, "project", "update", "acme", "--late-events", "ignore")
    ok(cli, "events", "void", "c1-call-1", "--reason", "test traffic")
    ignored = bill(cli)
    assert ignored["corrections"] == 0
    assert shown(cli, "ACME-000001") == before
    ok(cli, "check")
