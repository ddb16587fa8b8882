"""Gated deployment in the simulator (``simulators.gating``): a uniformly logging policy in
the three-device environment, three candidates watched by the gate; writes
``docs/img/gate.png`` and prints each candidate's deployment rate.

Run from the repository root::

    python examples/gate_plot.py [--replicates 1000] [--rows 2000]

The candidates: the per-device best (worth 0.66 against the logging policy's 0.367), one
of the same value as the logging policy but a different allocation (on tablets it moves
the second arm's share to the third, both worth 0.3), and a worse one (0.22).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policies.gate import Gate  # noqa: E402
from simulators.envs import Segments  # noqa: E402
from simulators.gating import run_gate  # noqa: E402

ENV = Segments(
    p=[[0.2, 0.7, 0.2], [0.2, 0.2, 0.7], [0.5, 0.3, 0.3]],
    weights=[0.4, 0.4, 0.2],
    segments=["mobile", "desktop", "tablet"],
)
UNIFORM = np.full((3, 3), 1 / 3)
CANDIDATES = {
    "per-device best": np.eye(3)[[1, 2, 0]],
    "same value": np.array([[1 / 3] * 3, [1 / 3] * 3, [1 / 3, 0.0, 2 / 3]]),
    "worse": np.eye(3)[[0, 0, 1]],
}
GATE = Gate(alpha=0.05, max_weight=3.0, n_expected=1000.0)  # uniform logging: 1 / (1/3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "gate.png"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    run = run_gate(
        ENV, UNIFORM, UNIFORM, CANDIDATES, GATE, rows=args.rows, replicates=args.replicates, seed=1
    )
    print(f"{'candidate':<16} {'true gap':>8} {'deployed':>8} {'median row':>10}")
    for name, gap in run.gap.items():
        at = run.deployed_at[name]
        median = f"{np.median(at[at >= 0]):.0f}" if (at >= 0).any() else "-"
        print(f"{name:<16} {gap:>+8.3f} {run.deploy_rate(name):>8.3f} {median:>10}")
    print(f"{args.replicates} replicates x {args.rows} rows, {time.perf_counter() - started:.1f} s")
    _plot(run, Path(args.out))
    print(f"wrote {args.out}")
    return 0


def _plot(run, out: Path) -> None:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for (name, lower), color in zip(
        run.lower.items(), ("#15803d", "#2563eb", "#b91c1c"), strict=True
    ):
        finite = np.where(np.isfinite(lower), lower, np.nan)
        lo, mid, hi = np.nanpercentile(finite, [10, 50, 90], axis=0)
        left.plot(run.rows, mid, color=color, label=f"{name} (true {run.gap[name]:+.2f})")
        left.fill_between(run.rows, lo, hi, color=color, alpha=0.15)
        left.axhline(run.gap[name], color=color, ls=":", lw=1)
        at = run.deployed_at[name]
        share = [(at[at >= 0] <= r).sum() / at.size for r in run.rows]
        right.plot(run.rows, share, color=color, label=name)
    left.axhline(0.0, color="k", lw=1, label="deploy when the bound is above 0")
    left.set_ylim(-0.6, 0.4)
    left.set_xlabel("logged rows")
    left.set_ylabel("lower bound on V(candidate) - V(current)")
    left.set_title("The gate's anytime-valid lower bound (median, 10-90%)")
    left.legend(loc="lower right", fontsize=8)
    right.axhline(GATE.alpha, color="#6b7280", ls="--", lw=1, label="alpha")
    right.set_xlabel("logged rows")
    right.set_ylabel("share of replicates deployed")
    right.set_title("Deployed: the better one soon, the others (almost) never")
    right.legend(loc="center right", fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
