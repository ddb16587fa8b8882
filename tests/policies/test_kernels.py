"""Accuracy of Thompson's allocation (P(arm is best)) against exact references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, special, stats

from policies import ThompsonBeta, ThompsonGaussian
from policies._kernels import BETA, NORMAL, PROB_BEST_ATOL, prob_best


def reference(dists: list) -> np.ndarray:
    """P_k = integral f_k prod_{j != k} F_j by adaptive quadrature with SciPy's exact CDFs."""
    k_arms = len(dists)
    out = np.zeros(k_arms)
    for k in range(k_arms):
        lo, hi = dists[k].ppf(1e-15), dists[k].isf(1e-15)
        # Tell QUADPACK where the other arms' CDFs turn, or it may step over them.
        marks = [d.mean() + c * d.std() for d in dists for c in (-4, -2, 0, 2, 4)]
        points = sorted({float(np.clip(m, lo, hi)) for m in marks} - {lo, hi})

        def integrand(x: float, k: int = k) -> float:
            others = [dists[j].cdf(x) for j in range(k_arms) if j != k]
            return float(dists[k].pdf(x) * np.prod(others))

        out[k] = integrate.quad(
            integrand, lo, hi, points=points or None, limit=1000, epsabs=1e-13, epsrel=1e-11
        )[0]
    return out


def random_beta_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k_arms = int(rng.integers(2, 7))
    n = rng.choice([0, 1, 10, 100, 1_000, 100_000, 3_000_000], size=k_arms)
    n = (n * rng.uniform(0.5, 2.0, k_arms)).astype(np.int64)
    kind = rng.integers(3)
    if kind == 0:
        mu = 0.05 + rng.normal(0, 0.003, k_arms)  # close conversion rates
    elif kind == 1:
        mu = rng.uniform(0.01, 0.3, k_arms)
    else:
        mu = rng.uniform(0.7, 0.99, k_arms)  # posteriors skewed towards 1
    s = rng.binomial(n, np.clip(mu, 0, 1))
    return (1.0 + s).astype(float), (1.0 + n - s).astype(float)


def test_beta_against_adaptive_quadrature() -> None:
    # Randomised posteriors from no data to millions of observations, close and far
    # means, skewed near 0 and 1. The kernel's stated error is PROB_BEST_ATOL per arm.
    rng = np.random.default_rng(20261126)
    worst = 0.0
    for _ in range(25):
        a, b = random_beta_case(rng)
        exact = reference([stats.beta(x, y) for x, y in zip(a, b, strict=True)])
        got = prob_best(BETA, a[None], b[None])[0]
        assert got.sum() == pytest.approx(1.0, abs=1e-12)
        worst = max(worst, float(np.abs(got - exact / exact.sum()).max()))
    assert worst <= PROB_BEST_ATOL


def test_beta_two_arms_closed_form() -> None:
    # Y ~ Beta(1, m): F_Y(x) = 1 - (1 - x)^m, so P(X > Y) = 1 - B(a, b + m) / B(a, b).
    rng = np.random.default_rng(5)
    for _ in range(200):
        a = float(rng.integers(1, 5000))
        b = float(rng.integers(1, 5000))
        m = float(rng.integers(1, 60))
        exact = 1.0 - np.exp(special.betaln(a, b + m) - special.betaln(a, b))
        got = prob_best(BETA, np.array([[a, 1.0]]), np.array([[b, m]]))[0, 0]
        assert abs(got - exact) <= PROB_BEST_ATOL, (a, b, m)


def test_normal_two_arms_closed_form() -> None:
    # P(X1 > X2) = Phi((m1 - m2) / sqrt(s1^2 + s2^2)) for independent normals.
    rng = np.random.default_rng(6)
    for _ in range(200):
        m = rng.normal(0, 1, 2)
        s = np.exp(rng.uniform(-6, 1, 2))
        exact = stats.norm.cdf((m[0] - m[1]) / np.hypot(s[0], s[1]))
        got = prob_best(NORMAL, m[None], s[None])[0, 0]
        assert abs(got - exact) <= PROB_BEST_ATOL, (m, s)


def test_normal_many_arms_against_quadrature() -> None:
    rng = np.random.default_rng(7)
    for _ in range(10):
        k_arms = int(rng.integers(3, 7))
        m = rng.normal(0, 0.1, k_arms)
        s = np.exp(rng.uniform(-5, -1, k_arms))
        exact = reference([stats.norm(x, y) for x, y in zip(m, s, strict=True)])
        got = prob_best(NORMAL, m[None], s[None])[0]
        assert np.abs(got - exact / exact.sum()).max() <= PROB_BEST_ATOL


def test_symmetry_and_batch_rows_are_independent() -> None:
    same = prob_best(BETA, np.full((1, 10), 30.0), np.full((1, 10), 970.0))
    np.testing.assert_allclose(same, 0.1, atol=PROB_BEST_ATOL)
    a = np.array([[3.0, 5.0, 40.0], [30.0, 30.0, 30.0]])
    b = np.array([[8.0, 9.0, 700.0], [70.0, 70.0, 70.0]])
    both = prob_best(BETA, a, b)
    np.testing.assert_array_equal(both[0], prob_best(BETA, a[:1], b[:1])[0])
    np.testing.assert_array_equal(both[1], prob_best(BETA, a[1:], b[1:])[0])
    assert prob_best(BETA, np.array([[4.0]]), np.array([[2.0]]))[0, 0] == 1.0


def test_beta_ten_arms_against_posterior_sampling() -> None:
    # The allocation is what Thompson sampling draws: compare with 2e6 posterior draws.
    # Each arm's frequency has SE sqrt(p(1-p)/N) <= 3.5e-4; assert within 4.5 SE + ATOL.
    rng = np.random.default_rng(8)
    n = np.array([265, 283, 211, 221, 125, 534, 1099, 2145, 2082, 3035])
    s = rng.binomial(n, np.linspace(0.02, 0.06, 10))
    a, b = 1.0 + s, 1.0 + n - s
    p = prob_best(BETA, a[None].astype(float), b[None].astype(float))[0]
    draws = 2_000_000
    freq = np.zeros(10)
    for _ in range(4):
        x = rng.beta(a, b, size=(draws // 4, 10))
        freq += np.bincount(x.argmax(axis=1), minlength=10)
    freq /= draws
    se = np.sqrt(p * (1 - p) / draws)
    assert (np.abs(freq - p) <= 4.5 * se + PROB_BEST_ATOL).all(), (freq, p)


@pytest.mark.parametrize("family", ["beta", "normal"])
def test_incremental_cache_matches_fresh_allocation(family: str) -> None:
    # The serving cache recomputes only the arm whose posterior changed, on a kept grid,
    # until the grid stops resolving it. Along Thompson trajectories (K = 2..10, 4,000
    # rewards each, seeded) it must agree with a fresh computation to PROB_BEST_ATOL, and
    # the incremental path must actually be taken (most refreshes are not rebuilds).
    policy = ThompsonBeta() if family == "beta" else ThompsonGaussian(noise_sd=0.3)
    worst = 0.0
    for seed, k_arms in enumerate([2, 5, 10]):
        rng = np.random.default_rng(100 + seed)
        means = rng.uniform(0.01, 0.1, k_arms) if family == "beta" else rng.normal(0, 0.05, k_arms)
        state = policy.init(k_arms)
        cache = policy.allocation_cache(state)
        steps = 4_000
        for t in range(steps):
            row = cache.row
            arm = int(np.searchsorted(np.cumsum(row), rng.random() * row.sum(), side="right"))
            arm = min(arm, k_arms - 1)
            if family == "beta":
                reward = float(rng.random() < means[arm])
            else:
                reward = float(rng.normal(means[arm], 0.3))
            state = state.with_observations(np.array([arm]), np.array([reward]))
            got = cache.refresh(state, arm)
            if t % 7 == 0:
                worst = max(worst, float(np.abs(got - policy.allocation(state)[0]).max()))
        assert 0 < cache.rebuilds < steps // 5
    assert worst <= PROB_BEST_ATOL
