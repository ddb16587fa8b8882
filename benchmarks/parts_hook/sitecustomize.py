"""Loaded by ``benchmarks/proxy_parts.py`` into the proxy it measures (this folder first on
``PYTHONPATH``): the CPU time of the calling thread inside chosen functions, summed.

Does nothing unless ``BENCH_PARTS_OUT`` names a file. Then each function named in
``BENCH_PARTS_FUNCS`` (``module:Qualified.name`` separated by commas; coroutine functions
are timed from their first step to their return) is wrapped at start-up, and every
``BENCH_PARTS_EVERY_S`` (0.2 s) the totals are written to that file as JSON:
``{"pid": ..., "parts": {"module:name": [calls, thread CPU ns], ...}}`` (a ``{pid}`` in
the file's name is replaced by the process's: each worker of ``--workers N`` writes its
own). Times are
inclusive (a function timed inside another counts in both) and each call adds two
``time.thread_time_ns`` reads (about 0.2 us here) to the figures. ``gc`` is the garbage
collector's passes (calls and the CPU of the thread they ran in), timed by its callbacks.

With ``BENCH_STUB_DECISIONS`` set (``benchmarks/proxy.py``'s ``stub`` row), every
``Engine.try_decide`` of an experiment after its first returns that first decision: no
draw, no token, no log record, no refresh, and each reward after the first a duplicate,
refused by the store. The proxy then costs what it costs apart from making, recording and
rewarding decisions: how much of its distance to a bare proxy those are.
"""

from __future__ import annotations

import gc
import importlib
import inspect
import json
import os
import threading
import time
from typing import Any


def _wrap(owner: Any, attr: str, key: str, totals: dict[str, list[int]], lock: Any) -> None:
    fn = getattr(owner, attr)
    clock = time.thread_time_ns

    def add(spent: int) -> None:
        with lock:
            entry = totals[key]
            entry[0] += 1
            entry[1] += spent

    if inspect.iscoroutinefunction(fn):

        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            # the thread's CPU from the first step to the return: awaits that suspend are
            # counted too (the proxy's timed coroutines return without one when decided in
            # memory), so only time coroutines that seldom suspend
            started = clock()
            try:
                return await fn(*args, **kwargs)
            finally:
                add(clock() - started)

        setattr(owner, attr, timed_async)
        return

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            add(clock() - started)

    setattr(owner, attr, timed)


def _install(out: str, names: list[str], every_s: float) -> None:
    totals: dict[str, list[int]] = {}
    lock = threading.Lock()
    for name in names:
        module, _, qualname = name.partition(":")
        owner: Any = importlib.import_module(module)
        *path, attr = qualname.split(".")
        for part in path:
            owner = getattr(owner, part)
        totals[name] = [0, 0]
        _wrap(owner, attr, name, totals, lock)

    def dump() -> None:
        path = out.replace("{pid}", str(os.getpid()))
        while True:
            time.sleep(every_s)
            with lock:
                text = json.dumps({"pid": os.getpid(), "parts": totals})
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)  # a reader never sees half a file

    # the garbage collector's passes, in whichever thread's allocation set them off
    totals["gc"] = [0, 0]
    started = [0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.thread_time_ns()
            return
        spent = time.thread_time_ns() - started[0]
        with lock:
            totals["gc"][0] += 1
            totals["gc"][1] += spent

    gc.callbacks.append(on_gc)

    threading.Thread(target=dump, name="bench-parts", daemon=True).start()


def _stub_decisions() -> None:
    from autoexp.engine import Engine

    real = Engine.try_decide
    made: dict[str, Any] = {}

    def try_decide(self: Any, name: str, **options: Any) -> Any:
        decision = made.get(name)
        if decision is None:
            decision = made[name] = real(self, name, **options)
        return decision

    Engine.try_decide = try_decide  # type: ignore[method-assign]


if os.environ.get("BENCH_STUB_DECISIONS"):
    _stub_decisions()

if os.environ.get("BENCH_PARTS_OUT"):
    _install(
        os.environ["BENCH_PARTS_OUT"],
        [n.strip() for n in os.environ.get("BENCH_PARTS_FUNCS", "").split(",") if n.strip()],
        float(os.environ.get("BENCH_PARTS_EVERY_S", "0.2")),
    )
