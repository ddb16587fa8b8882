"""Store calls off the event loop: one thread of their own, results back in groups.

The sidecar's requests that must wait for the store (a sticky unit whose assignment the
engine does not hold, ``POST /_autoexp/rewards``) are not run with ``asyncio.to_thread``:
its thread pool costs the event loop a hand-off and a wake-up for every call. Measured
with every request a new unit (wrk c64, one SQLite worker), the event loop spent about
410 us of CPU per request, against 150 for a request without a unit, and the pool's
threads contended for the GIL and the store's lock. Here calls go through a queue to one
thread, which runs them in order and hands their results back to the loop with one
wake-up per group: what is done when nothing more is queued, or at most :data:`GROUP`
results, or what is done once the first of it has waited :data:`HOLD_S` (so under load
a result waits for the calls after it at most a millisecond or one call). Calls are short
(one store call each; a batch of rewards is one call); the engine's chores (``expire``)
stay elsewhere. Requests that each bring one item of the same kind (a single reward per
``POST /_autoexp/rewards``) go through :meth:`Offload.run_each`: those queued together
are handled in one call (one store transaction), each still getting its own result or
error.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from aiohttp import web

__all__ = ["EACH_MAX", "GROUP", "HOLD_S", "Offload"]

T = TypeVar("T")
GROUP = 32  # results handed back to the loop in one wake-up, at most
HOLD_S = 0.001  # a result waits at most about this long for others to go back with
STOP_S = 30.0  # at exit, the calls still queued are awaited this long
_STOP = object()
EACH_MAX = 1_000  # items of consecutive run_each calls joined into one call, at most
# (future, fn, args, kwargs, each): each=True is run_each's, args holding its one item
_Call = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any], bool]
_Done = tuple["asyncio.Future[Any]", Any, BaseException | None]


class Offload:
    """Runs blocking calls in one thread of its own for coroutines on one event loop.

    Started and stopped by :meth:`lifetime` (an aiohttp ``cleanup_ctx``); before it
    starts and after it stops, :meth:`run` falls back to ``asyncio.to_thread``.
    """

    def __init__(self, name: str = "autoexp-store") -> None:
        self.name = name
        self._calls: queue.SimpleQueue[_Call | object] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: the thread lives as long as the app; at the end, what is queued
        is run (and awaited) before the app goes on closing."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._worker, name=self.name, daemon=True)
        self._thread.start()
        yield
        thread, self._thread = self._thread, None
        self._calls.put(_STOP)
        await asyncio.to_thread(thread.join, STOP_S)

    @property
    def queued(self) -> int:
        """Calls waiting for the thread (not counting the one it runs)."""
        return self._calls.qsize()

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the offload thread; its result or its exception."""
        if self._thread is None or self._loop is None:
            return await asyncio.to_thread(fn, *args, **kwargs)
        future: asyncio.Future[T] = self._loop.create_future()
        self._calls.put((future, fn, args, kwargs, False))
        return await future

    async def run_each(self, fn: Callable[[list[Any]], list[Any]], item: Any, /) -> Any:
        """``fn([item, ...])[i]`` for this ``item``: consecutive queued ``run_each`` calls
        of the same ``fn`` (up to :data:`EACH_MAX`) are joined into one call, whose
        result has one entry per item, an exception instance being raised to its caller
        (e.g. ``Engine.reward_each``: one store transaction for many requests' rewards).
        An exception ``fn`` raises goes to all of them."""
        if self._thread is None or self._loop is None:
            got = (await asyncio.to_thread(fn, [item]))[0]
        else:
            future: asyncio.Future[Any] = self._loop.create_future()
            self._calls.put((future, fn, (item,), {}, True))
            got = await future
        if isinstance(got, BaseException):
            raise got
        return got

    def _worker(self) -> None:
        done: list[_Done] = []
        since = 0.0  # when the first of ``done`` was done
        item: _Call | object | None = None  # taken from the queue, not run yet
        while True:
            if item is None:
                item = self._calls.get()
            while item is not None:
                if item is _STOP:
                    self._hand_back(done)
                    return
                call: _Call = item  # type: ignore[assignment]
                item = None
                first = not done
                if call[4]:
                    item = self._run_each(call, done)  # it may take the next one out
                else:
                    future, fn, args, kwargs, _ = call
                    try:
                        done.append((future, fn(*args, **kwargs), None))
                    except BaseException as e:  # handed to the awaiting coroutine
                        done.append((future, None, e))
                if first:
                    since = time.monotonic()
                if len(done) >= GROUP or time.monotonic() - since >= HOLD_S:
                    self._hand_back(done)
                    done = []
                if item is None:
                    try:
                        item = self._calls.get_nowait()
                    except queue.Empty:
                        break
            self._hand_back(done)  # nothing more queued: what is done goes back now
            done = []

    def _run_each(self, call: _Call, done: list[_Done]) -> _Call | object | None:
        """Run ``call`` joined with the ``run_each`` calls of the same function queued
        after it; the first other call taken from the queue, if any, is returned."""
        fn = call[1]
        futures, items = [call[0]], [call[2][0]]
        after: _Call | object | None = None
        while len(items) < EACH_MAX:
            try:
                nxt = self._calls.get_nowait()
            except queue.Empty:
                break
            # != rather than "is not": a bound method is made anew at each access
            if nxt is _STOP or not nxt[4] or nxt[1] != fn:  # type: ignore[index]
                after = nxt
                break
            futures.append(nxt[0])  # type: ignore[index]
            items.append(nxt[2][0])  # type: ignore[index]
        try:
            results = fn(items)
        except BaseException as e:  # every caller gets it
            done.extend((f, None, e) for f in futures)
        else:
            done.extend((f, r, None) for f, r in zip(futures, results, strict=True))
        return after

    def _hand_back(self, done: list[_Done]) -> None:
        if not done or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            self._loop.call_soon_threadsafe(_settle, done)


def _settle(done: list[_Done]) -> None:
    """On the loop: each result or exception to its future (unless it was cancelled)."""
    for future, result, error in done:
        if future.cancelled():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
