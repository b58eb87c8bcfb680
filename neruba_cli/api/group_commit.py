"""Work that the requests of one worker hand to one thread, which does it many at a time.

A request awaits `GroupWorker.submit(item)`. A thread of the worker takes everything queued
so far (up to `most` items) and hands it to `work` in one call: one transaction, one commit,
for as many requests as arrived while the previous call ran. Under load, the cost of a commit
(and on SQLite, of taking the write lock) is shared by many requests; when idle, an item is
done as soon as it is queued, with no timer and no waiting for company. With `threads` > 1,
that many calls may be under way at once, so that the time a server takes to commit one group
(its WAL flush) is not time the next group waits. The results go back to the requests' event
loop in one wake-up per call, not one per request.

`work` returns one result per item, in order, or raises: then every request of that call
gets the error (a `work` that must not let one item fail the others does its own fallback).
When the app shuts down (`close`, at the ASGI lifespan's shutdown or the process's exit),
what is still queued is done first; an item queued later starts a new thread.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

EXIT_WAIT_SECONDS = 10.0  # how long an exiting worker waits for its last items
_STOP = object()

_Entry = tuple[T, "asyncio.Future[R]", asyncio.AbstractEventLoop]


class GroupWorker(Generic[T, R]):
    """One worker's queue of items and the thread that does them, `most` at a time."""

    def __init__(
        self, name: str, work: Callable[[list[T]], Sequence[R]], most: int, threads: int = 1
    ) -> None:
        self.name = name
        self.work = work
        self.most = most
        self.threads = threads
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._running: list[threading.Thread] = []
        self._lock = threading.Lock()

    async def submit(self, item: T) -> R:
        """Queue `item` for the thread; its result once `work` has done it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if not self._running:
            self._start()
        self._queue.put((item, future, loop))
        return await future

    def _start(self) -> None:
        with self._lock:
            if not self._running:
                for number in range(self.threads):
                    thread = threading.Thread(
                        target=self._run, name=f"{self.name}-{number}", daemon=True
                    )
                    thread.start()
                    self._running.append(thread)
                atexit.register(self.close)

    def close(self, timeout: float = EXIT_WAIT_SECONDS) -> None:
        """Do what is queued and stop the threads."""
        with self._lock:
            running, self._running = self._running, []
        for _ in running:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in running:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        stopping = False
        while not stopping:
            entry = self._queue.get()
            group: list[_Entry[T, R]] = []
            while True:
                if entry is _STOP:
                    stopping = True
                else:
                    group.append(entry)  # type: ignore[arg-type]
                if stopping or len(group) >= self.most:
                    break
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
            if group:
                self._do(group)

    def _do(self, group: list[_Entry[T, R]]) -> None:
        error: BaseException | None = None
        results: Sequence[R] = ()
        try:
            results = self.work([item for item, _, _ in group])
            if len(results) != len(group):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(group)} items")
        except Exception as exc:
            error = exc
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[R], R | None]]] = {}
        for index, (_, future, loop) in enumerate(group):
            result = None if error is not None else results[index]
            by_loop.setdefault(loop, []).append((future, result))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody awaits these
                loop.call_soon_threadsafe(_settle, settled, error)


def _settle(settled: list[tuple[asyncio.Future[R], R | None]], error: BaseException | None) -> None:
    for future, result in settled:
        if future.done():  # the request was cancelled (its client went away)
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]
