"""benchmarks/proxy_parts.py: the hook that times functions inside the proxy, and the
arithmetic of its readings (the benchmark itself needs wrk and nginx: run by hand)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.proxy_parts import HOOK, PARTS, per_request, read_parts, summarise, table

TARGET = """\
import time

def spin(seconds):
    started = time.thread_time()
    while time.thread_time() - started < seconds:
        pass

def nap(seconds):
    time.sleep(seconds)

async def aspin(seconds):
    spin(seconds)

class K:
    def m(self):
        return 7
"""

SCRIPT = """\
import asyncio, time
import target
for _ in range(4):
    target.spin(0.05)
target.nap(0.2)
asyncio.run(target.aspin(0.05))
asyncio.run(target.aspin(0.05))
assert [target.K().m() for _ in range(3)] == [7, 7, 7]  # still returns what it did
time.sleep(0.5)  # the hook's dumps, every 0.05 s here
print(target.spin.__qualname__)
"""


def run_hooked(tmp_path: Path, env: dict[str, str], script: str = SCRIPT) -> str:
    """Run ``script`` (TARGET beside it) with the hook and ``env``; what it printed
    (SCRIPT prints spin's qualified name)."""
    (tmp_path / "target.py").write_text(TARGET)
    (tmp_path / "script.py").write_text(script)
    base = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    base["PYTHONPATH"] = os.pathsep.join([str(HOOK), str(tmp_path)])
    done = subprocess.run(
        [sys.executable, str(tmp_path / "script.py")],
        env=base | env,
        check=True,
        timeout=120,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def test_the_hook_sums_each_functions_thread_cpu(tmp_path: Path) -> None:
    out = tmp_path / "parts.json"
    funcs = "target:spin,target:nap,target:aspin,target:K.m"
    name = run_hooked(
        tmp_path,
        {"BENCH_PARTS_OUT": str(out), "BENCH_PARTS_FUNCS": funcs, "BENCH_PARTS_EVERY_S": "0.05"},
    )
    assert name == "_wrap.<locals>.timed"
    parts = json.loads(out.read_text())["parts"]
    calls, ns = parts.pop("gc")  # the collector's passes: whatever the script's allocations set off
    assert calls >= 0 and ns >= 0
    assert {k: v[0] for k, v in parts.items()} == {
        "target:spin": 6,  # four calls, and two from inside aspin
        "target:nap": 1,
        "target:aspin": 2,
        "target:K.m": 3,
    }
    # spin stops once its thread has used its CPU, so the sums are at least that; the
    # upper bounds leave 50 ms per call for a busy machine's clock reads
    assert 0.30 <= parts["target:spin"][1] / 1e9 <= 0.60
    assert 0.10 <= parts["target:aspin"][1] / 1e9 <= 0.20
    # a sleep is no CPU: the hook reads the thread's CPU clock, not the wall clock
    assert parts["target:nap"][1] / 1e9 < 0.05


def test_without_an_output_file_the_hook_does_nothing(tmp_path: Path) -> None:
    assert run_hooked(tmp_path, {"BENCH_PARTS_FUNCS": "target:spin"}) == "spin"  # unwrapped
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.tmp"))


def test_the_garbage_collectors_passes_are_timed(tmp_path: Path) -> None:
    out = tmp_path / "parts.json"
    script = "import gc, time\nfor _ in range(3):\n    gc.collect()\ntime.sleep(0.3)\n"
    run_hooked(tmp_path, {"BENCH_PARTS_OUT": str(out), "BENCH_PARTS_EVERY_S": "0.05"}, script)
    calls, ns = json.loads(out.read_text())["parts"]["gc"]
    assert calls >= 3 and ns > 0  # the three asked for, and any the interpreter ran


def test_each_process_writes_its_own_totals_and_they_are_read_summed(tmp_path: Path) -> None:
    # --workers 2: every worker loads the hook with the same BENCH_PARTS_OUT; a "{pid}"
    # in it gives each its own file, and read_parts sums them
    funcs = "target:spin,target:K.m"
    env = {"BENCH_PARTS_OUT": str(tmp_path / "parts-{pid}.json"), "BENCH_PARTS_FUNCS": funcs}
    env["BENCH_PARTS_EVERY_S"] = "0.05"
    for _ in range(2):
        run_hooked(tmp_path, env)
    outs = sorted(tmp_path.glob("parts-*.json"))
    assert len(outs) == 2 and not list(tmp_path.glob("*{pid}*"))
    for out in outs:
        assert out.name == f"parts-{json.loads(out.read_text())['pid']}.json"
    summed = read_parts(outs)
    assert summed["target:spin"][0] == 12 and summed["target:K.m"][0] == 6  # 6 and 3 each
    each = [json.loads(out.read_text())["parts"]["target:spin"][1] for out in outs]
    assert summed["target:spin"][1] == sum(each)


STUBBED = """\
from autoexp.engine import Engine, ExperimentSpec
from autoexp.store.memory import MemoryStore
from policies import ThompsonBeta, TrafficCap
specs = [
    ExperimentSpec(name=n, alternatives=("a", "b"), policy=TrafficCap(policy=ThompsonBeta()))
    for n in ("one", "two")
]
engine = Engine(MemoryStore(), specs, secret="s" * 32, seed=1)
ones = {engine.try_decide("one").id for _ in range(5)}
twos = {engine.try_decide("two").id for _ in range(5)}
fresh = {engine.decide("one").id for _ in range(5)}  # decide itself is left as it is
engine.close()
print(len(ones), len(twos), len(ones | twos), len(fresh))
"""


def test_stubbed_decisions_repeat_the_first_one_per_experiment(tmp_path: Path) -> None:
    assert run_hooked(tmp_path, {"BENCH_STUB_DECISIONS": "1"}, STUBBED) == "1 1 2 5"
    assert run_hooked(tmp_path, {}, STUBBED) == "5 5 10 5"


def test_the_parts_named_exist() -> None:
    # a renamed function would otherwise fail only inside the proxy, at its start
    import importlib

    for name in PARTS:
        module, _, qualname = name.partition(":")
        owner = importlib.import_module(module)
        for attr in qualname.split("."):
            owner = getattr(owner, attr)
        assert callable(owner), name


def test_per_request_is_the_difference_of_two_readings_over_the_requests() -> None:
    before = {"a": [10, 5_000], "b": [0, 0], "c": [3, 9_000]}
    after = {"a": [210, 405_000], "b": [50, 1_000_000], "c": [3, 9_000]}
    got = per_request(before, after, 200)
    assert got["a"] == {"calls_per_request": 1.0, "us_per_call": 2.0, "us_per_request": 2.0}
    assert got["b"] == {"calls_per_request": 0.25, "us_per_call": 20.0, "us_per_request": 5.0}
    assert got["c"] == {"calls_per_request": 0.0, "us_per_call": None, "us_per_request": 0.0}
    with pytest.raises(ValueError, match="no requests"):
        per_request(before, after, 0)


def test_summary_takes_medians_and_sets_hot_costs_beside_the_proxys() -> None:
    decide = "autoexp.engine:Engine.try_decide"
    reward = "autoexp.engine:Engine.reward_each"

    def run(us: float, main: float) -> dict[str, object]:
        return {
            "requests_per_s": 1000.0,
            "errors": 0,
            "threads_us_per_request": {"main": main, "other": 10.0},
            "parts": {
                decide: {"calls_per_request": 1.0, "us_per_call": us, "us_per_request": us},
                # one batch per 100 requests: 4,000 us per batch is 40 us per reward
                reward: {"calls_per_request": 0.01, "us_per_call": 4e3, "us_per_request": 40.0},
            },
        }

    hot = [
        {"try_decide_us": 20.0, "reward_each_us_per_reward": 10.0},
        {"try_decide_us": 25.0, "reward_each_us_per_reward": 30.0},
    ]
    summary = summarise([run(60.0, 500.0), run(40.0, 300.0), run(50.0, 900.0)], hot)
    assert summary["parts"][decide]["us_per_call"] == 50.0
    assert summary["threads_us_per_request"] == {"main": 500.0, "other": 10.0}
    assert summary["hot"] == {"try_decide_us": 22.5, "reward_each_us_per_reward": 20.0}
    assert summary["in_proxy"] == {"try_decide_us": 50.0, "reward_each_us_per_reward": 40.0}
    text = table(summary)
    assert "Engine.try_decide" in text and "event loop 500, others 10" in text
    assert "us per call: 50.0 in the proxy, 22.5 in a tight loop here (2.2x)" in text
    assert "us per reward: 40.0 in the proxy, 20.0 in a tight loop here (2.0x)" in text
