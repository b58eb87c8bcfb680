"""Strict input on every database: what billing reads is checked at the door, numbers are read
from the digits in the file, each JSON key once, CSV records (not lines), RFC 3339 timestamps,
ASCII digits — and the same rules for a meter added after its events, and for `catalog quote`.
"""

from __future__ import annotations

import gzip
import time
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine, select

from neruba_cli.db.tables import events_t
from tests.support.catalogs import EXAMPLE, catalog, meter, per_unit, plan
from tests.support.cli import Cli
from tests.support.events import event

TS = "2026-10-03T12:00:00Z"


@pytest.fixture
def shop(cli: Cli) -> Cli:
    """Project acme, customers c1 and c2, the example catalog (meter tokens sums
    properties.tokens)."""
    assert cli("project", "create", "acme").exit_code == 0
    for external in ("c1", "c2"):
        assert cli("customer", "create", external, "--project", "acme").exit_code == 0
    assert cli("catalog", "apply", str(EXAMPLE), "--project", "acme").exit_code == 0
    return cli


def ingest(cli: Cli, path: Path, code: int) -> dict:
    result = cli("ingest", str(path), "--project", "acme", "--json")
    assert result.exit_code == code, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    return result.json()


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def reasons(summary: dict) -> dict[int, str]:
    return {item["line"]: item["reason"] for item in summary["rejects"]}


def stored(engine: Engine) -> dict[str, tuple[Decimal, dict]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(events_t.c.idempotency_key, events_t.c.quantity, events_t.c.properties)
        )
        return {key: (Decimal(quantity), orjson.loads(props)) for key, quantity, props in rows}


def raw_event(key: str, body: str, meter: str = "api_calls") -> bytes:
    """An event line with `body` (JSON members, written as given) after the usual fields."""
    head = f'{{"idempotency_key": "{key}", "customer": "c1", "meter": "{meter}", '
    return f'{head}"timestamp": "{TS}", {body}}}'.encode()


def test_values_a_meter_reads_are_checked_as_billing_reads_them(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    lines = [
        orjson.dumps(event("big", meter="tokens", properties={"tokens": "1" + "0" * 39})),
        raw_event("e308", '"properties": {"tokens": 1e308}', meter="tokens"),
        orjson.dumps(event("abc", meter="tokens", properties={"tokens": "abc"})),
        orjson.dumps(event("exp", meter="tokens", properties={"tokens": "1e3"})),
        orjson.dumps(event("bool", meter="tokens", properties={"tokens": True})),
        orjson.dumps(event("places", meter="tokens", properties={"tokens": "0.0000000000001"})),
        orjson.dumps(event("ok-str", meter="tokens", properties={"tokens": "1250"})),
        orjson.dumps(event("ok-num", meter="tokens", properties={"tokens": 12.5})),
        orjson.dumps(event("ok-none", meter="tokens", properties={"region": "eu"})),
        # the same value where no meter reads it is only a property
        orjson.dumps(event("ok-other", properties={"tokens": "1" + "0" * 39})),
    ]
    summary = ingest(shop, write_lines(tmp_path / "tokens.jsonl", lines), 3)
    assert (summary["accepted"], summary["rejected"]) == (4, 6)
    why = reasons(summary)
    assert why[1] == "properties.tokens has more than 26 integer digits"
    assert why[2] == "properties.tokens has more than 26 integer digits"
    for line in (3, 4, 5):
        assert why[line].startswith("properties.tokens "), why[line]
        assert "is not a number, and meter tokens (sum) reads it as one" in why[line]
    assert why[6] == "properties.tokens has more than 12 decimal places"
    assert set(stored(engine)) == {"ok-str", "ok-num", "ok-none", "ok-other"}
    text = shop("ingest", str(tmp_path / "tokens.jsonl"), "--project", "acme")
    assert f"{tmp_path / 'tokens.jsonl'}:1: properties.tokens has more than 26" in text.stderr
    # the month bills: no stored value breaks it
    assert shop("subscription", "create", "c1", "pro", "--start", "2026-10-01T00:00:00Z",
                "--project", "acme").exit_code == 0  # fmt: skip
    bill = shop("run", "bill", "--period", "2026-10", "--project", "acme", "--json")
    assert bill.exit_code == 0, bill.stderr


def test_json_numbers_are_read_from_the_digits_in_the_file(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    lines = [
        raw_event("q20", '"quantity": 99999999999999999999'),
        raw_event("q17", '"quantity": 1.0000000000000001'),
        raw_event("q27", '"quantity": 123456789012345678901234567'),
        raw_event("p31", '"properties": {"n": 1' + "0" * 30 + "}"),
        raw_event("p17", '"properties": {"f": 0.10000000000000001}'),
        raw_event("t17", '"properties": {"tokens": 1.2345678901234567}', meter="tokens"),
        raw_event("ok", '"quantity": 2.5, "properties": {"n": 18446744073709551615}'),
    ]
    summary = ingest(shop, write_lines(tmp_path / "numbers.jsonl", lines), 3)
    why = reasons(summary)
    assert set(why) == {2, 3, 4, 5, 6}
    assert why[2].startswith("quantity 1.0000000000000001 has more than 15 significant digits")
    assert why[3] == "quantity has more than 26 integer digits"
    assert why[4].startswith("properties.n 1" + "0" * 30 + " is beyond the 64-bit integers")
    assert why[5].startswith("properties.f 0.10000000000000001 has more than 15 significant")
    assert why[6].startswith("properties.tokens 1.2345678901234567 has more than 15")
    events = stored(engine)
    assert events["q20"][0] == Decimal("99999999999999999999")  # not 1e20
    assert events["ok"] == (Decimal("2.5"), {"n": 18446744073709551615})


def test_a_key_given_twice_in_one_object_is_a_reject(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    lines = [
        raw_event("d1", '"quantity": 1, "quantity": 1000'),
        b'{"idempotency_key": "d2", "idempotency_key": "d3", "customer": "c1", '
        b'"meter": "api_calls", "timestamp": "' + TS.encode() + b'"}',
        raw_event("d4", '"properties": {"tokens": 1, "tokens": 1000}', meter="tokens"),
        raw_event("d5", '"quantity" : 1 , "quantity" : 2'),
        raw_event("d6", '"properties": {"a": {"b": 1, "b": 2}}'),
        raw_event("ok", '"properties": {"a": {"b": 1}, "b": "\\"x\\": 1"}'),
    ]
    summary = ingest(shop, write_lines(tmp_path / "dups.jsonl", lines), 3)
    why = reasons(summary)
    assert why == {
        1: "duplicate key 'quantity' in a JSON object",
        2: "duplicate key 'idempotency_key' in a JSON object",
        3: "duplicate key 'tokens' in a JSON object",
        4: "duplicate key 'quantity' in a JSON object",
        5: "duplicate key 'b' in a JSON object",
    }
    assert set(stored(engine)) == {"ok"}


def test_csv_is_read_as_records_with_their_first_line(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "records.csv"
    path.write_bytes(
        b"idempotency_key,customer,meter,timestamp,quantity,properties.note\r\n"
        b'r1,c1,api_calls,2026-10-03T12:00:00Z,2,"first line\r\nsecond line"\r\n'
        b"r2,c1,api_calls,2026-10-03T12:00:00Z,3,plain\r\n"
        b'r3,c1,api_calls,2026-10-03T12:00:00Z,1,"a ""quoted"" word"x\r\n'
        b'r4,c1,api_calls,2026-10-03T12:00:00Z,1,"never closed\r\n'
        b"r5,c1,api_calls,2026-10-03T12:00:00Z,1,swallowed\r\n"
    )
    summary = ingest(shop, path, 3)
    assert (summary["lines"], summary["accepted"], summary["rejected"]) == (4, 2, 2)
    why = reasons(summary)
    assert set(why) == {5, 6}  # r1 is lines 2-3, r2 line 4
    assert why[5].startswith("malformed CSV")
    assert why[6] == "malformed CSV: unexpected end of data"  # r5 is inside r4's quote
    events = stored(engine)
    assert events["r1"] == (Decimal(2), {"note": "first line\r\nsecond line"})
    assert set(events) == {"r1", "r2"}
    with engine.connect() as conn:
        lines = dict(conn.execute(select(events_t.c.idempotency_key, events_t.c.line)).all())
    assert lines == {"r1": 2, "r2": 4}


def test_timestamps_and_digits_are_those_of_the_contract(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    refused = [
        event("w", timestamp="2026-W40-6T12:00:00Z"),
        event("b", timestamp="20261003T120000Z"),
        event("h", timestamp="2026-10-03T12Z"),
        event("s", timestamp="2026-10-03T12:00:00+01:00:30"),
        event("y", timestamp="0999-10-03T12:00:00Z"),
        event("u", quantity="1_000"),
        event("f", quantity="\uff11\uff12"),
        event("a", quantity="\u0661\u0662"),
    ]
    accepted = [
        event("ok1", timestamp="2026-10-03T14:00:00+02:00"),
        event("ok2", timestamp="2026-10-03t12:00:00.5z"),
        event("ok3", timestamp="2026-10-03 12:00:00Z", quantity=" 1e3 "),
    ]
    path = write_lines(tmp_path / "ts.jsonl", [orjson.dumps(e) for e in refused + accepted])
    summary = ingest(shop, path, 3)
    why = reasons(summary)
    assert set(why) == set(range(1, 9))
    for line in (1, 2, 3, 4):
        assert "is not RFC 3339" in why[line], why[line]
    assert why[5] == "timestamp '0999-10-03T12:00:00Z' is before the year 1000"
    for line in (6, 7, 8):
        assert why[line].startswith("quantity ") and "is not a number" in why[line]
    assert stored(engine)["ok3"][0] == Decimal(1000)
    csv_path = tmp_path / "ts.csv"
    csv_path.write_bytes(
        b"idempotency_key,customer,meter,timestamp,quantity\n"
        b"c1,c1,api_calls,2026-W40-6T12:00:00Z,1\n"
        b"c2,c1,api_calls,2026-10-03T12:00:00Z,\xef\xbc\x91\n"
    )
    assert set(reasons(ingest(shop, csv_path, 3))) == {2, 3}


def test_a_charge_amount_is_ascii_digits(shop: Cli, tmp_path: Path) -> None:
    charge = {
        "type": "charge",
        "idempotency_key": "ch",
        "customer": "c1",
        "description": "Setup",
        "timestamp": "2026-10-05T00:00:00Z",
    }
    lines = [
        orjson.dumps(charge | {"amount": "1_000"}),
        orjson.dumps(charge | {"amount": "\u0661\u0662"}),
        orjson.dumps(charge | {"amount": "12.50", "timestamp": "2026-W41-1T00:00:00Z"}),
    ]
    summary = ingest(shop, write_lines(tmp_path / "charges.jsonl", lines), 3)
    assert summary["rejected"] == 3


def test_a_truncated_gzip_file_is_a_clear_error(shop: Cli, engine: Engine, tmp_path: Path) -> None:
    whole = gzip.compress(b"\n".join(orjson.dumps(event(f"g{i}")) for i in range(2000)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    result = shop("ingest", str(path), "--project", "acme")
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert f"cannot read {path}" in result.stderr
    assert stored(engine) == {}  # refused before the first batch: nothing half-written


def test_a_meter_added_later_is_checked_against_stored_events(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    lines = [
        orjson.dumps(event(f"s{i}", customer=f"c{1 + i % 2}", properties={"size": size}))
        for i, size in enumerate(["12", "9" * 40, "abc", "3", "1e400"])
    ]
    assert ingest(shop, write_lines(tmp_path / "sizes.jsonl", lines), 0)["accepted"] == 5
    later = tmp_path / "later.toml"
    later.write_text(
        catalog(
            meters=[meter("api_calls", "sum", field="properties.size")],
            plans=[plan("sized", "0", per_unit("api_calls", "0.01"))],
        )
    )
    refused = shop("catalog", "apply", str(later), "--project", "acme", "--json")
    assert refused.exit_code == 1, refused.stderr
    message = refused.error()["message"]
    assert message.startswith("meter api_calls: 3 stored events hold a properties.size billing")
    assert "s1 of c2, s2 of c1, s4 of c1" in message
    assert "first: properties.size has more than 26 integer digits" in message
    show = shop("catalog", "show", "--project", "acme", "--json").json()
    assert next(m for m in show["meters"] if m["code"] == "api_calls")["field"] == "quantity"
    forced = shop(
        "catalog", "apply", str(later), "--allow-unreadable-events", "--project", "acme", "--json"
    )
    assert forced.exit_code == 0, forced.stderr
    assert forced.json()["warnings"] == [message.removesuffix(". Nothing was applied")]
    assert set(stored(engine)) == {f"s{i}" for i in range(5)}  # nothing changed or dropped


def test_quote_events_hostile_lines_fail_fast(shop: Cli, tmp_path: Path) -> None:
    cases = {
        "deep": b"[" * 2000 + b"]" * 2000,
        "exp-string": orjson.dumps(event("x", quantity="1e999999999")),
        "exp-number": raw_event("x", '"quantity": 1e999999999'),
        "exp-zero": orjson.dumps(event("x", quantity="0e999999999")),
        "tokens": orjson.dumps(event("x", meter="tokens", properties={"tokens": "9" * 40})),
        "dup": raw_event("x", '"quantity": 1, "quantity": 1000'),
        "week": orjson.dumps(event("x", timestamp="2026-W40-6T12:00:00Z")),
    }
    for name, line in cases.items():
        path = write_lines(tmp_path / f"{name}.jsonl", [line])
        started = time.monotonic()
        result = shop("catalog", "quote", "pro", "--events", str(path), "--project", "acme")
        assert time.monotonic() - started < 30, name
        if name == "exp-zero":  # zero, however written
            assert result.exit_code == 0, result.stderr
            continue
        assert result.exit_code == 1, (name, result.stdout, result.stderr)
        assert f"{path}:1:" in result.stderr and "internal error" not in result.stderr, name
    for usage in ("api_calls=1_000", "api_calls=\uff11\uff12"):
        result = shop("catalog", "quote", "pro", "--usage", usage, "--project", "acme")
        assert result.exit_code == 2 and "is not a number" in result.stderr, usage  # a bad flag
