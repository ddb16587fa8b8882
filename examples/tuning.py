"""The parameter-tuning scenario (``autoexp.demo.tuning``) over many seeded runs through the
real engine: prints each run's outcome, writes ``docs/img/tuning.png`` and a JSON summary.

Run from the repository root::

    python examples/tuning.py [--replicates 10] [--rounds 24000] [--out docs/img/tuning.png]

Left: the champion's timeout over time in every run (the optimum, unknown to autoexp, is
800 ms; the control starts at 200 ms). Right: expected reward served over what the
control alone would have earned, against the conservative budget's floor (1 - alpha).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoexp.demo import tuning  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=24_000)
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "tuning.png"))
    args = parser.parse_args(argv)
    if args.replicates < 1 or args.rounds < 1_000:
        parser.error("--replicates must be >= 1 and --rounds >= 1000")
    from tqdm import tqdm

    started = time.perf_counter()
    runs = [
        tuning.simulate(seed, rounds=args.rounds)
        for seed in tqdm(range(args.replicates), desc="runs", unit="run", file=sys.stderr)
    ]
    elapsed = time.perf_counter() - started
    print(f"{'seed':>4} {'final ms':>8} {'gap':>6} {'served/ctl':>10} {'cands':>5} {'epochs':>6}")
    for r in runs:
        ratio = r.served[-1] / r.control[-1]
        print(
            f"{r.seed:>4} {r.final_ms:>8} {r.final_gap:>6.3f} {ratio:>10.3f} "
            f"{r.candidates:>5} {r.epochs:>6}"
        )
    within = sum(r.final_gap <= 0.06 for r in runs)
    held = sum(r.worst_slack >= 0 for r in runs)
    print(
        f"within 0.06 of the best reward: {within}/{len(runs)}; budget held at every "
        f"request: {held}/{len(runs)}; {elapsed:.0f} s"
    )
    _plot(runs, Path(args.out))
    summary = Path(args.out).with_suffix(".json")
    summary.write_text(
        json.dumps(
            {
                "command": "python examples/tuning.py " + " ".join(argv or sys.argv[1:]),
                "rounds": args.rounds,
                "runs": [
                    {
                        "seed": r.seed,
                        "final_ms": r.final_ms,
                        "final_gap": r.final_gap,
                        "served_over_control": r.served[-1] / r.control[-1],
                        "worst_slack": r.worst_slack,
                        "candidates": r.candidates,
                        "epochs": r.epochs,
                    }
                    for r in runs
                ],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out} and {summary}")
    return 0


def _plot(runs: list[tuning.TuningRun], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for r in runs:
        x = [50 * (i + 1) for i in range(len(r.champion_ms))]
        left.plot(x, r.champion_ms, lw=1, alpha=0.7, drawstyle="steps-post")
        right.plot(x, [s / c for s, c in zip(r.served, r.control, strict=True)], lw=1, alpha=0.7)
    left.axhline(tuning.OPTIMUM_MS, color="k", ls="--", lw=1, label="optimum (800 ms)")
    left.set_yscale("log")
    left.set_xlabel("requests")
    left.set_ylabel("champion's timeout (ms)")
    left.set_title("Champion / challenger finds the timeout")
    left.legend(loc="lower right")
    right.axhline(1 - tuning.ALPHA, color="#b91c1c", ls="--", lw=1, label="budget floor 1 - alpha")
    right.axhline(1.0, color="#6b7280", lw=0.8)
    best = tuning.BEST / tuning.reward_mean(tuning.CONTROL_MS)
    right.axhline(best, color="#15803d", ls=":", lw=1, label="best possible")
    right.set_xlabel("requests")
    right.set_ylabel("served / control alone (expected reward)")
    right.set_title("Served reward never below the budget")
    right.legend(loc="lower right")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
