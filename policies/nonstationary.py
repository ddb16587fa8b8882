"""Policies for rewards whose means move: discounted Thompson and sliding-window UCB.

Neither is additive. Discounting multiplies the whole state by ``gamma`` at every step,
and a sliding window forgets the observation that leaves it, so the order of
observations matters. Their states say so (``additive = False``): they cannot be merged
across replicas and are updated in order with :meth:`update`. The extra state is
explicit: the discounted sums, and the window's ring buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ._kernels import BETA, prob_best
from .base import (
    Decision,
    FloatArray,
    IntArray,
    PolicyBase,
    Stats,
    argmax_allocation,
    check_context_free,
    check_params,
    ratio,
)
from .thompson import sample_argmax

__all__ = ["DiscountedStats", "DiscountedThompson", "SlidingWindowUCB", "WindowStats"]


@dataclass(frozen=True, slots=True)
class DiscountedStats(Stats):
    """Discounted success and failure sums, (B, K) each. Not additive."""

    additive: ClassVar[bool] = False
    success: FloatArray
    failure: FloatArray


class _OrderedPolicy(PolicyBase):
    __slots__ = ()
    additive: ClassVar[bool] = False

    def increment(
        self, decision: Decision, reward: FloatArray, context: FloatArray | None = None
    ) -> Stats:
        raise TypeError(
            f"{self.name}: not additive (its state depends on the order of observations); "
            "use update(stats, decision, reward)"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscountedThompson(_OrderedPolicy):
    """Discounted Thompson sampling for Bernoulli rewards with changing means.

    At each step every arm's success and failure counts are multiplied by ``gamma``,
    then the played arm's are increased by ``r`` and ``1 - r``; the posterior is
    ``Beta(prior_alpha + success, prior_beta + failure)``.

    Parameters
    ----------
    gamma : float in (0, 1]
        Discount per step; the effective memory is about ``1 / (1 - gamma)`` steps.
    prior_alpha, prior_beta : float >= 1

    Notes
    -----
    Regret: no finite-time bound proved; empirically competitive in piecewise-stationary and
      drifting environments (Raj & Kalyani 2017)

    Not additive: the state depends on the order of observations.
    """

    name: ClassVar[str] = "discounted-thompson"
    gamma: float = 0.99
    prior_alpha: float = 1.0
    prior_beta: float = 1.0

    def __post_init__(self) -> None:
        check_params(
            self.name,
            gamma=(0.0 < self.gamma <= 1.0, self.gamma, "in (0, 1]"),
            prior_alpha=(self.prior_alpha >= 1.0, self.prior_alpha, ">= 1"),
            prior_beta=(self.prior_beta >= 1.0, self.prior_beta, ">= 1"),
        )

    def init(self, n_arms: int, batch: int = 1) -> DiscountedStats:
        shape = (batch, n_arms)
        return DiscountedStats(success=np.zeros(shape), failure=np.zeros(shape))

    def allocation(self, stats: DiscountedStats, context: FloatArray | None = None) -> FloatArray:
        check_context_free(self.name, context)
        return prob_best(BETA, self.prior_alpha + stats.success, self.prior_beta + stats.failure)

    def sample_arm(
        self, stats: DiscountedStats, rng: np.random.Generator, context: FloatArray | None = None
    ) -> IntArray:
        """Posterior draw and argmax: same law as ``select(...).arm``."""
        check_context_free(self.name, context)
        return sample_argmax(
            rng.beta(self.prior_alpha + stats.success, self.prior_beta + stats.failure)
        )

    def update(
        self,
        stats: DiscountedStats,
        decision: Decision,
        reward: FloatArray,
        context: FloatArray | None = None,
    ) -> DiscountedStats:
        check_context_free(self.name, context)
        r = self.check(decision, reward)
        rows = np.arange(r.shape[0])
        success = self.gamma * stats.success
        failure = self.gamma * stats.failure
        success[rows, decision.arm] += r
        failure[rows, decision.arm] += 1.0 - r
        return DiscountedStats(success=success, failure=failure)


@dataclass(frozen=True, slots=True)
class WindowStats(Stats):
    """The last ``window`` observations and their per-arm totals. Not additive.

    Attributes
    ----------
    arms : (B, W) int64
        Ring buffer of played arms (-1 where empty).
    rewards : (B, W) float64
        Ring buffer of rewards.
    t : (B,) int64
        Observations so far (the write position is ``t % W``).
    n, sum_reward : (B, K) float64
        Counts and reward sums over the window.
    """

    additive: ClassVar[bool] = False
    arms: IntArray
    rewards: FloatArray
    t: IntArray
    n: FloatArray
    sum_reward: FloatArray


@dataclass(frozen=True, slots=True, kw_only=True)
class SlidingWindowUCB(_OrderedPolicy):
    """Sliding-window UCB: UCB on the last ``window`` observations only.

    Index: ``mean_W + scale * sqrt(xi ln(min(t, W)) / n_W)``, both over the window.

    Parameters
    ----------
    window : int >= 1
        ``W``; Garivier & Moulines take ``2 sqrt(T ln T / Y)`` for ``Y`` change points.
    xi : float > 1/2
    scale : float > 0
        Bound on the rewards (1 for rewards in [0, 1]).

    Notes
    -----
    Regret: O(sqrt(Y T ln T)) with Y abrupt changes and a tuned window (Garivier & Moulines 2011,
      Thm 2)

    Not additive: the window forgets in order. Arms absent from the window are tried first.
    """

    name: ClassVar[str] = "sliding-window-ucb"
    window: int = 1000
    xi: float = 0.6
    scale: float = 1.0

    def __post_init__(self) -> None:
        check_params(
            self.name,
            window=(
                isinstance(self.window, int | np.integer) and self.window >= 1,
                self.window,
                "a positive integer",
            ),
            xi=(self.xi > 0.5, self.xi, "> 0.5"),
            scale=(self.scale > 0, self.scale, "> 0"),
        )

    def init(self, n_arms: int, batch: int = 1) -> WindowStats:
        return WindowStats(
            arms=np.full((batch, self.window), -1, dtype=np.int64),
            rewards=np.zeros((batch, self.window)),
            t=np.zeros(batch, dtype=np.int64),
            n=np.zeros((batch, n_arms)),
            sum_reward=np.zeros((batch, n_arms)),
        )

    def allocation(self, stats: WindowStats, context: FloatArray | None = None) -> FloatArray:
        check_context_free(self.name, context)
        t = np.minimum(stats.t, self.window).astype(np.float64)[:, None]
        # Window sums are kept by adding and subtracting, so round-off may leave a tiny
        # non-zero count; counts are integers, and an empty arm's index is infinite.
        n = np.where(stats.n > 0.5, stats.n, 0.0)
        level = self.xi * np.log(np.maximum(t, 1.0))
        index = ratio(stats.sum_reward, n, math.inf) + self.scale * np.sqrt(
            ratio(level, n, math.inf)
        )
        return argmax_allocation(index)

    def update(
        self,
        stats: WindowStats,
        decision: Decision,
        reward: FloatArray,
        context: FloatArray | None = None,
    ) -> WindowStats:
        check_context_free(self.name, context)
        r = self.check(decision, reward)
        rows = np.arange(r.shape[0])
        pos = stats.t % self.window
        arms = stats.arms.copy()
        rewards = stats.rewards.copy()
        n = stats.n.copy()
        total = stats.sum_reward.copy()
        old = arms[rows, pos]
        full = old >= 0
        n[rows[full], old[full]] -= 1.0
        total[rows[full], old[full]] -= rewards[rows[full], pos[full]]
        arms[rows, pos] = decision.arm
        rewards[rows, pos] = r
        n[rows, decision.arm] += 1.0
        total[rows, decision.arm] += r
        return WindowStats(arms=arms, rewards=rewards, t=stats.t + 1, n=n, sum_reward=total)
