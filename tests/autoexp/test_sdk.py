"""The SDK as a user writes it: decorators, calls that return the result and the
decision, rewards by decision or token, async functions, settings, misuse, fail-open."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import autoexp
from autoexp.errors import ConfigError, StateError

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s" * 32


def make(store: Any, **options: Any) -> autoexp.Experiment:
    exp = autoexp.Experiment(
        "ranker", store=store, secret=SECRET, seed=1, explore_share=0.5, **options
    )

    @exp.control
    def rank_v1(query: str) -> str:
        return f"v1:{query}"

    @exp.alternative
    def rank_v2(query: str) -> str:
        return f"v2:{query}"

    return exp


def test_call_runs_the_chosen_alternative_and_rewards_count(store: Any) -> None:
    exp = make(store)
    seen = set()
    for i in range(50):
        answer = exp("q", unit=f"u{i}")
        assert answer.result == f"{answer.decision.alternative[-2:]}:q"
        seen.add(answer.decision.alternative)
        assert exp.reward(answer.decision if i % 2 else answer.decision.token, 1.0)
    assert seen == {"rank_v1", "rank_v2"}
    assert store.read("ranker")["policy.n"].sum() == 50.0
    assert exp("q", unit="u3").decision.arm == exp("q", unit="u3").decision.arm  # sticky


def test_reward_many_skips_failed_open_decisions(store: Any) -> None:
    exp = make(store)
    answers = [exp("q") for _ in range(4)]
    items = [(a.decision, 1.0) for a in answers] + [(None, 1.0)]
    assert exp.reward_many(items) == [True, True, True, True, False]
    assert store.read("ranker")["policy.n"].sum() == 4.0


def test_async_alternatives(store: Any) -> None:
    exp = autoexp.Experiment("ranker", store=store, secret=SECRET, seed=2)

    @exp.control
    async def old(x: int) -> int:
        await asyncio.sleep(0)
        return x

    @exp.alternative
    async def new(x: int) -> int:
        return x + 1

    async def go() -> list[Any]:
        return [await exp(1) for _ in range(20)]

    answers = asyncio.run(go())
    assert {a.result for a in answers} <= {1, 2}
    assert all(a.result == 1 + a.decision.arm for a in answers)


def test_settings_as_alternatives(store: Any) -> None:
    exp = autoexp.Experiment("ranker", store=store, secret=SECRET, seed=3, explore_share=0.5)
    exp.setting("baseline", timeout_s=5.0)
    exp.setting("fast", timeout_s=1.0)
    d = exp.decide(unit="u1")
    assert d.params == {"timeout_s": 5.0 if d.arm == 0 else 1.0}
    with pytest.raises(StateError, match=r"has settings, not functions: use exp\.decide\(\)"):
        exp("x")


def test_misuse_gets_specific_errors(store: Any) -> None:
    exp = autoexp.Experiment("ranker", store=store, secret=SECRET)
    with pytest.raises(ConfigError, match=r"define the control first \(@exp\.control\)"):
        exp.alternative(lambda q: q)
    with pytest.raises(StateError, match=r"needs a control and at least one alternative"):
        exp.decide()

    @exp.control
    def a(q: str) -> str:
        return q

    async def b(q: str) -> str:
        return q

    with pytest.raises(ConfigError, match=r"'b' is async but the others are not"):
        exp.alternative(b)
    with pytest.raises(ConfigError, match=r"alternative 'a' defined twice"):
        exp.alternative(a)
    with pytest.raises(ConfigError, match=r"mix of functions and settings"):
        exp.setting("s", x=1)
    exp.alternative(lambda q: q, name="c")
    exp("x")
    with pytest.raises(StateError, match=r"has started; define its alternatives before"):
        exp.alternative(lambda q: q, name="d")
    with pytest.raises(ConfigError, match=r"Experiment\('e'\)\.policy\.name: unknown \(got 'ts'\)"):
        autoexp.Experiment("e", policy="ts")
    with pytest.raises(ConfigError, match=r"Experiment\('e'\)\.explore_share: must be in \(0, 1\]"):
        autoexp.Experiment("e", explore_share=2.0)
    with pytest.raises(ConfigError, match=r"Experiment\('e'\)\.test\.n_expected"):
        autoexp.Experiment("e", test_params={"n_expected": -1})
    # at its definition, not at its first decision (the engine is built then)
    with pytest.raises(ConfigError, match=r"Experiment\('e'\)\.policy: discounted-thompson can"):
        autoexp.Experiment("e", policy="discounted-thompson")


def test_store_down_fails_open_to_control(
    redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.flush()
    exp = make(redis_server.url + "?socket_timeout_s=0.3&connect_timeout_s=0.3")
    assert exp("q").result.startswith("v")  # starts while Redis is up
    stopped = time.monotonic()
    redis_server.stop()
    try:
        # the engine notices within its background writer's period (50 ms) ...
        deadline = time.monotonic() + 10
        while exp.engine.status("ranker")["store_ok"] and time.monotonic() < deadline:
            exp("q")
            time.sleep(0.01)
        assert not exp.engine.status("ranker")["store_ok"]
        # ... and from then on serves control and says so
        answers = [exp("q") for _ in range(3)]
        assert [a.result for a in answers] == ["v1:q"] * 3
        assert all(a.decision is None for a in answers)
        assert exp.reward(None, 1.0) is False
        assert exp.status()["fail_open"] >= 3
        # every one counted, but said at most every 10 s, not once per call: the throttle
        # says the first and then one per full 10 s, so over t seconds at most 1 + t // 10
        # lines, and at least the first (3 calls or more failed open: 3 lines without it)
        said = [r for r in caplog.records if "failed open to control" in r.getMessage()]
        assert 1 <= len(said) <= 1 + (time.monotonic() - stopped) // 10, len(said)
        assert "(1 failed open so far; said at most every 10 s" in said[0].getMessage()
    finally:
        redis_server.start()
    # once Redis is back the engine recovers by itself and decides again
    deadline = time.monotonic() + 10
    while not exp.engine.status("ranker")["store_ok"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exp("q").decision is not None
    # this Redis keeps nothing on disk: the engine declares its state again and goes on
    exp.engine.refresh()
    answer = exp("q")
    assert exp.reward(answer.decision, 1.0)


def test_the_sdk_example_promotes_the_better_ranker(tmp_path: Path) -> None:
    # examples/sdk_ranker.py on the embedded SQLite store: simulated users convert 30% on
    # rank_v1 and 36% on rank_v2; the off-policy sequence must promote rank_v2 within the
    # 20,000 users the example allows (seed 1: after 5,025).
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "sdk_ranker.py"),
            "--store",
            f"sqlite:///{tmp_path / 'ranker.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env={**os.environ, "AUTOEXP_SECRET": SECRET, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("promoted rank_v2 after ")


def test_a_closed_experiment_refuses_calls(tmp_path: Path) -> None:
    with make(f"sqlite:///{tmp_path / 'c.db'}") as exp:
        exp("q")
    with pytest.raises(StateError, match=r"'ranker' is closed"):
        exp("q")
