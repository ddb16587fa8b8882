"""Change detection on a reward stream: the Page-Hinkley test for a drop in the mean.

After a promotion the champion serves everyone, and nothing compares it any more. If its
reward drops (a dependency slows down, the audience changes), the runtime must notice
and reopen exploration. :class:`PageHinkley` watches the champion's rewards in the order
they arrive; its state is four numbers per replicate, so the same code runs on one
stream in the engine and on thousands of replicates in the simulator.

The state is not additive (the order of observations matters): it says so, and is
updated in order with :meth:`PageHinkley.update`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from .base import FloatArray, Stats, check_params

BoolArray = npt.NDArray[np.bool_]

__all__ = ["DriftStats", "PageHinkley"]


@dataclass(frozen=True, slots=True)
class DriftStats(Stats):
    """Page-Hinkley statistics, (B,) each. Not additive.

    Attributes
    ----------
    n : observations seen
    mean : their running mean
    cusum : ``m_t = sum_{s<=t} (mean_s - x_s - tolerance)``
    peak : the smallest ``m_s`` so far (``m_t - peak`` is the test statistic)
    """

    additive: ClassVar[bool] = False
    n: FloatArray
    mean: FloatArray
    cusum: FloatArray
    peak: FloatArray


@dataclass(frozen=True, slots=True, kw_only=True)
class PageHinkley:
    """The Page-Hinkley test for a drop in the mean of a stream (Page 1954; Hinkley 1971).

    With ``mean_t`` the running mean after ``t`` observations, the statistic
    ``m_t = sum_{s<=t} (mean_s - x_s - tolerance)`` drifts down while the stream is
    stable and climbs once the values fall below their past mean by more than
    ``tolerance``; a drop is signalled when ``m_t - min_{s<=t} m_s > threshold`` (after
    at least ``min_n`` observations).

    Parameters
    ----------
    tolerance : float >= 0
        Drops smaller than this (per observation) are ignored (the test's ``delta``).
    threshold : float > 0
        The alarm level (``lambda``), in reward units: larger means fewer false alarms
        and slower detection.
    min_n : int >= 1
        No alarm before this many observations.

    Notes
    -----
    For a drop of ``d > tolerance`` after a long stable stretch, the statistic climbs by
    about ``d - tolerance`` per observation, so detection takes about
    ``threshold / (d - tolerance)`` observations; the false-alarm rate on a stable
    stream falls exponentially in ``threshold * tolerance / variance``. Both are measured
    in ``tests/policies/test_drift.py``.

    >>> ph = PageHinkley(tolerance=0.05, threshold=5.0)
    >>> s = ph.init(2)
    >>> s = ph.update(s, np.array([1.0, 1.0]))
    >>> ph.detected(s).tolist()
    [False, False]
    """

    name: ClassVar[str] = "page-hinkley"
    tolerance: float = 0.05
    threshold: float = 25.0
    min_n: int = 30

    def __post_init__(self) -> None:
        check_params(
            self.name,
            tolerance=(
                bool(np.isfinite(self.tolerance) and self.tolerance >= 0),
                self.tolerance,
                "finite and >= 0",
            ),
            threshold=(
                bool(np.isfinite(self.threshold) and self.threshold > 0),
                self.threshold,
                "finite and > 0",
            ),
            min_n=(
                isinstance(self.min_n, int)
                and not isinstance(self.min_n, bool)
                and self.min_n >= 1,
                self.min_n,
                "an integer >= 1",
            ),
        )

    def init(self, batch: int = 1) -> DriftStats:
        z = np.zeros(batch)
        return DriftStats(n=z, mean=z.copy(), cusum=z.copy(), peak=z.copy())

    def update(
        self, stats: DriftStats, x: npt.ArrayLike, mask: BoolArray | None = None
    ) -> DriftStats:
        """The state after one more observation per replicate: ``x`` (B,) float64; rows
        where ``mask`` (B,) is false are left unchanged."""
        v = np.asarray(x, dtype=np.float64)
        if v.shape != stats.n.shape:
            raise ValueError(f"{self.name}: x must have shape {stats.n.shape} (got {v.shape})")
        if not np.isfinite(v).all():
            raise ValueError(f"{self.name}: x must be finite")
        on = np.ones(v.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        n = stats.n + on
        mean = np.where(on, stats.mean + (v - stats.mean) / np.maximum(n, 1.0), stats.mean)
        cusum = np.where(on, stats.cusum + mean - v - self.tolerance, stats.cusum)
        peak = np.where(on, np.minimum(stats.peak, cusum), stats.peak)
        return DriftStats(n=n, mean=mean, cusum=cusum, peak=peak)

    def statistic(self, stats: DriftStats) -> FloatArray:
        """(B,) ``m_t - min m_s``: how far the stream has climbed since its low."""
        return np.asarray(stats.cusum - stats.peak)

    def detected(self, stats: DriftStats) -> BoolArray:
        """(B,) whether a drop has been signalled."""
        return np.asarray((stats.n >= self.min_n) & (self.statistic(stats) > self.threshold))
