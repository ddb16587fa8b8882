"""Sequential tests under continuous monitoring: type I error, power, coverage, harm.

Every assertion's tolerance is Monte-Carlo error: with R seeded replicates, a rate whose
true value is at most ``a`` is asserted at most ``a + 4 sqrt(a (1 - a) / R)``; the chance
that a correct test fails that is about 3e-5. Users arrive in batches of 100 and every test
is checked after every batch (the issue's "every batch of at most 100").
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from policies import ArmStats, ThompsonBeta, TrafficCap
from policies.promotion import PROMOTED, ROLLED_BACK, PromotionRule
from policies.safety import Guardrail
from policies.sequential import (
    AsymptoticCS,
    BetaBinomialCS,
    EmpiricalBernsteinCS,
    MixtureSPRT,
    OffPolicyCS,
    n_expected_for,
)
from tests.policies.monitoring import Outcome, monitor, naive_z_reject, users

ALPHA = 0.05
REPLICATES = 2000
HORIZON = 200_000
#: The user-facing tuning: the fixed-design size for +10% on a 5% base (about 59.7k users).
N_STAR = n_expected_for(mde=0.005, variance=0.05 * 0.95, alpha=ALPHA)

#: A guardrail tuned to a 5% relative drop: the fixed-design size for 0.0025 (about 239k).
N_HARM = n_expected_for(mde=0.0025, variance=0.05 * 0.95, alpha=ALPHA)

FIXED = {
    "msprt": MixtureSPRT(alpha=ALPHA, mde=0.005),
    "asymptotic-cs": AsymptoticCS(alpha=ALPHA, n_expected=N_STAR),
}
ADAPTIVE = {
    "beta-binomial-cs": BetaBinomialCS(alpha=ALPHA),
    "empirical-bernstein-cs": EmpiricalBernsteinCS(alpha=ALPHA),
    "off-policy-cs": OffPolicyCS(alpha=ALPHA, n_expected=N_STAR),
}


def ceiling(rate: float, replicates: int = REPLICATES) -> float:
    """``rate + 4 SE`` of a binomial proportion over ``replicates`` runs."""
    return rate + 4.0 * math.sqrt(rate * (1.0 - rate) / replicates)


@pytest.fixture(scope="module", params=[0.05, 0.30], ids=["base5%", "base30%"])
def aa_split(request: pytest.FixtureRequest) -> dict[str, Outcome]:
    p = request.param
    return monitor({**FIXED, **ADAPTIVE}, (p, p), replicates=REPLICATES, horizon=HORIZON, seed=31)


@pytest.fixture(scope="module", params=[0.05, 0.30], ids=["base5%", "base30%"])
def aa_bandit(request: pytest.FixtureRequest) -> dict[str, Outcome]:
    p = request.param
    return monitor(
        ADAPTIVE, (p, p), replicates=REPLICATES, horizon=HORIZON, seed=32, bandit=True, share=0.1
    )


@pytest.mark.slow
def test_type_one_error_fixed_split(aa_split: dict[str, Outcome]) -> None:
    # A/A on a 50/50 split, checked 2,000 times: every anytime-valid test keeps
    # P(ever reject) <= alpha; the peeked z-test does not.
    rates = {name: float(o.reject.mean()) for name, o in aa_split.items()}
    for name in [*FIXED, *ADAPTIVE]:
        assert rates[name] <= ceiling(ALPHA), (name, rates)
    assert rates["naive-z"] > ceiling(ALPHA), rates


@pytest.mark.slow
def test_type_one_error_under_thompson_with_a_cap(aa_bandit: dict[str, Outcome]) -> None:
    # The same on data allocated by Thompson sampling capped at 10% for the alternative:
    # the per-arm and off-policy sequences stay valid; the peeked z-test does not.
    rates = {name: float(o.reject.mean()) for name, o in aa_bandit.items()}
    for name in ADAPTIVE:
        assert rates[name] <= ceiling(ALPHA), (name, rates)
    assert rates["naive-z"] > ceiling(ALPHA), rates


@pytest.mark.slow
def test_per_arm_coverage_under_thompson(aa_bandit: dict[str, Outcome]) -> None:
    # Each arm's own sequence holds at 1 - alpha/2 uniformly over time, whatever the
    # allocation did: P(it ever excludes the arm's mean) <= alpha/2 + 4 SE.
    for name in ("beta-binomial-cs", "empirical-bernstein-cs"):
        miss = aa_bandit[name].arm_miss.mean(axis=0)
        assert np.all(miss <= ceiling(ALPHA / 2)), (name, miss)


@pytest.fixture(scope="module")
def lift() -> dict[str, Outcome]:
    # The per-arm sequences are left out: they are not built to compare (their coverage
    # is checked under the bandit above, their type I error on both allocations).
    tests = {**FIXED, "off-policy-cs": ADAPTIVE["off-policy-cs"]}
    return monitor(tests, (0.05, 0.055), replicates=REPLICATES, horizon=HORIZON, seed=33)


@pytest.mark.slow
def test_power_and_users_until_decision(lift: dict[str, Outcome]) -> None:
    # +10% relative on a 5% base, 50/50, horizon 200k, checked every 100 users. The issue's
    # bar: power >= 98% and mean users until a decision <= 76k (runs that never decide
    # count as the full 200k). Measured here (seed 33): asymptotic-cs 98.35% and 67.6k,
    # msprt 98.5% and 67.8k; off-policy-cs 97.55% and 63.2k (not held to the bar: the
    # issue sets it for the fixed-split tests). The bar is the issue's, on the estimate;
    # its Monte-Carlo SE is sqrt(0.984 * 0.016 / 2000) = 0.28 points, so the power
    # estimates clear 98% by about 1.3-1.8 SE (benchmarks/sequential.py, other seeds:
    # 98.4% both), and the users by about 8 SE.
    for name in FIXED:
        o = lift[name]
        power = float(np.isfinite(o.promote).mean())
        users = float(np.where(o.reject, o.decided, HORIZON).mean())
        assert power >= 0.98 and users <= 76_000, (name, power, users)
        # and a wrong-way decision (rolling back the better arm) stays below alpha / 2
        assert float(np.isfinite(o.rollback).mean()) <= ceiling(ALPHA / 2)


@pytest.mark.slow
def test_coverage_uniformly_over_time(lift: dict[str, Outcome]) -> None:
    # With a real difference (0.005) every sequence for the difference contains it at
    # every one of the 2,000 checks in >= 1 - alpha - 4 SE of runs.
    for name in [*FIXED, "off-policy-cs"]:
        assert lift[name].miss.mean() <= ceiling(ALPHA), name


def run_harm(*, bandit: bool, replicates: int, horizon: int, seed: int) -> dict[str, np.ndarray]:
    """An alternative 5% worse (4.75% vs 5%) watched by a conversion guardrail (the
    off-policy sequence) and the promotion rule; a rolled-back arm gets no more users."""
    test = OffPolicyCS(alpha=ALPHA, n_expected=N_HARM)
    guard = Guardrail(name="conversion", harm="decrease", test=test)
    rule = PromotionRule(test_name=test.name, horizon=horizon)
    policy = TrafficCap(policy=ThompsonBeta(), explore_share=0.1)
    mu = np.array([0.05, 0.0475])
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    b, step = replicates, 100
    status = rule.init(2, b)
    state = test.init(2, b)
    n, s = np.zeros((b, 2)), np.zeros((b, 2))
    at = np.full(b, np.inf)
    reasons: set[str] = set()
    for t in range(step, horizon + 1, step):
        pi = policy.allocation(ArmStats(n=n, sum_reward=s)) if bandit else np.full((b, 2), 0.5)
        pi[status[:, 1] == ROLLED_BACK] = (1.0, 0.0)
        arm, reward = users(rng, pi, mu, n, s, step)
        state = test.update(state, arm, reward, pi)
        status, changes = rule.step(
            status, test.evaluate(state), [(guard.name, guard.evaluate(state))], t=np.full(b, t)
        )
        for c in changes:
            if c.new == "rolled_back":
                at[c.row] = t
            reasons.add(c.reason.split(" (")[0])
    return {"status": status[:, 1], "at": at, "users_on_harmful": n[:, 1], "reasons": reasons}


@pytest.mark.slow
def test_guardrail_rolls_back_a_harmful_alternative() -> None:
    # -5% relative on a 5% base (a difference of 0.0025), horizon 1M users, 200 runs.
    # The guardrail's false-rollback rate is bounded by alpha (tested above); here we check
    # that it has the power to act, and that a bandit in charge sends far fewer users to
    # the harmful arm. Measured (seeds 41/42): 50/50 rolled back in 99.5% of runs, 112k
    # users on the harmful arm on average; bandit 11.5%, 39k users.
    split = run_harm(bandit=False, replicates=200, horizon=1_000_000, seed=41)
    bandit = run_harm(bandit=True, replicates=200, horizon=1_000_000, seed=42)
    for out in (split, bandit):
        # promoting the worse arm needs its sequence to miss: at most alpha + 4 SE of runs
        assert (out["status"] == PROMOTED).mean() <= ceiling(ALPHA, 200)
        assert "guardrail conversion: harm" in out["reasons"]
    # 50/50: the difference CS narrows below 0.0025 within 1M users in nearly every run
    # (measured 99.5%; the floor of 95% is 6 SE of a 99.5% rate over 200 runs below it).
    assert (split["status"] == ROLLED_BACK).mean() >= 0.95, split["at"]
    # Under the bandit the harmful arm gets a small, shrinking share: fewer users reach it
    # whether or not it is rolled back within the horizon (each run's count is bounded by
    # the 10% cap; compare means with 4 SE of the difference).
    a, c = split["users_on_harmful"], bandit["users_on_harmful"]
    se = math.sqrt(a.var() / a.size + c.var() / c.size)
    assert c.mean() + 4 * se < a.mean(), (a.mean(), c.mean(), se)


def test_the_naive_z_test_is_statsmodels_proportions_ztest() -> None:
    # The peeked z-test above is vectorised; it must be the test people actually run.
    from statsmodels.stats.proportion import proportions_ztest

    rng = np.random.default_rng(8)
    n = rng.integers(50, 5_000, (40, 2)).astype(np.float64)
    rate = np.stack([np.full(40, 0.05), rng.uniform(0.03, 0.08, 40)], axis=1)
    s = rng.binomial(n.astype(np.int64), rate).astype(np.float64)
    mine = naive_z_reject(n, s, ALPHA)
    assert 0 < mine.sum() < 40  # both outcomes are exercised
    for row in range(40):
        _, p = proportions_ztest(s[row, ::-1], n[row, ::-1])
        assert mine[row] == (p < ALPHA)
