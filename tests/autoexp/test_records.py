"""The decision log's text records read back as the dicts they stand for."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoexp.records import decision_line, float_text, floats_json, outline, reward_lines
from autoexp.store.base import dumps

finite = st.floats(allow_nan=False, allow_infinity=False)
names = st.text(min_size=1, max_size=20)
ids = st.one_of(st.text(alphabet="0123456789abcdef", min_size=24, max_size=24), names)


def parsed_outline(line: str) -> tuple[object, object, object]:
    """What :func:`outline` must give: the fields of the parsed record."""
    record = json.loads(line)
    if not isinstance(record, dict):
        return None, None, None
    return record.get("type"), record.get("decision_id"), record.get("time")


@settings(max_examples=300, deadline=None)
@given(
    did=ids,
    time=finite,
    experiment=names,
    unit=st.none() | ids,
    context=st.none() | st.lists(finite | st.integers(-5, 5), max_size=6),
    arm=st.integers(0, 50),
    alternative=names,
    row=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6),
    policy=names,
    version=st.integers(0, 10**9),
    seed=st.none() | st.integers(0, 2**128),
)
def test_a_decision_line_is_the_record_the_encoder_writes(
    did: str,
    time: float,
    experiment: str,
    unit: str | None,
    context: list[float] | None,
    arm: int,
    alternative: str,
    row: list[float],
    policy: str,
    version: int,
    seed: int | None,
) -> None:
    record = {
        "type": "decision",
        "decision_id": did,
        "time": time,
        "experiment": experiment,
        "unit_hash": unit,
        "context": context,
        "arm": arm,
        "alternative": alternative,
        "propensity": row[0],
        "allocation": row,
        "policy": policy,
        "policy_version": version,
        "allocation_version": version,
        "seed": seed,
        "reward": None,
        "reward_time": None,
    }
    line = decision_line(
        decision_id=did,
        time=float_text(time),
        experiment=experiment,
        unit_hash=unit,
        context=None if context is None else floats_json(context),
        arm=arm,
        alternative=alternative,
        propensity=float_text(row[0]),
        allocation=floats_json(row),
        policy=policy,
        version=version,
        seed=seed,
    )
    assert dumps(line) is line  # stores write it as it is
    assert json.loads(line) == record
    assert list(json.loads(line)) == list(record)  # the same keys in the same order
    if not context or all(isinstance(x, float) for x in context):
        assert line == dumps(record)  # byte for byte what the encoder writes
    assert outline(line) == parsed_outline(line)  # read from its head or parsed whole


@settings(max_examples=300, deadline=None)
@given(
    source=st.sampled_from(["reward", "expire"]) | names,
    did=ids,
    experiment=names,
    arm=st.integers(0, 50),
    reward=finite,
    time=finite,
)
def test_a_reward_line_is_the_record_the_encoder_writes(
    source: str, did: str, experiment: str, arm: int, reward: float, time: float
) -> None:
    record = {
        "type": "reward",
        "source": source,
        "decision_id": did,
        "experiment": experiment,
        "arm": arm,
        "reward": reward,
        "reward_time": time,
    }
    (line,) = reward_lines(source, experiment, time, [(did, arm, reward)])
    assert line == dumps(record)
    # in a batch (what the engine writes), each record as it would be alone
    other = {**record, "decision_id": f"{did}2", "arm": arm + 1, "reward": -reward}
    batch = [(did, arm, reward), (f"{did}2", arm + 1, -reward)]
    assert reward_lines(source, experiment, time, batch) == [dumps(record), dumps(other)]
    assert [outline(x) for x in reward_lines(source, experiment, time, batch)] == [
        ("reward", did, None),
        ("reward", f"{did}2", None),
    ]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_number_json_cannot_hold_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="not a finite number"):
        floats_json([0.5, bad])
    with pytest.raises(ValueError, match="not a finite number"):
        reward_lines("reward", "e", 1.0, [("a", 0, bad)])


def test_outline_reads_the_engines_own_lines_without_parsing_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # expire reads every record of the log once; the engine's own decision and reward
    # lines (hex ids) are read from their heads. Any other line is parsed whole, and
    # gives what parsing gives.
    decision = decision_line(
        decision_id="1a21d2de423cdce34b51649f",
        time=float_text(1795785876.515372),
        experiment="bench",
        unit_hash=None,
        context=None,
        arm=1,
        alternative="deeper",
        propensity=float_text(0.1),
        allocation=floats_json([0.9, 0.1]),
        policy="traffic-cap",
        version=3,
        seed=None,
    )
    (reward,) = reward_lines("reward", "bench", 2.5, [("1a21d2de423cdce34b51649f", 1, 1.0)])
    others = [
        '{"type":"transition","time":3.0,"to":"promoted"}',
        '{"decision_id":"abc","type":"decision","time":1.5}',  # another writer's key order
        '{"type":"decision","decision_id":"a\\"b","time":2.0,"arm":0}',  # an escaped id
        '{"type":"decision","decision_id":"abc","time":"soon","arm":0}',  # not a number
        "[1, 2]",
    ]
    expected = [parsed_outline(x) for x in others]

    def refused(text: str) -> None:
        raise AssertionError(f"parsed whole: {text}")

    monkeypatch.setattr("autoexp.records.json.loads", refused)
    assert outline(decision) == ("decision", "1a21d2de423cdce34b51649f", 1795785876.515372)
    assert outline(reward) == ("reward", "1a21d2de423cdce34b51649f", None)
    monkeypatch.undo()
    assert [outline(x) for x in others] == expected
    assert expected[1] == ("decision", "abc", 1.5) and expected[4] == (None, None, None)
