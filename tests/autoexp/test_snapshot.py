"""The whole explore, log, learn, deploy loop with a learner configured as the policy: the
engine explores uniformly while no model is deployed, the learner process trains on its
log and deploys through the gate, and the engine then serves the deployed snapshot (exact
propensities at each context, under the configured safety wrappers) and earns more."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from autoexp.config import parse_config
from autoexp.engine import Engine
from autoexp.learn import Learner, learner_status
from autoexp.snapshot import SnapshotPolicy
from policies import TrafficCap, VWExplore
from policies.gate import Gate

SECRET = "s" * 32
DEVICES = ("mobile", "desktop", "tablet")
P = {"mobile": (0.2, 0.7, 0.2), "desktop": (0.2, 0.2, 0.7), "tablet": (0.5, 0.3, 0.3)}
SHARE = (0.4, 0.4, 0.2)
UNIFORM = sum(s * float(np.mean(P[d])) for s, d in zip(SHARE, DEVICES, strict=True))  # 0.367

CONFIG = {
    "experiments": {
        "layout": {
            "alternatives": ["a", "b", "c"],
            "policy": {"name": "vw-cb", "bits": 14},
            "safety": {"explore_share": 1.0},
            "refresh_every": 50,
            "context": {"features": [{"name": "device", "one_hot": list(DEVICES)}]},
        }
    }
}


def play(engine: Engine, rounds: int, rng: np.random.Generator) -> list[tuple[Any, float, str]]:
    """``rounds`` decisions at random devices, rewarded in groups of 50."""
    out, pending = [], []
    for _ in range(rounds):
        device = DEVICES[rng.choice(3, p=SHARE)]
        d = engine.decide("layout", context={"device": device})
        r = float(rng.random() < P[device][d.arm])
        out.append((d, r, device))
        pending.append((d, r))
        if len(pending) == 50:
            engine.reward_many(pending)
            pending = []
    engine.reward_many(pending)
    return out


def test_explore_log_learn_deploy_then_serve_the_snapshot(durable_store: Any) -> None:
    config = parse_config(CONFIG)
    engine = Engine(durable_store, config.experiments, secret=SECRET, seed=1, log_flush_s=0)
    policy = engine.spec("layout").policy
    assert isinstance(policy, TrafficCap) and isinstance(policy.policy, SnapshotPolicy)
    rng = np.random.default_rng(2)
    # 1. no model yet: uniform exploration, logged with its propensities
    first = play(engine, 1_500, rng)
    assert {round(d.propensity, 12) for d, _, _ in first} == {round(1 / 3, 12)}
    assert engine.status("layout")["model_version"] == 0
    # 2. the learner (a separate process in production) trains on the log and deploys
    learner = Learner(
        durable_store,
        "layout",
        VWExplore(dim=4, bits=14),
        gate=Gate(alpha=0.05, max_weight=3.0, n_expected=1_000.0),
        publish_every=300,
    )
    learner.step()
    deployed = learner_status(durable_store, "layout")
    assert deployed["model_version"] >= 1, deployed
    # 3. the engine loads it at its next refresh and serves it: each propensity is the
    # snapshot's allocation at that decision's context
    engine.refresh("layout")
    assert engine.status("layout")["model_version"] == deployed["model_version"]
    from autoexp.proxy.metrics import _EngineCollector  # what the sidecar's /metrics says

    families = {f.name: f for f in _EngineCollector(engine, None).collect()}
    (sample,) = families["autoexp_model_version"].samples
    assert sample.value == deployed["model_version"]
    reader = policy.policy.reader
    second = play(engine, 1_500, rng)
    x = {dev: np.array([1.0, *(1.0 if e == dev else 0.0 for e in DEVICES)]) for dev in DEVICES}
    for d, _, device in second[:200]:
        assert d.propensity == pytest.approx(reader.allocation(x[device])[d.arm], abs=1e-12)
    # 4. and earns more. Uniform exploration is worth 0.367 a round, the per-device best
    # 0.66. Rewards are Bernoulli, so each phase's mean has SE <= 0.5 / sqrt(1500) =
    # 0.013: the deployed model must beat the exploring phase by 4 SE of the difference
    # (0.052), well inside what a model near the oracle earns.
    before = np.mean([r for _, r, _ in first])
    after = np.mean([r for _, r, _ in second])
    assert after - before > 4 * math.sqrt(2 * 0.25 / 1_500), (before, after)
    engine.close()


def test_a_learner_with_a_conservative_budget_is_gated_by_it() -> None:
    # the snapshot stands where the learner stood: the wrappers stay as configured
    raw = {
        "experiments": {
            "layout": {
                **CONFIG["experiments"]["layout"],
                "safety": {"explore_share": 0.3, "conservative_alpha": 0.1},
            }
        }
    }
    (spec,) = parse_config(raw).experiments
    from autoexp.store.memory import MemoryStore

    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=3, log_flush_s=0)
    served = engine.spec("layout").policy
    assert isinstance(served.policy.policy, SnapshotPolicy)
    d = engine.decide("layout", context={"device": "mobile"})
    # nothing banked yet: the budget sends everything to control
    assert d.arm == 0 and d.propensity == 1.0
    engine.close()
