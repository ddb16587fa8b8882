"""Scenario and sweep files: what they build, and the dotted path of every bad key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from policies import ConservativeBudget, OffPolicyCS, ThompsonBeta, TrafficCap
from simulators.config import ScenarioError, load_scenario, load_sweep, scenario
from simulators.envs import Bernoulli, Delayed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BASE = {
    "steps": 100,
    "replicates": 10,
    "env": {"kind": "bernoulli", "p": [0.3, 0.4]},
    "policy": {"name": "thompson-beta"},
}


def with_(**changes: object) -> dict[str, object]:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for dotted, value in changes.items():
        keys = dotted.split("__")
        node = raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})  # type: ignore[assignment]
        node[keys[-1]] = value
    return raw


def test_a_full_scenario_builds_the_policy_stack() -> None:
    spec = scenario(
        with_(
            refresh_every=50,
            safety={"explore_share": 0.2, "conservative_alpha": 0.02},
            test={"name": "off-policy-cs", "n_expected": 500},
            guardrails=[{"name": "conv", "harm": "decrease"}],
            rule={"margin": 0.01},
        )
    )
    sc = spec.scenario
    assert isinstance(sc.policy, TrafficCap) and sc.policy.explore_share == 0.2
    budget = sc.policy.policy
    assert isinstance(budget, ConservativeBudget)
    assert (budget.alpha, budget.delta, budget.refresh) == (0.02, 0.05, 50)
    assert isinstance(budget.policy, ThompsonBeta)
    assert sc.budget_alpha == 0.02  # the constraint checked is the budget's own
    assert isinstance(sc.test, OffPolicyCS) and sc.test.n_expected == 500
    assert sc.guardrails[0].name == "conv" and sc.rule is not None and sc.rule.margin == 0.01
    assert spec.arm_names == ("control", "alt-1")


def test_delay_and_arm_names() -> None:
    spec = scenario(
        with_(
            env={
                "kind": "bernoulli",
                "p": [0.1, 0.2],
                "arms": ["a", "b"],
                "delay": {"mean_delay": 3},
            }
        )
    )
    assert isinstance(spec.scenario.env, Delayed)
    assert isinstance(spec.scenario.env.env, Bernoulli)
    assert spec.arm_names == ("a", "b")


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (with_(stepz=5), r"^stepz: unknown key; accepted: name, description, steps"),
        ({k: v for k, v in BASE.items() if k != "steps"}, r"^steps: missing"),
        (with_(steps="many"), r"^steps: must be an int \(got 'many'\)"),
        (with_(steps=0), r"^steps: must be an integer >= 1 \(got 0\)"),
        (with_(env__kind="bernouli"), r"^env\.kind: unknown \(got 'bernouli'\); accepted: "),
        (with_(env__q=1), r"^env\.q: unknown key; accepted: p, entry"),
        (with_(env__p=[0.3, 1.5]), r"^env\.p: every value must be finite and in \[0\.0, 1\.0\]"),
        (with_(env__p=[0.3, 10**400]), r"^env: "),  # past a float: was an OverflowError
        (with_(env__arms=["a"]), r"^env\.arms: must be 2 distinct names"),
        (with_(env__delay=3), r"^env\.delay: must be a table"),
        (with_(policy__name="thompson"), r"^policy\.name: unknown \(got 'thompson'\)"),
        (
            {**BASE, "policy": {"prior_alpha": 1.0}},
            r"^policy\.name: missing; accepted: discounted-thompson, epsilon-greedy",
        ),
        (with_(policy__prior_alpha=-1.0), r"^policy\.prior_alpha: must be"),
        (with_(policy__gamma=0.9), r"^policy\.gamma: unknown key; accepted: prior_alpha"),
        (with_(safety__explore=0.1), r"^safety\.explore: unknown key; accepted: explore_share"),
        (
            with_(safety__explore_share=2.0),
            r"^safety\.explore_share: must be in \(0, 1\] \(got 2\.0\)$",
        ),
        (
            with_(safety__conservative_alpha=0.0),
            r"^safety\.conservative_alpha: must be in \(0, 1\) \(got 0\.0\)$",
        ),
        (with_(test={"name": "off-policy-cs", "n_expected": -5}), r"^test\.n_expected: must be"),
        (with_(test="msprt"), r"^test: must be a table with a name"),
        (
            with_(test={"name": "msprt", "mde": 0.1}, guardrails=[{"name": "g", "harm": "up"}]),
            r"^guardrails\[0\]\.harm: must be 'increase' or 'decrease' \(got 'up'\)",
        ),
        (with_(guardrails=[{"name": "g"}]), r"^guardrails: need a \[test\]"),
        (with_(rule={"margin": 0.1}), r"^rule: needs a test to read evidence from"),
        (with_(budget_alpha=2.0), r"^budget_alpha: must be in \(0, 1\)"),
    ],
)
def test_bad_scenarios_name_the_dotted_path(raw: dict[str, object], match: str) -> None:
    with pytest.raises(ScenarioError, match=match):
        scenario(raw)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('steps = 10\n[env]\nkind = "bernoulli"\np = [0.1, 0.2]\n[policy]\nname = "x"\n')
    with pytest.raises(ScenarioError, match=r"bad\.toml: policy\.name: unknown"):
        load_scenario(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("steps = = 1\n")
    with pytest.raises(ScenarioError, match=r"broken\.toml: not valid TOML"):
        load_scenario(broken)
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario(tmp_path / "missing.toml")


@pytest.mark.parametrize("name", ["winner", "harmful", "three-arms"])
def test_example_scenarios_load(name: str) -> None:
    spec = load_scenario(EXAMPLES / f"{name}.toml", replicates=7, seed=9)
    assert spec.name == name
    assert (spec.scenario.replicates, spec.scenario.seed) == (7, 9)


def test_sweep_expands_the_grid_with_spawned_seeds(tmp_path: Path) -> None:
    spec = load_sweep(EXAMPLES / "sweep.toml")
    assert len(spec.cells) == 24
    assert spec.params == (
        "safety.explore_share",
        "safety.conservative_alpha",
        "policy.name",
        "test",
    )
    assert spec.labels[0]["test"] == "off-policy-cs (n_expected=3000)"
    cells = [spec.spec(i).scenario for i in range(len(spec.cells))]
    assert {c.spawn_key for c in cells} == {(i,) for i in range(24)}
    shares = sorted({c.policy.explore_share for c in cells})
    assert shares == [0.05, 0.1, 0.2]
    # cell i's streams are SeedSequence(seed).spawn(n)[i]
    seq = np.random.SeedSequence(cells[5].seed, spawn_key=cells[5].spawn_key)
    assert seq.generate_state(2).tolist() == (
        np.random.SeedSequence(cells[5].seed).spawn(24)[5].generate_state(2).tolist()
    )


def test_bad_sweeps_name_the_grid_key(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('base = "nope.toml"\n[grid]\n"safety.explore_share" = [0.1]\n')
    with pytest.raises(ScenarioError, match=r"s\.toml: base: .*no such file"):
        load_sweep(f)
    f.write_text(f'base = "{EXAMPLES / "winner.toml"}"\n[grid]\n"safety.explore_share" = 0.1\n')
    with pytest.raises(ScenarioError, match=r'grid\."safety\.explore_share": must be a non-empty'):
        load_sweep(f)
    f.write_text(f'base = "{EXAMPLES / "winner.toml"}"\n[grid]\n"policy.name" = ["ucb1", "nope"]\n')
    with pytest.raises(ScenarioError, match=r"cell 1 \(policy\.name=nope\): policy\.name: unknown"):
        load_sweep(f)
    f.write_text(f'base = "{EXAMPLES / "winner.toml"}"\n[grid]\n"steps.x" = [1]\n')
    with pytest.raises(ScenarioError, match=r'grid\."steps\.x": steps: is not a table'):
        load_sweep(f)


ENV_TABLES = {
    "gaussian": {"kind": "gaussian", "mean": [0.0, 0.5], "sd": 1.0},
    "revenue": {"kind": "revenue", "conversion": [0.1, 0.2], "mu": [0.0, 0.1], "sigma": [1, 1]},
    "abrupt-change": {"kind": "abrupt-change", "before": [0.3, 0.6], "after": [0.6, 0.3], "at": 50},
    "drift": {"kind": "drift", "start": [0.2, 0.8], "end": [0.8, 0.2], "steps": 100},
    "linear": {"kind": "linear", "theta": [[0.0, 0.0], [0.5, -0.5]], "noise_sd": 0.5},
    "logistic": {"kind": "logistic", "theta": [[0.0, 0.0], [0.5, -0.5]]},
    "delayed": {"kind": "bernoulli", "p": [0.3, 0.5], "delay": {"mean_delay": 5}},
    "adversarial": {"kind": "adversarial", "rewards": "rewards.csv"},
}
POLICY = {
    "gaussian": "thompson-gaussian",
    "revenue": "thompson-gaussian",
    "linear": "thompson-gaussian",
}


@pytest.mark.parametrize("kind", sorted(ENV_TABLES))
def test_every_environment_kind_runs_from_a_file(kind: str, tmp_path: Path) -> None:
    # Each kind through the TOML path, the whole stack where its rewards allow (the
    # budget and the off-policy test need rewards in [0, 1]), and the run completes.
    import tomllib

    from simulators.runner import run

    (tmp_path / "rewards.csv").write_text("\n".join(["1,0", "0,1"] * 50) + "\n")
    bounded = kind not in POLICY
    lines = [
        "steps = 100",
        "replicates = 20",
        "refresh_every = 10",
        f'policy = {{ name = "{POLICY.get(kind, "thompson-beta")}" }}',
    ]
    if bounded:
        lines += [
            "safety = { explore_share = 0.5, conservative_alpha = 0.1 }",
            'test = { name = "off-policy-cs", n_expected = 100 }',
        ]
    path = tmp_path / "s.toml"
    path.write_text("\n".join(lines) + "\n")
    raw = tomllib.loads(path.read_text())
    raw["env"] = ENV_TABLES[kind]
    spec = scenario(raw, base_dir=tmp_path)
    res = run(spec.scenario)
    np.testing.assert_allclose(res.pulls.sum(axis=1), 100)
    assert np.all(np.isfinite(res.regret))
