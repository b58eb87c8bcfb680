"""Reads that the concurrent requests of one worker share.

A worker keeps what every request needs (an accepted key, a project's catalog) for a few
seconds. When a kept value runs out under load, every request of that moment finds it gone:
each reading it again, in a thread of its own, made a burst of database work (and for keys, of
writes to the same row: a key's `last_used_at`) that held up all of them, every few seconds,
by tens of milliseconds. With `SharedReads`, the first request reads and the others that need
the same thing meanwhile wait for that one read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool

T = TypeVar("T")


class SharedReads:
    """One read at a time per key, in a worker thread, its result (or error) for everyone
    who asked for that key while it ran."""

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Task[Any]] = {}

    async def read(self, key: Hashable, read: Callable[..., T], *args: Any) -> T:
        """`read(*args)`'s result, or the one of the read of `key` already under way (which
        a request that is cancelled meanwhile does not cancel)."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(run_in_threadpool(read, *args))
            self._running[key] = task
            task.add_done_callback(lambda _: self._running.pop(key, None))
        result: T = await asyncio.shield(task)
        return result
