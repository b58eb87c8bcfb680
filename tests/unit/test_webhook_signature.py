"""Stripe-Signature verification: raw-byte HMAC, rotation, signature before clock, no leaks."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import stripe
from hypothesis import given
from hypothesis import strategies as st

from neruba_cli.domain.errors import InvalidInput, NerubaError
from neruba_cli.domain.webhook_signature import (
    SignatureError,
    SignatureHeader,
    compute_signature,
    parse_header,
    parse_secrets,
    sign,
    verify,
)

SECRET = "whsec_known_vector_secret"
OTHER = "whsec_some_other_endpoint"
BODY = b'{"id":"evt_1","type":"invoice.paid"}'
T = 1_700_000_000
# Computed outside Python: printf '1700000000.<BODY>' | openssl dgst -sha256 -hmac <SECRET>
KNOWN_V1 = "fc1c88eed0277b545467e3f82f18c743d67138797c5fae8bbcc640e6bb6f516a"

payloads = st.binary(max_size=2048)
secrets_ = st.text(min_size=1, max_size=64).filter(lambda s: s.strip() == s and s != "")
timestamps = st.integers(min_value=0, max_value=2**40)
offsets = st.integers(min_value=-300, max_value=300)


def _message(error: NerubaError) -> str:
    return f"{error} {error.message} {error.hint}"


# --- Computing signatures -------------------------------------------------------------------


def test_known_vector_matches_openssl_and_hmac() -> None:
    independent = hmac.new(SECRET.encode(), b"%d." % T + BODY, hashlib.sha256).hexdigest()
    assert independent == KNOWN_V1
    assert compute_signature(BODY, SECRET, T) == KNOWN_V1
    assert sign(BODY, SECRET, T) == f"t={T},v1={KNOWN_V1}"


def test_headers_from_the_stripe_library_verify_and_ours_verify_there() -> None:
    text = BODY.decode()
    theirs = stripe.WebhookSignature.generate_signature_header(text, SECRET, timestamp=T)
    assert verify(BODY, theirs, [SECRET], now=T) == SignatureHeader(T, (KNOWN_V1,))
    assert stripe.WebhookSignature.verify_header(text, sign(BODY, SECRET, T), SECRET, None)


def test_a_str_payload_is_refused_because_it_is_no_longer_the_raw_body() -> None:
    with pytest.raises(TypeError, match="raw request body"):
        compute_signature(BODY.decode(), SECRET, T)  # type: ignore[arg-type]


# --- Round trips and tampering (properties) -------------------------------------------------


@given(payload=payloads, secret=secrets_, t=timestamps, offset=offsets)
def test_sign_then_verify_round_trips(payload: bytes, secret: str, t: int, offset: int) -> None:
    parsed = verify(payload, sign(payload, secret, t), [secret], now=t + offset)
    assert parsed.timestamp == t
    assert parsed.v1 == (compute_signature(payload, secret, t),)


@given(
    payload=st.binary(min_size=1, max_size=512),
    secret=secrets_,
    data=st.data(),
)
def test_any_flipped_byte_fails(payload: bytes, secret: str, data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    mask = data.draw(st.integers(min_value=1, max_value=255))
    tampered = bytearray(payload)
    tampered[index] ^= mask
    with pytest.raises(SignatureError, match="does not match any webhook secret"):
        verify(bytes(tampered), sign(payload, secret, T), [secret], now=T)


@given(payload=payloads, secret=secrets_, wrong=secrets_)
def test_a_wrong_secret_fails(payload: bytes, secret: str, wrong: str) -> None:
    if wrong == secret:
        return
    with pytest.raises(SignatureError, match="does not match"):
        verify(payload, sign(payload, secret, T), [wrong], now=T)


@given(payload=payloads, t=timestamps, shift=st.integers(min_value=1, max_value=10**6))
def test_a_changed_timestamp_fails(payload: bytes, t: int, shift: int) -> None:
    header = f"t={t + shift},v1={compute_signature(payload, SECRET, t)}"
    with pytest.raises(SignatureError, match="does not match"):
        verify(payload, header, [SECRET], now=t + shift)


# --- Rotation and several signatures --------------------------------------------------------


def test_rotation_accepts_a_delivery_signed_with_the_second_secret() -> None:
    assert verify(BODY, sign(BODY, SECRET, T), [OTHER, SECRET], now=T).timestamp == T
    assert verify(BODY, sign(BODY, OTHER, T), [OTHER, SECRET], now=T).timestamp == T


def test_any_v1_entry_may_match_including_only_the_second() -> None:
    header = f"t={T},v1={'0' * 64},v1={KNOWN_V1}"
    assert verify(BODY, header, [SECRET], now=T).v1 == ("0" * 64, KNOWN_V1)


def test_a_v0_signature_is_never_trusted_even_when_it_is_correct() -> None:
    with pytest.raises(SignatureError) as caught:
        verify(BODY, f"t={T},v0={KNOWN_V1}", [SECRET], now=T)
    assert caught.value.message == "no v1 signature in Stripe-Signature header"


def test_non_ascii_signature_is_a_mismatch_not_a_crash() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        verify(BODY, f"t={T},v1=é{KNOWN_V1[1:]}", [SECRET], now=T)


# --- Tolerance ------------------------------------------------------------------------------


@pytest.mark.parametrize("now", [T - 300, T, T + 300])
def test_exactly_the_tolerance_either_way_passes(now: int) -> None:
    assert verify(BODY, sign(BODY, SECRET, T), [SECRET], now=now).timestamp == T


def test_one_second_too_old_is_stale() -> None:
    with pytest.raises(SignatureError) as caught:
        verify(BODY, sign(BODY, SECRET, T), [SECRET], now=T + 301)
    assert "301 s older than now; tolerance is 300 s (stale or replayed delivery)" in str(
        caught.value
    )


def test_one_second_too_far_ahead_is_in_the_future() -> None:
    with pytest.raises(SignatureError) as caught:
        verify(BODY, sign(BODY, SECRET, T), [SECRET], now=T - 301)
    assert "301 s in the future; tolerance is 300 s" in str(caught.value)


def test_stale_message_names_the_moment_in_utc() -> None:
    t = int(datetime(2026, 11, 25, 10, 0, tzinfo=UTC).timestamp())
    with pytest.raises(SignatureError) as caught:
        verify(BODY, sign(BODY, SECRET, t), [SECRET], now=t + 612)
    assert caught.value.message == (
        "timestamp 2026-11-25T10:00:00Z is 612 s older than now; "
        "tolerance is 300 s (stale or replayed delivery)"
    )


def test_zero_tolerance_accepts_only_the_same_second() -> None:
    assert verify(BODY, sign(BODY, SECRET, T), [SECRET], now=T, tolerance=0).timestamp == T
    with pytest.raises(SignatureError, match="1 s older"):
        verify(BODY, sign(BODY, SECRET, T), [SECRET], now=T + 1, tolerance=0)


def test_signature_is_checked_before_the_clock() -> None:
    # A forgery with an old timestamp is reported as a forgery, not as a stale delivery.
    forged = f"t={T},v1={'a' * 64}"
    with pytest.raises(SignatureError, match="does not match"):
        verify(BODY, forged, [SECRET], now=T + 10**6)


def test_a_huge_genuine_timestamp_still_gets_a_readable_message() -> None:
    t = 10**15
    with pytest.raises(SignatureError, match=f"t={t} is"):
        verify(BODY, sign(BODY, SECRET, t), [SECRET], now=0)


@pytest.mark.parametrize("tolerance", [-1, -300])
def test_negative_tolerance_is_a_configuration_error(tolerance: int) -> None:
    with pytest.raises(InvalidInput) as caught:
        verify(BODY, sign(BODY, SECRET, T), [SECRET], now=T, tolerance=tolerance)
    assert not isinstance(caught.value, SignatureError)


# --- Header parsing -------------------------------------------------------------------------


def test_parse_tolerates_whitespace_and_ignores_other_schemes() -> None:
    parsed = parse_header(f"  t = {T} , v0=abc,  v1 = {KNOWN_V1} ,x=y, v1=def ,")
    assert parsed == SignatureHeader(timestamp=T, v1=(KNOWN_V1, "def"))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", "Stripe-Signature header is empty"),
        ("   ", "Stripe-Signature header is empty"),
        (f"v1={KNOWN_V1}", "Stripe-Signature header has no timestamp (t=...)"),
        (f"t=abc,v1={KNOWN_V1}", "timestamp 'abc' is not a whole number"),
        (f"t=,v1={KNOWN_V1}", "timestamp '' is not a whole number"),
        (f"t=-5,v1={KNOWN_V1}", "timestamp '-5' is not a whole number"),
        (f"t=1.5,v1={KNOWN_V1}", "timestamp '1.5' is not a whole number"),
        (f"t=1,t=2,v1={KNOWN_V1}", "has 2 timestamps"),
        (f"t={T}", "no v1 signature in Stripe-Signature header"),
        (f"t={T},v1=", "no v1 signature in Stripe-Signature header"),
        (f"t={T},v0=abc", "no v1 signature in Stripe-Signature header"),
        (f"t={T},garbage,v1={KNOWN_V1}", "item 'garbage' that is not key=value"),
        (f"t={T},={KNOWN_V1}", "is not key=value"),
    ],
)
def test_malformed_headers_are_refused_clearly(header: str, expected: str) -> None:
    with pytest.raises(SignatureError) as caught:
        parse_header(header)
    assert expected in caught.value.message
    with pytest.raises(SignatureError):
        verify(BODY, header, [SECRET], now=T)


def test_signature_error_is_invalid_input_with_its_own_kind() -> None:
    error = SignatureError("x")
    assert isinstance(error, InvalidInput)
    assert error.kind == "signature_invalid"
    assert error.exit_code == 1


# --- Secrets --------------------------------------------------------------------------------


def test_parse_secrets_splits_strips_and_deduplicates() -> None:
    assert parse_secrets(" whsec_a , ,whsec_b,whsec_a,") == ("whsec_a", "whsec_b")
    assert parse_secrets("whsec_only") == ("whsec_only",)


@pytest.mark.parametrize("value", [None, "", "   ", " , ,"])
def test_missing_secret_names_the_variable(value: str | None) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_secrets(value)
    assert "STRIPE_WEBHOOK_SECRET" in str(caught.value)


def test_verify_without_secrets_tells_to_set_the_variable() -> None:
    with pytest.raises(InvalidInput) as caught:
        verify(BODY, sign(BODY, SECRET, T), [], now=T)
    assert "STRIPE_WEBHOOK_SECRET" in str(caught.value)
    assert not isinstance(caught.value, SignatureError)


def test_verify_refuses_a_blank_secret_in_the_list() -> None:
    with pytest.raises(InvalidInput, match="blank"):
        verify(BODY, sign(BODY, SECRET, T), [SECRET, "  "], now=T)


def test_verify_refuses_a_bare_string_of_secrets() -> None:
    # Iterating "whsec_..." would try each character as a secret.
    with pytest.raises(TypeError, match="parse_secrets"):
        verify(BODY, sign(BODY, SECRET, T), SECRET, now=T)


@given(secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=16, max_size=40))
def test_no_failure_message_contains_the_secret(secret: str) -> None:
    genuine = sign(BODY, secret, T)
    failures: list[Callable[[], object]] = [
        lambda: verify(BODY + b" ", genuine, [secret], now=T),
        lambda: verify(BODY, genuine, [secret], now=T + 301),
        lambda: verify(BODY, genuine, [secret], now=T - 301),
        lambda: verify(BODY, f"t={T},v0=x", [secret], now=T),
        lambda: verify(BODY, "", [secret], now=T),
        lambda: verify(BODY, genuine, [secret, " "], now=T),
        lambda: verify(BODY, genuine, [secret], now=T, tolerance=-1),
        lambda: verify(BODY, sign(BODY, OTHER, T), [secret], now=T),
    ]
    for failure in failures:
        with pytest.raises(InvalidInput) as caught:
            failure()
        assert secret not in _message(caught.value)
        assert compute_signature(BODY, secret, T) not in _message(caught.value)
