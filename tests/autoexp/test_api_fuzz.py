"""The sidecar's JSON API (``/_autoexp/decide``, ``/_autoexp/rewards``) against generated
bodies, good and bad (hypothesis, derandomized: the same 300 bodies each run): every
answer is a 2xx or a 4xx with a JSON reason, never a 5xx (the store is healthy here); a
refused request changes nothing in the store or the log; a decision is logged once; a
reward request applies at most one reward per item."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoexp.context import parse_context
from autoexp.engine import Engine, ExperimentSpec
from autoexp.store.memory import MemoryStore
from policies import ThompsonBeta, TrafficCap
from tests.autoexp.conftest import Sidecar
from tests.autoexp.test_contextual import EVERY_ENCODING

SECRET = "q" * 32
NAMES = ("ranker", "ctx")
EXAMPLES = 300  # each is one or two requests on a kept-alive connection


# any text JSON can carry, lone surrogates ("\ud800", not valid Unicode) included
texts = st.text(st.characters(exclude_categories=()), max_size=8)
# JSON as a client might send it, odd numbers included: NaN and infinities (Python's
# json writes and reads them), integers too large for a float, -0.0
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from([10**400, -(10**400), 2**1024, 1e308, -0.0, 0.5, 1, 0]),
    texts,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=8,
)
# valid bodies, then at most one thing about each made odd
named = st.fixed_dictionaries(
    {},
    optional={
        "device": st.sampled_from(["mobile", "desktop", "tv"]),
        "country": st.sampled_from(["FR", "DE", 7]),
        "basket": st.floats(0, 500),
        "hour": st.integers(0, 23),
        "day": st.integers(0, 6),
    },
)
odd_contexts = st.one_of(
    st.lists(st.one_of(st.floats(), st.integers(), st.sampled_from([10**400])), max_size=30),
    st.dictionaries(
        st.sampled_from(["device", "country", "basket", "hour", "day", "other"]),
        values,
        min_size=1,
        max_size=3,
    ),
    values,
)


@st.composite
def decide_bodies(draw: Any) -> Any:
    body: dict[str, Any] = {"experiment": draw(st.sampled_from(NAMES))}
    if draw(st.booleans()):
        body["unit"] = draw(texts.filter(bool))
    if body["experiment"] == "ctx" and draw(st.booleans()):
        body["context"] = draw(named)
    change = draw(
        st.sampled_from(
            ["none", "none", "experiment", "experiment", "unit", "context", "drop", "all"]
        )
    )
    if change == "experiment":
        body["experiment"] = draw(st.one_of(st.sampled_from(["nope", "", "Ranker"]), values))
    elif change in ("unit", "context"):
        body[change] = draw(values if change == "unit" else odd_contexts)
    elif change == "drop":
        body.pop("experiment")
    elif change == "all":
        return draw(st.one_of(values, st.binary(max_size=16)))
    return body


def token_of(made: list[str]) -> st.SearchStrategy[Any]:
    """A token the sidecar made, one of those altered, or anything."""
    real = st.sampled_from(made)
    altered = st.tuples(real, st.integers(0, 300), st.characters()).map(
        lambda t: t[0][: t[1] % len(t[0])] + t[2] + t[0][t[1] % len(t[0]) + 1 :]
    )
    return st.one_of(altered, values)


@st.composite
def reward_bodies(draw: Any, made: list[str]) -> Any:
    def item() -> dict[str, Any]:
        return {"token": draw(st.sampled_from(made)), "value": draw(st.floats(0.0, 1.0))}

    items = [item() for _ in range(draw(st.integers(1, 4)))]
    change = draw(
        st.sampled_from(["none", "none", "token", "value", "item", "drop", "list", "all"])
    )
    n = draw(st.integers(0, len(items) - 1))
    if change == "token":
        items[n]["token"] = draw(token_of(made))
    elif change == "value":
        items[n]["value"] = draw(values)
    elif change == "item":
        items[n] = draw(values)
    elif change == "drop":
        items[n].pop(draw(st.sampled_from(["token", "value"])))
    elif change == "list":
        return {"rewards": draw(values)}
    elif change == "all":
        return draw(st.one_of(values, st.binary(max_size=16)))
    return items[0] if len(items) == 1 and draw(st.booleans()) else {"rewards": items}


def snapshot(engine: Engine) -> Any:
    engine.flush()
    store = engine.store
    return [({k: v.tolist() for k, v in store.read(n).items()}, store.lines(n)) for n in NAMES]


def engine_and_sidecar() -> tuple[Engine, Sidecar]:
    ranker = ExperimentSpec(
        name="ranker",
        alternatives=("v1", "v2"),
        policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
        reward_range=(0.0, 1.0),
    )
    ctx = dataclasses.replace(ranker, name="ctx", context=parse_context(EVERY_ENCODING, "context"))
    engine = Engine(MemoryStore(), [ranker, ctx], secret=SECRET, seed=9)
    return engine, Sidecar(engine)


def test_a_lone_surrogate_json_carries_is_a_unit_and_a_feature_value_like_any() -> None:
    # "\ud800" is valid JSON but not valid Unicode: hashing it as a unit or a hashed
    # feature's value raised UnicodeEncodeError (a 500); it is served like any text, the
    # same unit the same arm
    _, side = engine_and_sidecar()
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            arms = set()
            for _ in range(5):
                body = b'{"experiment": "ranker", "unit": "\\ud800"}'
                r = http.post("/_autoexp/decide", content=body)
                assert r.status_code == 200, r.text
                arms.add(r.json()["alternative"])
            body = b'{"experiment": "ctx", "context": {"country": "\\ud800x"}}'
            r = http.post("/_autoexp/decide", content=body)
            assert r.status_code == 200, r.text
        assert len(arms) == 1
    finally:
        side.close()


def test_generated_api_bodies_are_answered_and_refusals_change_nothing() -> None:
    engine, side = engine_and_sidecar()
    http = httpx.Client(base_url=side.url, timeout=10)
    # a fixed pool of real tokens (the strategy must not depend on what the test does):
    # the first reward of each is applied, the later ones are repeats
    made = [
        http.post("/_autoexp/decide", json={"experiment": n}).json()["token"] for n in NAMES * 20
    ]
    seen: dict[int, int] = {}

    def post(path: str, body: Any) -> httpx.Response:
        if isinstance(body, bytes):
            r = http.post(path, content=body)
        else:  # NaN and Infinity as Python's json writes them
            r = http.post(path, content=json.dumps(body).encode())
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        # a 2xx, or a 4xx with its reason: never the sidecar's own failure
        assert r.status_code in (200, 202, 400, 404, 413), (path, body, r.status_code, r.text)
        if r.status_code >= 400:
            error = r.json()
            assert isinstance(error["error"], str) and error["error"], error
            assert isinstance(error["kind"], str), error
        return r

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(decide_bodies(), reward_bodies(made))
    def one(decide: Any, reward: Any) -> None:
        before = snapshot(engine)
        r = post("/_autoexp/decide", decide)
        after = snapshot(engine)
        if r.status_code == 200:
            # one decision logged, nothing else changed
            grown = [len(a[1]) - len(b[1]) for a, b in zip(after, before, strict=True)]
            assert sorted(grown) == [0, 1] and [a[0] for a in after] == [b[0] for b in before]
            assert json.loads(after[grown.index(1)][1][-1])["decision_id"] == r.json()["id"]
        else:
            assert after == before, (decide, r.text)
        r = post("/_autoexp/rewards", reward)
        final = snapshot(engine)
        if r.status_code == 202:
            applied = r.json()["applied"]
            items = reward["rewards"] if "rewards" in reward else [reward]
            assert len(applied) == len(items) and all(isinstance(a, bool) for a in applied)
            # each applied reward wrote one record (a repeat, none)
            written = sum(len(f[1]) - len(a[1]) for f, a in zip(final, after, strict=True))
            assert written == sum(applied)
        else:
            assert final == after, (reward, r.text)

    try:
        one()
        # the generator reached every kind of answer
        assert all(seen.get(s, 0) >= 5 for s in (200, 202, 400, 404)), seen
    finally:
        http.close()
        side.close()
