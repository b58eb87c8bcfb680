"""Hostile input to `neruba ingest`: nothing crashes and every line is accounted for.

Promise 7 (nothing lost on bad input) and promise 1 (replay-safe ingest) under input nobody
should send but somebody will: truncated lines and files cut mid-UTF-8 sequence, wrong types,
numbers too large for any column, NaN/Infinity, invalid UTF-8, NUL bytes (raw, and as \\u0000:
PostgreSQL cannot store one in text, so every database refuses it the same way), 4-byte UTF-8,
BOMs, CRLF, blank lines, duplicate JSON object keys (nested ones too), JSON numbers with more
digits than a float holds and integers past 64 bits, property values a meter reads that no
column holds (`"tokens": 1e308`, 40-digit strings, `"abc"` on a sum meter), CSV records with
line breaks inside quoted fields and an unterminated quote, a 10 MB line, an idempotency key
reused with another payload, one-off charge lines with impossible amounts.

For every import, whatever the input:

- no traceback and no "internal error": the exit code is 0 or 3 and `--json` is one document;
- `lines == accepted + duplicates + conflicts + rejected`, `lines` being the non-blank lines
  (less the CSV header);
- the rejects file has exactly one JSON object per rejected or conflicting line, with its line
  number and a non-empty reason, and no line both stored and rejected;
- the events stored by the import are exactly `accepted` rows, each on a line of the file;
- importing the same file again accepts nothing new.

Generated files mix lines whose fate a small model predicts (well-formed events whose keys and
payloads repeat: accepted, duplicate or conflict; lines that must be rejected) with lines whose
fate depends on the dialect or is not specified (seven fraction digits, deep nesting):
those get a key of their own, so they never change the fate of another line. The property runs
many examples on SQLite and a handful on MariaDB and PostgreSQL; the fixed nasty files and the
10 MB line run on all three.
"""

from __future__ import annotations

import csv
import io
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from neruba_cli.db.schema import Charge, Event, ImportBatch
from tests.support.catalogs import EXAMPLE
from tests.support.cli import Cli
from tests.support.events import event
from tests.support.processes import assert_check_ok

CUSTOMERS = ("c1", "c2")
METERS = ("api_calls", "tokens")
EXAMPLES = {"sqlite": 40, "mariadb": 6, "postgresql": 6}
_examples = itertools.count()


@pytest.fixture
def shop(cli: Cli) -> Cli:
    """The shop of tests/cli/test_ingest.py: project acme, customers c1 and c2, the example
    catalog."""
    assert cli("project", "create", "acme").exit_code == 0
    for external in CUSTOMERS:
        assert cli("customer", "create", external, "--project", "acme").exit_code == 0
    assert cli("catalog", "apply", str(EXAMPLE), "--project", "acme").exit_code == 0
    return cli


# --------------------------------------------------------------------------- checking


@dataclass
class Imported:
    code: int
    summary: dict[str, Any]
    rejects: dict[int, dict[str, Any]]  # by line
    stored_lines: list[int]  # lines of the events this import stored


def run_ingest(cli: Cli, engine: Engine, path: Path, *extra: str) -> Imported:
    """Import `path`; check the invariants that hold whatever the input was."""
    rejects_path = path.with_name(path.name + ".rejects.jsonl")
    rejects_path.unlink(missing_ok=True)
    before = count_events(engine)
    result = cli("ingest", str(path), "--project", "acme", "--json", *extra)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.exit_code in (0, 3), (result.exit_code, result.stderr[-3000:])
    summary = result.json()
    lines, accepted, duplicates, conflicts, rejected = (
        summary[key] for key in ("lines", "accepted", "duplicates", "conflicts", "rejected")
    )
    assert lines == accepted + duplicates + conflicts + rejected, summary
    assert result.exit_code == (3 if conflicts + rejected else 0), summary
    for line in result.stderr.splitlines():  # warnings only, never an error
        assert not line.startswith("error"), result.stderr

    rejects: dict[int, dict[str, Any]] = {}
    if conflicts + rejected:
        assert summary["rejects_file"] == str(rejects_path)
        for raw in rejects_path.read_bytes().splitlines():
            item = orjson.loads(raw)
            assert isinstance(item["line"], int) and item["line"] >= 1, item
            assert isinstance(item["reason"], str) and item["reason"].strip(), item
            assert isinstance(item["raw"], str), item
            assert "internal error" not in item["reason"], item
            assert item["line"] not in rejects, f"line {item['line']} reported twice"
            rejects[item["line"]] = item
        assert len(rejects) == conflicts + rejected
    else:
        assert not rejects_path.exists()

    with engine.connect() as conn:
        found = [
            *conn.scalars(select(Event.line).where(Event.batch_id == summary["batch"])),
            *conn.scalars(select(Charge.line).where(Charge.batch_id == summary["batch"])),
        ]
        stored = [line for line in found if line is not None]
    assert len(stored) == accepted == count_events(engine) - before, summary
    assert len(set(stored)) == len(stored)
    assert not set(stored) & set(rejects), "a line both stored and rejected"
    with engine.connect() as conn:
        status = conn.scalar(select(ImportBatch.status).where(ImportBatch.id == summary["batch"]))
    assert status == "completed"
    return Imported(result.exit_code, summary, rejects, sorted(stored))


def assert_replay_accepts_nothing(cli: Cli, engine: Engine, path: Path, first: Imported) -> None:
    again = run_ingest(cli, engine, path)
    assert again.summary["accepted"] == 0, again.summary
    assert again.summary["lines"] == first.summary["lines"]
    # what was stored (by this file or before it) is a duplicate now; what was refused still is
    assert set(again.rejects) == set(first.rejects), (again.rejects, first.rejects)
    assert_check_ok(cli, f"after importing {path.name} twice")  # receipts = stored events


def count_events(engine: Engine) -> int:
    """Stored events and one-off charges (charges import through the same path)."""
    with engine.connect() as conn:
        return sum(
            int(conn.execute(select(func.count()).select_from(model)).scalar_one())
            for model in (Event, Charge)
        )


def nonblank(data: bytes) -> list[int]:
    """Line numbers of the lines the importer counts (blank and whitespace-only are skipped)."""
    return [
        number
        for number, line in enumerate(data.split(b"\n"), start=1)
        if line.strip() and not (number == 1 and line.strip() == b"\xef\xbb\xbf")
    ]


# --------------------------------------------------------------------------- fixed nasty files

# (line, expectation): "reject" must be rejected; "accept" must be stored; "either" is up to
# the dialect or unspecified, but must be one or the other, cleanly.
CHARGE = {
    "type": "charge",
    "idempotency_key": "ch-1",
    "customer": "c1",
    "amount": "9.99",
    "description": "Extra seat",
    "timestamp": "2026-10-06T00:00:00Z",
}
NASTY_JSONL: list[tuple[bytes, str]] = [
    (orjson.dumps(event("ok-1", quantity="2")), "accept"),
    (orjson.dumps(event("t-over-1", timestamp="9999-12-31T23:59:59-01:00")), "reject"),
    (orjson.dumps(event("t-over-2", timestamp="0001-01-01T00:00:00+01:00")), "reject"),
    (orjson.dumps(event("t-year-1", timestamp="0001-01-01T00:00:00Z")), "reject"),
    (orjson.dumps(event("t-week", timestamp="2026-W40-6T12:00:00Z")), "reject"),
    (orjson.dumps(event("t-basic", timestamp="20261003T120000Z")), "reject"),
    (orjson.dumps(event("t-hour", timestamp="2026-10-03T12Z")), "reject"),
    (orjson.dumps(event("t-off-sec", timestamp="2026-10-03T12:00:00+01:00:30")), "reject"),
    (orjson.dumps(event("q-underscore", quantity="1_000")), "reject"),
    (orjson.dumps(event("q-fullwidth", quantity="\uff11\uff12")), "reject"),
    (orjson.dumps(event("q-arabic", quantity="\u0661\u0662")), "reject"),
    (orjson.dumps(event("t-num", timestamp=1790000000)), "reject"),
    (orjson.dumps(event("t-bad", timestamp="2026-13-45T99:00:00Z")), "reject"),
    (orjson.dumps(event("nul\u0000key")), "reject"),
    (orjson.dumps(event("nul-prop", properties={"a": "x\u0000y"})), "reject"),
    (orjson.dumps(event("nul-prop-key", properties={"a\u0000": 1})), "reject"),
    (orjson.dumps(event("nul-cust", customer="c1\u0000")), "reject"),
    (b'{"idempotency_key": "raw-nul\x00", "customer": "c1"}', "reject"),
    (orjson.dumps(event("emoji-\U0001f600", properties={"e": "\U0001f4a9\U0001f600"})), "accept"),
    (orjson.dumps(event("\U0001f600" * 255)), "either"),
    (orjson.dumps(event("\U0001f600" * 256)), "reject"),
    (orjson.dumps(event("q-max", quantity="9" * 26 + "." + "9" * 12)), "accept"),
    (orjson.dumps(event("q-min", quantity="0.000000000001")), "accept"),
    (orjson.dumps(event("q-27", quantity="1" + "0" * 26)), "reject"),
    (orjson.dumps(event("q-5000", quantity="9" * 5000)), "reject"),
    (
        b'{"idempotency_key": "q-1e400", "customer": "c1", "meter": "api_calls", '
        b'"timestamp": "2026-10-03T12:00:00Z", "quantity": 1e400}',
        "reject",
    ),
    (
        b'{"idempotency_key": "q-10e400", "customer": "c1", "meter": "api_calls", '
        b'"timestamp": "2026-10-03T12:00:00Z", "quantity": 1' + b"0" * 400 + b"}",
        "reject",
    ),
    (
        b'{"idempotency_key": "q-nan", "customer": "c1", "meter": "api_calls", '
        b'"timestamp": "2026-10-03T12:00:00Z", "quantity": NaN}',
        "reject",
    ),
    (
        b'{"idempotency_key": "q-inf", "customer": "c1", "meter": "api_calls", '
        b'"timestamp": "2026-10-03T12:00:00Z", "quantity": -Infinity}',
        "reject",
    ),
    (orjson.dumps(event("q-sinf", quantity="Infinity")), "reject"),
    (orjson.dumps(event("q-snan", quantity="sNaN")), "reject"),
    (orjson.dumps(event("q-negzero", quantity=-0.0)), "accept"),
    (orjson.dumps(event("q-obj", quantity={"v": 1})), "reject"),
    (orjson.dumps(event("q-arr", quantity=[1])), "reject"),
    (orjson.dumps(event("q-bool", quantity=False)), "reject"),
    (orjson.dumps(event("q-exp", quantity="1e999999999")), "reject"),
    (orjson.dumps(event("p-str", properties="{}")), "reject"),
    (
        b'{"idempotency_key": "p-big", "customer": "c1", "meter": "api_calls", '
        b'"timestamp": "2026-10-03T12:00:00Z", "properties": {"n": 1'
        + b"0" * 30
        + b', "f": 1e300}}',
        "reject",  # an integer past 64 bits in a property: stored as a float, it was 1e30
    ),
    (
        b'{"idempotency_key": "p-float", "customer": "c1", "meter": "api_calls", '
        b'"timestamp": "2026-10-03T12:00:00Z", "properties": {"n": 1, "f": 1e300}}',
        "accept",
    ),
    (
        b'{"idempotency_key": "q-20-digits", "customer": "c1", "meter": "api_calls", '
        b'"timestamp": "2026-10-03T12:00:00Z", "quantity": 99999999999999999999}',
        "accept",  # exactly, not 1e20
    ),
    (
        b'{"idempotency_key": "q-17-digits", "customer": "c1", "meter": "api_calls", '
        b'"timestamp": "2026-10-03T12:00:00Z", "quantity": 1.0000000000000001}',
        "reject",
    ),
    (
        orjson.dumps(event("m-huge", meter="tokens", properties={"tokens": "1" + "0" * 39})),
        "reject",
    ),
    (
        b'{"idempotency_key": "m-1e308", "customer": "c1", "meter": "tokens", '
        b'"timestamp": "2026-10-03T12:00:00Z", "properties": {"tokens": 1e308}}',
        "reject",
    ),
    (orjson.dumps(event("m-text", meter="tokens", properties={"tokens": "abc"})), "reject"),
    (orjson.dumps(event("m-ok", meter="tokens", properties={"tokens": "1250"})), "accept"),
    (orjson.dumps(event("c-null", customer=None)), "reject"),
    (orjson.dumps(event("m-list", meter=["api_calls"])), "reject"),
    (orjson.dumps(5), "reject"),
    (b'"just a string"', "reject"),
    (b"[]", "reject"),
    (b"null", "reject"),
    (
        b'{"idempotency_key": "dup-json-key", "quantity": "1", "customer": "c1", "meter": '
        b'"api_calls", "timestamp": "2026-10-03T12:00:00Z", "quantity": "7"}',
        "reject",
    ),
    (
        b'{"idempotency_key": "dup-nested-key", "customer": "c1", "meter": "tokens", '
        b'"timestamp": "2026-10-03T12:00:00Z", "properties": {"tokens": 1, "tokens": 1000}}',
        "reject",
    ),
    (b'{"idempotency_key": "bad-utf8-\xff\xfe", "customer": "c1"}', "reject"),
    (b'{"idempotency_key": "surrogate-\\ud800", "customer": "c1"}', "reject"),
    (b"\xef\xbb\xbf" + orjson.dumps(event("bom-mid")), "reject"),
    (orjson.dumps(event("crlf")) + b"\r", "accept"),
    (b"   \t  ", "blank"),
    (b"", "blank"),
    (orjson.dumps(event("deep", properties={"d": [[[[[[[[[[[[1]]]]]]]]]]]]})), "accept"),
    (b"[" * 2000 + b"]" * 2000, "reject"),
    (orjson.dumps(CHARGE), "accept"),
    (orjson.dumps(CHARGE | {"idempotency_key": "ch-big", "amount": "1e999999999"}), "reject"),
    (orjson.dumps(CHARGE | {"idempotency_key": "ch-neg", "amount": "-1e999999999"}), "reject"),
    (orjson.dumps(CHARGE | {"idempotency_key": "ch-float", "amount": 9.99}), "reject"),
    (orjson.dumps(CHARGE | {"idempotency_key": "ch-nul", "description": "a\u0000b"}), "reject"),
    (orjson.dumps(CHARGE | {"idempotency_key": "ch-yen", "amount": "9.999"}), "reject"),
    (orjson.dumps(CHARGE | {"amount": "9.98"}), "conflict"),
    (orjson.dumps(event("ok-1", quantity="3")), "conflict"),
    (orjson.dumps(event("ok-1", quantity="2.000")), "duplicate"),
    (orjson.dumps(event("cut-at-the-end", quantity="2"))[:-9] + "é".encode()[:1], "reject"),
]


def _nasty_file(path: Path) -> tuple[Path, dict[int, str]]:
    data = b"\xef\xbb\xbf" + b"\r\n".join(line for line, _ in NASTY_JSONL)  # no final newline
    path.write_bytes(data)
    return path, {number: fate for number, (_, fate) in enumerate(NASTY_JSONL, start=1)}


def test_a_file_of_nasty_lines_is_accounted_for_line_by_line(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    path, fates = _nasty_file(tmp_path / "nasty.jsonl")
    first = run_ingest(shop, engine, path)
    counted = [number for number, fate in fates.items() if fate != "blank"]
    assert first.summary["lines"] == len(counted)
    stored, rejected = set(first.stored_lines), set(first.rejects)
    for number, fate in fates.items():
        where = (number, NASTY_JSONL[number - 1][0][:120], first.rejects.get(number))
        if fate == "accept":
            assert number in stored, where
        elif fate in ("reject", "conflict"):
            assert number in rejected, where
        elif fate == "duplicate":
            assert number not in stored and number not in rejected, where
        elif fate == "either":
            assert (number in stored) != (number in rejected), where
        else:
            assert number not in stored and number not in rejected, where
    conflicts = [n for n, fate in fates.items() if fate == "conflict"]
    assert first.summary["conflicts"] == len(conflicts) == 2
    assert "conflicts with charge 'ch-1'" in first.rejects[conflicts[0]]["reason"]
    assert "conflicts with event 'ok-1'" in first.rejects[conflicts[1]]["reason"]
    assert_replay_accepts_nothing(shop, engine, path, first)


# --------------------------------------------------------------------------- generated files

# Spellings of the same value: lines that differ only in these are duplicates, not conflicts.
QUANTITIES: list[list[Any]] = [
    ["1", 1, "1.0", "1e0", 1.0, " 1 "],
    ["0", "-0", -0.0, 0, "0.000", "-0e5"],
    ["2.5", 2.5, "25e-1", "2.50000"],
    ["99999999999999999999999999.999999999999"],
    ["99999999999999999999", "BIG:99999999999999999999", "99999999999999999999.000"],
]
"""`BIG:` marks a JSON integer too large for orjson to write (past 64 bits): the line is
written with the digits in place of the string."""
INSTANTS: list[list[str]] = [
    ["2026-10-03T12:00:00Z", "2026-10-03T14:00:00+02:00", "2026-10-03T12:00:00.000000+00:00"],
    ["2026-10-31T23:59:59.999999Z", "2026-11-01T00:59:59.999999+01:00"],
]
PROPERTIES: list[dict[str, Any]] = [
    {},
    {"region": "eu"},
    {"e": "\U0001f600 \u00e9"},
    {"tokens": 1250},  # read by meter tokens: numbers within the bounds are fine
    {"tokens": "0.000000000001", "region": "eu"},
]


@dataclass(frozen=True)
class Line:
    data: bytes
    fate: str  # "valid" (the model decides), "reject", "either", "blank", "header"
    key: str | None = None
    payload: tuple[Any, ...] | None = None  # the model's idea of the canonical payload


@st.composite
def valid_line(
    draw: st.DrawFn, keys: list[str], again: tuple[str, tuple[Any, ...]] | None = None
) -> Line:
    """A well-formed event; with `again`, the same key and payload as an earlier line, spelled
    anew (another spelling of the quantity and the instant, fields in another order)."""
    if again is None:
        key = draw(st.sampled_from(keys))
        customer = draw(st.sampled_from(CUSTOMERS))
        meter = draw(st.sampled_from(METERS))
        t = draw(st.integers(0, len(INSTANTS) - 1))
        q = draw(st.integers(0, len(QUANTITIES) - 1))
        p = draw(st.integers(0, len(PROPERTIES) - 1))
    else:
        key, (customer, meter, t, q, p) = again
    fields: dict[str, Any] = {
        "idempotency_key": key,
        "customer": customer,
        "meter": meter,
        "timestamp": draw(st.sampled_from(INSTANTS[t])),
        "properties": PROPERTIES[p],
    }
    quantity = draw(st.sampled_from(QUANTITIES[q]))
    if not (q == 0 and draw(st.booleans())):  # quantity 1 may also be left out
        fields["quantity"] = quantity
    order = draw(st.permutations(list(fields)))
    data = _dumps({name: fields[name] for name in order})
    if draw(st.booleans()):
        data = data.replace(b'":', b'" : ').replace(b",", b" ,\t")
    return Line(data, "valid", key, (customer, meter, t, q, p))


def _dumps(fields: dict[str, Any]) -> bytes:
    """orjson.dumps, with a `"BIG:<digits>"` string written as the JSON integer <digits>."""
    quantity = fields.get("quantity")
    if isinstance(quantity, str) and quantity.startswith("BIG:"):
        data = orjson.dumps(fields | {"quantity": "@BIG@"})
        return data.replace(b'"@BIG@"', quantity[4:].encode())
    return orjson.dumps(fields)


def _base(key: str) -> dict[str, Any]:
    return event(key, quantity="1", properties={"e": "\U0001f600"})


REJECTED_FIELDS: list[dict[str, Any]] = [
    {"quantity": {"v": 1}},
    {"quantity": [1]},
    {"quantity": True},
    {"quantity": None} | {"x": 1},
    {"timestamp": 1790000000},
    {"timestamp": "2026-10-03T12:00:00"},
    {"timestamp": None},
    {"timestamp": "9999-12-31T23:59:59-01:00"},
    {"customer": None},
    {"customer": 7},
    {"customer": "ghost"},
    {"meter": "nope"},
    {"properties": "{}"},
    {"properties": [1]},
    {"quantity": "9" * 5000},
    {"quantity": "1e400"},
    {"quantity": "1e999999999"},
    {"quantity": "NaN"},
    {"quantity": "-Infinity"},
    {"quantity": "-1"},
    {"quantity": "1e-13"},
    {"quantity": 0.12345678901234567},
    {"idempotency_key": 5},
    {"idempotency_key": "  "},
    {"idempotency_key": "k" * 256},
    {"properties": {"a": "\u0000"}},
    {"customer": "c1\u0000"},
    {"type": "refund"},
    {"timestamp": "2026-W40-6T12:00:00Z"},
    {"timestamp": "20261003T120000Z"},
    {"timestamp": "2026-10-03T12Z"},
    {"timestamp": "2026-10-03T12:00:00+01:00:30"},
    {"timestamp": "0999-10-03T12:00:00Z"},
    {"quantity": "1_000"},
    {"quantity": "\uff11"},
    {"quantity": "\u0661"},
    {"quantity": "BIG:1000000000000000000000000000"},  # 28 integer digits
    {"properties": {"big": "BIG"}},  # an integer past 64 bits where no meter reads it
    {"meter": "tokens", "properties": {"tokens": "1" + "0" * 39}},
    {"meter": "tokens", "properties": {"tokens": 1e308}},
    {"meter": "tokens", "properties": {"tokens": "abc"}},
    {"meter": "tokens", "properties": {"tokens": "1e3"}},
    {"meter": "tokens", "properties": {"tokens": True}},
    {"meter": "tokens", "properties": {"tokens": "0.0000000000001"}},
    {"meter": "tokens", "properties": {"tokens": "FLOAT17"}},  # 1.0000000000000001, a number
]


@st.composite
def rejected_line(draw: st.DrawFn, keys: list[str]) -> Line:
    key = draw(st.sampled_from(keys))
    good = orjson.dumps(_base(key))
    kind = draw(st.integers(0, 9))
    if kind <= 2:  # a wrong field
        data = _dumps(_base(key) | draw(st.sampled_from(REJECTED_FIELDS)))
        data = data.replace(b'{"big":"BIG"}', b'{"big":' + b"9" * 25 + b"}")
        data = data.replace(b'"FLOAT17"', b"1.0000000000000001")
    elif kind == 3:  # cut inside the object
        data = good[: draw(st.integers(1, len(good) - 1))]
    elif kind == 4:  # cut inside a 4-byte UTF-8 sequence
        at = good.index("\U0001f600".encode())
        data = good[: at + draw(st.integers(1, 3))]
    elif kind == 5:  # invalid UTF-8 inside a string
        junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf0\x9f"]))
        data = good.replace(b'"idempotency_key":"', b'"idempotency_key":"' + junk, 1)
    elif kind == 6:  # literals JSON does not have, or a number no double can hold
        literal = draw(
            st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1" + b"0" * 400])
        )
        data = good.replace(b'"quantity":"1"', b'"quantity":' + literal)
    elif kind == 7:  # raw control bytes, a BOM away from the start of the file
        data = draw(
            st.sampled_from(
                [good.replace(b"c1", b"c\x001"), b"\x00" + good, b"\xef\xbb\xbf" + good]
            )
        )
    elif kind == 8:  # not an object
        data = draw(st.sampled_from([b"[]", b"null", b"42", b'"evt"', b"{", b"}", b"[" * 5000]))
    elif draw(st.booleans()):  # a key given twice, at the top or in properties
        data = draw(
            st.sampled_from(
                [
                    good.replace(b'"quantity":"1"', b'"quantity":"1","quantity":"1000"'),
                    good.replace(b'"quantity":"1"', b'"quantity":"1","quantity":"1"'),
                    good.replace(
                        b'"idempotency_key":', b'"idempotency_key":"x","idempotency_key":'
                    ),
                    good.replace(b'{"e":', b'{"e":1,"e":'),
                    good.replace(b'"quantity":"1"', b'"quantity" : "1", "quantity":"2"'),
                ]
            )
        )
    else:  # an unknown field (a typo would otherwise bill 1)
        data = orjson.dumps(_base(key) | {"quanity": "2"})
    return Line(data, "reject", key)


@st.composite
def either_line(draw: st.DrawFn, unique: str) -> Line:
    """Accepted or rejected, depending on the dialect or on unspecified details; a key of its
    own so that its fate changes no other line's."""
    data = draw(
        st.sampled_from(
            [
                orjson.dumps(
                    _base(unique) | {"properties": {"d": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}}
                ),
                orjson.dumps(
                    _base(unique) | {"properties": {"n": 1e300, "m": -0.0, "s": "\\u0000"}}
                ),
                orjson.dumps(_base(unique) | {"timestamp": "2026-10-03T12:00:00.1234567Z"}),
            ]
        )
    )
    return Line(data, "either", unique)


@st.composite
def hostile_file(draw: st.DrawFn) -> tuple[bytes, list[Line]]:
    n = next(_examples)
    keys = [f"h{n:06d}-{i}" for i in range(3)]  # one width: draws depend on lengths
    uniques = (f"h{n:06d}-u{i}" for i in itertools.count())
    blank = st.sampled_from([b"", b"   ", b"\t", b"\r"]).map(lambda b: Line(b, "blank"))
    lines = draw(
        st.lists(
            st.one_of(
                valid_line(keys),
                valid_line(keys),
                rejected_line(keys),
                blank,
                st.builds(lambda: None).flatmap(lambda _: either_line(next(uniques))),
            ),
            min_size=1,
            max_size=25,
        )
    )
    for index, line in enumerate(list(lines)):  # some valid lines come back, respelled
        if line.fate == "valid" and draw(st.integers(0, 2)) == 0:
            assert line.key is not None and line.payload is not None
            at = draw(st.integers(index + 1, len(lines)))
            lines.insert(at, draw(valid_line(keys, again=(line.key, line.payload))))
    endings = [draw(st.sampled_from([b"\n", b"\r\n"])) for _ in lines]
    data = b"".join(line.data + end for line, end in zip(lines, endings, strict=True))
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    if draw(st.booleans()):
        data = data.rstrip(b"\r\n")  # no newline at the end
    return data, lines


def check_against_model(first: Imported, lines: list[Line], data: bytes) -> None:
    numbered: dict[int, Line] = {}  # by the first physical line of each line or record
    number = 1
    for line in lines:
        numbered[number] = line
        number += 1 + line.data.replace(b"\r\n", b"\n").count(b"\n")
    counted = [n for n, line in numbered.items() if line.fate not in ("blank", "header")]
    if number - 1 == len(lines):  # one physical line each: the blank ones are the skipped ones
        physical = nonblank(data.replace(b"\r\n", b"\n"))
        assert [n for n in physical if numbered[n].fate != "header"] == counted
    assert first.summary["lines"] == len(counted)
    seen: dict[str, tuple[Any, ...]] = {}
    accepted, duplicates, conflicts, rejected, either = set(), set(), set(), set(), set()
    for number, line in numbered.items():
        if line.fate == "reject":
            rejected.add(number)
        elif line.fate == "either":
            either.add(number)
        elif line.fate == "valid":
            assert line.key is not None
            if line.key not in seen:
                seen[line.key] = line.payload  # type: ignore[assignment]
                accepted.add(number)
            elif seen[line.key] == line.payload:
                duplicates.add(number)
            else:
                conflicts.add(number)
    stored, refused = set(first.stored_lines), set(first.rejects)
    assert stored - either == accepted, (stored, accepted)
    assert refused - either == rejected | conflicts, (refused, rejected, conflicts)
    assert either <= stored | refused
    assert first.summary["duplicates"] == len(duplicates)
    assert first.summary["conflicts"] == len(conflicts)
    for number in conflicts:
        assert first.rejects[number]["reason"].startswith(
            f"conflicts with event {numbered[number].key!r}"
        ), first.rejects[number]


def _hypothesis_property(
    shop: Cli,
    engine: Engine,
    tmp_path: Path,
    dialect: str,
    files: st.SearchStrategy[tuple[bytes, list[Line]]],
    name: str,
) -> None:
    @settings(
        max_examples=EXAMPLES[dialect],
        deadline=None,
        derandomize=True,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
        database=None,
    )
    @given(files)
    def prop(generated: tuple[bytes, list[Line]]) -> None:
        data, lines = generated
        path = tmp_path / name
        path.write_bytes(data)
        first = run_ingest(shop, engine, path)
        check_against_model(first, lines, data)
        assert_replay_accepts_nothing(shop, engine, path, first)
        for key in ("accepted", "duplicates", "conflicts", "rejected"):
            seen[key] += first.summary[key]

    seen = dict.fromkeys(("accepted", "duplicates", "conflicts", "rejected"), 0)
    prop()
    assert all(seen.values()), seen  # the examples did exercise every outcome


def test_generated_hostile_jsonl_is_accounted_for(
    shop: Cli, engine: Engine, tmp_path: Path, dialect: str
) -> None:
    _hypothesis_property(shop, engine, tmp_path, dialect, hostile_file(), "generated.jsonl")


# --------------------------------------------------------------------------- one 10 MB line


def test_a_10_mb_line_is_one_reject_and_the_lines_around_it_are_kept(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    blob = orjson.dumps(event("huge", properties={"blob": "\U0001f600" * (10 << 18)}))
    assert len(blob) > 10 << 20
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as handle:
        handle.write(orjson.dumps(event("before")) + b"\n")
        handle.write(blob + b"\n")
        handle.write(orjson.dumps(event("after")) + b"\n")
        handle.write(blob[: 5 << 20])  # and a file cut 5 MB into another such line
    first = run_ingest(shop, engine, path)
    assert first.stored_lines == [1, 3]
    assert sorted(first.rejects) == [2, 4]
    for reject in first.rejects.values():
        assert reject["reason"] == "line is longer than 1048576 bytes", reject
        assert len(reject["raw"]) <= 2000  # the rejects file does not carry the 10 MB
    assert_replay_accepts_nothing(shop, engine, path, first)


# --------------------------------------------------------------------------- CSV, CloudEvents

CSV_HEADER = b"idempotency_key,customer,meter,timestamp,quantity,properties.region"
NASTY_CSV: list[tuple[bytes, str]] = [
    (b"v1,c1,api_calls,2026-10-03T12:00:00Z,2,eu", "accept"),
    (b'v2,c1,api_calls,2026-10-03T12:00:00Z,,"a,b ""quoted"""', "accept"),
    (b"v3,c1,api_calls,2026-10-03T12:00:00Z,1e400,eu", "reject"),
    (b"v4,c1,api_calls,2026-10-03T12:00:00Z," + b"9" * 5000 + b",eu", "reject"),
    (b"v5,c1,api_calls,2026-10-03T12:00:00Z,NaN,eu", "reject"),
    (b"v6,c1,api_calls,2026-10-03T12:00:00Z,-0,eu", "accept"),
    (b"v7,c1,api_calls,1790000000,1,eu", "reject"),
    (b"v8,c1,api_calls,2026-10-03T12:00:00Z,1", "reject"),  # a field short
    (b"v9,c1,api_calls,2026-10-03T12:00:00Z,1,eu,extra", "reject"),
    (b"v10,c\xff1,api_calls,2026-10-03T12:00:00Z,1,eu", "reject"),
    (b"v11,c1,api_calls,2026-10-03T12:00:00Z,1,e\x00u", "reject"),
    (b"v12\x00,c1,api_calls,2026-10-03T12:00:00Z,1,eu", "reject"),
    (b"v13,,api_calls,2026-10-03T12:00:00Z,1,eu", "reject"),
    (b"v14,c1,api_calls,2026-10-03T12:00:00Z,1,\xf0\x9f\x98\x80", "accept"),
    (b"v16,c1,api_calls,9999-12-31T23:59:59-01:00,1,eu", "reject"),
    (b"", "blank"),
    (b"v1,c1,api_calls,2026-10-03T14:00:00+02:00,2.000,eu", "duplicate"),
    (b"v1,c1,api_calls,2026-10-03T12:00:00Z,3,eu", "conflict"),
    (b"v17,c1,api_calls,2026-10-03T12:00:00Z,1,\xf0\x9f", "reject"),  # cut mid-UTF-8
    (b"v18,c1,api_calls,2026-W40-6T12:00:00Z,1,eu", "reject"),
    (b"v19,c1,api_calls,2026-10-03T12:00:00Z,1_000,eu", "reject"),
    (b'v20,c1,api_calls,2026-10-03T12:00:00Z,1,"eu"x', "reject"),  # a stray quote
    (b'v15,c1,api_calls,2026-10-03T12:00:00Z,1,"unclosed', "reject"),  # swallows the rest: last
]


def test_a_csv_of_nasty_rows_is_accounted_for_row_by_row(
    shop: Cli, engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "nasty.csv"
    path.write_bytes(b"\xef\xbb\xbf" + CSV_HEADER + b"\r\n" + b"\r\n".join(r for r, _ in NASTY_CSV))
    first = run_ingest(shop, engine, path)
    fates = {number: fate for number, (_, fate) in enumerate(NASTY_CSV, start=2)}
    assert first.summary["lines"] == len([f for f in fates.values() if f != "blank"])
    stored, refused = set(first.stored_lines), set(first.rejects)
    for number, fate in fates.items():
        where = (number, NASTY_CSV[number - 2][0][:80], first.rejects.get(number))
        expected = {
            "accept": (True, False),
            "reject": (False, True),
            "conflict": (False, True),
            "duplicate": (False, False),
            "blank": (False, False),
        }.get(fate)
        if expected is None:
            assert (number in stored) != (number in refused), where
        else:
            assert (number in stored, number in refused) == expected, where
    assert_replay_accepts_nothing(shop, engine, path, first)


def test_nasty_cloudevents_are_accounted_for(shop: Cli, engine: Engine, tmp_path: Path) -> None:
    good = {
        "specversion": "1.0",
        "id": "ce-1",
        "source": "app",
        "type": "api_calls",
        "subject": "c1",
        "time": "2026-10-03T12:00:00Z",
        "data": {"quantity": "2"},
    }
    lines = [
        (orjson.dumps(good), True),
        (orjson.dumps(good | {"id": "ce-2", "data": "not an object"}), False),
        (orjson.dumps(good | {"id": "ce-3", "data": {"quantity": {"v": 1}}}), False),
        (orjson.dumps(good | {"id": None}), False),
        (orjson.dumps(good | {"id": "ce-4", "time": 1790000000}), False),
        (orjson.dumps(good | {"id": "ce-5", "subject": "c1\u0000"}), False),
        (orjson.dumps(good | {"id": "ce-6", "data": {"x": "\u0000"}}), False),
        (orjson.dumps([good]), False),
        (orjson.dumps(good | {"data": {"quantity": "3"}}), False),  # ce-1 again, other payload
        (orjson.dumps(good | {"id": "ce-7", "data": None}), True),
        (orjson.dumps(good)[:-20], False),
    ]
    path = tmp_path / "events.cloudevents"
    path.write_bytes(b"\n".join(line for line, _ in lines) + b"\n")
    first = run_ingest(shop, engine, path)
    kept = [number for number, (_, ok) in enumerate(lines, start=1) if ok]
    assert first.stored_lines == kept
    assert sorted(first.rejects) == [n for n in range(1, len(lines) + 1) if n not in kept]
    assert first.summary["conflicts"] == 1
    assert_replay_accepts_nothing(shop, engine, path, first)


CSV_REGIONS = ["", "eu", "\U0001f600 \u00e9", "two\nlines", 'three\r\nlines, "quoted"\n']
"""Regions with line breaks make records of several lines, numbered by their first."""
CSV_QUANTITIES = [
    [q for q in group if isinstance(q, str) and not q.startswith("BIG:")] for group in QUANTITIES
]
CSV_QUANTITIES[0].append("")  # an empty cell: the default, 1


def _csv_row(draw: st.DrawFn, cells: list[str], *, minimal: bool = False) -> bytes:
    buffer = io.StringIO()
    breaks = any("\n" in cell or "\r" in cell for cell in cells)  # no lineterminator: quote all
    if breaks or (not minimal and draw(st.booleans())):
        csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="").writerow(cells)
    else:
        csv.writer(buffer, quoting=csv.QUOTE_MINIMAL, lineterminator="").writerow(cells)
    return buffer.getvalue().encode("utf-8", "surrogateescape")  # lone \udcXX: a raw byte


@st.composite
def valid_csv_row(
    draw: st.DrawFn, keys: list[str], again: tuple[str, tuple[Any, ...]] | None = None
) -> Line:
    if again is None:
        key = draw(st.sampled_from(keys))
        customer = draw(st.sampled_from(CUSTOMERS))
        meter = draw(st.sampled_from(METERS))
        t = draw(st.integers(0, len(INSTANTS) - 1))
        q = draw(st.integers(0, len(CSV_QUANTITIES) - 1))
        p = draw(st.integers(0, len(CSV_REGIONS) - 1))
    else:
        key, (customer, meter, t, q, p) = again
    timestamp = draw(st.sampled_from(INSTANTS[t]))
    quantity = draw(st.sampled_from(CSV_QUANTITIES[q]))
    data = _csv_row(draw, [key, customer, meter, timestamp, quantity, CSV_REGIONS[p]])
    return Line(data, "valid", key, (customer, meter, t, q, p))


CSV_REJECTED_CELLS: list[tuple[int, str]] = [
    (0, ""),
    (0, "k" * 256),
    (0, "k\u0000"),
    (1, "ghost"),
    (1, "c1\u0000"),
    (1, ""),
    (2, "nope"),
    (3, "1790000000"),
    (3, "2026-10-03T12:00:00"),
    (3, "9999-12-31T23:59:59-01:00"),
    (3, "yesterday"),
    (4, "abc"),
    (4, "NaN"),
    (4, "Infinity"),
    (4, "1e400"),
    (4, "9" * 5000),
    (4, "-1"),
    (4, "1e-13"),
    (4, "1e999999999"),
    (5, "e\u0000u"),
]


@st.composite
def rejected_csv_row(draw: st.DrawFn, keys: list[str]) -> Line:
    key = draw(st.sampled_from(keys))
    cells = [key, "c1", "api_calls", "2026-10-03T12:00:00Z", "1", "\U0001f600"]
    kind = draw(st.integers(0, 5))
    if kind <= 1:  # a bad cell
        index, value = draw(st.sampled_from(CSV_REJECTED_CELLS))
        cells[index] = value
        data = _csv_row(draw, cells)
    elif kind == 2:  # a field short or a field too many
        data = _csv_row(draw, draw(st.sampled_from([cells[:-1], [*cells, "x"]])))
    elif kind == 3:  # cut before the last field (inside no quote: that would swallow the rest)
        row = _csv_row(draw, cells, minimal=True)
        data = row[: draw(st.integers(1, row.rindex(b",")))]
    elif kind == 4:  # cut inside the last cell's 4-byte UTF-8 sequence
        row = _csv_row(draw, cells, minimal=True)
        data = row[: row.index("\U0001f600".encode()) + draw(st.integers(1, 3))]
    else:  # invalid UTF-8 inside a cell
        junk = draw(st.sampled_from(["\udcff", "\udcc3"]))
        cells[draw(st.integers(0, 5))] += junk
        data = _csv_row(draw, cells)
    return Line(data, "reject", key)


@st.composite
def either_csv_row(draw: st.DrawFn, unique: str) -> Line:
    cells = [unique, "c1", "api_calls", "2026-10-03T12:00:00Z", "1", "eu"]
    data = draw(
        st.sampled_from(
            [
                _csv_row(draw, [*cells[:3], "2026-10-03T12:00:00.1234567Z", *cells[4:]]),
            ]
        )
    )
    return Line(data, "either", unique)


@st.composite
def hostile_csv(draw: st.DrawFn) -> tuple[bytes, list[Line]]:
    n = next(_examples)
    keys = [f"h{n:06d}-{i}" for i in range(3)]  # one width: draws depend on lengths
    uniques = (f"h{n:06d}-u{i}" for i in itertools.count())
    blank = st.sampled_from([b"", b"   ", b"\t"]).map(lambda b: Line(b, "blank"))
    lines = draw(
        st.lists(
            st.one_of(
                valid_csv_row(keys),
                valid_csv_row(keys),
                rejected_csv_row(keys),
                blank,
                st.builds(lambda: None).flatmap(lambda _: either_csv_row(next(uniques))),
            ),
            min_size=1,
            max_size=25,
        )
    )
    for index, line in enumerate(list(lines)):  # some valid rows come back, respelled
        if line.fate == "valid" and draw(st.integers(0, 2)) == 0:
            assert line.key is not None and line.payload is not None
            at = draw(st.integers(index + 1, len(lines)))
            lines.insert(at, draw(valid_csv_row(keys, again=(line.key, line.payload))))
    if draw(st.integers(0, 3)) == 0:  # an unterminated quote runs to the end: one reject
        row = _csv_row(draw, ["unclosed", "c1", "api_calls", "2026-10-03T12:00:00Z", "1", "x"])
        lines.append(Line(row[: row.rindex(b",") + 1] + b'"eu', "reject", "unclosed"))
    lines.insert(0, Line(CSV_HEADER, "header"))
    endings = [draw(st.sampled_from([b"\n", b"\r\n"])) for _ in lines]
    data = b"".join(line.data + end for line, end in zip(lines, endings, strict=True))
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    if draw(st.booleans()):
        data = data.rstrip(b"\r\n")
    return data, lines


def test_generated_hostile_csv_is_accounted_for(
    shop: Cli, engine: Engine, tmp_path: Path, dialect: str
) -> None:
    _hypothesis_property(shop, engine, tmp_path, dialect, hostile_csv(), "generated.csv")
