"""The engine on every store: decisions, sticky units, trusted rewards, lifecycle."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import math
import threading
import time
from typing import Any

import numpy as np
import pytest

from autoexp.engine import Engine, ExperimentSpec
from autoexp.errors import (
    ConfigError,
    RequestError,
    RewardError,
    StoreError,
    UnknownExperimentError,
)
from autoexp.experiment import Decision, make_decision
from autoexp.store.memory import MemoryStore
from autoexp.tokens import Ticket, keys_from, sign, verify
from policies import ConservativeBudget, OffPolicyCS, ThompsonBeta, TrafficCap
from policies.greedy import EpsilonGreedy
from policies.safety import Guardrail

SECRET = "s" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def spec(**changes: Any) -> ExperimentSpec:
    base: dict[str, Any] = {
        "name": "ranker",
        "alternatives": ("v1", "v2"),
        "policy": TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
        "refresh_every": 20,
    }
    return ExperimentSpec(**{**base, **changes})


def snapshot(store: Any) -> tuple[dict[str, list[float]], list[dict[str, Any]]]:
    state = {k: v.tolist() for k, v in store.read("ranker").items()}
    return state, store.records("ranker")


def test_decisions_follow_the_allocation_and_are_logged(store: Any) -> None:
    engine = Engine(store, [spec()], secret=SECRET, seed=1)
    # a fresh Thompson inside a 50% cap: 50/50
    decisions = [engine.decide("ranker") for _ in range(400)]
    share = np.mean([d.arm for d in decisions])
    assert abs(share - 0.5) <= 4 * math.sqrt(0.25 / 400)  # 4 binomial SE
    engine.flush()  # the log is written in groups, in the background
    log = store.records("ranker")
    assert len(log) == 400
    first = log[0]
    assert first["type"] == "decision"
    assert first["propensity"] == first["allocation"][first["arm"]]
    assert sum(first["allocation"]) == pytest.approx(1.0)
    # a record and its decision's token carry the same time and propensity (their texts
    # are written once for both)
    for decision, record in zip(decisions, log, strict=True):
        ticket = verify(keys_from(SECRET), decision.token, now=record["time"])
        assert (ticket.id, ticket.arm) == (record["decision_id"], record["arm"])
        assert ticket.issued == record["time"] == decision.ticket.issued
        assert ticket.propensity[ticket.arm] == record["propensity"] == decision.propensity


def test_rewards_move_traffic_and_promote_the_better_alternative(store: Any) -> None:
    # Simulated users: control converts 20%, the alternative 40%. Thompson in a 50% cap,
    # refreshed every 20 events, the off-policy sequence tuned for 1,000 users: the
    # alternative must be promoted within 4,000 users (a difference of 0.2 at these
    # rates is found in about 600; seed fixed), logged once with its evidence.
    engine = Engine(store, [spec(test=OffPolicyCS(n_expected=1_000))], secret=SECRET, seed=2)
    rng = np.random.default_rng(3)
    rates = [0.2, 0.4]
    for _ in range(4_000):
        d = engine.decide("ranker")
        engine.reward(d, float(rng.random() < rates[d.arm]))
        if engine.status("ranker")["status"][1] == "promoted":
            break
    st = engine.status("ranker")
    assert st["status"] == ["exploring", "promoted"]
    assert st["allocation"] == [0.0, 1.0]
    moves = [r for r in store.records("ranker") if r["type"] == "transition"]
    assert len(moves) == 1 and moves[0]["new"] == "promoted" and moves[0]["lower"] > 0
    assert engine.decide("ranker").alternative == "v2"


def test_a_unit_keeps_its_arm_and_first_propensity(store: Any) -> None:
    engine = Engine(store, [spec()], secret=SECRET, seed=4)
    first = engine.decide("ranker", unit="user-7")
    for _ in range(60):  # move the allocation: rewards for the other arm only
        d = engine.decide("ranker")
        engine.reward(d, 1.0 if d.arm != first.arm else 0.0)
    again = engine.decide("ranker", unit="user-7")
    assert again.sticky and again.arm == first.arm
    assert again.propensity == first.propensity  # the first exposure's
    # another engine (replica) on the same store sees the same assignment
    other = Engine(store, [spec()], secret=SECRET, seed=5)
    assert other.decide("ranker", unit="user-7").arm == first.arm


class CountingAssign:
    """The real store's ``assign_many`` (the engine's call for units), counted (and, once
    ``hold`` is cleared, held until it is set): which decisions cost a store call."""

    def __init__(self, store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        real = store.assign_many

        def assign_many(*args: Any, **kwargs: Any) -> list[str]:
            self.calls += 1
            self.entered.set()
            self.hold.wait(10)
            return list(real(*args, **kwargs))

        monkeypatch.setattr(store, "assign_many", assign_many)


def test_a_held_unit_is_served_without_a_store_call(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = CountingAssign(store, monkeypatch)
    engine = Engine(store, [spec()], secret=SECRET, seed=21, unit_cache=3)
    first = engine.decide("ranker", unit="user-1")
    assert counted.calls == 1
    for _ in range(20):  # held: the same arm and first propensity, no store call
        again = engine.decide("ranker", unit="user-1")
        assert (again.arm, again.propensity, again.sticky) == (first.arm, first.propensity, True)
        held = engine.try_decide("ranker", unit="user-1")
        assert held is not None and held.sticky and held.arm == first.arm
    assert counted.calls == 1
    engine.flush()
    logged = len(store.records("ranker"))
    assert logged == 41  # every decision logged, held or not
    # a unit not held: try_decide declines, with nothing drawn or logged
    assert engine.try_decide("ranker", unit="user-2") is None
    engine.flush()
    assert len(store.records("ranker")) == logged and counted.calls == 1
    # without a unit it always decides
    assert engine.try_decide("ranker") is not None
    # at most unit_cache held, the least recently used goes first
    for unit in ("user-2", "user-3", "user-1", "user-4"):  # user-2 goes
        engine.decide("ranker", unit=unit)
    assert counted.calls == 4
    engine.decide("ranker", unit="user-1")
    assert counted.calls == 4
    engine.decide("ranker", unit="user-2")  # asked again: the store still has it
    assert counted.calls == 5
    # unit_cache = 0: every sticky decision asks the store
    none = Engine(store, [spec()], secret=SECRET, seed=22, unit_cache=0)
    for _ in range(3):
        assert none.decide("ranker", unit="user-1").arm == first.arm
    assert counted.calls == 8
    with pytest.raises(ConfigError, match=r"unit_cache: must be an integer >= 0"):
        Engine(store, [spec()], secret=SECRET, unit_cache=-1)


def test_a_held_unit_follows_another_replicas_reassignment_at_the_next_refresh(
    store: Any,
) -> None:
    # Replica A holds units on the alternative; replica B sees it rolled back first and
    # reassigns them to control in the store. A keeps serving its snapshot (the arm is
    # live there) until its refresh shows the roll-back; then it reads B's assignment:
    # control, with B's propensity (sticky: B's first exposure), the same as B serves.
    # Refreshed only when the test says (a refresh at the cadence, in A's background
    # writer, could otherwise come between the roll-back and A's "still its snapshot").
    a = Engine(store, [spec(refresh_every=10_000, refresh_s=0)], secret=SECRET, seed=23)
    b = Engine(store, [spec(refresh_every=10_000, refresh_s=0)], secret=SECRET, seed=24)
    units = [f"u{i}" for i in range(40)]
    on_alt = [u for u in units if a.decide("ranker", unit=u).arm == 1]
    assert on_alt  # a 50% cap: about half
    store.set("ranker", "status", '["exploring", "rolled_back"]')
    b.refresh()
    moved = {u: b.decide("ranker", unit=u) for u in on_alt}
    assert all(d.arm == 0 and not d.sticky for d in moved.values())
    assert all(a.decide("ranker", unit=u).arm == 1 for u in on_alt)  # A's snapshot
    a.refresh()
    for u in on_alt:
        d = a.decide("ranker", unit=u)
        assert (d.arm, d.propensity, d.sticky) == (0, moved[u].propensity, True)


def test_a_units_store_call_does_not_hold_up_other_decisions(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sticky decision waiting for the store (a slow commit, a round trip) must not
    # stop the event loop's decisions: the store call runs without the state lock.
    counted = CountingAssign(store, monkeypatch)
    engine = Engine(store, [spec()], secret=SECRET, seed=25)
    counted.hold.clear()
    got: list[Any] = []
    waiting = threading.Thread(target=lambda: got.append(engine.decide("ranker", unit="u1")))
    waiting.start()
    try:
        assert counted.entered.wait(5)
        started = time.monotonic()
        others = [engine.decide("ranker") for _ in range(10)]
        assert time.monotonic() - started < 5  # not held up by the waiting store call
        assert not got and len(others) == 10
    finally:
        counted.hold.set()
        waiting.join(10)
    assert got and got[0].sticky is False
    assert engine.decide("ranker", unit="u1").arm == got[0].arm


def test_reward_each_applies_the_good_items_and_returns_each_bad_ones_error(
    store: Any,
) -> None:
    # Independent callers' rewards in one call: each bad item gets the error reward()
    # would raise for it, and nothing of it is written; the good ones are applied once,
    # in one store call, to the same state as applying them one by one.
    engine = Engine(store, [spec()], secret=SECRET, seed=26)
    made = [engine.decide("ranker") for _ in range(6)]
    items: list[tuple[Any, float]] = [
        (made[0], 1.0),
        (made[1].token[:-4] + "AAAA", 1.0),  # forged
        (made[2], 7.0),  # out of range
        (made[3].token, 0.0),
        (made[0].token, 1.0),  # the same decision again: a no-op
        (sign(keys_from(SECRET), Ticket("x", "nope", 0, (0.5, 0.5), 1e9, 3e9)), 1.0),
        (made[4], math.nan),
    ]
    calls = []
    real = store.add_many

    def add_many(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[1]))
        return real(*args, **kwargs)

    store.add_many = add_many
    got = engine.reward_each(items)
    assert got[0] is True and got[3] is True and got[4] is False
    assert isinstance(got[1], RewardError) and "forged" in str(got[1])
    assert isinstance(got[2], RewardError) and "[0.0, 1.0]" in str(got[2])
    assert isinstance(got[5], UnknownExperimentError)
    assert isinstance(got[6], RewardError)
    assert calls == [3]  # one store call for the three good items
    n = store.read("ranker")["policy.n"]
    assert n.sum() == 2.0  # made[0] once and made[3]
    for bad in (made[1], made[2], made[4]):  # still rewardable: nothing recorded for them
        assert engine.reward(bad, 1.0) is True


def test_duplicate_rewards_count_once(store: Any) -> None:
    engine = Engine(store, [spec()], secret=SECRET, seed=6)
    d = engine.decide("ranker")
    assert engine.reward(d, 1.0) is True
    assert engine.reward(d.token, 1.0) is False
    n = store.read("ranker")["policy.n"]
    assert n.sum() == 1.0


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d, k: d.token[:-4] + "AAAA", r"forged"),
        (lambda d, k: "garbage", r"malformed"),
        (lambda d, k: sign(k, Ticket("x", "nope", 0, (0.5, 0.5), 1e6, 2e6)), r"'nope' is not"),
        (lambda d, k: sign(k, Ticket("x", "ranker", 0, (0.5, 0.5), 1e6, 1e6 - 1)), r"expired"),
        (lambda d, k: sign(k, Ticket("x", "ranker", 2, (0.3, 0.3, 0.4), 1e6, 2e6)), r"arms"),
    ],
)
def test_bad_tokens_are_refused_and_nothing_changes(store: Any, make: Any, match: str) -> None:
    engine = Engine(store, [spec()], secret=SECRET, seed=7, clock=Clock())
    d = engine.decide("ranker")
    before = snapshot(store)
    with pytest.raises((RewardError, UnknownExperimentError), match=match):
        engine.reward(make(d, keys_from(SECRET)), 1.0)
    assert snapshot(store) == before


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5, 1.5, "yes", None])
def test_bad_reward_values_are_refused_and_nothing_changes(store: Any, value: Any) -> None:
    engine = Engine(store, [spec()], secret=SECRET, seed=8)
    d = engine.decide("ranker")
    before = snapshot(store)
    with pytest.raises(RewardError, match=r"reward: must be"):
        engine.reward(d, value)
    assert snapshot(store) == before
    assert engine.reward(d, 1.0)  # the decision can still be rewarded properly


def test_late_rewards_are_counted_and_refused_and_defaults_apply(store: Any) -> None:
    clock = Clock()
    engine = Engine(
        store,
        [spec(join_window_s=60.0, default_reward=0.0)],
        secret=SECRET,
        seed=9,
        clock=clock,
    )
    late, on_time, silent = (engine.decide("ranker") for _ in range(3))
    clock.now += 30
    assert engine.reward(on_time, 1.0)
    clock.now += 31
    before = snapshot(store)
    with pytest.raises(RewardError, match=r"late by 1 s \(join window 60 s"):
        engine.reward(late, 1.0)
    assert snapshot(store) == before
    assert engine.status("ranker")["late_rewards"] == 1
    assert engine.expire() == 2  # late and silent get the default reward 0
    assert store.read("ranker")["policy.n"].sum() == 3.0
    defaults = [r for r in store.records("ranker") if r.get("source") == "default"]
    assert {r["decision_id"] for r in defaults} == {late.id, silent.id}
    assert engine.expire() == 0


def test_two_engines_share_state_exactly(durable_store: Any) -> None:
    # Two replicas on one store, interleaved: every reward lands once; both see the sum.
    a = Engine(durable_store, [spec()], secret=SECRET, seed=10)
    b = Engine(durable_store, [spec()], secret=SECRET, seed=11)
    for i in range(300):
        engine = a if i % 2 else b
        d = engine.decide("ranker")
        (b if i % 3 else a).reward(d, float(i % 2))
    a.refresh()
    b.refresh()
    assert durable_store.read("ranker")["policy.n"].sum() == 300.0
    assert a.status("ranker")["state"] == b.status("ranker")["state"]


def rewarded(engine: Engine) -> float:
    """The rewards in this replica's snapshot."""
    return float(sum(engine.status("ranker")["state"]["n"][0]))


def test_a_quiet_replica_follows_the_store_within_refresh_s(durable_store: Any) -> None:
    # Five rewards, far fewer events than refresh_every: only a snapshot's age refreshes
    # it. A decides and rewards; B serves nothing. Both show the 5 rewards once their
    # background writers find their snapshots refresh_s (0.3 s) old. C, the same but
    # refresh_s=0 (by count only), still shows none after both did. Waited for up to
    # 10 s (33 periods), not timed: a loaded machine may be slow to schedule the writer.
    quiet = {"refresh_every": 10_000}
    a = Engine(durable_store, [spec(**quiet, refresh_s=0.3)], secret=SECRET, seed=1)
    b = Engine(durable_store, [spec(**quiet, refresh_s=0.3)], secret=SECRET, seed=2)
    c = Engine(durable_store, [spec(**quiet, refresh_s=0)], secret=SECRET, seed=3)
    try:
        for _ in range(5):
            a.reward(a.decide("ranker"), 1.0)
        deadline = time.monotonic() + 10
        while not rewarded(a) == rewarded(b) == 5:
            assert time.monotonic() < deadline, (rewarded(a), rewarded(b))
            time.sleep(0.05)
        assert rewarded(c) == 0 and c.status("ranker")["version"] == 1  # its first only
        # with nothing happening, B goes on refreshing at its pace: at least 2 more in
        # 1.5 s (5 periods; 2 leaves room for a slow writer)
        version = b.status("ranker")["version"]
        time.sleep(1.5)
        assert b.status("ranker")["version"] >= version + 2
    finally:
        for engine in (a, b, c):
            engine.close()


class FailingReads(MemoryStore):
    """Answers (its probe reads succeed) but fails every refresh's read once told to."""

    failing = False
    reads = 0

    def read_meta(self, name: str, keys: Any) -> Any:
        if self.failing:
            self.reads += 1
            raise StoreError("store (read_meta): failing on purpose")
        return super().read_meta(name, keys)


def test_a_refresh_that_fails_is_tried_again_a_period_later_not_at_every_pass() -> None:
    # The writer passes every 10 ms here; refresh_s is 0.2 s. A store that answers the
    # writer's probe but fails the refresh is asked again once per period: at most
    # 1 + 1.2 / 0.2 = 7 refreshes in 1.2 s, and at least 2. Without the period reset on a
    # try, every pass retried: about 120.
    store = FailingReads()
    engine = Engine(store, [spec(refresh_s=0.2)], secret=SECRET, seed=1, log_flush_s=0.01)
    try:
        store.failing = True
        time.sleep(1.2)
        store.failing = False
        assert 2 <= store.reads <= 7, store.reads
    finally:
        engine.close()


def test_guardrail_rolls_back_and_traffic_returns_to_control(store: Any) -> None:
    # The alternative errors (reward 0) always, control never: the guardrail on the
    # reward (off-policy, harm "decrease") rolls it back; afterwards all traffic is control.
    # Epsilon-greedy keeps sending the arm a share of traffic, so evidence accrues (Thompson
    # starves it within a few users, before any test can conclude).
    test = OffPolicyCS(n_expected=500)
    guard = Guardrail(name="success", harm="decrease", test=OffPolicyCS(n_expected=200))
    policy = TrafficCap(
        policy=ConservativeBudget(policy=EpsilonGreedy(epsilon=0.2), alpha=0.5, refresh=20),
        explore_share=0.5,
    )
    engine = Engine(
        store, [spec(policy=policy, test=test, guardrails=(guard,))], secret=SECRET, seed=12
    )
    for _ in range(3_000):
        d = engine.decide("ranker")
        engine.reward(d, 1.0 if d.arm == 0 else 0.0)
        if engine.status("ranker")["status"][1] == "rolled_back":
            break
    assert engine.status("ranker")["status"] == ["exploring", "rolled_back"]
    assert all(engine.decide("ranker").arm == 0 for _ in range(50))
    moves = [r for r in store.records("ranker") if r["type"] == "transition"]
    assert [m["new"] for m in moves] == ["rolled_back"]
    # an off-policy guardrail bounds the difference only: the reason gives no metric
    # bounds (it said "metric bounds [nan, nan]" on the status page)
    assert moves[0]["reason"].startswith("guardrail success: harm (harm bounds [")
    assert "nan" not in moves[0]["reason"] and "metric" not in moves[0]["reason"]
    # the change, its evidence and the states before and after, for the status page
    assert engine.changes("ranker") == moves
    states = [h["status"][1] for h in engine.history("ranker")]
    assert states[0] == "exploring" and states[-1] == "rolled_back"
    assert states == sorted(states, key=["exploring", "rolled_back"].index)
    # the budget: control earned 1 on every one of its users and the alternative 0, so
    # what is left is at most what alpha = 0.5 allows over control's users; positive,
    # since the budget only let the alternative play while it could afford it
    budget = engine.status("ranker")["budget"]
    n = engine.status("ranker")["state"]["budget.n"][0]
    assert budget["alpha"] == 0.5
    assert 0 < budget["remaining"] <= n[0] - 0.5 * sum(n)


def test_bad_specs_and_unknown_experiments() -> None:
    with pytest.raises(ConfigError, match=r"experiments\.x\.alternatives: need a control"):
        spec(name="x", alternatives=("only",))
    with pytest.raises(ConfigError, match=r"reward_range: need finite low < high"):
        spec(reward_range=(1.0, 0.0))
    with pytest.raises(ConfigError, match=r"default_reward: must be a number in \[0\.0, 1\.0\]"):
        spec(default_reward=2.0)
    # an SDK's parameters go upstream and into the API's answers as JSON
    with pytest.raises(ConfigError, match=r"ranker\.params\[1\]\.depth: must be a string"):
        spec(params=({}, {"depth": np.int64(3)}))
    with pytest.raises(ConfigError, match=r"ranker\.params\[1\]: keys must be strings"):
        spec(params=({}, {1: "x"}))
    with pytest.raises(ConfigError, match=r"ranker\.params\[0\]: must be a mapping"):
        spec(params=(["depth"], {}))
    assert spec(params=({}, {"a": [1, 2.5, None, True], "b": {"c": "d"}})).params
    from autoexp.store import open_store

    engine = Engine(open_store("memory://"), [spec()], secret=SECRET)
    with pytest.raises(
        UnknownExperimentError, match=r"'nope' is not defined; defined: \['ranker'\]"
    ):
        engine.decide("nope")


def test_a_rolled_back_arms_units_are_reassigned(store: Any) -> None:
    engine = Engine(store, [spec()], secret=SECRET, seed=13)
    units = [f"u{i}" for i in range(40)]
    first = {u: engine.decide("ranker", unit=u) for u in units}
    on_alt = [u for u in units if first[u].arm == 1]
    assert on_alt  # a 50% cap: about half of them
    store.set("ranker", "status", '["exploring", "rolled_back"]')  # as the rule records it
    engine.refresh()
    for u in on_alt:
        again = engine.decide("ranker", unit=u)
        assert again.arm == 0 and not again.sticky and again.propensity == 1.0
    for u in units:  # and they stay on control from then on
        assert engine.decide("ranker", unit=u).arm == 0


def test_a_group_of_decisions_is_the_same_as_one_by_one_in_one_store_call(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # decide_each (the sidecar's units not held, queued together) draws, assigns and
    # records exactly as decide called for each in turn (same seed, same clock): the
    # same arms, propensities and stickiness, a unit repeated in the group included, and
    # errors in their places; but its units cost one store call, not one each.
    clock = Clock()
    batch = Engine(store, [spec()], secret=SECRET, seed=31, clock=clock, unit_cache=100)
    alone = Engine(MemoryStore(), [spec()], secret=SECRET, seed=31, clock=clock, unit_cache=100)
    for engine in (batch, alone):  # u0..u4 seen before: held
        for i in range(5):
            engine.decide("ranker", unit=f"u{i}")
    asks: list[tuple[str, str | None, Any]] = [
        ("ranker", "u1", None),
        ("ranker", "new-1", None),
        ("nope", "new-2", None),  # unknown experiment: its error, in its place
        ("ranker", None, None),
        ("ranker", "new-3", None),
        ("ranker", "new-1", None),  # again, in the same group: the first one's arm
        ("ranker", "new-4", {"x": 1.0}),  # named features the spec does not define
        ("ranker", "u3", None),
    ] + [("ranker", f"new-{i}", None) for i in range(5, 25)]
    counted = CountingAssign(store, monkeypatch)
    got = batch.decide_each(asks)
    assert counted.calls == 1  # every unit not held, in one call

    def alone_decide(name: str, unit: str | None, context: Any) -> Any:
        try:
            return alone.decide(name, unit=unit, context=context)
        except (RequestError, UnknownExperimentError) as e:
            return e

    want = [alone_decide(*ask) for ask in asks]

    def facts(x: Any) -> Any:
        if isinstance(x, Exception):
            return type(x), str(x)
        return x.arm, x.alternative, x.propensity, x.sticky, x.ticket.propensity

    assert [facts(x) for x in got] == [facts(x) for x in want]
    assert isinstance(got[2], UnknownExperimentError) and isinstance(got[6], RequestError)
    assert got[5].arm == got[1].arm and got[5].sticky and not got[1].sticky
    assert {d.arm for d in got if isinstance(d, Decision)} == {0, 1}  # both arms drawn
    batch.flush()
    decided = [r for r in store.records("ranker") if r["type"] == "decision"]
    assert len(decided) == 5 + len(asks) - 2  # every decision logged, no error's
    assert [r["decision_id"] for r in decided[5:]] == [d.id for d in got if isinstance(d, Decision)]
    # later: held, no store call
    again = [batch.decide("ranker", unit=f"new-{i}") for i in (1, 3, 5)]
    assert counted.calls == 1 and all(d.sticky for d in again)


def test_a_group_reassigns_the_units_whose_arm_was_rolled_back_in_a_second_call(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another replica assigned the units; here, where the alternative is rolled back,
    # a group of them: those on the alternative are set again (one more store call for
    # all of them), on control, not sticky; those on control keep their assignment.
    first = Engine(store, [spec()], secret=SECRET, seed=32)
    units = [f"u{i}" for i in range(30)]
    before = {u: first.decide("ranker", unit=u) for u in units}
    on_alt = {u for u in units if before[u].arm == 1}
    assert 0 < len(on_alt) < len(units)
    store.set("ranker", "status", '["exploring", "rolled_back"]')
    here = Engine(store, [spec()], secret=SECRET, seed=33)
    counted = CountingAssign(store, monkeypatch)
    got = here.decide_each([("ranker", u, None) for u in units])
    assert counted.calls == 2
    for u, d in zip(units, got, strict=True):
        assert isinstance(d, Decision) and d.arm == 0
        assert d.sticky == (u not in on_alt)
        assert d.propensity == (1.0 if u in on_alt else before[u].propensity)
    assert [here.decide("ranker", unit=u).arm for u in units] == [0] * len(units)
    assert counted.calls == 2  # now held here


def test_a_group_fails_whole_when_the_store_does(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine(store, [spec()], secret=SECRET, seed=34)
    engine.flush()
    logged = len(store.records("ranker"))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("store: down for the test")

    monkeypatch.setattr(store, "assign_many", broken)
    with pytest.raises(StoreError, match="down for the test"):
        engine.decide_each([("ranker", f"u{i}", None) for i in range(3)])
    engine.flush()
    assert len(store.records("ranker")) == logged  # nothing recorded


def test_defaults_reach_a_crashed_replicas_decisions(store: Any) -> None:
    # Replica A decides and dies before anything is rewarded; replica B, started later on
    # the same store, applies the default reward to A's decisions once their window
    # closes, and a second expire (or A's, had it lived) applies nothing more.
    clock = Clock()
    options = {"join_window_s": 60.0, "default_reward": 0.0}
    a = Engine(store, [spec(**options)], secret=SECRET, seed=14, clock=clock)
    made = [a.decide("ranker") for _ in range(5)]
    a.reward(made[0], 1.0)
    del a
    clock.now += 30
    b = Engine(store, [spec(**options)], secret=SECRET, seed=15, clock=clock)
    fresh = b.decide("ranker")
    assert b.expire() == 0  # nothing is past its window yet
    clock.now += 31
    assert b.expire() == 4  # A's four unrewarded decisions; B's own is still open
    assert b.expire() == 0
    clock.now += 30
    assert b.expire() == 1 and fresh.id in {
        r["decision_id"] for r in store.records("ranker") if r.get("source") == "default"
    }
    assert store.read("ranker")["policy.n"].sum() == 6.0
    assert store.read("ranker")["policy.sum_reward"].sum() == 1.0


def expiring(
    store: Any, monkeypatch: pytest.MonkeyPatch, *seeds: int
) -> tuple[Clock, Any, list[int], list[Engine]]:
    """Replicas on ``store`` (one per seed, a 60 s join window, default reward 0, no
    background writer) on one test clock; the store's ``lines`` (the log, as expire reads
    it: their heads, see records.outline) counted, each page's length appended to the
    list returned; and the real ``lines``, uncounted."""
    clock = Clock()
    options = {"join_window_s": 60.0, "default_reward": 0.0}
    engines = [
        Engine(store, [spec(**options)], secret=SECRET, seed=s, clock=clock, log_flush_s=0.0)
        for s in seeds
    ]
    real = store.lines
    read: list[int] = []

    def counted(name: str, **kwargs: Any) -> list[str]:
        out = real(name, **kwargs)
        read.append(len(out))
        return out

    monkeypatch.setattr(store, "lines", counted)
    return clock, real, read, engines


def test_expire_reads_each_record_once_and_defaults_each_decision_once(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # expire used to re-read the log from the first open decision on every pass: a whole
    # join window of records every 10 s, under the engine's lock (stalls of 0.3-0.5 s in
    # the proxy at 3k requests/s). A replica now reads each record once; another replica
    # catches up from the shared cursor; between them every unrewarded decision gets the
    # default exactly once. The store is real; only its reads are counted.
    clock, real, read, (a,) = expiring(store, monkeypatch, 21)
    made = [a.decide("ranker") for _ in range(300)]
    a.reward_many([(d, 1.0) for d in made[::3]])  # 100 rewarded, 200 silent
    assert a.expire() == 0
    assert sum(read) == len(real("ranker"))  # the whole log, once
    seen, read[:] = len(real("ranker")), []
    clock.now += 30
    later = [a.decide("ranker") for _ in range(50)]
    assert a.expire() == 0
    assert sum(read) == len(real("ranker")) - seen == 50  # only what was appended
    clock.now += 31  # the first 300's window closed, not the last 50's
    b = Engine(
        store, [spec(join_window_s=60.0, default_reward=0.0)], secret=SECRET, seed=22, clock=clock
    )
    assert b.expire() == 200 and a.expire() == 0  # b settled them; a follows the cursor
    read[:] = []
    store.set("ranker", "expire_cursor", "0")  # as a slow replica's older pass could
    assert a.expire() == 0 and sum(read) == 0  # a knows what it read was settled
    clock.now += 30
    assert a.expire() + b.expire() == 50
    defaults = [r["decision_id"] for r in store.records("ranker") if r.get("source") == "default"]
    silent = {d.id for i, d in enumerate(made) if i % 3} | {d.id for d in later}
    assert sorted(defaults) == sorted(silent)  # each once
    assert store.read("ranker")["policy.n"].sum() == 350.0


def test_with_a_lease_one_replica_reads_the_log_and_another_takes_over_when_it_stops(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Replicas expiring on a cadence each read the whole shared log: N replicas, N times
    # the work. With hold_s, the lease's holder reads it and applies every replica's
    # defaults; the others read nothing. When the holder stops renewing, the next to call
    # after hold_s takes over from the shared cursor, and every silent decision still gets
    # the default exactly once. The lease runs on the store's clock (real time), the join
    # windows on the engines' (the test's).
    clock, real, read, (a, b) = expiring(store, monkeypatch, 41, 42)
    first = [a.decide("ranker") for _ in range(30)] + [b.decide("ranker") for _ in range(30)]
    b.flush()
    assert a.expire(hold_s=0.4) == 0 and sum(read) == 60  # a holds the lease: reads it all
    read[:] = []
    first += [b.decide("ranker") for _ in range(10)]
    assert b.expire(hold_s=0.4) == 0 and read == []  # b does not hold it: reads nothing
    assert len(real("ranker")) == 70  # but its pass wrote its own decisions to the log
    clock.now += 61
    assert b.expire(hold_s=0.4) == 0 and a.expire(hold_s=0.4) == 70  # b's included
    second = [b.decide("ranker") for _ in range(20)]
    time.sleep(0.6)  # a stops renewing; its lease runs out
    clock.now += 61
    assert b.expire(hold_s=0.4) == 20  # b took over where a's pass left the cursor
    assert a.expire(hold_s=0.4) == 0  # and now b holds it
    assert a.expire() == 0  # a manual pass (no lease) finds everything settled
    defaults = [r["decision_id"] for r in store.records("ranker") if r.get("source") == "default"]
    assert sorted(defaults) == sorted(d.id for d in first + second)  # each once
    assert store.read("ranker")["policy.n"].sum() == 90.0
    with pytest.raises(ConfigError, match="hold_s"):
        a.expire(hold_s=0.0)


def test_a_closed_replica_gives_up_its_lease_and_the_next_takes_over_at_once(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A replica shut down gracefully (close) releases its lease: the next replica's pass
    # takes it over at once, not hold_s later (60 s here: far beyond the test), and
    # applies the defaults of both replicas' decisions exactly once.
    clock, _real, _read, (a, b) = expiring(store, monkeypatch, 43, 44)
    made = [a.decide("ranker") for _ in range(15)] + [b.decide("ranker") for _ in range(15)]
    assert a.expire(hold_s=60) == 0 and a.status("ranker")["expire_held"] is True
    assert b.expire(hold_s=60) == 0 and b.status("ranker")["expire_held"] is False
    clock.now += 61
    a.close()
    assert a.status("ranker")["expire_held"] is False
    assert b.expire(hold_s=60) == 30 and b.status("ranker")["expire_held"] is True
    defaults = [r["decision_id"] for r in store.records("ranker") if r.get("source") == "default"]
    assert sorted(defaults) == sorted(d.id for d in made)  # each once
    b.close()


@pytest.mark.parametrize(
    ("context", "match"),
    [
        ([0.5, math.nan], r"context\[1\]: must be a finite number \(got nan\)"),
        ([math.inf], r"context\[0\]: must be a finite number"),
        (["1.5"], r"context\[0\]: must be a finite number \(got '1.5'\)"),
        ([[1.0]], r"context\[0\]"),
        ([True], r"context\[0\]"),
        ("12", r"context: must be a sequence of numbers"),
        ({"a": 1.0}, r"context: experiment .ranker. defines no named features"),
        (3.0, r"context: must be a sequence of numbers"),
        ([0.0] * 4097, r"context: at most 4096 numbers"),
    ],
)
def test_a_bad_context_is_refused_before_anything_is_recorded(
    store: Any, context: Any, match: str
) -> None:
    # A NaN context used to be accepted, then failed its whole log group when written
    # (JSON cannot hold it): the good decisions around it were never logged, and the
    # store counted as down. Now it is refused at decide, and the engine goes on.
    engine = Engine(store, [spec()], secret=SECRET, seed=23, log_flush_s=0.0)
    good = engine.decide("ranker", context=np.array([0.25, 1.0]))
    with pytest.raises(RequestError, match=match):
        engine.decide("ranker", context=context)
    after = engine.decide("ranker", context=[1, 2.5])
    engine.flush()
    logged = {r["decision_id"]: r["context"] for r in store.records("ranker")}
    assert logged == {good.id: [0.25, 1.0], after.id: [1.0, 2.5]}
    assert engine.check_store() == (True, None)


def test_a_decision_object_skips_the_signature_check_only_where_it_was_made(
    store: Any,
) -> None:
    # The engine that decided trusts its own Decision objects (the proxy rewards them
    # without checking their signature again); another engine, with another key, checks
    # the token and refuses it; expiry is still enforced on trusted ones.
    clock = Clock()
    a = Engine(store, [spec(token_ttl_s=60.0)], secret=SECRET, seed=24, clock=clock)
    b = Engine(store, [spec(token_ttl_s=60.0)], secret="o" * 32, seed=25, clock=clock)
    made, late = a.decide("ranker"), a.decide("ranker")
    before = snapshot(store)
    with pytest.raises(RewardError, match="forged or signed with another key"):
        b.reward(made, 1.0)
    assert snapshot(store) == before
    assert a.reward(made, 1.0) and not a.reward(made, 1.0)
    clock.now += 61
    with pytest.raises(RewardError, match=r"token: expired 1 s ago"):
        a.reward(late, 1.0)
    assert store.read("ranker")["policy.n"].sum() == 1.0


def test_decisions_are_logged_in_groups_and_on_close(store: Any) -> None:
    # No background writer: 5 decisions (fewer than a group of 8) stay pending; the 8th
    # writes a group; a reward writes its decision first; close() writes the rest.
    engine = Engine(store, [spec()], secret=SECRET, seed=16, log_batch=8, log_flush_s=0.0)
    made = [engine.decide("ranker") for _ in range(5)]

    def logged() -> list[str]:
        return [r["decision_id"] for r in store.records("ranker") if r["type"] == "decision"]

    assert logged() == [] and engine.status("ranker")["unlogged"] == 5
    made += [engine.decide("ranker") for _ in range(3)]
    assert logged() == [d.id for d in made]
    more = engine.decide("ranker")
    engine.reward(more, 1.0)
    assert logged()[-1] == more.id
    last = engine.decide("ranker")
    engine.close()
    assert logged()[-1] == last.id
    with pytest.raises(ConfigError, match=r"log_batch: must be an integer >= 1"):
        Engine(store, [spec()], secret=SECRET, log_batch=0)


def test_reward_many_applies_a_batch_once_each(store: Any) -> None:
    engine = Engine(store, [spec(test=OffPolicyCS(n_expected=500))], secret=SECRET, seed=17)
    made = [engine.decide("ranker") for _ in range(30)]
    values = [float(i % 2) for i in range(30)]
    assert engine.reward_many(list(zip(made, values, strict=True))) == [True] * 30
    # again, mixed with new ones: only the new ones count
    more = [engine.decide("ranker") for _ in range(5)]
    outcome = engine.reward_many([(made[0], 1.0), (more[0].token, 1.0), (more[0], 0.0)])
    assert outcome == [False, True, False]
    n = store.read("ranker")["policy.n"][0]
    arms = np.bincount([d.arm for d in [*made, more[0]]], minlength=2)
    np.testing.assert_array_equal(n, arms)
    rewards = [r for r in store.records("ranker") if r["type"] == "reward"]
    assert len(rewards) == 31
    # the test's state took one increment per reward (its count of observations)
    test_n = sum(np.asarray(v).sum() for k, v in store.read("ranker").items() if k == "test.arms.n")
    assert test_n == 31


def test_a_bad_item_refuses_the_batch_by_index(store: Any) -> None:
    engine = Engine(store, [spec()], secret=SECRET, seed=18)
    made = [engine.decide("ranker") for _ in range(3)]
    engine.flush()
    before = snapshot(store)
    with pytest.raises(RewardError, match=r"rewards\[2\]: reward: must be finite"):
        engine.reward_many([(made[0], 1.0), (made[1], 0.0), (made[2], float("nan"))])
    with pytest.raises(RewardError, match=r"rewards\[1\]: token: malformed"):
        engine.reward_many([(made[0], 1.0), ("junk", 0.0)])
    assert snapshot(store) == before


def test_without_a_background_writer_the_engine_still_recovers(redis_server: Any) -> None:
    # log_flush_s=0: the store's failure is seen by a write (here the decision's own log
    # write), decisions are then refused (the SDK serves control), and once Redis is back
    # a decision probes it (at most once a second) and the engine decides again.
    redis_server.flush()
    url = redis_server.url + "?socket_timeout_s=0.3&connect_timeout_s=0.3"
    from autoexp.errors import StoreError
    from autoexp.store import open_store

    engine = Engine(open_store(url), [spec()], secret=SECRET, seed=19, log_batch=1, log_flush_s=0.0)
    engine.decide("ranker")
    redis_server.stop()
    try:
        engine.decide("ranker")  # served from the snapshot; its log write fails
        with pytest.raises(StoreError, match="store unavailable"):
            engine.decide("ranker")
    finally:
        redis_server.start()
    time.sleep(1.1)
    d = engine.decide("ranker")
    engine.refresh()  # this Redis kept nothing: the engine declares its state again
    assert engine.reward(d, 1.0)


def test_the_background_writer_survives_an_unexpected_client_failure() -> None:
    # A client library can fail with something other than its own error class (redis-py
    # raises AttributeError when its connection is closed under a running command). The
    # background writer must not die of it: the store counts as down, the decisions stay
    # pending, and the next write after the store answers again logs them all.
    from autoexp.errors import StoreError
    from autoexp.store.memory import MemoryStore

    class Flaky(MemoryStore):
        fail = 0

        def append(self, experiment: str, records: Any) -> None:
            if self.fail:
                self.fail -= 1
                raise AttributeError("'NoneType' object has no attribute 'readline'")
            super().append(experiment, records)

    store = Flaky()
    engine = Engine(store, [spec()], secret=SECRET, seed=20, log_flush_s=0.01)
    store.fail = 1
    made = [engine.decide("ranker") for _ in range(3)]
    deadline = time.monotonic() + 5
    # until the writer has counted the failure, not only met it: the count comes after
    # the store's raise, in the writer's own thread (a loaded machine saw the gap)
    while (store.fail or not engine.log_errors) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.fail == 0 and engine.log_errors >= 1
    assert engine._flusher is not None and engine._flusher.is_alive()
    deadline = time.monotonic() + 5
    while len(store.records("ranker")) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r["decision_id"] for r in store.records("ranker")] == [d.id for d in made]
    assert engine.status("ranker")["store_ok"]
    engine.close()
    assert not isinstance(engine._down, StoreError)


def test_warm_up_writes_nothing(store: Any) -> None:
    engine = Engine(store, [spec(test=OffPolicyCS(n_expected=500))], secret=SECRET, seed=21)
    engine.flush()
    before = snapshot(store)
    engine.warm_up()
    engine.flush()
    assert snapshot(store) == before


def test_decisions_go_on_while_the_log_is_written() -> None:
    # The background writer takes a full group and writes it without the state lock: with
    # the store's append held (a slow fsync, a slow network), 3 more groups of decisions
    # are still made; a reward waits for the write in progress (its decision is logged
    # first); the log keeps the decisions' order.
    import threading

    from autoexp.store.memory import MemoryStore

    class Held(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.entered = threading.Event()
            self.release = threading.Event()

        def append(self, experiment: str, records: Any) -> None:
            self.entered.set()
            assert self.release.wait(timeout=30)
            super().append(experiment, records)

    store = Held()
    engine = Engine(store, [spec()], secret=SECRET, seed=22, log_batch=8, log_flush_s=0.01)
    made = [engine.decide("ranker") for _ in range(8)]
    assert store.entered.wait(timeout=10)  # the writer is inside append, holding the group
    more = [engine.decide("ranker") for _ in range(24)]  # not blocked by it
    rewarded = threading.Event()

    def reward() -> None:
        engine.reward(more[-1], 1.0)
        rewarded.set()

    thread = threading.Thread(target=reward)
    thread.start()
    assert not rewarded.wait(timeout=0.3)  # waits for the write in progress
    store.release.set()
    thread.join(timeout=30)
    assert rewarded.is_set()
    engine.close()
    log = store.records("ranker")
    decided = [r["decision_id"] for r in log if r["type"] == "decision"]
    assert decided == [d.id for d in made + more]
    reward_at = next(i for i, r in enumerate(log) if r["type"] == "reward")
    assert reward_at > [r.get("decision_id") for r in log].index(more[-1].id)


def test_decision_ids_sort_by_time_and_differ_after_a_fork(store: Any) -> None:
    """Ids are 24 hex digits, the millisecond first: later decisions sort later (the
    SQLite store's index of applied rewards grows at its end), and none repeats, in this
    process or in a forked child (whose random part is reseeded)."""
    import os

    clock = Clock()
    # no background writer: a forked child must not inherit a lock held by a thread
    engine = Engine(store, [spec()], secret=SECRET, seed=2, clock=clock, log_flush_s=0.0)
    ids = []
    for _ in range(50):
        ids += [engine.decide("ranker").id for _ in range(40)]
        clock.now += 0.001
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in ids)
    assert ids[::40] == sorted(ids[::40]) and len(set(ids)) == len(ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one id to the parent, then out without cleanup
        os.write(write, engine.decide("ranker").id.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    parent = engine.decide("ranker").id  # without the reseed, the child's twin
    assert len(child) == 24 and child[:11] == parent[:11]
    assert child not in ids and child != parent


def test_make_decision_is_the_dataclass() -> None:
    # The engine makes its decisions with make_decision (the frozen dataclass's __init__
    # cost 3.2 us a decision): the same fields, in the same order, and an object equal to
    # Decision(...) in every field, repr included, and as frozen; a field added to Decision
    # without make_decision fails here.
    params = inspect.signature(make_decision).parameters
    assert list(params) == [f.name for f in dataclasses.fields(Decision)]
    engine = Engine(MemoryStore(), [spec()], secret=SECRET, seed=3)
    made = engine.decide("ranker")
    values = [getattr(made, name) for name in params]
    plain = Decision(*values)
    assert type(made) is Decision and vars(made) == vars(plain)
    assert made == plain and repr(made) == repr(plain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.arm = 1  # type: ignore[misc]


def test_a_restart_under_other_alternative_names_is_said(caplog: pytest.LogCaptureFixture) -> None:
    # The same shapes, so the store takes it, but v2's evidence now counts for "v3": said
    # once at the start, and the store keeps the names it was first given.
    store = MemoryStore()
    Engine(store, [spec()], secret=SECRET, log_flush_s=0).close()
    Engine(store, [spec()], secret=SECRET, log_flush_s=0).close()  # the same: nothing said
    assert not [r for r in caplog.records if "the store holds its state" in r.getMessage()]
    Engine(store, [spec(alternatives=("v1", "v3"))], secret=SECRET, log_flush_s=0).close()
    said = [r for r in caplog.records if "the store holds its state" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    assert (
        "experiments.ranker: the store holds its state for alternatives ['v1', 'v2'], the "
        "config names them ['v1', 'v3']" in said[0].getMessage()
    )
    assert store.get("ranker", "alternatives") == '["v1", "v2"]'


def test_the_allocation_history_is_every_replicas_and_outlives_a_restart(
    durable_store: Any,
) -> None:
    # The status page drew each worker's own refreshes since it started: another chart
    # on each worker, and none of an experiment's past after a restart or a reload. The
    # store holds them now: a point per HISTORY_SAVE_S per replica (here every refresh:
    # the fake clock moves HISTORY_SAVE_S between them) and at each change of state.
    clock = Clock()

    def users(engine: Engine, n: int) -> None:
        for _ in range(n):
            clock.now += 1.0
            engine.reward(engine.decide("ranker"), 1.0)

    first = Engine(durable_store, [spec()], secret=SECRET, seed=1, clock=clock)
    users(first, 200)  # 20 refreshes: every 20 events (a decision and a reward each)
    first.operate("ranker", "pause", reason="incident")
    before = first.history("ranker")
    first.close()
    assert [h["paused"] for h in before][-2:] == [False, True]
    assert all(h["version"] is None for h in before)  # all of them the store's
    # a restart: the new replica's chart begins where the experiment did
    second = Engine(durable_store, [spec()], secret=SECRET, seed=2, clock=clock)
    third = Engine(durable_store, [spec()], secret=SECRET, seed=3, clock=clock)
    try:
        second.operate("ranker", "resume", reason="fixed")
        users(second, 100)
        users(third, 100)
        for engine in (second, third):  # two replicas at once: each shows both
            history = engine.history("ranker")
            assert history[: len(before)] == before
            times = [h["time"] for h in history]
            assert times == sorted(times)  # (a start's and an operator's share a time)
            assert history[-1]["paused"] is False
            # 10 refreshes each of the two (and the resume's), all of them saved
            assert len(history) >= len(before) + 20
    finally:
        second.close()
        third.close()


def engine_rows(engine: Engine) -> list[Any]:
    """This replica's own refreshes, as it keeps them."""
    return list(engine._get("ranker").history)


def test_the_shared_history_is_bounded_keeps_its_span_and_every_change() -> None:
    from autoexp.experiment import HISTORY, HISTORY_SAVE_S, HISTORY_SAVED

    clock = Clock()
    start = clock.now
    engine = Engine(MemoryStore(), [spec()], secret=SECRET, seed=1, clock=clock)
    try:
        for i in range(3 * HISTORY_SAVED):
            clock.now += HISTORY_SAVE_S  # each refresh due to be saved
            if i % 500 == 250:
                engine.operate("ranker", "pause", reason="a")
            elif i % 500 == 260:
                engine.operate("ranker", "resume", reason="b")
            else:
                engine.refresh("ranker")
        raw = engine.store.get("ranker", "history")
        stored = [{"time": t, "paused": p} for t, _, _, p in json.loads(raw)]
        assert len(stored) <= HISTORY_SAVED  # bounded, the older half thinned
        assert stored[0]["time"] == start and stored[-1]["time"] == clock.now  # its span
        # the newest half as saved, every point
        recent = [h["time"] for h in stored[-HISTORY_SAVED // 2 :]]
        assert np.allclose(np.diff(recent), HISTORY_SAVE_S)
        # every pause and resume, however old: 6 of each over 3,000 refreshes
        flips = [a["paused"] != b["paused"] for a, b in itertools.pairwise(stored)]
        assert sum(flips) == 12
        # the chart: the store's points with this replica's own refreshes (its last
        # HISTORY, each one), from the start
        history = engine.history("ranker")
        assert history[0]["time"] == start and len(history) > HISTORY
        assert [h["time"] for h in history[-HISTORY:]] == [t for t, *_ in engine_rows(engine)]
        # a point's allocation stays as the config's alternatives: one saved under another
        # number of alternatives (the config since changed) is left out
        engine.store.set(
            "ranker",
            "history",
            '[[1.0,[0.5,0.25,0.25],["exploring","exploring","exploring"],false]]',
        )
        assert engine.history("ranker")[0]["time"] > 1.0
        # a value not of that form (by hand, by another version): the chart's loss only,
        # never a refresh or the page failing; the next point starts it afresh
        for junk in ("{not json", '{"a": 1}', '[[1, 2], "x", [1.0, [0.5], ["a"], 0]]'):
            engine.store.set("ranker", "history", junk)
            assert engine.history("ranker")[0]["version"] is not None  # the replica's own
            clock.now += HISTORY_SAVE_S
            engine.refresh("ranker")
            assert json.loads(engine.store.get("ranker", "history"))[0][0] == clock.now

        def fail(experiment: str, name: str) -> Any:
            raise StoreError("store: connection refused")

        engine.store.get = fail  # the store failing: this replica's own refreshes
        own = engine.history("ranker")
        assert own and all(isinstance(h["version"], int) for h in own)
    finally:
        engine.store.get = MemoryStore.get.__get__(engine.store)
        engine.close()
