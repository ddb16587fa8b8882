"""Kernels compiled ahead (``python -m autoexp.precompile``) and copied in at a start
(:func:`autoexp.precompile.seed`), as the container image does (deploy/Dockerfile)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoexp.precompile import seed

# What a start of the sidecar compiles: the example deployment's experiment (Thompson
# sampling in a traffic cap, the off-policy confidence sequence), warmed up, decided,
# rewarded and refreshed as autoexp proxy does, after seed() as autoexp proxy calls it.
START = """
import tomllib
from autoexp.config import parse_config
from autoexp.engine import Engine
from autoexp.precompile import seed
from autoexp.store.memory import MemoryStore

print("copied", seed())
raw = tomllib.loads(open("deploy/autoexp.toml").read())
raw["secret"] = "precompile-test-secret-0123456789"
config = parse_config(raw)
engine = Engine(MemoryStore(), config.experiments, secret=config.secret, seed=1)
engine.warm_up()
for i in range(30):
    engine.reward(engine.decide("ranker"), float(i % 2))
engine.refresh("ranker")
engine.close()
"""


def run(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args],
        env={**os.environ, **env},
        cwd=Path(__file__).resolve().parents[2],  # the repository: deploy/autoexp.toml
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_a_start_seeded_with_precompiled_kernels_compiles_none(tmp_path: Path) -> None:
    # Compiled ahead into `ahead`; then a start with an empty NUMBA_CACHE_DIR, seeded
    # from `ahead`, loads kernels and saves none (numba's NUMBA_DEBUG_CACHE lines say
    # which it does). The same start without the seed compiles and saves them: so the
    # first is the seed's doing, not a cache left somewhere else.
    ahead = tmp_path / "ahead"
    said = run({"NUMBA_CACHE_DIR": str(ahead)}, "-m", "autoexp.precompile")
    listed = [line.strip() for line in said.splitlines() if line.startswith("  ")]
    assert "_cs_kernels.eb_evaluate" in listed and "_kernels._beta_prob_best_batch" in listed
    assert f"autoexp.precompile: {len(listed)} kernels in {ahead}" in said
    debug = {"NUMBA_DEBUG_CACHE": "1"}
    seeded = run(
        {**debug, "NUMBA_CACHE_DIR": str(tmp_path / "a"), "AUTOEXP_NUMBA_SEED": str(ahead)},
        "-c",
        START,
    )
    assert "copied 0" not in seeded and "data loaded" in seeded
    assert "data saved" not in seeded, seeded
    alone = run({**debug, "NUMBA_CACHE_DIR": str(tmp_path / "b")}, "-c", START)
    assert "copied 0" in alone and "data saved" in alone


def test_seed_copies_what_is_missing_and_keeps_what_is_there(tmp_path: Path) -> None:
    ahead, cache = tmp_path / "ahead", tmp_path / "cache"
    (ahead / "policies_x").mkdir(parents=True)
    (ahead / "policies_x" / "k.nbi").write_bytes(b"index")
    (ahead / "policies_x" / "k.1.nbc").write_bytes(b"code")
    (cache / "policies_x").mkdir(parents=True)
    (cache / "policies_x" / "k.nbi").write_bytes(b"newer")  # numba's own: kept
    env = {"AUTOEXP_NUMBA_SEED": str(ahead), "NUMBA_CACHE_DIR": str(cache)}
    assert seed(env) == 1
    assert (cache / "policies_x" / "k.1.nbc").read_bytes() == b"code"
    assert (cache / "policies_x" / "k.nbi").read_bytes() == b"newer"
    assert seed(env) == 0  # all there now
    # nothing to do without both variables, or with one folder for both
    assert seed({"NUMBA_CACHE_DIR": str(cache)}) == 0
    assert seed({"AUTOEXP_NUMBA_SEED": str(ahead)}) == 0
    assert seed({"AUTOEXP_NUMBA_SEED": str(ahead), "NUMBA_CACHE_DIR": str(ahead)}) == 0


def test_a_seed_that_cannot_be_copied_is_said_and_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A cache folder that cannot be made (a file stands where it would go): the start
    # goes on, compiling as without a seed, and says why
    ahead = tmp_path / "ahead"
    (ahead / "policies_x").mkdir(parents=True)
    (ahead / "policies_x" / "k.nbi").write_bytes(b"index")
    (tmp_path / "blocked").write_text("a file, not a folder")
    env = {"AUTOEXP_NUMBA_SEED": str(ahead), "NUMBA_CACHE_DIR": str(tmp_path / "blocked")}
    assert seed(env) == 0
    assert "compiled kernels not copied from" in capsys.readouterr().out
