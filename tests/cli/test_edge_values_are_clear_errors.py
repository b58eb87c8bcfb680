"""Values at the edges that used to surface as internal errors (OverflowError, ValueError,
TypeError): each is now a clear answer with its exit code, on every database."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from neruba_cli.domain.webhook_signature import sign
from tests.support.cli import Cli, expect, ok

SECRET = "whsec_edgeValuesSecret0123456789"


@pytest.fixture
def shop(cli: Cli) -> Cli:
    ok(cli, "project", "create", "acme", project="acme")
    ok(cli, "customer", "create", "c1")
    return cli


@pytest.mark.parametrize("by", ["day", "hour"])
def test_usage_of_the_first_month_of_the_calendar(shop: Cli, by: str) -> None:
    shown = ok(shop, "usage", "show", "c1", "--period", "0001-01", "--by", by)
    assert shown["period"] == {
        "label": "0001-01",
        "start": "0001-01-01T00:00:00Z",
        "end": "0001-02-01T00:00:00Z",
    }
    last = expect(shop, 1, "usage", "show", "c1", "--period", "9999-12", "--by", by)
    assert last["message"] == "period: reaches past the calendar's range"


def test_a_meter_field_with_a_hyphen_is_a_catalog_error_with_its_line(shop: Cli) -> None:
    Path("catalog.toml").write_text(
        '[[meters]]\ncode = "tokens"\naggregation = "sum"\nfield = "properties.a-b"\n'
    )
    error = expect(shop, 1, "catalog", "apply", "catalog.toml")
    assert error["type"] == "invalid_input"
    assert (
        'catalog.toml:4: meters[0].field: use "quantity" or "properties.<name>"'
        in (error["message"])
    )
    assert "internal error" not in error["message"]
    assert ok(shop, "catalog", "show")["meters"] == []


def _event(created: object) -> bytes:
    invoice = {"id": "in_1", "object": "invoice", "metadata": {}, "created": 1_790_000_000}
    return orjson.dumps(
        {
            "id": "evt_1",
            "object": "event",
            "type": "invoice.payment_failed",
            "created": created,
            "data": {"object": invoice},
        }
    )


@pytest.mark.parametrize(
    ("created", "reason"),
    [
        (1e20, "1e+20 is not a whole number of Unix seconds"),
        ("yesterday", "'yesterday' is not a whole number of Unix seconds"),
        (10**15, "1000000000000000 Unix seconds is outside the years 1 to 9999"),
        (-(10**15), "-1000000000000000 Unix seconds is outside the years 1 to 9999"),
        (True, "True is not a whole number of Unix seconds"),
    ],
)
def test_a_signed_webhook_with_an_impossible_time_is_refused(
    shop: Cli, monkeypatch: pytest.MonkeyPatch, created: object, reason: str
) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    body = _event(created)
    Path("event.json").write_bytes(body)
    header = sign(body, SECRET, int(time.time()))
    single = expect(shop, 1, "stripe", "webhook", "ingest", "event.json", "--signature", header)
    assert single["type"] == "invalid_input"
    assert single["message"] == f"event.json: event evt_1: created: {reason}"
    batch_line = {"headers": {"Stripe-Signature": header}, "body": body.decode()}
    Path("batch.jsonl").write_bytes(orjson.dumps(batch_line) + b"\n")
    batch = expect(shop, 3, "stripe", "webhook", "ingest", "batch.jsonl")
    assert batch["rejected"] == [
        {"where": "batch.jsonl:1", "error": f"batch.jsonl:1: event evt_1: created: {reason}"}
    ]
    assert ok(shop, "stripe", "webhook", "list") == []


def test_an_impossible_time_inside_the_object_is_refused_too(
    shop: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    body = _event(1_790_000_000).replace(b'"created":1790000000}', b'"created":"soon"}')
    assert b'"soon"' in body
    Path("event.json").write_bytes(body)
    header = sign(body, SECRET, int(time.time()))
    error = expect(shop, 1, "stripe", "webhook", "ingest", "event.json", "--signature", header)
    assert error["message"].endswith(
        "data.object.created: 'soon' is not a whole number of Unix seconds"
    )
    good = _event(1_790_000_000)
    Path("event.json").write_bytes(good)
    header = sign(good, SECRET, int(time.time()))
    applied = ok(shop, "stripe", "webhook", "ingest", "event.json", "--signature", header)
    assert applied["counts"]["processed"] == 1
