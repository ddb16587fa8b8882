"""A simulated parameter-tuning scenario run through the real engine: a timeout whose best
value is unknown, candidates generated in a log-scaled space, champion/challenger.

The reward of a request served with timeout ``x`` ms is Bernoulli with mean
``f(x) = 0.3 + 0.3 exp(-ln(x / 800)^2 / 0.5)``: best at 800 ms (0.6), flat near 0.3 far
from it; the control starts at 200 ms (0.306). Nothing in autoexp knows ``f``: the engine
proposes candidates (Sobol, then around the champion), tries them on a capped share under
a conservative budget, and promotes what the sequential test shows better. Used by
``tests/autoexp/test_generate.py`` (the acceptance figures) and ``examples/tuning.py``
(the README's plot).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OPTIMUM_MS = 800.0
CONTROL_MS = 200
ALPHA = 0.1  # the conservative budget: served >= (1 - ALPHA) x control's, w.p. >= 1 - delta
DELTA = 0.05


def reward_mean(timeout_ms: float) -> float:
    """The expected reward at a timeout (the scenario's hidden truth)."""
    return 0.3 + 0.3 * math.exp(-(math.log(timeout_ms / OPTIMUM_MS) ** 2) / 0.5)


BEST = reward_mean(OPTIMUM_MS)


def config(seed: int) -> dict[str, Any]:
    """The experiment, as its TOML would parse: only the control is given."""
    return {
        "experiments": {
            "tune": {
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
                    "space": {
                        "timeout_ms": {"low": 50, "high": 5_000, "log": True, "integer": True}
                    },
                },
            }
        }
    }


@dataclass
class TuningRun:
    """What one run saw, per block of ``batch`` requests: the champion's timeout and the
    running sums of expected reward served and of what control alone would have earned."""

    seed: int
    champion_ms: list[int] = field(default_factory=list)
    served: list[float] = field(default_factory=list)
    control: list[float] = field(default_factory=list)
    worst_slack: float = math.inf  # min over requests of served - (1 - ALPHA) control
    candidates: int = 0
    epochs: int = 0

    @property
    def final_ms(self) -> int:
        return self.champion_ms[-1]

    @property
    def final_gap(self) -> float:
        """How far the final champion's expected reward is below the best possible."""
        return BEST - reward_mean(self.final_ms)


def simulate(seed: int, rounds: int = 24_000, batch: int = 50) -> TuningRun:
    """One run: ``rounds`` requests in blocks of ``batch`` (decided, then rewarded
    together: rewards arrive a little late, as in production)."""
    from autoexp.config import parse_config
    from autoexp.engine import Engine
    from autoexp.store.memory import MemoryStore

    (spec,) = parse_config(config(seed)).experiments
    engine = Engine(MemoryStore(), [spec], secret="tuning-demo-key-0", seed=seed, log_flush_s=0)
    rng = np.random.default_rng([seed, 1])  # the users' own randomness, apart from autoexp's
    out = TuningRun(seed=seed)
    served = control = 0.0
    base = reward_mean(CONTROL_MS)
    try:
        for _ in range(rounds // batch):
            decisions = [engine.decide("tune") for _ in range(batch)]
            means = [reward_mean(d.params["timeout_ms"]) for d in decisions]
            for m in means:
                served += m
                control += base
                out.worst_slack = min(out.worst_slack, served - (1 - ALPHA) * control)
            engine.reward_many(
                [(d, float(rng.random() < m)) for d, m in zip(decisions, means, strict=True)]
            )
            status = engine.status("tune")
            out.champion_ms.append(int(status["params"][0]["timeout_ms"]))
            out.served.append(served)
            out.control.append(control)
        out.epochs = engine.status("tune")["epoch"]
        out.candidates = sum(1 for r in engine.store.records("tune") if r["type"] == "candidate")
    finally:
        engine.close()
    return out
