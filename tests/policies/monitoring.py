"""Continuous monitoring of sequential tests on simulated traffic (shared by the tests).

Users arrive in batches of ``step``; each batch is allocated 50/50 (a fixed split) or by
Thompson sampling under a traffic cap (allocation recomputed from the per-arm counts
before every batch, as a serving replica does), rewards are Bernoulli, every test is
updated with the batch and checked after it. Recorded per replicate: when each test first
promoted / rolled back arm 1, whether its sequence ever missed the true difference,
whether each arm's own sequence (per-arm tests) ever missed its mean, users sent to arm 1
before the first decision; and the same for the naive z-test peeked after every batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from policies import ArmStats, ThompsonBeta, TrafficCap
from policies.sequential import SequentialTest


@dataclass
class Outcome:
    promote: np.ndarray  # (B,) users at the first promotion of arm 1 (inf: never)
    rollback: np.ndarray  # (B,) users at the first rollback of arm 1
    miss: np.ndarray  # (B,) the difference CS excluded the true difference at some check
    arm_miss: np.ndarray  # (B, K) an arm's own CS excluded its mean at some check
    users_on_arm: np.ndarray  # (B,) users sent to arm 1 before the first decision
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def decided(self) -> np.ndarray:
        return np.minimum(self.promote, self.rollback)

    @property
    def reject(self) -> np.ndarray:
        return np.isfinite(self.decided)


def naive_z_reject(n: np.ndarray, s: np.ndarray, alpha: float) -> np.ndarray:
    """Two-proportion pooled z-test of arm 1 against arm 0, as ``proportions_ztest``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = s.sum(axis=1) / n.sum(axis=1)
        se = np.sqrt(p * (1 - p) * (1 / n[:, 0] + 1 / n[:, 1]))
        z = (s[:, 1] / n[:, 1] - s[:, 0] / n[:, 0]) / se
    return np.abs(np.nan_to_num(z)) > norm.ppf(1 - alpha / 2)


def users(
    rng: np.random.Generator,
    pi: np.ndarray,
    mu: np.ndarray,
    n: np.ndarray,
    s: np.ndarray,
    step: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``step`` users per row on two arms drawn from ``pi`` (B, 2), Bernoulli(``mu``)
    rewards; the per-arm counts ``n`` and reward sums ``s`` (B, 2) are updated in place."""
    arm = (rng.random((pi.shape[0], step)) >= pi[:, :1]).astype(np.int64)
    reward = (rng.random((pi.shape[0], step)) < mu[arm]).astype(np.float64)
    for k in (0, 1):
        n[:, k] += (arm == k).sum(axis=1)
        s[:, k] += (reward * (arm == k)).sum(axis=1)
    return arm, reward


def monitor(
    tests: dict[str, SequentialTest],
    means: tuple[float, float],
    *,
    replicates: int,
    horizon: int,
    seed: int,
    bandit: bool = False,
    share: float = 0.1,
    step: int = 100,
) -> dict[str, Outcome]:
    b, k = replicates, 2
    mu = np.asarray(means)
    delta = mu[1] - mu[0]
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    policy = TrafficCap(policy=ThompsonBeta(), explore_share=share)
    n = np.zeros((b, k))
    s = np.zeros((b, k))
    states = {name: t.init(k, b) for name, t in tests.items()}
    out = {
        name: Outcome(
            promote=np.full(b, np.inf),
            rollback=np.full(b, np.inf),
            miss=np.zeros(b, bool),
            arm_miss=np.zeros((b, k), bool),
            users_on_arm=np.zeros(b),
        )
        for name in [*tests, "naive-z"]
    }
    for t in range(step, horizon + 1, step):
        pi = policy.allocation(ArmStats(n=n, sum_reward=s)) if bandit else np.full((b, k), 0.5)
        arm, reward = users(rng, pi, mu, n, s, step)
        for name, test in tests.items():
            states[name] = test.update(states[name], arm, reward, pi)
            if hasattr(test, "evaluate_with_bounds"):
                ev, (_, lo, hi) = test.evaluate_with_bounds(states[name])
                out[name].arm_miss |= (lo > mu) | (hi < mu)
            else:
                ev = test.evaluate(states[name])
            o = out[name]
            undecided = ~o.reject
            o.users_on_arm[undecided] = n[undecided, 1]
            o.promote[undecided & (ev.lower[:, 1] > 0)] = t
            o.rollback[undecided & (ev.upper[:, 1] < 0) & ~(ev.lower[:, 1] > 0)] = t
            o.miss |= (ev.lower[:, 1] > delta) | (ev.upper[:, 1] < delta)
        o = out["naive-z"]
        undecided = ~o.reject
        o.users_on_arm[undecided] = n[undecided, 1]
        o.promote[undecided & naive_z_reject(n, s, 0.05)] = t
    return out
