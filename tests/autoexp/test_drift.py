"""Drift after a promotion: the champion's reward drops at a known time, the detector
reopens exploration on fresh evidence (once across replicas), a better alternative is
promoted, and the status page, metrics and log say why and when."""

from __future__ import annotations

import math
from typing import Any

import httpx
import numpy as np
import pytest

import autoexp
from autoexp.config import parse_config
from autoexp.engine import Engine, ExperimentSpec
from autoexp.errors import ConfigError
from autoexp.store.memory import MemoryStore
from policies import OffPolicyCS, ThompsonBeta, TrafficCap
from policies.drift import PageHinkley
from tests.autoexp.conftest import Sidecar

SECRET = "d" * 32
BEFORE = (0.5, 0.7, 0.4)  # control, a, b: a is better, and is promoted
AFTER = (0.5, 0.3, 0.7)  # then a drops below control and b becomes the best
HOLD = 1_000  # rounds the champion serves before its drop


def spec() -> ExperimentSpec:
    return ExperimentSpec(
        name="ranker",
        alternatives=("control", "a", "b"),
        policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
        test=OffPolicyCS(n_expected=2_000),
        refresh_every=50,
        drift=PageHinkley(),
    )


def play(engines: list[Engine], seed: int, rounds: int = 6_000) -> dict[str, Any]:
    """Rounds through ``engines`` in turn (replicas on one store; the clock is the round).
    Returns the rounds of the first promotion, the drop, the reopening and the second
    promotion (``None`` if it never came)."""
    rng = np.random.default_rng([seed, 7])
    now = engines[0]._clock.__self__  # type: ignore[attr-defined]
    out: dict[str, Any] = {"promoted": None, "drop": None, "reopened": None, "second": None}
    for t in range(rounds):
        now[0] = float(t)
        if out["promoted"] is not None and out["drop"] is None and t >= out["promoted"] + HOLD:
            out["drop"] = t
        p = BEFORE if out["drop"] is None else AFTER
        e = engines[t % len(engines)]
        d = e.decide("ranker")
        e.reward(d, float(rng.random() < p[d.arm]))
        if t % 25:
            continue
        st = e.status("ranker")
        if out["promoted"] is None and "promoted" in st["status"]:
            out["promoted"], out["first"] = t, st["status"]
        if out["reopened"] is None and st["epoch"] == 1:
            out["reopened"] = t
        if out["reopened"] is not None and "promoted" in st["status"]:
            out["second"] = st["status"]
            break
    return out


class Clock(list[float]):
    def __call__(self) -> float:
        return self[0]


def engines_on(store: Any, n: int, seed: int) -> list[Engine]:
    clock = Clock([0.0])
    return [
        Engine(store, [spec()], secret=SECRET, seed=seed * 10 + i, clock=clock.__call__)
        for i in range(n)
    ]


def test_a_drop_reopens_exploration_and_the_new_best_is_promoted() -> None:
    # R = 8 seeded runs. Each must: promote a, never reopen before a's drop, reopen
    # after it, and then promote b. Time to detect (rounds from the drop to the
    # reopening): a's rewards fall from 0.7 to 0.3, so Page-Hinkley's statistic climbs by
    # mu >= 0.4 - tolerance - 0.04 (the running mean's lag over ~100 rewards after 1,000
    # at 0.7) per round; by Wald's identity its mean time to the threshold is at most
    # (threshold + 1) / mu = 83 rewards, and the engine looks at every refresh (50
    # events = 25 rounds). Assert the mean + 4 SE <= 83 + 25.
    delays = []
    for seed in range(8):
        engines = engines_on(MemoryStore(), 1, seed)
        got = play(engines, seed)
        assert got["first"] == ["exploring", "promoted", "exploring"], (seed, got)
        assert got["drop"] is not None and got["reopened"] is not None, (seed, got)
        assert got["second"] == ["exploring", "exploring", "promoted"], (seed, got)
        records = engines[0].store.records("ranker")
        (drift,) = [r for r in records if r.get("by") == "drift"]
        assert drift["time"] >= got["drop"], (seed, drift, got)
        assert drift["alternative"] == "a" and drift["new"] == "reopened"
        assert drift["statistic"] > drift["threshold"] and drift["epoch"] == 1
        delays.append(drift["time"] - got["drop"])
        for e in engines:
            e.close()
    d = np.array(delays)
    tol = PageHinkley().tolerance
    bound = (PageHinkley().threshold + 1) / (0.4 - tol - 0.04) + 25
    assert d.mean() + 4 * d.std(ddof=1) / math.sqrt(d.size) <= bound, (d, bound)


def test_replicas_reopen_once_and_all_follow() -> None:
    # two engines on one store, deciding in turn: both read the same log, both see the
    # drop; one drift record is written, and both serve the new epoch.
    store = MemoryStore()
    engines = engines_on(store, 2, 3)
    got = play(engines, 3)
    assert got["second"] == ["exploring", "exploring", "promoted"], got
    records = store.records("ranker")
    assert len([r for r in records if r.get("by") == "drift"]) == 1
    for e in engines:
        e.refresh("ranker")
        assert e.status("ranker")["epoch"] == 1
    # the second promotion is logged in epoch 1, once
    promoted = [r for r in records if r.get("type") == "transition" and r.get("new") == "promoted"]
    assert [(r["alternative"], r["epoch"]) for r in promoted] == [("a", 0), ("b", 1)]
    for e in engines:
        e.close()


def test_the_new_epoch_counts_only_fresh_evidence() -> None:
    # after the reopening the policy's and the test's state is the store's minus the
    # snapshot taken then: counts restart from (about) zero, the store keeps the totals
    store = MemoryStore()
    (engine,) = engines_on(store, 1, 4)
    got = play([engine], 4)
    assert got["reopened"] is not None
    n_epoch = np.asarray(engine.status("ranker")["state"]["n"])[0]
    n_total = store.read("ranker")["policy.n"][0]
    assert n_epoch.sum() < n_total.sum() / 2
    assert np.all(n_epoch >= 0)
    records = store.records("ranker")
    at = next(i for i, r in enumerate(records) if r.get("by") == "drift")
    rewards_after = sum(1 for r in records[at:] if r["type"] == "reward")
    # a few rewards in flight while the snapshot was taken may land on either side
    assert abs(n_epoch.sum() - rewards_after) <= 1, (n_epoch.sum(), rewards_after)
    engine.close()


def test_status_page_and_metrics_say_why() -> None:
    store = MemoryStore()
    (engine,) = engines_on(store, 1, 5)
    play([engine], 5)
    side = Sidecar(engine)
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            page = http.get("/_autoexp/ui").text
            metrics = http.get("/_autoexp/metrics").text
        assert "reopened" in page and "the champion&#x27;s reward dropped" in page
        assert "epoch 1 (reopened by drift)" in page
        assert 'autoexp_epoch{experiment="ranker"} 1.0' in metrics
        (line,) = [x for x in metrics.splitlines() if 'by="drift"' in x]
        assert 'source="page-hinkley",state="reopened"' in line and "dropped" in line
    finally:
        side.close()


def test_while_the_champion_serves_the_watch_is_visible() -> None:
    store = MemoryStore()
    (engine,) = engines_on(store, 1, 6)
    rng = np.random.default_rng(6)
    for _ in range(4_000):
        d = engine.decide("ranker")
        engine.reward(d, float(rng.random() < BEFORE[d.arm]))
        st = engine.status("ranker")
        if "promoted" in st["status"] and st["drift"] is not None and st["drift"]["rewards"]:
            break
    assert st["drift"]["alternative"] == "a" and st["drift"]["detector"] == "page-hinkley"
    assert 0 <= st["drift"]["statistic"] < st["drift"]["threshold"]
    engine.close()


@pytest.mark.parametrize(
    ("drift", "match"),
    [
        ({"threshold": -1}, r"experiments.x.drift.threshold: must be finite and > 0"),
        ({"window": 3}, r"experiments.x.drift.window: unknown key"),
        ("yes", r"experiments.x.drift: must be true or a table"),
    ],
)
def test_drift_config_errors_name_the_path(drift: Any, match: str) -> None:
    raw = {
        "experiments": {
            "x": {
                "alternatives": ["a", "b"],
                "policy": {"name": "thompson-beta"},
                "test": {"name": "off-policy-cs"},
                "drift": drift,
            }
        }
    }
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def test_drift_from_config_and_sdk() -> None:
    raw: dict[str, Any] = {
        "experiments": {
            "x": {
                "alternatives": ["a", "b"],
                "policy": {"name": "thompson-beta"},
                "test": {"name": "off-policy-cs"},
                "drift": True,
            }
        }
    }
    assert parse_config(raw).experiments[0].drift == PageHinkley()
    del raw["experiments"]["x"]["test"]
    with pytest.raises(
        ConfigError, match=r"experiments.x.drift: watches a promoted .* needs a test"
    ):
        parse_config(raw)
    exp = autoexp.Experiment(
        "y", drift={"threshold": 10}, store=MemoryStore(), secret=SECRET, test="off-policy-cs"
    )
    exp.setting("a")
    exp.setting("b")
    assert exp.engine.spec("y").drift == PageHinkley(threshold=10)
    exp.close()
