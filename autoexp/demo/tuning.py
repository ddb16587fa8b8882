"""A simulated parameter-tuning scenario run through the real engine: a parameter whose best
value is unknown, candidates generated in its space, champion/challenger.

The default scenario: the reward of a request served with timeout ``x`` ms is Bernoulli
with mean ``f(x) = 0.3 + 0.3 exp(-ln(x / 800)^2 / 0.5)`` (a
:class:`simulators.tuning.ResponseCurve`): best at 800 ms (0.6), flat near 0.3 far from
it; the control starts at 200 ms (0.306). Nothing in autoexp knows ``f``: the engine
proposes candidates (Sobol, then around the champion), tries them on a capped share under
a conservative budget, and promotes what the sequential test shows better.
``autoexp simulate`` runs any such scenario from a file (``examples/tuning.toml``) through
:func:`simulate`; ``tests/autoexp/test_generate.py`` asserts the acceptance figures on the
default.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulators.tuning import ResponseCurve

CURVE = ResponseCurve(
    param="timeout_ms", optimum=800.0, log=True, low=0.3, peak=0.6, width=0.5, tolerance=0.06
)
OPTIMUM_MS = CURVE.optimum
CONTROL_MS = 200
ALPHA = 0.1  # the conservative budget: served >= (1 - ALPHA) x control's, w.p. >= 1 - delta
DELTA = 0.05


def reward_mean(timeout_ms: float) -> float:
    """The expected reward at a timeout (the default scenario's hidden truth)."""
    return CURVE.mean(timeout_ms)


BEST = CURVE.best


def config(seed: int) -> dict[str, Any]:
    """The default experiment, as its TOML would parse: only the control is given."""
    return {"experiments": {"tune": experiment(seed)}}


def experiment(seed: int) -> dict[str, Any]:
    """The default experiment's table (``[experiments.tune]``)."""
    return {
        "alternatives": [{"name": "current", "params": {"timeout_ms": CONTROL_MS}}],
        "policy": {"name": "thompson-beta"},
        "safety": {
            "explore_share": 0.5,
            "conservative_alpha": ALPHA,
            "conservative_delta": DELTA,
        },
        "test": {"name": "off-policy-cs", "n_expected": 2_000},
        "refresh_every": 50,
        "generate": {
            "challengers": 3,
            "slots": 12,
            "initial": 8,
            "warmup": 50,
            "initial_share": 0.05,
            "max_users": 3_000,
            "min_effect": 0.01,
            "seed": seed,
            "space": {"timeout_ms": {"low": 50, "high": 5_000, "log": True, "integer": True}},
        },
    }


@dataclass
class TuningRun:
    """What one run saw, per block of ``batch`` requests: the champion's parameter and the
    running sums of expected reward served and of what control alone would have earned."""

    seed: int
    curve: ResponseCurve = CURVE
    champion_ms: list[float] = field(default_factory=list)  # the champion's parameter
    served: list[float] = field(default_factory=list)
    control: list[float] = field(default_factory=list)
    worst_slack: float = math.inf  # min over requests of served - (1 - alpha) control
    candidates: int = 0
    epochs: int = 0

    @property
    def final_ms(self) -> float:
        """The final champion's parameter (named for the default scenario's timeout)."""
        return self.champion_ms[-1]

    @property
    def final_gap(self) -> float:
        """How far the final champion's expected reward is below the best possible."""
        return self.curve.best - self.curve.mean(self.final_ms)


def simulate(
    seed: int,
    rounds: int = 24_000,
    batch: int = 50,
    *,
    curve: ResponseCurve = CURVE,
    table: Mapping[str, Any] | None = None,
) -> TuningRun:
    """One run: ``rounds`` requests in blocks of ``batch`` (decided, then rewarded
    together: rewards arrive a little late, as in production), of the experiment
    ``table`` (default: :func:`experiment`; its generation seed becomes ``seed``) against
    ``curve``."""
    from autoexp.config import parse_config
    from autoexp.engine import Engine
    from autoexp.store.memory import MemoryStore

    raw = copy.deepcopy(dict(table)) if table is not None else experiment(seed)
    raw.setdefault("generate", {})["seed"] = seed
    (spec,) = parse_config({"experiments": {"tune": raw}}).experiments
    alpha = _alpha(spec.policy)
    engine = Engine(MemoryStore(), [spec], secret="tuning-demo-key-0", seed=seed, log_flush_s=0)
    rng = np.random.default_rng([seed, 1])  # the users' own randomness, apart from autoexp's
    out = TuningRun(seed=seed, curve=curve)
    served = control = 0.0
    base = curve.mean(spec.params[0][curve.param] if spec.params is not None else math.nan)
    try:
        for _ in range(rounds // batch):
            decisions = [engine.decide("tune") for _ in range(batch)]
            means = [curve.mean(d.params[curve.param]) for d in decisions]
            for m in means:
                served += m
                control += base
                out.worst_slack = min(out.worst_slack, served - (1 - alpha) * control)
            engine.reward_many(
                [(d, float(rng.random() < m)) for d, m in zip(decisions, means, strict=True)]
            )
            status = engine.status("tune")
            out.champion_ms.append(status["params"][0][curve.param])
            out.served.append(served)
            out.control.append(control)
        out.epochs = engine.status("tune")["epoch"]
        out.candidates = sum(1 for r in engine.store.records("tune") if r["type"] == "candidate")
    finally:
        engine.close()
    return out


def _alpha(policy: Any) -> float:
    """The conservative budget's alpha in a policy stack (generated experiments have one)."""
    from autoexp.experiment import budget_in

    budget = budget_in(policy)
    return math.nan if budget is None else float(budget.alpha)


def plot(runs: list[TuningRun], out: Path, *, alpha: float, batch: int = 50) -> None:
    """Two panels: the champion's parameter over time in every run (the optimum dashed),
    and the expected reward served over what control alone would have earned, against
    the budget's floor ``1 - alpha``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = runs[0].curve
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for r in runs:
        x = [batch * (i + 1) for i in range(len(r.champion_ms))]
        left.plot(x, r.champion_ms, lw=1, alpha=0.7, drawstyle="steps-post")
        right.plot(x, [s / c for s, c in zip(r.served, r.control, strict=True)], lw=1, alpha=0.7)
    left.axhline(curve.optimum, color="k", ls="--", lw=1, label=f"optimum ({curve.optimum:g})")
    if curve.log:
        left.set_yscale("log")
    left.set_xlabel("requests")
    left.set_ylabel(f"champion's {curve.param}")
    left.set_title("Champion / challenger finds the setting")
    left.legend(loc="lower right")
    right.axhline(1 - alpha, color="#b91c1c", ls="--", lw=1, label="budget floor 1 - alpha")
    right.axhline(1.0, color="#6b7280", lw=0.8)
    best = curve.best / (runs[0].control[-1] / len(runs[0].control) / batch)
    right.axhline(best, color="#15803d", ls=":", lw=1, label="best possible")
    right.set_xlabel("requests")
    right.set_ylabel("served / control alone (expected reward)")
    right.set_title("Served reward never below the budget")
    right.legend(loc="lower right")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
