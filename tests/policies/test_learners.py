"""Vowpal Wabbit and river learners behind the policy protocol: shapes, exact
propensities, snapshots, refusals, and beating context-free Thompson sampling where the
best arm depends on the context."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

from policies import CONTEXTUAL, RiverThompson, ThompsonBeta, VWExplore
from policies.base import Decision
from policies.river_ts import prob_best_ensemble

LEARNERS = [
    VWExplore(dim=3, bits=16),
    VWExplore(dim=3, bits=16, explore="epsilon", epsilon=0.2),
    RiverThompson(dim=3, n_boot=8),
]
IDS = ["vw-squarecb", "vw-epsilon", "river-ts"]


def trained(policy: Any, steps: int, k: int = 3, seed: int = 1, batch: int = 1) -> Any:
    """A state after ``steps`` uniformly random plays of a context-dependent environment."""
    rng = np.random.default_rng(seed)
    state = policy.init(k, batch)
    for _ in range(steps):
        x = np.concatenate([np.ones((batch, 1)), rng.normal(size=(batch, 2))], axis=1)
        arm = rng.integers(k, size=batch)
        means = 1.0 / (1.0 + np.exp(-(x[:, 1] * (arm - 1.0) + 0.3 * x[:, 2])))
        reward = (rng.random(batch) < means).astype(float)
        state = policy.update(state, Decision(arm, np.full((batch, k), 1.0 / k)), reward, x)
    return state


AT = np.array([[1.0, 0.4, -0.3]])


@pytest.mark.parametrize("policy", LEARNERS, ids=IDS)
def test_shapes_and_propensities_sum_to_one(policy: Any) -> None:
    state = trained(policy, 40, k=4, batch=3)
    assert state.batch == 3 and state.n.shape == (3, 4) and state.n.sum() == 120
    assert not state.additive and not policy.additive and policy.context_dim == 3
    x = np.repeat(AT, 3, axis=0)
    d = policy.select(state, np.random.default_rng(2), x)
    assert d.arm.shape == (3,) and d.arm.dtype == np.int64
    assert d.propensity.shape == (3, 4) and d.propensity.dtype == np.float64
    assert (d.propensity >= 0).all()
    np.testing.assert_allclose(d.propensity.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert (d.propensity[np.arange(3), d.arm] > 0).all()
    assert policy.name in CONTEXTUAL


@pytest.mark.parametrize("policy", LEARNERS, ids=IDS)
def test_selection_frequencies_match_the_propensities(policy: Any) -> None:
    # N = 20,000 selections at one context from one trained model (rows share it). Each
    # arm's frequency has standard error sqrt(p (1 - p) / N) <= 0.0035; assert within 5 of
    # them (a false alarm about once in 10^6 per arm). The allocation is recomputed for
    # every row, so this also checks that predicting does not move VW's pmf.
    state = trained(policy, 150)
    p = policy.allocation(state, AT)[0]
    assert (p > 0.01).sum() >= 2, p  # not a point mass: the test has power
    n = 20_000
    rows = state.rows(np.zeros(n, dtype=np.int64))
    d = policy.select(rows, np.random.default_rng(3), np.repeat(AT, n, axis=0))
    np.testing.assert_array_equal(d.propensity, np.broadcast_to(p, (n, 3)))
    freq = np.bincount(d.arm, minlength=3) / n
    assert (np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12).all(), (freq, p)


def test_river_allocation_is_the_law_of_bootstrapped_thompson_draws() -> None:
    # sample_arm takes one copy per arm uniformly and plays the argmax: an independent
    # mechanism. Same tolerance as above: 5 binomial standard errors at N = 20,000.
    policy = RiverThompson(dim=3, n_boot=8)
    state = trained(policy, 120)
    p = policy.allocation(state, AT)[0]
    assert (p > 0.05).sum() >= 2, p
    n = 20_000
    arms = policy.sample_arm(
        state.rows(np.zeros(n, dtype=np.int64)), np.random.default_rng(4), np.repeat(AT, n, 0)
    )
    freq = np.bincount(arms, minlength=3) / n
    assert (np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12).all(), (freq, p)


def brute_force(values: np.ndarray) -> np.ndarray:
    """P(arm k wins) by enumerating every choice of one value per arm, ties shared."""
    k, n = values.shape
    out = np.zeros(k)
    for pick in itertools.product(range(n), repeat=k):
        v = values[np.arange(k), pick]
        top = v == v.max()
        out += top / top.sum()
    return out / n**k


def test_prob_best_ensemble_is_exact_with_ties() -> None:
    # Small integer values force ties between arms and within an arm's copies.
    rng = np.random.default_rng(5)
    values = rng.integers(0, 4, size=(6, 4, 3)).astype(float)
    values[0] = 1.0  # every value tied
    got = prob_best_ensemble(values)
    for b in range(values.shape[0]):
        np.testing.assert_allclose(got[b], brute_force(values[b]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[0], 0.25, atol=1e-12)
    # Continuous values (no ties: the product-of-shares path).
    values = rng.random((4, 3, 5))
    got = prob_best_ensemble(values)
    for b in range(values.shape[0]):
        np.testing.assert_allclose(got[b], brute_force(values[b]), rtol=0, atol=1e-12)


def test_vw_pmf_is_indexed_by_arm_and_has_the_epsilon_greedy_form() -> None:
    # Arm 2 pays 1, the others 0, whatever the context: after training, epsilon-greedy's
    # pmf is exactly eps / K everywhere plus 1 - eps on arm 2 (up to VW's float32).
    policy = VWExplore(dim=3, bits=16, explore="epsilon", epsilon=0.3)
    state = policy.init(3)
    rng = np.random.default_rng(6)
    for _ in range(60):
        x = np.concatenate([[1.0], rng.normal(size=2)])[None, :]
        arm = rng.integers(3, size=1)
        reward = (arm == 2).astype(float)
        state = policy.update(state, Decision(arm, np.full((1, 3), 1 / 3)), reward, x)
    p = policy.allocation(state, AT)[0]
    np.testing.assert_allclose(p, [0.1, 0.1, 0.8], atol=1e-6)
    squarecb = VWExplore(dim=3, bits=16)
    assert squarecb.allocation(trained(squarecb, 0), AT).round(6).tolist() == [[0.333333] * 3]


def test_vw_rewards_are_scaled_to_costs_by_the_reward_range() -> None:
    # Rewards in [0, 10] fed as (10 - r) / 10 train the same model as r / 10 in [0, 1].
    unit, wide = VWExplore(dim=3, bits=16), VWExplore(dim=3, bits=16, low=0.0, high=10.0)
    a, b = unit.init(3), wide.init(3)
    rng = np.random.default_rng(7)
    for _ in range(30):
        x = np.concatenate([[1.0], rng.normal(size=2)])[None, :]
        d = Decision(rng.integers(3, size=1), np.full((1, 3), 1 / 3))
        r = rng.random(1)
        a = unit.update(a, d, r, x)
        b = wide.update(b, d, 10.0 * r, x)
    np.testing.assert_allclose(unit.allocation(a, AT), wide.allocation(b, AT), atol=1e-6)


@pytest.mark.parametrize("policy", LEARNERS, ids=IDS)
def test_snapshots_round_trip_exactly_and_keep_learning_alike(policy: Any) -> None:
    # A learner publishes bytes; a replica loads them: same allocations at any context,
    # and (VW trains deterministically; river's snapshot carries its generators) the
    # same after both learn from the same further observations.
    state = trained(policy, 60, batch=2)
    copy = policy.from_bytes(policy.to_bytes(state))
    np.testing.assert_array_equal(copy.n, state.n)
    contexts = np.random.default_rng(8).normal(size=(5, 2, 3))
    for x in contexts:
        np.testing.assert_array_equal(policy.allocation(copy, x), policy.allocation(state, x))
    d = Decision(np.array([0, 2]), np.full((2, 3), 1 / 3))
    for x in contexts:
        state = policy.update(state, d, np.array([1.0, 0.0]), x)
        copy = policy.update(copy, d, np.array([1.0, 0.0]), x)
    for x in contexts:
        np.testing.assert_array_equal(policy.allocation(copy, x), policy.allocation(state, x))


def test_snapshots_from_elsewhere_are_refused() -> None:
    vw = VWExplore(dim=3, bits=16)
    blob = vw.to_bytes(vw.init(3))
    with pytest.raises(ValueError, match=r"vw-cb: snapshot made with other VW arguments"):
        VWExplore(dim=3, bits=16, explore="epsilon").from_bytes(blob)
    with pytest.raises(ValueError, match=r"vw-cb: not a vw-cb snapshot"):
        vw.from_bytes(b"garbage")
    river = RiverThompson(dim=3, n_boot=3)
    with pytest.raises(ValueError, match=r"river-ts: snapshot has n_boot 3; accepted: 4"):
        RiverThompson(dim=3, n_boot=4).from_bytes(river.to_bytes(river.init(2)))
    with pytest.raises(ValueError, match=r"river-ts: not a river-ts snapshot"):
        river.from_bytes(b"garbage")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: VWExplore(dim=0), r"vw-cb\.dim: must be an integer >= 1 \(got 0\)"),
        (lambda: VWExplore(dim=2, explore="bag"), r"vw-cb\.explore: must be 'squarecb' or"),
        (lambda: VWExplore(dim=2, gamma_scale=0.0), r"vw-cb\.gamma_scale: must be finite and > 0"),
        (lambda: VWExplore(dim=2, epsilon=1.5), r"vw-cb\.epsilon: must be in \[0, 1\]"),
        (lambda: VWExplore(dim=2, bits=40), r"vw-cb\.bits: must be an integer in \[1, 30\]"),
        (lambda: VWExplore(dim=2, low=1.0, high=0.0), r"vw-cb\.high: must be finite bounds"),
        (lambda: RiverThompson(dim=2, n_boot=1), r"river-ts\.n_boot: must be an integer >= 2"),
        (lambda: RiverThompson(dim=2, model="forest"), r"river-ts\.model: must be 'logistic'"),
        (lambda: RiverThompson(dim=2, lr=math.nan), r"river-ts\.lr: must be finite and > 0"),
        (lambda: RiverThompson(dim=2, bootstrap="x"), r"river-ts\.bootstrap: must be 'poisson'"),
        (lambda: RiverThompson(dim=2, seed=-1), r"river-ts\.seed: must be an integer >= 0"),
    ],
)
def test_bad_hyperparameters_are_refused(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("policy", LEARNERS, ids=IDS)
def test_bad_contexts_rewards_and_additive_use_are_refused(policy: Any) -> None:
    state = policy.init(3, 2)
    rng = np.random.default_rng(9)
    good = np.ones((2, 3))
    name = policy.name
    with pytest.raises(TypeError, match=rf"{name}: needs a context of 3 numbers per row"):
        policy.select(state, rng)
    with pytest.raises(TypeError, match=rf"{name}: context must be numbers"):
        policy.select(state, rng, [["a", "b", "c"], ["d", "e", "f"]])
    with pytest.raises(ValueError, match=r"context must have shape \(2, 3\) \(got \(2, 2\)\)"):
        policy.select(state, rng, np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"context must be finite"):
        policy.select(state, rng, np.array([[1.0, np.inf, 0.0], [1.0, 0.0, 0.0]]))
    d = policy.select(state, rng, good)
    with pytest.raises(ValueError, match=rf"{name}: reward out of range"):
        policy.update(state, d, np.array([0.5, 1.5]), good)
    with pytest.raises(ValueError, match=rf"{name}: arm out of range"):
        policy.update(state, Decision(np.array([0, 3]), d.propensity), np.ones(2), good)
    with pytest.raises(TypeError, match=rf"{name}: not additive"):
        policy.increment(d, np.ones(2), good)
    with pytest.raises(TypeError, match=r"not additive"):
        _ = state + state
    with pytest.raises(TypeError, match=rf"{name}: the state is a model"):
        policy.state_from_dict(state.to_dict())
    with pytest.raises(ValueError, match=rf"{name}: n_arms must be an integer >= 2"):
        policy.init(1)
    assert state.n.sum() == 0  # nothing refused was learned


def test_vw_refuses_a_zero_propensity_for_the_played_arm() -> None:
    policy = VWExplore(dim=3, bits=16)
    d = Decision(np.array([1]), np.array([[1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"vw-cb: the played arm's propensity must be in"):
        policy.update(policy.init(3), d, np.ones(1), AT)


def play(policy: Any, steps: int, replicates: int, seed: int) -> np.ndarray:
    """Mean reward per replicate over ``steps`` rounds (the environment of test_linear).

    Each round a context ``x = (1, s)`` with ``s`` uniform in [-1, 1]; three Bernoulli
    arms with means ``0.5 + 0.3 s``, ``0.5 - 0.3 s`` and ``0.45``. No context-free policy
    can expect more than 0.5 per round; knowing ``s`` is worth 0.65.
    """
    rng, env = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    state = policy.init(3, replicates)
    total = np.zeros(replicates)
    contextual = policy.context_dim is not None
    for _ in range(steps):
        s = env.uniform(-1.0, 1.0, replicates)
        x = np.stack([np.ones(replicates), s], axis=1)
        means = np.stack([0.5 + 0.3 * s, 0.5 - 0.3 * s, np.full(replicates, 0.45)], axis=1)
        d = policy.select(state, rng, x) if contextual else policy.select(state, rng)
        reward = (env.random(replicates) < means[np.arange(replicates), d.arm]).astype(float)
        state = (
            policy.update(state, d, reward, x) if contextual else policy.update(state, d, reward)
        )
        total += reward
    return total / steps


@pytest.mark.parametrize(
    "policy",
    [
        VWExplore(dim=2, bits=16),
        VWExplore(dim=2, bits=16, explore="epsilon", epsilon=0.1),
        RiverThompson(dim=2, n_boot=8),
    ],
    ids=IDS,
)
def test_learners_beat_context_free_thompson_sampling(policy: Any) -> None:
    # R = 20 seeded replicates of 800 rounds; Thompson sampling plays the same contexts
    # and reward draws (paired). The learner's mean reward must exceed Thompson's by more
    # than 4 Monte-Carlo standard errors of the paired difference (its replicates'
    # standard deviation over sqrt(20)); with 19 degrees of freedom, t > 4 has
    # probability below 4e-4 if the learner were no better. Measured (1,000 rounds):
    # SquareCB 0.611, epsilon 0.577, river-ts 0.622 against Thompson 0.488 (SE ~0.004).
    replicates = 20
    learner = play(policy, 800, replicates, seed=11)
    context_free = play(ThompsonBeta(), 800, replicates, seed=11)
    diff = learner - context_free
    se = diff.std(ddof=1) / math.sqrt(replicates)
    assert diff.mean() > 4 * se, (learner.mean(), context_free.mean(), se)
    # No context-free policy can expect more than 0.5 per round here (see play).
    assert learner.mean() - 0.5 > 4 * learner.std(ddof=1) / math.sqrt(replicates)


def test_the_row_by_row_draw_is_policies_base_draw() -> None:
    # select draws row by row in Python; it must pick exactly what base.draw picks for the
    # same uniform, zero-probability arms and uniforms next to 1 included.
    from policies._learner_base import _draw_row
    from policies.base import draw

    rng = np.random.default_rng(12)
    for _ in range(3_000):
        p = rng.random(5) * (rng.random(5) < 0.6)
        if p.sum() == 0:
            continue
        p /= p.sum()
        u = float(np.nextafter(1.0, 0.0)) if rng.random() < 0.1 else float(rng.random())
        assert _draw_row(p.tolist(), u) == draw(p[None, :], np.array([u]))[0], (p, u)
