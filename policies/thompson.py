"""Thompson sampling, expressed as its allocation: the posterior probability that each
arm is best. Drawing an arm from that allocation is distributionally identical to
sampling the posterior and taking the argmax, and gives the exact propensity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ._kernels import (
    BETA,
    NORMAL,
    ProbBestCache,
    beta_prob_best,
    prob_best,
)
from .base import (
    ArmStats,
    ArmStatsPolicy,
    FloatArray,
    IntArray,
    check_context_free,
    check_params,
)

__all__ = ["ThompsonBeta", "ThompsonGaussian", "sample_argmax"]


def sample_argmax(draws: FloatArray) -> IntArray:
    """Argmax per row; exact ties (probability zero for continuous posteriors) go first."""
    return np.asarray(np.argmax(draws, axis=1), dtype=np.int64)


@dataclass(frozen=True, slots=True, kw_only=True)
class ThompsonBeta(ArmStatsPolicy):
    """Beta-Bernoulli Thompson sampling.

    The posterior of arm k is ``Beta(prior_alpha + S_k, prior_beta + n_k - S_k)``. Rewards
    in [0, 1] that are not 0/1 enter fractionally (``S_k`` is their sum).

    Parameters
    ----------
    prior_alpha, prior_beta : float >= 1
        The prior; >= 1 keeps posterior densities bounded, which the quadrature needs.

    Notes
    -----
    Regret: sum_i gap_i ln T / kl(mu_i, mu*) (1 + o(1)), asymptotically optimal; worst case O(sqrt(K
      T ln T)) (Kaufmann et al. 2012; Agrawal & Goyal 2017)

    The allocation is computed by :func:`policies._kernels.prob_best` (absolute error
    below ``PROB_BEST_ATOL`` per arm). :meth:`sample_arm` is the cheap equivalent for
    callers that do not need the propensity (the simulator's fast path).
    """

    name: ClassVar[str] = "thompson-beta"
    prior_alpha: float = 1.0
    prior_beta: float = 1.0

    def __post_init__(self) -> None:
        check_params(
            self.name,
            prior_alpha=(self.prior_alpha >= 1.0, self.prior_alpha, ">= 1"),
            prior_beta=(self.prior_beta >= 1.0, self.prior_beta, ">= 1"),
        )

    def posterior(self, stats: ArmStats) -> tuple[FloatArray, FloatArray]:
        """Beta parameters ``(alpha, beta)``, each (B, K)."""
        return (
            self.prior_alpha + stats.sum_reward,
            self.prior_beta + stats.n - stats.sum_reward,
        )

    def allocation(self, stats: ArmStats, context: FloatArray | None = None) -> FloatArray:
        check_context_free(self.name, context)
        return beta_prob_best(stats.n, stats.sum_reward, self.prior_alpha, self.prior_beta)

    def allocation_cache(self, stats: ArmStats) -> ProbBestCache:
        """An allocation for one stream (batch 1) that is updated one arm at a time."""

        def arm_posterior(stats: ArmStats, arm: int) -> tuple[float, float]:
            s = float(stats.sum_reward[0, arm])
            return self.prior_alpha + s, self.prior_beta + float(stats.n[0, arm]) - s

        return ProbBestCache(BETA, self.posterior, arm_posterior, stats)

    def sample_arm(
        self, stats: ArmStats, rng: np.random.Generator, context: FloatArray | None = None
    ) -> IntArray:
        """One posterior draw per arm and the argmax: same law as ``select(...).arm``."""
        check_context_free(self.name, context)
        a, b = self.posterior(stats)
        return sample_argmax(rng.beta(a, b))


@dataclass(frozen=True, slots=True, kw_only=True)
class ThompsonGaussian(ArmStatsPolicy):
    """Gaussian Thompson sampling with known noise scale.

    Posterior of arm k: ``N(m_k, v_k)`` with ``1 / v_k = 1 / prior_sd^2 + n_k / noise_sd^2``
    and ``m_k = v_k (prior_mean / prior_sd^2 + S_k / noise_sd^2)``.

    Parameters
    ----------
    prior_mean : float
    prior_sd : float > 0
    noise_sd : float > 0
        The reward noise scale (a sub-Gaussian parameter for non-Gaussian rewards).

    Notes
    -----
    Regret: O(sqrt(K T ln K)) worst case, sum_i O(ln T / gap_i) instance-dependent (Agrawal & Goyal
      2013/2017, Gaussian priors)

    Rewards may be any finite real number.
    """

    name: ClassVar[str] = "thompson-gaussian"
    reward_range: ClassVar[tuple[float | None, float | None]] = (None, None)
    prior_mean: float = 0.0
    prior_sd: float = 1.0
    noise_sd: float = 1.0

    def __post_init__(self) -> None:
        check_params(
            self.name,
            prior_mean=(np.isfinite(self.prior_mean), self.prior_mean, "finite"),
            prior_sd=(self.prior_sd > 0 and np.isfinite(self.prior_sd), self.prior_sd, "> 0"),
            noise_sd=(self.noise_sd > 0 and np.isfinite(self.noise_sd), self.noise_sd, "> 0"),
        )

    def posterior(self, stats: ArmStats) -> tuple[FloatArray, FloatArray]:
        """Posterior ``(mean, sd)``, each (B, K)."""
        prec0 = 1.0 / self.prior_sd**2
        prec_n = 1.0 / self.noise_sd**2
        precision = prec0 + stats.n * prec_n
        mean = (self.prior_mean * prec0 + stats.sum_reward * prec_n) / precision
        return mean, np.sqrt(1.0 / precision)

    def allocation(self, stats: ArmStats, context: FloatArray | None = None) -> FloatArray:
        check_context_free(self.name, context)
        mean, sd = self.posterior(stats)
        return prob_best(NORMAL, mean, sd)

    def allocation_cache(self, stats: ArmStats) -> ProbBestCache:
        """An allocation for one stream (batch 1) that is updated one arm at a time."""

        def arm_posterior(stats: ArmStats, arm: int) -> tuple[float, float]:
            mean, sd = self.posterior(stats.rows([0]))
            return float(mean[0, arm]), float(sd[0, arm])

        return ProbBestCache(NORMAL, self.posterior, arm_posterior, stats)

    def sample_arm(
        self, stats: ArmStats, rng: np.random.Generator, context: FloatArray | None = None
    ) -> IntArray:
        """One posterior draw per arm and the argmax: same law as ``select(...).arm``."""
        check_context_free(self.name, context)
        mean, sd = self.posterior(stats)
        return sample_argmax(rng.normal(mean, sd))
