"""Anytime-valid bounds for the off-policy estimators of :mod:`simulators.ope`.

Every estimator there is a mean of per-row terms ``x_i`` (IPS ``w r``, DR's pseudo-outcome,
replay's matched rewards; SNIPS is a ratio of two such means) whose conditional mean given
the earlier rows is the quantity estimated. If the terms also lie in a range ``[low, high]``
fixed before the log is read, the empirical-Bernstein supermartingale with predictable
plug-in bets (Waudby-Smith and Ramdas 2023, Thm 2; Howard et al. 2021, Thm 4) gives a
confidence sequence: bounds that hold at every row count ``n`` simultaneously with
probability ``>= 1 - alpha``, hence also at the final ``n``. No normal approximation, no
minimum sample size, and a positive width even when no reward has been seen.

The step is the one of :class:`policies.sequential.EmpiricalBernsteinCS`: terms rescaled
to [0, 1] are fed one by one to :func:`policies._cs_kernels.eb_one`, whose bets are tuned to
be tightest near ``n_tune`` rows (any ``n_tune`` fixed in advance keeps the validity).

The ranges are constants, not per row: a bet may only use what is known before the row
arrives, and a row's context (its group, hence the candidate's and the model's values on
it) is not; a bet sized on it would no longer face a term whose mean is the policy value.
:func:`ips_range` and :func:`dr_range` take the extremes over the candidate's and the
model's values on every row, the reward range and a weight bound, never the rewards or the
arms played: bounds over every context that can occur, as long as every group (or kind of
context) appears in the log.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

from policies._cs_kernels import eb_one
from policies.base import FloatArray, ratio

__all__ = [
    "dr_path",
    "dr_range",
    "eb_path",
    "ips_path",
    "ips_range",
    "replay_path",
    "snips_path",
    "weight_bound",
]

#: An estimator's running ``(value, lower, upper)``, each (n,): entry i uses rows 0..i.
Path = tuple[FloatArray, FloatArray, FloatArray]


@numba.njit(cache=True)
def _eb_path(x, log_a, n_tune, lower, upper):  # type: ignore[no-untyped-def]
    # x (n,) in [0, 1]; writes the sequence after each term, log(1 / a) = log_a per side.
    st = (
        np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)),
        np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)),
    )  # fmt: skip
    for i in range(x.shape[0]):
        eb_one(st, 0, 0, x[i], log_a, n_tune)
        sl, slx, spv = st[3][0, 0], st[4][0, 0], st[5][0, 0]
        lower[i] = min(max((slx - spv - log_a) / sl, 0.0), 1.0)
        upper[i] = min(max((slx + spv + log_a) / sl, 0.0), 1.0)


def eb_path(
    terms: FloatArray, low: float, high: float, alpha: float, n_tune: float
) -> tuple[FloatArray, FloatArray]:
    """The two-sided ``1 - alpha`` empirical-Bernstein sequence for the mean of ``terms``.

    Parameters
    ----------
    terms : (n,) float, each in ``[low, high]`` (checked)
    low, high : the terms' range, fixed before the terms were seen
    alpha : error of the two-sided sequence (``alpha / 2`` per side)
    n_tune : rows at which the bets are tightest (> 0)

    Returns
    -------
    lower, upper : (n,) float, the bounds after 1, 2, ..., n terms, within ``[low, high]``

    >>> lo, up = eb_path(np.zeros(3), 0.0, 1.0, 0.05, 3.0)
    >>> lo.tolist(), bool(np.all(up > 0.0))
    ([0.0, 0.0, 0.0], True)
    """
    x = np.asarray(terms, dtype=np.float64)
    if high <= low:  # every term is the same constant
        return np.full(x.shape, low), np.full(x.shape, low)
    span = high - low
    # Within the range by construction; the tolerance only absorbs rounding.
    slack = 1e-9 * span
    if x.size and (x.min() < low - slack or x.max() > high + slack):
        raise ValueError(
            f"eb_path: terms outside their range [{low!r}, {high!r}] (got "
            f"[{float(x.min())!r}, {float(x.max())!r}])"
        )
    x01 = np.clip((x - low) / span, 0.0, 1.0)
    lower = np.empty(x.shape)
    upper = np.empty(x.shape)
    _eb_path(x01, math.log(2.0 / alpha), float(n_tune), lower, upper)
    return low + lower * span, low + upper * span


def weight_bound(target: FloatArray, propensity: FloatArray, max_weight: float | None) -> float:
    """The largest importance weight ``target[a] / propensity[a]`` a row could have.

    ``max_weight`` if given; else ``max(target) / min(propensity)``, which assumes that the
    logging policy never gave an arm less than the smallest propensity logged (exact for a
    uniform logging policy; pass the design's bound when it is known).
    """
    if max_weight is not None:
        if not (math.isfinite(max_weight) and max_weight > 0.0):
            raise ValueError(f"max_weight: must be finite and > 0 (got {max_weight!r})")
        return float(max_weight)
    return float(np.max(target) / np.min(propensity))


def ips_range(max_weight: float, low: float, high: float) -> tuple[float, float]:
    """Range of ``w r`` for ``w`` in ``[0, max_weight]`` and ``r`` in ``[low, high]``."""
    return min(0.0, max_weight * low), max(0.0, max_weight * high)


def dr_range(
    target: FloatArray, model: FloatArray, max_weight: float, low: float, high: float
) -> tuple[float, float]:
    """Range of the pseudo-outcomes ``sum_a target[a] q(a) + w (r - q(arm))``, (n, K) inputs.

    A row's term is its direct part ``D`` plus ``w (r - q(arm))`` with ``w`` in
    ``[0, max_weight]`` where the candidate plays ``arm`` (else 0); the range is the extremes
    over the rows of ``D + max_weight * [min(0, low - q), max(0, high - q)]`` over the arms
    the candidate may play there.
    """
    direct = (target * model).sum(axis=1)
    plays = target > 0.0
    down = np.where(plays, np.minimum(low - model, 0.0), 0.0).min(axis=1)
    up = np.where(plays, np.maximum(high - model, 0.0), 0.0).max(axis=1)
    return float((direct + max_weight * down).min()), float((direct + max_weight * up).max())


def _cummean(x: FloatArray) -> FloatArray:
    return np.asarray(np.cumsum(x) / np.arange(1, x.shape[0] + 1))


def _clipped(value: FloatArray, lower: FloatArray, upper: FloatArray, lo: float, hi: float) -> Path:
    # A policy value lies in the reward range: intersecting with it keeps the coverage.
    return value, np.clip(lower, lo, hi), np.clip(upper, lo, hi)


def ips_path(
    w: FloatArray, reward: FloatArray, bound: float, alpha: float, lo: float, hi: float
) -> Path:
    """IPS after each row: weights ``w`` (n,) in ``[0, bound]``, rewards in ``[lo, hi]``."""
    terms = w * reward
    lower, upper = eb_path(terms, *ips_range(bound, lo, hi), alpha, terms.shape[0])
    return _clipped(_cummean(terms), lower, upper, lo, hi)


def snips_path(
    w: FloatArray, reward: FloatArray, bound: float, alpha: float, lo: float, hi: float
) -> Path:
    """SNIPS after each row, from sequences for ``mean(w (r - lo))`` and ``mean(w)``.

    The ratio of the two means is ``value - lo`` (``E[w] = 1`` when the log covers the
    candidate's actions, and the ratio is what SNIPS estimates in any case). Each mean gets
    a sequence at ``alpha / 2``; on the event that both hold, the ratio lies between
    ``lower_num / upper_den`` and ``upper_num / lower_den`` (a union bound).
    """
    num, n = w * (reward - lo), w.shape[0]
    num_lo, num_up = eb_path(num, 0.0, bound * (hi - lo), alpha / 2.0, n)
    den_lo, den_up = eb_path(w, 0.0, bound, alpha / 2.0, n)
    value = lo + ratio(np.cumsum(num), np.cumsum(w), np.nan)
    lower, upper = lo + ratio(num_lo, den_up, 0.0), lo + ratio(num_up, den_lo, np.inf)
    return _clipped(value, lower, upper, lo, hi)


def dr_path(
    target: FloatArray,
    model: FloatArray,
    terms: FloatArray,
    bound: float,
    alpha: float,
    lo: float,
    hi: float,
) -> Path:
    """DR after each row from its pseudo-outcomes ``terms`` (n,); range :func:`dr_range`."""
    lower, upper = eb_path(terms, *dr_range(target, model, bound, lo, hi), alpha, terms.shape[0])
    return _clipped(_cummean(terms), lower, upper, lo, hi)


def replay_path(
    matched: npt.NDArray[np.bool_], reward: FloatArray, alpha: float, lo: float, hi: float
) -> Path:
    """Replay after each row: the sequence of the rewards of the ``matched`` (n,) rows,
    tuned to their number; before the first match, value NaN and bounds ``[lo, hi]``."""
    x = reward[matched]
    lower, upper = eb_path(x, lo, hi, alpha, max(x.shape[0], 1))
    k = np.cumsum(matched) - 1  # row i shows the sequence after the matches among 0..i
    seen = k >= 0
    n = matched.shape[0]
    value, low, up = np.full(n, np.nan), np.full(n, lo), np.full(n, hi)
    value[seen], low[seen], up[seen] = _cummean(x)[k[seen]], lower[k[seen]], upper[k[seen]]
    return _clipped(value, low, up, lo, hi)
