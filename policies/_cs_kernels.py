"""numba kernels of the sequential tests (:mod:`policies.sequential`).

Every kernel adds the contribution of a batch of observations into ``out`` arrays while
reading the *predictable* quantities (running means, variances, bet sizes) from ``st``,
the state before the batch. Passing the same arrays as ``st`` and ``out`` applies the
observations one by one in place (the serving path): each observation then sees every
earlier one, which is just as predictable and so just as valid.

The empirical-Bernstein step (:func:`_eb_add`) is the core of two sequences: per arm on
rewards in ``[0, 1]``, and off-policy on doubly robust pseudo-outcomes whose range is known
before the reward arrives (it depends on the propensities only). With predictable
``lam_i`` in ``[0, cbar / c_i)``, ``c_i = hi_i - lo_i``, and predictable ``xhat_i`` in
``[lo_i, hi_i]``,

    exp( sum lam_i (x_i - mu) - sum psi_i(lam_i) (x_i - xhat_i)^2 ),
    psi_i(lam) = (-log(1 - c_i lam) - c_i lam) / c_i^2,

is a non-negative supermartingale when every ``x_i`` has conditional mean ``mu`` (Fan,
Grama and Liu 2015; Howard et al. 2021, Thm 4, with time-varying ranges as in
Waudby-Smith and Ramdas 2023, Thm 2). Its state is five sums and a count, all additive.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._kernels import FloatArray, IntArray

__all__ = [
    "CBAR",
    "beta_binomial_bounds",
    "eb_arm_add",
    "eb_one",
    "moments_add",
    "off_policy_add",
    "off_policy_one",
]

#: Largest ``lam * c``: bets stay at most half the way to ruin (Waudby-Smith and Ramdas use
#: 1/2 or 3/4).
CBAR = 0.5


@numba.njit(cache=True)
def _moments_add(arm, reward, o_n, o_s, o_q):  # type: ignore[no-untyped-def]
    for b in range(arm.shape[0]):
        for i in range(arm.shape[1]):
            a = arm[b, i]
            r = reward[b, i]
            o_n[b, a] += 1.0
            o_s[b, a] += r
            if o_q is not None:
                o_q[b, a] += r * r


def moments_add(
    arm: IntArray, reward: FloatArray, out: tuple[FloatArray, FloatArray, FloatArray | None]
) -> None:
    """Add counts, sums and (unless ``out[2]`` is None) squares of ``reward`` (B, N) at
    ``arm`` (B, N)."""
    _moments_add(arm, reward, out[0], out[1], out[2])


@numba.njit(cache=True, inline="always")
def _eb_bet(st_t, st_s1, st_s2, b, j, lo, hi, log_a, n_tune):  # type: ignore[no-untyped-def]
    # The predictable bet ``lam``, its penalty ``psi`` and centre ``xhat`` for stream (b, j).
    t = st_t[b, j]
    c = hi - lo
    # Predictable mean and variance of the stream; the variance is shrunk towards the
    # largest a variable in [lo, hi] can have, with the weight of one observation.
    mean = st_s1[b, j] / t if t > 0.0 else 0.5 * (lo + hi)
    dev = st_s2[b, j] - t * mean * mean
    var = (max(dev, 0.0) + 0.25 * c * c) / (t + 1.0)
    # n_tune > 0: tightest near n_tune observations; else WS&R's t log(1 + t) schedule.
    h = n_tune if n_tune > 0.0 else (t + 1.0) * math.log(t + 2.0)
    lam = min(math.sqrt(2.0 * log_a / (var * h)), CBAR / c)
    psi = (-math.log1p(-c * lam) - c * lam) / (c * c)
    return lam, psi, min(max(mean, lo), hi)


@numba.njit(cache=True, inline="always")
def _eb_put(out, b, j, x, lam, psi, xhat):  # type: ignore[no-untyped-def]
    # out: (t, s1, s2, sl, slx, spv)
    out[0][b, j] += 1.0
    out[1][b, j] += x
    out[2][b, j] += x * x
    out[3][b, j] += lam
    out[4][b, j] += lam * x
    out[5][b, j] += psi * (x - xhat) * (x - xhat)


@numba.njit(cache=True)
def _eb_arm_add(st, arm, x, log_a, n_tune, out):  # type: ignore[no-untyped-def]
    # st is the state before the batch (never ``out``): bets are the same for a whole row.
    n_arms = st[0].shape[1]
    lam = np.empty(n_arms)
    psi = np.empty(n_arms)
    xhat = np.empty(n_arms)
    for b in range(arm.shape[0]):
        for j in range(n_arms):
            lam[j], psi[j], xhat[j] = _eb_bet(st[0], st[1], st[2], b, j, 0.0, 1.0, log_a, n_tune)
        for i in range(arm.shape[1]):
            a = arm[b, i]
            _eb_put(out, b, a, x[b, i], lam[a], psi[a], xhat[a])


def eb_arm_add(
    st: tuple[FloatArray, ...],
    arm: IntArray,
    x: FloatArray,
    log_a: float,
    n_tune: float,
    out: tuple[FloatArray, ...],
) -> None:
    """Per-arm empirical-Bernstein sums of ``x`` (B, N) in [0, 1] observed at ``arm``.

    ``st`` and ``out`` are ``(t, s1, s2, sl, slx, spv)``, each (B, K); ``st`` is read only.
    """
    _eb_arm_add(st, arm, x, log_a, n_tune, out)


@numba.njit(cache=True)
def eb_one(st, b, a, x, log_a, n_tune):  # type: ignore[no-untyped-def]
    """One observation of stream ``(b, a)`` applied in place."""
    lam, psi, xhat = _eb_bet(st[0], st[1], st[2], b, a, 0.0, 1.0, log_a, n_tune)
    _eb_put(st, b, a, x, lam, psi, xhat)


@numba.njit(cache=True, inline="always")
def _model_mean(st, b, k, dr):  # type: ignore[no-untyped-def]
    # Predictable model of arm k's mean (zero for inverse propensity weighting).
    return (st[1][b, k] + 0.5) / (st[0][b, k] + 1.0) if dr else 0.0


@numba.njit(cache=True, inline="always")
def _dr_range(mk, m0, pk, p0):  # type: ignore[no-untyped-def]
    # The pseudo-outcome's centre d and its range [lo, hi] before the reward (in [0, 1]).
    d = mk - m0
    return d, d - max(mk / pk, (1.0 - m0) / p0), d + max((1.0 - mk) / pk, m0 / p0)


@numba.njit(cache=True, inline="always")
def _dr_phi(d, a, k, r, mk, m0, pk, p0):  # type: ignore[no-untyped-def]
    # phi = (m_k - m_0) + 1[a = k] (r - m_k) / p_k - 1[a = 0] (r - m_0) / p_0
    if a == k:
        return d + (r - mk) / pk
    if a == 0:
        return d - (r - m0) / p0
    return d


@numba.njit(cache=True, inline="always")
def _off_policy_bets(st, b, prop, log_a, n_tune, dr, ok, mk, d, lam, psi, xhat):  # type: ignore[no-untyped-def]
    # Per alternative k: the model means, the pseudo-outcome's range and the bet, all
    # predictable. ok[k] = False skips k (pi_k or pi_0 is 0: k could not be compared on
    # this observation).
    p0 = prop[0]
    mk[0] = _model_mean(st, b, 0, dr)
    for k in range(1, prop.shape[0]):
        pk = prop[k]
        ok[k] = pk > 0.0 and p0 > 0.0
        if not ok[k]:
            continue
        mk[k] = _model_mean(st, b, k, dr)
        d[k], lo, hi = _dr_range(mk[k], mk[0], pk, p0)
        lam[k], psi[k], xhat[k] = _eb_bet(st[2], st[3], st[4], b, k, lo, hi, log_a, n_tune)


@numba.njit(cache=True, inline="always")
def _off_policy_put(out, b, a, r, prop, ok, mk, d, lam, psi, xhat):  # type: ignore[no-untyped-def]
    for k in range(1, prop.shape[0]):
        if ok[k]:
            phi = _dr_phi(d[k], a, k, r, mk[k], mk[0], prop[k], prop[0])
            _eb_put(out[2:], b, k, phi, lam[k], psi[k], xhat[k])
    out[0][b, a] += 1.0
    out[1][b, a] += r


@numba.njit(cache=True)
def _off_policy_add(st, arm, y, prop, log_a, n_tune, dr, out):  # type: ignore[no-untyped-def]
    # st / out: (n, sum) of the arms' model, then (t, s1, s2, sl, slx, spv) per stream.
    # st is the state before the batch (never ``out``), so the bets only change when the
    # propensity row does.
    n_arms = prop.shape[2]
    ok = np.zeros(n_arms, dtype=np.bool_)
    buf = np.zeros((5, n_arms))
    mk, d, lam, psi, xhat = buf[0], buf[1], buf[2], buf[3], buf[4]
    for b in range(arm.shape[0]):
        for i in range(arm.shape[1]):
            row = prop[b, i]
            same = i > 0
            if same:
                for k in range(n_arms):
                    if row[k] != prop[b, i - 1, k]:
                        same = False
                        break
            if not same:
                _off_policy_bets(st, b, row, log_a, n_tune, dr, ok, mk, d, lam, psi, xhat)
            _off_policy_put(out, b, arm[b, i], y[b, i], row, ok, mk, d, lam, psi, xhat)


@numba.njit(cache=True)
def off_policy_one(st, b, a, y, prop, log_a, n_tune, dr):  # type: ignore[no-untyped-def]
    """One observation applied in place; returns 1 (and changes nothing) if ``prop`` (K,)
    is not a probability row or gives the played arm probability 0.

    The arithmetic of :func:`_off_policy_bets` then :func:`_off_policy_put`, per
    alternative and without scratch arrays (stream k's bet reads only stream k)."""
    n_arms = prop.shape[0]
    for k in range(n_arms):
        if not (0.0 <= prop[k] <= 1.0):
            return 1
    if prop[a] <= 0.0:
        return 1
    p0 = prop[0]
    m0 = _model_mean(st, b, 0, dr)
    for k in range(1, n_arms):
        pk = prop[k]
        if pk <= 0.0 or p0 <= 0.0:
            continue
        mk = _model_mean(st, b, k, dr)
        d, lo, hi = _dr_range(mk, m0, pk, p0)
        lam, psi, xhat = _eb_bet(st[2], st[3], st[4], b, k, lo, hi, log_a, n_tune)
        _eb_put(st[2:], b, k, _dr_phi(d, a, k, y, mk, m0, pk, p0), lam, psi, xhat)
    st[0][b, a] += 1.0
    st[1][b, a] += y
    return 0


def off_policy_add(
    st: tuple[FloatArray, ...],
    arm: IntArray,
    y: FloatArray,
    prop: FloatArray,
    log_a: float,
    n_tune: float,
    dr: bool,
    out: tuple[FloatArray, ...],
) -> None:
    """Off-policy sums for each alternative ``k >= 1`` against control (arm 0).

    ``y`` (B, N) are rewards scaled to [0, 1]; ``prop`` (B, N, K) the allocation each
    observation's arm was drawn from. ``st``/``out`` are ``(n, sum, t, s1, s2, sl, slx,
    spv)``, each (B, K).
    """
    _off_policy_add(st, arm, y, prop, log_a, n_tune, dr, out)


@numba.njit(cache=True, inline="always")
def _bb_excess(p, a, b, s, f, log_norm, log_inv_alpha):  # type: ignore[no-untyped-def]
    # log of the beta-binomial mixture likelihood ratio at p, minus log(1 / alpha).
    return log_norm - s * math.log(p) - f * math.log1p(-p) - log_inv_alpha


@numba.njit(cache=True)
def _bb_root(lo, hi, x, rising, s, f, log_norm, log_inv_alpha):  # type: ignore[no-untyped-def]
    # The root of _bb_excess in [lo, hi] (where its sign changes once), by Newton steps
    # kept inside a shrinking bracket (bisection when a step leaves it). ``rising``: the
    # excess is negative at lo and positive at hi (the upper bound), else the reverse.
    # Returns a point on the rejected side that has been checked to be rejected, so the
    # set is never made narrower than the exact one.
    for _ in range(200):
        g = _bb_excess(x, 0.0, 0.0, s, f, log_norm, log_inv_alpha)
        if (g >= 0.0) == rising:
            hi = x
        else:
            lo = x
        if hi - lo <= 1e-14 * hi:
            break
        slope = -s / x + f / (1.0 - x)
        step = x - g / slope if slope != 0.0 else 0.5 * (lo + hi)
        if abs(step - x) <= 1e-15 * x:
            break
        x = step if lo < step < hi else 0.5 * (lo + hi)
    out = hi if rising else lo
    near = x * (1.0 + 1e-12) if rising else x * (1.0 - 1e-12)
    if (near < out if rising else near > out) and _bb_excess(
        near, 0.0, 0.0, s, f, log_norm, log_inv_alpha
    ) >= 0.0:
        out = near
    return out


@numba.njit(cache=True)
def _beta_binomial_bounds(n, s, a, b, log_inv_alpha, lower, upper):  # type: ignore[no-untyped-def]
    for r in range(n.shape[0]):
        for k in range(n.shape[1]):
            nn = n[r, k]
            ss = min(max(s[r, k], 0.0), nn)
            ff = nn - ss
            log_norm = (
                math.lgamma(a + ss) + math.lgamma(b + ff) - math.lgamma(a + b + nn)
                - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
            )  # fmt: skip
            # -s log p - f log(1 - p) is convex with its minimum at s / n, where the mixture
            # (a marginal likelihood, at most the maximum one) is below 1 / alpha: each bound
            # is the one root on its side.
            mid = min(max(ss / nn, 1e-300), 1.0 - 1e-16) if nn > 0.0 else 0.5
            # Start Newton near the normal approximation of each bound.
            sd = math.sqrt(max(mid * (1.0 - mid), 1.0 / (nn + 1.0)) / (nn + 1.0))
            if _bb_excess(1e-300, a, b, ss, ff, log_norm, log_inv_alpha) < 0.0:
                lower[r, k] = 0.0
            else:
                x0 = min(max(mid - 3.0 * sd, 0.5 * mid), mid)
                lower[r, k] = _bb_root(0.0, mid, x0, False, ss, ff, log_norm, log_inv_alpha)
            if _bb_excess(1.0 - 1e-16, a, b, ss, ff, log_norm, log_inv_alpha) < 0.0:
                upper[r, k] = 1.0
            else:
                x0 = max(min(mid + 3.0 * sd, 0.5 * (1.0 + mid)), mid)
                upper[r, k] = _bb_root(mid, 1.0, x0, True, ss, ff, log_norm, log_inv_alpha)


def beta_binomial_bounds(
    n: FloatArray, s: FloatArray, a: float, b: float, alpha: float
) -> tuple[FloatArray, FloatArray]:
    """Bounds ``{p : mixture likelihood ratio < 1 / alpha}`` per entry of ``n``, ``s``.

    The Beta(a, b) mixture of Bernoulli likelihood ratios (Howard et al. 2021, the
    conjugate "sub-Bernoulli" mixture); valid for any observations in [0, 1].
    """
    lower = np.empty_like(n)
    upper = np.empty_like(n)
    _beta_binomial_bounds(n, s, a, b, math.log(1.0 / alpha), lower, upper)
    return lower, upper


# ---------------------------------------------------------------------------------------
# Evaluation: Evidence fields (estimate, lower, upper, statistic, boundary, p_value) per
# alternative against control, in one pass; column 0 (control) is NaN.
# ---------------------------------------------------------------------------------------


@numba.njit(cache=True, inline="always")
def _nan_control(out, b):  # type: ignore[no-untyped-def]
    for f in range(6):
        out[f][b, 0] = np.nan


@numba.njit(cache=True)
def mixture_evaluate(n, s, q, tau2, rho2, log_inv_alpha, min_n, out):  # type: ignore[no-untyped-def]
    """Normal-mixture evidence on the difference of means from per-arm moments.

    ``tau2 > 0``: a fixed mixing variance (mSPRT); else ``rho2`` scales it with the data
    (``tau2 = V (n_0 + n_k) rho2``, the asymptotic CS). Johari et al. 2017, eq. 8.
    """
    for b in range(n.shape[0]):
        _nan_control(out, b)
        n0 = n[b, 0]
        m0 = s[b, 0] / n0 if n0 > 0.0 else 0.0
        v0 = max(q[b, 0] / n0 - m0 * m0, 0.0) / n0 if n0 > 0.0 else 0.0
        for k in range(1, n.shape[1]):
            nk = n[b, k]
            mk = s[b, k] / nk if nk > 0.0 else 0.0
            vk = max(q[b, k] / nk - mk * mk, 0.0) / nk if nk > 0.0 else 0.0
            var = v0 + vk if (n0 > 0.0 and nk > 0.0) else 0.0
            est = mk - m0
            t2 = tau2 if tau2 > 0.0 else var * (n0 + nk) * rho2
            log_lr, radius = 0.0, np.inf
            if var > 0.0 and t2 > 0.0:
                tot = var + t2
                log_lr = 0.5 * math.log(var / tot) + est * est * t2 / (2.0 * var * tot)
                radius = math.sqrt(var * tot / t2 * (math.log(tot / var) + 2.0 * log_inv_alpha))
            ready = n0 >= min_n and nk >= min_n
            out[0][b, k] = est
            out[1][b, k] = est - radius if ready else -np.inf
            out[2][b, k] = est + radius if ready else np.inf
            out[3][b, k] = log_lr
            out[4][b, k] = log_inv_alpha
            out[5][b, k] = min(1.0, math.exp(-log_lr)) if ready else 1.0


@numba.njit(cache=True)
def eb_evaluate(n, t, s1, sl, slx, spv, log_a, scale, min_n, out):  # type: ignore[no-untyped-def]
    """Off-policy evidence: the EB sequence of each alternative's pseudo-outcome stream,
    clipped to [-1, 1] and scaled to reward units; ``n`` the per-arm counts."""
    for b in range(n.shape[0]):
        _nan_control(out, b)
        for k in range(1, n.shape[1]):
            est = s1[b, k] / t[b, k] if t[b, k] > 0.0 else np.nan
            lo, hi = -np.inf, np.inf
            if sl[b, k] > 0.0:
                lo = max((slx[b, k] - spv[b, k] - log_a) / sl[b, k], -1.0) * scale
                hi = min((slx[b, k] + spv[b, k] + log_a) / sl[b, k], 1.0) * scale
            if not (n[b, 0] >= min_n and n[b, k] >= min_n):
                lo, hi = -np.inf, np.inf
            out[0][b, k] = est * scale
            out[1][b, k] = lo
            out[2][b, k] = hi
            out[3][b, k] = abs(est * scale)
            out[4][b, k] = 0.5 * (hi - lo)
            out[5][b, k] = np.nan


@numba.njit(cache=True)
def eb_arm_bounds(t, s1, sl, slx, spv, log_a, mean, lower, upper):  # type: ignore[no-untyped-def]
    """Each arm's EB mean and sequence on [0, 1] (``log_a`` per side)."""
    for b in range(t.shape[0]):
        for k in range(t.shape[1]):
            mean[b, k] = s1[b, k] / t[b, k] if t[b, k] > 0.0 else np.nan
            if sl[b, k] > 0.0:
                lower[b, k] = min(max((slx[b, k] - spv[b, k] - log_a) / sl[b, k], 0.0), 1.0)
                upper[b, k] = min(max((slx[b, k] + spv[b, k] + log_a) / sl[b, k], 0.0), 1.0)
            else:
                lower[b, k] = 0.0
                upper[b, k] = 1.0


@numba.njit(cache=True)
def per_arm_evaluate(n, mean, lower, upper, min_n, out):  # type: ignore[no-untyped-def]
    """The difference against control from per-arm sequences (each at ``alpha / 2``)."""
    for b in range(n.shape[0]):
        _nan_control(out, b)
        for k in range(1, n.shape[1]):
            est = mean[b, k] - mean[b, 0]
            lo = lower[b, k] - upper[b, 0]
            hi = upper[b, k] - lower[b, 0]
            if not (n[b, 0] >= min_n and n[b, k] >= min_n):
                lo, hi = -np.inf, np.inf
            out[0][b, k] = est
            out[1][b, k] = lo
            out[2][b, k] = hi
            out[3][b, k] = abs(est)
            out[4][b, k] = 0.5 * (hi - lo)
            out[5][b, k] = np.nan
