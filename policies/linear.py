"""Contextual policies with one ridge regression per arm (disjoint linear models).

Each request comes with a context ``x`` of ``dim`` numbers (include a constant 1 for an
intercept). Arm k's reward is modelled as ``x . theta_k``; its sufficient statistics are
additive, ``gram_k += x x^T`` and ``xr_k += r x`` for each reward ``r`` observed on k
(and ``n_k += 1``), so replicas merge by addition and a crash replays exactly, as for
the context-free policies. The estimate uses ``A_k = ridge * I + gram_k`` and
``theta_k = A_k^-1 xr_k``; the width of arm k at ``x`` is ``sqrt(x^T A_k^-1 x)``.

Both are exact about their propensities: LinUCB's allocation is the argmax of its index
(ties shared), and linear Thompson sampling's is the probability that each arm's
posterior score is the largest, computed by the same quadrature as
:class:`~policies.thompson.ThompsonGaussian` (the scores of disjoint models are
independent normals given ``x``).

They are registered in :data:`policies.CONTEXTUAL`, apart from :data:`policies.REGISTRY`
(whose contract battery is context-free); the runtime serves them with a context per
decision (``context_dim`` numbers), carried in the decision's token to its reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from ._kernels import NORMAL, prob_best
from .base import (
    Decision,
    FloatArray,
    PolicyBase,
    Stats,
    argmax_allocation,
    check_params,
    context_rows,
)

__all__ = ["LinTS", "LinUCB", "LinearStats"]


@dataclass(frozen=True, slots=True)
class LinearStats(Stats):
    """Per-arm ridge regression statistics.

    Attributes
    ----------
    gram : (B, K, d, d) float64
        Sum of ``x x^T`` over the arm's observations.
    xr : (B, K, d) float64
        Sum of ``reward * x``.
    n : (B, K) float64
        Number of observations.
    """

    gram: FloatArray
    xr: FloatArray
    n: FloatArray


class _Linear(PolicyBase):
    """What LinUCB and linear Thompson sampling share: state, context checks, estimates."""

    __slots__ = ()
    dim: int
    ridge: float
    low: float | None
    high: float | None

    @property
    def reward_range(self) -> tuple[float | None, float | None]:  # type: ignore[override]
        return self.low, self.high

    def _check_common(self) -> None:
        low = -np.inf if self.low is None else self.low
        high = np.inf if self.high is None else self.high
        check_params(
            self.name,
            high=(
                bool(low < high) and all(b is None or np.isfinite(b) for b in self.reward_range),
                (self.low, self.high),
                "finite bounds with low < high, or None (unbounded)",
            ),
            dim=(
                isinstance(self.dim, int) and not isinstance(self.dim, bool) and self.dim >= 1,
                self.dim,
                "an integer >= 1",
            ),
            ridge=(bool(np.isfinite(self.ridge) and self.ridge > 0), self.ridge, "finite and > 0"),
        )

    @property
    def context_dim(self) -> int | None:
        return self.dim

    def init(self, n_arms: int, batch: int = 1) -> LinearStats:
        d = self.dim
        return LinearStats(
            gram=np.zeros((batch, n_arms, d, d)),
            xr=np.zeros((batch, n_arms, d)),
            n=np.zeros((batch, n_arms)),
        )

    def state_from_dict(self, data: Any) -> LinearStats:
        return self.init(1, 1).like(data)

    def context(self, context: npt.ArrayLike | None, batch: int) -> FloatArray:
        """``context`` as a (B, dim) array of finite numbers (:func:`context_rows`)."""
        return context_rows(self.name, self.dim, context, batch)

    def estimate(
        self, stats: LinearStats, context: npt.ArrayLike | None
    ) -> tuple[FloatArray, FloatArray]:
        """Per row and arm at ``context``: the ridge estimate ``x . theta_k`` and the width
        ``sqrt(x^T A_k^-1 x)``, each (B, K)."""
        x = self.context(context, stats.n.shape[0])
        a = stats.gram + self.ridge * np.eye(self.dim)
        rhs = np.stack([stats.xr, np.broadcast_to(x[:, None, :], stats.xr.shape)], axis=-1)
        solved = np.linalg.solve(a, rhs)  # (B, K, d, 2): theta_k and A_k^-1 x
        mean = np.einsum("bkd,bd->bk", solved[..., 0], x)
        var = np.einsum("bkd,bd->bk", solved[..., 1], x)
        return mean, np.sqrt(np.maximum(var, 0.0))

    def increment(
        self, decision: Decision, reward: FloatArray, context: npt.ArrayLike | None = None
    ) -> LinearStats:
        r = self.check(decision, reward)
        batch, k = decision.propensity.shape
        x = self.context(context, batch)
        onehot = np.zeros((batch, k))
        onehot[np.arange(batch), decision.arm] = 1.0
        outer = x[:, :, None] * x[:, None, :]
        return LinearStats(
            gram=onehot[:, :, None, None] * outer[:, None, :, :],
            xr=onehot[:, :, None] * (r[:, None] * x)[:, None, :],
            n=onehot,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LinUCB(_Linear):
    """LinUCB with disjoint models: play the arm maximising
    ``x . theta_k + alpha * sqrt(x^T A_k^-1 x)``.

    Parameters
    ----------
    dim : int >= 1
        Numbers in each context.
    alpha : float >= 0
        Width of the confidence bonus (0: greedy on the ridge estimate).
    ridge : float > 0
        The ridge penalty (the prior's precision).
    low, high : float or None
        Bounds of valid rewards (``None``: unbounded); rewards outside are refused. A
        conservative budget needs them inside [0, 1].

    Notes
    -----
    Regret: O(d sqrt(T) log T) for the optimistic linear bandit with a suitably growing
      alpha (Abbasi-Yadkori, Pal & Szepesvari 2011); Li et al. 2010 for LinUCB's disjoint
      form, Chu et al. 2011 for O~(sqrt(K d T)) with SupLinUCB
    """

    name: ClassVar[str] = "lin-ucb"
    dim: int
    alpha: float = 1.0
    ridge: float = 1.0
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        self._check_common()
        check_params(
            self.name,
            alpha=(
                bool(np.isfinite(self.alpha) and self.alpha >= 0),
                self.alpha,
                "finite and >= 0",
            ),
        )

    def allocation(self, stats: LinearStats, context: npt.ArrayLike | None = None) -> FloatArray:
        mean, width = self.estimate(stats, context)
        return argmax_allocation(mean + self.alpha * width)

    @classmethod
    def example(cls) -> LinUCB:
        return cls(dim=3)


@dataclass(frozen=True, slots=True, kw_only=True)
class LinTS(_Linear):
    """Linear Thompson sampling with disjoint models: each arm's score at ``x`` is drawn
    from ``N(x . theta_k, noise_sd^2 x^T A_k^-1 x)`` and the largest is played; the
    allocation is the exact probability of each arm being largest.

    Parameters
    ----------
    dim : int >= 1
        Numbers in each context.
    noise_sd : float > 0
        Scale of the posterior (the reward noise's standard deviation; larger explores more).
    ridge : float > 0
        The ridge penalty (the prior's precision, in units of ``noise_sd^-2``).
    low, high : float or None
        Bounds of valid rewards (``None``: unbounded); rewards outside are refused. A
        conservative budget needs them inside [0, 1].

    Notes
    -----
    Regret: O~(d^(3/2) sqrt(T)) (Agrawal & Goyal 2013, with an inflated posterior; the
      Bayesian regret of the unscaled posterior is O~(d sqrt(T)), Russo & Van Roy 2014)
    """

    name: ClassVar[str] = "lin-ts"
    dim: int
    noise_sd: float = 0.5
    ridge: float = 1.0
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        self._check_common()
        check_params(
            self.name,
            noise_sd=(
                bool(np.isfinite(self.noise_sd) and self.noise_sd > 0),
                self.noise_sd,
                "finite and > 0",
            ),
        )

    def allocation(self, stats: LinearStats, context: npt.ArrayLike | None = None) -> FloatArray:
        mean, width = self.estimate(stats, context)
        # width > 0 always: A_k is positive definite and x != 0 in any row that matters;
        # a zero context gives equal, tiny widths (every arm equally likely to win)
        return prob_best(NORMAL, mean, np.maximum(self.noise_sd * width, 1e-12))

    def sample_arm(
        self,
        stats: LinearStats,
        rng: np.random.Generator,
        context: npt.ArrayLike | None = None,
    ) -> Any:
        """One posterior score per arm and the argmax: same law as ``select(...).arm``."""
        mean, width = self.estimate(stats, context)
        return np.asarray(np.argmax(rng.normal(mean, self.noise_sd * width), axis=1))

    @classmethod
    def example(cls) -> LinTS:
        return cls(dim=3)
