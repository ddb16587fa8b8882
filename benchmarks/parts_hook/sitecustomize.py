"""Loaded by ``benchmarks/proxy_parts.py`` into the proxy it measures (this folder first on
``PYTHONPATH``): the CPU time of the calling thread inside chosen functions, summed.

Does nothing unless ``BENCH_PARTS_OUT`` names a file. Then each function named in
``BENCH_PARTS_FUNCS`` (``module:Qualified.name`` separated by commas; coroutine functions
are timed from their first step to their return) is wrapped at start-up, and every
``BENCH_PARTS_EVERY_S`` (0.2 s) the totals are written to that file as JSON:
``{"pid": ..., "parts": {"module:name": [calls, thread CPU ns], ...}}``. Times are
inclusive (a function timed inside another counts in both) and each call adds two
``time.thread_time_ns`` reads (about 0.2 us here) to the figures.
"""

from __future__ import annotations

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
        while True:
            time.sleep(every_s)
            with lock:
                text = json.dumps({"pid": os.getpid(), "parts": totals})
            with open(out + ".tmp", "w") as f:
                f.write(text)
            os.replace(out + ".tmp", out)  # a reader never sees half a file

    threading.Thread(target=dump, name="bench-parts", daemon=True).start()


if os.environ.get("BENCH_PARTS_OUT"):
    _install(
        os.environ["BENCH_PARTS_OUT"],
        [n.strip() for n in os.environ.get("BENCH_PARTS_FUNCS", "").split(",") if n.strip()],
        float(os.environ.get("BENCH_PARTS_EVERY_S", "0.2")),
    )
