"""One battery that every registered policy and safety wrapper passes (STYLE.md section 6)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats as sps

from policies import REGISTRY, SAFETY, Decision, PolicyBase
from policies.safety import ConservativeBudget, TrafficCap
from policies.thompson import ThompsonBeta

K = 5
MEANS = np.array([0.3, 0.2, 0.5, 0.45, 0.1])

ALL = {**REGISTRY, **SAFETY}

#: Hyperparameters each policy must refuse, with a fragment of the message expected.
BAD_PARAMS: dict[str, list[dict[str, object]]] = {
    "epsilon-greedy": [{"epsilon": -0.1}, {"epsilon": 1.5}, {"epsilon": float("nan")}],
    "ucb1": [{"exploration": 0.0}, {"exploration": float("nan")}],
    "kl-ucb": [{"c": -1.0}],
    "moss": [{"horizon": 0}, {"horizon": 2.5}],
    "thompson-beta": [{"prior_alpha": 0.5}, {"prior_beta": 0.0}],
    "thompson-gaussian": [{"prior_sd": 0.0}, {"noise_sd": -1.0}, {"prior_mean": float("inf")}],
    "exp3": [],  # no hyperparameters
    "exp3-ix": [{"horizon": 0}, {"horizon": -5}],
    "discounted-thompson": [{"gamma": 0.0}, {"gamma": 1.5}, {"prior_alpha": 0.2}],
    "sliding-window-ucb": [{"window": 0}, {"xi": 0.4}, {"scale": 0.0}],
    "traffic-cap": [
        {"policy": ThompsonBeta(), "explore_share": 0.0},
        {"policy": ThompsonBeta(), "explore_share": 1.2},
        {"policy": "ucb1", "explore_share": 0.1},
    ],
    "conservative-budget": [
        {"policy": ThompsonBeta(), "alpha": 0.0},
        {"policy": ThompsonBeta(), "delta": 1.0},
        {"policy": REGISTRY["thompson-gaussian"](), "alpha": 0.1},
    ],
}


def bernoulli(rng: np.random.Generator | list[np.random.Generator], arm: np.ndarray) -> np.ndarray:
    u = (
        rng.random(arm.shape[0])
        if isinstance(rng, np.random.Generator)
        else np.array([g.random() for g in rng])
    )
    return (u < MEANS[arm]).astype(np.float64)


def run(policy: PolicyBase, steps: int, batch: int, seed: int, per_row: bool = False):
    """Play ``steps`` rounds on Bernoulli(MEANS); return the state and the trace."""
    if per_row:
        seqs = np.random.SeedSequence(seed).spawn(2 * batch)
        rng = [np.random.default_rng(s) for s in seqs[:batch]]
        env = [np.random.default_rng(s) for s in seqs[batch:]]
    else:
        rng, env = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    state = policy.init(K, batch)
    trace = []
    for _ in range(steps):
        d = policy.select(state, rng)
        r = bernoulli(env, d.arm)
        trace.append((d, r))
        state = policy.update(state, d, r)
    return state, trace


def assert_state_equal(a, b, rtol: float = 0.0) -> None:
    da, db = a.to_dict(), b.to_dict()
    assert da.keys() == db.keys()
    for key in da:
        assert da[key].dtype == db[key].dtype, key
        np.testing.assert_allclose(da[key], db[key], rtol=rtol, atol=0.0, err_msg=key)


@pytest.fixture(params=sorted(ALL), ids=sorted(ALL))
def policy(request: pytest.FixtureRequest) -> PolicyBase:
    return ALL[request.param].example()


def test_every_policy_lists_bad_params() -> None:
    assert set(BAD_PARAMS) == set(ALL)


def test_shapes_dtypes_and_propensities(policy: PolicyBase) -> None:
    state, trace = run(policy, steps=60, batch=7, seed=1)
    for d, _ in trace:
        assert d.arm.shape == (7,) and d.arm.dtype == np.int64
        assert d.propensity.shape == (7, K) and d.propensity.dtype == np.float64
        np.testing.assert_allclose(d.propensity.sum(axis=1), 1.0, rtol=0, atol=1e-12)
        assert (d.propensity >= 0).all()
        assert (d.propensity[np.arange(7), d.arm] > 0).all()
    assert state.batch == 7
    assert policy.allocation(state).shape == (7, K)


def test_selection_frequency_matches_allocation(policy: PolicyBase) -> None:
    state, _ = run(policy, steps=80, batch=1, seed=2)
    n = 40_000
    tiled = state.rows(np.zeros(n, dtype=np.int64))
    rng = np.random.default_rng(3)
    d = policy.select(tiled, rng)
    p = d.propensity[0]
    counts = np.bincount(d.arm, minlength=K)
    assert (counts[p == 0] == 0).all()
    live = p > 0
    if live.sum() > 1:
        # Chi-square goodness of fit over the arms with mass. Seeded; a threshold of 1e-4
        # keeps the family-wise false-alarm rate over the 12 policies near 0.1%.
        pvalue = sps.chisquare(counts[live], n * p[live] / p[live].sum()).pvalue
        assert pvalue > 1e-4, (counts, n * p)
    sampled = np.bincount(policy.sample_arm(tiled, np.random.default_rng(4)), minlength=K)
    if live.sum() > 1:
        assert sps.chisquare(sampled[live], n * p[live] / p[live].sum()).pvalue > 1e-4
    assert (sampled[~live] == 0).all()


def test_update_is_the_sum_of_increments_in_any_order(policy: PolicyBase) -> None:
    state, trace = run(policy, steps=120, batch=3, seed=5)
    if not policy.additive:
        with pytest.raises(TypeError, match="not additive"):
            policy.increment(*trace[0])
        with pytest.raises(TypeError, match="not additive"):
            state + state
        return
    incs = [policy.increment(d, r) for d, r in trace]
    total = policy.init(K, 3)
    for inc in incs:
        total = total + inc
    assert_state_equal(total, state, rtol=1e-12)
    shuffled = policy.init(K, 3)
    for i in np.random.default_rng(6).permutation(len(incs)):
        shuffled = shuffled.merge(incs[i])
    assert_state_equal(shuffled, state, rtol=1e-12)
    # Two replicas' states add up to the state of both streams.
    half = len(incs) // 2
    a = b = policy.init(K, 3)
    for inc in incs[:half]:
        a = a + inc
    for inc in incs[half:]:
        b = b + inc
    assert_state_equal(a.merge(b), state, rtol=1e-12)


def test_batch_equals_separate_runs_on_spawned_rngs(policy: PolicyBase) -> None:
    batch = 4
    state, trace = run(policy, steps=50, batch=batch, seed=7, per_row=True)
    seqs = np.random.SeedSequence(7).spawn(2 * batch)
    for row in range(batch):
        rng = [np.random.default_rng(seqs[row])]
        env = [np.random.default_rng(seqs[batch + row])]
        single = policy.init(K, 1)
        for d_batch, _ in trace:
            d = policy.select(single, rng)
            assert d.arm[0] == d_batch.arm[row]
            np.testing.assert_allclose(d.propensity[0], d_batch.propensity[row], atol=1e-14)
            single = policy.update(single, d, bernoulli(env, d.arm))
        assert_state_equal(single, state.rows([row]), rtol=1e-12)


def test_same_seed_same_trace(policy: PolicyBase) -> None:
    _, first = run(policy, steps=40, batch=2, seed=8)
    _, second = run(policy, steps=40, batch=2, seed=8)
    for (d1, r1), (d2, r2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(d1.arm, d2.arm)
        np.testing.assert_array_equal(d1.propensity, d2.propensity)
        np.testing.assert_array_equal(r1, r2)


def test_dict_round_trip_is_lossless(policy: PolicyBase) -> None:
    state, _ = run(policy, steps=30, batch=3, seed=9)
    data = state.to_dict()
    assert all(isinstance(v, np.ndarray) for v in data.values())
    back = policy.state_from_dict(data)
    assert type(back) is type(state)
    assert_state_equal(back, state)
    # Through plain lists, as a JSON-speaking store would keep it.
    assert_state_equal(policy.state_from_dict({k: v.tolist() for k, v in data.items()}), state)
    np.testing.assert_array_equal(policy.allocation(back), policy.allocation(state))
    with pytest.raises(ValueError, match="missing"):
        policy.state_from_dict({k: v for k, v in list(data.items())[1:]})
    with pytest.raises(ValueError, match="unexpected"):
        policy.state_from_dict({**data, "bogus": np.zeros(3)})


@pytest.mark.parametrize("name", sorted(ALL))
def test_bad_hyperparameters_raise_clear_errors(name: str) -> None:
    cls = ALL[name]
    for params in BAD_PARAMS[name]:
        with pytest.raises((ValueError, TypeError), match=rf"{name}\.\w+: must "):
            cls(**params)
    with pytest.raises(TypeError):
        cls(1.0)  # keyword-only
    policy = cls.example()
    for field in dataclasses.fields(policy):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(policy, field.name, None)


def test_bad_rewards_and_contexts_are_refused(policy: PolicyBase) -> None:
    state = policy.init(K, 2)
    d = policy.select(state, np.random.default_rng(10))
    with pytest.raises(ValueError, match="finite"):
        policy.update(state, d, np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="finite"):
        policy.update(state, d, np.array([0.0, -np.inf]))
    with pytest.raises(ValueError, match="shape"):
        policy.update(state, d, np.array([1.0]))
    high = policy.reward_range[1]
    if high is not None:
        with pytest.raises(ValueError, match="out of range"):
            policy.update(state, d, np.array([high + 1.0, 0.0]))
    with pytest.raises(TypeError, match="no context"):
        policy.select(state, np.random.default_rng(10), context=np.zeros((2, 3)))
    # Nothing recorded was changed by the refused updates.
    assert_state_equal(state, policy.init(K, 2))


def test_decision_is_a_named_tuple() -> None:
    d = Decision(np.array([1]), np.array([[0.5, 0.5]]))
    assert d.arm[0] == 1 and d._fields == ("arm", "propensity")


def test_wrappers_compose() -> None:
    policy = TrafficCap(
        policy=ConservativeBudget(policy=ThompsonBeta(), alpha=0.1), explore_share=0.2
    )
    state, trace = run(policy, steps=100, batch=3, seed=11)
    for d, _ in trace:
        assert (d.propensity[:, 1:].sum(axis=1) <= 0.2).all()
    assert_state_equal(policy.state_from_dict(state.to_dict()), state)


def test_sparse_increment_equals_the_dense_one(policy: PolicyBase) -> None:
    # The serving path scatters sparse increments onto the played arms; it must add up to
    # exactly what the dense increments add.
    _, trace = run(policy, steps=40, batch=1, seed=12)
    arms = np.array([d.arm[0] for d, _ in trace])
    rewards = np.array([r[0] for _, r in trace])
    props = np.array([d.propensity[0, d.arm[0]] for d, _ in trace])
    sparse = policy.sparse_increment(arms, rewards, props, K) if policy.additive else None
    if sparse is None:
        return
    dense = policy.init(K, 1)
    for d, r in trace:
        dense = dense + policy.increment(d, r)
    flat = policy.init(K, 1).to_dict()
    for key, amount in sparse.items():
        flat[key][0] += np.bincount(arms, weights=amount, minlength=K)
    assert_state_equal(policy.state_from_dict(flat), dense, rtol=1e-12)
