"""Reference EXP3 (Bubeck & Cesa-Bianchi 2012, Thm 3.1) and EXP3-IX (Neu 2015).

Rewards lie in [0, 1] and the losses are ``1 - reward``. Both play
``p_t = softmax(-eta_t * Lhat)``, ``Lhat`` the importance-weighted loss estimates, and add
the chosen arm's estimated loss after each round. Every class runs ``n_runs`` independent
replicates side by side (one row each).
"""

from __future__ import annotations

import math

import numpy as np

from .common import FloatArray, IntArray, draw_categorical

__all__ = ["EXP3", "EXP3IX", "softmin"]


def softmin(loss: FloatArray, eta: float) -> FloatArray:
    """``p_k = exp(-eta L_k) / sum_j exp(-eta L_j)`` per row (shifted by the row's
    smallest loss, which leaves ``p`` unchanged and keeps ``exp`` from underflowing)."""
    weights = np.exp(-eta * (loss - loss.min(axis=1, keepdims=True)))
    return weights / weights.sum(axis=1, keepdims=True)


class EXP3:
    """EXP3 with the anytime rate ``eta_t = sqrt(ln K / (t K))``, ``t`` the current round
    (rounds played so far + 1), and the unbiased estimate ``Lhat_k += loss / p_k`` on the
    chosen arm (Bubeck & Cesa-Bianchi 2012, Thm 3.1)."""

    def __init__(self, n_arms: int, n_runs: int) -> None:
        self.n_arms = n_arms
        self.n_runs = n_runs
        self.loss_estimate = np.zeros((n_runs, n_arms))
        self.rounds = 0
        self.p = np.full((n_runs, n_arms), 1.0 / n_arms)

    def eta(self) -> float:
        t = self.rounds + 1
        return math.sqrt(math.log(self.n_arms) / (t * self.n_arms))

    def gamma(self) -> float:
        """The implicit-exploration term added to the propensity (0 for EXP3)."""
        return 0.0

    def choose(self, rng: np.random.Generator) -> IntArray:
        self.p = softmin(self.loss_estimate, self.eta())
        return draw_categorical(self.p, rng)

    def observe(self, arm: IntArray, reward: FloatArray) -> None:
        rows = np.arange(self.n_runs)
        loss = 1.0 - reward
        self.loss_estimate[rows, arm] += loss / (self.p[rows, arm] + self.gamma())
        self.rounds += 1


class EXP3IX(EXP3):
    """EXP3-IX (Neu 2015, Thm 1): ``eta = sqrt(2 ln K / (K T))`` fixed by the horizon
    ``T``, and the biased estimate ``Lhat_k += loss / (p_k + gamma)`` with
    ``gamma = eta / 2``."""

    def __init__(self, n_arms: int, n_runs: int, *, horizon: int = 100_000) -> None:
        super().__init__(n_arms, n_runs)
        self.horizon = horizon

    def eta(self) -> float:
        return math.sqrt(2.0 * math.log(self.n_arms) / (self.n_arms * self.horizon))

    def gamma(self) -> float:
        return self.eta() / 2.0
