"""The fake Stripe wired in: the SDK pointed at it, retries and backoffs made quick."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from stripe import HTTPClient

from neruba_cli.services.stripe import gateway as stripe_gateway
from tests.fakes.stripe import FakeStripe

API_KEY = "sk_test_nerubaTests0123456789"
SECRET = "whsec_nerubaTestSecret0123456789"


def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStripe]:
    """A started fake Stripe that `neruba` reaches through NERUBA_STRIPE_API_BASE, stopped
    (and its hung requests let go) at the end."""
    server = FakeStripe(api_key=API_KEY).start()
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    monkeypatch.setenv("NERUBA_STRIPE_API_BASE", server.url)
    monkeypatch.setenv("NERUBA_STRIPE_TIMEOUT", "1")
    monkeypatch.setenv("NERUBA_STRIPE_MAX_RETRIES", "3")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setattr(HTTPClient, "INITIAL_DELAY", 0.01)  # the SDK's retry backoff
    monkeypatch.setattr(stripe_gateway, "RATE_LIMIT_BACKOFF", 0.01)
    try:
        yield server
    finally:
        server.release()
        server.stop()
