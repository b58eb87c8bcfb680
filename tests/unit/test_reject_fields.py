"""The field a reject's reason is about (`param` of the HTTP API's 422), read from the real
reasons the event and charge rules give."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from neruba_cli.domain.charges import validate_charge
from neruba_cli.domain.events import EventChecker, Rejected, reason_field

NOW = datetime(2026, 12, 1, tzinfo=UTC)
GOOD = {
    "idempotency_key": "k",
    "customer": "c1",
    "meter": "api_calls",
    "timestamp": "2026-10-03T12:00:00Z",
}


def _event_reason(**changes: Any) -> str:
    raw = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    with pytest.raises(Rejected) as refused:
        EventChecker(now=NOW, max_future=timedelta(hours=1), assume_tz=None).check(raw)
    return str(refused.value)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"idempotency_key": None}, "idempotency_key"),
        ({"idempotency_key": "x" * 300}, "idempotency_key"),
        ({"customer": 3}, "customer"),
        ({"meter": ""}, "meter"),
        ({"timestamp": "2026-10-03T12:00:00"}, "timestamp"),
        ({"timestamp": "2027-10-03T12:00:00Z"}, "timestamp"),
        ({"quantity": "lots"}, "quantity"),
        ({"quantity": True}, "quantity"),
        ({"properties": []}, "properties"),
        ({"operation": "double"}, "operation"),
        ({"quanity": 3}, "quanity"),
        ({"type": "thing"}, "type"),
    ],
)
def test_an_event_reason_names_its_field(changes: dict[str, Any], field: str) -> None:
    assert reason_field(_event_reason(**changes)) == field


def test_reasons_about_the_whole_line_name_no_field() -> None:
    with pytest.raises(Rejected) as refused:
        EventChecker(now=NOW, max_future=timedelta(hours=1), assume_tz=None).check([1])
    assert reason_field(str(refused.value)) is None
    assert reason_field("invalid JSON: unexpected character") is None


def test_charge_and_writer_reasons_name_their_field() -> None:
    charge = {k: v for k, v in GOOD.items() if k != "meter"}
    with pytest.raises(Rejected) as refused:
        validate_charge(
            {**charge, "amount": "-1", "description": "x"}, now=NOW, max_future=timedelta(0)
        )
    assert reason_field(str(refused.value)) == "amount"
    with pytest.raises(Rejected) as refused:
        validate_charge({**charge, "amount": "1", "meter": "m"}, now=NOW, max_future=timedelta(0))
    assert reason_field(str(refused.value)) == "meter"  # unknown field 'meter' for a charge
    assert reason_field("unknown customer 'c9' — did you mean 'c1'?") == "customer"
    assert reason_field("unknown meter 'api_cals'") == "meter"
    assert reason_field("negative quantity, and meter tokens does not allow it") == "quantity"
    assert reason_field("properties.tokens 'x' is not a number, and meter t") == "properties.tokens"
    assert reason_field("conflicts with charge 'k' earlier in this import") == "idempotency_key"
