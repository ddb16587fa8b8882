"""Where the proxy's CPU goes per request, function by function, measured inside it.

    python benchmarks/proxy_parts.py [--store sqlite|redis] [--workers 1|2] [--repeats 2]
                                     [--quick] [--out benchmarks/results/proxy_parts.json]

``benchmarks/proxy.py`` gives the CPU per request of the whole proxy process; this splits
it. The same proxy as its ``autoexp sqlite`` (or ``autoexp redis``) row (the real CLI, one
worker, the same experiment and route) runs with ``benchmarks/parts_hook`` first on its
``PYTHONPATH``: that hook wraps the functions of :data:`PARTS` and sums the CPU time of the
calling thread inside each (``time.thread_time_ns``; inclusive: ``Engine.try_decide`` is
inside ``Forwarder._decide``). Under wrk's load (c64, after a warm-up) the totals and each
thread's CPU (``/proc``) are read before and after; their differences over the requests
answered are the figures: calls per request, microseconds per call, microseconds per
request. The event loop's thread (``main``) and the others (the log writer, the reward
applier, ``expire``'s) are given apart, and ``gc`` is the garbage collector's passes.
``--connections 1`` measures one request at a time (wrk's threads follow). ``--workers 2``
measures the ``x2`` row's proxy: both workers' figures summed (each writes its own totals),
over all the requests they answered, so a part's ``us/req`` compares with one worker's.

``Engine.try_decide``, and ``Engine.reward_each`` in batches of 100 (about the reward
applier's in these runs), are then timed here in a tight loop on a fresh engine of the
same experiment and store kind (``hot``): the ratio of the two is what the call costs in
the proxy, amid its aiohttp work and threads, over what it costs alone. Each timed call
also pays two clock reads (about 0.2 us), in both figures. Needs ``wrk`` and ``nginx``
(and ``redis-server`` for ``--store redis``); about 1 minute.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.proxy import (  # noqa: E402  (after the path above)
    HOOK,
    PATH,
    Setting,
    autoexp_config,
    serving,
    start_upstream,
    stat_cpu_s,
    wrk,
)

PARTS = (
    "autoexp.proxy.routes:Route.matches",
    "autoexp.proxy.upstream:Forwarder._decide",
    "autoexp.engine:Engine.try_decide",
    "autoexp.proxy.upstream:Forwarder._outcome",
    "autoexp.proxy.upstream:Forwarder._apply_chunk",
    "autoexp.engine:Engine.reward_each",
    "autoexp.engine:Engine._write_log",
    "autoexp.engine:Engine._refresh_now",
    "autoexp.engine:Engine.expire",
)
HOT_CALLS = 20_000
HOT_BATCH = 100  # about the applier's batch in these runs (50 ms of 2,000 requests/s)


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of the process's threads: ``main`` (the thread the process started
    with: the proxy's event loop) and ``other`` (all the others, summed)."""

    out = {"main": 0.0, "other": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        out["main" if task.name == str(pid) else "other"] += stat_cpu_s(task / "stat")
    return out


def read_parts(paths: list[Path]) -> dict[str, list[int]]:
    """The hook's latest totals, summed over the processes that wrote ``paths``: function
    to [calls, thread CPU ns]."""
    summed: dict[str, list[int]] = {}
    for path in paths:
        for name, (calls, ns) in json.loads(path.read_text())["parts"].items():
            total = summed.setdefault(name, [0, 0])
            total[0] += calls
            total[1] += ns
    return summed


def threads_cpu_s(pids: list[int]) -> dict[str, float]:
    """:func:`thread_cpu_s` summed over processes."""
    each = [thread_cpu_s(pid) for pid in pids]
    return {k: sum(e[k] for e in each) for k in ("main", "other")}


def per_request(
    before: dict[str, list[int]], after: dict[str, list[int]], requests: int
) -> dict[str, dict[str, float | None]]:
    """Each function's calls per request, us per call and us per request between two
    readings of the hook's totals."""
    if requests <= 0:
        raise ValueError(f"per_request: no requests answered (got {requests})")
    out: dict[str, dict[str, float | None]] = {}
    for name, (calls, ns) in after.items():
        calls -= before.get(name, [0, 0])[0]
        ns -= before.get(name, [0, 0])[1]
        out[name] = {
            "calls_per_request": calls / requests,
            "us_per_call": ns / calls / 1e3 if calls else None,
            "us_per_request": ns / requests / 1e3,
        }
    return out


def hot_us(store_url: str, calls: int = HOT_CALLS) -> dict[str, float]:
    """On a fresh engine of the benchmark's experiment, the thread's CPU per call of
    ``Engine.try_decide`` in a tight loop (after 2,000 untimed), and per reward of
    ``Engine.reward_each`` in batches of :data:`HOT_BATCH` decisions just made (what the
    proxy's reward applier does, without the proxy around it)."""
    from autoexp.config import parse_config

    engine = parse_config(tomllib.loads(autoexp_config(1, store_url))).engine()
    try:
        for _ in range(2_000):
            engine.try_decide("bench")
        started = time.thread_time_ns()
        for _ in range(calls):
            engine.try_decide("bench")
        decide = time.thread_time_ns() - started
        reward = 0
        for _ in range(calls // HOT_BATCH):
            batch = [(engine.try_decide("bench"), 1.0) for _ in range(HOT_BATCH)]
            started = time.thread_time_ns()
            engine.reward_each(batch)  # type: ignore[arg-type]
            reward += time.thread_time_ns() - started
    finally:
        engine.close()
        engine.store.close()
    return {
        "try_decide_us": decide / calls / 1e3,
        "reward_each_us_per_reward": reward / (calls // HOT_BATCH * HOT_BATCH) / 1e3,
    }


def measure(store: str, s: Any, folder: Path, progress: Any, workers: int = 1) -> dict[str, Any]:
    """One run: the proxy with the hook, warm-up, then c64 with readings around it."""

    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "BENCH_PARTS_OUT", "BENCH_PARTS_FUNCS")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HOOK), *filter(None, [saved["PYTHONPATH"]])])
    os.environ["BENCH_PARTS_OUT"] = str(folder / "parts-{pid}.json")
    os.environ["BENCH_PARTS_FUNCS"] = ",".join(PARTS)
    row = f"autoexp {store}" + (" x2" if workers == 2 else "")
    try:
        with serving(row, s) as (port, services, _):
            url = f"http://127.0.0.1:{port}{PATH}"
            # the workers: a supervisor's children, or the CLI's own process
            pids = services[0].pids()[1:] or services[0].pids()
            outs = [folder / f"parts-{pid}.json" for pid in pids]
            wrk(url, connections=s.connections, threads=s.threads, duration_s=s.warmup_s)
            progress(f"{row}: c{s.connections}")
            time.sleep(0.5)  # the applier's last batch, and the hook's next dump
            missing = [out.name for out in outs if not out.exists()]
            if missing:  # (seen once with two workers; not understood)
                log = services[0].log.read_text(errors="replace")[-2_000:]
                raise RuntimeError(
                    f"proxy_parts: no totals from {missing} after the warm-up (workers {pids}, "
                    f"now {services[0].pids()[1:]}); the proxy's log ends:\n{log}"
                )
            parts_before, threads_before = read_parts(outs), threads_cpu_s(pids)
            load = wrk(url, connections=s.connections, threads=s.threads, duration_s=s.duration_s)
            time.sleep(0.5)
            parts_after, threads_after = read_parts(outs), threads_cpu_s(pids)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    n = load["requests"]
    threads = {k: (threads_after[k] - threads_before[k]) / n * 1e6 for k in threads_after}
    return {
        "requests": n,
        "requests_per_s": load["requests_per_s"],
        "errors": load["errors"],
        "threads_us_per_request": threads,
        "parts": per_request(parts_before, parts_after, n),
    }


def summarise(runs: list[dict[str, Any]], hot: list[dict[str, float]]) -> dict[str, Any]:
    """Medians over the runs, and each hot cost beside the same call's in the proxy."""

    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    parts = {
        name: {
            key: median([r["parts"][name][key] for r in runs])
            for key in ("calls_per_request", "us_per_call", "us_per_request")
        }
        for name in runs[0]["parts"]
    }
    hot_decide = median([h["try_decide_us"] for h in hot])
    hot_reward = median([h["reward_each_us_per_reward"] for h in hot])
    decide = parts.get("autoexp.engine:Engine.try_decide", {}).get("us_per_call")
    # the applier calls reward_each once per batch: its time per reward is per request
    reward = parts.get("autoexp.engine:Engine.reward_each", {}).get("us_per_request")
    return {
        "requests_per_s": median([r["requests_per_s"] for r in runs]),
        "errors": sum(r["errors"] for r in runs),
        "threads_us_per_request": {
            k: median([r["threads_us_per_request"][k] for r in runs]) for k in ("main", "other")
        },
        "parts": parts,
        "hot": {"try_decide_us": hot_decide, "reward_each_us_per_reward": hot_reward},
        "in_proxy": {"try_decide_us": decide, "reward_each_us_per_reward": reward},
    }


def table(summary: dict[str, Any]) -> str:
    rows = [["function", "calls/req", "us/call", "us/req"]]
    for name, p in summary["parts"].items():
        rows.append(
            [
                name.rpartition(":")[2],
                f"{p['calls_per_request']:.3f}",
                "-" if p["us_per_call"] is None else f"{p['us_per_call']:,.1f}",
                f"{p['us_per_request']:,.1f}",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    t = summary["threads_us_per_request"]
    lines.append("")
    lines.append(
        f"threads, us of CPU per request: event loop {t['main']:,.0f}, others {t['other']:,.0f}"
        f" ({summary['requests_per_s']:,.0f} requests/s with the hook)"
    )
    labels = {
        "try_decide_us": "Engine.try_decide, us per call",
        "reward_each_us_per_reward": (
            f"Engine.reward_each (batches of {HOT_BATCH} here), us per reward"
        ),
    }
    for key, label in labels.items():
        there, here = summary["in_proxy"][key], summary["hot"][key]
        if there is not None and here:
            lines.append(
                f"{label}: {there:.1f} in the proxy, {here:.1f} in a tight loop here "
                f"({there / here:.1f}x)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.policies import bench_parser, clock, report_head, source, write_report
    from tests.autoexp.conftest import RedisServer

    parser = bench_parser(__doc__, "proxy_parts", "3 s of load per run, 1 s warm-up")
    parser.set_defaults(repeats=2)
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--duration-s", type=float, help="seconds of load per run (10; quick: 3)")
    parser.add_argument("--warmup-s", type=float, help="seconds of warm-up per run (3; quick: 1)")
    parser.add_argument("--connections", type=int, default=64, help="wrk's load (64)")
    parser.add_argument(
        "--workers", type=int, choices=(1, 2), default=1, help="the proxy's workers (1)"
    )
    args = parser.parse_args(argv)
    duration = args.duration_s or (3.0 if args.quick else 10.0)
    warmup = args.warmup_s or (1.0 if args.quick else 3.0)
    progress = clock()
    load_start = os.getloadavg()
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    hot: list[dict[str, float]] = []
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="autoexp-parts-")))
        redis_url = None
        if args.store == "redis":
            redis = RedisServer(folder)
            stack.callback(redis.stop)
            redis_url = redis.url
        upstream_port = start_upstream(stack, folder)
        setting = Setting(
            folder=folder,
            upstream_port=upstream_port,
            duration_s=duration,
            warmup_s=warmup,
            connections=args.connections,
            threads=min(2, args.connections),
            bare_loop="uvloop",
            redis_url=redis_url,
            py_spy=None,
        )
        for repeat in range(args.repeats):
            progress(f"{args.store}: run {repeat + 1} of {args.repeats}")
            run_folder = folder / f"run-{repeat}"
            run_folder.mkdir()
            runs.append(measure(args.store, setting, run_folder, progress, args.workers))
            hot_url = (
                f"sqlite:///{folder}/hot-{repeat}.db"
                if redis_url is None
                else f"{redis_url.rsplit('/', 1)[0]}/9"
            )
            progress(f"{args.store}: the engine's calls in a tight loop")
            hot.append(hot_us(hot_url))
    summary = summarise(runs, hot)
    print(table(summary))
    elapsed = time.perf_counter() - started
    write_report(
        args.out,
        {
            **report_head("proxy_parts", load_start, os.getloadavg()),
            "source": source(),
            "config": {
                "store": args.store,
                "workers": args.workers,
                "duration_s": duration,
                "warmup_s": warmup,
                "connections": args.connections,
                "repeats": args.repeats,
                "parts": list(PARTS),
            },
            "summary": summary,
            "runs": runs,
            "hot": hot,
            "elapsed_s": elapsed,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
