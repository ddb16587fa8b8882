"""The sidecar's offload thread: store calls run in order in one thread of their own,
their results and exceptions back to the right coroutine, in groups."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from autoexp.proxy import offload as offload_module
from autoexp.proxy.offload import GROUP, HOLD_S, Offload


@contextlib.asynccontextmanager
async def started(offload: Offload) -> AsyncIterator[Offload]:
    """The offload as the app's cleanup_ctx runs it: started, then stopped."""
    lifetime = offload.lifetime(web.Application())
    await lifetime.__anext__()
    try:
        yield offload
    finally:
        with pytest.raises(StopAsyncIteration):
            await lifetime.__anext__()


@pytest.fixture
def wakeups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many results each wake-up of the loop handed back, in order."""
    sizes: list[int] = []
    real = offload_module._settle

    def settle(done: list[Any]) -> None:
        sizes.append(len(done))
        real(done)

    monkeypatch.setattr(offload_module, "_settle", settle)
    return sizes


def test_results_and_errors_reach_their_callers_from_one_thread() -> None:
    threads: set[str] = set()

    def work(n: int) -> int:
        threads.add(threading.current_thread().name)
        if n % 7 == 3:
            raise ValueError(f"refused {n}")
        return n * n

    async def main() -> list[Any]:
        async with started(Offload()) as offload:
            calls = [offload.run(work, n) for n in range(200)]
            return await asyncio.gather(*calls, return_exceptions=True)

    got = asyncio.run(main())
    for n, result in enumerate(got):
        if n % 7 == 3:
            assert isinstance(result, ValueError) and str(result) == f"refused {n}"
        else:
            assert result == n * n
    assert threads == {"autoexp-store"}


def test_queued_calls_come_back_in_groups_and_in_order(wakeups: list[int]) -> None:
    # The first call blocks until 100 more are queued: they then run back to back and
    # come back with one wake-up of the loop per GROUP results (plus the first's), in the
    # order they were queued.
    gate = threading.Event()
    order: list[int] = []

    def work(n: int) -> int:
        if n == 0:
            gate.wait(10)
        order.append(n)
        return n

    async def main() -> list[int]:
        async with started(Offload()) as offload:
            first = asyncio.ensure_future(offload.run(work, 0))
            await asyncio.sleep(0.05)  # the thread is in the first call
            rest = [asyncio.ensure_future(offload.run(work, n)) for n in range(1, 101)]
            gate.set()
            return await asyncio.gather(first, *rest)

    assert asyncio.run(main()) == list(range(101))
    assert order == list(range(101))
    assert sum(wakeups) == 101
    # groups, not one wake-up per call (100 quick calls take well under HOLD_S; a few
    # more groups leave room for the thread being descheduled on a busy machine)
    assert len(wakeups) <= 10
    assert max(wakeups) <= GROUP


def test_a_result_does_not_wait_long_for_slow_calls_after_it(wakeups: list[int]) -> None:
    # Calls of 20 ms each, queued behind one that waits for a gate: every result goes
    # back once it has waited HOLD_S (1 ms) or one call, so never more than two together.
    assert HOLD_S < 0.02
    gate = threading.Event()

    def work(n: int) -> int:
        if n == 0:
            gate.wait(10)
        else:
            time.sleep(0.02)
        return n

    async def main() -> list[int]:
        async with started(Offload()) as offload:
            first = asyncio.ensure_future(offload.run(work, 0))
            await asyncio.sleep(0.05)
            rest = [asyncio.ensure_future(offload.run(work, n)) for n in range(1, 6)]
            gate.set()
            return await asyncio.gather(first, *rest)

    assert asyncio.run(main()) == list(range(6))
    assert sum(wakeups) == 6 and max(wakeups) <= 2


def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    gate = threading.Event()

    def work(n: int) -> int:
        gate.wait(10)
        return n

    async def main() -> tuple[bool, list[int]]:
        async with started(Offload()) as offload:
            gone = asyncio.ensure_future(offload.run(work, 0))
            kept = [asyncio.ensure_future(offload.run(work, n)) for n in (1, 2)]
            await asyncio.sleep(0.05)
            gone.cancel()
            gate.set()
            results = await asyncio.gather(*kept)
            with contextlib.suppress(asyncio.CancelledError):
                await gone
            return gone.cancelled(), results

    assert asyncio.run(main()) == (True, [1, 2])


def test_calls_queued_at_exit_are_run_and_without_the_thread_it_falls_back() -> None:
    ran: list[int] = []
    gate = threading.Event()

    def work(n: int) -> int:
        gate.wait(10)
        ran.append(n)
        return n

    async def main() -> int:
        offload = Offload()
        lifetime = offload.lifetime(web.Application())
        await lifetime.__anext__()
        pending = [asyncio.ensure_future(offload.run(work, n)) for n in range(5)]
        await asyncio.sleep(0.05)
        stopping = asyncio.ensure_future(lifetime.__anext__())
        await asyncio.sleep(0.05)
        gate.set()
        with pytest.raises(StopAsyncIteration):
            await stopping
        assert ran == list(range(5))  # all run before the app went on closing
        assert [p.result() for p in pending] == list(range(5))
        return await offload.run(work, 9)  # stopped: asyncio.to_thread

    assert asyncio.run(main()) == 9


def test_queued_single_items_are_joined_into_one_call_with_their_own_results() -> None:
    # While the thread is busy, 10 run_each calls of one function and a plain run call
    # between them are queued: the 5 before the plain call are joined into one call,
    # the plain call runs next, then the 5 after it; an item's exception is raised to its
    # own caller only.
    gate = threading.Event()
    batches: list[list[int]] = []

    def each(items: list[int]) -> list[Any]:
        batches.append(items)
        return [ValueError(f"odd {n}") if n % 2 else n * 10 for n in items]

    async def main() -> list[Any]:
        async with started(Offload()) as offload:
            busy = asyncio.ensure_future(offload.run(gate.wait, 10))
            await asyncio.sleep(0.05)
            calls = [asyncio.ensure_future(offload.run_each(each, n)) for n in range(5)]
            calls.append(asyncio.ensure_future(offload.run(batches.append, [-1])))
            calls += [asyncio.ensure_future(offload.run_each(each, n)) for n in range(5, 10)]
            gate.set()
            await busy
            return await asyncio.gather(*calls, return_exceptions=True)

    got = asyncio.run(main())
    assert batches == [[0, 1, 2, 3, 4], [-1], [5, 6, 7, 8, 9]]
    singles = got[:5] + got[6:]
    for n, result in enumerate(singles):
        if n % 2:
            assert isinstance(result, ValueError) and str(result) == f"odd {n}"
        else:
            assert result == n * 10
