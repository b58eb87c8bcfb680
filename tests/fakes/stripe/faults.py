"""Fault injection: 429, 500, timeouts, dropped and hung connections, before or after a
request is applied; and "call", which runs a test's callable at that point and then answers
normally (to make something happen elsewhere while the client waits on Stripe, e.g. an
operator releasing the client's lease)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tests.fakes.stripe.errors import FakeStripeError
from tests.fakes.stripe.store import Store
from tests.fakes.stripe.wire import Reply, RequestHandler, RequestLog, dump_json

FAULT_ACTIONS = frozenset({"429", "500", "timeout", "drop", "hang", "call"})
FAULT_METHODS = frozenset({"GET", "POST", "DELETE", "*"})


@dataclass
class Fault:
    """A failure to inject into the next matching requests (see the module docstring)."""

    method: str
    path: str
    action: str
    times: int = 1
    skip: int = 0
    after_apply: bool = False
    delay: float = 3.0
    call: Callable[[], None] | None = None  # the "call" action's callable

    def __post_init__(self) -> None:
        # Fail at add_fault time rather than with a silently unmatched fault.
        self.method = self.method.upper()
        if self.method not in FAULT_METHODS:
            raise ValueError(f"Fault.method must be one of {sorted(FAULT_METHODS)}")
        if self.action not in FAULT_ACTIONS:
            raise ValueError(f"Fault.action must be one of {sorted(FAULT_ACTIONS)}")
        if (self.action == "call") != (self.call is not None):
            raise ValueError('Fault.call is given exactly for the "call" action')
        if self.times < 1 or self.skip < 0 or self.delay < 0:
            raise ValueError("Fault needs times >= 1, skip >= 0 and delay >= 0")
        re.compile(self.path)


@dataclass
class ArmedFault:
    fault: Fault
    pattern: re.Pattern[str]
    skip_left: int
    times_left: int


class FaultInjection(Store):
    """Faults armed per route and fired into matching requests."""

    def add_fault(self, fault: Fault) -> None:
        armed = ArmedFault(fault, re.compile(fault.path), fault.skip, fault.times)
        with self._control:
            self._faults.append(armed)

    def release(self) -> None:
        """Let every hung request go (each then closes its connection without a response)."""
        with self._control:
            self._gate.set()
            self._gate = threading.Event()
            self.hung.clear()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._control:
            for armed in self._faults:
                fault = armed.fault
                if armed.times_left <= 0 or fault.method not in ("*", method):
                    continue
                if not armed.pattern.fullmatch(path):
                    continue
                if armed.skip_left > 0:
                    armed.skip_left -= 1
                    return None
                armed.times_left -= 1
                return fault
        return None

    def _inject(
        self, handler: RequestHandler, log: RequestLog, fault: Fault, key: str | None
    ) -> None:
        log.fault = fault.action
        if fault.action == "429":
            error = FakeStripeError(
                429,
                "Too many requests hit the API too quickly. We recommend an exponential backoff "
                "of your requests.",
                code="rate_limit",
            )
            self._send(handler, log, Reply(429, dump_json(error.body())), key)
            return
        if fault.action == "500":
            error = FakeStripeError(
                500,
                "An unknown error occurred while processing your request (injected fault).",
                error_type="api_error",
            )
            reply = Reply(500, dump_json(error.body()), headers={"Stripe-Should-Retry": "true"})
            self._send(handler, log, reply, key)
            return
        if fault.action == "timeout":
            self._stopping.wait(fault.delay)
        elif fault.action == "hang":
            with self._control:
                gate = self._gate
                self.hung.set()
            gate.wait()
        handler.close_connection = True  # no response: the server closes the socket
