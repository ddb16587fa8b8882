"""``autoexp proxy --config FILE`` as users run it: a real process on 127.0.0.1, driven by
``autoexp.Client``, stopped with SIGTERM (graceful: what was decided is logged)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

import autoexp
from autoexp.store import open_store
from tests.autoexp.conftest import free_port

CONFIG = """
store = "sqlite:///{db}"
secret = "a-test-secret-of-32-bytes-at-least"

[experiments.ranker]
alternatives = ["v1", {{ name = "v2", params = {{ depth = 3 }} }}]
policy = {{ name = "thompson-beta" }}
safety = {{ explore_share = 0.5 }}
test = {{ name = "off-policy-cs", n_expected = 1000 }}
"""


def start(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    config = tmp_path / "autoexp.toml"
    config.write_text(CONFIG.format(db=tmp_path / "state.db"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("AUTOEXP_STORE", None)
    env.pop("AUTOEXP_SECRET", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autoexp.cli",
            "proxy",
            "--config",
            str(config),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/_autoexp/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"the proxy exited: {proc.communicate(timeout=30)[0]}")
        time.sleep(0.1)
    proc.kill()
    proc.communicate(timeout=30)
    raise AssertionError("the proxy did not become ready in 60 s")


def test_the_proxy_command_serves_and_shuts_down_gracefully(tmp_path: Path) -> None:
    port = free_port()
    proc = start(tmp_path, port)
    try:
        # generous timeouts: a loaded 2-core CI machine, each sticky decision an fsync
        with autoexp.Client(f"http://127.0.0.1:{port}", timeout_s=30) as client:
            made = [client.decide("ranker", unit=f"u{i % 7}") for i in range(50)]
            assert {d.alternative for d in made} <= {"v1", "v2"}
            assert all(d.params == ({"depth": 3} if d.arm else {}) for d in made)
            assert client.reward_many([(d, 1.0) for d in made[:20]]) == [True] * 20
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)  # reaped and its pipe closed: no stray warnings
    assert proc.returncode == 0, out
    assert "experiments ranker" in out
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    log = store.records("ranker")
    # every decision is logged, each reward once, after a graceful stop
    assert [r["decision_id"] for r in log if r["type"] == "decision"] == [d.id for d in made]
    assert sorted(r["decision_id"] for r in log if r["type"] == "reward") == sorted(
        d.id for d in made[:20]
    )
    assert store.read("ranker")["policy.n"].sum() == 20
    store.close()


def test_a_bad_config_exits_with_a_reason(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[experiments.ranker]\nalternatives = ["only-one"]\n')
    proc = subprocess.run(
        [sys.executable, "-m", "autoexp.cli", "proxy", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "experiments.ranker.alternatives: need a control and at least one" in proc.stderr
