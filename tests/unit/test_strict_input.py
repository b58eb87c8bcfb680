"""The input rules in the domain: exact JSON lines, RFC 3339 event timestamps, ASCII decimals,
and the values a meter reads."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import pytest

from neruba_cli.domain import exact_json
from neruba_cli.domain.aggregation import MeterSpec
from neruba_cli.domain.events import Rejected, parse_quantity, parse_timestamp
from neruba_cli.domain.meter_values import check_meter_value, reads_value
from neruba_cli.domain.money import decimal_from_text


@pytest.mark.parametrize(
    ("line", "value"),
    [
        (b'{"q": 99999999999999999999}', {"q": 99999999999999999999}),
        (b'{"q": 1.0000000000000001}', {"q": Decimal("1.0000000000000001")}),
        (b'{"q": 0.0000000000000001}', {"q": 1e-16}),  # one digit: a float holds it
        (b'{"q": 1.5, "t": "12:00:00"}', {"q": 1.5, "t": "12:00:00"}),
        (b'{"a" : 1, "b" :{"a": 2}}', {"a": 1, "b": {"a": 2}}),
        (b'{"a": "\\"b\\": 1"}', {"a": '"b": 1'}),
        (b'[{"a": 1}, {"a": 2}]', [{"a": 1}, {"a": 2}]),
    ],
)
def test_exact_json_keeps_every_digit(line: bytes, value: object) -> None:
    assert exact_json.loads(line) == value
    assert type(exact_json.loads(line)) is type(value)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"a": 1, "a": 2}', "duplicate key 'a' in a JSON object"),
        (b'{"x": {"a": 1, "a": 1}}', "duplicate key 'a' in a JSON object"),
        (b'{"a" : 1, "a":2}', "duplicate key 'a' in a JSON object"),
        (b'[{"a": 1, "b": {}, "a": 3}]', "duplicate key 'a' in a JSON object"),
        (b"[" * 2000 + b"]" * 2000, "invalid JSON"),
        (b"[" * 1010 + b"]" * 1010, "invalid JSON: nested too deeply"),
        (b'{"q": 1e999999999}', "invalid JSON"),
        (b'{"q": 1', "invalid JSON"),
    ],
)
def test_exact_json_refuses(line: bytes, reason: str) -> None:
    with pytest.raises(exact_json.JsonError) as caught:
        exact_json.loads(line)
    assert str(caught.value).startswith(reason)


@pytest.mark.parametrize(
    "text",
    [
        "2026-W40-6T12:00:00Z",
        "20261003T120000Z",
        "2026-10-03T12Z",
        "2026-10-03T12:00Z",
        "2026-10-03T12:00:00+01:00:30",
        "2026-10-03T12:00:00+0100",
        "0999-10-03T12:00:00Z",
        "1000-01-01T00:30:00+01:00",
        "２０２６-10-03T12:00:00Z",
        "2026-10-03",
        " 2026-10-03T12:00:00Z",
    ],
)
def test_timestamps_outside_rfc_3339_are_refused(text: str) -> None:
    with pytest.raises(Rejected):
        parse_timestamp(text)


@pytest.mark.parametrize(
    "text",
    [
        "2026-10-03T12:00:00Z",
        "2026-10-03t12:00:00z",
        "2026-10-03 12:00:00Z",
        "2026-10-03T12:00:00.123456789+05:30",
        "1000-01-01T00:00:00Z",
    ],
)
def test_rfc_3339_timestamps_are_read(text: str) -> None:
    assert parse_timestamp(text).tzinfo is not None


@pytest.mark.parametrize("text", ["1_000", "１２", "١٢", "۱", "1\u00a0000", "٫5"])
def test_only_ascii_decimals_are_numbers(text: str) -> None:
    with pytest.raises(InvalidOperation):
        decimal_from_text(text)
    with pytest.raises(Rejected, match="is not a number"):
        parse_quantity(text)


def test_decimal_text_keeps_what_it_always_read() -> None:
    assert [decimal_from_text(t) for t in (" 1.5 ", "-3", "1e3", "+2", ".5")] == [
        Decimal("1.5"),
        Decimal(-3),
        Decimal(1000),
        Decimal(2),
        Decimal("0.5"),
    ]


SUM = MeterSpec("tokens", "sum", "properties.tokens")
UNIQUE = MeterSpec("users", "unique_count", "properties.tokens")
COUNT = MeterSpec("calls", "count", "properties.tokens")


@pytest.mark.parametrize(
    ("spec", "value", "reason"),
    [
        (SUM, "1" + "0" * 39, "properties.tokens has more than 26 integer digits"),
        (SUM, 1e308, "properties.tokens has more than 26 integer digits"),
        (SUM, "0.0000000000001", "properties.tokens has more than 12 decimal places"),
        (SUM, Decimal("1.0000000000000001"), "more than 15 significant digits"),
        (SUM, "abc", "is not a number, and meter tokens (sum) reads it as one"),
        (SUM, "1e3", "is not a number"),
        (SUM, "+5", "is not a number"),
        (SUM, True, "is not a number"),
        (SUM, {"v": 1}, "is not a number"),
        (UNIQUE, 1e308, "properties.tokens has more than 26 integer digits"),
    ],
)
def test_meter_values_billing_cannot_read_are_refused(
    spec: MeterSpec, value: object, reason: str
) -> None:
    with pytest.raises(Rejected, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_meter_value(spec, {"tokens": value})


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        (SUM, "1250"),
        (SUM, 12.5),
        (SUM, -3),
        (SUM, None),
        (SUM, "9" * 26 + "." + "9" * 12),
        (UNIQUE, "abc"),
        (UNIQUE, "1" + "0" * 39),  # a string: a value as written, never a number
        (UNIQUE, True),
        (COUNT, "1" + "0" * 39),
    ],
)
def test_meter_values_billing_reads_are_accepted(spec: MeterSpec, value: object) -> None:
    check_meter_value(spec, {"tokens": value})
    check_meter_value(spec, {})


def test_which_meters_read_a_value() -> None:
    assert reads_value(SUM) and reads_value(UNIQUE)
    assert not reads_value(COUNT) and not reads_value(MeterSpec("q", "sum"))
