"""One contract, every backend: memory, SQLite (a real file) and Redis (a real
``redis-server`` started on a free port by the fixtures)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import pytest

from autoexp.errors import StoreError
from autoexp.store import open_store
from autoexp.store.base import Columns

SHAPES = {"n": (1, 3), "sum_reward": (1, 3)}


def test_declare_read_and_shapes(store: Any) -> None:
    assert store.read("exp") == {}
    store.declare("exp", SHAPES)
    store.declare("exp", SHAPES)  # idempotent
    state = store.read("exp")
    assert set(state) == {"n", "sum_reward"}
    np.testing.assert_array_equal(state["n"], np.zeros((1, 3)))
    with pytest.raises(StoreError, match=r"'exp'\.n has shape \(1, 3\) \(asked \(1, 4\)\)"):
        store.declare("exp", {"n": (1, 4)})
    store.declare("exp", {"extra": (2,)})  # a new field may be added
    assert store.read("exp")["extra"].shape == (2,)


def test_dense_and_sparse_adds_sum_exactly(store: Any) -> None:
    store.declare("exp", SHAPES)
    assert store.add("exp", {"n": [[1.0, 0.0, 2.0]], "sum_reward": [[0.5, 0.0, 0.25]]})
    assert store.add("exp", {"n": [1.0, 1.0, 1.0]}, at={"n": [2, 2, 0]})
    state = store.read("exp")
    np.testing.assert_array_equal(state["n"], [[2.0, 0.0, 4.0]])
    np.testing.assert_array_equal(state["sum_reward"], [[0.5, 0.0, 0.25]])
    # reads are copies
    state["n"][0, 0] = 99.0
    assert store.read("exp")["n"][0, 0] == 2.0


def test_once_makes_an_add_idempotent(store: Any) -> None:
    store.declare("exp", SHAPES)
    rec = {"type": "reward", "decision_id": "d1", "reward": 1.0}
    assert store.add("exp", {"n": [1.0]}, at={"n": [1]}, once="r1", record=rec) is True
    assert store.add("exp", {"n": [1.0]}, at={"n": [1]}, once="r1", record=rec) is False
    assert store.read("exp")["n"][0, 1] == 1.0
    assert store.records("exp") == [rec]
    assert store.add("exp", {"n": [1.0]}, at={"n": [1]}, once="r2") is True
    assert store.read("exp")["n"][0, 1] == 2.0


@pytest.mark.parametrize(
    ("amounts", "at", "match"),
    [
        ({"q": [1.0]}, {"q": [0]}, r"has no field 'q'"),
        ({"n": [[1.0, 2.0]]}, None, r"'n' has shape \(1, 3\) \(got \(1, 2\)\)"),
        ({"n": [[1.0, np.nan, 0.0]]}, None, r"amounts must be finite"),
        ({"n": [1.0]}, {"n": [3]}, r"index out of range 0\.\.2"),
        ({"n": [1.0, 2.0]}, {"n": [0]}, r"1 indices for 2 amounts"),
    ],
)
def test_bad_adds_are_refused_and_change_nothing(
    store: Any, amounts: dict[str, Any], at: Any, match: str
) -> None:
    store.declare("exp", SHAPES)
    store.add("exp", {"n": [[1.0, 1.0, 1.0]]}, record={"i": 0})
    with pytest.raises(StoreError, match=match):
        store.add("exp", amounts, at=at, once="r1", record={"i": 1})
    np.testing.assert_array_equal(store.read("exp")["n"], [[1.0, 1.0, 1.0]])
    assert store.records("exp") == [{"i": 0}]
    # the refused add did not consume its id
    assert store.add("exp", {"n": [1.0]}, at={"n": [0]}, once="r1")


def test_undeclared_experiment_and_bad_records(store: Any) -> None:
    with pytest.raises(StoreError, match=r"experiment 'nope' has no declared state"):
        store.add("nope", {"n": [1.0]}, at={"n": [0]})
    with pytest.raises(StoreError, match=r"not JSON-serialisable"):
        store.append("exp", [{"x": float("nan")}])
    with pytest.raises(StoreError, match=r"not JSON-serialisable"):
        store.append("exp", [{"x": object()}])
    assert store.records("exp") == []
    with pytest.raises(StoreError, match=r"must be a non-empty string"):
        store.declare("", SHAPES)


def test_assign_first_exposure_wins(store: Any) -> None:
    assert store.assign("exp", "user-1", "1") == "1"
    assert store.assign("exp", "user-1", "2") == "1"
    assert store.assign("exp", "user-1", "2", unless="0") == "1"
    assert store.assign("exp", "user-1", "2", unless="1") == "2"  # its arm left: reassigned
    assert store.assign("exp", "user-2", "0") == "0"


def test_assign_many_is_assign_item_by_item_in_one_call(store: Any) -> None:
    store.assign("exp", "user-1", "1")
    got = store.assign_many(
        "exp",
        [
            ("user-1", "2", None),  # has one: kept
            ("user-2", "3", None),  # new
            ("user-2", "4", None),  # repeated: sees the item before it
            ("user-2", "5", "3"),  # its value was "3": replaced
            ("user-3", "6", "0"),  # new, whatever `unless` says
            ("user-1", "7", "0"),  # not "0": kept
        ],
    )
    assert got == ["1", "3", "3", "5", "6", "1"]
    assert [store.assign("exp", u, "x") for u in ("user-1", "user-2", "user-3")] == ["1", "5", "6"]
    assert store.assign_many("exp", []) == []
    with pytest.raises(StoreError, match="non-empty string"):  # checked before any write
        store.assign_many("exp", [("user-4", "1", None), ("", "1", None)])
    assert store.assign("exp", "user-4", "2") == "2"


def test_log_keeps_order_and_pages(store: Any) -> None:
    store.append("exp", [{"i": i, "v": np.float64(i) / 2} for i in range(5)])
    store.append("exp", [{"i": 5}])
    assert [r["i"] for r in store.records("exp")] == [0, 1, 2, 3, 4, 5]
    assert [r["i"] for r in store.records("exp", start=2, limit=3)] == [2, 3, 4]
    assert store.records("exp", start=6) == []
    assert store.records("exp")[3]["v"] == 1.5
    # the same records as their JSON texts, unparsed (expire reads their heads)
    lines = store.lines("exp")
    assert all(isinstance(x, str) for x in lines)
    assert [json.loads(x) for x in lines] == store.records("exp")
    assert [json.loads(x)["i"] for x in store.lines("exp", start=2, limit=3)] == [2, 3, 4]
    assert store.lines("exp", start=6) == [] and store.lines("nothing") == []


def test_log_read_on_in_pages_while_it_grows(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Reading on from where the last read ended (as expire and paged exports do) is served
    # from the store's remembered place, not by skipping from the start; whatever the path,
    # pages read while the log grows, and reads from any start (behind, at, past the
    # remembered place, in another experiment between), agree with one full read. Redis
    # reads its stream in pages of 4 here, so reads span and skip several.
    monkeypatch.setattr("autoexp.store.redis._PAGE", 4)
    store.append("other", [{"o": 0}])
    got: list[int] = []
    for round_ in range(6):
        store.append("exp", [{"i": 7 * round_ + j} for j in range(7)])
        while page := store.records("exp", start=len(got), limit=3):
            got += [r["i"] for r in page]
            assert store.records("other") == [{"o": 0}]
    assert got == list(range(42)) == [r["i"] for r in store.records("exp")]
    assert [r["i"] for r in store.records("exp", start=40)] == [40, 41]
    assert [r["i"] for r in store.records("exp", start=5, limit=2)] == [5, 6]  # behind
    assert [r["i"] for r in store.records("exp", start=7, limit=2)] == [7, 8]  # at it
    assert [r["i"] for r in store.records("exp", start=30, limit=1)] == [30]  # past it
    assert store.records("exp", start=42) == [] and store.records("exp", start=99) == []
    assert store.records("exp", start=3, limit=0) == []
    store.append("exp", [{"i": 42}])
    assert [r["i"] for r in store.records("exp", start=41)] == [41, 42]


def test_meta_and_experiments(store: Any) -> None:
    assert store.get("exp", "status") is None
    store.set("exp", "status", "exploring")
    store.set("exp", "status", "promoted")
    assert store.get("exp", "status") == "promoted"
    store.declare("other", SHAPES)
    assert store.experiments() == ["exp", "other"]


def test_a_lease_is_held_by_one_holder_until_its_time_runs_out(store: Any) -> None:
    assert store.hold("exp", "expire", "a", 0.3) is True
    assert store.hold("exp", "expire", "b", 60) is False  # a's time has not run out
    assert store.hold("exp", "expire", "a", 0.3) is True  # renewed by its holder
    assert store.hold("other", "expire", "b", 60) is True  # one lease per experiment...
    assert store.hold("exp", "report", "b", 60) is True  # ...and name
    time.sleep(0.5)  # a renewed for 0.3 s: run out now (Redis keeps PX to the millisecond)
    assert store.hold("exp", "expire", "b", 60) is True
    assert store.hold("exp", "expire", "a", 60) is False
    assert store.get("exp", "expire") is None  # a lease is not metadata


def test_a_released_lease_is_free_at_once_and_only_its_holder_releases_it(store: Any) -> None:
    assert store.release("exp", "expire", "a") is False  # nothing held
    assert store.hold("exp", "expire", "a", 60) is True
    assert store.release("exp", "expire", "b") is False  # not b's to give up...
    assert store.hold("exp", "expire", "b", 60) is False  # ...so a still holds it
    assert store.release("exp", "report", "a") is False  # another name: a holds none
    assert store.release("exp", "expire", "a") is True
    assert store.hold("exp", "expire", "b", 60) is True  # free at once, not in 60 s
    assert store.release("exp", "expire", "a") is False  # b's now: a's release is a no-op
    assert store.hold("exp", "expire", "a", 60) is False
    assert store.hold("exp", "report", "a", 0.3) is True
    time.sleep(0.5)  # a's time ran out: releasing it says a no longer held it
    assert store.release("exp", "report", "a") is False
    for bad in ("", "a\n"):
        with pytest.raises(StoreError, match="holder"):
            store.release("exp", "expire", bad)
    assert store.hold("exp", "expire", "a", 60) is False  # b's lease survived all that


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", 1.0), "holder"),
        (("a\n", 1.0), "holder"),
        (("a", 0.0), "ttl_s"),
        (("a", float("nan")), "ttl_s"),
        (("a", True), "ttl_s"),
        (("a", 1e9), "ttl_s"),
    ],
)
def test_a_bad_hold_is_refused_and_takes_nothing(store: Any, args: Any, match: str) -> None:
    with pytest.raises(StoreError, match=match):
        store.hold("exp", "expire", *args)
    assert store.hold("exp", "expire", "b", 60) is True


def test_of_many_clients_holding_at_once_exactly_one_gets_the_lease(durable_store: Any) -> None:
    # 8 clients of one store (8 connections to SQLite's file or to Redis) race for a
    # free lease, 20 rounds: each round exactly one wins (the step is atomic).
    clients = [open_store(durable_store.url) for _ in range(8)]
    try:
        for r in range(20):
            start = threading.Barrier(len(clients))
            won: list[int] = []

            def race(i: int, round_: int, barrier: threading.Barrier, won: list[int]) -> None:
                barrier.wait(timeout=30)
                if clients[i].hold("exp", f"round-{round_}", f"c{i}", 60):
                    won.append(i)

            threads = [
                threading.Thread(target=race, args=(i, r, start, won)) for i in range(len(clients))
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=60)
            assert len(won) == 1, (r, won)
    finally:
        for c in clients:
            c.close()


def test_concurrent_adds_lose_nothing(store: Any) -> None:
    # 4 threads x 250 sparse adds (each with its own once id) and 4 x 250 repeats of an
    # already-applied id: the totals are exact.
    store.declare("exp", SHAPES)

    def work(t: int) -> None:
        for i in range(250):
            store.add(
                "exp",
                {"n": [1.0], "sum_reward": [0.5]},
                at={"n": [i % 3], "sum_reward": [i % 3]},
                once=f"{t}-{i}",
            )
            store.add("exp", {"n": [1.0]}, at={"n": [0]}, once="0-0")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    state = store.read("exp")
    assert state["n"].sum() == 1000.0
    assert state["sum_reward"].sum() == 500.0


def test_reopened_store_keeps_everything(durable_store: Any) -> None:
    store = durable_store
    store.declare("exp", SHAPES)
    store.add("exp", {"n": [2.0]}, at={"n": [1]}, once="r1", record={"i": 1})
    store.assign("exp", "u", "1")
    store.set("exp", "status", "exploring")
    again = open_store(store.url)
    try:
        assert again.read("exp")["n"][0, 1] == 2.0
        assert again.add("exp", {"n": [1.0]}, at={"n": [1]}, once="r1") is False
        assert again.assign("exp", "u", "2") == "1"
        assert again.records("exp") == [{"i": 1}]
        assert again.get("exp", "status") == "exploring"
    finally:
        again.close()


def test_a_field_declared_by_another_client_is_read(durable_store: Any) -> None:
    # SQLite keeps the fields it last read and reads them again only when the state's
    # rows show others: another process's new field is read at once, with its amounts
    store = durable_store
    store.declare("exp", SHAPES)
    store.set("exp", "status", "exploring")
    assert set(store.read("exp")) == set(SHAPES)
    other = open_store(store.url)
    try:
        other.declare("exp", {"extra": (2,)})
        other.add("exp", {"extra": [1.5]}, at={"extra": [1]})
        state, meta = store.read_meta("exp", ("status", "paused", "status"))
        assert set(state) == {*SHAPES, "extra"}
        np.testing.assert_array_equal(state["extra"], [0.0, 1.5])
        assert meta == ["exploring", None, "exploring"]
        assert store.read_meta("exp", ())[1] == []
    finally:
        other.close()


def test_add_many_applies_each_item_once_in_order(store: Any) -> None:
    store.declare("exp", SHAPES)
    items = [
        ("r1", [("n", 0, 1.0), ("sum_reward", 0, 0.5)], {"i": 1}),
        ("r2", [("n", 2, 1.0), ("n", 2, 1.0)], {"i": 2}),
        ("r1", [("n", 0, 100.0)], {"i": 3}),  # a repeat within the batch: skipped
    ]
    assert store.add_many("exp", items) == [True, True, False]
    assert store.add_many("exp", items[:1]) == [False]  # and across batches
    assert store.add("exp", {"n": [1.0]}, at={"n": [1]}, once="r2") is False  # shared ids
    state = store.read("exp")
    np.testing.assert_array_equal(state["n"], [[1.0, 0.0, 2.0]])
    np.testing.assert_array_equal(state["sum_reward"], [[0.5, 0.0, 0.0]])
    assert store.records("exp") == [{"i": 1}, {"i": 2}]
    assert store.add_many("exp", []) == []


@pytest.mark.parametrize("before", [0, 1_700, 2_499])
def test_a_large_batch_finds_an_item_applied_before_wherever_it_is(store: Any, before: int) -> None:
    # Redis asks whether any of a batch's ids was used with one EXISTS per 1,000 of them,
    # then id by id only if one was: an id seen before, in any thousand, is still found
    store.declare("exp", SHAPES)
    assert store.add("exp", {"n": [1.0]}, at={"n": [1]}, once=f"r{before}") is True
    items = [(f"r{i}", [("n", i % 3, 1.0)], {"i": i}) for i in range(2_500)]
    assert store.add_many("exp", items) == [i != before for i in range(2_500)]
    n = np.array([[834.0, 833.0, 833.0]])  # i % 3 over 2,500 items
    n[0, before % 3] -= 1.0
    n[0, 1] += 1.0  # the add above
    np.testing.assert_array_equal(store.read("exp")["n"], n)
    assert [r["i"] for r in store.records("exp")] == [i for i in range(2_500) if i != before]


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (("q", 0, 1.0), r"item 1: 'exp' has no field 'q'"),
        (("n", 3, 1.0), r"item 1: 'n': index 3 out of range"),
        (("n", 0, float("inf")), r"item 1: 'n': amounts must be finite"),
    ],
)
def test_a_bad_item_refuses_the_whole_batch(store: Any, entry: Any, match: str) -> None:
    store.declare("exp", SHAPES)
    items = [("r1", [("n", 0, 1.0)], {"i": 1}), ("r2", [entry], {"i": 2})]
    with pytest.raises(StoreError, match=match):
        store.add_many("exp", items)
    assert store.read("exp")["n"].sum() == 0.0 and store.records("exp") == []
    assert store.add_many("exp", items[:1]) == [True]  # its ids were not consumed


@pytest.mark.parametrize(
    "bad",
    [
        [("n", 0, float("nan"))],
        [("n", 0, float("inf")), ("n", 0, -float("inf"))],  # the sum is NaN
        [("q", 0, 1.0)],
    ],
)
def test_a_bad_entry_refuses_the_batch_even_in_an_item_not_applied(store: Any, bad: Any) -> None:
    # Checked and summed in one pass (SQLite, memory): an item skipped as applied before,
    # or repeated within the batch, is not summed, but a bad entry in it still refuses
    # the batch, naming the item, with nothing written.
    store.declare("exp", SHAPES)
    assert store.add_many("exp", [("r1", [("n", 0, 1.0)], {"i": 1})]) == [True]
    for items, at in [
        ([("r2", [("n", 1, 1.0)], {"i": 2}), ("r1", bad, {"i": 3})], 1),
        ([("r2", [("n", 1, 1.0)], {"i": 2}), ("r2", bad, {"i": 3})], 1),
        ([("r3", bad, {"i": 3}), ("r2", [("n", 1, 1.0)], {"i": 2})], 0),
    ]:
        with pytest.raises(StoreError, match=rf"item {at}: "):
            store.add_many("exp", items)
    np.testing.assert_array_equal(store.read("exp")["n"], [[1.0, 0.0, 0.0]])
    assert store.records("exp") == [{"i": 1}]


def test_a_columns_batch_adds_exactly_what_its_entries_add(store: Any) -> None:
    # The engine hands a batch's increments as rows of one matrix (Columns); SQLite and
    # memory sum the applied rows with numpy, Redis iterates their entries. Either way
    # the state, the applied flags and the log must be those of the same batch given as
    # plain lists of entries, to the last bit (sums in item order): 60 items of thirds
    # and sevenths (inexact in binary), some applied before, some repeated in the batch.
    rng = np.random.default_rng(7)
    n = 60
    amounts = {
        "n": rng.integers(0, 3, (n, 3)) / 3.0,
        "sum_reward": rng.integers(-4, 5, (n, 3)) / 7.0,
    }
    amounts["n"][5] = amounts["sum_reward"][5] = 0.0  # an item that adds nothing
    columns = Columns(n, amounts)
    onces = [f"r{i}" for i in range(n)]
    onces[10] = onces[3]  # repeated within the batch
    for name in ("a", "b"):
        store.declare(name, SHAPES)
        assert store.add_many(name, [("r7", [("n", 0, 1.0)], {"i": -1})]) == [True]
    as_columns = [(onces[i], columns.row(i), {"i": i}) for i in range(n)]
    as_lists = [(onces[i], list(columns.row(i)), {"i": i}) for i in range(n)]
    assert len(as_lists[5][1]) == 0 and len(as_lists[0][1]) == sum(amounts["n"][0] != 0) + sum(
        amounts["sum_reward"][0] != 0
    )
    applied = store.add_many("a", as_columns)
    assert applied == store.add_many("b", as_lists)
    assert applied == [i not in (7, 10) for i in range(n)]
    for field in SHAPES:
        np.testing.assert_array_equal(store.read("a")[field], store.read("b")[field])
    assert store.records("a") == store.records("b")
    expected = amounts["n"][[i for i in range(n) if applied[i]]].sum(axis=0)
    expected[0] += 1.0  # the batch before
    np.testing.assert_allclose(store.read("a")["n"][0], expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"n": [[1.0, 0.0, 0.0], [0.0, float("nan"), 0.0]]}, r"item 1: 'n': amounts must be"),
        ({"q": [[1.0], [1.0]]}, r"item 0: 'exp' has no field 'q'"),
        ({"n": [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]}, r"item 1: 'n': index 3 out of"),
        ({"n": [[1e308, 0.0, 0.0], [1e308, 0.0, 0.0]]}, r"'n': amounts must be finite \(their"),
    ],
)
def test_a_bad_columns_batch_is_refused_naming_the_item(
    store: Any, fields: dict[str, Any], match: str
) -> None:
    store.declare("exp", SHAPES)
    columns = Columns(2, {k: np.array(v) for k, v in fields.items()})
    items = [("r1", columns.row(0), {"i": 1}), ("r2", columns.row(1), {"i": 2})]
    with pytest.raises(StoreError, match=match):
        store.add_many("exp", items)
    assert store.read("exp")["n"].sum() == 0.0 and store.records("exp") == []
    assert store.add_many("exp", [("r1", [("n", 0, 1.0)], {"i": 1})]) == [True]  # r1 unused


def test_add_many_skips_the_items_applied_before_wherever_they_stand(store: Any) -> None:
    # Redis learns which ids were applied before only from its script's answer, given as
    # positions among the items it was sent (the batch without its repeats): an id
    # repeated early in the batch shifts them, so the ids applied before must be found
    # by those positions, not the batch's
    store.declare("exp", SHAPES)
    assert store.add_many("exp", [("old", [("n", 0, 1.0)], {"i": 0})]) == [True]
    items = [
        ("a", [("n", 1, 1.0)], {"i": 1}),
        ("a", [("n", 1, 5.0)], {"i": 2}),  # a repeat within the batch
        ("b", [("n", 2, 1.0)], {"i": 3}),
        ("old", [("n", 0, 7.0)], {"i": 4}),  # applied before
        ("c", [("sum_reward", 2, 0.5)], {"i": 5}),
    ]
    assert store.add_many("exp", items) == [True, False, True, False, True]
    np.testing.assert_array_equal(store.read("exp")["n"], [[1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(store.read("exp")["sum_reward"], [[0.0, 0.0, 0.5]])
    assert store.records("exp") == [{"i": 0}, {"i": 1}, {"i": 3}, {"i": 5}]
