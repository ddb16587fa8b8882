"""Reference policies for changing means: discounted Thompson sampling (Raj & Kalyani
2017) and sliding-window UCB (Garivier & Moulines 2011).

Every class runs ``n_runs`` independent replicates side by side (one row each).
"""

from __future__ import annotations

import numpy as np

from .common import FloatArray, IntArray, argmax_random_ties

__all__ = ["DiscountedThompson", "SlidingWindowUCB"]


class DiscountedThompson:
    """Raj & Kalyani 2017, Algorithm 2 (Bernoulli rewards).

    After each round every arm's success and failure counts are multiplied by ``gamma``;
    then the played arm gains ``r`` successes and ``1 - r`` failures. The arm played is
    the largest draw from ``Beta(prior_alpha + S_k, prior_beta + F_k)``.
    """

    def __init__(
        self,
        n_arms: int,
        n_runs: int,
        *,
        gamma: float = 0.99,
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
    ) -> None:
        self.n_runs = n_runs
        self.gamma = gamma
        self.prior_alpha = prior_alpha
        self.prior_beta = prior_beta
        self.successes = np.zeros((n_runs, n_arms))
        self.failures = np.zeros((n_runs, n_arms))

    def choose(self, rng: np.random.Generator) -> IntArray:
        theta = rng.beta(self.prior_alpha + self.successes, self.prior_beta + self.failures)
        return argmax_random_ties(theta, rng)

    def observe(self, arm: IntArray, reward: FloatArray) -> None:
        rows = np.arange(self.n_runs)
        self.successes *= self.gamma
        self.failures *= self.gamma
        self.successes[rows, arm] += reward
        self.failures[rows, arm] += 1.0 - reward


class SlidingWindowUCB:
    """Garivier & Moulines 2011, SW-UCB: UCB on the last ``window`` observations only.

    After ``t`` observations, with ``N_k`` and ``mean_k`` the count and mean reward of arm
    ``k`` among the last ``min(t, window)`` of them, the index is
    ``mean_k + scale * sqrt(xi ln(min(t, window)) / N_k)``; an arm absent from the window
    is played first.

    The window is a ring buffer of the last ``window`` (arm, reward) pairs; the counts and
    sums are kept by adding the pair that enters and removing the pair that leaves.
    """

    def __init__(
        self,
        n_arms: int,
        n_runs: int,
        *,
        window: int = 1000,
        xi: float = 0.6,
        scale: float = 1.0,
    ) -> None:
        self.n_arms = n_arms
        self.n_runs = n_runs
        self.window = window
        self.xi = xi
        self.scale = scale
        self.t = 0
        self.arm_log = np.zeros((n_runs, window), dtype=np.int64)
        self.reward_log = np.zeros((n_runs, window))
        self.count = np.zeros((n_runs, n_arms), dtype=np.int64)
        self.total = np.zeros((n_runs, n_arms))

    def choose(self, rng: np.random.Generator) -> IntArray:
        present = self.count > 0
        n = np.maximum(self.count, 1)
        width = max(min(self.t, self.window), 1)
        index = self.total / n + self.scale * np.sqrt(self.xi * np.log(width) / n)
        return argmax_random_ties(np.where(present, index, np.inf), rng)

    def observe(self, arm: IntArray, reward: FloatArray) -> None:
        rows = np.arange(self.n_runs)
        slot = self.t % self.window
        if self.t >= self.window:
            # The window is full: the pair written `window` rounds ago leaves it.
            leaving = self.arm_log[:, slot]
            self.count[rows, leaving] -= 1
            self.total[rows, leaving] -= self.reward_log[:, slot]
        self.arm_log[:, slot] = arm
        self.reward_log[:, slot] = reward
        self.count[rows, arm] += 1
        self.total[rows, arm] += reward
        self.t += 1
