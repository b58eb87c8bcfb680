"""api/group_commit.py: the requests of a worker hand their items to a thread that does them many
at a time — what arrives while a call runs goes into the next call, each request gets its own
result, a failed call fails only its own requests, and closing does what is still queued."""

from __future__ import annotations

import asyncio
import threading

import pytest

from neruba_cli.api.group_commit import GroupWorker


class Recorder:
    """`work` that records each call's items; the first call waits until released."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.first_started = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        if len(self.calls) == 1:
            self.first_started.set()
            assert self.release.wait(10)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"item {self.fail_on}")
        return [item * 10 for item in items]


async def _submit_while_first_call_runs(worker: GroupWorker[int, int], work: Recorder) -> list:
    first = asyncio.ensure_future(worker.submit(0))
    assert await asyncio.to_thread(work.first_started.wait, 10)
    rest = [asyncio.ensure_future(worker.submit(n)) for n in range(1, 8)]
    await asyncio.sleep(0.05)  # all queued behind the running call
    work.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_what_arrives_during_a_call_is_done_in_the_next_one_with_a_result_each() -> None:
    work = Recorder()
    worker: GroupWorker[int, int] = GroupWorker("test", work, most=5)
    results = asyncio.run(_submit_while_first_call_runs(worker, work))
    worker.close()
    assert results == [n * 10 for n in range(8)]
    assert work.calls == [[0], [1, 2, 3, 4, 5], [6, 7]]  # at most `most` a call, in order


def test_a_failed_call_fails_its_own_requests_only() -> None:
    work = Recorder(fail_on=6)
    worker: GroupWorker[int, int] = GroupWorker("test", work, most=5)
    results = asyncio.run(_submit_while_first_call_runs(worker, work))
    worker.close()
    assert results[:6] == [n * 10 for n in range(6)]
    assert [type(r) for r in results[6:]] == [ValueError, ValueError]


def test_closing_does_what_is_queued_and_a_later_item_starts_it_again() -> None:
    done: list[int] = []
    worker: GroupWorker[int, None] = GroupWorker(
        "test", lambda items: [done.append(item) for item in items], most=100, threads=2
    )

    async def scenario() -> None:
        await asyncio.gather(*(worker.submit(n) for n in range(20)))
        worker.close()
        assert sorted(done) == list(range(20))
        await worker.submit(20)  # a new thread takes it
        worker.close()

    asyncio.run(scenario())
    assert sorted(done) == list(range(21))


def test_a_count_of_results_that_does_not_match_is_an_error_for_each_request() -> None:
    worker: GroupWorker[int, int] = GroupWorker("test", lambda items: [], most=10)

    async def scenario() -> None:
        with pytest.raises(RuntimeError, match="0 results for 1 items"):
            await worker.submit(1)

    asyncio.run(scenario())
    worker.close()
