"""Generated alternatives: a parameter space, candidates admitted into a capped share under
the conservative budget, retired or promoted by the sequential test, champion/challenger
across epochs; shared by replicas; and, in a simulated tuning scenario, a setting near
the optimum found without the served reward falling below the budget."""

from __future__ import annotations

import copy
import json
import math
import random
from typing import Any

import httpx
import numpy as np
import pytest
from aiohttp import web

from autoexp.config import parse_config
from autoexp.demo import tuning
from autoexp.engine import Engine
from autoexp.errors import ConfigError
from autoexp.generate import Generation, Param
from autoexp.store.memory import MemoryStore
from policies.safety import restricted_allocation
from policies.thompson import ThompsonBeta
from tests.autoexp.conftest import Served, Sidecar

SECRET = "g" * 32


def test_parameters_map_the_unit_interval_onto_their_values() -> None:
    p = Param(name="t", low=50, high=5_000, log=True, integer=True)
    assert p.value(0.0) == 50 and p.value(1.0) == 5_000 and p.value(0.5) == 500
    assert p.unit(500) == pytest.approx(0.5)
    lin = Param(name="w", low=-1.0, high=1.0)
    assert lin.value(0.75) == 0.5 and lin.unit(0.5) == 0.75
    c = Param(name="r", choices=("a", "b", "c"))
    assert [c.value(u) for u in (0.0, 0.34, 0.99, 1.0)] == ["a", "b", "c", "c"]
    assert c.unit("b") == 0.5


def test_proposals_are_deterministic_sobol_first_then_local() -> None:
    gen = Generation(
        space=(Param(name="t", low=50, high=5_000, log=True), Param(name="w", low=0, high=1)),
        initial=4,
        local_scale=0.05,
        seed=3,
    )
    champion = {"t": 800.0, "w": 0.5}
    first = [gen.propose(0, slot, champion) for slot in range(1, 5)]
    assert [c["source"] for c in first] == ["sobol"] * 4
    assert first == [gen.propose(0, slot, {"t": 60.0, "w": 0.0}) for slot in range(1, 5)]
    # a scrambled Sobol set of 4 in 2-D puts one point in each half of each axis, twice
    units = np.array([c["unit"] for c in first])
    assert (units < 0.5).sum(axis=0).tolist() == [2, 2]
    local = [gen.propose(1, slot, champion) for slot in range(1, 201)]
    assert {c["source"] for c in local} == {"local"}
    u = np.array([c["unit"] for c in local])
    # local draws: N(centre, 0.05^2) per axis (clipping is rare this far from the edges);
    # the mean of 200 is within 4 SE (4 * 0.05 / sqrt(200) = 0.014) of the champion's point
    centre = np.array([gen.space[0].unit(800.0), 0.5])
    assert np.all(np.abs(u.mean(axis=0) - centre) < 4 * 0.05 / math.sqrt(200))
    assert local == [gen.propose(1, slot, champion) for slot in range(1, 201)]


def base_raw(**generate: Any) -> dict[str, Any]:
    raw = tuning.config(seed=1)
    raw["experiments"]["tune"]["generate"].update(generate)
    return raw


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            lambda e: e["generate"]["space"].update(x={"low": 0, "high": 1}),
            r"experiments.tune.generate.space.x: the control must set it",
        ),
        (
            lambda e: e["alternatives"][0]["params"].update(timeout_ms=9_000),
            r"generate.space.timeout_ms: the control's value 9000 is outside it",
        ),
        (
            lambda e: e["generate"]["space"].update(timeout_ms={"low": 0, "high": 5, "log": True}),
            r"generate.space.timeout_ms.low: a log scale needs low > 0",
        ),
        (
            lambda e: e["generate"]["space"].update(timeout_ms={"choices": [1]}),
            r"generate.space.timeout_ms.choices: at least two distinct values",
        ),
        (
            lambda e: e["generate"].update(challengers=20),
            r"generate.challengers: at most slots \(12\) \(got 20\)",
        ),
        (lambda e: e["generate"].update(colour=1), r"generate.colour: unknown key"),
        (lambda e: e["generate"].update(initial_share=2), r"generate.initial_share: must be in"),
        (
            lambda e: (
                e["safety"].pop("conservative_alpha") and e["safety"].pop("conservative_delta")
            ),
            r"experiments.tune.safety.conservative_alpha: generated candidates need a conser",
        ),
        (lambda e: e.pop("test"), r"experiments.tune.test: generated candidates need a seq"),
        (lambda e: e.update(drift=True), r"experiments.tune.drift: a generated experiment"),
        (
            lambda e: e["alternatives"].append("other"),
            r"experiments.tune.alternatives: a generated experiment lists its control only",
        ),
    ],
)
def test_generation_config_errors_name_the_path(change: Any, match: str) -> None:
    raw = copy.deepcopy(tuning.config(seed=1))
    change(raw["experiments"]["tune"])
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def engines(store: Any, n: int = 1) -> list[Engine]:
    (spec,) = parse_config(tuning.config(seed=2)).experiments
    return [Engine(store, [spec], secret=SECRET, seed=40 + i, log_flush_s=0.0) for i in range(n)]


def test_candidates_are_admitted_capped_and_logged(store: Any) -> None:
    # Two replicas on one store (every backend): the candidates are the same on both and
    # logged once each; at most `challengers` explore at once; empty slots get nothing;
    # a candidate with fewer than `warmup` users gets at most `initial_share`.
    a, b = engines(store, 2)
    rng = np.random.default_rng(5)
    gen = a.spec("tune").generate
    assert gen is not None
    for t in range(1_500):
        e = (a, b)[t % 2]
        d = e.decide("tune")
        e.reward(d, float(rng.random() < tuning.reward_mean(d.params["timeout_ms"])))
        if t % 100 == 99:
            st = e.status("tune")
            live = [i for i in range(1, 13) if i <= e._live["tune"].admitted]
            exploring = [i for i in live if st["status"][i] == "exploring"]
            assert len(exploring) <= gen.challengers
            empty = [i for i in range(1, 13) if i not in live]
            assert all(st["allocation"][i] == 0.0 for i in empty)
            users = e.evidence("tune")["test"]["n"]
            for i in live:
                if users[i] < gen.warmup:
                    assert st["allocation"][i] <= gen.initial_share + 1e-12
    for e in (a, b):
        e.refresh("tune")
    sa, sb = a.status("tune"), b.status("tune")
    assert sa["alternatives"] == sb["alternatives"] and sa["params"] == sb["params"]
    records = store.records("tune")
    candidates = [r for r in records if r["type"] == "candidate"]
    keys = [(r["epoch"], r["arm"]) for r in candidates]
    assert len(keys) == len(set(keys)) >= 3
    for r in candidates:
        assert r["params"] == gen.propose(r["epoch"], r["arm"], {"timeout_ms": 200})["params"]
    # every decision names the candidate it served, with its parameters
    decisions = [r for r in records if r["type"] == "decision" and r["arm"] > 0]
    names = {(r["epoch"], r["arm"]): r["alternative"] for r in candidates}
    assert decisions and all(d["alternative"] in names.values() for d in decisions)
    for e in (a, b):
        e.close()


def test_the_policy_shares_only_among_candidates_in_play() -> None:
    # Thompson sampling over 1 control + 12 slots with 2 candidates in play: the 10 empty
    # slots' uninformed priors must not draw a share (they would: 10 Beta(1, 1) draws
    # beat a 0.6 arm most of the time).
    policy = ThompsonBeta()
    state = policy.init(13).like(
        {
            "n": np.r_[1_000.0, 100.0, 100.0, np.zeros(10)][None],
            "sum_reward": np.r_[300.0, 60.0, 30.0, np.zeros(10)][None],
        }
    )
    on = np.zeros(13, dtype=bool)
    on[:3] = True
    p = restricted_allocation(policy, state, on)[0]
    assert p[3:].sum() == 0.0
    assert p[1] > 0.99  # 0.6 on 100 users against 0.3 on 1,000 and 0.3 on 100
    np.testing.assert_allclose(
        p[:3], policy.allocation(state.like({k: v[:, :3] for k, v in state.to_dict().items()}))[0]
    )


def test_a_promoted_candidate_becomes_the_control_of_the_next_epoch() -> None:
    (spec,) = parse_config(tuning.config(seed=3)).experiments
    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=3, log_flush_s=0.0)
    rng = np.random.default_rng([3, 1])
    for _ in range(240):
        ds = [engine.decide("tune") for _ in range(50)]
        engine.reward_many(
            [(d, float(rng.random() < tuning.reward_mean(d.params["timeout_ms"]))) for d in ds]
        )
        if engine.status("tune")["epoch"] >= 1:
            break
    records = engine.store.records("tune")
    (champion,) = [r for r in records if r.get("new") == "champion"]
    promoted = [r for r in records if r.get("new") == "promoted"]
    assert promoted[-1]["alternative"] == champion["alternative"]
    engine.refresh("tune")
    st = engine.status("tune")
    assert st["epoch"] == 1 and st["params"][0] == champion["params"]
    assert st["status"] == ["exploring"] * 13
    d = engine.decide("tune")
    assert d.arm != 0 or d.params == champion["params"]
    engine.close()


def test_the_tuning_scenario_finds_the_optimum_within_the_budget() -> None:
    # R = 10 seeded runs of 24,000 requests (each with its own Sobol scramble). Tolerance:
    # the final champion's expected reward within 0.06 of the best (0.6; the control
    # earns 0.306), i.e. a timeout within about 0.33 in ln(x / 800) of the optimum. While
    # the scenario was written, 11 of 12 runs of 30,000 were within 0.05 and all within
    # 0.06; if a run succeeded with probability 0.9, 7 or fewer successes of 10 would
    # happen with probability 0.07, so assert at least 8.
    # The budget: served expected reward >= (1 - alpha) x control's at every request, in
    # at least 1 - delta of runs; with 10 runs that allows no failure at delta = 0.05
    # (0.5 runs expected), and the conservative budget holds it with room (the smallest
    # slack seen was the first request's).
    runs = [tuning.simulate(seed, rounds=24_000) for seed in range(10)]
    gaps = np.array([r.final_gap for r in runs])
    assert (gaps <= 0.06).sum() >= 8, [
        (r.final_ms, round(g, 3)) for r, g in zip(runs, gaps, strict=True)
    ]
    assert all(r.worst_slack >= 0 for r in runs), [r.worst_slack for r in runs]
    # and it kept going: candidates were proposed and retired throughout
    assert all(r.candidates >= 12 for r in runs)


def test_a_generated_experiment_through_the_proxy_sends_each_candidate_its_params() -> None:
    # one upstream serving every setting: it reads the timeout from X-Autoexp-Params and
    # answers with a Bernoulli reward of the scenario's mean there
    seen: list[int] = []
    rng = random.Random(7)

    async def handler(request: web.Request) -> web.Response:
        t = json.loads(request.headers.get("X-Autoexp-Params", "{}")).get("timeout_ms")
        seen.append(t)
        mean = tuning.reward_mean(t if t is not None else tuning.CONTROL_MS)
        reward = "1" if rng.random() < mean else "0"
        return web.Response(text="ok", headers={"X-Autoexp-Reward": reward})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    upstream = Served(app)
    raw = tuning.config(seed=4)
    raw["experiments"]["tune"]["route"] = {"path_prefix": "/", "reward_from": "header"}
    raw["proxy"] = {"upstream": upstream.url}
    config = parse_config(raw)
    engine = Engine(MemoryStore(), config.experiments, secret=SECRET, seed=6)
    side = Sidecar(engine, proxy=config.proxy, routes=list(config.routes))
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            for _ in range(1_500):
                assert http.get("/search").status_code == 200
        candidates = [r for r in engine.store.records("tune") if r["type"] == "candidate"]
        assert len(candidates) >= 3
        # the control's setting and each candidate's reached the upstream (a candidate
        # admitted at the very end may not have been served yet)
        sent = set(seen)
        assert tuning.CONTROL_MS in sent
        served = [r["params"]["timeout_ms"] in sent for r in candidates]
        assert sum(served) >= len(candidates) - gen_challengers(config)
        # the status page names the candidates in play with their parameters
        page = httpx.get(f"{side.url}/_autoexp/ui", timeout=10).text
        st = engine.status("tune")
        for name, params in zip(st["alternatives"][1:], st["params"][1:], strict=True):
            if params:
                assert name in page and f"timeout_ms={params['timeout_ms']}" in page
    finally:
        side.close()
        upstream.close()


def gen_challengers(config: Any) -> int:
    gen = config.experiments[0].generate
    assert isinstance(gen, Generation)
    return gen.challengers


def test_a_sticky_unit_does_not_follow_its_slot_into_another_candidate() -> None:
    # a unit stays with its candidate while it is live; in a new epoch the slot holds
    # another candidate, so the unit is assigned afresh
    (spec,) = parse_config(tuning.config(seed=2)).experiments
    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=8, log_flush_s=0.0)
    rng = np.random.default_rng(9)
    unit, first = None, None
    for i in range(20_000):
        d = engine.decide("tune", unit=f"u{i}")  # new users, and one that comes back
        if first is None and d.arm > 0:
            unit, first = f"u{i}", d
        engine.reward(d, float(rng.random() < tuning.reward_mean(d.params["timeout_ms"])))
        if engine.status("tune")["epoch"] >= 1:
            break
    assert first is not None and unit is not None
    assert engine.status("tune")["epoch"] >= 1
    # go on until the unit's slot serves a candidate of the new epoch
    for j in range(20_000):
        if engine.status("tune")["allocation"][first.arm] > 0:
            break
        d = engine.decide("tune", unit=f"v{j}")
        engine.reward(d, float(rng.random() < tuning.reward_mean(d.params["timeout_ms"])))
    st = engine.status("tune")
    assert st["allocation"][first.arm] > 0 and st["alternatives"][first.arm] != first.alternative
    again = engine.decide("tune", unit=unit)
    assert not again.sticky  # assigned afresh, with this epoch's propensity
    engine.close()


def test_the_sdk_generates_alternatives_from_its_control() -> None:
    import autoexp
    from autoexp.errors import StateError

    def experiment(**extra: Any) -> Any:
        return autoexp.Experiment(
            "tune",
            explore_share=0.5,
            conservative_alpha=0.1,
            test_params={"n_expected": 2_000},
            refresh_every=50,
            generate=tuning.config(1)["experiments"]["tune"]["generate"],
            store=MemoryStore(),
            secret=SECRET,
            seed=1,
            **extra,
        )

    exp = experiment()
    exp.setting("current", timeout_ms=200)
    exp.setting("other", timeout_ms=900)
    with pytest.raises(StateError, match="generates its alternatives: define only the control"):
        exp.decide()
    exp = experiment()
    exp.setting("current", timeout=200)  # the space's parameter is timeout_ms
    with pytest.raises(ConfigError, match=r"generate.space.timeout_ms: the control must set it"):
        exp.decide()
    exp = experiment()
    exp.setting("current", timeout_ms=200)
    rng = np.random.default_rng(5)
    for _ in range(6_000):
        d = exp.decide()
        exp.reward(d, float(rng.random() < tuning.reward_mean(d.params["timeout_ms"])))
    st = exp.status()
    # a champion was found (well above the control's 0.306) and serves as control
    assert st["epoch"] >= 1 and tuning.reward_mean(st["params"][0]["timeout_ms"]) > 0.45
    exp.close()
