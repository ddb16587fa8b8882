"""Safety wrappers: the traffic cap is never exceeded; the conservative budget holds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policies import UCB1, ConservativeBudget, ThompsonBeta, TrafficCap
from policies.base import ArmStats
from policies.safety import cap_allocation, conservative_slack


def play(policy, means: np.ndarray, steps: int, replicates: int, seed: int):
    """Play ``steps`` rounds on ``replicates`` rows: arms (T, R), alternatives' share (T, R)."""
    rng, env = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    state = policy.init(means.shape[0], replicates)
    arms = np.empty((steps, replicates), dtype=np.int64)
    alt_share = np.empty((steps, replicates))
    for t in range(steps):
        d = policy.select(state, rng)
        arms[t] = d.arm
        alt_share[t] = d.propensity[:, 1:].sum(axis=1)
        reward = (env.random(replicates) < means[d.arm]).astype(np.float64)
        state = policy.update(state, d, reward)
    return arms, alt_share


def test_cap_allocation_is_exact() -> None:
    p = np.array([[0.1, 0.6, 0.3], [0.9, 0.05, 0.05], [0.0, 0.0, 1.0]])
    out = cap_allocation(p, 0.2)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    np.testing.assert_allclose(out[0], [0.8, 0.6 * 0.2 / 0.9, 0.3 * 0.2 / 0.9], rtol=1e-11)
    assert out[0, 1:].sum() <= 0.2
    np.testing.assert_array_equal(out[1], p[1])
    np.testing.assert_allclose(out[2], [0.8, 0.0, 0.2], rtol=1e-11)


@pytest.mark.slow
def test_traffic_cap_is_never_exceeded() -> None:
    # Two alternatives, one much better than control: an uncapped Thompson would send it
    # nearly all traffic. Capped at 10%, the allocation to alternatives must never exceed
    # 0.1 in any row at any step (exact), and the share of users actually sent to them
    # per run stays within binomial error: T=2000 draws each with P(alt) <= 0.1 give a
    # count whose mean is <= 200 and SD <= sqrt(2000 * 0.1 * 0.9) = 13.4; 4.5 SD over
    # 200 runs bounds the per-run maximum.
    share, steps, reps = 0.1, 2_000, 200
    means = np.array([0.3, 0.6, 0.1])
    arms, alt = play(TrafficCap(policy=ThompsonBeta(), explore_share=share), means, steps, reps, 1)
    assert alt.max() <= share
    sent = (arms > 0).sum(axis=0)
    assert sent.max() <= share * steps + 4.5 * math.sqrt(steps * share * (1 - share))
    # The cap binds: the alternatives got (close to) all of it once the winner was clear.
    assert alt[-100:].mean() > 0.99 * share


def violations(arms: np.ndarray, means: np.ndarray, alpha: float) -> np.ndarray:
    """Per run: did sum_{s<=t} mu_{I_s} < (1 - alpha) t mu_0 at any t? (Wu et al. 2016)."""
    served = np.cumsum(means[arms], axis=0)
    t = np.arange(1, arms.shape[0] + 1)[:, None]
    return (served < (1 - alpha) * t * means[0] - 1e-9).any(axis=0)


@pytest.mark.slow
@pytest.mark.parametrize("base", [UCB1(), ThompsonBeta()], ids=["ucb1", "thompson-beta"])
def test_conservative_constraint_holds_with_a_worse_alternative(base) -> None:
    # Control 0.5, one alternative worse (0.35), alpha=5%, delta=5%, T=3000, R=200.
    # The guarantee: P(constraint holds at every t) >= 1 - delta. The number of failing
    # runs is then Binomial(R, <= delta): assert <= delta R + 4 sqrt(R delta (1 - delta)).
    alpha, delta, steps, reps = 0.05, 0.05, 3_000, 200
    means = np.array([0.5, 0.35])
    policy = ConservativeBudget(policy=base, alpha=alpha, delta=delta)
    arms, _ = play(policy, means, steps, reps, 2)
    failed = violations(arms, means, alpha).sum()
    assert failed <= delta * reps + 4 * math.sqrt(reps * delta * (1 - delta))
    # The same check fails for the unwrapped policy, which explores the worse arm at once.
    raw, _ = play(base, means, 300, reps, 3)
    assert violations(raw, means, alpha).mean() > 0.5
    # And the budget did allow exploration: the alternative was tried in every run.
    assert ((arms > 0).sum(axis=0) > 0).all()


@pytest.mark.slow
def test_conservative_budget_still_finds_a_better_alternative() -> None:
    # With a clearly better alternative the budget must not freeze on control: after the
    # budget has grown, most traffic goes to the alternative (UCB1 would send ~all).
    alpha, steps, reps = 0.1, 4_000, 100
    means = np.array([0.4, 0.6])
    arms, _ = play(ConservativeBudget(policy=UCB1(), alpha=alpha), means, steps, reps, 4)
    assert (arms[-1000:] == 1).mean() > 0.8
    assert not violations(arms, means, alpha).any()


def test_slack_formula() -> None:
    # Hand-computed: control 100 x mean 0.5, alternative 10 x mean 0.2, K=2, delta=0.1.
    n = np.array([[100.0, 10.0]])
    s = np.array([[50.0, 2.0]])
    budget = ArmStats(n=n, sum_reward=s)
    rad = np.sqrt(np.log(math.pi**2 * 2 * n**2 / 0.3) / (2 * n))
    lower = np.clip(s / n - rad, 0, 1)
    upper = np.clip(s / n + rad, 0, 1)
    t = 111.0
    coef0 = 100 - 0.9 * t
    expected = 10 * lower[0, 1] + lower[0, 1] + coef0 * (lower[0, 0] if coef0 >= 0 else upper[0, 0])
    got = conservative_slack(budget, alpha=0.1, delta=0.1)
    assert got[0, 0] == 0.0
    assert got[0, 1] == pytest.approx(expected, rel=1e-12)

    # reserving for 20 rounds of the alternative: t is 130 and L_1 counts 20 times
    t20 = 130.0
    coef20 = 100 - 0.9 * t20
    expected20 = 10 * lower[0, 1] + 20 * lower[0, 1] + coef20 * upper[0, 0]
    got20 = conservative_slack(budget, alpha=0.1, delta=0.1, rounds=20)
    assert coef20 < 0 and got20[0, 1] == pytest.approx(expected20, rel=1e-12)
    with pytest.raises(ValueError, match=r"conservative-budget\.refresh"):
        ConservativeBudget(policy=UCB1(), refresh=0)

    # the budget left after these 110 rounds: no round reserved, t = 110
    t0 = 110.0
    coef0 = 100 - 0.9 * t0
    left = 10 * lower[0, 1] + coef0 * (lower[0, 0] if coef0 >= 0 else upper[0, 0])
    policy = ConservativeBudget(policy=UCB1(), alpha=0.1, delta=0.1)
    stats = policy.init(2)
    got0 = policy.remaining(type(stats)(base=stats.base, budget=budget))
    assert got0.shape == (1,) and got0[0] == pytest.approx(left, rel=1e-12)
