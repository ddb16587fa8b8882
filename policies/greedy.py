"""Epsilon-greedy: the baseline every other policy must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import (
    ArmStats,
    ArmStatsPolicy,
    FloatArray,
    argmax_allocation,
    check_context_free,
    check_params,
    ratio,
)

__all__ = ["EpsilonGreedy", "empirical_mean"]


def empirical_mean(stats: ArmStats, unpulled: float = np.inf) -> FloatArray:
    """Per-arm mean reward, ``unpulled`` where an arm has no observation yet."""
    return ratio(stats.sum_reward, stats.n, unpulled)


@dataclass(frozen=True, slots=True, kw_only=True)
class EpsilonGreedy(ArmStatsPolicy):
    """Play the best empirical mean, and a uniformly random arm with probability epsilon.

    A baseline only: with a constant epsilon its regret grows linearly.

    Parameters
    ----------
    epsilon : float in [0, 1]
        Probability of a uniform exploration step.

    Notes
    -----
    Regret: linear, epsilon (K-1)/K mean-gap T for constant epsilon (baseline only; Auer et al. 2002
      analyse decaying epsilon)

    Unpulled arms count as best, so every arm is tried once; ties share the greedy mass
    uniformly. Allocation: ``epsilon / K + (1 - epsilon) * greedy``.
    """

    name: ClassVar[str] = "epsilon-greedy"
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        check_params(self.name, epsilon=(0.0 <= self.epsilon <= 1.0, self.epsilon, "in [0, 1]"))

    def allocation(self, stats: ArmStats, context: FloatArray | None = None) -> FloatArray:
        check_context_free(self.name, context)
        k = stats.n.shape[1]
        greedy = argmax_allocation(empirical_mean(stats))
        return np.asarray(self.epsilon / k + (1.0 - self.epsilon) * greedy, dtype=np.float64)
