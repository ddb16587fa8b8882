"""Helpers shared by the reference implementations: tie-breaking and categorical draws."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

__all__ = ["FloatArray", "IntArray", "argmax_random_ties", "draw_categorical", "onehot"]


def argmax_random_ties(values: FloatArray, rng: np.random.Generator) -> IntArray:
    """The position of each row's maximum; ties are broken uniformly at random.

    Every maximal entry gets an independent uniform key and the largest key wins, so each
    of the tied arms is chosen with the same probability. ``inf`` ties with ``inf``.
    """
    is_max = values == values.max(axis=1, keepdims=True)
    keys = np.where(is_max, rng.random(values.shape), -1.0)
    return np.argmax(keys, axis=1).astype(np.int64)


def draw_categorical(p: FloatArray, rng: np.random.Generator) -> IntArray:
    """One arm per row with ``P(arm = k) = p[:, k]`` (inverse CDF of one uniform)."""
    cdf = np.cumsum(p, axis=1)
    cdf = cdf / cdf[:, -1:]
    u = rng.random(p.shape[0])
    # The arm is the first k with u < cdf[k], i.e. the number of k with cdf[k] <= u.
    return (cdf <= u[:, None]).sum(axis=1).astype(np.int64)


def onehot(arm: IntArray, n_arms: int) -> FloatArray:
    """(R, K) indicator of the chosen arm in each row."""
    out = np.zeros((arm.shape[0], n_arms))
    out[np.arange(arm.shape[0]), arm] = 1.0
    return out
