"""The gated-deployment scenario, vectorised over replicates: would a candidate policy be
deployed, and when, if the gate (:class:`policies.gate.Gate`) watched logged data?

Each replicate logs ``rows`` users of a contextual environment (``segments``: a segment
per user, one-hot context) with a logging policy's propensities, and feeds every row to
one gate sequence per candidate: ``V(candidate) - V(current)``, checked after every
``check_every`` rows, as the learner process does. A candidate's allocation is given per
segment (a policy that depends on the context only through the segment), which is what
makes the true values exact: ``V(pi) = sum_s w_s sum_a pi(a | s) p[s][a]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from policies.gate import Gate

from .envs import Segments

__all__ = ["GateRun", "policy_value", "run_gate"]


def policy_value(env: Segments, allocation: npt.ArrayLike) -> float:
    """The exact value of a per-segment ``allocation`` (S, K) in ``env``."""
    pi = np.asarray(allocation, dtype=np.float64)
    p = np.asarray(env.p, dtype=np.float64)
    return float(np.asarray(env.weights) @ (pi * p).sum(axis=1))


@dataclass(frozen=True)
class GateRun:
    """Per candidate: the gap it truly has, the lower bound's path (B, looks), and the
    row at which each replicate first deployed it (-1: never)."""

    gap: dict[str, float]
    rows: npt.NDArray[np.int64]  # (looks,) the row count at each look
    lower: dict[str, npt.NDArray[np.float64]]
    deployed_at: dict[str, npt.NDArray[np.int64]]

    def deploy_rate(self, name: str) -> float:
        return float((self.deployed_at[name] >= 0).mean())


def run_gate(
    env: Segments,
    logging: npt.ArrayLike,
    current: npt.ArrayLike,
    candidates: Mapping[str, npt.ArrayLike],
    gate: Gate,
    *,
    rows: int,
    replicates: int,
    check_every: int = 20,
    seed: int = 0,
) -> GateRun:
    """Log ``rows`` users per replicate with the per-segment ``logging`` allocation (S, K)
    and watch each candidate (S, K) against ``current`` (S, K) through ``gate``."""
    rng = np.random.default_rng(seed)
    log = np.asarray(logging, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    cands = {k: np.asarray(v, dtype=np.float64) for k, v in candidates.items()}
    p = np.asarray(env.p, dtype=np.float64)
    n_seg, k = p.shape
    if log.shape != (n_seg, k) or cur.shape != (n_seg, k):
        raise ValueError(f"run_gate: allocations must be ({n_seg}, {k}) per segment")
    if np.any(log <= 0):
        raise ValueError("run_gate: the logging policy must give every arm a positive share")
    looks = np.arange(check_every, rows + 1, check_every)
    states = {name: gate.init(replicates) for name in cands}
    lower = {name: np.empty((replicates, looks.size)) for name in cands}
    first = {name: np.full(replicates, -1, dtype=np.int64) for name in cands}
    start = 0
    for j, stop in enumerate(looks.tolist()):
        n = int(stop - start)
        x = env.context(0, rng, replicates * n)
        seg = env.segment(x).reshape(replicates, n)
        u = rng.random((replicates, n))
        cdf = np.cumsum(log[seg], axis=2)
        arm = np.minimum((u[..., None] > cdf).sum(axis=2), k - 1)
        prop = np.take_along_axis(log[seg], arm[..., None], axis=2)[..., 0]
        reward = (rng.random((replicates, n)) < p[seg, arm]).astype(np.float64)
        for name, pi in cands.items():
            states[name] = gate.update(states[name], arm, reward, prop, pi[seg], cur[seg])
            ev = gate.evaluate(states[name])
            lower[name][:, j] = ev.lower
            newly = gate.decide(states[name]) & (first[name] < 0)
            first[name][newly] = stop
        start = stop
    base = policy_value(env, cur)
    gap = {name: policy_value(env, pi) - base for name, pi in cands.items()}
    return GateRun(gap=gap, rows=looks, lower=lower, deployed_at=first)
