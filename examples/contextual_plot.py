"""Contextual against context-free policies on ``examples/contextual.toml``: writes
``docs/img/contextual-reward.png`` and prints each policy's reward per user.

Run from the repository root::

    python examples/contextual_plot.py [--replicates 500] [--out docs/img/contextual-reward.png]

The scenario file's ``[policy]`` (linear Thompson sampling) is replaced in turn by LinUCB
(``alpha = 1``) and by Thompson sampling with Beta priors, the best context-free policy;
every policy runs the same users (same seed, so the same devices at each step).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulators.config import load_scenario, scenario  # noqa: E402
from simulators.plots import plot_compare  # noqa: E402
from simulators.runner import Result, run  # noqa: E402

#: label -> the [policy] table that replaces the file's
POLICIES = {
    "lin-ts (noise_sd 0.3)": {"name": "lin-ts", "noise_sd": 0.3},
    "lin-ucb (alpha 1)": {"name": "lin-ucb", "alpha": 1.0},
    "thompson-beta (context-free)": {"name": "thompson-beta"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default=str(ROOT / "examples" / "contextual.toml"))
    parser.add_argument("--replicates", type=int, help="override the file's replicates")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "contextual-reward.png"))
    args = parser.parse_args(argv)
    base = load_scenario(args.scenario, replicates=args.replicates)
    env = base.scenario.env
    results: dict[str, Result] = {}
    print(f"{'policy':<30} {'reward/user':>11} {'+- SE':>8} {'regret@T':>9} {'seconds':>8}")
    for label, table in POLICIES.items():
        spec = scenario({**base.raw, "policy": table})
        started = time.perf_counter()
        res = results[label] = run(spec.scenario)
        seconds = time.perf_counter() - started
        steps = spec.scenario.steps
        # expected reward per user = oracle - regret / T (regret against each user's best arm)
        se = float(res.regret.std(ddof=1)) / math.sqrt(res.regret.size) / steps
        per_user = env.oracle_mean() - float(res.regret.mean()) / steps
        regret = float(res.regret.mean())
        print(f"{label:<30} {per_user:>11.4f} {se:>8.4f} {regret:>9.1f} {seconds:>8.1f}")
    population = env.population_means()
    best = int(population.argmax())
    references = {
        f"best single arm, {base.arm_names[best]}": float(population[best]),
        "control alone": float(population[0]),
    }
    b = base.scenario.replicates
    path = plot_compare(
        results,
        args.out,
        title=f"{base.name}.toml: three devices, three layouts, {b} replicates",
        oracle=env.oracle_mean(),
        references=references,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
