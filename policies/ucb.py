"""Optimistic index policies for stochastic rewards in [0, 1]: UCB1, KL-UCB, MOSS.

The allocation of an index policy is one-hot on the largest index, with ties shared
uniformly (so the propensity of a tie-broken choice is exact). Unpulled arms have an
infinite index and are therefore tried first, in uniformly random order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numba
import numpy as np

from ._kernels import MOSS_INDEX, UCB1_INDEX, argmax_ties, ucb_index, ucb_sample
from .base import (
    ArmStats,
    ArmStatsPolicy,
    FloatArray,
    IntArray,
    argmax_allocation,
    check_context_free,
    check_params,
)
from .greedy import empirical_mean

__all__ = ["KLUCB", "MOSS", "UCB1", "kl_ucb_index"]


class _IndexPolicy(ArmStatsPolicy):
    __slots__ = ()

    def _ucb(self) -> tuple[int, float] | None:
        """The compiled index family and its parameter, if the index is one of them."""
        return None

    def index(self, stats: ArmStats) -> FloatArray:
        """(B, K) indices; ``inf`` for unpulled arms."""
        ucb = self._ucb()
        if ucb is None:
            raise NotImplementedError
        return ucb_index(ucb[0], stats.n, stats.sum_reward, ucb[1])

    def sample_arm(
        self, stats: ArmStats, rng: np.random.Generator, context: FloatArray | None = None
    ) -> IntArray:
        """The largest index, ties broken uniformly: the law of ``select(...).arm``."""
        check_context_free(self.name, context)
        u = rng.random((stats.n.shape[0],))
        ucb = self._ucb()
        if ucb is None:
            return argmax_ties(self.index(stats), u)
        return ucb_sample(ucb[0], stats.n, stats.sum_reward, ucb[1], u)

    def allocation(self, stats: ArmStats, context: FloatArray | None = None) -> FloatArray:
        check_context_free(self.name, context)
        # index() is infinite for unpulled arms: they are tried first.
        return argmax_allocation(self.index(stats))


@dataclass(frozen=True, slots=True, kw_only=True)
class UCB1(_IndexPolicy):
    """UCB1: empirical mean plus ``sqrt(exploration * ln t / n)``.

    Parameters
    ----------
    exploration : float > 0
        2 in Auer et al.; smaller values explore less and void the bound.

    Notes
    -----
    Regret: sum_i 8 ln T / gap_i + (1 + pi^2/3) sum_i gap_i; worst case O(sqrt(K T ln T)) (Auer,
      Cesa-Bianchi, Fischer 2002, Thm 1)

    Assumes i.i.d. rewards in [0, 1]. ``t`` is the number of rewards observed so far.
    """

    name: ClassVar[str] = "ucb1"
    exploration: float = 2.0

    def __post_init__(self) -> None:
        check_params(
            self.name,
            exploration=(self.exploration > 0, self.exploration, "> 0"),
        )

    def _ucb(self) -> tuple[int, float]:
        return UCB1_INDEX, self.exploration


@numba.njit(cache=True)
def _kl_bern(p: float, q: float) -> float:
    eps = 1e-15
    p = min(max(p, eps), 1.0 - eps)
    q = min(max(q, eps), 1.0 - eps)
    return p * math.log(p / q) + (1.0 - p) * math.log((1.0 - p) / (1.0 - q))


@numba.njit(cache=True)
def _kl_ucb_index(mean, n, level, out):  # type: ignore[no-untyped-def]
    rows, arms = mean.shape
    top = 1.0 - 1e-15
    for r in range(rows):
        for k in range(arms):
            if n[r, k] <= 0:
                out[r, k] = np.inf
                continue
            p = min(max(mean[r, k], 0.0), 1.0)
            target = level[r] / n[r, k]
            # q -> kl(p, q) is convex and increasing on [p, 1]. Pinsker, kl >= 2 (q - p)^2,
            # puts the root left of p + sqrt(target / 2), so Newton's method started there
            # decreases monotonically onto it.
            q = min(p + math.sqrt(target / 2.0), top)
            if _kl_bern(p, q) <= target:
                out[r, k] = q
                continue
            for _ in range(60):
                f = _kl_bern(p, q) - target
                qc = min(max(q, 1e-15), top)
                pc = min(max(p, 1e-15), top)
                step = f / ((qc - pc) / (qc * (1.0 - qc)))
                q_new = max(q - step, p)
                if q - q_new <= 1e-14:
                    q = q_new
                    break
                q = q_new
            out[r, k] = q


def kl_ucb_index(mean: FloatArray, n: FloatArray, level: FloatArray) -> FloatArray:
    """``max{q in [mean, 1] : n kl(mean, q) <= level}`` per arm (Bernoulli KL)."""
    out = np.empty_like(mean)
    _kl_ucb_index(
        np.ascontiguousarray(mean), np.ascontiguousarray(n), np.ascontiguousarray(level), out
    )
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class KLUCB(_IndexPolicy):
    """KL-UCB: the largest mean still plausible under the Bernoulli KL divergence.

    Parameters
    ----------
    c : float >= 0
        Exploration level ``ln t + c ln ln t``; the theorem takes 3, practice 0.

    Notes
    -----
    Regret: sum_i gap_i (1+e) ln T / kl(mu_i, mu*) + O(ln ln T); asymptotically optimal for
      Bernoulli (Garivier & Cappe 2011, Thm 2)

    Valid for rewards bounded in [0, 1] (the Bernoulli KL is then a lower bound).
    """

    name: ClassVar[str] = "kl-ucb"
    c: float = 0.0

    def __post_init__(self) -> None:
        check_params(self.name, c=(self.c >= 0, self.c, ">= 0"))

    def index(self, stats: ArmStats) -> FloatArray:
        t = np.maximum(stats.n.sum(axis=1), 1.0)
        level = np.log(t)
        if self.c > 0:
            level = level + self.c * np.log(np.maximum(np.log(t), 1.0))
        mean = np.where(stats.n > 0, empirical_mean(stats, 0.0), 0.0)
        return kl_ucb_index(mean, stats.n, level)


@dataclass(frozen=True, slots=True, kw_only=True)
class MOSS(_IndexPolicy):
    """MOSS: UCB with the exploration bonus ``sqrt(max(ln(T / (K n)), 0) / n)``.

    Parameters
    ----------
    horizon : int or None
        ``T``. ``None`` gives the anytime variant, which uses the current time ``t``
        (Degenne & Perchet 2016).

    Notes
    -----
    Regret: minimax 49 sqrt(K T) with a known horizon (Audibert & Bubeck 2009, Thm 5); anytime
      variant O(sqrt(K T)) (Degenne & Perchet 2016)

    Assumes i.i.d. rewards in [0, 1].
    """

    name: ClassVar[str] = "moss"
    horizon: int | None = None

    def __post_init__(self) -> None:
        check_params(
            self.name,
            horizon=(
                self.horizon is None
                or (isinstance(self.horizon, int | np.integer) and self.horizon >= 1),
                self.horizon,
                "a positive integer or None",
            ),
        )

    def _ucb(self) -> tuple[int, float]:
        return MOSS_INDEX, float(self.horizon or 0)
