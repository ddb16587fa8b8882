"""The proxy when its store or its own process fails, with real parts: a ``redis-server``
stopped and restarted under load (users never notice; the state stays the replay of the
log), and ``autoexp proxy`` killed with SIGKILL and restarted on its SQLite file (no
acknowledged reward lost)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiohttp import web

from autoexp.engine import Engine, ExperimentSpec
from autoexp.proxy.app import FORWARDER
from autoexp.proxy.routes import ProxySettings, Route
from autoexp.store import open_store
from autoexp.tokens import keys_from, verify
from policies import ThompsonBeta, TrafficCap
from tests.autoexp.conftest import RedisServer, Served, Sidecar, free_port

SECRET = "r" * 32
KEYS = keys_from(SECRET)


def upstream(name: str) -> web.Application:
    """An application answering who it is, with a reward header (1 for every third)."""
    seen = [0]

    async def handler(request: web.Request) -> web.Response:
        seen[0] += 1
        reward = "1" if seen[0] % 3 == 0 else "0"
        return web.Response(text=name, headers={"X-Autoexp-Reward": reward})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def decision_id(token: str) -> str:
    return verify(KEYS, token, now=time.time()).id


def replay(store: Any, name: str) -> tuple[np.ndarray, set[str], set[str]]:
    """Rewarded decisions per arm from the log's reward records; decided and rewarded ids."""
    n = np.zeros(2)
    decided, rewarded = set(), set()
    for r in store.records(name):
        if r["type"] == "decision":
            decided.add(r["decision_id"])
        elif r["type"] == "reward":
            n[r["arm"]] += 1
            rewarded.add(r["decision_id"])
    return n, decided, rewarded


def test_redis_stopped_mid_run_no_user_request_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A Redis of its own, append-only file fsynced on every write, killed (SIGKILL) while
    # users go through the proxy, then restarted on its file. Every request is answered
    # 200: once the proxy finds Redis down it sends users to control and counts fail_open
    # for each (until then, units whose assignments it holds are decided from memory, as
    # requests without a unit are); decisions and rewards read from answers wait in the
    # proxy and are written after. Afterwards the state is the replay of the log and every
    # decision a user was served under is rewarded exactly once.
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    ups = {name: Served(upstream(name)) for name in ("v1", "v2")}
    spec = ExperimentSpec(
        name="ranker",
        alternatives=("v1", "v2"),
        policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
        refresh_every=20,
    )
    store = open_store(server.url + "?socket_timeout_s=0.5&connect_timeout_s=0.5")
    engine = Engine(store, [spec], secret=SECRET, seed=4)
    route = Route(
        experiment="ranker", upstreams=(None, ups["v2"].url), path_prefix="/", reward_from="header"
    )
    side = Sidecar(engine, proxy=ProxySettings(upstream=ups["v1"].url), routes=[route])
    forwarder = side.app[FORWARDER]
    served: list[str] = []  # tokens of the decisions users were served under

    def users(http: httpx.Client, n: int, start: int) -> list[str]:
        answers = []
        for i in range(start, start + n):
            r = http.get("/page", headers={"X-User-Id": f"user-{i % 40}"})
            assert r.status_code == 200, (i, r.status_code, r.text)
            answers.append(r.text)
            if "X-Autoexp-Decision" in r.headers:
                served.append(r.headers["X-Autoexp-Decision"])
        return answers

    started = time.monotonic()
    try:
        with httpx.Client(base_url=side.url, timeout=30) as http:
            before = users(http, 150, 0)
            assert set(before) == {"v1", "v2"} and forwarder.counts["fail_open"] == 0
            server.stop(crash=True)
            during = users(http, 60, 150)
            decided_during = len(served) - 150
            # control for each request not decided, each counted; the store's failure
            # is found during the outage (the writer tries every 50 ms: 1 to 17
            # requests were still decided in runs here)
            assert forwarder.counts["fail_open"] == 60 - decided_during
            assert decided_during < 60  # found down within the outage
            assert set(during[decided_during:]) == {"v1"}
            ready = http.get("/_autoexp/readyz")  # it serves (control): ready
            assert ready.status_code == 200 and ready.json()["store_ok"] is False
            assert http.get("/_autoexp/readyz?store=required").status_code == 503
            time.sleep(1.0)  # the queued rewards tried again and again meanwhile
            server.start()
            deadline = time.monotonic() + 30
            while http.get("/_autoexp/readyz?store=required").status_code != 200:
                assert time.monotonic() < deadline, "readyz not 200 within 30 s of the restart"
                time.sleep(0.1)
            after = users(http, 150, 210)
            assert "v2" in after and forwarder.counts["fail_open"] == 60 - decided_during
            metrics = http.get("/_autoexp/metrics").text
            failed_open = f"{60 - decided_during:.1f}"
            assert f'autoexp_proxy_events_total{{event="fail_open"}} {failed_open}' in metrics
        deadline = time.monotonic() + 30
        while (forwarder.pending or forwarder.applying) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not forwarder.pending and not forwarder.applying
        engine.flush()
        n, decided, rewarded = replay(store, "ranker")
        ids = {decision_id(t) for t in served}
        assert len(ids) == len(served) == 300 + decided_during  # each its own decision
        assert rewarded == ids and ids <= decided
        np.testing.assert_array_equal(store.read("ranker")["policy.n"][0], n)
        assert n.sum() == 300 + decided_during
        # what failed during the outage is counted each time, said at most every 10 s
        # (the rewards were tried every 50 ms, the requests failed open one by one): the
        # throttle says the first and then one per full 10 s, so over the test's elapsed
        # seconds at most 1 + elapsed // 10 lines, fewer than the events counted (the 1 s
        # outage gives about 20 reward tries: 20 lines without the throttle)
        elapsed = time.monotonic() - started
        for words, event in [
            ("rewards failed", "reward_store_errors"),
            ("failed open to control", "fail_open"),
        ]:
            said = sum(words in r.getMessage() for r in caplog.records)
            assert 1 <= said <= 1 + elapsed // 10 < forwarder.counts[event], (words, said)
    finally:
        side.close()
        store.close()
        for u in ups.values():
            u.close()
        server.stop()


CONFIG = """
store = "sqlite:///{db}"
secret = "{secret}"

[proxy]
upstream = "{upstream}"

[experiments.ranker]
alternatives = ["v1", {{ name = "v2", params = {{ depth = 3 }} }}]
policy = {{ name = "thompson-beta" }}
safety = {{ explore_share = 0.5 }}
route = {{ path_prefix = "/" }}
"""


def start_proxy(
    config: Path, port: int, *options: str, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """``autoexp proxy`` on ``port`` with ``options``, once ready; its output to ``log``."""
    out = subprocess.DEVNULL if log is None else log.open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autoexp.cli",
            "proxy",
            "--config",
            str(config),
            "--port",
            f"{port}",
            *options,
        ],
        stdout=out,
        stderr=out,
        env={k: v for k, v in os.environ.items() if not k.startswith("AUTOEXP_")},
    )
    if log is not None:
        out.close()  # the process has its own copy
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/_autoexp/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, "the proxy exited"
        time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=30)
    raise AssertionError("the proxy did not become ready in 60 s")


def test_proxy_killed_and_restarted_on_sqlite_loses_no_acknowledged_reward(
    tmp_path: Path,
) -> None:
    # A user-load thread goes through a real `autoexp proxy` process and sends each
    # answer's reward to POST /_autoexp/rewards with its token; a 202 is an acknowledgement.
    # The proxy is killed with SIGKILL in the middle of that load, and restarted on the same
    # SQLite file: every acknowledged reward is in the log and in the state (which is the
    # replay of the log), none twice, and the load carries on against the new process.
    app = Served(upstream("v1"))
    db = tmp_path / "state.db"
    config = tmp_path / "autoexp.toml"
    config.write_text(CONFIG.format(db=db, secret=SECRET, upstream=app.url))
    port = free_port()
    proc = start_proxy(config, port)
    acked: list[str] = []
    failed = [0]
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:  # a fresh connection each time: the process behind the port may change
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                    r = http.get("/page", headers={"X-User-Id": f"user-{i % 30}"})
                    token = r.headers["X-Autoexp-Decision"]
                    ok = http.post("/_autoexp/rewards", json={"token": token, "value": i % 2})
                if ok.status_code == 202:
                    acked.append(decision_id(token))
            except httpx.HTTPError:  # the proxy is down: users of a dead proxy fail
                failed[0] += 1
                time.sleep(0.02)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while len(acked) < 150:
            assert time.monotonic() < deadline, f"only {len(acked)} rewards in 120 s"
            time.sleep(0.01)
        proc.kill()  # SIGKILL, mid-load: no drain, no log flush
        proc.wait(timeout=30)
        at_kill = len(acked)
        proc = start_proxy(config, port)
        while len(acked) < at_kill + 100:
            assert time.monotonic() < deadline, f"only {len(acked) - at_kill} after the restart"
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(timeout=30)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        app.close()
    assert proc.returncode == 0
    store = open_store(f"sqlite:///{db}")
    try:
        n, _, rewarded = replay(store, "ranker")
        assert set(acked) <= rewarded  # every acknowledged reward survived the kill
        assert len(set(acked)) == len(acked)
        np.testing.assert_array_equal(store.read("ranker")["policy.n"][0], n)
        assert n.sum() == len(rewarded)
    finally:
        store.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_proxy_started_while_redis_is_down_serves_control_then_experiments(
    tmp_path: Path, workers: int
) -> None:
    # Before, `autoexp proxy` exited 2 when its store did not answer as it started (a
    # supervised group too), so in deploy/'s Kubernetes layout, where every request to
    # the application goes through the sidecar, a pod started while Redis restarted
    # answered nobody until Redis came back and the pod was restarted. Now it starts and is
    # ready, sends every request to control (fail_open counts each), and starts the
    # experiment once Redis answers: the next requests are decided and rewarded.
    server = RedisServer(tmp_path)  # its own: stopped here, started later on its port
    server.stop()
    app = Served(upstream("v1"))
    config = tmp_path / "autoexp.toml"
    url = server.url + "?connect_timeout_s=0.3&socket_timeout_s=0.3"
    config.write_text(
        CONFIG.format(db="x", secret=SECRET, upstream=app.url)
        .replace('"sqlite:///x"', f'"{url}"')
        .replace('path_prefix = "/" }', 'path_prefix = "/", reward_from = "status" }')
    )
    port, log = free_port(), tmp_path / "proxy.log"
    started = time.monotonic()
    proc = start_proxy(config, port, "--workers", str(workers), log=log)
    base = f"http://127.0.0.1:{port}"
    decided: list[str] = []
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            ready = http.get("/_autoexp/readyz").json()
            assert ready["store_ok"] is False and ready["waiting"] == ["ranker"], ready
            for i in range(20):  # a fresh connection each: every worker is asked
                r = httpx.get(f"{base}/page", headers={"X-User-Id": f"u{i}"}, timeout=10)
                assert r.status_code == 200 and r.text == "v1"
                assert "X-Autoexp-Decision" not in r.headers
            server.start()
            deadline = time.monotonic() + 30
            while len(decided) < 30:
                assert time.monotonic() < deadline, f"{len(decided)} decided 30 s after Redis"
                r = httpx.get(f"{base}/page", headers={"X-User-Id": "u1"}, timeout=10)
                assert r.status_code == 200 and r.text in ("v1", "v2")
                if "X-Autoexp-Decision" in r.headers:
                    decided.append(decision_id(r.headers["X-Autoexp-Decision"]))
                else:  # a worker that has not started it yet: control, counted
                    time.sleep(0.05)
            ready = http.get("/_autoexp/readyz?store=required")
            assert ready.status_code == 200 and ready.json()["waiting"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        app.close()
    elapsed = time.monotonic() - started
    out = log.read_text()
    try:
        assert proc.returncode == 0, out
        # at least 20 requests failed open, said by each worker at most every 10 s: the
        # first, then one per full 10 s, so at most 1 + elapsed // 10 lines per worker
        # (22 lines for 22 requests without the throttle)
        said = out.count("failed open to control")
        assert 1 <= said <= workers * (1 + elapsed // 10), (said, elapsed, out)
        # each worker said it, with why (the start's error, or the writer's first retry's)
        words = "experiment ranker not started yet, its store has not answered since this "
        words += r"process started \(store \((declare|get)\): Redis failed: Error 111 connecting to"
        assert len(re.findall(words, out)) == workers, out
        assert ("; starting anyway" in out) == (workers > 1), out
        assert out.count("experiment ranker started: its store answers") == workers, out
        store = open_store(url)
        try:
            n, logged, rewarded = replay(store, "ranker")
            assert set(decided) <= logged and set(decided) <= rewarded  # each answer's status
            assert n.sum() == len(rewarded) >= 30
        finally:
            store.close()
    finally:
        server.stop()
