"""api/shared_reads.py: the requests that need the same kept value while it is read again
share one read; other keys, and later requests, read for themselves; an error is everyone's."""

from __future__ import annotations

import asyncio
import threading

import pytest

from neruba_cli.api.shared_reads import SharedReads


class Reader:
    """A read that waits until it is let go, and counts its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.go = threading.Event()

    def __call__(self, key: str) -> str:
        self.calls.append(key)
        assert self.go.wait(5)
        if key == "forged":
            raise PermissionError("no such key")
        return f"value of {key}"


def test_concurrent_requests_for_one_key_share_one_read_and_later_ones_read_again() -> None:
    reader = Reader()
    reads = SharedReads()

    async def main() -> tuple[list[str], str]:
        waiting = [asyncio.ensure_future(reads.read(key, reader, key)) for key in "aaab"]
        await asyncio.sleep(0.05)  # all four are waiting on their reads
        reader.go.set()
        together = list(await asyncio.gather(*waiting))
        later = await reads.read("a", reader, "a")
        return together, later

    together, later = asyncio.run(main())
    assert together == ["value of a"] * 3 + ["value of b"]
    assert later == "value of a"
    assert sorted(reader.calls) == ["a", "a", "b"]  # one for the three, one for b, one later


def test_an_error_reaches_every_request_that_shared_the_read() -> None:
    reader = Reader()
    reads = SharedReads()

    async def main() -> list[BaseException | str]:
        waiting = [asyncio.ensure_future(reads.read("forged", reader, "forged")) for _ in range(3)]
        await asyncio.sleep(0.05)
        reader.go.set()
        return list(await asyncio.gather(*waiting, return_exceptions=True))

    answers = asyncio.run(main())
    assert len(reader.calls) == 1
    assert all(isinstance(answer, PermissionError) for answer in answers)


def test_a_request_cancelled_while_waiting_leaves_the_read_to_the_others() -> None:
    reader = Reader()
    reads = SharedReads()

    async def main() -> str:
        first = asyncio.ensure_future(reads.read("a", reader, "a"))
        second = asyncio.ensure_future(reads.read("a", reader, "a"))
        await asyncio.sleep(0.05)
        first.cancel()
        reader.go.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second

    assert asyncio.run(main()) == "value of a"
    assert reader.calls == ["a"]
