"""Adversarial bandits: EXP3 and EXP3-IX (rewards in [0, 1], losses ``1 - reward``).

Both keep importance-weighted loss sums, which are additive: the increment of one
observation is ``loss / propensity`` (EXP3) or ``loss / (propensity + gamma)`` (EXP3-IX)
on the chosen arm, with the propensity the decision was drawn with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .base import (
    Decision,
    FloatArray,
    PolicyBase,
    Stats,
    check_context_free,
    check_params,
)

__all__ = ["EXP3", "EXP3IX", "LossStats"]


@dataclass(frozen=True, slots=True)
class LossStats(Stats):
    """Importance-weighted loss sums and observation counts.

    Attributes
    ----------
    n : (B, K) float64
        Observations per arm (their total is the time ``t``).
    sum_loss : (B, K) float64
        Importance-weighted loss estimates summed per arm.
    """

    n: FloatArray
    sum_loss: FloatArray

    @classmethod
    def zeros(cls, n_arms: int, batch: int) -> LossStats:
        return cls(n=np.zeros((batch, n_arms)), sum_loss=np.zeros((batch, n_arms)))


def _softmin(sum_loss: FloatArray, eta: FloatArray) -> FloatArray:
    z = -eta * sum_loss
    z = z - z.max(axis=1, keepdims=True)
    w = np.exp(z)
    return np.asarray(w / w.sum(axis=1, keepdims=True))


class _Exp3Base(PolicyBase):
    __slots__ = ()

    def init(self, n_arms: int, batch: int = 1) -> LossStats:
        return LossStats.zeros(n_arms, batch)

    def _gamma(self, k: int) -> float:
        return 0.0

    def increment(
        self, decision: Decision, reward: FloatArray, context: FloatArray | None = None
    ) -> LossStats:
        check_context_free(self.name, context)
        r = self.check(decision, reward)
        b, k = decision.propensity.shape
        rows = np.arange(b)
        p = decision.propensity[rows, decision.arm]
        n = np.zeros((b, k))
        n[rows, decision.arm] = 1.0
        loss = np.zeros((b, k))
        loss[rows, decision.arm] = (1.0 - r) / (p + self._gamma(k))
        return LossStats(n=n, sum_loss=loss)

    def sparse_increment(
        self, arm: Any, reward: Any, propensity: Any, n_arms: int
    ) -> dict[str, Any]:
        loss = (1.0 - reward) / (propensity + self._gamma(n_arms))
        return {"n": reward * 0.0 + 1.0, "sum_loss": loss}


@dataclass(frozen=True, slots=True, kw_only=True)
class EXP3(_Exp3Base):
    """EXP3 with the anytime learning rate ``eta_t = sqrt(ln K / (t K))``.

    Allocation ``p_t = softmax(-eta_t L_t)``, ``L`` the importance-weighted loss sums.

    Notes
    -----
    Regret: pseudo-regret <= 2 sqrt(T K ln K) against any oblivious adversary (Bubeck & Cesa-Bianchi
      2012, Thm 3.1; Auer et al. 2002)

    Makes no stochastic assumption; the price is its slower learning on easy instances.
    """

    name: ClassVar[str] = "exp3"

    def allocation(self, stats: LossStats, context: FloatArray | None = None) -> FloatArray:
        check_context_free(self.name, context)
        k = stats.n.shape[1]
        t = stats.n.sum(axis=1, keepdims=True) + 1.0
        eta = np.sqrt(math.log(k) / (t * k)) if k > 1 else np.zeros_like(t)
        return _softmin(stats.sum_loss, eta)


@dataclass(frozen=True, slots=True, kw_only=True)
class EXP3IX(_Exp3Base):
    """EXP3-IX: EXP3 with implicit exploration, ``loss / (p + gamma)``.

    Parameters
    ----------
    horizon : int
        ``T``; sets ``eta = sqrt(2 ln K / (K T))`` and ``gamma = eta / 2``.

    Notes
    -----
    Regret: <= 2 sqrt(2 K T ln K) + (sqrt(2 K T / ln K) + 1) ln(2 / delta) with probability 1 -
      delta (Neu 2015, Thm 1)

    The implicit-exploration bias makes the loss estimates optimistic and gives the
    high-probability bound without explicit uniform exploration.
    """

    name: ClassVar[str] = "exp3-ix"
    horizon: int = 100_000

    def __post_init__(self) -> None:
        check_params(
            self.name,
            horizon=(
                isinstance(self.horizon, int | np.integer) and self.horizon >= 1,
                self.horizon,
                "a positive integer",
            ),
        )

    def eta(self, k: int) -> float:
        return math.sqrt(2.0 * math.log(k) / (k * self.horizon)) if k > 1 else 0.0

    def _gamma(self, k: int) -> float:
        return self.eta(k) / 2.0

    def allocation(self, stats: LossStats, context: FloatArray | None = None) -> FloatArray:
        check_context_free(self.name, context)
        eta = np.full((stats.n.shape[0], 1), self.eta(stats.n.shape[1]))
        return _softmin(stats.sum_loss, eta)
