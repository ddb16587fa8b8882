"""The decision log's two most frequent records, written as JSON text directly.

Every decision and every reward appends one record; building a dict and running it
through the JSON encoder cost about 5 us of the ~40 us a decision and its reward cost
together (``benchmarks/engine.py``), in the thread that also serves requests. These
functions write the same records as strict JSON with one string format each: the
same keys in the same order, floats as ``repr`` writes them (as the encoder does),
strings escaped by the encoder unless they are plain ASCII letters and digits.
``json.loads`` of a line equals the dict the engine logged before
(``tests/autoexp/test_records.py`` checks it on random inputs). Stores write an
:class:`~autoexp.store.base.Encoded` line as it is. :func:`outline` reads a line's type,
decision id and time back from its head, for the engine's ``expire``, which reads every
record of the log once.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from .store.base import Encoded

__all__ = ["decision_line", "float_text", "floats_json", "outline", "reward_lines"]


@functools.lru_cache(maxsize=4096)
def _string(text: str) -> str:
    """``text`` as a JSON string (names repeat: cached)."""
    return json.dumps(text)


def _id(text: str) -> str:
    # ids are hex (ours) but a token signed elsewhere with the key could carry anything
    return f'"{text}"' if text.isascii() and text.isalnum() else json.dumps(text)


def float_text(x: float) -> str:
    """A finite number as the JSON encoder writes it (``repr`` of the float). Its shortest
    round-tripping digits cost about 7,000 instructions for a time (callgrind, CPython
    3.11): a decision writes its time in its token and its record from one call."""
    x = float(x)  # an int or a numpy number as the encoder writes it
    if not math.isfinite(x):
        raise ValueError(f"record: {x!r} is not a finite number")
    return repr(x)


def floats_json(values: Sequence[float]) -> str:
    """``[v_0,v_1,...]`` as the JSON encoder writes it; finite numbers only."""
    return f"[{','.join(map(float_text, values))}]"


def decision_line(
    *,
    decision_id: str,
    time: str,
    experiment: str,
    unit_hash: str | None,
    context: str | None,
    arm: int,
    alternative: str,
    propensity: str,
    allocation: str,
    policy: str,
    version: int,
    seed: int | None,
) -> Encoded:
    """A decision's record; ``time`` and ``propensity`` are :func:`float_text` of them,
    ``context`` and ``allocation`` :func:`floats_json` of theirs (``context`` ``None``
    without one): written once per allocation or per decision, for the token too."""
    unit = "null" if unit_hash is None else _id(unit_hash)
    return Encoded(
        f'{{"type":"decision","decision_id":{_id(decision_id)},"time":{time},'
        f'"experiment":{_string(experiment)},"unit_hash":{unit},'
        f'"context":{"null" if context is None else context},'
        f'"arm":{arm:d},"alternative":{_string(alternative)},'
        f'"propensity":{propensity},"allocation":{allocation},'
        f'"policy":{_string(policy)},"policy_version":{version:d},'
        f'"allocation_version":{version:d},"seed":{"null" if seed is None else f"{seed:d}"},'
        '"reward":null,"reward_time":null}'
    )


def reward_lines(
    source: str, experiment: str, time: float, rewards: Sequence[tuple[str, int, float]]
) -> list[Encoded]:
    """The records of a batch of rewards ``(decision_id, arm, reward)`` of one experiment
    and source, applied at ``time``: what they share is written once."""
    head = f'{{"type":"reward","source":{_string(source)},"decision_id":'
    middle = f',"experiment":{_string(experiment)},"arm":'
    tail = f',"reward_time":{float_text(time)}}}'
    return [
        Encoded(f'{head}{_id(did)}{middle}{arm:d},"reward":{float_text(reward)}{tail}')
        for did, arm, reward in rewards
    ]


# The heads of the lines written above: the type, the decision id (plain, as _id writes
# an id of ASCII letters and digits), and a decision's time (as repr writes a float:
# never a comma in it). One pattern for both, so a line is matched once.
_HEAD = re.compile(
    r'\{"type":"(?:decision","decision_id":"([0-9A-Za-z]+)","time":([^,]+),'
    r'|reward","source":"[^"\\]*","decision_id":"([0-9A-Za-z]+)",)'
)


def outline(line: str) -> tuple[Any, Any, Any]:
    """A log line's ``type``, ``decision_id`` and ``time`` (``None`` for those it lacks),
    as ``json.loads`` of it would give them, without parsing the rest: a line written by
    :func:`decision_line` or :func:`reward_lines` is read from its head (timeit: 1.7 us
    against 5.2 for parsing a decision's line whole, 0.7 against 3.1 for a reward's; the
    engine's ``expire`` reads every record of the log once); any other line (a
    transition, one written elsewhere, an id in escapes) is parsed whole."""
    head = _HEAD.match(line)
    if head is not None:
        if head[3] is not None:
            return "reward", head[3], None
        try:
            return "decision", head[1], float(head[2])
        except ValueError:  # not a number: parsed whole, as it comes
            pass
    record = json.loads(line)
    if not isinstance(record, dict):
        return None, None, None
    return record.get("type"), record.get("decision_id"), record.get("time")
