"""Sticky units (autoexp.units) through the engine on every store: what a unit is recorded
by, and assignments stored before they carried an epoch."""

from __future__ import annotations

import json
from typing import Any

from autoexp.engine import Engine, ExperimentSpec
from autoexp.units import assignment, hashed
from policies import ThompsonBeta, TrafficCap

SECRET = "s" * 32


def spec() -> ExperimentSpec:
    return ExperimentSpec(
        name="ranker",
        alternatives=("v1", "v2"),
        policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
    )


def test_a_unit_is_assigned_and_logged_by_its_hash_never_by_itself(store: Any) -> None:
    engine = Engine(store, [spec()], secret=SECRET, seed=3)
    decision = engine.decide("ranker", unit="alice@example.com")
    engine.flush()
    (line,) = store.lines("ranker")
    record = json.loads(line)
    assert record["unit_hash"] == hashed("ranker", "alice@example.com")
    assert len(record["unit_hash"]) == 32 and "alice" not in line
    # the store holds the assignment under the same hash, naming the decision
    (stored,) = store.assign_many("ranker", [(record["unit_hash"], "unused", None)])
    assert assignment(stored)[0] == decision.arm
    assert json.loads(stored)[2] == decision.id
    # another experiment's unit of the same name is another unit
    assert hashed("other", "alice@example.com") != record["unit_hash"]


def test_an_assignment_stored_without_an_epoch_is_kept(store: Any) -> None:
    # stores written before generated experiments held [arm, propensities, decision id];
    # such a unit keeps its arm and first propensities (epoch 0, the first one)
    engine = Engine(store, [spec()], secret=SECRET, seed=4)
    unit = hashed("ranker", "bob")
    store.assign_many("ranker", [(unit, json.dumps([1, [0.75, 0.25], "old-id"]), None)])
    assert assignment(json.dumps([1, [0.75, 0.25], "old-id"])) == (1, (0.75, 0.25), 0)
    for _ in range(3):  # each time, whatever the draw
        decision = engine.decide("ranker", unit="bob")
        assert (decision.arm, decision.propensity, decision.sticky) == (1, 0.25, True)
