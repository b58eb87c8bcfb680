"""Prorated usage (domain/prorated_usage.py) and prorated pricing (domain/pricing.py): worked
examples and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain.aggregation import EventRecord, MeterSpec
from neruba_cli.domain.periods import Period, service_fraction
from neruba_cli.domain.pricing import Charge, Tier, Usage, rate_charge
from neruba_cli.domain.prorated_usage import prorated_area, prorated_units, weights

D = Decimal
JAN = Period(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
SEATS = MeterSpec("seats", "sum", recurring=True)
USERS = MeterSpec("users", "unique_count", field="properties.user", recurring=True)


def at(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, tzinfo=UTC)


def seat(moment: datetime, quantity: str, sequence: int = 0) -> EventRecord:
    return EventRecord(moment, D(quantity), {}, sequence)


def user(moment: datetime, name: str, operation: str = "add", sequence: int = 0) -> EventRecord:
    return EventRecord(moment, D(1), {"user": name}, sequence, operation)


def jan(meter: MeterSpec, events: list[EventRecord], mode: str = "day", tz: str = "UTC") -> D:
    return prorated_units(meter, events, weights(JAN.start, JAN.end, JAN, mode, tz))


def test_a_seat_added_on_the_15th_counts_17_of_31_days() -> None:
    assert jan(SEATS, [seat(at(1), "10"), seat(at(15, 9), "5")]) == D("12.74194")  # ceil
    share = service_fraction(at(15, 9), JAN.end, JAN, mode="day", tz="UTC", ends_service=False)
    assert share == D(17) / D(31) or (share.numerator, share.denominator) == (17, 31)


def test_a_removal_counts_its_own_day_and_an_add_and_remove_on_one_day_count_one_day() -> None:
    assert jan(SEATS, [seat(at(1), "1"), seat(at(10, 9), "-1")]) == D("0.32259")  # 10/31
    assert jan(SEATS, [seat(at(1), "1"), seat(at(10), "-1")]) == D("0.29033")  # 9/31
    one_day = [user(at(5), "a", sequence=1), user(at(5, 12), "a", "remove", sequence=2)]
    assert jan(USERS, one_day) == D("0.03226")  # 1/31, rounded up
    # a repeated add or a remove of an absent value changes nothing
    noisy = [
        user(at(1), "a", sequence=1),
        user(at(3), "a", sequence=2),
        user(at(4), "b", "remove", sequence=3),
    ]
    assert jan(USERS, noisy) == 1


def test_units_carried_in_count_the_whole_window_and_second_mode_is_exact() -> None:
    before = [seat(datetime(2025, 6, 1, tzinfo=UTC), "4")]
    assert jan(SEATS, before) == 4
    half = [seat(at(16, 12), "2")]  # 15.5 of 31 days held
    assert jan(SEATS, half, "second") == 1
    assert jan(SEATS, half, "day") == D("1.03226")  # 16/31 × 2: the 16th counts whole


def test_days_are_local_days() -> None:
    # 23:30 UTC on Jan 14 is Jan 15 in Kolkata (+05:30): 17 local days, not 18
    kolkata = Period(
        datetime(2025, 12, 31, 18, 30, tzinfo=UTC), datetime(2026, 1, 31, 18, 30, tzinfo=UTC)
    )
    grid = weights(kolkata.start, kolkata.end, kolkata, "day", "Asia/Kolkata")
    assert (
        prorated_units(SEATS, [seat(datetime(2026, 1, 14, 23, 30, tzinfo=UTC), "31")], grid) == 17
    )


events = st.lists(
    st.tuples(
        st.integers(-5 * 86400, 31 * 86400 - 1),
        st.sampled_from(["1", "2", "-1", "0.5", "-3"]),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["add", "add", "remove"]),
    ),
    max_size=12,
)


def _records(drawn: list[tuple[int, str, str, str]]) -> list[EventRecord]:
    return [
        EventRecord(JAN.start + timedelta(seconds=s), D(q), {"user": name}, n, op)
        for n, (s, q, name, op) in enumerate(drawn)
    ]


@given(drawn=events, split_day=st.integers(2, 31), mode=st.sampled_from(["day", "second"]))
def test_pieces_split_at_a_day_start_add_up_to_the_period(
    drawn: list[tuple[int, str, str, str]], split_day: int, mode: str
) -> None:
    records = _records(drawn)
    middle = at(split_day)
    for meter in (SEATS, USERS):
        whole = prorated_area(meter, records, weights(JAN.start, JAN.end, JAN, mode, "UTC"))
        first = prorated_area(meter, records, weights(JAN.start, middle, JAN, mode, "UTC"))
        second = prorated_area(meter, records, weights(middle, JAN.end, JAN, mode, "UTC"))
        assert first + second == whole


@given(drawn=events)
def test_each_stay_of_a_value_counts_at_most_the_whole_period(
    drawn: list[tuple[int, str, str, str]],
) -> None:
    """A value counts from its add to its remove (both days whole): at most one period per
    stay, and nothing for a remove of an absent value or a second add."""
    records = _records(drawn)
    stays = 0
    state: set[str] = set()
    for record in sorted(records, key=lambda r: (r.timestamp, r.sequence)):
        name = str(record.properties["user"])
        if record.operation == "remove":
            state.discard(name)
        elif name not in state:
            state.add(name)
            stays += 1
    assert 0 <= jan(USERS, records) <= stays


@given(
    full=st.decimals(min_value=0, max_value=1000, places=0),
    share=st.decimals(min_value=0, max_value=1, places=5),
    free=st.sampled_from([D(0), D(2)]),
)
def test_prorated_pricing(full: D, share: D, free: D) -> None:
    prorated = full * share
    tiers = (Tier(D(10), D("10")), Tier(None, D("8"), D("5")))
    volume = rate_charge(
        Charge("seats", "volume", tiers=tiers, prorated=True, free_units=free),
        Usage(full, None, prorated),
    )
    billable = max(prorated - free, D(0))
    in_top = max(full - free, D(0)) > 10
    price, flat = (D(8), D(5)) if in_top else (D(10), D(0))
    assert volume.amount == billable * price + flat  # tier from the unprorated units
    assert (volume.quantity, volume.unprorated_quantity) == (prorated, full)
    per_unit = rate_charge(
        Charge("seats", "per_unit", unit_amount=D("10"), prorated=True), Usage(full, None, prorated)
    )
    assert per_unit.amount == prorated * 10
    graduated = rate_charge(
        Charge("seats", "graduated", tiers=tiers, prorated=True), Usage(full, None, prorated)
    )
    assert graduated.amount == min(prorated, D(10)) * 10 + max(prorated - 10, D(0)) * 8 + (
        D(5) if prorated > 10 else D(0)
    )


def test_a_service_ending_mid_day_counts_its_last_day_like_the_base_fee() -> None:
    cancel = at(20, 15)
    events = [seat(at(1), "1")]
    ended = weights(JAN.start, cancel, JAN, "day", "UTC", ends_service=True)
    assert prorated_units(SEATS, events, ended) == D("0.64517")  # 20/31, rounded up
    fee = service_fraction(JAN.start, cancel, JAN, mode="day", tz="UTC", ends_service=True)
    assert (fee.numerator, fee.denominator) == (20, 31)
    cut = weights(JAN.start, cancel, JAN, "day", "UTC")  # a plan change: the day goes on
    assert prorated_units(SEATS, events, cut) == D("0.61291")  # 19/31, rounded up
