"""Run a reference policy on Bernoulli arms: the reference side of the regret tests.

:func:`run_reference` is a plain top-level function of picklable arguments, so a test can
run it in a second process while the project's policy runs in the first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import REFERENCE
from .common import FloatArray

__all__ = ["bernoulli_regret", "run_reference"]


def bernoulli_regret(
    reference: Any,
    means: FloatArray,
    horizon: int,
    policy_rng: np.random.Generator,
    env_rng: np.random.Generator,
) -> FloatArray:
    """Pseudo-regret ``sum_t (max_k mu_k - mu_{arm_t})`` of each of the reference's
    independent replicates (one row each) after ``horizon`` rounds."""
    regret = np.zeros(reference.n_runs)
    for _ in range(horizon):
        arm = reference.choose(policy_rng)
        reward = (env_rng.random(reference.n_runs) < means[arm]).astype(np.float64)
        reference.observe(arm, reward)
        regret += means.max() - means[arm]
    return regret


def run_reference(
    name: str,
    means: FloatArray,
    horizon: int,
    n_runs: int,
    entropy: Sequence[int],
    hyperparameters: Mapping[str, Any],
) -> FloatArray:
    """Regret of ``n_runs`` replicates of ``REFERENCE[name](**hyperparameters)`` seeded
    from ``entropy`` (``SeedSequence(entropy).spawn(2)``: the policy's stream and the
    rewards' stream)."""
    policy_seed, env_seed = np.random.SeedSequence(list(entropy)).spawn(2)
    reference = REFERENCE[name](means.shape[0], n_runs, **hyperparameters)
    return bernoulli_regret(
        reference,
        means,
        horizon,
        np.random.default_rng(policy_seed),
        np.random.default_rng(env_seed),
    )
