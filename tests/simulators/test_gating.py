"""The gated-deployment scenario in the simulator: exact policy values, and deployment
rates under continuous monitoring against alpha (Monte-Carlo tolerances)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policies.gate import Gate
from simulators.envs import Segments
from simulators.gating import policy_value, run_gate

ENV = Segments(p=[[0.2, 0.7, 0.2], [0.2, 0.2, 0.7], [0.5, 0.3, 0.3]], weights=[0.4, 0.4, 0.2])
UNIFORM = np.full((3, 3), 1 / 3)
BEST = np.eye(3)[[1, 2, 0]]
SAME = np.array([[1 / 3] * 3, [1 / 3] * 3, [1 / 3, 0.0, 2 / 3]])
WORSE = np.eye(3)[[0, 0, 1]]
GATE = Gate(alpha=0.05, max_weight=3.0, n_expected=1000.0)


def test_policy_values_are_exact() -> None:
    assert policy_value(ENV, UNIFORM) == pytest.approx((0.4 * 1.1 + 0.4 * 1.1 + 0.2 * 1.1) / 3)
    assert policy_value(ENV, BEST) == pytest.approx(0.66)
    assert policy_value(ENV, SAME) == pytest.approx(policy_value(ENV, UNIFORM))
    assert policy_value(ENV, WORSE) == pytest.approx(0.4 * 0.2 + 0.4 * 0.2 + 0.2 * 0.3)


def test_deployment_rates_under_continuous_monitoring() -> None:
    # R = 600 replicates of 1,000 uniformly logged rows, a look every 20 rows. Anytime
    # validity: a candidate no better than the current policy is ever deployed with
    # probability <= alpha; assert each such rate <= alpha + 4 sqrt(alpha (1 - alpha) / R)
    # (0.086). The per-device best (+0.29) must be deployed in nearly every replicate:
    # the policies-level test measured every one of 200 by row ~250; if the true rate
    # were 0.99, fewer than 97% of 600 would happen with probability < 1e-3.
    reps = 600
    run = run_gate(
        ENV,
        UNIFORM,
        UNIFORM,
        {"best": BEST, "same": SAME, "worse": WORSE},
        GATE,
        rows=1_000,
        replicates=reps,
        seed=5,
    )
    bound = GATE.alpha + 4 * math.sqrt(GATE.alpha * (1 - GATE.alpha) / reps)
    assert run.deploy_rate("same") <= bound and run.deploy_rate("worse") <= bound
    assert run.deploy_rate("best") >= 0.97
    assert run.gap["best"] == pytest.approx(0.2933, abs=1e-3)
    # the lower bound never overshoots the truth by more than the sequence allows: the
    # share of replicates whose bound is above the true gap at any look is <= alpha too
    for name in ("best", "same", "worse"):
        above = (run.lower[name] > run.gap[name]).any(axis=1).mean()
        assert above <= bound, (name, above)


def test_bad_scenarios_are_refused() -> None:
    with pytest.raises(ValueError, match=r"allocations must be \(3, 3\) per segment"):
        run_gate(ENV, UNIFORM[:2], UNIFORM, {}, GATE, rows=20, replicates=2)
    with pytest.raises(ValueError, match="every arm a positive share"):
        run_gate(ENV, BEST, UNIFORM, {}, GATE, rows=20, replicates=2)
