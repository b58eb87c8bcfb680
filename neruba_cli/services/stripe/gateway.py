"""The one door to Stripe: the only module that imports the `stripe` SDK.

Everything else speaks plain dicts to it. It owns the connection policy: the API key comes from
`STRIPE_API_KEY` only (never a flag, never printed), `NERUBA_STRIPE_API_BASE` points the SDK at
another Stripe-compatible server, every request has a timeout, and failures are retried:

- timeouts, dropped connections, 409 and 5xx by the SDK itself (`max_network_retries`, with
  exponential backoff and jitter), replaying the same idempotency key, so a request that was
  applied before its answer was lost is answered from Stripe's idempotency store instead of
  being applied twice;
- 429 (rate limited) here, with backoff, because the SDK leaves plain rate limits to the caller.

Stripe's errors become `StripeFailure` with Stripe's own message and request id, so an operator
can look the request up in the Stripe Dashboard.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import stripe

from neruba_cli.domain.errors import InvalidInput, NerubaError

ENV_KEY = "STRIPE_API_KEY"
ENV_BASE = "NERUBA_STRIPE_API_BASE"
ENV_TIMEOUT = "NERUBA_STRIPE_TIMEOUT"
ENV_RETRIES = "NERUBA_STRIPE_MAX_RETRIES"
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
RATE_LIMIT_RETRIES = 5
RATE_LIMIT_BACKOFF = 0.25  # seconds, doubled per retry
PAGE_SIZE = 100

_KEY_SHAPE = re.compile(r"^(sk|rk)_(test|live)_[0-9A-Za-z]{8,}$")

# resource name → the attribute of StripeClient that serves it
RESOURCES = (
    "customers",
    "invoices",
    "invoice_items",
    "invoice_payments",
    "payment_intents",
    "charges",
    "refunds",
    "credit_notes",
)


class StripeFailure(NerubaError):
    """Stripe answered with an error, or did not answer after every retry."""

    kind = "stripe_error"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        code: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.http_status = http_status


@dataclass(frozen=True)
class KeyStatus:
    present: bool
    well_formed: bool
    mode: str | None  # test | live

    @property
    def problem(self) -> str | None:
        if not self.present:
            return f"{ENV_KEY} is not set"
        if not self.well_formed:
            return f"{ENV_KEY} is not a Stripe secret or restricted key (sk_... or rk_...)"
        return None


def key_status(env: Mapping[str, str] = os.environ) -> KeyStatus:
    """Whether the key looks usable, without calling Stripe and without revealing it."""
    value = env.get(ENV_KEY, "").strip()
    match = _KEY_SHAPE.match(value)
    return KeyStatus(bool(value), match is not None, match.group(2) if match else None)


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{name} {raw!r} is not a number") from None
    if value < 0:
        raise InvalidInput(f"{name} {raw!r} must not be negative")
    return value


class Gateway:
    """Stripe requests as plain dicts in and out."""

    def __init__(
        self,
        client: stripe.StripeClient,
        *,
        rate_limit_retries: int = RATE_LIMIT_RETRIES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._rate_limit_retries = rate_limit_retries
        self._sleep = sleep

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> Gateway:
        status = key_status(env)
        if status.problem is not None:
            raise InvalidInput(
                status.problem,
                hint=f"export {ENV_KEY} in the environment; it is never taken as a flag",
            )
        base = env.get(ENV_BASE, "").strip() or None
        client = stripe.StripeClient(
            env[ENV_KEY].strip(),
            base_addresses={"api": base.rstrip("/")} if base else None,
            max_network_retries=int(_number(env, ENV_RETRIES, DEFAULT_RETRIES)),
            http_client=stripe.RequestsClient(timeout=_number(env, ENV_TIMEOUT, DEFAULT_TIMEOUT)),
        )
        return cls(client)

    # -- requests -------------------------------------------------------------------------

    def create(self, resource: str, params: dict[str, Any], *, key: str) -> dict[str, Any]:
        service = self._service(resource)
        return self._call(
            f"create {resource}",
            lambda: service.create(params=params, options={"idempotency_key": key}),
        )

    def retrieve(self, resource: str, object_id: str) -> dict[str, Any] | None:
        """The object, or None when Stripe has no such object (or it was deleted)."""
        service = self._service(resource)
        try:
            found = self._call(f"retrieve {object_id}", lambda: service.retrieve(object_id))
        except StripeFailure as exc:
            if exc.code == "resource_missing":
                return None
            raise
        return None if found.get("deleted") else found

    def finalize_invoice(self, invoice_id: str, *, key: str) -> dict[str, Any]:
        invoices = self._client.v1.invoices
        return self._call(
            f"finalize {invoice_id}",
            lambda: invoices.finalize_invoice(
                invoice_id, params={"auto_advance": False}, options={"idempotency_key": key}
            ),
        )

    def void_invoice(self, invoice_id: str, *, key: str) -> dict[str, Any]:
        invoices = self._client.v1.invoices
        return self._call(
            f"void {invoice_id}",
            lambda: invoices.void_invoice(invoice_id, options={"idempotency_key": key}),
        )

    def create_balance_transaction(
        self, customer: str, params: dict[str, Any], *, key: str
    ) -> dict[str, Any]:
        """A customer balance transaction (positive amount: a debit, negative: a credit)."""
        service: Any = self._client.v1.customers.balance_transactions
        return self._call(
            f"adjust the balance of {customer}",
            lambda: service.create(customer, params=params, options={"idempotency_key": key}),
        )

    def balance_transactions(self, customer: str) -> Iterator[dict[str, Any]]:
        """The customer's balance transactions, newest first."""
        service: Any = self._client.v1.customers.balance_transactions
        after: str | None = None
        while True:
            query: dict[str, Any] = {"limit": PAGE_SIZE}
            if after is not None:
                query["starting_after"] = after
            page = self._call(
                f"list the balance transactions of {customer}",
                partial(service.list, customer, params=query),
            )
            objects = list(page.get("data", []))
            yield from objects
            if not page.get("has_more") or not objects:
                return
            after = objects[-1]["id"]

    def delete_draft(self, invoice_id: str) -> None:
        """Stripe deletes draft invoices (a finalized one can only be voided)."""
        invoices = self._client.v1.invoices
        self._call(f"delete {invoice_id}", lambda: invoices.delete(invoice_id))

    def list_page(self, resource: str, params: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """One page (newest first, `starting_after` for the next); (objects, has_more)."""
        service = self._service(resource)
        page = self._call(f"list {resource}", lambda: service.list(params=params))
        return list(page.get("data", [])), bool(page.get("has_more"))

    def list_all(self, resource: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        after: str | None = None
        while True:
            query = {**params, "limit": PAGE_SIZE}
            if after is not None:
                query["starting_after"] = after
            objects, more = self.list_page(resource, query)
            yield from objects
            if not more or not objects:
                return
            after = objects[-1]["id"]

    # -- plumbing -------------------------------------------------------------------------

    def _service(self, resource: str) -> Any:
        if resource not in RESOURCES:
            raise ValueError(f"unknown Stripe resource {resource!r}")
        return getattr(self._client.v1, resource)

    def _call(self, what: str, request: Callable[[], Any]) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                result = request()
            except stripe.RateLimitError as exc:
                if attempt >= self._rate_limit_retries:
                    raise _failure(what, exc) from None
                self._sleep(min(RATE_LIMIT_BACKOFF * 2**attempt, 8.0))
                attempt += 1
                continue
            except stripe.StripeError as exc:
                raise _failure(what, exc) from None
            data: dict[str, Any] = result.to_dict()
            return data


def _failure(what: str, exc: stripe.StripeError) -> StripeFailure:
    code, status = exc.code, exc.http_status
    if isinstance(exc, stripe.APIConnectionError):
        return StripeFailure(
            f"Stripe did not answer ({what}): {exc.user_message or 'connection failed'}",
            hint="nothing is lost: the same command repeated resumes with the same "
            "idempotency keys",
            code=code,
            http_status=status,
        )
    if isinstance(exc, stripe.AuthenticationError):
        return StripeFailure(
            f"Stripe refused {ENV_KEY} ({what})",
            hint="check the key",
            code=code,
            http_status=status,
        )
    request_id = f" (request {exc.request_id})" if exc.request_id else ""
    message = exc.user_message or str(exc) or type(exc).__name__
    return StripeFailure(
        f"Stripe refused to {what}: {message}{request_id}", code=code, http_status=status
    )
