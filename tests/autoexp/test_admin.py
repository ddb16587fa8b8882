"""The admin API: no token, no admin; a wrong token changes nothing; pause, resume,
promote and roll back move traffic at once and are logged with the operator's reason."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from autoexp.engine import Engine, ExperimentSpec
from autoexp.store.memory import MemoryStore
from policies import OffPolicyCS, ThompsonBeta, TrafficCap
from tests.autoexp.conftest import Sidecar

SECRET = "a" * 32
TOKEN = "t" * 24


def make(token: str | None) -> Sidecar:
    spec = ExperimentSpec(
        name="ranker",
        alternatives=("v1", "v2", "v3"),
        policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.6),
        test=OffPolicyCS(n_expected=500),
    )
    return Sidecar(Engine(MemoryStore(), [spec], secret=SECRET, seed=1), admin_token=token)


@pytest.fixture
def side() -> Iterator[Sidecar]:
    s = make(TOKEN)
    try:
        yield s
    finally:
        s.close()


def served(http: httpx.Client, n: int = 60) -> set[str]:
    return {
        http.post("/_autoexp/decide", json={"experiment": "ranker"}).json()["alternative"]
        for _ in range(n)
    }


def snapshot(side: Sidecar) -> tuple[Any, ...]:
    side.engine.flush()
    st = side.engine.status("ranker")
    return st["status"], st["allocation"], st["paused"], side.engine.store.records("ranker")


AUTH = {"Authorization": f"Bearer {TOKEN}"}
CALLS = [
    ("GET", "/_autoexp/admin/experiments", None),
    ("GET", "/_autoexp/admin/experiments/ranker", None),
    ("POST", "/_autoexp/admin/experiments/ranker/pause", {}),
    ("POST", "/_autoexp/admin/experiments/ranker/promote", {"alternative": "v2"}),
]


@pytest.mark.parametrize(("method", "path", "body"), CALLS)
def test_without_a_configured_token_there_is_no_admin(method: str, path: str, body: Any) -> None:
    side = make(None)
    try:
        before = snapshot(side)
        with httpx.Client(base_url=side.url, timeout=10) as http:
            r = http.request(method, path, json=body, headers=AUTH)
        assert r.status_code == 403 and "no admin token configured" in r.json()["error"]
        assert snapshot(side) == before
    finally:
        side.close()


@pytest.mark.parametrize(("method", "path", "body"), CALLS)
@pytest.mark.parametrize(
    "header",
    # the last is not UTF-8: it was a 500 (the header's text could not be encoded back)
    [None, "Bearer wrong-token-wrong-token", f"Basic {TOKEN}", b"Bearer \xff\xfe"],
)
def test_a_missing_or_wrong_token_is_refused_and_changes_nothing(
    side: Sidecar, method: str, path: str, body: Any, header: str | bytes | None
) -> None:
    before = snapshot(side)
    headers = {} if header is None else {"Authorization": header}
    with httpx.Client(base_url=side.url, timeout=10) as http:
        r = http.request(method, path, json=body, headers=headers)
    assert r.status_code == 401 and "bearer token" in r.json()["error"]
    assert snapshot(side) == before


def test_inspect_pause_resume_promote(side: Sidecar) -> None:
    with httpx.Client(base_url=side.url, timeout=10, headers=AUTH) as http:
        listed = http.get("/_autoexp/admin/experiments").json()["experiments"]
        assert [e["experiment"] for e in listed] == ["ranker"]
        detail = http.get("/_autoexp/admin/experiments/ranker").json()
        assert detail["alternatives"] == ["v1", "v2", "v3"]
        assert set(detail["evidence"]["test"]) == {"estimate", "lower", "upper", "n"}
        metrics = http.get("/_autoexp/metrics").text
        assert 'autoexp_paused{experiment="ranker"} 0.0' in metrics
        assert served(http) == {"v1", "v2", "v3"}
        r = http.post("/_autoexp/admin/experiments/ranker/pause", json={"reason": "incident"})
        assert r.status_code == 200 and r.json()["paused"] is True
        assert 'autoexp_paused{experiment="ranker"} 1.0' in http.get("/_autoexp/metrics").text
        assert served(http) == {"v1"}
        http.post("/_autoexp/admin/experiments/ranker/resume")
        assert served(http) == {"v1", "v2", "v3"}
        r = http.post(
            "/_autoexp/admin/experiments/ranker/roll_back",
            json={"alternative": "v3", "reason": "slow"},
        )
        assert r.json()["status"] == ["exploring", "exploring", "rolled_back"]
        assert served(http) == {"v1", "v2"}
        r = http.post(
            "/_autoexp/admin/experiments/ranker/promote",
            json={"alternative": "v2", "reason": "by hand"},
        )
        assert r.json()["status"] == ["exploring", "promoted", "rolled_back"]
        assert served(http) == {"v2"}
        # refusals: each specific, none changes anything
        before = snapshot(side)
        refusals = [
            ("promote", {"alternative": "v3"}, 409, "'v2' is promoted already"),
            ("promote", {"alternative": "v1"}, 409, "is the control"),
            ("promote", {"alternative": "v9"}, 404, "no alternative 'v9'"),
            ("promote", {}, 400, "needs"),
            ("roll_back", {"alternative": "v2", "reason": 7}, 400, "reason:"),
        ]
        for action, body, status, words in refusals:
            r = http.post(f"/_autoexp/admin/experiments/ranker/{action}", json=body)
            assert r.status_code == status and words in r.json()["error"], r.json()
        r = http.post("/_autoexp/admin/experiments/nope/pause")
        assert r.status_code == 404
        assert snapshot(side) == before
    moves = [r for r in side.engine.store.records("ranker") if r["type"] == "transition"]
    assert [(m["action"], m["reason"]) for m in moves] == [
        ("pause", "incident"),
        ("resume", ""),
        ("roll_back", "slow"),
        ("promote", "by hand"),
    ]
    assert all(m["by"] == "operator" for m in moves)
    # the last change of each alternative and of the pause, for the status page, and in
    # the metrics with who made it and why
    assert side.engine.changes("ranker") == moves[1:]
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{side.url}/_autoexp/metrics", timeout=10).text
    (family,) = [
        f
        for f in text_string_to_metric_families(text)
        if f.name == "autoexp_last_change_time_seconds"
    ]
    got = {
        (s.labels["alternative"], s.labels["state"], s.labels["by"], s.labels["reason"]): s.value
        for s in family.samples
    }
    assert got == {
        ("", "resumed", "operator", ""): moves[1]["time"],
        ("v3", "rolled_back", "operator", "slow"): moves[2]["time"],
        ("v2", "promoted", "operator", "by hand"): moves[3]["time"],
    }


def test_evidence_and_its_bounds_reach_the_admin_api_and_the_metrics(side: Sidecar) -> None:
    # 600 users at 0.2 (control) against 0.4 and 0.4: the off-policy sequence tuned for
    # 500 bounds every difference by then; its lower and upper bounds are exported.
    import numpy as np

    engine = side.engine
    rng = np.random.default_rng(4)
    for _ in range(600):
        d = engine.decide("ranker")
        engine.reward(d, float(rng.random() < (0.2, 0.4, 0.4)[d.arm]))
    engine.refresh()
    ev = engine.evidence("ranker")["test"]
    assert all(x is not None for x in ev["lower"][1:] + ev["upper"][1:])
    with httpx.Client(base_url=side.url, timeout=10, headers=AUTH) as http:
        assert http.get("/_autoexp/admin/experiments/ranker").json()["evidence"]["test"] == ev
        text = http.get("/_autoexp/metrics").text
    for alt in ("v2", "v3"):
        for bound in ("lower", "upper"):
            assert (
                f'autoexp_difference_{bound}{{alternative="{alt}",experiment="ranker",test="test"}}'
                in text
            )


def test_a_compressed_body_is_refused_with_a_reason_and_changes_nothing(side: Sidecar) -> None:
    # the server passes bodies on as they came (the proxy forwards them), so the API
    # says it takes JSON uncompressed rather than reading gzip as bad JSON
    before = snapshot(side)
    body = gzip.compress(json.dumps({"alternative": "v2", "reason": "zipped"}).encode())
    headers = {**AUTH, "Content-Encoding": "gzip", "Content-Type": "application/json"}
    with httpx.Client(base_url=side.url, timeout=10) as http:
        r = http.post("/_autoexp/admin/experiments/ranker/promote", content=body, headers=headers)
        assert r.status_code == 415, r.text
        assert "Content-Encoding 'gzip' is not accepted here" in r.json()["error"]
        for path, doc in [
            ("/_autoexp/decide", {"experiment": "ranker"}),
            ("/_autoexp/rewards", {"rewards": []}),
        ]:
            r = http.post(path, content=gzip.compress(json.dumps(doc).encode()), headers=headers)
            assert r.status_code == 415 and r.json()["kind"] == "RequestError", r.text
    assert snapshot(side) == before
