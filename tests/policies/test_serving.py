"""The serving path: cached allocation, buffered additive updates."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from policies import EXP3, REGISTRY, Decision, SlidingWindowUCB, ThompsonBeta
from policies.serving import Server

MEANS = np.array([0.2, 0.5, 0.35, 0.1])


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("every", [1, 7])
def test_server_state_equals_policy_updates(name: str, every: int) -> None:
    # Whatever the cadence, the server's state after refresh is the policy's own state
    # after the same decisions and rewards.
    policy = REGISTRY[name].example()
    server = Server(policy, 4, rng=np.random.default_rng(1), refresh_every=every)
    env = np.random.default_rng(2)
    state = policy.init(4)
    for _ in range(63):
        arm, propensity, version = server.select()
        assert propensity == server.allocation[arm] > 0
        reward = float(env.random() < MEANS[arm])
        d = Decision(np.array([arm]), server._rows[version][None])
        state = policy.update(state, d, np.array([reward]))
        server.update(arm, reward, version)
    server.refresh()
    for key, value in state.to_dict().items():
        np.testing.assert_allclose(server.stats.to_dict()[key], value, rtol=1e-12, err_msg=key)


def test_draws_follow_the_cached_allocation() -> None:
    policy = ThompsonBeta()
    state = policy.init(4)
    state = state + policy.increment(
        Decision(np.array([1]), np.full((1, 4), 0.25)), np.array([1.0])
    )
    server = Server(policy, 4, rng=np.random.default_rng(3), stats=state, refresh_every=10**9)
    n = 50_000
    counts = np.bincount([server.select()[0] for _ in range(n)], minlength=4)
    # Seeded chi-square goodness of fit against the exact allocation.
    assert sps.chisquare(counts, n * server.allocation).pvalue > 1e-4


def test_late_rewards_use_the_propensity_they_were_drawn_with() -> None:
    policy = EXP3()
    server = Server(policy, 3, rng=np.random.default_rng(4), refresh_every=1)
    arm, p_old, old = server.select()
    for _ in range(5):
        a, _, v = server.select()
        server.update(a, 1.0, v)
    before = server.stats.sum_loss.copy()
    server.update(arm, 0.0, old)  # arrives after five refreshes
    np.testing.assert_allclose(server.stats.sum_loss[0, arm] - before[0, arm], 1.0 / p_old)


def test_errors() -> None:
    with pytest.raises(ValueError, match="refresh_every"):
        Server(ThompsonBeta(), 3, rng=np.random.default_rng(0), refresh_every=0)
    with pytest.raises(ValueError, match="batch 1"):
        Server(ThompsonBeta(), 3, rng=np.random.default_rng(0), stats=ThompsonBeta().init(3, 2))
    server = Server(ThompsonBeta(), 3, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown allocation version"):
        server.update(0, 1.0, 99)
    server = Server(SlidingWindowUCB(window=5), 3, rng=np.random.default_rng(0), refresh_every=4)
    arm, _, v = server.select()
    server.update(arm, 0.5, v)
    with pytest.raises(ValueError, match="finite"):
        server.update(arm, float("nan"), v)
