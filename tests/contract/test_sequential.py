"""One battery that every sequential test in ``policies.sequential.TESTS`` passes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from policies.sequential import TESTS, Evidence, SequentialTest

K = 3
MEANS = np.array([0.3, 0.3, 0.5])

#: Settings each test must refuse.
BAD_PARAMS: dict[str, list[dict[str, object]]] = {
    "msprt": [{"alpha": 0.0}, {"alpha": 1.0}, {"mde": 0.0}, {"min_samples": -1}],
    "asymptotic-cs": [{"n_expected": 0.0}, {"alpha": float("nan")}, {"min_samples": 2.5}],
    "beta-binomial-cs": [{"prior": (0.0, 1.0)}, {"low": 1.0, "high": 0.0}, {"high": None}],
    "empirical-bernstein-cs": [{"n_expected": -5.0}, {"low": None}, {"alpha": -0.1}],
    "off-policy-cs": [{"estimator": "snips"}, {"n_expected": 0}, {"low": 2.0, "high": 2.0}],
}


def observations(seed: int, batch: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arms drawn from varying allocation rows, Bernoulli(MEANS) rewards; (B, N), (B, N, K)."""
    rng = np.random.default_rng(seed)
    prop = rng.dirichlet(np.ones(K), size=(batch, n)) * 0.9 + 0.1 / K
    u = rng.random((batch, n, 1))
    arm = (np.cumsum(prop, axis=2) < u).sum(axis=2).clip(0, K - 1)
    reward = (rng.random((batch, n)) < MEANS[arm]).astype(np.float64)
    return arm, reward, prop


@pytest.fixture(params=sorted(TESTS), ids=sorted(TESTS))
def test_(request: pytest.FixtureRequest) -> SequentialTest:
    return TESTS[request.param].example()


def same(a: object, b: object) -> None:
    da, db = a.to_dict(), b.to_dict()  # type: ignore[attr-defined]
    assert da.keys() == db.keys()
    for key in da:
        np.testing.assert_allclose(da[key], db[key], rtol=1e-12, atol=1e-12, err_msg=key)


def test_every_test_lists_bad_params() -> None:
    assert set(BAD_PARAMS) == set(TESTS)


def test_evidence_shapes_and_control_column(test_: SequentialTest) -> None:
    arm, reward, prop = observations(1, 4, 200)
    ev = test_.evaluate(test_.update(test_.init(K, 4), arm, reward, prop))
    assert isinstance(ev, Evidence)
    for field in ev:
        assert field.shape == (4, K) and field.dtype == np.float64
    assert np.all(np.isnan(ev.lower[:, 0])) and np.all(np.isnan(ev.upper[:, 0]))
    assert np.all(ev.lower[:, 1:] <= ev.estimate[:, 1:]) and np.all(
        ev.estimate[:, 1:] <= ev.upper[:, 1:]
    )
    np.testing.assert_array_equal(ev.n.sum(axis=1), 200)


def test_update_is_state_plus_increment(test_: SequentialTest) -> None:
    arm, reward, prop = observations(2, 3, 150)
    state = test_.update(test_.init(K, 3), arm[:, :50], reward[:, :50], prop[:, :50])
    inc = test_.increment(state, arm[:, 50:], reward[:, 50:], prop[:, 50:])
    same(test_.update(state, arm[:, 50:], reward[:, 50:], prop[:, 50:]), state + inc)


def test_increments_of_a_split_batch_add_up(test_: SequentialTest) -> None:
    # Two replicas reading the same shared state and adding their own observations'
    # increments give the state of one replica that saw both: increments commute.
    arm, reward, prop = observations(3, 2, 120)
    state = test_.update(test_.init(K, 2), arm[:, :20], reward[:, :20], prop[:, :20])
    rest = slice(20, None)
    whole = test_.increment(state, arm[:, rest], reward[:, rest], prop[:, rest])
    order = np.random.default_rng(0).permutation(100) + 20
    a, b = order[:37], order[37:]
    parts = test_.increment(state, arm[:, a], reward[:, a], prop[:, a]) + test_.increment(
        state, arm[:, b], reward[:, b], prop[:, b]
    )
    same(whole, parts)


def test_batch_rows_are_independent(test_: SequentialTest) -> None:
    arm, reward, prop = observations(4, 5, 80)
    together = test_.update(test_.init(K, 5), arm, reward, prop)
    for row in range(5):
        alone = test_.update(
            test_.init(K, 1), arm[row : row + 1], reward[row : row + 1], prop[row : row + 1]
        )
        same(together.rows([row]), alone)


def test_observe_in_place_equals_updates_one_at_a_time(test_: SequentialTest) -> None:
    arm, reward, prop = observations(5, 1, 200)
    live = test_.init(K, 1)
    pure = test_.init(K, 1)
    for i in range(200):
        test_.observe(live, int(arm[0, i]), float(reward[0, i]), prop[0, i])
        pure = test_.update(pure, arm[:, i : i + 1], reward[:, i : i + 1], prop[:, i : i + 1])
    same(live, pure)


def test_dict_round_trip_and_merge(test_: SequentialTest) -> None:
    arm, reward, prop = observations(6, 2, 60)
    state = test_.update(test_.init(K, 2), arm, reward, prop)
    data = {k: v.tolist() for k, v in state.to_dict().items()}
    back = test_.state_from_dict(data)
    same(back, state)
    same(state.merge(back), state + state)
    assert type(test_.evaluate(back)) is Evidence


@pytest.mark.parametrize("name", sorted(TESTS))
def test_bad_settings_raise_clear_errors(name: str) -> None:
    for bad in BAD_PARAMS[name]:
        with pytest.raises(ValueError, match=name):
            TESTS[name](**bad)  # type: ignore[arg-type]


def test_bad_observations_are_refused_and_change_nothing(test_: SequentialTest) -> None:
    state = test_.update(test_.init(K, 1), [[0, 1, 2]], [[1.0, 0.0, 1.0]], np.full((1, K), 1 / K))
    before = state.to_dict()
    prop = np.full(K, 1 / K)
    bad_calls = [
        (5, 1.0, prop, "arm"),
        (-1, 1.0, prop, "arm"),
        (1, float("nan"), prop, "reward must be finite"),
    ]
    if test_.low is not None:
        bad_calls.append((1, 1.5, prop, "reward must be in"))
    if test_.needs_propensity:
        bad_calls += [
            (1, 1.0, None, "propensity"),
            (1, 1.0, np.array([0.5, 0.0, 0.5]), "propensity"),
            (1, 1.0, np.array([0.5, 0.5]), "propensity"),
        ]
    for arm, reward, p, match in bad_calls:
        with pytest.raises(ValueError, match=match):
            test_.observe(state, arm, reward, p)
    with pytest.raises(ValueError, match="row"):
        test_.observe(state, 1, 1.0, prop, row=1)
    with pytest.raises(ValueError, match="shape"):
        test_.update(state, [[0, 1]], [[1.0]], np.full((1, K), 1 / K))
    with pytest.raises(ValueError, match="reward must be finite"):
        test_.update(state, [[0, 1]], [[1.0, np.inf]], np.full((1, K), 1 / K))
    for key, value in state.to_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_settings_are_frozen(test_: SequentialTest) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        test_.alpha = 0.1  # type: ignore[misc]
