"""Contextual environments: each user brings features, and the best arm may depend on them.

:class:`Linear` and :class:`Logistic` draw Gaussian features and score them with one
weight vector per arm; :class:`Segments` draws a segment (device, country, plan...) and
encodes it as an intercept and indicators. All follow the protocol of
:mod:`simulators.envs` (``dim`` > 0: ``context`` returns (B, D) features, ``means`` takes
them) and are importable from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from policies.base import FloatArray, IntArray

from ._env_base import _Base, _entry, _pick

__all__ = ["Linear", "Logistic", "Segments"]


@dataclass(frozen=True, kw_only=True)
class _Contextual(_Base):
    theta: npt.ArrayLike
    context_sd: float = 1.0
    entry: Any = None

    def __post_init__(self) -> None:
        th = np.asarray(self.theta, dtype=np.float64)
        if th.ndim != 2 or th.shape[0] < 2 or th.shape[1] < 1 or not np.all(np.isfinite(th)):
            raise ValueError(
                f"{self.name}.theta: must be a finite (K, D) table, K >= 2 arms by D >= 1 "
                f"features (got shape {th.shape!r})"
            )
        if not (np.isfinite(self.context_sd) and self.context_sd > 0):
            raise ValueError(f"{self.name}.context_sd: must be > 0 (got {self.context_sd!r})")
        object.__setattr__(self, "theta", th)
        object.__setattr__(self, "dim", th.shape[1])
        object.__setattr__(self, "entry", _entry(self.name, self.entry, th.shape[0]))

    @property
    def n_arms(self) -> int:
        return int(np.shape(self.theta)[0])

    def context(self, t: int, rng: np.random.Generator, batch: int) -> FloatArray:
        return self.context_sd * rng.standard_normal((batch, self.dim))

    def _score(self, context: FloatArray | None) -> FloatArray:
        if context is None or context.ndim != 2 or context.shape[1] != self.dim:
            raise ValueError(
                f"{self.name}: needs a (B, {self.dim}) context "
                f"(got {None if context is None else context.shape!r})"
            )
        return np.asarray(context @ np.asarray(self.theta).T)


@dataclass(frozen=True, kw_only=True)
class Linear(_Contextual):
    """Linear rewards in D features: ``x ~ N(0, context_sd^2 I)``, arm ``k`` pays
    ``x . theta[k] + N(0, noise_sd^2)``; the best arm depends on the user."""

    name: ClassVar[str] = "linear"
    reward_range: ClassVar[tuple[float | None, float | None]] = (None, None)
    noise_sd: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (np.isfinite(self.noise_sd) and self.noise_sd >= 0):
            raise ValueError(f"{self.name}.noise_sd: must be >= 0 (got {self.noise_sd!r})")

    def means(self, t: int, context: FloatArray | None = None) -> FloatArray:
        return self._score(context)

    def sample(
        self, t: int, arm: IntArray, rng: np.random.Generator, context: FloatArray | None = None
    ) -> FloatArray:
        mean = _pick(self.means(t, context), arm)
        return mean + self.noise_sd * rng.standard_normal(arm.shape[0])


@dataclass(frozen=True, kw_only=True)
class Logistic(_Contextual):
    """Conversions that depend on D features: arm ``k`` converts with probability
    ``sigmoid(x . theta[k])``."""

    name: ClassVar[str] = "logistic"

    def means(self, t: int, context: FloatArray | None = None) -> FloatArray:
        return np.asarray(1.0 / (1.0 + np.exp(-self._score(context))))

    def sample(
        self, t: int, arm: IntArray, rng: np.random.Generator, context: FloatArray | None = None
    ) -> FloatArray:
        p = _pick(self.means(t, context), arm)
        return (rng.random(arm.shape[0]) < p).astype(np.float64)


@dataclass(frozen=True, kw_only=True)
class Segments(_Base):
    """Conversions that depend on the user's segment (device, country, plan...): each
    user is in segment ``s`` with probability ``weights[s]``, and arm ``k`` converts with
    probability ``p[s][k]``, so the best arm may differ by segment.

    The context of a user in segment ``s`` is ``S`` numbers: an intercept 1, then one
    indicator per segment after the first (reference coding; segment 0 is the baseline),
    ``x = (1, [s == 1], ..., [s == S - 1])``; ``dim = S``. A linear model of ``x`` fits any
    per-segment table exactly.

    Parameters
    ----------
    p : (S, K) table of probabilities in [0, 1], S >= 2 segments by K >= 2 arms
    weights : (S,) probabilities of the segments, summing to 1 (default: uniform)
    segments : S names for reports (default ``segment-0``, ...)
    entry : (K,) step at which each arm enters (default: all at 0)

    Examples
    --------
    >>> env = Segments(p=[[0.1, 0.2], [0.1, 0.05], [0.1, 0.1]], weights=[0.5, 0.3, 0.2])
    >>> x = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    >>> env.segment(x)
    array([0, 1, 2])
    >>> env.means(0, x)
    array([[0.1 , 0.2 ],
           [0.1 , 0.05],
           [0.1 , 0.1 ]])
    >>> env.population_means()  # the best arm for everyone at once: 0.135 against 0.1
    array([0.1  , 0.135])
    >>> env.oracle_mean()  # the best arm for each segment: 0.5 * 0.2 + 0.3 * 0.1 + 0.2 * 0.1
    0.15
    """

    name: ClassVar[str] = "segments"
    p: npt.ArrayLike
    weights: Sequence[float] | None = None
    segments: Sequence[str] | None = None
    entry: Any = None

    def __post_init__(self) -> None:
        where = self.name
        try:
            table = np.asarray(self.p, dtype=np.float64)
        except (TypeError, ValueError):
            table = np.empty(0)
        if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 2:
            raise ValueError(
                f"{where}.p: must be a table with one row of K >= 2 arm probabilities per "
                f"segment, S >= 2 rows (got {self.p!r})"
            )
        if not np.all(np.isfinite(table)) or table.min() < 0.0 or table.max() > 1.0:
            raise ValueError(f"{where}.p: every probability must be in [0, 1] (got {self.p!r})")
        n_seg = table.shape[0]
        if self.weights is None:
            w = np.full(n_seg, 1.0 / n_seg)
        else:
            w = np.asarray(self.weights, dtype=np.float64)
            ok = w.shape == (n_seg,) and bool(np.all(np.isfinite(w)) and np.all(w >= 0.0))
            if not ok or abs(float(w.sum()) - 1.0) > 1e-9:
                raise ValueError(
                    f"{where}.weights: must be {n_seg} probabilities >= 0 summing to 1, one "
                    f"per row of p (got {self.weights!r})"
                )
        names = self.segments
        if names is None:
            names = [f"segment-{s}" for s in range(n_seg)]
        if (
            isinstance(names, str)
            or len(names) != n_seg
            or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != n_seg
        ):
            raise ValueError(
                f"{where}.segments: must be {n_seg} distinct names, one per row of p "
                f"(got {self.segments!r})"
            )
        object.__setattr__(self, "p", table)
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "segments", tuple(names))
        object.__setattr__(self, "dim", n_seg)
        object.__setattr__(self, "entry", _entry(where, self.entry, table.shape[1]))

    @property
    def n_arms(self) -> int:
        return int(np.shape(self.p)[1])

    def context(self, t: int, rng: np.random.Generator, batch: int) -> FloatArray:
        """(B, S): each row's segment drawn from ``weights``, encoded as in the class doc."""
        cdf = np.cumsum(np.asarray(self.weights))
        seg = np.minimum(
            np.searchsorted(cdf, rng.random(batch) * cdf[-1], side="right"), self.dim - 1
        )
        x = np.zeros((batch, self.dim))
        x[:, 0] = 1.0
        x[np.arange(batch), seg] = 1.0  # segment 0 sets the intercept again
        return x

    def segment(self, context: FloatArray | None) -> IntArray:
        """(B,) the segment of each row of a (B, S) context made by :meth:`context`."""
        if context is None or context.ndim != 2 or context.shape[1] != self.dim:
            raise ValueError(
                f"{self.name}: needs a (B, {self.dim}) context "
                f"(got {None if context is None else context.shape!r})"
            )
        return (
            np.asarray(context[:, 1:] @ np.arange(1, self.dim), dtype=np.float64)
            .round()
            .astype(np.int64)
        )

    def means(self, t: int, context: FloatArray | None = None) -> FloatArray:
        return np.asarray(np.asarray(self.p)[self.segment(context)])

    def population_means(self) -> FloatArray:
        """(K,) each arm's conversion over all users, ``weights @ p``: what a context-free
        policy can learn."""
        return np.asarray(np.asarray(self.weights) @ np.asarray(self.p))

    def oracle_mean(self) -> float:
        """The expected reward per user of the best arm for each segment (all arms in)."""
        return float(np.asarray(self.weights) @ np.asarray(self.p).max(axis=1))

    def sample(
        self, t: int, arm: IntArray, rng: np.random.Generator, context: FloatArray | None = None
    ) -> FloatArray:
        p = _pick(self.means(t, context), arm)
        return (rng.random(arm.shape[0]) < p).astype(np.float64)
