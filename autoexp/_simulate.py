"""``autoexp simulate``, ``autoexp sweep`` and ``autoexp ope``: the simulators from the
command line (files in, report out)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .arguments import SEED, bounded
from .errors import ConfigError
from .outputs import output_directory

POSITIVE = bounded(int, 1, "an integer >= 1")

__all__ = ["add_commands"]


def _bar(total: int | None, desc: str, unit: str, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr, dynamic_ncols=True
    )


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        if not math.isfinite(x):
            return "-"
        return f"{x:.4g}"
    return str(x)


def _config_error(e: ValueError) -> ConfigError:
    return ConfigError(str(e))


def _cmd_simulate(args: argparse.Namespace) -> int:
    from simulators.config import ScenarioError, load_scenario
    from simulators.report import write_report
    from simulators.runner import run

    from .config import read_toml

    raw = read_toml(args.scenario)
    if "experiment" in raw:  # generated alternatives: the real engine, against a curve
        return _simulate_tuning(args, raw)
    try:
        spec = load_scenario(args.scenario, replicates=args.replicates, seed=args.seed)
    except ScenarioError as e:
        raise _config_error(e) from None
    sc = spec.scenario
    out = output_directory(args.out or Path("out") / spec.name)
    print(
        f"simulating {spec.name}: {sc.replicates:,} replicates x {sc.steps:,} steps, "
        f"{len(spec.arm_names)} arms ({', '.join(spec.arm_names)}), seed {sc.seed}",
        file=sys.stderr,
    )
    with _bar(sc.steps, spec.name, "step", args.quiet) as bar:

        def progress(t: int) -> None:
            bar.update(t - bar.n)

        result = run(sc, progress=progress)
    summary = result.summary()
    _print_outcome(spec, result, summary)
    budget = None
    if sc.budget_alpha is not None:
        budget = sc.budget_alpha * float(result.control_reward.mean())
    html = write_report(
        out,
        title=spec.name,
        scenario=spec.raw,
        results={spec.name: result},
        arm_names=list(spec.arm_names),
        budget=budget,
    )
    print(f"report: {html}")
    return 0


_TUNING = ("name", "replicates", "steps", "seed", "batch", "curve", "experiment")


def _simulate_tuning(args: argparse.Namespace, raw: dict[str, Any]) -> int:
    """A tuning scenario (:mod:`simulators.tuning`): the file's ``[experiment]``, with
    generated alternatives, run by the real engine (an in-memory store) against its
    ``[curve]``, replicate by replicate."""
    from simulators.tuning import parse_curve

    from .config import parse_config
    from .demo import tuning

    where = args.scenario
    for key in raw:
        if key not in _TUNING:
            raise ConfigError(f"{where}: {key}: unknown key; accepted: {', '.join(_TUNING)}")
    name = raw.get("name", Path(args.scenario).stem)
    numbers = {}
    for key, default in (("replicates", 10), ("steps", 24_000), ("seed", 0), ("batch", 50)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < (key != "seed"):
            raise ConfigError(f"{where}: {key}: must be an integer >= 1 (got {value!r})")
        numbers[key] = value
    replicates = args.replicates or numbers["replicates"]
    seed = numbers["seed"] if args.seed is None else args.seed
    steps, batch = numbers["steps"], numbers["batch"]
    try:
        curve = parse_curve(raw.get("curve"))
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    table = raw["experiment"]
    try:
        (spec,) = parse_config({"experiments": {"experiment": table}}).experiments
    except ConfigError as e:  # its paths as in this file
        raise ConfigError(
            f"{where}: {str(e).replace('experiments.experiment', 'experiment')}"
        ) from None
    if spec.generate is None or curve.param not in {p.name for p in spec.generate.space}:
        raise ConfigError(
            f"{where}: experiment.generate.space: must include curve.param {curve.param!r}"
        )
    out = output_directory(args.out or Path("out") / name)
    print(
        f"simulating {name}: {replicates:,} runs x {steps:,} requests through the engine "
        f"(generated alternatives over {', '.join(p.name for p in spec.generate.space)}), "
        f"seed {seed}",
        file=sys.stderr,
    )
    runs = []
    with _bar(replicates, name, "run", args.quiet) as bar:
        for r in range(replicates):
            runs.append(tuning.simulate(seed + r, steps, batch, curve=curve, table=table))
            bar.update(1)
    print(
        f"{'seed':>6} {'final ' + curve.param:>16} {'gap':>6} {'served/ctl':>10} "
        f"{'cands':>5} {'epochs':>6}"
    )
    for run in runs:
        ratio = run.served[-1] / run.control[-1]
        print(
            f"{run.seed:>6} {run.final_ms:>16.6g} {run.final_gap:>6.3f} {ratio:>10.3f} "
            f"{run.candidates:>5} {run.epochs:>6}"
        )
    within = sum(run.final_gap <= curve.tolerance for run in runs)
    held = sum(run.worst_slack >= 0 for run in runs)
    alpha = tuning._alpha(spec.policy)
    print(
        f"within {curve.tolerance:g} of the best reward ({curve.best:g}): {within} of "
        f"{replicates}; served >= (1 - {alpha:g}) x control at every request: {held} of "
        f"{replicates}"
    )
    (out / "summary.json").write_text(
        json.dumps(
            {
                "name": name,
                "steps": steps,
                "within_tolerance": within,
                "budget_held": held,
                "runs": [
                    {
                        "seed": run.seed,
                        "final": run.final_ms,
                        "final_gap": run.final_gap,
                        "served_over_control": run.served[-1] / run.control[-1],
                        "worst_slack": run.worst_slack,
                        "candidates": run.candidates,
                        "epochs": run.epochs,
                    }
                    for run in runs
                ],
            },
            indent=2,
        )
        + "\n"
    )
    tuning.plot(runs, out / "tuning.png", alpha=alpha, batch=batch)
    print(f"report: {out / 'summary.json'} and {out / 'tuning.png'}")
    return 0


def _print_outcome(spec: Any, result: Any, summary: dict[str, float]) -> None:
    import numpy as np

    sc = spec.scenario
    b = result.regret.shape[0]
    print(f"{'arm':<16} {'share of users':>15} {'promoted':>9} {'rolled back':>12}")
    share = result.pulls.sum(axis=0) / result.pulls.sum()
    # with a drift detector, an arm promoted in any epoch (a reopening starts a new one)
    epochs = result.epoch_arm if result.epoch_arm is not None else result.promoted_arm[:, None]
    for k, name in enumerate(spec.arm_names):
        promoted = float((epochs == k).any(axis=1).mean())
        rolled = float(np.isfinite(result.rolled_back_at[:, k]).mean())
        print(f"{name:<16} {share[k]:>14.2%} {promoted:>9.1%} {rolled:>12.1%}")
    print()
    for key, value in summary.items():
        print(f"{key:<26} {_fmt(value)}")
    if sc.budget_alpha is not None:
        print(
            f"conservative budget (alpha {sc.budget_alpha:g}) held in "
            f"{b - int(result.violated.sum()):,} of {b:,} replicates "
            f"({1.0 - summary['violation_rate']:.2%})"
        )


def _cmd_sweep(args: argparse.Namespace) -> int:
    from simulators.config import ScenarioError, load_sweep
    from simulators.report import write_report
    from simulators.sweep import run_sweep

    try:
        spec = load_sweep(args.sweep, replicates=args.replicates, seed=args.seed)
    except ScenarioError as e:
        raise _config_error(e) from None
    out = output_directory(args.out or Path("out") / spec.name)
    first = spec.spec(0).scenario
    print(
        f"sweep {spec.name}: {len(spec.cells)} cells x {first.replicates:,} replicates x "
        f"{first.steps:,} steps ({', '.join(spec.params)}), executor {args.executor}",
        file=sys.stderr,
    )
    with _bar(len(spec.cells), spec.name, "cell", args.quiet) as bar:

        def progress(row: dict[str, Any]) -> None:
            bar.set_postfix_str(f"cell {row['cell']}: {row['seconds']:.1f}s", refresh=False)
            bar.update(1)

        try:
            result = run_sweep(
                spec,
                executor=args.executor,
                workers=args.workers,
                ray_address=args.ray_address,
                progress=progress,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None
    keys = [
        *spec.params,
        "regret_mean",
        "loss_vs_control_p99",
        "steps_to_promotion_mean",
        "violation_rate",
        "seconds",
    ]
    print("  ".join(keys))
    for row in result.rows:
        print("  ".join(_fmt(row[k]) for k in keys))
    pulls = sum(r["replicates"] for r in result.rows) * first.steps
    print(
        f"{len(result.rows)} cells in {result.seconds:.1f} s on {result.workers} "
        f"worker(s): {pulls / result.seconds / 1e6:.2f} M arm-pulls/s"
    )
    html = write_report(
        out,
        title=f"sweep {spec.name}",
        scenario=spec.base,
        rows=result.rows,
        params=list(spec.params),
    )
    print(f"report: {html}")
    return 0


def _cmd_ope(args: argparse.Namespace) -> int:
    from simulators.ope import evaluate_log, read_any
    from simulators.plots import plot_ope

    replicates = args.replicates or 1
    if not Path(args.log).exists():  # as simulate's and sweep's: the path, then why
        raise ConfigError(f"{args.log}: no such file")
    out = output_directory(args.out or Path("out") / f"ope-{Path(args.log).stem}")
    try:
        log = read_any(args.log)
        with _bar(replicates, Path(args.log).name, "split", args.quiet) as bar:

            def progress(done: int) -> None:
                bar.update(done - bar.n)

            report = evaluate_log(
                log,
                candidate=args.candidate,
                split=args.split,
                replicates=replicates,
                seed=args.seed or 0,
                alpha=args.alpha,
                progress=progress,
            )
    except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from None
    path = out / "ope.json"
    text = json.dumps(report.to_dict(), indent=2, sort_keys=True, allow_nan=False)
    path.write_text(text + "\n")
    plot = plot_ope(report, out / "ope.png")
    print(report.table())
    print(f"report: {path}, {plot}")
    return 0


def add_commands(sub: Any) -> None:
    """Register ``simulate``, ``sweep`` and ``ope`` on the CLI's subparsers."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--replicates", type=POSITIVE, help="override the file's replicates")
        p.add_argument("--seed", type=SEED, help="override the file's seed")
        p.add_argument("--out", metavar="DIR", help="report directory (default: out/NAME)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("simulate", help="run a scenario file offline and write its report")
    p.add_argument("scenario", metavar="SCENARIO.toml")
    common(p)
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("sweep", help="run a grid of scenarios and write the frontier report")
    p.add_argument("sweep", metavar="SWEEP.toml")
    common(p)
    p.add_argument(
        "--executor",
        choices=("processes", "serial", "ray"),
        default="processes",
        help="where cells run (default: processes on this machine)",
    )
    p.add_argument("--workers", type=POSITIVE, help="processes (default: one per CPU)")
    p.add_argument("--ray-address", help="a running Ray cluster (default: start a local one)")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("ope", help="evaluate a candidate policy on a decision log offline")
    p.add_argument(
        "log",
        metavar="LOG",
        help="decision log (.jsonl; .parquet from autoexp log export) or Open Bandit CSV (.csv)",
    )
    common(p)
    p.add_argument(
        "--candidate",
        default="best-arm",
        help="policy to evaluate: best-arm (chosen on the first part), uniform, logging",
    )
    p.add_argument("--split", type=float, default=0.5, help="share of the log to choose on")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - confidence level")
    p.set_defaults(func=_cmd_ope)
