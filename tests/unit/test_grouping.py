"""Pricing by property value (domain/grouping.py): group values, which groups get a line, the
price of each group, and corrections that touch one group's line only."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neruba_cli.domain.aggregation import AGGREGATIONS, EventRecord, MeterSpec, aggregate
from neruba_cli.domain.catalog import CatalogInvalid, load_version, parse_catalog, version_document
from neruba_cli.domain.grouping import (
    aggregate_groups,
    billed_keys,
    charge_for,
    group_key,
    group_text,
)
from neruba_cli.domain.invoice import (
    InvoiceInput,
    MeterUsage,
    PhasePlan,
    SubscriptionTerms,
    UsagePiece,
    build_invoice,
    correction_lines,
    line_key,
)
from neruba_cli.domain.periods import Period, Phase
from neruba_cli.domain.pricing import Charge

OCTOBER = Period(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))
D = Decimal

CATALOG = """
[[meters]]
code = "calls"
aggregation = "sum"

[[plans]]
code = "pro"
currency = "USD"
interval = "month"

  [[plans.charges]]
  meter = "calls"
  description = "API calls"
  group_by = ["region"]
  model = "per_unit"
  unit_amount = "0.002"
  free_units = "100"

    [[plans.charges.groups]]
    values = { region = "eu" }
    unit_amount = "0.003"
    free_units = "0"

    [[plans.charges.groups]]
    values = { region = "apac" }
    min_amount = "1.00"
"""


def _charge() -> Charge:
    catalog = parse_catalog(tomllib.loads(CATALOG), source="catalog.toml")
    return catalog.plans[0].charges[0]


def _invoice(groups: dict[tuple[str | None, ...], Decimal]) -> list[dict[str, Any]]:
    catalog = parse_catalog(tomllib.loads(CATALOG), source="catalog.toml")
    plan = catalog.plans[0]
    usage = MeterUsage(
        sum(groups.values(), D(0)),
        groups=tuple((key, MeterUsage(value, 1)) for key, value in groups.items()),
    )
    terms = SubscriptionTerms(
        id="sub_1",
        start=OCTOBER.start,
        end=None,
        trial_end=None,
        phases=(
            PhasePlan(
                Phase(OCTOBER.start, None, "pro@1"),
                plan,
                "sha256:x",
                {"calls": catalog.meters[0].spec},
            ),
        ),
        fee_periods=(),
        pieces=(UsagePiece("pro@1", OCTOBER.start, OCTOBER.end, {"calls": usage}),),
    )
    inp = InvoiceInput("c1", "USD", "UTC", "half_even", OCTOBER, "2026-10", (terms,))
    return build_invoice(inp).content["lines"]


def test_a_group_value_is_a_json_string_exactly() -> None:
    assert group_key(["region"], {"region": "eu"}) == ("eu",)
    assert group_key(["region"], {"region": "EU"}) == ("EU",)
    assert group_key(["region"], {"region": "eu "}) == ("eu ",)
    for other in ({}, {"region": None}, {"region": 1}, {"region": True}, {"region": ["eu"]}):
        assert group_key(["region"], other) == (None,)
    assert group_key(["region", "tier"], {"tier": "gold"}) == (None, "gold")
    assert group_text(["region", "tier"], (None, "gold")) == "region: (none), tier: gold"


def test_listed_groups_first_then_the_others_by_value_none_last() -> None:
    charge = _charge()
    observed = [("us",), (None,), ("EU",), ("eu",), ("bz",)]
    assert billed_keys(charge, observed) == [("eu",), ("apac",), ("EU",), ("bz",), ("us",), (None,)]


def test_each_group_has_its_own_price_free_units_and_minimum() -> None:
    lines = _invoice({("eu",): D(1200), ("us",): D(800), (None,): D(200)})
    got = [(line["description"], line["group"], line["amount"]) for line in lines]
    assert got == [
        ("API calls — region: eu", {"region": "eu"}, "3.60"),  # 1200 × 0.003, no free units
        ("API calls — region: apac", {"region": "apac"}, "0.00"),
        ("API calls — region: apac (minimum commitment)", {"region": "apac"}, "1.00"),
        ("API calls — region: us", {"region": "us"}, "1.40"),  # (800 - 100) × 0.002
        ("API calls — region: (none)", {"region": None}, "0.20"),  # (200 - 100) × 0.002
    ]


def test_a_late_event_in_one_group_corrects_that_line_only() -> None:
    billed = _invoice({("eu",): D(1200), ("us",): D(800)})
    now = _invoice({("eu",): D(1300), ("us",): D(800)})
    corrections = correction_lines(now, [billed], "USD")
    assert [(line["description"], line["quantity"], line["amount"]) for line in corrections] == [
        ("API calls — region: eu (correction)", "100", "0.30")
    ]


def test_a_line_without_a_group_keeps_the_identity_it_had() -> None:
    stored = {"kind": "usage", "meter": "calls", "service": {"start": "a", "end": "b"}}
    assert line_key(stored) == line_key({**stored, "group": None})
    assert line_key(stored) != line_key({**stored, "group": {"region": None}})
    assert line_key({**stored, "group": {"region": "eu"}}) != line_key(
        {**stored, "group": {"region": "us"}}
    )


def test_the_catalog_round_trips_and_explains_its_mistakes() -> None:
    catalog = parse_catalog(tomllib.loads(CATALOG), source="catalog.toml")
    plan = catalog.plans[0]
    document = version_document(plan, {m.code: m for m in catalog.meters})
    assert document["plan"]["charges"][0]["groups"] == [
        {"values": {"region": "eu"}, "unit_amount": "0.003", "free_units": "0"},
        {"values": {"region": "apac"}, "min_amount": "1"},
    ]
    assert load_version(document)[0] == plan
    eu = charge_for(plan.charges[0], ("eu",))
    assert (eu.unit_amount, eu.free_units) == (D("0.003"), D(0))
    assert charge_for(plan.charges[0], ("xx",)) is plan.charges[0]
    broken = CATALOG.replace('values = { region = "eu" }', 'values = { zone = "eu" }')
    broken = broken.replace('min_amount = "1.00"', 'rate = "2"')
    broken = broken.replace('group_by = ["region"]', 'group_by = ["region", "region"]')
    with pytest.raises(CatalogInvalid) as raised:
        parse_catalog(tomllib.loads(broken), source="catalog.toml")
    text = str(raised.value)
    assert "plans[0].charges[0].group_by: 'region' appears twice" in text
    recurring = CATALOG.replace(
        'aggregation = "sum"', 'aggregation = "weighted_sum"\nrecurring = true'
    )
    with pytest.raises(CatalogInvalid, match="is recurring: grouping it is not supported"):
        parse_catalog(tomllib.loads(recurring), source="catalog.toml")
    no_group_by = CATALOG.replace('group_by = ["region"]\n', "")
    with pytest.raises(CatalogInvalid, match="groups: needs group_by"):
        parse_catalog(tomllib.loads(no_group_by), source="catalog.toml")
    wrong = CATALOG.replace('unit_amount = "0.003"', 'rate = "2"')
    with pytest.raises(CatalogInvalid, match=r"groups\[0\]\.rate: a group sets the price"):
        parse_catalog(tomllib.loads(wrong), source="catalog.toml")
    missing = CATALOG.replace('values = { region = "eu" }', 'values = { zone = "eu" }')
    with pytest.raises(CatalogInvalid, match=r"groups\[0\]\.values: must give a string"):
        parse_catalog(tomllib.loads(missing), source="catalog.toml")


# --------------------------------------------------------------------------- properties

regions = st.sampled_from(["eu", "us", "EU", "eu ", "", 1, None, True, "(none)"])
events = st.lists(
    st.builds(
        lambda minute, quantity, region: EventRecord(
            OCTOBER.start + timedelta(minutes=minute),
            D(quantity),
            {} if region is None else {"region": region},
            minute,
        ),
        st.integers(0, 60 * 24 * 31 - 1),
        st.integers(-5, 1000),
        regions,
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(events=events)
def test_groups_of_count_and_sum_add_up_to_the_meter(events: list[EventRecord]) -> None:
    for aggregation in ("count", "sum"):
        meter = MeterSpec("calls", aggregation)
        groups = aggregate_groups(meter, ["region"], events, OCTOBER.start, OCTOBER.end)
        whole = aggregate(meter, events, OCTOBER.start, OCTOBER.end)
        assert sum(groups.values(), D(0)) == whole


@settings(max_examples=200, deadline=None)
@given(events=events)
def test_each_group_is_the_meter_over_its_own_events(events: list[EventRecord]) -> None:
    for aggregation in AGGREGATIONS:
        meter = MeterSpec("calls", aggregation, filters=(("region", "eu"),))
        groups = aggregate_groups(meter, ["region"], events, OCTOBER.start, OCTOBER.end)
        assert set(groups) <= {("eu",)}  # the meter's filter first, then the groups
        plain = MeterSpec("calls", aggregation)
        for key, value in aggregate_groups(
            plain, ["region"], events, OCTOBER.start, OCTOBER.end
        ).items():
            own = [event for event in events if group_key(["region"], event.properties) == key]
            assert value == aggregate(plain, own, OCTOBER.start, OCTOBER.end)


@settings(max_examples=200, deadline=None)
@given(usage=st.dictionaries(st.sampled_from(["eu", "us", "apac", None]), st.integers(0, 10**6)))
def test_the_invoice_prices_every_group_at_its_own_price(usage: dict[str | None, int]) -> None:
    """Each line is round(max(q - free, 0) × price): eu 0.003 no free units, others 0.002
    after 100 free; apac at least 1.00; the subtotal is the sum of the rounded lines."""
    lines = _invoice({(region,): D(quantity) for region, quantity in usage.items()})
    expected = D(0)
    for region in ["eu", "apac", *sorted(r for r in usage if r not in ("eu", "apac", None))]:
        quantity = D(usage.get(region, 0))
        free, price = (D(0), D("0.003")) if region == "eu" else (D(100), D("0.002"))
        amount = max(quantity - free, D(0)) * price
        rounded = amount.quantize(D("0.01"), ROUND_HALF_EVEN)
        if region == "apac":
            rounded = max(rounded, D("1.00"))
        expected += rounded
    if None in usage:
        expected += (max(D(usage[None]) - 100, D(0)) * D("0.002")).quantize(
            D("0.01"), ROUND_HALF_EVEN
        )
    assert sum((D(line["amount"]) for line in lines), D(0)) == expected
    keys = [line_key(line) for line in lines]
    assert len(keys) == len(set(keys))
