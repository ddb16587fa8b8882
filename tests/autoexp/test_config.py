"""The runtime's config file: what it builds, environment overrides, and the dotted path
of every bad key."""

from __future__ import annotations

import datetime
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest

from autoexp.config import load_config, parse_config
from autoexp.errors import ConfigError, RewardError
from policies import ConservativeBudget, OffPolicyCS, TrafficCap

GOOD = """
store = "memory://"
secret = "ssssssssssssssssssssssss"

[experiments.ranker]
alternatives = [
  { name = "slow", params = { timeout_s = 5 } },
  { name = "fast", params = { timeout_s = 1 } },
]
policy = { name = "thompson-beta" }
safety = { explore_share = 0.2, conservative_alpha = 0.05 }
test = { name = "off-policy-cs", n_expected = 5000 }
guardrails = [{ name = "conversion", harm = "decrease" }]
rule = { margin = 0.01 }
reward = { low = 0, high = 1, join_window_s = 600, default = 0 }
refresh_every = 50
"""


def raw(**changes: Any) -> dict[str, Any]:
    data = tomllib.loads(GOOD)
    exp = data["experiments"]["ranker"]
    for key, value in changes.items():
        if value is None:
            exp.pop(key, None)
        else:
            exp[key] = value
    return data


def test_a_full_config_builds_engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOEXP_STORE", raising=False)
    monkeypatch.delenv("AUTOEXP_SECRET", raising=False)
    path = tmp_path / "autoexp.toml"
    path.write_text(GOOD)
    config = load_config(path)
    (spec,) = config.experiments
    assert spec.alternatives == ("slow", "fast") and spec.params[1] == {"timeout_s": 1}
    assert isinstance(spec.policy, TrafficCap)
    assert isinstance(spec.policy.policy, ConservativeBudget) and spec.policy.policy.refresh == 50
    assert isinstance(spec.test, OffPolicyCS) and spec.test.n_expected == 5000
    assert spec.rule is not None and spec.rule.margin == 0.01
    assert (spec.join_window_s, spec.default_reward) == (600.0, 0.0)
    engine = config.engine(seed=1)
    d = engine.decide("ranker")
    assert d.params["timeout_s"] in (1, 5)
    monkeypatch.setenv("AUTOEXP_STORE", f"sqlite:///{tmp_path / 'env.db'}")
    assert load_config(path).store.endswith("env.db")


def test_the_secret_from_the_environment_rotates_as_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # AUTOEXP_SECRET="new,old": the new key signs, the old one still verifies. The
    # config loader (so the proxy) took the whole value as one key, "new,old": after a
    # rotation every token signed before it was refused, as a forgery.
    new, old = "n" * 32, "o" * 32
    path = tmp_path / "autoexp.toml"
    path.write_text(GOOD)
    monkeypatch.setenv("AUTOEXP_STORE", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setenv("AUTOEXP_SECRET", old)
    before = load_config(path).engine(seed=1)
    token = before.decide("ranker").token
    before.close()
    monkeypatch.setenv("AUTOEXP_SECRET", f"{new},{old}")
    config = load_config(path)
    assert config.secret == [new, old]
    after = config.engine(seed=2)  # a replica restarted with the new keys
    assert after.reward(token, 1.0) is True  # signed with the old key: verified
    signed = after.decide("ranker").token  # by the new key
    after.close()
    monkeypatch.setenv("AUTOEXP_SECRET", new)
    last = load_config(path).engine(seed=3)  # the old key dropped
    assert last.reward(signed, 1.0) is True
    with pytest.raises(RewardError, match="token"):
        last.reward(token, 1.0)
    last.close()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"alternatives": ["only"]}, r"experiments\.ranker\.alternatives: need a control"),
        ({"alternatives": ["a", 3]}, r"alternatives\[1\]: must be a name or"),
        # a name goes upstream in a header: a line break in it would forge others
        ({"alternatives": ["a", "b\r\nX-Evil: 1"]}, r"ranker\.alternatives: each a non-empty"),
        ({"alternatives": ["a", ""]}, r"ranker\.alternatives: each a non-empty string"),
        # parameters go upstream as JSON: a date was a 500 for each request given "b"
        (
            {"alternatives": ["a", {"name": "b", "params": {"day": datetime.date(2024, 1, 1)}}]},
            r"ranker\.alternatives\[1\]\.params\.day: must be a string, number, boolean",
        ),
        (
            {"alternatives": ["a", {"name": "b", "params": {"x": [1.0, math.inf]}}]},
            r"ranker\.alternatives\[1\]\.params\.x\[1\]: must be a finite number",
        ),
        ({"policy": {"name": "ts"}}, r"experiments\.ranker\.policy\.name: unknown \(got 'ts'\)"),
        # no policy at all: said missing (it said "unknown (got None)")
        ({"policy": None}, r"^experiments\.ranker\.policy\.name: missing; accepted: discounted-"),
        ({"policy": {"name": None}}, r"ranker\.policy\.name: unknown \(got None\)"),
        ({"safety": {"explore_share": 5}}, r"ranker\.safety\.explore_share: must be in \(0, 1\]"),
        ({"safety": {"explore": 0.1}}, r"ranker\.safety\.explore: unknown key"),
        ({"test": {"name": "off-policy-cs", "n_expected": -1}}, r"ranker\.test\.n_expected"),
        ({"guardrails": [{"name": "g", "harm": "up"}]}, r"ranker\.guardrails\[0\]\.harm"),
        ({"test": None}, r"ranker\.rule: needs a test"),
        ({"reward": {"low": "zero"}}, r"ranker\.reward\.low: must be a number"),
        ({"reward": {"window": 5}}, r"ranker\.reward\.window: unknown key"),
        ({"refresh_every": 0}, r"ranker\.refresh_every: must be an integer >= 1"),
        # a state that depends on the order of rewards cannot be added up across replicas
        # (a TypeError from the proxy's first reward before, after --check said ready)
        ({"policy": {"name": "discounted-thompson"}}, r"ranker\.policy: discounted-thompson "),
        ({"policy": {"name": "sliding-window-ucb", "window": 50}}, r"cannot be served: its"),
        ({"refresh_s": -1}, r"ranker\.refresh_s: must be a finite number >= 0 \(got -1\.0\)"),
        ({"refresh_s": "10"}, r"ranker\.refresh_s: must be a number \(got '10'\)"),
        ({"refresh_s": float("nan")}, r"ranker\.refresh_s: must be a finite number >= 0"),
        ({"refresh_s": True}, r"ranker\.refresh_s: must be a number \(got True\)"),
        ({"colour": "red"}, r"experiments\.ranker\.colour: unknown key"),
    ],
)
def test_bad_configs_name_the_dotted_path(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(raw(**changes))


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such file"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("store = = 1")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)
    bad.write_text('store = "memory://"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: experiments: missing"):
        load_config(bad)
    bad.write_text(GOOD.replace("store =", "stor ="))
    with pytest.raises(ConfigError, match=r"bad\.toml: stor: unknown key"):
        load_config(bad)
