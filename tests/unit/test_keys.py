"""API keys and invite tokens: a pure format over an injected source of randomness."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain.keys import (
    BASE62,
    INVITE_KIND,
    INVITE_PATTERN,
    KEY_KINDS,
    KEY_PATTERN,
    checksum,
    generate,
    lookup_prefix,
    parse_secret,
)
from neruba_cli.services.tenancy.tokens import new_secret

kinds = st.sampled_from([*KEY_KINDS.values(), INVITE_KIND])


def seeded(seed: int):
    """A reproducible source of randomness with the signature of `secrets.randbelow`."""
    return random.Random(seed).randrange


def test_fixed_randomness_gives_a_fixed_secret() -> None:
    zeros = generate("nrb_live_", randbelow=lambda _n: 0)
    assert zeros == "nrb_live_" + "0" * 32 + checksum("nrb_live_" + "0" * 32)
    first = generate("nrb_test_", randbelow=seeded(3))
    assert first == generate("nrb_test_", randbelow=seeded(3))
    assert first != generate("nrb_test_", randbelow=seeded(4))


def test_each_character_is_one_draw_from_62() -> None:
    asked: list[int] = []

    def randbelow(bound: int) -> int:
        asked.append(bound)
        return len(asked) % bound

    secret = generate("nrb_live_", randbelow=randbelow)
    assert asked == [62] * 32
    assert secret[9:41] == "".join(BASE62[n % 62] for n in range(1, 33))


@given(kinds, st.integers(0, 2**32))
def test_generated_secrets_are_well_formed(kind: str, seed: int) -> None:
    secret = generate(kind, randbelow=seeded(seed))
    pattern = INVITE_PATTERN if kind == INVITE_KIND else KEY_PATTERN
    assert pattern.match(secret)
    what = "invite token" if kind == INVITE_KIND else "API key"
    parsed = parse_secret(secret, what=what)
    assert parsed.kind == kind.split("_")[1]
    assert parsed.prefix == lookup_prefix(secret) == secret[: len(kind) + 8]


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown secret kind"):
        generate("sk_live_", randbelow=lambda _n: 0)


def test_new_secret_draws_from_the_system() -> None:
    made = {new_secret("nrb_live_") for _ in range(20)}
    assert len(made) == 20
    assert all(parse_secret(secret).kind == "live" for secret in made)
