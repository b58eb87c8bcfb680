"""The pure retention and privacy rules (domain/retention.py, domain/privacy.py), on plain
values, with hypothesis for the properties that must hold for every input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain import privacy
from neruba_cli.domain.aggregation import MeterSpec
from neruba_cli.domain.errors import InvalidInput, UsageError
from neruba_cli.domain.retention import (
    SKIP_CODES,
    MonthFacts,
    check_as_of,
    judge,
    keep_only,
    parse_age,
    read_properties,
)

NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
VALUES = st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none())
PROPERTIES = st.dictionaries(NAMES, VALUES, max_size=8)
MOMENTS = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
)


# --------------------------------------------------------------------------- ages


@pytest.mark.parametrize(
    ("text", "as_of", "cutoff"),
    [
        ("13m", "2027-02-01T00:00:00", "2026-01-01T00:00:00"),
        ("1m", "2026-03-31T12:00:00", "2026-02-28T12:00:00"),  # the day is clamped
        ("2y", "2028-02-29T00:00:00", "2026-02-28T00:00:00"),
        ("90d", "2026-04-01T00:00:00", "2026-01-01T00:00:00"),
        ("2w", "2026-01-15T00:00:00", "2026-01-01T00:00:00"),
        (" 13m ", "2027-02-01T00:00:00", "2026-01-01T00:00:00"),
    ],
)
def test_ages_count_back_on_the_calendar(text: str, as_of: str, cutoff: str) -> None:
    moment = datetime.fromisoformat(as_of).replace(tzinfo=UTC)
    assert parse_age(text).cutoff(moment) == datetime.fromisoformat(cutoff).replace(tzinfo=UTC)


@pytest.mark.parametrize("text", ["", "13", "m", "13 months", "-1m", "1.5y", "0d", "12h", "30s"])
def test_bad_ages_are_refused_with_the_units(text: str) -> None:
    with pytest.raises(InvalidInput, match="--older-than"):
        parse_age(text)


@given(MOMENTS, st.integers(1, 600), st.sampled_from("dwmy"))
def test_the_cutoff_is_always_in_the_past_and_grows_with_as_of(
    as_of: datetime, amount: int, unit: str
) -> None:
    age = parse_age(f"{amount}{unit}")
    cutoff = age.cutoff(as_of)
    assert cutoff < as_of
    assert age.cutoff(as_of + timedelta(days=1)) >= cutoff


# --------------------------------------------------------------------------- eligibility

CUTOFF = datetime(2026, 1, 1, tzinfo=UTC)
OLD = datetime(2025, 11, 1, tzinfo=UTC)


def facts(**changes: Any) -> MonthFacts:
    base: dict[str, Any] = {"label": "2025-10", "invoices": 2, "drafts": 0, "last_end": OLD}
    return MonthFacts(**{**base, **changes})


def test_a_closed_settled_month_is_eligible() -> None:
    assert judge(facts(), CUTOFF, pushes_to_stripe=False).eligible
    assert judge(facts(last_end=CUTOFF), CUTOFF, pushes_to_stripe=False).eligible  # ended on it
    assert judge(facts(unpushed=2), CUTOFF, pushes_to_stripe=False).eligible  # no Stripe


@pytest.mark.parametrize(
    ("changes", "stripe", "reason", "code"),
    [
        ({"invoices": 0, "last_end": None}, False, "no invoices", "no_invoices"),
        (
            {"last_end": CUTOFF + timedelta(microseconds=1)},
            False,
            "not old enough",
            "not_old_enough",
        ),
        ({"drafts": 1}, False, "draft", "drafts"),
        ({"pending": 3}, False, "events arrived after its last billing run", "pending_events"),
        ({"unpushed": 1}, True, "not pushed to Stripe", "not_pushed"),
    ],
)
def test_each_rule_keeps_a_month_out(
    changes: dict[str, Any], stripe: bool, reason: str, code: str
) -> None:
    verdict = judge(facts(**changes), CUTOFF, pushes_to_stripe=stripe)
    assert not verdict.eligible and verdict.reason is not None and reason in verdict.reason
    assert verdict.code == code and code in SKIP_CODES  # what scripts and the CLI compare


def test_an_as_of_in_the_future_is_a_usage_error() -> None:
    check_as_of(CUTOFF, CUTOFF)  # now itself is fine
    check_as_of(CUTOFF - timedelta(days=1), CUTOFF)
    with pytest.raises(UsageError, match=r"--as-of .* is in the future") as raised:
        check_as_of(CUTOFF + timedelta(seconds=1), CUTOFF)
    assert raised.value.exit_code == 2


@given(
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 3),
    st.booleans(),
    st.integers(-40, 40),
)
def test_eligible_exactly_when_every_rule_holds(
    invoices: int, drafts: int, pending: int, unpushed: int, stripe: bool, days: int
) -> None:
    last_end = CUTOFF + timedelta(days=days)
    month = MonthFacts(
        "2025-10", invoices, drafts, last_end if invoices else None, pending, unpushed
    )
    expected = (
        invoices > 0
        and last_end <= CUTOFF
        and drafts == 0
        and pending == 0
        and (not stripe or unpushed == 0)
    )
    verdict = judge(month, CUTOFF, pushes_to_stripe=stripe)
    assert verdict.eligible == expected
    assert (verdict.reason is None) == expected
    assert (verdict.code is None) == expected


# --------------------------------------------------------------------------- properties

METERS = [
    MeterSpec("tokens", "sum", "properties.tokens"),
    MeterSpec("eu_calls", "count", filters=(("region", "eu"),)),
    MeterSpec("seats", "unique_count", "properties.user", filters=(("plan", "pro"),)),
    MeterSpec("calls", "count"),
]


def test_the_properties_meters_read_are_fields_and_filters() -> None:
    assert read_properties(METERS) == {"tokens", "region", "user", "plan"}
    assert read_properties([]) == frozenset()


@given(PROPERTIES, st.frozensets(NAMES, max_size=4))
def test_keep_only_keeps_exactly_what_meters_read_and_counts_the_rest(
    properties: dict[str, Any], kept: frozenset[str]
) -> None:
    remaining, dropped = keep_only(properties, kept)
    assert set(remaining) == set(properties) & kept
    assert all(remaining[key] == properties[key] for key in remaining)
    assert dropped == len(properties) - len(remaining)
    assert list(remaining) == [key for key in properties if key in kept]  # order kept
    assert keep_only(remaining, kept) == (remaining, 0)  # idempotent


@given(PROPERTIES, st.lists(NAMES, max_size=4))
def test_forgetting_removes_exactly_the_personal_keys(
    properties: dict[str, Any], personal: list[str]
) -> None:
    remaining, removed = privacy.without(properties, personal)
    assert not set(remaining) & set(personal)
    assert {k: v for k, v in properties.items() if k not in personal} == remaining
    assert removed == len(properties) - len(remaining)
    assert privacy.without(remaining, personal) == (remaining, 0)


def test_meter_uses_name_the_meter_and_how_it_reads() -> None:
    uses = privacy.meter_uses(["region", "email", "user"], [("catalog", m) for m in METERS])
    assert [str(u) for u in uses] == [
        "meter 'eu_calls' (the catalog) reads property 'region' as its filter",
        "meter 'seats' (the catalog) reads property 'user' as its field",
    ]
    frozen = privacy.meter_uses(["tokens"], [("pro@1", METERS[0])])
    assert [str(u) for u in frozen] == [
        "meter 'tokens' (plan version pro@1) reads property 'tokens' as its field"
    ]
    assert privacy.meter_uses(["email"], [("catalog", m) for m in METERS]) == []


def test_personal_property_names_are_checked() -> None:
    assert privacy.personal_properties(["ip", "email", "ip"]) == ("email", "ip")
    with pytest.raises(InvalidInput, match="not a property name"):
        privacy.personal_properties(["e-mail"])


def test_stripe_and_audit_scrubs_keep_the_shape() -> None:
    data = {"id": "in_1", "total": 5, "customer_email": "a@b.c", "customer_name": None}
    scrubbed, changed = privacy.scrub_stripe_object(data)
    assert changed and scrubbed == {**data, "customer_email": None}
    assert privacy.scrub_stripe_object(scrubbed) == (scrubbed, False)
    args = {"external_id": "c1", "name": "Ann", "email": "a@b.c", "currency": "USD"}
    cleaned, touched = privacy.scrub_audit_arguments(args)
    assert touched and cleaned["name"] == cleaned["email"] == privacy.FORGOTTEN
    assert cleaned["external_id"] == "c1" and cleaned["currency"] == "USD"
    assert privacy.scrub_audit_arguments(cleaned) == (cleaned, False)
