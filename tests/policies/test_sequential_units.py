"""Sequential tests against closed forms and naive references; guardrails; promotion rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize, special

from policies._cs_kernels import CBAR, beta_binomial_bounds
from policies.promotion import (
    EXPLORING,
    INCONCLUSIVE,
    PROMOTED,
    ROLLED_BACK,
    PromotionRule,
)
from policies.safety import HARM, LIMIT, NO_BREACH, Guardrail, over_slo
from policies.sequential import (
    AsymptoticCS,
    BetaBinomialCS,
    EmpiricalBernsteinCS,
    Evidence,
    MixtureSPRT,
    OffPolicyCS,
    mixture_rho2,
)


def test_beta_binomial_bounds_match_root_finding() -> None:
    # SciPy's brentq on the mixture ratio (with SciPy's betaln), from no data to 3 million
    # observations and rates down to 1e-6: the bounds agree to 1e-7 relative. That is the
    # rounding of log B(a + S, b + F) from differences of lgamma near 1e7 (about 1e-9
    # absolute in the log ratio, i.e. alpha changed by a factor 1 +- 1e-9).
    rng = np.random.default_rng(0)
    n = np.floor(10 ** rng.uniform(0, 6.5, (300, 2)))
    s = rng.binomial(n.astype(np.int64), rng.uniform(0, 1, (300, 2)) ** 3).astype(np.float64)
    s[0, 0], s[1, 1], n[2, 0], s[2, 0] = 0.0, n[1, 1], 0.0, 0.0
    lower, upper = beta_binomial_bounds(n, s, 1.0, 1.0, 0.05)
    for (i, k), nn in np.ndenumerate(n):
        ss, ff = s[i, k], nn - s[i, k]

        def excess(q: float, ss: float = ss, ff: float = ff) -> float:
            return float(
                special.betaln(1 + ss, 1 + ff)
                - ss * math.log(q)
                - ff * math.log1p(-q)
                - math.log(20.0)
            )

        mid = min(max(ss / nn, 1e-300), 1 - 1e-16) if nn > 0 else 0.5
        lo = (
            0.0
            if excess(1e-300) < 0
            else optimize.brentq(excess, 1e-300, mid, xtol=1e-300, rtol=1e-14)
        )
        hi = (
            1.0
            if excess(1 - 1e-16) < 0
            else optimize.brentq(excess, mid, 1 - 1e-16, xtol=1e-300, rtol=1e-14)
        )
        assert lower[i, k] == pytest.approx(lo, rel=1e-7, abs=1e-300)
        assert upper[i, k] == pytest.approx(hi, rel=1e-7)


def test_asymptotic_cs_is_the_published_closed_form() -> None:
    # Waudby-Smith et al. (2023), Thm 2.2: mu_hat +- sqrt(2 s^2 (t r^2 + 1) / (t^2 r^2)
    # * log(sqrt(t r^2 + 1) / alpha)), with s^2 / t the variance of the estimate.
    test = AsymptoticCS(alpha=0.05, n_expected=5_000, min_samples=1)
    rng = np.random.default_rng(1)
    arm = rng.integers(0, 2, (3, 4000))
    reward = rng.normal(0.0, 1.0, (3, 4000)) + arm * 0.05
    state = test.update(test.init(2, 3), arm, reward)
    ev = test.evaluate(state)
    n0, n1 = state.n[:, 0], state.n[:, 1]
    v0 = state.sum_sq[:, 0] / n0 - (state.sum_reward[:, 0] / n0) ** 2
    v1 = state.sum_sq[:, 1] / n1 - (state.sum_reward[:, 1] / n1) ** 2
    t = n0 + n1
    s2 = (v0 / n0 + v1 / n1) * t
    r2 = mixture_rho2(0.05, 5_000)
    radius = np.sqrt(2 * s2 * (t * r2 + 1) / (t * t * r2) * np.log(np.sqrt(t * r2 + 1) / 0.05))
    np.testing.assert_allclose(ev.upper[:, 1] - ev.estimate[:, 1], radius, rtol=1e-12)
    np.testing.assert_allclose(ev.estimate[:, 1] - ev.lower[:, 1], radius, rtol=1e-12)


def test_msprt_likelihood_ratio_is_the_mixture_integral() -> None:
    # Lambda = integral N(est; d, V) / N(est; 0, V) dN(d; 0, tau^2), by quadrature.
    test = MixtureSPRT(alpha=0.05, mde=0.02, min_samples=1)
    rng = np.random.default_rng(2)
    arm = rng.integers(0, 2, (1, 3000))
    reward = (rng.random((1, 3000)) < np.where(arm == 1, 0.33, 0.3)).astype(np.float64)
    state = test.update(test.init(2, 1), arm, reward)
    ev = test.evaluate(state)
    n, m = state.n[0], state.sum_reward[0] / state.n[0]
    var = float(np.sum(m * (1 - m) / n))
    est = float(m[1] - m[0])

    def ratio(d: float) -> float:
        lr = math.exp((est * d - d * d / 2) / var)
        return lr * math.exp(-d * d / (2 * 0.02**2)) / math.sqrt(2 * math.pi * 0.02**2)

    value, _ = integrate.quad(ratio, -0.2, 0.2, epsabs=1e-13, epsrel=1e-11, limit=200)
    assert ev.statistic[0, 1] == pytest.approx(math.log(value), rel=1e-8)
    assert ev.p_value[0, 1] == pytest.approx(min(1.0, 1.0 / value), rel=1e-8)
    # rejecting (statistic >= log(1/alpha)) is the same as 0 leaving the sequence
    assert (ev.statistic[0, 1] >= ev.boundary[0, 1]) == (ev.lower[0, 1] > 0 or ev.upper[0, 1] < 0)


def test_mixture_rho_makes_the_boundary_tightest_near_n_expected() -> None:
    # The closed-form rho is the paper's approximation to the minimiser of the radius at
    # t = n_expected; it must be within 1% of the exact minimum radius.
    t, alpha = 40_000.0, 0.05

    def radius(r2: float) -> float:
        return math.sqrt(2 * (t * r2 + 1) / (t * t * r2) * math.log(math.sqrt(t * r2 + 1) / alpha))

    best = optimize.minimize_scalar(
        lambda x: radius(math.exp(x)), bounds=(-20, 0), method="bounded"
    )
    assert radius(mixture_rho2(alpha, t)) <= 1.01 * radius(math.exp(best.x))


def reference_eb(x: list[float], alpha_side: float, n_tune: float | None) -> tuple[float, float]:
    """Predictable plug-in empirical Bernstein, written out step by step (WS&R 2023, Thm 2,
    with the variance shrunk towards 1/4 by one pseudo-observation)."""
    sl = slx = spv = 0.0
    seen: list[float] = []
    for xi in x:
        t = len(seen)
        mean = sum(seen) / t if t else 0.5
        dev = sum(v * v for v in seen) - t * mean * mean
        var = (max(dev, 0.0) + 0.25) / (t + 1)
        h = n_tune if n_tune else (t + 1) * math.log(t + 2)
        lam = min(math.sqrt(2 * math.log(1 / alpha_side) / (var * h)), CBAR)
        psi = -math.log(1 - lam) - lam
        sl += lam
        slx += lam * xi
        spv += psi * (xi - min(max(mean, 0.0), 1.0)) ** 2
        seen.append(xi)
    log_a = math.log(1 / alpha_side)
    return (slx - spv - log_a) / sl, (slx + spv + log_a) / sl


@pytest.mark.parametrize("n_tune", [None, 500.0])
def test_empirical_bernstein_matches_the_step_by_step_reference(n_tune: float | None) -> None:
    test = EmpiricalBernsteinCS(alpha=0.1, low=-1.0, high=3.0, n_expected=n_tune)
    rng = np.random.default_rng(3)
    reward = rng.uniform(-1.0, 3.0, 400) ** 1.0
    arm = np.zeros(400, dtype=np.int64)
    arm[::3] = 1
    state = test.init(2, 1)
    for a, r in zip(arm, reward, strict=True):
        test.observe(state, int(a), float(r))
    _, lower, upper = test.arm_bounds(state)
    for k in (0, 1):
        x = [(r + 1.0) / 4.0 for r in reward[arm == k]]
        lo, hi = reference_eb(x, 0.1 / 4, n_tune)  # each arm at alpha/2, two-sided
        assert lower[0, k] == pytest.approx(-1.0 + 4.0 * max(lo, 0.0), rel=1e-10)
        assert upper[0, k] == pytest.approx(-1.0 + 4.0 * min(hi, 1.0), rel=1e-10)


def test_off_policy_pseudo_outcomes_match_the_doubly_robust_formula() -> None:
    # Sum of phi = (m_k - m_0) + 1[A=k](y - m_k)/pi_k - 1[A=0](y - m_0)/pi_0 with m the
    # running (+0.5)/(+1) means before each observation, written out in Python.
    test = OffPolicyCS(n_expected=1_000)
    rng = np.random.default_rng(4)
    state = test.init(3, 1)
    n, s = np.zeros(3), np.zeros(3)
    total = np.zeros(3)
    for _ in range(300):
        pi = rng.dirichlet(np.ones(3)) * 0.8 + 0.2 / 3
        a = int(rng.choice(3, p=pi))
        y = float(rng.random() < [0.2, 0.3, 0.5][a])
        m = (s + 0.5) / (n + 1.0)
        for k in (1, 2):
            phi = m[k] - m[0]
            phi += (y - m[k]) / pi[k] if a == k else 0.0
            phi -= (y - m[0]) / pi[0] if a == 0 else 0.0
            total[k] += phi
        n[a] += 1
        s[a] += y
        test.observe(state, a, y, pi)
    np.testing.assert_allclose(state.eb.s1[0, 1:], total[1:], rtol=1e-11)
    np.testing.assert_array_equal(state.arms.n[0], n)


def test_off_policy_skips_an_alternative_that_could_not_be_drawn() -> None:
    test = OffPolicyCS(n_expected=1_000)
    state = test.init(3, 1)
    test.observe(state, 0, 1.0, np.array([0.9, 0.1, 0.0]))
    assert state.eb.t[0, 1] == 1.0 and state.eb.t[0, 2] == 0.0


# ---------------------------------------------------------------------------------------
# Guardrails
# ---------------------------------------------------------------------------------------


def test_guardrail_hard_limit_breaches_from_the_first_observations() -> None:
    guard = Guardrail(name="errors", limit=0.2)
    state = guard.init(2, 1)
    for _ in range(20):
        guard.observe(state, 1, 1.0)  # every request on the alternative fails
        guard.observe(state, 0, 0.0)
    ev = guard.evaluate(state)
    assert ev.breach[0, 1] == LIMIT and ev.breach[0, 0] == NO_BREACH
    assert ev.statistic[0, 1] > 0.2 and ev.threshold[0, 1] == 0.2


def test_guardrail_harm_and_direction() -> None:
    rng = np.random.default_rng(5)
    arm = rng.integers(0, 2, (1, 4000))
    worse = (rng.random((1, 4000)) < np.where(arm == 1, 0.2, 0.1)).astype(np.float64)
    up = Guardrail(name="errors", harm="increase")
    ev = up.evaluate(up.update(up.init(2, 1), arm, worse))
    assert ev.breach[0, 1] == HARM and ev.harm_lower[0, 1] > 0
    down = Guardrail(name="conversion", harm="decrease")
    ev = down.evaluate(down.update(down.init(2, 1), arm, worse))
    assert ev.breach[0, 1] == NO_BREACH and ev.harm_upper[0, 1] < 0
    tolerant = Guardrail(name="errors", harm="increase", margin=0.2)
    ev = tolerant.evaluate(tolerant.update(tolerant.init(2, 1), arm, worse))
    assert ev.breach[0, 1] == NO_BREACH


def test_guardrail_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="harm"):
        Guardrail(name="x", harm="up")
    with pytest.raises(ValueError, match="margin"):
        Guardrail(name="x", margin=-0.1)
    with pytest.raises(ValueError, match="limit"):
        Guardrail(name="x", limit=1.5)
    with pytest.raises(ValueError, match="per-arm"):
        Guardrail(name="x", test=OffPolicyCS(), limit=0.5)
    with pytest.raises(ValueError, match="test"):
        Guardrail(name="x", test=AsymptoticCS())


def test_over_slo() -> None:
    np.testing.assert_array_equal(over_slo(np.array([10.0, 250.0, 251.0]), 250.0), [0, 0, 1])


# ---------------------------------------------------------------------------------------
# The promotion rule
# ---------------------------------------------------------------------------------------


def evidence(lower: list[list[float]], upper: list[list[float]], n: float = 1_000.0) -> Evidence:
    lo, hi = np.array(lower), np.array(upper)
    est = (lo + hi) / 2
    return Evidence(
        est, lo, hi, np.abs(est), (hi - lo) / 2, np.full_like(lo, np.nan), np.full_like(lo, n)
    )


def test_promotes_the_best_lower_bound_once_per_row_and_stays_put() -> None:
    rule = PromotionRule(test_name="off-policy-cs")
    status = rule.init(4, 2)
    ev = evidence(
        [[np.nan, 0.01, 0.03, -0.5], [np.nan, -0.1, -0.2, -0.3]],
        [[np.nan, 0.2, 0.1, -0.1], [np.nan, 0.1, 0.2, 0.3]],
    )
    status, changes = rule.step(status, ev)
    np.testing.assert_array_equal(status, [[0, 0, PROMOTED, ROLLED_BACK], [0, 0, 0, 0]])
    assert [(c.row, c.arm, c.new) for c in changes] == [(0, 3, "rolled_back"), (0, 2, "promoted")]
    c = changes[1]
    assert (c.lower, c.upper, c.n_arm, c.n_control, c.t) == (0.03, 0.1, 1000.0, 1000.0, 4000.0)
    assert "lower bound 0.03 > margin 0" in c.reason and c.source == "off-policy-cs"
    # sticky: evidence that later points the other way changes nothing already decided,
    # and a row with a promoted arm promotes no second one
    flipped = evidence(
        [[np.nan, 0.5, -0.9, 0.5], [np.nan, -1, -1, -1]],
        [[np.nan, 0.9, -0.5, 0.9], [np.nan, 1, 1, 1]],
    )
    again, changes = rule.step(status, flipped)
    np.testing.assert_array_equal(again, status)
    assert changes == []


def test_guardrails_act_first_and_horizon_ends_exploration() -> None:
    guard = Guardrail(name="errors", limit=0.2)
    gstate = guard.init(3, 1)
    for _ in range(30):
        guard.observe(gstate, 1, 1.0)
    rule = PromotionRule(horizon=5_000)
    ev = evidence([[np.nan, 0.1, -0.1]], [[np.nan, 0.2, 0.1]], n=2_000.0)
    status, changes = rule.step(rule.init(3, 1), ev, [("errors", guard.evaluate(gstate))])
    assert status[0, 1] == ROLLED_BACK and status[0, 2] == INCONCLUSIVE
    assert changes[0].source == "errors" and "hard limit" in changes[0].reason
    assert changes[0].boundary == 0.2 and changes[0].statistic > 0.2
    assert changes[1].new == "inconclusive" and "horizon" in changes[1].reason


def test_margin_and_infinite_bounds_before_min_samples() -> None:
    rule = PromotionRule(margin=0.05)
    status, changes = rule.step(rule.init(2, 1), evidence([[np.nan, 0.04]], [[np.nan, 0.3]]))
    assert status[0, 1] == EXPLORING and changes == []
    test = AsymptoticCS(min_samples=100)
    state = test.update(test.init(2, 1), [[0, 1] * 40], [[0.0, 1.0] * 40])
    ev = test.evaluate(state)
    assert ev.lower[0, 1] == -np.inf and ev.upper[0, 1] == np.inf
    with pytest.raises(ValueError, match="shape"):
        rule.step(rule.init(3, 1), ev)
    with pytest.raises(ValueError, match="margin"):
        PromotionRule(margin=-1.0)


def test_beta_binomial_on_bounded_rewards_is_rescaled() -> None:
    test = BetaBinomialCS(low=0.0, high=10.0)
    state = test.update(test.init(2, 1), [[0, 1, 1]], [[5.0, 10.0, 0.0]])
    mean, lower, upper = test.arm_bounds(state)
    np.testing.assert_allclose(mean, [[5.0, 5.0]])
    assert np.all(lower >= 0.0) and np.all(upper <= 10.0)


@pytest.mark.parametrize(
    "test",
    [
        MixtureSPRT(mde=0.5, low=-2.0),
        EmpiricalBernsteinCS(low=-1.0, high=3.0),
        BetaBinomialCS(low=10.0, high=20.0),
        OffPolicyCS(low=-5.0, high=5.0),
    ],
    ids=lambda t: t.name,
)
def test_observe_and_update_scale_rewards_alike(test: object) -> None:
    # The serving path (observe) and the batch path (update) see rewards on the same scale,
    # whatever the declared range.
    lo = test.low if test.low is not None else -2.0  # type: ignore[attr-defined]
    hi = test.high if test.high is not None else 8.0  # type: ignore[attr-defined]
    rng = np.random.default_rng(6)
    arm = rng.integers(0, 2, 40)
    reward = rng.uniform(lo, hi, 40)
    prop = np.array([0.6, 0.4])
    live, pure = test.init(2, 1), test.init(2, 1)  # type: ignore[attr-defined]
    for a, r in zip(arm, reward, strict=True):
        test.observe(live, int(a), float(r), prop)  # type: ignore[attr-defined]
        pure = test.update(pure, [[a]], [[r]], prop[None, :])  # type: ignore[attr-defined]
    for key, value in live.to_dict().items():
        np.testing.assert_allclose(value, pure.to_dict()[key], rtol=1e-12, err_msg=key)
