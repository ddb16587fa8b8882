"""Shared numba kernels.

``prob_best`` computes, for independent Beta or Normal posteriors, the probability that
each arm has the largest mean:

    P_k = integral f_k(x) prod_{j != k} F_j(x) dx.

This is Thompson sampling's allocation. It is computed by composite Gauss-Legendre
quadrature (8 points a panel) on panels no wider than ``_C_IN`` standard deviations of any
arm whose mean is near, growing to ``_C_TAIL`` times the distance to the mean in the
tails, so a narrow posterior beside a wide one is still resolved. Each arm's CDF is carried
along the grid by integrating its own density with the same rule (spectral integration
inside a panel). Posterior mass beyond 12 standard deviations of a Beta arm's mean (8 for
a Normal arm) is dropped, and the result is normalised to sum to one.
``tests/policies/test_kernels.py`` checks the error against adaptive quadrature with
SciPy's exact Beta and Normal CDFs and against closed forms: at most ``PROB_BEST_ATOL``
(absolute, per arm) over randomised posteriors from no data to millions of observations.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

__all__ = [
    "BETA",
    "NORMAL",
    "PROB_BEST_ATOL",
    "argmax_ties",
    "arm_stats_add",
    "beta_prob_best",
    "beta_sample_argmax",
    "prob_best",
    "ucb_index",
]

BETA = 0
NORMAL = 1

#: Documented and tested absolute error bound of :func:`prob_best`, per arm.
PROB_BEST_ATOL = 1e-6

_G = 8  # Gauss-Legendre points per panel
_T, _Wt = np.polynomial.legendre.leggauss(_G)


def _integration_matrix(t: FloatArray) -> FloatArray:
    """W[g, m] = integral from -1 to t[g] of the Lagrange basis polynomial of node m."""
    g = t.shape[0]
    vander = np.vander(t, g, increasing=True)  # V[i, p] = t_i^p
    # Lagrange basis coefficients: columns of inv(V).
    coef = np.linalg.inv(vander)  # coef[p, m]
    powers = np.arange(g)
    # integral_{-1}^{x} t^p dt = (x^{p+1} - (-1)^{p+1}) / (p+1)
    prim = (t[:, None] ** (powers + 1) - (-1.0) ** (powers + 1)) / (powers + 1)
    return np.asarray(prim @ coef)


_NODES = np.ascontiguousarray(_T)
_WEIGHTS = np.ascontiguousarray(_Wt)
_WMAT = np.ascontiguousarray(_integration_matrix(_T))
# Tails dropped, in units of each arm's own standard deviation about its mean.
_Z_LO = 8.0  # normal posteriors: the mass beyond 8 sd is below 1e-15
_Z_BETA = 12.0  # beta posteriors are skewed when alpha or beta is small: wider
_C_IN = 3.0  # panel width near a mean, in that arm's standard deviations
_C_TAIL = 0.75  # panel width in the tails, as a fraction of the distance to the mean


@numba.njit(cache=True)
def _prob_best_row(fam, p1, p2, out, nodes, weights, wmat, c_in, c_tail):  # type: ignore[no-untyped-def]
    k_arms = p1.shape[0]
    if k_arms == 1:
        out[0] = 1.0
        return
    g = nodes.shape[0]
    mean = np.empty(k_arms)
    sd = np.empty(k_arms)
    lo = np.empty(k_arms)
    hi = np.empty(k_arms)
    lnorm = np.empty(k_arms)
    c1 = np.empty(k_arms)  # log-density = c1 * u(x) + c2 * v(x) + lnorm
    c2 = np.empty(k_arms)
    for k in range(k_arms):
        if fam == BETA:
            a = p1[k]
            b = p2[k]
            mean[k] = a / (a + b)
            sd[k] = math.sqrt(a * b / ((a + b) * (a + b) * (a + b + 1.0)))
            lnorm[k] = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
            lo[k] = max(0.0, mean[k] - _Z_BETA * sd[k])
            hi[k] = min(1.0, mean[k] + _Z_BETA * sd[k])
            c1[k] = a - 1.0
            c2[k] = b - 1.0
        else:
            mean[k] = p1[k]
            sd[k] = p2[k]
            lnorm[k] = (
                -math.log(sd[k]) - 0.5 * math.log(2.0 * math.pi) - 0.5 * (mean[k] / sd[k]) ** 2
            )
            lo[k] = mean[k] - _Z_LO * sd[k]
            hi[k] = mean[k] + _Z_LO * sd[k]
            # -(x - m)^2 / (2 s^2) = (m / s^2) x - x^2 / (2 s^2) - m^2 / (2 s^2)
            c1[k] = mean[k] / (sd[k] * sd[k])
            c2[k] = 1.0 / (sd[k] * sd[k])
    # Below the second-largest lower end some other arm has (almost) no mass yet, so no
    # arm can be best there: an arm whose upper end lies below it is dominated.
    first = -np.inf
    second = -np.inf
    for k in range(k_arms):
        if lo[k] > first:
            second = first
            first = lo[k]
        elif lo[k] > second:
            second = lo[k]
    alive = np.empty(k_arms, dtype=np.bool_)
    start = np.inf
    stop = -np.inf
    for k in range(k_arms):
        alive[k] = hi[k] > second
        if alive[k]:
            start = min(start, lo[k])
            stop = max(stop, hi[k])
    cdf = np.zeros(k_arms)
    for k in range(k_arms):
        out[k] = 0.0
        if not alive[k]:
            cdf[k] = 1.0
    dens = np.zeros((k_arms, g))
    fnode = np.empty((k_arms, g))
    uu = np.empty(g)
    vv = np.empty(g)
    pre = np.empty(k_arms + 1)
    suf = np.empty(k_arms + 1)
    x = start
    while x < stop:
        # Step: no wider than c_in sd near any live arm's mean, growing with the distance
        # from it (half the distance in the tails), and landing on each arm's lower end.
        h = stop - x
        for k in range(k_arms):
            if not alive[k] or hi[k] <= x:
                continue
            if x < lo[k] - 0.5 * sd[k]:
                h = min(h, lo[k] - x)
            else:
                h = min(h, max(c_in * sd[k], c_tail * abs(x - mean[k])))
        b_pt = min(x + h, stop)
        half = 0.5 * (b_pt - x)
        mid = 0.5 * (b_pt + x)
        for m in range(g):
            xm = mid + half * nodes[m]
            if fam == BETA:
                xc = min(max(xm, 1e-300), 1.0 - 1e-16)
                uu[m] = math.log(xc)
                vv[m] = math.log1p(-xc)
            else:
                uu[m] = xm
                vv[m] = -0.5 * xm * xm
        for k in range(k_arms):
            if not alive[k] or lo[k] >= b_pt or hi[k] <= x:
                # No mass of arm k in this panel: its CDF is flat here.
                for m in range(g):
                    dens[k, m] = 0.0
                    fnode[k, m] = cdf[k]
                continue
            total = 0.0
            for m in range(g):
                dens[k, m] = math.exp(c1[k] * uu[m] + c2[k] * vv[m] + lnorm[k])
                total += weights[m] * dens[k, m]
            for m in range(g):
                s = 0.0
                for q in range(g):
                    s += wmat[m, q] * dens[k, q]
                fnode[k, m] = min(cdf[k] + half * s, 1.0)
            cdf[k] = min(cdf[k] + half * total, 1.0)
        for m in range(g):
            pre[0] = 1.0
            for k in range(k_arms):
                pre[k + 1] = pre[k] * fnode[k, m]
            suf[k_arms] = 1.0
            for k in range(k_arms - 1, -1, -1):
                suf[k] = suf[k + 1] * fnode[k, m]
            wm = half * weights[m]
            for k in range(k_arms):
                if dens[k, m] != 0.0:
                    out[k] += wm * dens[k, m] * pre[k] * suf[k + 1]
        x = b_pt
    total = 0.0
    for k in range(k_arms):
        total += out[k]
    if total <= 0.0 or not math.isfinite(total):
        # Unreachable for valid posteriors; fall back to the arm with the largest mean.
        best = 0
        for k in range(k_arms):
            out[k] = 0.0
            if mean[k] > mean[best]:
                best = k
        out[best] = 1.0
        return
    for k in range(k_arms):
        out[k] /= total


@numba.njit(cache=True)
def _prob_best_batch(fam, p1, p2, out, nodes, weights, wmat, c_in, c_tail):  # type: ignore[no-untyped-def]
    for r in range(p1.shape[0]):
        _prob_best_row(fam, p1[r], p2[r], out[r], nodes, weights, wmat, c_in, c_tail)


def prob_best(family: int, p1: FloatArray, p2: FloatArray) -> FloatArray:
    """P(arm k has the largest mean) for independent posteriors, per row.

    Parameters
    ----------
    family : int
        :data:`BETA` (``p1 = alpha >= 1``, ``p2 = beta >= 1``) or :data:`NORMAL`
        (``p1 = mean``, ``p2 = sd > 0``).
    p1, p2 : (B, K) float64

    Returns
    -------
    (B, K) float64, rows summing to 1, within :data:`PROB_BEST_ATOL` of the exact value.
    """
    p1 = np.ascontiguousarray(p1, dtype=np.float64)
    p2 = np.ascontiguousarray(p2, dtype=np.float64)
    out = np.empty_like(p1)
    _prob_best_batch(family, p1, p2, out, _NODES, _WEIGHTS, _WMAT, _C_IN, _C_TAIL)
    return out


@numba.njit(cache=True)
def _beta_prob_best_batch(n, s, a0, b0, out, nodes, weights, wmat, c_in, c_tail):  # type: ignore[no-untyped-def]
    k_arms = n.shape[1]
    a = np.empty(k_arms)
    b = np.empty(k_arms)
    for r in range(n.shape[0]):
        for k in range(k_arms):
            a[k] = a0 + s[r, k]
            b[k] = b0 + n[r, k] - s[r, k]
        _prob_best_row(BETA, a, b, out[r], nodes, weights, wmat, c_in, c_tail)


def beta_prob_best(n: FloatArray, s: FloatArray, a0: float, b0: float) -> FloatArray:
    """:func:`prob_best` for ``Beta(a0 + s, b0 + n - s)`` posteriors, from the counts."""
    out = np.empty(n.shape)
    _beta_prob_best_batch(n, s, a0, b0, out, _NODES, _WEIGHTS, _WMAT, _C_IN, _C_TAIL)
    return out


@numba.njit(cache=True)
def _beta_sample_argmax(rng, n, s, a0, b0, out):  # type: ignore[no-untyped-def]
    for r in range(n.shape[0]):
        best = -1.0
        arg = 0
        for k in range(n.shape[1]):
            # Beta(a, b) = X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b) independent.
            x = rng.standard_gamma(a0 + s[r, k])
            y = rng.standard_gamma(b0 + n[r, k] - s[r, k])
            v = x / (x + y)
            if v > best:
                best = v
                arg = k
        out[r] = arg


def beta_sample_argmax(
    rng: np.random.Generator, n: FloatArray, s: FloatArray, a0: float, b0: float
) -> IntArray:
    """One draw from each ``Beta(a0 + s, b0 + n - s)`` posterior and the argmax, per row.

    Uses ``rng`` itself (numba compiles NumPy's Generator methods), so results follow the
    caller's seed. Exact ties have probability zero.
    """
    out = np.empty(n.shape[0], dtype=np.int64)
    _beta_sample_argmax(rng, n, s, a0, b0, out)
    return out


@numba.njit(cache=True)
def _arm_stats_add(n, s, sq, arm, reward):  # type: ignore[no-untyped-def]
    n2 = n.copy()
    s2 = s.copy()
    sq2 = sq.copy()
    for r in range(arm.shape[0]):
        k = arm[r]
        n2[r, k] += 1.0
        s2[r, k] += reward[r]
        sq2[r, k] += reward[r] * reward[r]
    return n2, s2, sq2


def arm_stats_add(
    n: FloatArray, s: FloatArray, sq: FloatArray, arm: IntArray, reward: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """New count, sum and sum-of-squares arrays with one observation per row added."""
    return _arm_stats_add(n, s, sq, arm, reward)  # type: ignore[no-any-return]


@numba.njit(cache=True)
def _argmax_ties(index, u, out):  # type: ignore[no-untyped-def]
    for r in range(index.shape[0]):
        top = -np.inf
        count = 0
        for k in range(index.shape[1]):
            v = index[r, k]
            if v > top:
                top = v
                count = 1
            elif v == top:
                count += 1
        pick = min(int(u[r] * count), count - 1)
        for k in range(index.shape[1]):
            if index[r, k] == top:
                if pick == 0:
                    out[r] = k
                    break
                pick -= 1


def argmax_ties(index: FloatArray, u: FloatArray) -> IntArray:
    """Argmax per row, ties broken by the uniform ``u`` (the law of a one-hot allocation)."""
    out = np.empty(index.shape[0], dtype=np.int64)
    _argmax_ties(index, u, out)
    return out


UCB1_INDEX = 0
MOSS_INDEX = 1


@numba.njit(cache=True)
def _ucb_index(kind, n, s, param, out):  # type: ignore[no-untyped-def]
    k_arms = n.shape[1]
    for r in range(n.shape[0]):
        t = 0.0
        for k in range(k_arms):
            t += n[r, k]
        for k in range(k_arms):
            m = n[r, k]
            if m <= 0.0:
                out[r, k] = np.inf
            elif kind == UCB1_INDEX:
                # param = exploration: mean + sqrt(c ln t / n)
                out[r, k] = s[r, k] / m + math.sqrt(param * math.log(max(t, 1.0)) / m)
            else:
                # param = horizon (0: anytime, use t): mean + sqrt(ln+(H / (K n)) / n)
                h = param if param > 0.0 else max(t, 1.0)
                out[r, k] = s[r, k] / m + math.sqrt(max(math.log(h / (k_arms * m)), 0.0) / m)


def ucb_index(kind: int, n: FloatArray, s: FloatArray, param: float) -> FloatArray:
    """UCB1 (``param`` = exploration) or MOSS (``param`` = horizon, 0 for anytime) indices.

    Unpulled arms get ``inf``.
    """
    out = np.empty(n.shape)
    _ucb_index(kind, n, s, float(param), out)
    return out
