"""Contextual policies in the simulators: the segments environment, the runner passing each
user's context to the policy and measuring regret against each user's best arm, scenario
files, and the shipped example."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from policies import (
    ConservativeBudget,
    Decision,
    LinTS,
    LinUCB,
    ThompsonBeta,
    TrafficCap,
)
from simulators.config import ScenarioError, load_scenario, scenario
from simulators.envs import ENVIRONMENTS, Bernoulli, Delayed, Segments
from simulators.runner import Scenario, run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# examples/contextual.toml's table: the best arm is 1 on mobile, 2 on desktop, 0 on tablet
P = [[0.10, 0.14, 0.06], [0.10, 0.06, 0.15], [0.10, 0.08, 0.09]]
WEIGHTS = [0.50, 0.35, 0.15]
ENV = Segments(p=P, weights=WEIGHTS, segments=["mobile", "desktop", "tablet"])
# Any context-free policy plays, at step t, an arm chosen from the past only (independent of
# the user's device), so its expected regret per user is at least the gap between the best
# arm per device and the best arm on average: 0.1375 - 0.103 = 0.0345.
GAP = ENV.oracle_mean() - float(ENV.population_means().max())


def se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(x.size))


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Means of two independent samples agree within 4 standard errors of the difference."""
    return abs(a.mean() - b.mean()) <= 4 * math.hypot(se(a), se(b)) + 1e-9


# ---------------------------------------------------------------------------- environment


def test_segments_encode_the_device_and_draw_it_with_its_weight() -> None:
    n = 200_000
    x = ENV.context(0, np.random.default_rng(1), n)
    seg = ENV.segment(x)
    # the context is exactly (1, [s == 1], [s == 2])
    expected = np.column_stack([np.ones(n), seg == 1, seg == 2]).astype(float)
    np.testing.assert_array_equal(x, expected)
    assert ENV.dim == 3 and ENV.n_arms == 3 and ENV.reward_range == (0.0, 1.0)
    # each device's share within 4 binomial SE of its weight
    for s, w in enumerate(WEIGHTS):
        assert abs((seg == s).mean() - w) <= 4 * math.sqrt(w * (1 - w) / n)
    np.testing.assert_array_equal(ENV.means(0, x), np.asarray(P)[seg])
    assert ENVIRONMENTS["segments"] is Segments


@pytest.mark.parametrize("arm", [0, 1, 2])
def test_segments_rewards_have_each_segments_probability(arm: int) -> None:
    n = 300_000
    rng = np.random.default_rng(arm)
    x = ENV.context(0, rng, n)
    seg = ENV.segment(x)
    r = ENV.sample(0, np.full(n, arm), rng, x)
    assert set(np.unique(r).tolist()) <= {0.0, 1.0}
    for s in range(3):
        got, p = r[seg == s], P[s][arm]
        # Bernoulli(p) mean of m draws: within 4 SE, sqrt(p (1 - p) / m)
        assert abs(got.mean() - p) <= 4 * math.sqrt(p * (1 - p) / got.size), (s, got.mean(), p)


def test_segments_closed_forms() -> None:
    np.testing.assert_allclose(ENV.population_means(), [0.1, 0.103, 0.096])
    assert ENV.oracle_mean() == pytest.approx(0.5 * 0.14 + 0.35 * 0.15 + 0.15 * 0.10)
    uniform = Segments(p=[[0.1, 0.2], [0.3, 0.0]])
    np.testing.assert_allclose(uniform.weights, [0.5, 0.5])
    assert uniform.segments == ("segment-0", "segment-1")


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"p": [0.1, 0.2]}, "segments.p:"),
        ({"p": [[0.1, 0.2]]}, "segments.p:"),
        ({"p": [[0.1], [0.2]]}, "segments.p:"),
        ({"p": [[0.1, 1.2], [0.1, 0.2]]}, "segments.p:"),
        ({"p": [[0.1, "a"], [0.1, 0.2]]}, "segments.p:"),
        ({"p": P, "weights": [0.5, 0.5]}, "segments.weights:"),
        ({"p": P, "weights": [0.5, 0.4, 0.2]}, "segments.weights:"),
        ({"p": P, "weights": [1.5, -0.6, 0.1]}, "segments.weights:"),
        ({"p": P, "segments": ["a", "a", "b"]}, "segments.segments:"),
        ({"p": P, "segments": "abc"}, "segments.segments:"),
        ({"p": P, "entry": [5, 0, 0]}, "segments.entry:"),
    ],
)
def test_segments_refuse_bad_parameters(params: dict[str, Any], where: str) -> None:
    with pytest.raises(ValueError, match=f"^{where}"):
        Segments(**params)


def test_segments_refuse_a_context_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match=r"needs a \(B, 3\) context"):
        ENV.means(0, np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"needs a \(B, 3\) context"):
        ENV.means(0, None)


# ---------------------------------------------------------------------------- runner


@dataclass(frozen=True)
class Recording:
    """An environment that records each step's segments and arms played (per replicate)."""

    env: Any
    seen: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.env, attr)

    def sample(self, t: int, arm: Any, rng: Any, context: Any = None) -> Any:
        self.seen.append((self.env.segment(context), np.array(arm, copy=True)))
        return self.env.sample(t, arm, rng, context)


@pytest.mark.parametrize(
    "policy",
    [ThompsonBeta(), LinUCB(dim=3, low=0.0, high=1.0)],
    ids=["thompson-beta", "lin-ucb"],
)
def test_regret_is_against_the_best_arm_for_each_users_context(policy: Any) -> None:
    # Exact: from the recorded devices and arms, sum p[s][best of s] - p[s][arm] per
    # replicate. Against the single best arm on average the figure would differ.
    env = Recording(ENV)
    res = run(Scenario(env=env, policy=policy, steps=300, replicates=50, seed=2))
    p = np.asarray(P)
    seg = np.stack([s for s, _ in env.seen])  # (T, B)
    arm = np.stack([a for _, a in env.seen])
    regret = (p.max(axis=1)[seg] - p[seg, arm]).sum(axis=0)
    np.testing.assert_allclose(res.regret, regret, rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.loss_vs_control, (p[seg, 0] - p[seg, arm]).sum(axis=0))
    np.testing.assert_array_equal(res.harmful_pulls, (p[seg, arm] < p[seg, 0]).sum(axis=0))
    for k in range(3):
        np.testing.assert_array_equal(res.pulls[:, k], (arm == k).sum(axis=0))
    # against the best arm on average (the means without contexts), it would be about
    # GAP * T = 10.4 less
    pop = ENV.population_means()
    naive = (pop.max() - pop[arm]).sum(axis=0)
    assert res.regret.mean() - naive.mean() > 5.0
    # the curve over time ends at the per-replicate figure, its sd is the replicates' sd
    assert res.regret_curve[-1] == pytest.approx(res.regret.mean())
    assert res.regret_sd is not None
    assert res.regret_sd[-1] == pytest.approx(res.regret.std(ddof=1))


@pytest.mark.slow
def test_contextual_policies_beat_any_context_free_one() -> None:
    # 2,000 users, 100 replicates each. A context-free policy's expected regret is at least
    # GAP * T = 69.0 (see GAP); Thompson sampling's mean must not be below that by more
    # than 4 SE (a true lower bound: a 3e-5 chance of a false alarm). LinTS and LinUCB
    # learn the best arm per device: each mean + 4 SE must lie below that bound, so they
    # beat every context-free policy, and their mean reward beats Thompson's by more than
    # 4 SE of the difference (rewards per user: oracle - regret / T, same oracle).
    # Measured (seed 11): regret 74.9 (SE 0.3, thompson-beta), 29.1 (SE 1.4, lin-ts),
    # 28.8 (SE 0.8, lin-ucb).
    steps, b = 2_000, 100
    bound = GAP * steps
    regrets = {}
    for name, policy in {
        "thompson-beta": ThompsonBeta(),
        "lin-ts": LinTS(dim=3, noise_sd=0.3, low=0.0, high=1.0),
        "lin-ucb": LinUCB(dim=3, low=0.0, high=1.0),
    }.items():
        res = run(Scenario(env=ENV, policy=policy, steps=steps, replicates=b, seed=11))
        regrets[name] = res.regret
    ts = regrets["thompson-beta"]
    assert ts.mean() >= bound - 4 * se(ts), (ts.mean(), bound)
    for name in ("lin-ts", "lin-ucb"):
        r = regrets[name]
        assert r.mean() + 4 * se(r) < bound, (name, r.mean(), bound)
        gain = (ts.mean() - r.mean()) / steps  # reward per user, contextual minus Thompson
        assert gain > 4 * math.hypot(se(ts), se(r)) / steps, (name, gain)


def reference(
    env: Any, policy: Any, steps: int, replicates: int, seed: int, refresh: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """One replicate at a time (batch of 1), one step at a time: each user's context to
    the allocation (from the state at the last refresh) and to the update, rewards applied
    when their delay ends. Regret against each user's best arm, pulls per arm."""
    k = env.n_arms
    regrets, pulls = np.zeros(replicates), np.zeros((replicates, k))
    for r in range(replicates):
        rng = np.random.default_rng([seed, r])
        state = snap = policy.init(k, 1)
        pending: dict[int, list[tuple[int, float, np.ndarray, np.ndarray]]] = {}
        for t in range(steps):
            x = env.context(t, rng, 1)
            if t % refresh == 0:
                snap = state
            p = policy.allocation(snap, x)[0]
            arm = int(rng.choice(k, p=p / p.sum()))
            reward = float(env.sample(t, np.array([arm]), rng, x)[0])
            means = env.means(t, x)[0]
            regrets[r] += means.max() - means[arm]
            pulls[r, arm] += 1
            delay = int(env.delay(t, rng, 1)[0])
            pending.setdefault(t + delay, []).append((arm, reward, p, x))
            for a, y, prop, xx in pending.pop(t, []):
                decision = Decision(np.array([a]), prop[None, :])
                state = policy.update(state, decision, np.array([y]), xx)
    return regrets, pulls


CASES = {
    "lin-ts": (ENV, LinTS(dim=3, noise_sd=0.3, low=0.0, high=1.0), 1),
    "lin-ucb-capped-refresh-10": (
        ENV,
        TrafficCap(policy=LinUCB(dim=3, low=0.0, high=1.0), explore_share=0.5),
        10,
    ),
    "lin-ts-delayed": (Delayed(env=ENV, mean_delay=5.0), LinTS(dim=3, low=0.0, high=1.0), 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_batch_of_b_agrees_with_b_runs_of_batch_one(case: str) -> None:
    # 400 replicates in lockstep against 80 one-by-one runs (batch 1), 150 users: mean
    # regret and mean pulls of every arm agree within 4 SE of the difference (a 6e-5
    # chance of a false alarm per comparison if both are right).
    env, policy, refresh = CASES[case]
    steps = 150
    res = run(
        Scenario(env=env, policy=policy, steps=steps, replicates=400, seed=1, refresh_every=refresh)
    )
    regrets, pulls = reference(env, policy, steps, 80, seed=2, refresh=refresh)
    assert close(res.regret, regrets), (res.regret.mean(), regrets.mean())
    for arm in range(3):
        assert close(res.pulls[:, arm], pulls[:, arm]), (arm, res.pulls[:, arm].mean())
    np.testing.assert_allclose(res.pulls.sum(axis=1), steps)


@pytest.mark.slow
def test_safety_stack_around_lin_ts() -> None:
    # LinTS and, for comparison, Thompson sampling, each inside a conservative budget
    # (alpha = 10%, delta = 5%) inside a 20% traffic cap; 1,500 users, 150 replicates.
    # The cap bounds every allocation row, so the expected share of alternatives is <= 0.2:
    # the replicates' mean share may exceed it by at most 4 SE. Wu et al. 2016: the
    # constraint served >= 0.9 control breaks with probability <= delta, so the rate must be
    # <= 0.05 + 4 binomial SE (sqrt(0.05 * 0.95 / 150) = 0.018). The budget keeps both near
    # control (their exploration is what it allows, about alpha), but what LinTS explores it
    # spends on each device's best arm: its mean regret is below the stacked Thompson
    # sampling's by more than 4 SE of the difference. Measured (seed 5): alternatives' share
    # 0.099 for both, no violation, regret 55.0 against 56.3 (SE 0.10 and 0.07; control
    # alone: 56.25).
    steps, b, alpha = 1_500, 150, 0.1
    regrets = {}
    for inner in (LinTS(dim=3, low=0.0, high=1.0), ThompsonBeta()):
        budget = ConservativeBudget(policy=inner, alpha=alpha, delta=0.05)
        policy = TrafficCap(policy=budget, explore_share=0.2)
        res = run(
            Scenario(env=ENV, policy=policy, steps=steps, replicates=b, seed=5, budget_alpha=alpha)
        )
        share = 1.0 - res.pulls[:, 0] / steps
        assert share.mean() <= 0.2 + 4 * se(share), (inner.name, share.mean())
        assert res.violated.mean() <= 0.05 + 4 * math.sqrt(0.05 * 0.95 / b), inner.name
        regrets[inner.name] = res.regret
    lin, ts = regrets["lin-ts"], regrets["thompson-beta"]
    assert ts.mean() - lin.mean() > 4 * math.hypot(se(ts), se(lin)), (lin.mean(), ts.mean())


def test_scenario_refuses_a_contextual_policy_without_contexts() -> None:
    with pytest.raises(ValueError, match=r"^scenario\.policy: lin-ts needs a context of 3"):
        Scenario(env=Bernoulli(p=[0.1, 0.2]), policy=LinTS(dim=3), steps=10)
    with pytest.raises(ValueError, match=r"^scenario\.policy\.dim: .*width 3 \(got 2\)"):
        Scenario(env=ENV, policy=TrafficCap(policy=LinTS(dim=2), explore_share=0.2), steps=10)


# ---------------------------------------------------------------------------- config

BASE: dict[str, Any] = {
    "steps": 50,
    "replicates": 5,
    "env": {"kind": "segments", "p": P, "weights": WEIGHTS},
    "policy": {"name": "lin-ts"},
}


def with_(**changes: Any) -> dict[str, Any]:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            raw.setdefault(section, {})[key] = value
        else:
            raw[section] = value
    return raw


def test_a_contextual_policy_takes_its_width_and_bounds_from_the_environment() -> None:
    sc = scenario(with_(policy={"name": "lin-ucb", "alpha": 0.5})).scenario
    assert sc.policy == LinUCB(dim=3, alpha=0.5, low=0.0, high=1.0)
    sc = scenario(with_(policy__dim=3, policy__low=-1.0)).scenario
    assert sc.policy == LinTS(dim=3, low=-1.0, high=1.0)
    # a conservative budget needs bounded rewards: from the environment's, it builds
    sc = scenario(
        with_(safety={"explore_share": 0.2, "conservative_alpha": 0.05}, budget_alpha=0.05)
    ).scenario
    assert isinstance(sc.policy, TrafficCap)
    assert sc.policy.policy.policy == LinTS(dim=3, low=0.0, high=1.0)  # type: ignore[attr-defined]
    # context-free policies run on contextual environments too (given no context)
    assert scenario(with_(policy={"name": "thompson-beta"})).scenario.policy == ThompsonBeta()
    delayed = with_(env__delay={"mean_delay": 3})
    assert scenario(delayed).scenario.policy.context_dim == 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"policy__dim": 4}, r"^policy\.dim: must equal .*'segments'.* 3 \(got 4\)"),
        ({"policy__dim": True}, r"^policy\.dim: must equal"),
        (
            {"env": {"kind": "bernoulli", "p": [0.1, 0.2]}},
            r"^policy\.name: lin-ts is contextual .* env kind 'bernoulli' draws none",
        ),
        ({"policy__noise_sd": -1.0}, r"^policy\.noise_sd: must be finite and > 0"),
        ({"policy__alpha": 1.0}, r"^policy\.alpha: unknown key"),
        ({"policy": {"name": "lin-tss"}}, r"^policy\.name: unknown .*lin-ts, lin-ucb"),
        ({"env__p": [[0.1, 2.0], [0.1, 0.1]]}, r"^env\.p: every probability"),
        ({"env__weights": [0.5, 0.5]}, r"^env\.weights: must be 3 probabilities"),
        ({"env__segments": ["a", "b"]}, r"^env\.segments: must be 3 distinct names"),
        ({"env__arms": ["control", "x"]}, r"^env\.arms: must be 3 distinct names"),
    ],
)
def test_contextual_config_errors_name_the_dotted_path(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ScenarioError, match=message):
        scenario(with_(**changes))


def test_the_example_scenario_loads() -> None:
    spec = load_scenario(EXAMPLES / "contextual.toml", replicates=7, seed=9)
    assert spec.name == "contextual"
    assert spec.arm_names == ("control", "compact", "rich")
    sc = spec.scenario
    assert (sc.replicates, sc.seed) == (7, 9)
    assert sc.policy == LinTS(dim=3, noise_sd=0.3, low=0.0, high=1.0)
    np.testing.assert_array_equal(sc.env.p, P)
    np.testing.assert_array_equal(sc.env.weights, WEIGHTS)
    assert sc.env.segments == ("mobile", "desktop", "tablet")
    # the best arm differs by device: 1 on mobile, 2 on desktop, 0 on tablet
    assert np.argmax(np.asarray(sc.env.p), axis=1).tolist() == [1, 2, 0]


def test_autoexp_simulate_runs_the_example(tmp_path: Path) -> None:
    from autoexp.cli import main

    out = tmp_path / "contextual"
    args = ["simulate", str(EXAMPLES / "contextual.toml"), "--replicates", "4", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    assert {p.name for p in out.glob("*.png")} == {
        "00-contextual-regret.png",
        "00-contextual-allocation.png",
        "00-contextual-loss.png",
    }
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 3
