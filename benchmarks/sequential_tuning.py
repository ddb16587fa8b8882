"""How the mixing width of each sequential test trades early decisions against power.

Run from the repository root::

    python benchmarks/sequential_tuning.py [--replicates 1000] [--quick]

A 50/50 split on a 5% base rate, horizon 200k users, every test checked after every batch
of 100 users. For each true lift (+5%, +10%, +20% relative) and each setting of the
user-facing tuning quantity (``n_expected`` for the confidence sequences, ``mde`` for the
mSPRT) it reports power (the share of runs that promote the better arm by the horizon)
and the mean users until a decision (runs that never decide count as the full horizon).
Every setting sees the same simulated users (common random numbers), so differences
between rows are the tuning, not the noise. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.policies import machine, source, write_report
from policies.sequential import AsymptoticCS, MixtureSPRT, OffPolicyCS, SequentialTest

ROOT = Path(__file__).resolve().parent.parent
BASE = 0.05
LIFTS = (0.05, 0.10, 0.20)
N_EXPECTED = (15_000, 30_000, 60_000, 120_000, 240_000)
MDE = (0.0025, 0.005, 0.01, 0.02)


def settings() -> dict[str, SequentialTest]:
    out: dict[str, SequentialTest] = {}
    for n in N_EXPECTED:
        out[f"asymptotic-cs n_expected={n // 1000}k"] = AsymptoticCS(n_expected=n)
    for n in N_EXPECTED:
        out[f"off-policy-cs n_expected={n // 1000}k"] = OffPolicyCS(n_expected=n)
    for m in MDE:
        out[f"msprt mde={m:g}"] = MixtureSPRT(mde=m)
    return out


def run(lift: float, replicates: int, horizon: int, seed: int) -> dict[str, dict[str, float]]:
    tests = settings()
    means = np.array([BASE, BASE * (1 + lift)])
    rng = np.random.default_rng(np.random.SeedSequence([seed, int(lift * 1000)]))
    b, step = replicates, 100
    pi = np.full((b, 2), 0.5)
    states = {name: t.init(2, b) for name, t in tests.items()}
    promote = {name: np.full(b, np.inf) for name in tests}
    decided = {name: np.full(b, np.inf) for name in tests}
    for t in range(step, horizon + 1, step):
        arm = (rng.random((b, step)) >= 0.5).astype(np.int64)
        reward = (rng.random((b, step)) < means[arm]).astype(np.float64)
        for name, test in tests.items():
            states[name] = test.update(states[name], arm, reward, pi)
            ev = test.evaluate(states[name])
            open_ = ~np.isfinite(decided[name])
            up = open_ & (ev.lower[:, 1] > 0)
            promote[name][up] = t
            decided[name][up | (open_ & (ev.upper[:, 1] < 0))] = t
        if t % 20_000 == 0:
            print(f"  lift +{lift:.0%}: {t:,} / {horizon:,} users", file=sys.stderr, flush=True)
    return {
        name: {
            "power": float(np.isfinite(promote[name]).mean()),
            "mean_users": float(
                np.where(np.isfinite(decided[name]), decided[name], horizon).mean()
            ),
        }
        for name in tests
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--horizon", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="200 replicates")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/sequential_tuning.json"
    )
    args = parser.parse_args()
    replicates = 200 if args.quick else args.replicates
    start = time.perf_counter()
    results = {f"+{lift:.0%}": run(lift, replicates, args.horizon, args.seed) for lift in LIFTS}
    names = list(settings())
    width = max(len(n) for n in names)
    head = "".join(f"  {k:>18}" for k in results)
    print(f"\n{'setting':<{width}}{head}")
    print(f"{'':<{width}}" + "".join(f"  {'power  mean users':>18}" for _ in results))
    for name in names:
        cells = "".join(
            f"  {r[name]['power']:>6.1%} {r[name]['mean_users'] / 1000:>9.1f}k"
            for r in results.values()
        )
        print(f"{name:<{width}}{cells}")
    se = (0.25 / replicates) ** 0.5
    print(
        f"\n{replicates} replicates per cell; SE of a power p is sqrt(p (1 - p) / "
        f"{replicates}), at most {se:.1%}"
    )
    report = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "source": source(),
        "replicates": replicates,
        "horizon": args.horizon,
        "base_rate": BASE,
        "seconds": round(time.perf_counter() - start, 1),
        "results": results,
    }
    write_report(args.out, report)

    return 0


if __name__ == "__main__":
    sys.exit(main())
