"""Environments: rewards have the stated means (within Monte-Carlo error), shapes, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulators.envs import (
    ENVIRONMENTS,
    AbruptChange,
    Adversarial,
    Bernoulli,
    Delayed,
    Drift,
    Gaussian,
    Linear,
    Logistic,
    Revenue,
)

N = 200_000  # draws per arm; every mean is checked to 4 standard errors (about 6e-5 miss)

CONTEXT_FREE = [
    Bernoulli(p=[0.05, 0.3, 0.9]),
    Gaussian(mean=[0.0, -1.5, 2.0], sd=2.0),
    Revenue(conversion=[0.05, 0.1], mu=[3.0, 2.5], sigma=[1.0, 0.5]),
    AbruptChange(before=[0.2, 0.4], after=[0.6, 0.1], at=10),
    AbruptChange(before=[0.0, 1.0], after=[2.0, -1.0], at=10, family="gaussian", sd=0.5),
    Drift(start=[0.1, 0.9], end=[0.9, 0.1], steps=100),
    Adversarial(rewards=[[1.0, 0.0], [0.25, 0.75], [0.0, 1.0]]),
]


@pytest.mark.parametrize("env", CONTEXT_FREE, ids=lambda e: e.name)
@pytest.mark.parametrize("t", [0, 37, 500])
def test_sample_means_match_the_stated_means(env: object, t: int) -> None:
    rng = np.random.default_rng(t)
    means = env.means(t)  # type: ignore[attr-defined]
    assert means.shape == (1, env.n_arms)  # type: ignore[attr-defined]
    for arm in range(env.n_arms):  # type: ignore[attr-defined]
        r = env.sample(t, np.full(N, arm), rng)  # type: ignore[attr-defined]
        assert r.shape == (N,) and r.dtype == np.float64
        se = max(r.std(), 1e-12) / math.sqrt(N)
        assert abs(r.mean() - means[0, arm]) <= 4 * se + 1e-12, (arm, r.mean(), means[0, arm])
        low, high = env.reward_range  # type: ignore[attr-defined]
        assert low is None or r.min() >= low
        assert high is None or r.max() <= high


def test_closed_forms_of_the_nonstationary_means() -> None:
    abrupt = AbruptChange(before=[0.2, 0.4], after=[0.6, 0.1], at=10)
    np.testing.assert_array_equal(abrupt.means(9), [[0.2, 0.4]])
    np.testing.assert_array_equal(abrupt.means(10), [[0.6, 0.1]])
    drift = Drift(start=[0.1, 0.9], end=[0.9, 0.1], steps=100)
    np.testing.assert_allclose(drift.means(50), [[0.5, 0.5]])
    np.testing.assert_allclose(drift.means(1_000), [[0.9, 0.1]])
    revenue = Revenue(conversion=[0.1, 0.2], mu=[1.0, 0.0], sigma=[0.0, 2.0])
    np.testing.assert_allclose(revenue.means(0), [[0.1 * math.e, 0.2 * math.e**2]])


def test_adversarial_table_is_replayed_and_wraps() -> None:
    env = Adversarial(rewards=[[1.0, 0.0], [0.25, 0.75]])
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(env.sample(1, np.array([0, 1, 1]), rng), [0.25, 0.75, 0.75])
    np.testing.assert_array_equal(env.means(2), env.means(0))


@pytest.mark.parametrize("kind", [Linear, Logistic])
def test_contextual_rewards_follow_the_features(kind: type) -> None:
    theta = np.array([[0.0, 0.0, 0.0], [1.0, -0.5, 0.2], [-1.0, 0.5, 0.0]])
    env = kind(theta=theta)
    rng = np.random.default_rng(1)
    x = env.context(0, rng, N)
    assert x.shape == (N, 3) and env.dim == 3
    means = env.means(0, x)
    assert means.shape == (N, 3)
    # the best arm depends on the user
    assert len(set(np.argmax(means, axis=1).tolist())) == 3
    for arm in range(3):
        r = env.sample(0, np.full(N, arm), rng, x)
        resid = r - means[:, arm]
        se = resid.std() / math.sqrt(N)
        assert abs(resid.mean()) <= 4 * se
        # and the residual is uncorrelated with every feature (the mean is right for each x)
        for d in range(3):
            c = float(np.mean(resid * x[:, d]))
            assert abs(c) <= 4 * float(np.std(resid * x[:, d])) / math.sqrt(N)
    with pytest.raises(ValueError, match="context"):
        env.means(0, None)


@pytest.mark.parametrize("mean_delay", [0.0, 2.5, 40.0])
def test_geometric_delays_have_the_stated_mean(mean_delay: float) -> None:
    env = Delayed(env=Bernoulli(p=[0.1, 0.2]), mean_delay=mean_delay)
    d = env.delay(0, np.random.default_rng(2), N)
    assert d.dtype == np.int64 and d.min() >= 0
    # geometric on 0, 1, ... with mean m has variance m (1 + m)
    se = math.sqrt(mean_delay * (1 + mean_delay) / N)
    assert abs(d.mean() - mean_delay) <= 4 * se + 1e-12
    # everything else is the wrapped environment's
    np.testing.assert_array_equal(env.means(0), [[0.1, 0.2]])
    assert env.n_arms == 2 and env.entry.tolist() == [0, 0]


def test_fixed_delays_and_no_delay() -> None:
    rng = np.random.default_rng(3)
    assert (
        Delayed(env=Bernoulli(p=[0.1, 0.2]), mean_delay=7, kind="fixed").delay(0, rng, 5).tolist()
        == [7] * 5
    )
    assert Bernoulli(p=[0.1, 0.2]).delay(0, rng, 3).tolist() == [0, 0, 0]


def test_arms_may_enter_later() -> None:
    env = Bernoulli(p=[0.1, 0.2, 0.3], entry=[0, 0, 5_000])
    assert env.entry.tolist() == [0, 0, 5_000]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Bernoulli(p=[0.1]), "bernoulli.p"),
        (lambda: Bernoulli(p=[0.1, 1.2]), "bernoulli.p"),
        (lambda: Bernoulli(p=[0.1, float("nan")]), "bernoulli.p"),
        (lambda: Bernoulli(p=[0.1, 0.2], entry=[5, 0]), "entry"),
        (lambda: Bernoulli(p=[0.1, 0.2], entry=[0, -1]), "entry"),
        (lambda: Bernoulli(p=[0.1, 0.2], entry=[0, 1.5]), "entry"),
        (lambda: Gaussian(mean=[0.0, 1.0], sd=0.0), "gaussian.sd"),
        (lambda: Revenue(conversion=[0.1, 0.2], mu=[1.0], sigma=[1.0, 1.0]), "revenue.mu"),
        (lambda: Revenue(conversion=[0.1, 0.2], mu=[1.0, 2.0], sigma=[1.0]), "revenue.sigma"),
        (lambda: AbruptChange(before=[0.1, 0.2], after=[0.1, 0.2, 0.3], at=5), "after"),
        (lambda: AbruptChange(before=[0.1, 0.2], after=[0.1, 0.2], at=-1), "at"),
        (
            lambda: AbruptChange(before=[0.1, 0.2], after=[0.1, 0.2], at=5, family="poisson"),
            "family",
        ),
        (lambda: Drift(start=[0.1, 0.2], end=[0.3, 0.4], steps=0), "steps"),
        (lambda: Adversarial(rewards=[[0.5, 1.5]]), "rewards"),
        (lambda: Adversarial(rewards=[0.5, 0.5]), "rewards"),
        (lambda: Linear(theta=[[1.0, 2.0]]), "theta"),
        (lambda: Linear(theta=[[1.0], [2.0]], noise_sd=-1.0), "noise_sd"),
        (lambda: Logistic(theta=[[1.0], [2.0]], context_sd=0.0), "context_sd"),
        (lambda: Delayed(env=Bernoulli(p=[0.1, 0.2]), mean_delay=-1.0), "mean_delay"),
        (lambda: Delayed(env=Bernoulli(p=[0.1, 0.2]), mean_delay=1.5, kind="fixed"), "mean_delay"),
        (lambda: Delayed(env=Bernoulli(p=[0.1, 0.2]), mean_delay=1.0, kind="pareto"), "kind"),
    ],
)
def test_bad_settings_name_the_setting(make: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()  # type: ignore[operator]


def test_delayed_refuses_what_is_not_an_environment() -> None:
    inner = Delayed(env=Bernoulli(p=[0.1, 0.2]), mean_delay=1.0)
    with pytest.raises(TypeError, match=r"delayed\.env"):
        Delayed(env=inner, mean_delay=1.0)
    with pytest.raises(TypeError, match=r"delayed\.env"):
        Delayed(env="bernoulli", mean_delay=1.0)


def test_registry_names() -> None:
    assert sorted(ENVIRONMENTS) == [
        "abrupt-change", "adversarial", "bernoulli", "drift", "gaussian", "linear",
        "logistic", "revenue", "segments",
    ]  # fmt: skip
