"""Row ids: a pure format over an injected clock and source of randomness."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.db.ids import new_id
from neruba_cli.domain.ids import (
    MAX_MILLIS,
    PREFIXES,
    RANDOM_BITS,
    has_prefix,
    make_id,
    parse_id,
)

ID_SHAPE = re.compile(r"^[a-z]+_[0-9a-hjkmnp-tv-z]{26}$")  # Crockford base 32, lower case

prefixes = st.sampled_from(sorted(PREFIXES))
millis = st.integers(0, MAX_MILLIS)
randoms = st.integers(0, (1 << RANDOM_BITS) - 1)


def seeded(seed: int):
    """A reproducible source of randomness with the signature of `secrets.randbits`."""
    return random.Random(seed).getrandbits


def test_a_fixed_clock_and_randomness_give_a_fixed_id() -> None:
    assert make_id("cus", now_ms=0, randbits=lambda _bits: 0) == "cus_" + "0" * 26
    moment = 1_793_491_200_000  # 2026-11-01T00:00:00Z
    first = make_id("inv", now_ms=moment, randbits=seeded(7))
    again = make_id("inv", now_ms=moment, randbits=seeded(7))
    other = make_id("inv", now_ms=moment, randbits=seeded(8))
    assert first == again != other
    assert first[:14] == other[:14]  # "inv_" and the 10 characters that hold the time
    assert ID_SHAPE.match(first) and has_prefix(first, "inv")


def test_the_random_part_asks_for_80_bits() -> None:
    asked: list[int] = []

    def randbits(bits: int) -> int:
        asked.append(bits)
        return (1 << bits) - 1

    made = make_id("txn", now_ms=MAX_MILLIS, randbits=randbits)
    assert asked == [RANDOM_BITS]
    assert parse_id(made).random == (1 << RANDOM_BITS) - 1
    assert parse_id(made).millis == MAX_MILLIS


@given(prefixes, millis, randoms)
def test_parse_reads_back_what_make_wrote(prefix: str, now_ms: int, bits: int) -> None:
    made = make_id(prefix, now_ms=now_ms, randbits=lambda _n: bits)
    assert ID_SHAPE.match(made)
    assert has_prefix(made, prefix)
    parsed = parse_id(made)
    assert (parsed.prefix, parsed.millis, parsed.random) == (prefix, now_ms, bits)


@given(prefixes, millis, millis, randoms, randoms)
def test_later_ids_sort_after_earlier_ones(
    prefix: str, early: int, late: int, bits_a: int, bits_b: int
) -> None:
    early, late = min(early, late), max(early, late)
    first = make_id(prefix, now_ms=early, randbits=lambda _n: bits_a)
    second = make_id(prefix, now_ms=late, randbits=lambda _n: bits_b)
    assert early == late or first < second


@pytest.mark.parametrize(
    ("prefix", "now_ms", "bits", "message"),
    [
        ("nope", 0, 0, "unknown id prefix"),
        ("cus", -1, 0, "48-bit clock"),
        ("cus", MAX_MILLIS + 1, 0, "48-bit clock"),
        ("cus", 0, 1 << RANDOM_BITS, "more than 80 bits"),
    ],
)
def test_bad_inputs_are_refused(prefix: str, now_ms: int, bits: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_id(prefix, now_ms=now_ms, randbits=lambda _n: bits)


@pytest.mark.parametrize(
    "text", ["cus_", "cus_" + "0" * 25, "zzz_" + "0" * 26, "cus_" + "u" * 26, "cus_" + "z" * 26]
)
def test_parse_refuses_what_is_not_an_id(text: str) -> None:
    with pytest.raises(ValueError, match="not a Neruba id"):
        parse_id(text)


def test_new_id_uses_the_clock_and_fresh_randomness() -> None:
    made = {new_id("evt") for _ in range(50)}
    assert len(made) == 50
    assert all(has_prefix(value, "evt") and ID_SHAPE.match(value) for value in made)
