"""Index kernels against plainly computed references."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy.optimize import brentq

from policies._kernels import MOSS_INDEX, UCB1_INDEX, argmax_ties, ucb_index
from policies.ucb import kl_ucb_index


def kl(p: float, q: float) -> float:
    e = 1e-15
    p, q = min(max(p, e), 1 - e), min(max(q, e), 1 - e)
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_kl_ucb_index_solves_the_kl_equation() -> None:
    rng = np.random.default_rng(0)
    mean = rng.uniform(0, 1, (100, 8))
    mean[:, 0], mean[:, 1] = 0.0, 1.0
    n = rng.integers(1, 10_000, (100, 8)).astype(float)
    level = np.log(rng.integers(2, 10**6, 100)).astype(float)
    got = kl_ucb_index(mean, n, level)
    for r in range(100):
        for k in range(8):
            p, target = mean[r, k], level[r] / n[r, k]
            if kl(p, 1 - 1e-15) <= target:
                want = 1 - 1e-15
            else:
                want = brentq(lambda q, p=p, t=target: kl(p, q) - t, p, 1 - 1e-15, xtol=1e-15)
            assert abs(got[r, k] - want) <= 1e-12


def test_ucb1_and_moss_indices() -> None:
    n = np.array([[0.0, 4.0, 10.0]])
    s = np.array([[0.0, 1.0, 7.0]])
    t = 14.0
    # The kernels may reassociate divisions (numba fastmath without nnan/ninf): equal to
    # the formula within a few ulps, and infinite exactly where it should be.
    close = functools.partial(pytest.approx, rel=1e-14, abs=0)
    ucb = ucb_index(UCB1_INDEX, n, s, 2.0)[0]
    assert ucb[0] == math.inf
    assert ucb[1] == close(math.sqrt(2 * math.log(t) / 4) + 0.25)
    moss = ucb_index(MOSS_INDEX, n, s, 1000)[0]
    assert moss[2] == close(0.7 + math.sqrt(math.log(1000 / 30) / 10))
    anytime = ucb_index(MOSS_INDEX, n, s, 0)[0]
    assert anytime[1] == close(0.25 + math.sqrt(math.log(14 / 12) / 4))
    assert anytime[2] == close(0.7)  # ln+(14 / 30) = 0


def test_argmax_ties_is_uniform_over_ties() -> None:
    index = np.array([[1.0, 3.0, 3.0, 2.0, 3.0]])
    u = np.linspace(0, 1, 3000, endpoint=False)
    picks = np.array([argmax_ties(index, np.array([x]))[0] for x in u])
    assert set(np.unique(picks)) == {1, 2, 4}
    assert (np.bincount(picks, minlength=5)[[1, 2, 4]] == 1000).all()
