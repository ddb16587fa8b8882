"""The sidecar's HTTP API on every store, through raw HTTP and through ``autoexp.Client``:
decisions, rewards, refusals that change nothing, and failing open while the store is down.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
import redis

import autoexp
from autoexp.engine import Engine, ExperimentSpec
from autoexp.errors import (
    ConfigError,
    RequestError,
    RewardError,
    StoreError,
    UnknownExperimentError,
)
from autoexp.proxy.app import MAX_BODY_BYTES, MAX_REWARDS, OFFLOAD, make_app
from autoexp.store.memory import MemoryStore
from autoexp.tokens import Ticket, keys_from, sign
from policies import OffPolicyCS, ThompsonBeta, TrafficCap
from tests.autoexp.conftest import RedisServer, Served, Sidecar, free_port

SECRET = "k" * 32


def spec(**changes: Any) -> ExperimentSpec:
    base: dict[str, Any] = {
        "name": "ranker",
        "alternatives": ("v1", "v2"),
        "params": ({"depth": 1}, {"depth": 2}),
        "policy": TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
        "test": OffPolicyCS(n_expected=1_000),
        "refresh_every": 20,
    }
    return ExperimentSpec(**{**base, **changes})


@pytest.fixture
def sidecar(store: Any) -> Iterator[Sidecar]:
    side = Sidecar(Engine(store, [spec()], secret=SECRET, seed=1))
    try:
        yield side
    finally:
        side.close()


def snapshot(engine: Engine) -> tuple[dict[str, list[float]], list[dict[str, Any]]]:
    engine.flush()
    state = {k: v.tolist() for k, v in engine.store.read("ranker").items()}
    return state, engine.store.records("ranker")


def test_decide_and_reward_over_http(sidecar: Sidecar) -> None:
    with httpx.Client(base_url=sidecar.url, timeout=5) as http:
        r = http.post("/_autoexp/decide", json={"experiment": "ranker", "unit": "u1"})
        assert r.status_code == 200
        d = r.json()
        assert d["alternative"] in ("v1", "v2") and d["params"] == {"depth": d["arm"] + 1}
        assert 0 < d["propensity"] <= 1 and d["token"].count(".") == 1
        again = http.post("/_autoexp/decide", json={"experiment": "ranker", "unit": "u1"})
        assert again.json()["arm"] == d["arm"] and again.json()["sticky"]
        r = http.post("/_autoexp/rewards", json={"token": d["token"], "value": 1})
        assert (r.status_code, r.json()) == (202, {"applied": [True]})
        r = http.post("/_autoexp/rewards", json={"token": d["token"], "value": 1})
        assert (r.status_code, r.json()) == (202, {"applied": [False]})  # counted once
        more = [
            http.post("/_autoexp/decide", json={"experiment": "ranker"}).json() for _ in range(5)
        ]
        batch = {"rewards": [{"token": m["token"], "value": 0.5} for m in more]}
        r = http.post("/_autoexp/rewards", json=batch)
        assert (r.status_code, r.json()) == (202, {"applied": [True] * 5})
        r = http.get("/_autoexp/experiments/ranker/definition")
        assert r.json()["alternatives"] == ["v1", "v2"]
        assert r.json()["params"] == [{"depth": 1}, {"depth": 2}]
        assert http.get("/_autoexp/healthz").json() == {"ok": True, "pid": os.getpid()}
        assert http.get("/_autoexp/readyz").status_code == 200
    state, log = snapshot(sidecar.engine)
    assert sum(state["policy.n"][0]) == 6 and sum(state["policy.sum_reward"][0]) == 3.5
    kinds = [r["type"] for r in log]
    assert kinds.count("decision") == 7 and kinds.count("reward") == 6


def forged() -> str:
    ticket = Ticket("f" * 24, "ranker", 1, (0.5, 0.5), 1e9, 1e12)
    return sign(keys_from("z" * 32), ticket)


BAD_REQUESTS = [
    # (path, body (bytes or JSON), status, kind, words in the reason)
    ("/_autoexp/decide", b"{not json", 400, "RequestError", "body: not JSON"),
    ("/_autoexp/decide", [1, 2], 400, "RequestError", "must be a JSON object"),
    ("/_autoexp/decide", {}, 400, "RequestError", "experiment: must be a non-empty string"),
    ("/_autoexp/decide", {"experiment": "nope"}, 404, "UnknownExperimentError", "'nope'"),
    ("/_autoexp/decide", {"experiment": "ranker", "unit": 7}, 400, "RequestError", "unit:"),
    ("/_autoexp/decide", {"experiment": "ranker", "unit": "x" * 2000}, 400, "RequestError", "1024"),
    (
        "/_autoexp/decide",
        {"experiment": "ranker", "context": ["a"]},
        400,
        "RequestError",
        "context",
    ),
    # an integer JSON carries but a float cannot hold (float() raises OverflowError)
    (
        "/_autoexp/decide",
        {"experiment": "ranker", "context": [10**400]},
        400,
        "RequestError",
        "context",
    ),
    ("/_autoexp/rewards", {"token": "GOOD", "value": 10**400}, 400, "RewardError", "finite"),
    ("/_autoexp/rewards", {"token": "junk", "value": 1}, 400, "RewardError", "token: malformed"),
    ("/_autoexp/rewards", {"value": 1}, 400, "RequestError", "token and value"),
    ("/_autoexp/rewards", {"token": "FORGED", "value": 1}, 400, "RewardError", "forged"),
    ("/_autoexp/rewards", {"token": "GOOD", "value": True}, 400, "RequestError", "a number"),
    ("/_autoexp/rewards", {"token": "GOOD", "value": "1"}, 400, "RequestError", "a number"),
    ("/_autoexp/rewards", b'{"token": "GOOD", "value": NaN}', 400, "RewardError", "finite"),
    ("/_autoexp/rewards", {"token": "GOOD", "value": 1.5}, 400, "RewardError", "in [0.0, 1.0]"),
    ("/_autoexp/rewards", {"rewards": []}, 400, "RequestError", "non-empty list"),
    (
        "/_autoexp/rewards",
        {"rewards": [{"token": "GOOD", "value": 1}, {"token": "GOOD", "value": -1}]},
        400,
        "RewardError",
        "rewards[1]: reward: must be finite and in",
    ),
    (
        "/_autoexp/rewards",
        {"rewards": [{"token": "GOOD", "value": 1}] * (MAX_REWARDS + 1)},
        413,
        "RequestError",
        f"at most {MAX_REWARDS}",
    ),
    ("/_autoexp/rewards", b"[" + b" " * MAX_BODY_BYTES + b"]", 413, "RequestError", "larger"),
]


def test_concurrent_single_rewards_are_joined_and_each_answered_on_its_own(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Single rewards posted while the offload thread is busy are applied in one engine
    # call (one store transaction); a forged one among them still gets its 400, the
    # others their 202, and only theirs are recorded.
    engine = sidecar.engine
    offload = sidecar.app[OFFLOAD]
    sizes: list[int] = []
    real = engine.reward_each

    def reward_each(items: Any) -> Any:
        sizes.append(len(items))
        return real(items)

    monkeypatch.setattr(engine, "reward_each", reward_each)
    made = [engine.decide("ranker") for _ in range(12)]
    tokens = [d.token for d in made]
    tokens[5] = tokens[5][:-4] + "AAAA"
    gate = threading.Event()
    busy = asyncio.run_coroutine_threadsafe(offload.run(gate.wait, 10), sidecar.loop)

    def post(token: str) -> httpx.Response:
        with httpx.Client(base_url=sidecar.url, timeout=10) as http:
            return http.post("/_autoexp/rewards", json={"token": token, "value": 1})

    with ThreadPoolExecutor(len(tokens)) as pool:
        answers = [pool.submit(post, t) for t in tokens]
        deadline = time.monotonic() + 10
        while offload._calls.qsize() < len(tokens) and time.monotonic() < deadline:
            time.sleep(0.01)  # every request queued behind the busy thread
        gate.set()
        got = [a.result() for a in answers]
    busy.result(10)
    assert [r.status_code for r in got] == [400 if i == 5 else 202 for i in range(12)]
    assert "forged" in got[5].json()["error"]
    assert all(r.json() == {"applied": [True]} for i, r in enumerate(got) if i != 5)
    assert sizes == [12]  # one call for all of them
    assert engine.store.read("ranker")["policy.n"].sum() == 11.0


@pytest.mark.parametrize(("path", "body", "status", "kind", "words"), BAD_REQUESTS)
def test_bad_requests_get_a_reason_and_change_nothing(
    sidecar: Sidecar, path: str, body: Any, status: int, kind: str, words: str
) -> None:
    with httpx.Client(base_url=sidecar.url, timeout=10) as http:
        good = http.post("/_autoexp/decide", json={"experiment": "ranker"}).json()["token"]
        before = snapshot(sidecar.engine)
        if isinstance(body, bytes):
            content = body.replace(b"GOOD", good.encode())
        else:
            content = json.dumps(body).replace("GOOD", good).replace("FORGED", forged()).encode()
        r = http.post(path, content=content, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        assert r.json()["kind"] == kind and words in r.json()["error"], r.json()
    assert snapshot(sidecar.engine) == before


def test_expired_and_late_rewards_are_refused() -> None:

    now = [1_000_000.0]
    engine = Engine(
        MemoryStore(),
        [spec(join_window_s=60.0, token_ttl_s=3600.0)],
        secret=SECRET,
        seed=2,
        clock=lambda: now[0],
    )
    side = Sidecar(engine)
    try:
        client = autoexp.Client(side.url)
        d = client.decide("ranker")
        now[0] += 61
        with pytest.raises(RewardError, match="late by 1 s"):
            client.reward(d, 1.0)
        now[0] += 3600
        with pytest.raises(RewardError, match="token: expired"):
            client.reward(d.token, 1.0)
        assert engine.status("ranker")["late_rewards"] == 1
        assert engine.store.read("ranker")["policy.n"].sum() == 0
        client.close()
    finally:
        side.close()


def test_the_client_makes_the_engines_calls(sidecar: Sidecar) -> None:
    with autoexp.Client(sidecar.url) as client:
        d = client.decide("ranker", unit="u9", context=[1.0, 2])
        assert isinstance(d, autoexp.Decision) and d.params == {"depth": d.arm + 1}
        assert client.decide("ranker", unit="u9").arm == d.arm
        assert client.reward(d, 1.0) and not client.reward(d.token, 1.0)
        more = [client.decide("ranker") for _ in range(4)]
        assert client.reward_many([(m, 0.0) for m in more]) == [True] * 4
        assert client.reward_many([]) == []
        assert client.definition("ranker")["policy"] == "traffic-cap"
        with pytest.raises(UnknownExperimentError, match="no experiment named 'other'"):
            client.decide("other")
        with pytest.raises(RewardError, match=r"rewards\[1\]: reward: must be finite and in"):
            client.reward_many([(more[0], 1.0), (more[1], 1.5)])  # refused by the sidecar
        with pytest.raises(RewardError, match=r"rewards\[1\]: reward: must be a finite number"):
            client.reward_many([(more[0], 1.0), (more[1], math.inf)])  # JSON can't carry it
        with pytest.raises(RewardError, match="forged"):
            client.reward(forged(), 1.0)
        with pytest.raises(RequestError, match="context"):
            client.decide("ranker", context=["x"])  # type: ignore[list-item]
    record = next(r for r in sidecar.engine.store.records("ranker") if r["type"] == "decision")
    assert record["context"] == [1.0, 2.0]


def sidecar_experiment(client: autoexp.Client) -> autoexp.Experiment:
    """The sidecar's "ranker" with functions v1 and v2 that say which one ran."""
    exp = client.experiment("ranker")
    exp.control(lambda q: f"v1:{q}", name="v1")
    exp.alternative(lambda q: f"v2:{q}", name="v2")
    return exp


def test_an_unreachable_sidecar_is_a_store_error_and_the_sdk_serves_control() -> None:
    client = autoexp.Client(f"http://127.0.0.1:{free_port()}", timeout_s=1.0)
    with pytest.raises(StoreError, match="unreachable"):
        client.decide("ranker")
    with pytest.raises(StoreError, match="unreachable"):
        client.reward("a.b", 1.0)
    exp = sidecar_experiment(client)

    answer = exp(3)
    assert answer == autoexp.Answer("v1:3", None) and exp.fail_open == 1
    assert exp.reward(answer.decision, 1.0) is False
    client.close()


def test_the_sdk_over_a_sidecar_runs_what_the_sidecar_decides(sidecar: Sidecar) -> None:
    client = autoexp.Client(sidecar.url)
    exp = sidecar_experiment(client)

    answers = [exp(i, unit=f"u{i}") for i in range(40)]
    for i, a in enumerate(answers):
        assert a.decision is not None and a.result == f"{a.decision.alternative}:{i}"
    assert exp.reward_many([(a.decision, 1.0) for a in answers]) == [True] * 40
    assert exp.reward(answers[0].decision, 1.0) is False
    assert {a.decision.alternative for a in answers if a.decision} == {"v1", "v2"}
    assert exp.status()["alternatives"] == ["v1", "v2"] and exp.status()["fail_open"] == 0
    with pytest.raises(autoexp.StateError, match="has started"):
        exp.alternative(lambda q: q, name="v3")
    with pytest.raises(autoexp.StateError, match="decided by the sidecar"):
        exp.engine  # noqa: B018
    state, _ = snapshot(sidecar.engine)
    assert sum(state["policy.n"][0]) == 40
    client.close()


def test_sdk_misuse_over_a_sidecar(sidecar: Sidecar) -> None:
    client = autoexp.Client(sidecar.url)
    with pytest.raises(ConfigError, match="do not pass store or secret"):
        autoexp.Experiment("ranker", client=client, store="memory://")
    exp = client.experiment("ranker")
    with pytest.raises(ConfigError, match="settings of a sidecar experiment"):
        exp.setting("v1", depth=1)

    @exp.control
    def v1(q: int) -> int:
        return q

    @exp.alternative(name="v3")
    def other(q: int) -> int:
        return q

    before = snapshot(sidecar.engine)
    with pytest.raises(ConfigError, match=r"sidecar's alternatives are \['v1', 'v2'\]"):
        exp(1)
    assert snapshot(sidecar.engine) == before
    with pytest.raises(ConfigError, match="url must be"):
        autoexp.Client("127.0.0.1:8700")
    # urlsplit's ValueErrors, and a TypeError for a timeout given as text, were raised raw
    for url in ("http://[::1", "http://h:99999", "http://:80", None):
        with pytest.raises(ConfigError, match=r"Client: url must be http\(s\)://host:port"):
            autoexp.Client(url)  # type: ignore[arg-type]
    for timeout in (0, -1, float("nan"), "1", True):
        with pytest.raises(ConfigError, match=r"timeout_s must be a finite number > 0"):
            autoexp.Client("http://127.0.0.1:1", timeout_s=timeout)  # type: ignore[arg-type]
    client.close()


def test_an_experiment_named_with_url_characters_is_reachable_through_the_client() -> None:
    # "/", "?", "#" and spaces are allowed in a name; the client put it into the path as
    # it was, so its definition (and Client.experiment) got a 404 for such a name
    names = ["a/b", "c?d", "e f#g%20"]
    engine = Engine(MemoryStore(), [spec(name=n) for n in names], secret=SECRET, seed=1)
    side = Sidecar(engine)
    try:
        with autoexp.Client(side.url) as client:
            for name in names:
                assert client.definition(name)["experiment"] == name
                exp = client.experiment(name)

                @exp.control
                def v1(q: int) -> int:
                    return q

                @exp.alternative
                def v2(q: int) -> int:
                    return q

                assert exp(1, unit="u").decision.experiment == name
    finally:
        side.close()


def test_async_alternatives_over_a_sidecar(sidecar: Sidecar) -> None:
    import asyncio

    async def main() -> list[Any]:
        client = autoexp.Client(sidecar.url)
        exp = client.experiment("ranker")

        @exp.control
        async def v1(q: int) -> int:
            return q

        @exp.alternative
        async def v2(q: int) -> int:
            return -q

        answers = [await exp(i + 1) for i in range(10)]
        assert [await exp.areward(a.decision, 1.0) for a in answers] == [True] * 10
        await client.aclose()
        return answers

    answers = asyncio.run(main())
    for a in answers:
        assert a.result == (-1 if a.decision.arm else 1) * abs(a.result)


def expiring_metrics(side: Sidecar) -> tuple[float | None, float]:
    """The sidecar's ``autoexp_expire_holder`` (None: absent) and
    ``autoexp_defaults_applied_total`` for the experiment, scraped."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{side.url}/_autoexp/metrics", timeout=10).text
    got = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("experiment") == "ranker"
    }
    return got.get("autoexp_expire_holder"), got["autoexp_defaults_applied_total"]


def test_one_sidecar_of_two_applies_the_defaults_and_the_other_takes_over(
    durable_store: Any,
) -> None:
    # Two sidecars (replicas, each its own store client) expire every 0.5 s under the
    # lease (held 1.5 s: a holder would have to stall for a second to lose it): the
    # metrics say which one holds it, and it alone applies every replica's defaults. When
    # it stops, the other takes over once the lease ran out and applies the rest; each
    # silent decision gets its default once.
    from autoexp.store import open_store

    options = {"join_window_s": 0.3, "default_reward": 0.0}
    sides = [
        Sidecar(
            Engine(store, [spec(**options)], secret=SECRET, seed=seed, log_flush_s=0.02),
            expire_every_s=0.5,
        )
        for seed, store in ((51, durable_store), (52, open_store(durable_store.url)))
    ]
    try:
        for side in sides:
            for _ in range(10):
                side.engine.decide("ranker")

        def applied() -> list[int]:
            return [side.engine.status("ranker")["defaults_applied"] for side in sides]

        deadline = time.monotonic() + 20
        while sum(applied()) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(applied()) == [0, 20]  # one replica applied all twenty
        scraped = sorted(expiring_metrics(side) for side in sides)
        assert scraped == [(0.0, 0.0), (1.0, 20.0)]
        holder = next(side for side in sides if expiring_metrics(side)[0] == 1.0)
        other = next(side for side in sides if side is not holder)
        holder.close()
        holder.engine.store.close()
        sides.remove(holder)
        for _ in range(5):
            other.engine.decide("ranker")
        deadline = time.monotonic() + 20
        while other.engine.status("ranker")["defaults_applied"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert expiring_metrics(other) == (1.0, 5.0)  # it holds the lease now
        other.engine.flush()
        records = other.engine.store.records("ranker")
        defaults = [r["decision_id"] for r in records if r.get("source") == "default"]
        decided = [r["decision_id"] for r in records if r.get("type") == "decision"]
        assert len(decided) == 25 and sorted(defaults) == sorted(decided)  # each once
    finally:
        for side in sides:
            side.close()
            side.engine.store.close()


def test_a_store_outage_fails_open_and_recovers(redis_server: Any) -> None:
    # Redis stopped under a running sidecar: once the engine has noticed (its background
    # log writer fails within the 0.3 s socket timeout), decide and rewards answer 503
    # (decide says fail_open), readyz says so (a 503 only with ?store=required), the SDK
    # serves control and counts it;
    # nothing that was acknowledged is lost; after Redis is back (it kept nothing on disk)
    # the sidecar decides again and the engine declares its state anew.
    redis_server.flush()
    import time

    from autoexp.store import open_store

    url = redis_server.url + "?socket_timeout_s=0.3&connect_timeout_s=0.3"
    engine = Engine(open_store(url), [spec()], secret=SECRET, seed=3, log_batch=1)
    side = Sidecar(engine)
    client = autoexp.Client(side.url)
    exp = client.experiment("ranker")
    exp.control(lambda q: ("control", q), name="v1")
    exp.alternative(lambda q: ("alt", q), name="v2")
    try:
        made = [client.decide("ranker") for _ in range(10)]
        assert client.reward_many([(d, 1.0) for d in made[:5]]) == [True] * 5
        redis_server.stop()
        try:
            with httpx.Client(base_url=side.url, timeout=5) as http:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # decisions are served until noticed
                    r = http.post("/_autoexp/decide", json={"experiment": "ranker"})
                    if r.status_code == 503:
                        break
                    assert r.status_code == 200
                    time.sleep(0.05)
                assert r.status_code == 503 and r.json()["fail_open"] is True
                r = http.post("/_autoexp/rewards", json={"token": made[5].token, "value": 1})
                assert r.status_code == 503 and "retry" in r.json()["error"]
                # still ready (it serves: control), unless the store is required
                r = http.get("/_autoexp/readyz")
                assert r.status_code == 200 and r.json()["store_ok"] is False
                assert http.get("/_autoexp/readyz?store=required").status_code == 503
            with pytest.raises(StoreError):
                client.reward(made[6], 1.0)
            answers = [exp(i) for i in range(5)]
            assert all(a.result[0] == "control" and a.decision is None for a in answers)
            assert exp.fail_open == 5
        finally:
            redis_server.start()
        with httpx.Client(base_url=side.url, timeout=5) as http:
            assert http.get("/_autoexp/readyz?store=required").status_code == 200
        engine.refresh()
        d = client.decide("ranker")
        assert client.reward(d, 1.0)
    finally:
        client.close()
        side.close()
        engine.store.close()
    after = open_store(url)
    try:
        assert np.asarray(after.read("ranker")["policy.n"]).sum() == 1
    finally:
        after.close()


def test_a_store_down_at_the_start_fails_open_until_it_answers(tmp_path: Any) -> None:
    # The engine of a sidecar whose Redis does not answer as it starts (defer_start, as
    # autoexp proxy makes it): before, the engine refused to exist (StoreError), so the
    # proxy did not start. Now every call about the experiment says the store is down
    # (decide 503 fail_open, rewards 503 retry, definition 503; the admin API lists it as
    # waiting), readyz is 200 but 503 with ?store=required, the page and the metrics say
    # so; once Redis answers, the background writer starts it within about a second.
    from autoexp.store import open_store

    server = RedisServer(tmp_path)  # its own: stopped here, started later on its port
    server.stop()
    url = server.url + "?socket_timeout_s=0.3&connect_timeout_s=0.3"
    store = open_store(url)
    with pytest.raises(StoreError):  # the default: refused
        Engine(store, [spec()], secret=SECRET)
    with pytest.raises(ConfigError, match="defer_start: needs the background writer"):
        Engine(store, [spec()], secret=SECRET, log_flush_s=0, defer_start=True)
    engine = Engine(store, [spec()], secret=SECRET, seed=3, defer_start=True)
    side = Sidecar(engine, admin_token="a" * 24)
    # a token another replica (already started) issued: its reward cannot be taken here
    elsewhere = Engine(MemoryStore(), [spec()], secret=SECRET, seed=4)
    token = elsewhere.decide("ranker").token
    auth = {"Authorization": "Bearer " + "a" * 24}
    try:
        assert engine.experiments == [] and engine.waiting == ["ranker"]
        with httpx.Client(base_url=side.url, timeout=5) as http:
            r = http.post("/_autoexp/decide", json={"experiment": "ranker", "unit": "u1"})
            assert r.status_code == 503 and r.json()["fail_open"] is True
            assert "ranker': not started yet, its store has not answered" in r.json()["error"]
            r = http.post("/_autoexp/decide", json={"experiment": "nope"})
            assert r.status_code == 404  # still told apart from one that waits
            r = http.post("/_autoexp/rewards", json={"token": token, "value": 1})
            assert r.status_code == 503 and "nothing was acknowledged: retry" in r.json()["error"]
            assert http.get("/_autoexp/experiments/ranker/definition").status_code == 503
            r = http.get("/_autoexp/readyz")
            assert r.status_code == 200
            assert r.json()["store_ok"] is False and r.json()["waiting"] == ["ranker"]
            assert http.get("/_autoexp/readyz?store=required").status_code == 503
            assert http.get("/_autoexp/readyz?store=yes").status_code == 400
            listed = http.get("/_autoexp/admin/experiments", headers=auth).json()["experiments"]
            assert [(e["experiment"], e["waiting"]) for e in listed] == [("ranker", True)]
            assert listed[0]["reason"].startswith("its store has not answered since this")
            assert http.get("/_autoexp/admin/experiments/ranker", headers=auth).status_code == 503
            r = http.post("/_autoexp/admin/experiments/ranker/pause", headers=auth, json={})
            assert r.status_code == 503
            data = http.get("/_autoexp/ui/data").json()
            assert data["experiments"] == [] and data["waiting"][0]["experiment"] == "ranker"
            assert "not started yet, its store has not answered" in http.get("/_autoexp/ui").text
            metrics = http.get("/_autoexp/metrics").text
            assert 'autoexp_waiting{experiment="ranker"} 1.0' in metrics
            assert "autoexp_store_up 0.0" in metrics
            server.start()
            deadline = time.monotonic() + 10  # the writer tries every 50 ms
            while engine.waiting:
                assert time.monotonic() < deadline, "not started within 10 s of Redis"
                time.sleep(0.05)
            r = http.post("/_autoexp/decide", json={"experiment": "ranker", "unit": "u1"})
            assert r.status_code == 200
            r = http.post("/_autoexp/rewards", json={"token": r.json()["token"], "value": 1})
            assert r.status_code == 202
            r = http.post("/_autoexp/rewards", json={"token": token, "value": 1})
            assert r.status_code == 202  # the other replica's decision, now taken
            assert http.get("/_autoexp/readyz?store=required").status_code == 200
            listed = http.get("/_autoexp/admin/experiments", headers=auth).json()["experiments"]
            assert [(e["experiment"], e["waiting"]) for e in listed] == [("ranker", False)]
            metrics = http.get("/_autoexp/metrics").text
            assert 'autoexp_waiting{experiment="ranker"} 0.0' in metrics
            assert "autoexp_store_up 1.0" in metrics
        assert engine.experiments == ["ranker"]
        engine.flush()
        kinds = [r["type"] for r in store.records("ranker")]
        assert sorted(kinds) == ["decision", "reward", "reward"]
        assert np.asarray(store.read("ranker")["policy.n"]).sum() == 2
    finally:
        side.close()
        elsewhere.close()
        store.close()
        server.stop()


def test_an_experiment_its_store_refuses_once_it_answers_waits_and_says_why(
    tmp_path: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis holds ranker's state with three arms; the config has two. With Redis up the
    # engine is refused at once, deferred start or not (as before). Started while Redis is
    # down, the refusal comes when it answers: ranker stays waiting with the reason and
    # says it (not "the store does not answer", and not holding up the other experiment).
    from autoexp.store import open_store

    monkeypatch.setattr("autoexp.startup.REFUSED_RETRY_S", 1.0)
    server = RedisServer(tmp_path, "--appendonly", "yes")  # keeps ranker across the stop
    url = server.url + "?socket_timeout_s=0.3&connect_timeout_s=0.3"
    store = open_store(url)
    engine = None
    try:
        three = spec(alternatives=("v1", "v2", "v3"), params=None)
        Engine(store, [three], secret=SECRET, log_flush_s=0).close()
        both = [spec(), spec(name="other")]
        with pytest.raises(StoreError, match="a different policy or arm count"):
            Engine(store, both, secret=SECRET, defer_start=True)
        server.stop()
        engine = Engine(store, both, secret=SECRET, seed=5, defer_start=True)
        assert engine.waiting == ["other", "ranker"]
        server.start()
        deadline = time.monotonic() + 10
        while engine.experiments != ["other"]:
            assert time.monotonic() < deadline, engine.not_started()
            time.sleep(0.05)
        why = engine.not_started()
        assert engine.waiting == ["ranker"] and why["ranker"].startswith("refused: store.declare")
        with pytest.raises(StoreError, match=r"not started yet, refused: .* arm count"):
            engine.decide("ranker")
        assert engine.check_store() == (True, None)  # the store is not taken for down
        assert engine.reward(engine.decide("other"), 1.0)
        side = Served(make_app(engine, close_engine=False))  # the engine goes on after
        try:
            with httpx.Client(base_url=side.url, timeout=5) as http:
                metrics = http.get("/_autoexp/metrics").text
                page = http.get("/_autoexp/ui").text
            assert "autoexp_store_up 1.0" in metrics
            assert 'autoexp_waiting{experiment="ranker"} 1.0' in metrics
            assert 'ranker</h2> <span class="err">not started yet, refused: store.declare' in page
        finally:
            side.close()
        # tried again every REFUSED_RETRY_S (1 s here), and said each time, no more often
        deadline = time.monotonic() + 10
        while len(said := [r for r in caplog.records if "cannot start" in r.getMessage()]) < 3:
            assert time.monotonic() < deadline, said
            time.sleep(0.05)
        assert {r.levelname for r in said} == {"ERROR"} and "ranker" in said[0].getMessage()
        gaps = np.diff([r.created for r in said])
        assert (gaps >= 0.9).all(), gaps  # 0.1 s for the log's own clock against monotonic
        # the operator clears ranker's old state: it starts at the next try
        client = redis.Redis.from_url(server.url)
        client.delete(*client.keys("autoexp:{ranker}:*"))
        client.close()
        deadline = time.monotonic() + 10
        while engine.waiting:
            assert time.monotonic() < deadline, engine.not_started()
            time.sleep(0.05)
        assert engine.decide("ranker").arm in (0, 1)
    finally:
        if engine is not None:
            engine.close()
        store.close()
        server.stop()
