"""Start and stop of one worker: the drain on SIGTERM or SIGINT.

uvicorn, on SIGTERM, closes its listener at once and waits for requests in flight: a load
balancer polling `/readyz` then sees refused connections, not a 503, and may still send
traffic during the moment it takes to notice. So each worker takes over the two signals
once it has started (uvicorn installs its own handlers first; this replaces them and
uses the server they belong to):

1. the first signal sets `draining`: `/readyz` answers 503, every other request is still
   served, for `drain_delay_seconds`;
2. then uvicorn's own shutdown runs: the listener closes, idle connections are closed, and
   requests in flight get `drain_seconds` (uvicorn's `timeout_graceful_shutdown`, which
   `neruba serve` sets) to finish; the process then exits 0.

A second SIGINT (Ctrl-C twice) stops at once; a second SIGTERM changes nothing (with several
workers, each may get the signal from the terminal or systemd and again from uvicorn's
supervisor, which forwards SIGTERM to its workers on either signal).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any, Protocol

from fastapi import FastAPI

log = logging.getLogger("neruba.api")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Server(Protocol):
    """What this module uses of uvicorn's Server."""

    should_exit: bool
    force_exit: bool


class Drain:
    def __init__(self, state: Any, server: _Server) -> None:
        self.state = state
        self.server = server
        self.started = False

    def handle(self, sig: int, _frame: FrameType | None) -> None:
        if self.started:
            if sig == signal.SIGINT:
                log.warning("second interrupt: stopping without waiting for requests")
                self.server.force_exit = True
                self.server.should_exit = True
            return
        self.started = True
        self.state.draining = True
        settings = self.state.settings
        log.warning(
            "%s: /readyz answers 503; closing the listener in %g s, then requests in flight "
            "get %g s",
            signal.Signals(sig).name,
            settings.drain_delay_seconds,
            settings.drain_seconds,
        )
        if settings.drain_delay_seconds <= 0:
            self.stop()
        else:
            timer = threading.Timer(settings.drain_delay_seconds, self.stop)
            timer.daemon = True
            timer.start()

    def stop(self) -> None:
        self.server.should_exit = True  # uvicorn's main loop looks every 0.1 s


def _running_server() -> _Server | None:
    """The uvicorn Server whose handler is installed for SIGTERM, if this worker runs under
    one in its main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if hasattr(server, "should_exit") and hasattr(server, "force_exit"):
        return server
    return None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state.neruba
    server = _running_server()
    if server is not None:
        drain = Drain(state, server)
        for sig in SIGNALS:
            signal.signal(sig, drain.handle)  # uvicorn restores the originals when it ends
    try:
        yield
    finally:
        state.metrics.flush()  # this worker's last counts, for the workers still running
