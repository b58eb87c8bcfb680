"""The rules of correcting stored usage (domain/event_corrections.py), without a database."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain.errors import InvalidInput, UsageError
from neruba_cli.domain.event_corrections import (
    ReplaceWindow,
    StoredVersion,
    amended_line,
    check_keys,
    check_reason,
    property_assignments,
    same_values,
)

OCT = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)


def stored(**fields: object) -> StoredVersion:
    base: dict[str, object] = {
        "key": "evt-1",
        "customer": "c1",
        "meter": "tokens",
        "timestamp": datetime(2026, 10, 3, 12, tzinfo=UTC),
        "quantity": Decimal(1),
        "properties": {"tokens": 100, "region": "eu"},
        "voided": False,
        "version": 1,
    }
    return StoredVersion(**{**base, **fields})  # type: ignore[arg-type]


def test_property_values_are_json_when_they_are_json_else_text() -> None:
    assert property_assignments(["tokens=1200", "region=eu", 'code="10"', "ok=true"]) == {
        "tokens": 1200,
        "region": "eu",
        "code": "10",
        "ok": True,
    }
    assert property_assignments(["note="]) == {"note": ""}
    with pytest.raises(UsageError, match="NAME=VALUE"):
        property_assignments(["tokens"])
    with pytest.raises(UsageError, match="twice"):
        property_assignments(["a=1", "a=2"])


def test_an_amendment_merges_properties_and_keeps_the_identity() -> None:
    line = amended_line(stored(), None, {"tokens": 150})
    assert line == {
        "idempotency_key": "evt-1",
        "customer": "c1",
        "meter": "tokens",
        "timestamp": "2026-10-03T12:00:00Z",
        "quantity": "1",
        "properties": {"tokens": 150, "region": "eu"},
    }
    assert amended_line(stored(operation="remove"), "2", {})["operation"] == "remove"
    with pytest.raises(InvalidInput, match="voided"):
        amended_line(stored(voided=True), "2", {})
    with pytest.raises(UsageError, match="what changes"):
        amended_line(stored(), None, {})


def test_reasons_and_keys() -> None:
    assert check_reason("  test traffic ") == "test traffic"
    for bad in ("", "   ", "x" * 1001):
        with pytest.raises(UsageError):
            check_reason(bad)
    assert check_keys(["a", "b", "a"]) == ["a", "b"]
    with pytest.raises(UsageError):
        check_keys([])


def test_the_replace_window_is_half_open_and_names_what_is_outside() -> None:
    window = ReplaceWindow("c1", "tokens", OCT, NOV)
    assert window.outside("c1", "tokens", OCT) is None
    assert "outside" in (window.outside("c1", "tokens", NOV) or "")
    assert "customer 'c2'" in (window.outside("c2", "tokens", OCT) or "")
    assert "meter 'api_calls'" in (window.outside("c1", "api_calls", OCT) or "")
    with pytest.raises(UsageError, match="--to"):
        ReplaceWindow("c1", "tokens", NOV, OCT)


@given(
    st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(-5, 5), max_size=3),
    st.booleans(),
)
def test_same_values_is_equality_of_the_current_version(
    quantity: Decimal, properties: dict[str, int], voided: bool
) -> None:
    version = stored(quantity=quantity, properties=properties, voided=voided)
    assert same_values(version, quantity, dict(properties)) is not voided
    assert not same_values(version, quantity + 1, properties)
    assert not same_values(version, quantity, {**properties, "z": 1})
    assert not same_values(version, quantity, properties, "remove")
