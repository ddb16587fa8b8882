"""Contextual policies served by the runtime: named features encoded by config, a context
per decision carried in the token to its reward, state that is the replay of the log on
every store, and (where the best alternative depends on a request feature) a contextual
policy beating the best context-free one through the SDK and through the proxy."""

from __future__ import annotations

import math
import random
import time
import zlib
from typing import Any

import httpx
import numpy as np
import pytest
from aiohttp import web

import autoexp
from autoexp.config import parse_config
from autoexp.context import ContextSpec, parse_context
from autoexp.engine import Engine, ExperimentSpec
from autoexp.errors import ConfigError, RequestError, RewardError
from autoexp.proxy.app import FORWARDER
from autoexp.state import increments
from autoexp.store.memory import MemoryStore
from autoexp.tokens import Ticket, keys_from, sign, verify
from policies import ConservativeBudget, LinTS, LinUCB, TrafficCap
from policies.base import Decision as PolicyDecision
from tests.autoexp.conftest import Served, Sidecar

SECRET = "c" * 32
DEVICES = ("mobile", "desktop", "tablet")
# Success probability of each alternative (control first) by device: on mobile the second
# is best, on desktop the third, on tablet control. Devices come 40/40/20.
P = {"mobile": (0.2, 0.7, 0.2), "desktop": (0.2, 0.2, 0.7), "tablet": (0.5, 0.3, 0.3)}
SHARE = (0.4, 0.4, 0.2)
# Served reward of the best context-free arm: max over arms of sum_d share_d p_d[arm]
# = 0.42 (either alternative); of the best arm per device (the contextual oracle): 0.66.
CONTEXT_FREE_BEST = max(
    sum(s * P[d][a] for s, d in zip(SHARE, DEVICES, strict=True)) for a in range(3)
)
ORACLE = sum(s * max(P[d]) for s, d in zip(SHARE, DEVICES, strict=True))
DEVICE = {"features": [{"name": "device", "header": "X-Device", "one_hot": list(DEVICES)}]}


# --- encoding ---------------------------------------------------------------------------


EVERY_ENCODING = {  # one feature of each encoding and source
    "features": [
        {"name": "device", "header": "X-Device", "one_hot": ["mobile", "desktop"]},
        {"name": "country", "query": "c", "hash": 8},
        {"name": "basket", "header": "X-Basket", "number": 0.01},
        {"name": "hour", "time": "hour"},
        {"name": "day", "time": "weekday"},
    ]
}


def test_each_encoding_gives_the_numbers_its_docs_say() -> None:
    spec = parse_context(EVERY_ENCODING, "context")
    assert spec.dim == 1 + 2 + 8 + 1 + 2 + 7 == len(spec.describe())
    now = 1_700_000_000.0  # Tuesday 2023-11-14 22:13:20 UTC
    x = spec.encode({"device": "desktop", "country": "DE", "basket": "250"}, now=now)
    hour = 22 + 13 / 60 + 20 / 3600
    want = [1.0, 0.0, 1.0]
    want += [1.0 if i == zlib.crc32(b"DE") % 8 else 0.0 for i in range(8)]
    want += [2.5, math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24)]
    want += [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(x, want, atol=1e-12)
    # missing and unlisted values are zeros; given time values override the clock
    y = spec.encode({"device": "watch", "hour": 6, "day": 6}, now=now)
    np.testing.assert_allclose(y[1:12], 0.0)
    np.testing.assert_allclose(y[12:14], [1.0, 0.0], atol=1e-12)  # 06:00 is a quarter turn
    assert y[14:] == [0.0] * 6 + [1.0]
    assert spec.describe()[:4] == ["intercept", "device=mobile", "device=desktop", "country#0"]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"colour": "red"}, r"context: unknown feature 'colour'; defined: device, basket, hour"),
        ({"device": 3.5}, r"context.device: must be a string \(got 3.5\)"),
        ({"basket": "lots"}, r"context.basket: must be a number \(got 'lots'\)"),
        ({"basket": float("nan")}, r"context.basket: must be a finite number"),
        ({"hour": 24}, r"context.hour: an hour must be in \[0, 24\)"),
    ],
)
def test_bad_feature_values_are_refused_by_name(values: dict[str, Any], match: str) -> None:
    spec = parse_context(
        {
            "features": [
                {"name": "device", "one_hot": ["a"]},
                {"name": "basket", "number": 1},
                {"name": "hour", "time": "hour"},
            ]
        },
        "context",
    )
    with pytest.raises(RequestError, match=match):
        spec.encode(values, now=0.0)


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"features": []}, r"x.context.features: must be a non-empty list"),
        ({"features": [{"name": "d"}]}, r"x.context.features\[0\]: needs exactly one encoding"),
        (
            {"features": [{"name": "d", "one_hot": ["a"], "hash": 4}]},
            r"x.context.features\[0\]: needs exactly one encoding of one_hot, hash, number "
            r"\(got one_hot, hash\)",
        ),
        ({"features": [{"name": "d", "one_hot": ["a", "a"]}]}, r"features\[0\].one_hot: .*dis"),
        ({"features": [{"name": "d", "hash": 0}]}, r"features\[0\].hash: must be a bucket"),
        ({"features": [{"name": "d", "number": "x"}]}, r"features\[0\].number: must be a finite"),
        ({"features": [{"name": "d", "time": "minute"}]}, r"features\[0\].time: must be one of"),
        (
            {"features": [{"name": "d", "header": "A", "query": "b", "number": 1}]},
            r"features\[0\]: one source at most \(got header, query\)",
        ),
        ({"features": [{"name": "d", "path": -1, "number": 1}]}, r"features\[0\].path: must be"),
        ({"features": [{"name": "d", "colour": 1}]}, r"features\[0\].colour: unknown key"),
        (
            {"features": [{"name": "d", "number": 1}, {"name": "d", "number": 2}]},
            r"features\[1\].name: 'd' defined twice",
        ),
        ({"features": [{"name": "d", "number": 1}], "intercept": 1}, r"x.context.intercept"),
    ],
)
def test_context_config_errors_name_the_path(table: dict[str, Any], match: str) -> None:
    raw = {"experiments": {"x": {"alternatives": ["a", "b"], "context": table}}}
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def test_a_contextual_policy_takes_its_defaults_from_the_context_and_the_reward() -> None:
    raw = {
        "experiments": {
            "x": {
                "alternatives": ["a", "b"],
                "policy": {"name": "lin-ts"},
                "reward": {"low": 0.0, "high": 5.0},
                "context": DEVICE,
            }
        }
    }
    (spec,) = parse_config(raw).experiments
    assert spec.policy == LinTS(dim=4, low=0.0, high=5.0)
    raw["experiments"]["x"]["policy"] = {"name": "lin-ucb", "dim": 3}
    with pytest.raises(ConfigError, match=r"experiments.x.policy.dim: the context has 4 numbers"):
        parse_config(raw)


# --- tokens -------------------------------------------------------------------------------


def test_a_token_carries_its_context_signed() -> None:
    keys = keys_from(SECRET)
    ticket = Ticket("d1", "exp|with|bars", 1, (0.25, 0.75), 10.0, 20.0, (1.0, 0.1, -3e-300))
    token = sign(keys, ticket)
    assert verify(keys, token, now=15.0) == ticket
    plain = Ticket("d2", "e", 0, (1.0,), 10.0, 20.0)
    assert verify(keys, sign(keys, plain), now=15.0) == plain  # format 1 unchanged
    # another context under the same signature: forged
    body, tag = token.split(".")
    import base64

    payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).replace(b"0.1", b"0.9")
    forged = base64.urlsafe_b64encode(payload).rstrip(b"=").decode() + "." + tag
    with pytest.raises(RewardError, match="forged"):
        verify(keys, forged, now=15.0)


# --- the engine -----------------------------------------------------------------------------


def contextual_spec(**options: Any) -> ExperimentSpec:
    context = parse_context(DEVICE, "context")
    base = LinUCB(dim=context.dim, alpha=0.5, low=0.0, high=1.0)
    return ExperimentSpec(
        name="ranker",
        alternatives=("a", "b", "c"),
        policy=TrafficCap(
            policy=ConservativeBudget(policy=base, alpha=0.2, refresh=10), explore_share=0.8
        ),
        context=context,
        refresh_every=10,
        **options,
    )


def test_state_is_the_replay_of_the_log_on_every_store(store: Any) -> None:
    # 300 decisions at random devices, each rewarded (some twice: counted once); the
    # shared state must equal the sums rebuilt from the decision log alone: gram_k =
    # sum x x^T, xr_k = sum r x, n_k over the rewarded decisions of arm k.
    engine = Engine(store, [contextual_spec()], secret=SECRET, seed=3)
    rng = np.random.default_rng(4)
    for i in range(300):
        device = DEVICES[rng.choice(3, p=SHARE)]
        d = engine.decide("ranker", context={"device": device})
        r = float(rng.random() < P[device][d.arm])
        assert engine.reward(d, r)
        if i % 7 == 0:
            assert not engine.reward(d.token, r)  # the same reward twice counts once
    engine.flush()
    records = store.records("ranker")
    context = {r["decision_id"]: r["context"] for r in records if r["type"] == "decision"}
    gram = np.zeros((3, 4, 4))
    xr = np.zeros((3, 4))
    n = np.zeros(3)
    for r in (r for r in records if r["type"] == "reward"):
        x = np.array(context[r["decision_id"]])
        gram[r["arm"]] += np.outer(x, x)
        xr[r["arm"]] += r["reward"] * x
        n[r["arm"]] += 1
    assert n.sum() == 300
    state = store.read("ranker")
    np.testing.assert_allclose(state["policy.base.gram"][0], gram, atol=1e-9)
    np.testing.assert_allclose(state["policy.base.xr"][0], xr, atol=1e-9)
    np.testing.assert_allclose(state["policy.base.n"][0], n)
    np.testing.assert_allclose(state["policy.budget.n"][0], n)
    # and every decision logged the allocation it was drawn from, at its own context
    decisions = [r for r in records if r["type"] == "decision"]
    assert all(abs(sum(r["allocation"]) - 1) < 1e-9 for r in decisions)
    assert all(r["propensity"] == r["allocation"][r["arm"]] for r in decisions)
    engine.close()


def test_each_decision_is_a_draw_from_the_policy_allocation_at_its_context() -> None:
    # Train a snapshot, then freeze it (no refresh): at a fixed context every decision's
    # propensity must be the policy's allocation there, and the arms drawn must follow
    # it. N = 4,000 draws: each arm's count within 4.5 binomial standard errors of N p.
    spec = contextual_spec()
    spec = ExperimentSpec(
        name="ranker",
        alternatives=spec.alternatives,
        policy=TrafficCap(policy=LinTS(dim=4, noise_sd=2.0), explore_share=0.8),
        context=spec.context,
        refresh_every=100_000,
    )
    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=8, log_flush_s=0.0)
    rng = np.random.default_rng(9)
    for _ in range(150):
        device = DEVICES[rng.choice(3, p=SHARE)]
        d = engine.decide("ranker", context={"device": device})
        engine.reward(d, float(rng.random() < P[device][d.arm]))
    engine.refresh("ranker")
    x = np.array([[1.0, 1.0, 0.0, 0.0]])  # mobile
    live = engine._live["ranker"]
    want = spec.policy.allocation(live.policy_state, x)[0]
    assert want.min() > 0.02  # noise_sd=2: every arm still in play, so the check has teeth
    n_draws = 4_000
    counts = np.zeros(3)
    for _ in range(n_draws):
        d = engine.decide("ranker", context={"device": "mobile"})
        assert d.propensity == pytest.approx(want[d.arm], abs=1e-12)
        counts[d.arm] += 1
    se = np.sqrt(n_draws * want * (1 - want))
    assert np.all(np.abs(counts - n_draws * want) <= 4.5 * se), (counts, n_draws * want)
    engine.close()


def test_contexts_the_experiment_cannot_take_are_refused_and_nothing_recorded() -> None:
    spec = ExperimentSpec(
        name="plain", alternatives=("a", "b"), policy=LinUCB(dim=2, low=0.0, high=1.0)
    )
    store = MemoryStore()
    engine = Engine(store, [spec, contextual_spec()], secret=SECRET, seed=1, log_flush_s=0.0)
    with pytest.raises(RequestError, match=r"policy lin-ucb needs a context of 2 numbers"):
        engine.decide("plain")
    with pytest.raises(RequestError, match=r"'plain' takes 2 numbers \(got 3\)"):
        engine.decide("plain", context=[1.0, 0.0, 1.0])
    with pytest.raises(RequestError, match=r"'plain' defines no named features"):
        engine.decide("plain", context={"device": "mobile"})
    with pytest.raises(RequestError, match=r"takes 4 numbers \(got 2\): intercept, device=mob"):
        engine.decide("ranker", context=[1.0, 0.0])
    with pytest.raises(RequestError, match=r"unknown feature 'os'"):
        engine.decide("ranker", context={"os": "linux"})
    engine.flush()
    assert store.records("plain") == [] and store.records("ranker") == []
    # with named features, no context at all is every feature missing (intercept only)
    d = engine.decide("ranker")
    engine.flush()
    assert store.records("ranker")[0]["context"] == [1.0, 0.0, 0.0, 0.0]
    # a token without a context (signed with the right key) cannot update a linear model
    keys = keys_from(SECRET)
    bare = sign(keys, Ticket("x", "plain", 0, (0.5, 0.5), 0.0, 1e12))
    with pytest.raises(RewardError, match=r"carries no context of 2 numbers"):
        engine.reward(bare, 1.0)
    assert engine.reward(d, 1.0)
    engine.close()


def test_an_expired_decision_gets_the_default_at_its_logged_context() -> None:
    now = [1_000.0]
    spec = contextual_spec(join_window_s=60.0, default_reward=0.0)
    store = MemoryStore()
    engine = Engine(store, [spec], secret=SECRET, seed=2, clock=lambda: now[0])
    ds = [engine.decide("ranker", context={"device": dev}) for dev in DEVICES]
    now[0] += 61.0
    assert engine.expire() == 3
    engine.refresh("ranker")
    gram = store.read("ranker")["policy.base.gram"][0]
    for d, dev in zip(ds, DEVICES, strict=True):
        x = np.array(parse_context(DEVICE, "c").encode({"device": dev}))
        assert np.all(gram[d.arm] >= np.outer(x, x) - 1e-12)
    assert sum(np.trace(g) for g in gram) == pytest.approx(3 * 2.0)  # |x|^2 = 2 each
    engine.close()


# --- the contextual policy beats the best context-free one ------------------------------


def play_sdk(policy: str, seed: int, rounds: int) -> float:
    """Mean reward of ``rounds`` decisions through the SDK (devices drawn 40/40/20)."""
    exp = autoexp.Experiment(
        "ranker",
        policy=policy,
        explore_share=None,
        test=None,
        store=MemoryStore(),
        secret=SECRET,
        seed=seed,
        refresh_every=20,
        context={"features": [{"name": "device", "one_hot": list(DEVICES)}]},
    )
    for name in ("control", "b", "c"):
        exp.setting(name)
    rng = np.random.default_rng([seed, 1])
    total = 0.0
    for _ in range(rounds):
        device = DEVICES[rng.choice(3, p=SHARE)]
        d = exp.decide(context={"device": device})
        r = float(rng.random() < P[device][d.arm])
        exp.reward(d, r)
        total += r
    exp.close()
    return total / rounds


def test_through_the_sdk_contextual_policies_beat_the_best_context_free_one() -> None:
    # R = 8 seeded replicates of 800 rounds per policy. The replicates' means are
    # independent, so the difference of two policies' averages has standard error
    # sqrt(s_a^2 / R + s_b^2 / R) from the replicates' sample variances. Thompson sampling
    # (context-free) can at best reach 0.42 a round here, the contextual oracle 0.66:
    # each linear policy must beat it by more than 4 such standard errors, and come
    # within 0.1 of the oracle (it pays for its exploration early).
    R, rounds = 8, 800
    got = {p: np.array([play_sdk(p, s, rounds) for s in range(R)]) for p in ("lin-ts", "lin-ucb")}
    base = np.array([play_sdk("thompson-beta", s, rounds) for s in range(R)])
    assert base.mean() <= CONTEXT_FREE_BEST + 4 * base.std(ddof=1) / np.sqrt(R)
    for policy, means in got.items():
        se = np.sqrt(means.var(ddof=1) / R + base.var(ddof=1) / R)
        assert means.mean() - base.mean() > 4 * se, (policy, means.mean(), base.mean(), se)
        assert means.mean() > ORACLE - 0.1, (policy, means.mean())


def bernoulli_upstream(arm: int, seed: int) -> web.Application:
    """An upstream whose answer carries a Bernoulli reward by the request's X-Device."""
    rng = random.Random(seed)

    async def handler(request: web.Request) -> web.Response:
        p = P.get(request.headers.get("X-Device", ""), (0.0, 0.0, 0.0))[arm]
        reward = "1" if rng.random() < p else "0"
        return web.Response(text=str(arm), headers={"X-Autoexp-Reward": reward})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


def test_through_the_proxy_context_comes_from_the_request_and_wins() -> None:
    # One sidecar, two experiments on the same three upstreams: /ctx/... decided by
    # linear Thompson sampling on the X-Device header (plus a country from the query
    # and the section from the path, which carry no signal), /plain/... by context-free
    # Thompson sampling. Each gets 1,500 users with random devices; rewards come back in
    # the upstreams' reward header. Per-request rewards are Bernoulli with a mean near
    # the run's, so the standard error of a run's mean is at most 0.5 / sqrt(1500) =
    # 0.013 (adaptive allocation makes this an approximation: the margin asked, 4 SE of
    # the difference = 0.052, is a quarter of the gap the oracles imply, 0.66 - 0.42).
    ups = [Served(bernoulli_upstream(arm, 100 + arm)) for arm in range(3)]
    toml = f"""
    [proxy]
    upstream = "{ups[0].url}"

    [experiments.ctx]
    alternatives = ["a", {{ name = "b", upstream = "{ups[1].url}" }},
                    {{ name = "c", upstream = "{ups[2].url}" }}]
    policy = {{ name = "lin-ts" }}
    route = {{ path_prefix = "/ctx", reward_from = "header" }}
    refresh_every = 20
    [experiments.ctx.context]
    features = [
      {{ name = "device", header = "X-Device", one_hot = ["mobile", "desktop", "tablet"] }},
      {{ name = "country", query = "country", hash = 4 }},
      {{ name = "section", path = 1, one_hot = ["shoes", "hats"] }},
    ]

    [experiments.plain]
    alternatives = ["a", {{ name = "b", upstream = "{ups[1].url}" }},
                    {{ name = "c", upstream = "{ups[2].url}" }}]
    policy = {{ name = "thompson-beta" }}
    route = {{ path_prefix = "/plain", reward_from = "header" }}
    refresh_every = 20
    """
    import tomllib

    config = parse_config(tomllib.loads(toml))
    engine = Engine(MemoryStore(), config.experiments, secret=SECRET, seed=11)
    side = Sidecar(engine, proxy=config.proxy, routes=list(config.routes))
    rng = np.random.default_rng(12)
    n = 1_500
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            for i in range(n):
                for prefix in ("ctx", "plain"):
                    device = DEVICES[rng.choice(3, p=SHARE)]
                    section = ("shoes", "hats", "socks")[i % 3]
                    r = http.get(
                        f"/{prefix}/{section}/item",
                        params={"country": ("DE", "FR")[i % 2]},
                        headers={"X-Device": device},
                    )
                    assert r.status_code == 200
            # the context logged is the request's, encoded as configured
            r = http.get("/ctx/hats/x?country=FR", headers={"X-Device": "tablet"})
        forwarder = side.app[FORWARDER]  # rewards read from answers are applied in groups
        deadline = time.monotonic() + 10
        while (forwarder.pending or forwarder.applying) and time.monotonic() < deadline:
            time.sleep(0.02)
        engine.flush()
        records = engine.store.records("ctx")
        last = [r for r in records if r["type"] == "decision"][-1]
        fr = [1.0 if k == zlib.crc32(b"FR") % 4 else 0.0 for k in range(4)]
        assert last["context"] == [1.0, 0.0, 0.0, 1.0, *fr, 0.0, 1.0]
        means = {}
        for name in ("ctx", "plain"):
            rewards = [r["reward"] for r in engine.store.records(name) if r["type"] == "reward"]
            assert len(rewards) >= n
            means[name] = float(np.mean(rewards[:n]))
        se = math.sqrt(2 * 0.25 / n)
        assert means["ctx"] - means["plain"] > 4 * se, means
    finally:
        side.close()
        for u in ups:
            u.close()


def test_the_sidecar_encodes_named_contexts_sent_by_the_sdk_client() -> None:
    spec = contextual_spec()
    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=5)
    side = Sidecar(engine)
    try:
        with autoexp.Client(side.url, timeout_s=10) as client:
            d = client.decide("ranker", context={"device": "desktop"})
            assert client.reward(d, 1.0)
            with pytest.raises(RequestError, match="unknown feature 'os'"):
                client.decide("ranker", context={"os": "linux"})
        engine.flush()
        (logged,) = [r for r in engine.store.records("ranker") if r["type"] == "decision"]
        assert logged["context"] == [1.0, 0.0, 1.0, 0.0]
        assert engine.store.read("ranker")["policy.base.n"][0].sum() == 1
    finally:
        side.close()


def test_increments_through_the_engine_equal_the_policy_increment() -> None:
    # the engine scatters a dense increment of a (1, K, d, d) state as (field, flat index,
    # amount) entries: one reward's entries must rebuild the policy's own increment.
    spec = contextual_spec()
    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=5, log_flush_s=0.0)
    x = (1.0, 0.0, 0.5, -2.0)
    ticket = Ticket("t", "ranker", 2, (0.2, 0.3, 0.5), 0.0, 1.0, x)
    (entries,) = increments(engine._live["ranker"], [ticket], [0.75]).entries()
    inc = spec.policy.increment(
        PolicyDecision(np.array([2]), np.array([[0.2, 0.3, 0.5]])), np.array([0.75]), np.array([x])
    ).to_dict()
    rebuilt = {k: np.zeros(np.shape(v)[1:]).ravel() for k, v in inc.items()}
    for field, index, amount in entries:
        if field.startswith("policy."):
            rebuilt[field[len("policy.") :]][index] += amount
    for k, v in inc.items():
        np.testing.assert_array_equal(rebuilt[k], np.asarray(v)[0].ravel())
    engine.close()


def test_context_spec_is_a_frozen_value() -> None:
    spec = parse_context(DEVICE, "c")
    assert isinstance(spec, ContextSpec) and spec == parse_context(DEVICE, "c")
    with pytest.raises(AttributeError):
        spec.intercept = False  # type: ignore[misc]
