"""The engine under failures, with real processes: killed mid-run on SQLite, Redis
restarted (with its append-only file) mid-run, two engine processes on one Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from autoexp.engine import Engine
from autoexp.store import open_store
from tests.autoexp.conftest import RedisServer

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s" * 32
# One engine process: decide and reward users in a loop; after each acknowledged reward
# print its decision id (what a caller was told was recorded).
WORKER = textwrap.dedent(
    """
    import sys
    import time
    import numpy as np
    from autoexp.errors import StoreError
    from autoexp.engine import Engine, ExperimentSpec
    from autoexp.store import open_store
    from policies import ThompsonBeta, TrafficCap

    url, seed, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    spec = ExperimentSpec(name="exp", alternatives=("a", "b"),
                          policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
                          refresh_every=25)
    engine = Engine(open_store(url), [spec], secret="s" * 32, seed=seed)
    rng = np.random.default_rng(seed)
    for i in range(n):
        try:  # a service keeps serving when the store blips: the failed user is retried
            d = engine.decide("exp", unit=f"{seed}-{i % 50}")
            engine.reward(d, float(rng.random() < (0.3, 0.5)[d.arm]))
        except StoreError:
            time.sleep(0.05)
            continue
        print(d.id, flush=True)
    """
)


def spawn(url: str, seed: int, n: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, url, str(seed), str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def replay(store: Any) -> tuple[np.ndarray, set[str], set[str]]:
    """Counts per arm from the log's reward records, and the decision / rewarded ids."""
    n = np.zeros(2)
    decided, rewarded = set(), set()
    for r in store.records("exp"):
        if r["type"] == "decision":
            decided.add(r["decision_id"])
        elif r["type"] == "reward":
            n[r["arm"]] += 1
            rewarded.add(r["decision_id"])
    return n, decided, rewarded


def test_engine_killed_mid_run_on_sqlite_loses_nothing_acknowledged(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    proc = spawn(url, 1, 1_000_000)
    assert proc.stdout is not None and proc.stderr is not None
    acked: list[str] = []
    deadline = time.monotonic() + 60
    while len(acked) < 400 and time.monotonic() < deadline:
        acked.append(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    store = open_store(url)
    try:
        n, decided, rewarded = replay(store)
        assert set(acked) <= rewarded and set(acked) <= decided
        assert rewarded <= decided
        # the state is the replay of the log
        np.testing.assert_array_equal(store.read("exp")["policy.n"][0], n)
        # and a restarted engine carries on from it
        from autoexp.engine import ExperimentSpec
        from policies import ThompsonBeta, TrafficCap

        spec = ExperimentSpec(
            name="exp",
            alternatives=("a", "b"),
            policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
        )
        engine = Engine(store, [spec], secret=SECRET, seed=9)
        engine.reward(engine.decide("exp"), 1.0)
        assert store.read("exp")["policy.n"].sum() == n.sum() + 1
    finally:
        store.close()


def test_two_engine_processes_on_one_redis_give_exact_totals(redis_server: RedisServer) -> None:
    redis_server.flush()
    procs = [spawn(redis_server.url, seed, 600) for seed in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    store = open_store(redis_server.url)
    try:
        n, decided, rewarded = replay(store)
        assert len(decided) == 1200 and rewarded == decided
        np.testing.assert_array_equal(store.read("exp")["policy.n"][0], n)
        assert n.sum() == 1200
    finally:
        store.close()


def test_redis_restarted_mid_run_keeps_what_it_acknowledged(tmp_path: Path) -> None:
    # A Redis of its own with its append-only file fsynced on every write, killed and
    # restarted while an engine works: every reward the engine acknowledged before is
    # still there, and the engine carries on once Redis is back (errors in between are
    # raised to the caller, not swallowed).
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    try:
        proc = spawn(server.url + "?socket_timeout_s=1&connect_timeout_s=1", 3, 1_000_000)
        assert proc.stdout is not None and proc.stderr is not None
        before: list[str] = []
        while len(before) < 300:
            before.append(proc.stdout.readline().strip())
        server.stop(crash=True)  # SIGKILL: only what was fsynced survives
        server.start()
        after: list[str] = []
        deadline = time.monotonic() + 60
        while len(after) < 100 and time.monotonic() < deadline:
            line = proc.stdout.readline().strip()
            if not line:
                break
            after.append(line)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
        store = open_store(server.url)
        try:
            n, _, rewarded = replay(store)
            assert len(after) == 100  # it carried on after the restart
            assert set(before) <= rewarded and set(after) <= rewarded
            np.testing.assert_array_equal(store.read("exp")["policy.n"][0], n)
        finally:
            store.close()
    finally:
        server.stop()
