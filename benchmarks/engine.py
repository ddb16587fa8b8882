"""Cost of the runtime: decide and reward through the SDK, per store, against a direct call.

Run from the repository root (a ``redis-server`` binary is started on a free loopback
port for the Redis rows; nothing touches port 6379)::

    python benchmarks/engine.py [--quick] [--repeats 3] [--out benchmarks/results/engine.json]

One process. The work is one experiment with two alternatives (Thompson sampling inside a
10% traffic cap, the off-policy test, refresh every 100 events); the alternatives are
trivial functions, so what is timed is autoexp's overhead. Rows:

* ``direct call``: the control function called directly (the floor);
* ``reference``: ``sum(range(1000))``, a fixed piece of pure-Python work that says how fast
  the machine ran this time (shared 2-core machines vary several-fold between days, and
  every row here is CPU-bound Python; compare runs through this row);
* ``sdk decide``: ``exp(query)`` (decide + run the chosen function), no reward;
* ``sdk decide+reward``: ``exp(query)`` then ``exp.reward(answer.decision, r)``;
* the same with a sticky unit (``exp(query, unit=...)``, one store write more);
* ``sdk decide+reward batch``: ``exp(query)`` for 100 users, then one
  ``exp.reward_many`` of their 100 rewards (one store call: the pipelined path).

For each: microseconds per call (median of repeats; p99 of single calls in one run) and
calls per second. Targets (issue 5, reported, never asserted): SDK overhead <= 20 us per
decide on the embedded (SQLite) store; >= 20,000 decide+reward pairs per second against a
local Redis.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.policies import (
    _timed,
    bench_parser,
    clock,
    print_checks,
    report_head,
    source,
    write_report,
)

SECRET = "b" * 32
DECIDE_OVERHEAD_US = 20.0  # embedded store
REDIS_PAIRS_PER_S = 20_000.0


def experiment(url: str) -> Any:
    import autoexp

    exp = autoexp.Experiment(
        "bench", explore_share=0.1, test="off-policy-cs", store=url, secret=SECRET, seed=1
    )

    @exp.control
    def control(q: int) -> int:
        return q

    @exp.alternative
    def alternative(q: int) -> int:
        return q + 1

    return exp


def time_row(exp: Any, kind: str, n: int) -> tuple[float, list[float]]:
    """Seconds for ``n`` calls, and each call's seconds (a second, separate run)."""
    rng = np.random.default_rng(7)
    rewards = (rng.random(n) < 0.3).astype(float)

    def loop() -> None:
        if kind.endswith("batch"):
            for start in range(0, n, BATCH):
                answers = [exp(i) for i in range(start, min(start + BATCH, n))]
                exp.reward_many([(a.decision, rewards[start + j]) for j, a in enumerate(answers)])
            return
        for i in range(n):
            if kind == "direct":
                control(i)
                continue
            if kind == "reference":
                sum(range(1000))
                continue
            answer = exp(i, unit=f"u{i}") if kind.endswith("unit") else exp(i)
            if "reward" in kind:
                exp.reward(answer.decision, rewards[i])

    seconds, _ = _timed(loop)
    if kind.endswith("batch"):  # no single-call latency: a call is a batch
        return seconds, [seconds / n]
    single = []
    for i in range(min(n, 2_000)):
        start = time.perf_counter()
        if kind == "direct":
            control(i)
        elif kind == "reference":
            sum(range(1000))
        else:
            answer = exp(i, unit=f"v{i}") if kind.endswith("unit") else exp(i)
            if "reward" in kind:
                exp.reward(answer.decision, rewards[i])
        single.append(time.perf_counter() - start)
    return seconds, single


def control(q: int) -> int:
    return q


KINDS = (
    "direct",
    "reference",
    "decide",
    "decide+reward",
    "decide+reward unit",
    "decide+reward batch",
)
BATCH = 100


def main(argv: list[str] | None = None) -> int:
    args = bench_parser(__doc__, "engine", "fewer calls (a smoke run)").parse_args(argv)
    n = 2_000 if args.quick else 10_000
    progress = clock()
    started = time.perf_counter()
    load_start = os.getloadavg()
    from tests.autoexp.conftest import RedisServer  # the test suite's own redis-server

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp))
        try:
            stores = {
                "memory": "memory://",
                "sqlite": f"sqlite:///{tmp}/bench.db",
                "redis": redis.url,
            }
            for store, url in stores.items():
                for kind in KINDS:
                    plain = kind in ("direct", "reference")
                    if plain and store != "memory":
                        continue
                    progress(f"{store} {kind}")
                    exp = None if plain else experiment(url)
                    if exp is not None:
                        time_row(exp, kind, 200)  # warm-up: engine start, caches
                    runs = [time_row(exp, kind, n) for _ in range(args.repeats)]
                    per_call = float(np.median([s for s, _ in runs])) / n
                    single = np.concatenate([np.asarray(one) for _, one in runs])
                    rows.append(
                        {
                            "store": "-" if plain else store,
                            "what": kind,
                            "calls": n,
                            "us_per_call": per_call * 1e6,
                            # a batch row has no single-call latency
                            "p99_us": None
                            if kind.endswith("batch")
                            else float(np.quantile(single, 0.99)) * 1e6,
                            "calls_per_s": 1.0 / per_call,
                        }
                    )
        finally:
            redis.stop()
    floor = next(r["us_per_call"] for r in rows if r["what"] == "direct")
    for r in rows:
        r["overhead_us"] = 0.0 if r["what"] == "reference" else r["us_per_call"] - floor
    sqlite_decide = next(r for r in rows if r["store"] == "sqlite" and r["what"] == "decide")
    redis_pairs = next(
        r for r in rows if r["store"] == "redis" and r["what"] == "decide+reward batch"
    )
    checks = [
        {
            "target": f"SDK overhead per decide on SQLite <= {DECIDE_OVERHEAD_US:g} us",
            "value": sqlite_decide["overhead_us"],
            "status": "PASS" if sqlite_decide["overhead_us"] <= DECIDE_OVERHEAD_US else "FAIL",
        },
        {
            "target": f"decide+reward pairs per second on Redis, rewards pipelined "
            f"(batches of {BATCH}) >= {REDIS_PAIRS_PER_S:,.0f}",
            "value": redis_pairs["calls_per_s"],
            "status": "PASS" if redis_pairs["calls_per_s"] >= REDIS_PAIRS_PER_S else "FAIL",
        },
    ]
    print(f"{'store':<7} {'what':<20} {'us/call':>9} {'overhead':>9} {'p99 us':>9} {'calls/s':>10}")
    for r in rows:
        print(
            f"{r['store']:<7} {r['what']:<20} {r['us_per_call']:>9.2f} "
            f"{r['overhead_us']:>9.2f} "
            f"{'-' if r['p99_us'] is None else format(r['p99_us'], '.1f'):>9} "
            f"{r['calls_per_s']:>10,.0f}"
        )
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()
    print_checks(checks, load_start, load_end, elapsed)
    write_report(
        args.out,
        {
            **report_head("engine", load_start, load_end),
            "source": source(),
            "config": {"calls": n, "repeats": args.repeats, "quick": args.quick},
            "rows": rows,
            "targets": checks,
            "elapsed_s": elapsed,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
