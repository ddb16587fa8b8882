"""Sweeps: cells seeded by index, so any executor gives the same rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators.config import load_sweep
from simulators.sweep import run_sweep

SWEEP = """
name = "tiny"
[base]
steps = 300
replicates = 40
seed = 7
refresh_every = 10
check_every = 50
[base.env]
kind = "bernoulli"
p = [0.3, 0.5, 0.2]
[base.policy]
name = "thompson-beta"
[base.safety]
explore_share = 0.3
conservative_alpha = 0.1
[base.test]
name = "off-policy-cs"
n_expected = 300
[grid]
"safety.explore_share" = [0.1, 0.3]
"policy.name" = ["thompson-beta", "ucb1"]
"""
TIMING = ("seconds", "pulls_per_s")


def same(a: list[dict[str, object]], b: list[dict[str, object]]) -> bool:
    def strip(rows: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

    return repr(strip(a)) == repr(strip(b))  # repr: NaN == NaN


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(SWEEP)
    return path


def test_serial_and_process_sweeps_give_the_same_rows(tiny: Path) -> None:
    spec = load_sweep(tiny)
    seen: list[int] = []
    serial = run_sweep(spec, executor="serial", progress=lambda row: seen.append(row["cell"]))
    assert seen == [0, 1, 2, 3]
    parallel = run_sweep(spec, executor="processes", workers=2)
    assert parallel.workers == 2
    assert [r["cell"] for r in parallel.rows] == [0, 1, 2, 3]
    assert same(serial.rows, parallel.rows)
    assert serial.rows[1]["safety.explore_share"] == 0.1
    assert serial.rows[1]["policy.name"] == "ucb1"
    # different cells really differ (their settings and streams are their own)
    assert serial.rows[0]["regret_mean"] != serial.rows[2]["regret_mean"]


def test_bad_executor_settings_are_refused(tiny: Path) -> None:
    spec = load_sweep(tiny)
    with pytest.raises(ValueError, match=r"executor: unknown \(got 'threads'\)"):
        run_sweep(spec, executor="threads")
    with pytest.raises(ValueError, match=r"workers: must be an integer >= 1 \(got 0\)"):
        run_sweep(spec, workers=0)


@pytest.mark.slow
def test_a_local_ray_instance_gives_the_same_rows(tiny: Path) -> None:
    # Ray is the optional extra autoexp[ray]; the README's test command installs it
    spec = load_sweep(tiny)
    serial = run_sweep(spec, executor="serial")
    on_ray = run_sweep(spec, executor="ray", workers=2)
    assert same(serial.rows, on_ray.rows)
