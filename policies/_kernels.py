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
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

__all__ = [
    "BETA",
    "NORMAL",
    "PROB_BEST_ATOL",
    "ProbBestCache",
    "argmax_ties",
    "arm_stats_add",
    "beta_prob_best",
    "first_bad",
    "prob_best",
    "ucb_index",
    "ucb_sample",
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
def _arm_params(fam, p1, p2, mean, sd, lo, hi, lnorm, c1, c2, k, z_shrink):  # type: ignore[no-untyped-def]
    """Arm k's centre, scale, kept range and log-density coefficients:
    log f(x) = c1 u(x) + c2 v(x) + lnorm, with (u, v) = (log x, log(1 - x)) for Beta and
    (x, -x^2 / 2) for Normal. ``z_shrink`` narrows the kept range (for reuse checks)."""
    if fam == BETA:
        a = p1
        b = p2
        mean[k] = a / (a + b)
        sd[k] = math.sqrt(a * b / ((a + b) * (a + b) * (a + b + 1.0)))
        lnorm[k] = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
        lo[k] = max(0.0, mean[k] - (_Z_BETA - z_shrink) * sd[k])
        hi[k] = min(1.0, mean[k] + (_Z_BETA - z_shrink) * sd[k])
        c1[k] = a - 1.0
        c2[k] = b - 1.0
    else:
        mean[k] = p1
        sd[k] = p2
        lnorm[k] = -math.log(p2) - 0.5 * math.log(2.0 * math.pi) - 0.5 * (p1 / p2) ** 2
        lo[k] = p1 - (_Z_LO - z_shrink) * p2
        hi[k] = p1 + (_Z_LO - z_shrink) * p2
        # -(x - m)^2 / (2 s^2) = (m / s^2) x - x^2 / (2 s^2) - m^2 / (2 s^2)
        c1[k] = p1 / (p2 * p2)
        c2[k] = 1.0 / (p2 * p2)


@numba.njit(cache=True)
def _second_largest(x):  # type: ignore[no-untyped-def]
    first = -np.inf
    second = -np.inf
    for v in x:
        if v > first:
            second = first
            first = v
        elif v > second:
            second = v
    return second


@numba.njit(cache=True)
def _grid(mean, sd, lo, hi, alive, c_in, c_tail):  # type: ignore[no-untyped-def]
    """Panel edges over the live arms' range: no wider than c_in sd near any live arm's
    mean, growing to c_tail times the distance from it in the tails, and landing on each
    arm's lower end."""
    k_arms = mean.shape[0]
    start = np.inf
    stop = -np.inf
    for k in range(k_arms):
        if alive[k]:
            start = min(start, lo[k])
            stop = max(stop, hi[k])
    edges = np.empty(16 * k_arms + 2)
    n_edges = 1
    edges[0] = start
    x = start
    while x < stop:
        h = stop - x
        for k in range(k_arms):
            if not alive[k] or hi[k] <= x:
                continue
            if x < lo[k] - 0.5 * sd[k]:
                h = min(h, lo[k] - x)
            else:
                h = min(h, max(c_in * sd[k], c_tail * abs(x - mean[k])))
        x = min(x + h, stop)
        if n_edges == edges.shape[0]:
            bigger = np.empty(2 * edges.shape[0])
            bigger[:n_edges] = edges[:n_edges]
            edges = bigger
        edges[n_edges] = x
        n_edges += 1
    return edges[:n_edges].copy()


@numba.njit(cache=True)
def _grid_nodes(fam, edges, nodes):  # type: ignore[no-untyped-def]
    """(u, v) of every quadrature node, (P, G) each, shared by all arms."""
    n_panels = edges.shape[0] - 1
    g = nodes.shape[0]
    uu = np.empty((n_panels, g))
    vv = np.empty((n_panels, g))
    for p in range(n_panels):
        half = 0.5 * (edges[p + 1] - edges[p])
        mid = 0.5 * (edges[p + 1] + edges[p])
        for m in range(g):
            xm = mid + half * nodes[m]
            if fam == BETA:
                xc = min(max(xm, 1e-300), 1.0 - 1e-16)
                uu[p, m] = math.log(xc)
                vv[p, m] = math.log1p(-xc)
            else:
                uu[p, m] = xm
                vv[p, m] = -0.5 * xm * xm
    return uu, vv


@numba.njit(cache=True)
def _arm_on_grid(edges, uu, vv, c1, c2, lnorm, lo, hi, alive, weights, wmat, dens, fnode, k):  # type: ignore[no-untyped-def]
    """Density and CDF of arm k at every node, into ``[:, :, k]``; a dead arm is 0 and 1."""
    ck1, ck2, lnk, lok, hik, live = c1[k], c2[k], lnorm[k], lo[k], hi[k], alive[k]
    g = weights.shape[0]
    cdf = 0.0 if live else 1.0
    for p in range(edges.shape[0] - 1):
        if not live or lok >= edges[p + 1] or hik <= edges[p]:
            # No mass of the arm in this panel: its CDF is flat here.
            for m in range(g):
                dens[p, m, k] = 0.0
                fnode[p, m, k] = cdf
            continue
        half = 0.5 * (edges[p + 1] - edges[p])
        total = 0.0
        for m in range(g):
            dens[p, m, k] = math.exp(ck1 * uu[p, m] + ck2 * vv[p, m] + lnk)
            total += weights[m] * dens[p, m, k]
        for m in range(g):
            s = 0.0
            for q in range(g):
                s += wmat[m, q] * dens[p, q, k]
            fnode[p, m, k] = min(cdf + half * s, 1.0)
        cdf = min(cdf + half * total, 1.0)


@numba.njit(cache=True)
def _combine(edges, weights, dens, fnode, mean, out):  # type: ignore[no-untyped-def]
    """P_k = sum over nodes of w f_k prod_{j != k} F_j, normalised."""
    k_arms = dens.shape[2]
    g = weights.shape[0]
    pre = np.empty(k_arms + 1)
    suf = np.empty(k_arms + 1)
    for k in range(k_arms):
        out[k] = 0.0
    for p in range(edges.shape[0] - 1):
        half = 0.5 * (edges[p + 1] - edges[p])
        for m in range(g):
            pre[0] = 1.0
            for k in range(k_arms):
                pre[k + 1] = pre[k] * fnode[p, m, k]
            suf[k_arms] = 1.0
            for k in range(k_arms - 1, -1, -1):
                suf[k] = suf[k + 1] * fnode[p, m, k]
            wm = half * weights[m]
            for k in range(k_arms):
                if dens[p, m, k] != 0.0:
                    out[k] += wm * dens[p, m, k] * pre[k] * suf[k + 1]
    total = 0.0
    for k in range(k_arms):
        # the quadrature of an arm with (almost) no chance can round to about -1e-14:
        # a probability is never negative (consumers check it), so it is 0
        if out[k] < 0.0:
            out[k] = 0.0
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
def _build(fam, p1, p2, nodes, weights, wmat, c_in, c_tail):  # type: ignore[no-untyped-def]
    """Everything the quadrature needs for one row, as arrays a cache can keep."""
    k_arms = p1.shape[0]
    mean = np.empty(k_arms)
    sd = np.empty(k_arms)
    lo = np.empty(k_arms)
    hi = np.empty(k_arms)
    lnorm = np.empty(k_arms)
    c1 = np.empty(k_arms)
    c2 = np.empty(k_arms)
    for k in range(k_arms):
        _arm_params(fam, p1[k], p2[k], mean, sd, lo, hi, lnorm, c1, c2, k, 0.0)
    # Below the second-largest lower end some other arm has (almost) no mass yet, so no
    # arm can be best there: an arm whose upper end lies below it is dominated.
    second = _second_largest(lo)
    alive = hi > second
    edges = _grid(mean, sd, lo, hi, alive, c_in, c_tail)
    uu, vv = _grid_nodes(fam, edges, nodes)
    n_panels = edges.shape[0] - 1
    g = nodes.shape[0]
    dens = np.empty((n_panels, g, k_arms))  # arms last: the product over arms is contiguous
    fnode = np.empty((n_panels, g, k_arms))
    for k in range(k_arms):
        _arm_on_grid(edges, uu, vv, c1, c2, lnorm, lo, hi, alive, weights, wmat, dens, fnode, k)
    out = np.empty(k_arms)
    _combine(edges, weights, dens, fnode, mean, out)
    return out, mean, sd, lo, hi, lnorm, c1, c2, alive, edges, uu, vv, dens, fnode


@numba.njit(cache=True)
def _prob_best_row(fam, p1, p2, out, nodes, weights, wmat, c_in, c_tail):  # type: ignore[no-untyped-def]
    if p1.shape[0] == 1:
        out[0] = 1.0
        return
    res = _build(fam, p1, p2, nodes, weights, wmat, c_in, c_tail)
    out[:] = res[0]


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
def _arm_stats_add(n, s, arm, reward):  # type: ignore[no-untyped-def]
    n2 = n.copy()
    s2 = s.copy()
    for r in range(arm.shape[0]):
        n2[r, arm[r]] += 1.0
        s2[r, arm[r]] += reward[r]
    return n2, s2


def arm_stats_add(
    n: FloatArray, s: FloatArray, arm: IntArray, reward: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """New count and reward-sum arrays with one observation per row added."""
    return _arm_stats_add(n, s, arm, reward)  # type: ignore[no-any-return]


@numba.njit(cache=True)
def _first_bad(x, low, high):  # type: ignore[no-untyped-def]
    for i in range(x.shape[0]):
        v = x[i]
        if not (math.isfinite(v) and low <= v <= high):
            return i
    return -1


def first_bad(x: FloatArray, low: float, high: float) -> int:
    """Index of the first entry not finite or outside ``[low, high]``; -1 if none."""
    return int(_first_bad(x, low, high))


@numba.njit(cache=True, inline="always")
def _argmax_row(index, u):  # type: ignore[no-untyped-def]
    """Argmax of one row, ties broken by the uniform ``u``: the one-hot allocation's law."""
    top = -np.inf
    for k in range(index.shape[0]):
        top = max(top, index[k])
    count = 0
    for k in range(index.shape[0]):
        count += index[k] == top
    pick = min(int(u * count), count - 1)
    for k in range(index.shape[0]):
        if index[k] == top:
            if pick == 0:
                return k
            pick -= 1
    return index.shape[0] - 1  # unreachable: the maximum is attained


@numba.njit(cache=True)
def _argmax_ties(index, u, out):  # type: ignore[no-untyped-def]
    for r in range(index.shape[0]):
        out[r] = _argmax_row(index[r], u[r])


def argmax_ties(index: FloatArray, u: FloatArray) -> IntArray:
    """Argmax per row, ties broken by the uniform ``u`` (the law of a one-hot allocation)."""
    out = np.empty(index.shape[0], dtype=np.int64)
    _argmax_ties(index, u, out)
    return out


UCB1_INDEX = 0
MOSS_INDEX = 1


# Division and sqrt may be reassociated and approximated to the last bit, but inf and NaN
# keep their meaning (unpulled arms have an infinite index).
_FAST = {"arcp", "contract", "afn", "reassoc", "nsz"}


@numba.njit(cache=True, fastmath=_FAST)
def _ucb_index(kind, n, s, param, out):  # type: ignore[no-untyped-def]
    k_arms = n.shape[1]
    for r in range(n.shape[0]):
        t = 0.0
        for k in range(k_arms):
            t += n[r, k]
        t = max(t, 1.0)
        if kind == UCB1_INDEX:
            # param = exploration: mean + sqrt(c ln t / n)
            level = param * math.log(t)
            for k in range(k_arms):
                m = n[r, k]
                inv = 1.0 / max(m, 1e-300)
                v = s[r, k] * inv + math.sqrt(level * inv)
                out[r, k] = v if m > 0.0 else np.inf
        else:
            # MOSS, param = horizon (0: anytime, use t): mean + sqrt(ln+(H / (K n)) / n)
            h = (param if param > 0.0 else t) / k_arms
            for k in range(k_arms):
                m = n[r, k]
                inv = 1.0 / max(m, 1e-300)
                v = s[r, k] * inv + math.sqrt(max(math.log(h * inv), 0.0) * inv)
                out[r, k] = v if m > 0.0 else np.inf


def ucb_index(kind: int, n: FloatArray, s: FloatArray, param: float) -> FloatArray:
    """UCB1 (``param`` = exploration) or MOSS (``param`` = horizon, 0 for anytime) indices.

    Unpulled arms get ``inf``.
    """
    out = np.empty(n.shape)
    _ucb_index(kind, n, s, float(param), out)
    return out


@numba.njit(cache=True)
def _ucb_sample(kind, n, s, param, u, out):  # type: ignore[no-untyped-def]
    index = np.empty(n.shape)
    _ucb_index(kind, n, s, param, index)
    _argmax_ties(index, u, out)


def ucb_sample(kind: int, n: FloatArray, s: FloatArray, param: float, u: FloatArray) -> IntArray:
    """The arm of largest :func:`ucb_index` per row, ties broken by the uniform ``u``."""
    out = np.empty(n.shape[0], dtype=np.int64)
    _ucb_sample(kind, n, s, float(param), u, out)
    return out


# Reuse of a kept grid after one arm's posterior changed: its centre may move by at most
# _REUSE_SHIFT and its scale change by at most a factor _REUSE_SCALE (in the standard
# deviation the grid was built for), and its range narrowed by _REUSE_MARGIN sd must still
# lie on the grid. Panels are then at most 3 / 0.8 = 3.75 current sd wide near its mean.
_REUSE_SHIFT = 0.25
_REUSE_SCALE = 1.25
_REUSE_MARGIN = 1.5


@numba.njit(cache=True)
def _refresh_arm(  # type: ignore[no-untyped-def]
    fam,
    k,
    p1k,
    p2k,
    mean,
    sd,
    lo,
    hi,
    lnorm,
    c1,
    c2,
    alive,
    edges,
    uu,
    vv,
    dens,
    fnode,
    built_mean,
    built_sd,
    weights,
    wmat,
    out,
):
    """Recompute arm k alone on the kept grid; False if the grid no longer resolves it."""
    m1, s1, lo1, hi1 = np.empty(1), np.empty(1), np.empty(1), np.empty(1)
    ln1, a1, b1 = np.empty(1), np.empty(1), np.empty(1)
    _arm_params(fam, p1k, p2k, m1, s1, lo1, hi1, ln1, a1, b1, 0, _REUSE_MARGIN)
    if abs(m1[0] - built_mean[k]) > _REUSE_SHIFT * built_sd[k]:
        return False
    if not (built_sd[k] / _REUSE_SCALE <= s1[0] <= _REUSE_SCALE * built_sd[k]):
        return False
    if alive[k] and (lo1[0] < edges[0] or hi1[0] > edges[-1]):
        return False
    _arm_params(fam, p1k, p2k, m1, s1, lo1, hi1, ln1, a1, b1, 0, 0.0)
    # Which arms are dominated must not change for the worse (see _build).
    old_lo = lo[k]
    lo[k] = lo1[0]
    second = _second_largest(lo)
    lo[k] = old_lo
    for j in range(lo.shape[0]):
        upper = hi1[0] if j == k else hi[j]
        if not alive[j] and upper > second:
            return False
    mean[k], sd[k], lo[k], hi[k] = m1[0], s1[0], lo1[0], hi1[0]
    lnorm[k], c1[k], c2[k] = ln1[0], a1[0], b1[0]
    _arm_on_grid(edges, uu, vv, c1, c2, lnorm, lo, hi, alive, weights, wmat, dens, fnode, k)
    _combine(edges, weights, dens, fnode, mean, out)
    return True


class ProbBestCache:
    """:func:`prob_best` for one stream, kept up to date as one arm changes at a time.

    After an observation changes one arm's posterior, only that arm's density and CDF are
    recomputed on the kept quadrature grid (and the product over arms redone), as long as
    the grid still resolves it (``_REUSE_*``); otherwise the grid is rebuilt. The result
    agrees with a fresh :func:`prob_best` to within ``PROB_BEST_ATOL`` (tested).

    Parameters
    ----------
    family : BETA or NORMAL
    posterior : callable
        ``stats -> (p1, p2)``, each (1, K): the policy's posterior parameters.
    arm_posterior : callable
        ``(stats, arm) -> (p1, p2)`` of one arm, as floats.
    stats : the state (batch 1) to start from.
    """

    __slots__ = ("_arm_posterior", "_arrays", "_built", "_family", "_posterior", "rebuilds", "row")

    def __init__(self, family: int, posterior: Any, arm_posterior: Any, stats: Any) -> None:
        self._family = family
        self._posterior = posterior
        self._arm_posterior = arm_posterior
        self.rebuilds = 0
        self.row: FloatArray = np.ones(1)
        self._arrays: tuple[Any, ...] = ()
        self._built: tuple[FloatArray, FloatArray] = (self.row, self.row)
        self.refresh(stats)

    def refresh(self, stats: Any, arm: int | None = None) -> FloatArray:
        """The allocation row after ``arm`` changed (``None``: anything may have).

        The row is updated in place; copy it to keep it.
        """
        if arm is not None and self._arrays:
            p1k, p2k = self._arm_posterior(stats, arm)
            if _refresh_arm(  # type: ignore[call-arg]
                self._family,
                arm,
                p1k,
                p2k,
                *self._arrays,
                *self._built,
                _WEIGHTS,
                _WMAT,
                self.row,
            ):
                return self.row
        p1, p2 = self._posterior(stats)
        self.rebuilds += 1
        if p1.shape[1] == 1:
            self.row = np.ones(1)
            self._arrays = ()
            return self.row
        built = _build(
            self._family,
            np.ascontiguousarray(p1[0]),
            np.ascontiguousarray(p2[0]),
            _NODES,
            _WEIGHTS,
            _WMAT,
            _C_IN,
            _C_TAIL,
        )
        self.row = built[0]
        self._arrays = built[1:9]  # mean sd lo hi lnorm c1 c2 alive
        self._built = (built[1].copy(), built[2].copy())
        self._arrays += built[9:]  # edges uu vv dens fnode
        return self.row
