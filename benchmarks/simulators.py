"""Speed of the simulators: autoexp's runner against SMPyBandits and a hand-written numba kernel.

Run from the repository root::

    python benchmarks/simulators.py [--quick] [--repeats 3] [--out results.json]

One process, one machine, one run: K = 10 Bernoulli arms (control 0.10, the others
``linspace(0.08, 0.12, 9)``), B = 1,000 replicates x T = 10,000 steps (``--quick``: T =
2,000). Rows:

1. autoexp Thompson with the whole safety stack (traffic cap, conservative budget, an
   off-policy confidence sequence and one guardrail, the promotion rule every 100 steps),
   allocation refreshed every 100 steps as the runtime does;
2. autoexp Thompson, bare, refreshed every step (the runner's ``sample_arm`` path);
3. autoexp UCB1, bare, refreshed every step;
4. autoexp UCB1 with the safety stack, as row 1;
5. SMPyBandits: its ``Evaluator`` (its own per-step loop: ``choice``, ``MAB.draw``,
   ``getReward``, ``Result.store``), and its policy objects alone in the shared online
   loop of ``benchmarks/_peers.py``, on fewer replicates (same T);
6. a hand-written ``numba.njit`` loop over replicates and steps (Beta draws from a seeded
   ``np.random.Generator`` inside numba; UCB1 with the first maximum winning ties), no
   safety: the ceiling;
7. ``simulators.sweep.run_sweep`` of 24 cells of row 1's scenario (read from a TOML file
   through ``simulators.config.load_sweep``) with ``workers=1`` (cells one after another
   in this process) and ``workers=2`` (a spawned pool: process start-up included).

Every row is warmed up (numba compilation, caches), then timed ``--repeats`` times,
repeats interleaved across rows; the table gives the median arm-pulls per second (B x T /
seconds) and the ratios of medians to SMPyBandits and to the numba kernel. Targets are
judged on the median and reported, never asserted.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np

# Run as a script, this file's folder is first on sys.path and its name would shadow the
# `simulators` package: the repository root goes in front.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._peers import Peer, load_peers
from benchmarks.policies import (
    _timed,
    bench_parser,
    clock,
    print_checks,
    report_head,
    source,
    write_report,
)
from policies import UCB1, ConservativeBudget, Guardrail, OffPolicyCS, ThompsonBeta, TrafficCap
from simulators import runner
from simulators.config import SweepSpec, load_sweep
from simulators.envs import Bernoulli
from simulators.runner import Scenario, run
from simulators.sweep import SweepResult, run_sweep

ROOT = Path(__file__).resolve().parent.parent
MEANS = np.array([0.10, *np.linspace(0.08, 0.12, 9)])  # arm 0 is control
K = MEANS.size
GAPS = MEANS.max() - MEANS
BATCH = 1_000
SEED = 20_240_601
ALPHA = 0.05  # conservative budget alpha and delta, and the violation check
EXPLORE_SHARE = 0.2
N_EXPECTED = 10_000
REFRESH = 100  # the runtime's cadence for the safety-stack rows
SWEEP_CELLS = 24  # the size of the acceptance sweep (24 cells x 1,000 x 10,000)
SWEEP_WORKERS = 2

# Targets from the issue (reported, never asserted).
THOMPSON_STACK_PULLS_PER_S = 1.5e6
THOMPSON_STACK_VS_SMPY = 35.0
UCB1_BARE_PULLS_PER_S = 10e6
SWEEP_EFFICIENCY = 0.9  # "near-linear": speed-up >= 0.9 x workers


# --- autoexp ----------------------------------------------------------------------------


def scenario(
    algorithm: str, *, safety: bool, steps: int, replicates: int = BATCH, seed: int = SEED
) -> Scenario:
    """Rows 1-4: the bare policy refreshed every step, or the safety stack every 100."""
    policy: Any = ThompsonBeta() if algorithm == "thompson" else UCB1()
    env = Bernoulli(p=MEANS.tolist())
    if not safety:
        return Scenario(env=env, policy=policy, steps=steps, replicates=replicates, seed=seed)
    budget = ConservativeBudget(policy=policy, alpha=ALPHA, delta=ALPHA, refresh=REFRESH)
    guardrail = Guardrail(name="reward", harm="decrease", test=OffPolicyCS(n_expected=N_EXPECTED))
    return Scenario(
        env=env,
        policy=TrafficCap(policy=budget, explore_share=EXPLORE_SHARE),
        steps=steps,
        replicates=replicates,
        seed=seed,
        refresh_every=REFRESH,
        test=OffPolicyCS(n_expected=N_EXPECTED),
        guardrails=(guardrail,),
        check_every=REFRESH,
        budget_alpha=ALPHA,
    )


def sweep_toml(steps: int, replicates: int, cells: int) -> str:
    """Row 1's scenario as a sweep file; the grid runs it ``cells`` times (seeds 1..)."""
    p = ", ".join(repr(float(m)) for m in MEANS)
    test = f'{{ name = "off-policy-cs", n_expected = {N_EXPECTED} }}'
    return f"""\
name = "bench-simulators"
[base]
steps = {steps}
replicates = {replicates}
seed = {SEED}
refresh_every = {REFRESH}
check_every = {REFRESH}
env = {{ kind = "bernoulli", p = [{p}] }}
policy = {{ name = "thompson-beta" }}
safety = {{ explore_share = {EXPLORE_SHARE}, conservative_alpha = {ALPHA}, \
conservative_delta = {ALPHA} }}
test = {test}
guardrails = [{{ name = "reward", harm = "decrease", test = {test} }}]
[grid]
seed = {list(range(1, cells + 1))}
"""


def autoexp_sanity(result: runner.Result) -> dict[str, float]:
    pulls = result.pulls.sum(axis=0)
    return {
        "regret_mean": float(result.regret.mean()),
        "control_share": float(pulls[0] / pulls.sum()),
        "promotion_rate": float(np.isfinite(result.promoted_at).mean()),
        "violation_rate": float(result.violated.mean()),
    }


def counts_sanity(counts: np.ndarray, replicates: int) -> dict[str, float]:
    """Pseudo-regret and control's share from pulls per arm summed over replicates."""
    return {
        "regret_mean": float(counts @ GAPS / replicates),
        "control_share": float(counts[0] / counts.sum()),
    }


# --- numba reference --------------------------------------------------------------------


@numba.njit
def numba_thompson(
    rng: np.random.Generator, means: np.ndarray, batch: int, steps: int
) -> np.ndarray:
    """Beta-Bernoulli Thompson sampling, one replicate after another: (K,) pulls summed."""
    k = means.size
    pulls = np.zeros(k)
    for _ in range(batch):
        wins = np.ones(k)
        losses = np.ones(k)
        for _ in range(steps):
            arm, top = 0, -1.0
            for j in range(k):
                x = rng.beta(wins[j], losses[j])
                if x > top:
                    arm, top = j, x
            if rng.random() < means[arm]:
                wins[arm] += 1.0
            else:
                losses[arm] += 1.0
            pulls[arm] += 1.0
    return pulls


@numba.njit
def numba_ucb1(rng: np.random.Generator, means: np.ndarray, batch: int, steps: int) -> np.ndarray:
    """UCB1 (mean + sqrt(2 ln t / n), t rewards seen, unpulled arms first, first maximum
    wins ties), one replicate after another: (K,) pulls summed."""
    k = means.size
    pulls = np.zeros(k)
    for _ in range(batch):
        n = np.zeros(k)
        s = np.zeros(k)
        for t in range(steps):
            if t < k:
                arm = t
            else:
                level = 2.0 * math.log(t)
                arm, top = 0, -1.0
                for j in range(k):
                    x = s[j] / n[j] + math.sqrt(level / n[j])
                    if x > top:
                        arm, top = j, x
            n[arm] += 1.0
            if rng.random() < means[arm]:
                s[arm] += 1.0
        pulls += n
    return pulls


# --- SMPyBandits ------------------------------------------------------------------------


def smpy_evaluator(algorithm: str, replicates: int, steps: int) -> Callable[[int], Any]:
    """``prepare(seed) -> run``: SMPyBandits' ``Evaluator`` (built outside the timer) on
    ``MAB`` of ``Arms.Bernoulli``; ``run`` is ``startOneEnv``, its per-step loop over the
    replicates. Call after ``load_peers()``, which applies its SciPy and NumPy shims."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it prints and warns about optional modules
        from SMPyBandits.Arms import Bernoulli as SmpyBernoulli
        from SMPyBandits.Environment import Evaluator
        from SMPyBandits.Policies import UCB, Thompson

    cls = Thompson if algorithm == "thompson" else UCB
    config = {
        "horizon": steps,
        "repetitions": replicates,
        "n_jobs": 1,
        "verbosity": 0,
        "environment": [{"arm_type": SmpyBernoulli, "params": MEANS.tolist()}],
        "policies": [{"archtype": cls, "params": {}}],
    }

    def prepare(seed: int) -> Callable[[], Any]:
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = Evaluator(config)
        np.random.seed(seed)  # noqa: NPY002 (it draws from NumPy's global generator only)

        def go() -> Any:
            sink = io.StringIO()  # its prints and tqdm bars
            with (
                contextlib.redirect_stdout(sink),
                contextlib.redirect_stderr(sink),
                warnings.catch_warnings(),
                np.errstate(divide="ignore", invalid="ignore"),  # UCB divides by 0 pulls
            ):
                warnings.simplefilter("ignore")
                evaluator.startOneEnv(0, evaluator.envs[0])
            return evaluator

        return go

    return prepare


# --- rows -------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Row:
    """One timed row: ``prepare(repeat)`` (untimed) returns the call to time, whose
    output ``sanity`` turns into figures checking that every row plays the same game."""

    key: str
    what: str
    algorithm: str
    kind: str  # "autoexp", "smpybandits" or "reference"
    replicates: int
    steps: int
    note: str
    prepare: Callable[[int], Callable[[], Any]]
    sanity: Callable[[Any], dict[str, float]]
    warm: Callable[[], object]
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    checks: dict[str, float] = field(default_factory=dict)

    def measure(self, repeat: int) -> None:
        call = self.prepare(repeat)

        def timed() -> tuple[Any, float]:
            cpu = time.process_time()
            out = call()
            return out, time.process_time() - cpu

        seconds, (out, cpu) = _timed(timed)
        self.seconds.append(seconds)
        self.cpu_seconds.append(cpu)
        if repeat == 0:
            self.checks = self.sanity(out)

    @property
    def pulls_per_s(self) -> float:
        return self.replicates * self.steps / float(np.median(self.seconds))

    def report(self) -> dict[str, Any]:
        pulls = sorted((self.replicates * self.steps / s for s in self.seconds), reverse=True)
        cpu = [c / s for c, s in zip(self.cpu_seconds, self.seconds, strict=True)]
        return {
            "key": self.key,
            "what": self.what,
            "kind": self.kind,
            "algorithm": self.algorithm,
            "replicates": self.replicates,
            "steps": self.steps,
            "note": self.note,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "cpu_per_wall_median": float(np.median(cpu)),
            "pulls_per_s": {"median": float(np.median(pulls)), "best": pulls[0]},
            "sanity_first_repeat": self.checks,
        }


def autoexp_row(key: str, what: str, algorithm: str, *, safety: bool, steps: int) -> Row:
    sc = scenario(algorithm, safety=safety, steps=steps)
    sample_path = getattr(runner, "_sample_path", None)
    path = "?" if sample_path is None else ("sample_arm" if sample_path(sc) else "allocation")
    warm = scenario(algorithm, safety=safety, steps=min(steps, 3 * REFRESH), seed=SEED - 1)
    return Row(
        key=key,
        what=what,
        algorithm=algorithm,
        kind="autoexp",
        replicates=sc.replicates,
        steps=steps,
        note=f"refresh_every={sc.refresh_every}, runner path: {path}; {sc.policy!r}"
        + (f"; test={sc.test!r}; guardrails={sc.guardrails!r}" if safety else ""),
        prepare=lambda rep: (
            lambda: run(scenario(algorithm, safety=safety, steps=steps, seed=SEED + rep))
        ),
        sanity=autoexp_sanity,
        warm=lambda: run(warm),
    )


def numba_row(algorithm: str, steps: int) -> Row:
    kernel = numba_thompson if algorithm == "thompson" else numba_ucb1

    def prepare(rep: int) -> Callable[[], Any]:
        rng = np.random.default_rng(SEED + rep)
        return lambda: kernel(rng, MEANS, BATCH, steps)

    name = "Thompson" if algorithm == "thompson" else "UCB1"
    return Row(
        key=f"numba-{algorithm}",
        what=f"numba reference {name}, no safety",
        algorithm=algorithm,
        kind="reference",
        replicates=BATCH,
        steps=steps,
        note=" ".join((kernel.__doc__ or "").split()).rstrip(".")
        + "; numba.njit, one thread, seeded np.random.Generator",
        prepare=prepare,
        sanity=lambda counts: counts_sanity(counts, BATCH),
        warm=lambda: kernel(np.random.default_rng(0), MEANS, 2, 50),
    )


def evaluator_row(algorithm: str, name: str, replicates: int, steps: int, note: str) -> Row:
    prepare = smpy_evaluator(algorithm, replicates, steps)
    return Row(
        key=f"smpybandits-evaluator-{algorithm}",
        what=f"SMPyBandits Evaluator, {name}",
        algorithm=algorithm,
        kind="smpybandits",
        replicates=replicates,
        steps=steps,
        note=f"Evaluator(n_jobs=1).startOneEnv: {replicates} repetitions x {steps} steps of "
        f"Policies.{name} on MAB(Arms.Bernoulli), rewards drawn by MAB.draw; {note}",
        prepare=lambda rep: prepare(SEED + rep),
        sanity=lambda ev: counts_sanity(ev.pulls[0][0].astype(np.float64), replicates),
        warm=lambda: prepare(SEED - 1)(),
    )


def loop_row(peer: Peer, name: str, replicates: int, steps: int) -> Row:
    means = MEANS.tolist()

    def prepare(rep: int) -> Callable[[], Any]:
        uniforms = np.random.default_rng(SEED + rep).random((replicates, steps)).tolist()

        def go() -> np.ndarray:
            counts = np.zeros(K)
            for i, u in enumerate(uniforms):
                play = peer.make(K, SEED + rep * replicates + i)
                counts += np.bincount(play(u, means), minlength=K)
            return counts

        return go

    return Row(
        key=f"smpybandits-loop-{peer.algorithm}",
        what=f"SMPyBandits policy loop, {name}",
        algorithm=peer.algorithm,
        kind="smpybandits",
        replicates=replicates,
        steps=steps,
        note=f"benchmarks/_peers.py: Policies.{name} choice() + getReward() per step, reward "
        "= u < mean from uniforms pre-drawn outside the timer; one policy per replicate",
        prepare=prepare,
        sanity=lambda counts: counts_sanity(counts, replicates),
        warm=lambda: peer.make(K, 0)([0.5] * 200, means),
    )


def smpy_rows(replicates: int, steps: int) -> tuple[list[Row], dict[str, str]]:
    """Rows 5: SMPyBandits' Evaluator and its policies in the shared loop, per algorithm."""
    peers, skipped = load_peers()
    loops = {p.algorithm: p for p in peers if p.library == "smpybandits"}
    if not loops:
        return [], {k: v for k, v in skipped.items() if k == "smpybandits"}
    rows: list[Row] = []
    for algorithm, name in (("thompson", "Thompson"), ("ucb1", "UCB")):
        peer = loops[algorithm]
        rows.append(evaluator_row(algorithm, name, replicates, steps, peer.note))
        rows.append(loop_row(peer, name, replicates, steps))
    return rows, {}


# --- sweep ------------------------------------------------------------------------------


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of this process and of its terminated children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "self": own.ru_utime + own.ru_stime,
        "children": children.ru_utime + children.ru_stime,
    }


def _with_cpu(spec: SweepSpec, workers: int) -> tuple[SweepResult, dict[str, float]]:
    """``run_sweep`` and the CPU seconds it took here and in its (joined) workers."""
    before = _cpu_seconds()
    result = run_sweep(spec, executor="processes", workers=workers)
    after = _cpu_seconds()
    return result, {who: after[who] - before[who] for who in before}


def sweep_rows(steps: int, repeats: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Row 7: the same sweep with 1 and with 2 workers, repeats interleaved; and the
    start-up of a 2-worker pool alone (2 cells of 1 replicate x 1 step)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.toml"
        path.write_text(sweep_toml(steps, BATCH, SWEEP_CELLS))
        spec = load_sweep(path)
        tiny_path = Path(tmp) / "tiny.toml"
        tiny_path.write_text(sweep_toml(1, 1, SWEEP_WORKERS))
        tiny = load_sweep(tiny_path)
    built, row1 = spec.spec(0).scenario, scenario("thompson", safety=True, steps=steps)
    for name in ("policy", "test", "guardrails", "refresh_every", "check_every", "budget_alpha"):
        if repr(getattr(built, name)) != repr(getattr(row1, name)):
            raise RuntimeError(f"sweep cell differs from row 1 in {name}: {getattr(built, name)!r}")
    runs: dict[int, list[dict[str, Any]]] = {1: [], SWEEP_WORKERS: []}
    startup: list[float] = []
    progress("warm-up sweep (2-worker pool start-up)")
    run_sweep(tiny, executor="processes", workers=SWEEP_WORKERS)
    for rep in range(repeats):
        progress(f"sweep repeat {rep + 1}/{repeats}")
        for workers in runs:
            wall, (result, cpu) = _timed(lambda w=workers: _with_cpu(spec, w))
            runs[workers].append(
                {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    # CPU of this process and of its (reaped) workers over workers x wall:
                    # near 1 when every worker had a core for the whole sweep
                    "cpu_utilisation": (cpu["self"] + cpu["children"]) / (workers * wall),
                    "cell_seconds": [r["seconds"] for r in result.rows],
                    "cell_pulls_per_s": [r["pulls_per_s"] for r in result.rows],
                    "workers_used": result.workers,
                }
            )
        startup.append(_timed(lambda: run_sweep(tiny, workers=SWEEP_WORKERS))[0])
    pulls = SWEEP_CELLS * BATCH * steps
    out: dict[str, Any] = {
        "cells": SWEEP_CELLS,
        "replicates": BATCH,
        "steps": steps,
        "scenario": "row 1's (policy, test, guardrails, cadences checked equal), grid seed = "
        f"{list(range(1, SWEEP_CELLS + 1))}; built by simulators.config.load_sweep",
        "toml": sweep_toml(steps, BATCH, SWEEP_CELLS),
        "runs": {str(w): r for w, r in runs.items()},
        "pool_startup_s": {"seconds": startup, "median": float(np.median(startup))},
    }
    for workers, rs in runs.items():
        wall = float(np.median([r["wall_s"] for r in rs]))
        # cells 0..workers-1 are each worker's first (a fresh worker loads numba's caches)
        first = [p for r in rs for p in r["cell_pulls_per_s"][:workers]]
        later = [p for r in rs for p in r["cell_pulls_per_s"][workers:]]
        out[f"workers_{workers}"] = {
            "wall_s_median": wall,
            "pulls_per_s": pulls / wall,
            "first_cell_pulls_per_s_median": float(np.median(first)),
            "later_cell_pulls_per_s_median": float(np.median(later)),
            "cpu_utilisation_median": float(np.median([r["cpu_utilisation"] for r in rs])),
        }
    out["speedup"] = (
        out["workers_1"]["wall_s_median"] / out[f"workers_{SWEEP_WORKERS}"]["wall_s_median"]
    )
    return out


# --- report -----------------------------------------------------------------------------


def ratios(rows: list[Row]) -> dict[str, dict[str, float | None]]:
    """Each row's median pulls/s over the same algorithm's SMPyBandits rows and numba's."""
    by_key = {r.key: r.pulls_per_s for r in rows}
    out: dict[str, dict[str, float | None]] = {}
    for r in rows:
        base = {
            "vs_smpybandits_evaluator": by_key.get(f"smpybandits-evaluator-{r.algorithm}"),
            "vs_smpybandits_loop": by_key.get(f"smpybandits-loop-{r.algorithm}"),
            "vs_numba": by_key.get(f"numba-{r.algorithm}"),
        }
        out[r.key] = {k: None if v is None else r.pulls_per_s / v for k, v in base.items()}
    return out


def targets(rows: list[Row], ratio: dict[str, Any], sweep: dict[str, Any]) -> list[dict[str, Any]]:
    by_key = {r.key: r for r in rows}

    def check(name: str, value: float | None, threshold: float) -> dict[str, Any]:
        status = "n/a" if value is None else ("PASS" if value >= threshold else "FAIL")
        return {"target": name, "value": value, "threshold": threshold, "status": status}

    stack = by_key["autoexp-thompson-stack"].pulls_per_s
    return [
        check("1. Thompson + safety stack >= 1.5M arm-pulls/s", stack, THOMPSON_STACK_PULLS_PER_S),
        check(
            "1. Thompson + safety stack >= 35x SMPyBandits Evaluator (Thompson)",
            ratio["autoexp-thompson-stack"]["vs_smpybandits_evaluator"],
            THOMPSON_STACK_VS_SMPY,
        ),
        check(
            "1. (stricter) Thompson + safety stack >= 35x SMPyBandits policy loop (Thompson)",
            ratio["autoexp-thompson-stack"]["vs_smpybandits_loop"],
            THOMPSON_STACK_VS_SMPY,
        ),
        check(
            "3. UCB1 bare >= 10M arm-pulls/s",
            by_key["autoexp-ucb1-bare"].pulls_per_s,
            UCB1_BARE_PULLS_PER_S,
        ),
        check(
            f"7. sweep speed-up, {SWEEP_WORKERS} workers vs 1, >= {SWEEP_EFFICIENCY} x "
            f"{SWEEP_WORKERS} (near-linear; pool start-up included)",
            sweep["speedup"],
            SWEEP_EFFICIENCY * SWEEP_WORKERS,
        ),
    ]


def render(head: list[str], body: list[list[str]], left: int) -> str:
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, body)])


def table(
    rows: list[Row], ratio: dict[str, Any], checks: list[dict[str, Any]], sweep: dict[str, Any]
) -> str:
    def x(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    def verdict(n: str) -> str:
        return "/".join(c["status"] for c in checks if c["target"].startswith(f"{n}."))

    number = {"autoexp-thompson-stack": "1", "autoexp-thompson-bare": "2",
              "autoexp-ucb1-bare": "3", "autoexp-ucb1-stack": "4"}  # fmt: skip
    target = {"1": ">=1.5M/s; >=35x SMPy", "3": ">=10M/s"}
    body = []
    for r in rows:
        n = number.get(r.key, "5" if r.kind == "smpybandits" else "6")
        cpu = np.median([c / s for c, s in zip(r.cpu_seconds, r.seconds, strict=True)])
        body.append([
            n, r.what, f"{r.replicates}x{r.steps}", f"{r.pulls_per_s / 1e6:.3f}",
            f"{r.report()['pulls_per_s']['best'] / 1e6:.3f}",
            *(x(ratio[r.key][k]) for k in ("vs_smpybandits_evaluator", "vs_smpybandits_loop",
                                           "vs_numba")),
            f"{cpu:.2f}", f"{r.checks.get('regret_mean', float('nan')):.1f}",
            f"{r.checks.get('control_share', float('nan')):.3f}",
            target.get(n, ""), verdict(n) if n in target else "",
        ])  # fmt: skip
    cells = f"{sweep['cells']}x{sweep['replicates']}x{sweep['steps']}"
    goal = SWEEP_EFFICIENCY * SWEEP_WORKERS
    for workers in (1, SWEEP_WORKERS):
        s = sweep[f"workers_{workers}"]
        last = workers == SWEEP_WORKERS
        body.append(
            ["7", f"run_sweep, processes, workers={workers}", cells,
             f"{s['pulls_per_s'] / 1e6:.3f}", *[""] * 7,
             f"speed-up {sweep['speedup']:.2f}x (>={goal:g}x)" if last else "",
             verdict("7") if last else ""]
        )  # fmt: skip
    head = ["#", "what", "B x T", "M pulls/s", "best", "x SMPy eval", "x SMPy loop", "x numba",
            "cpu/wall", "regret@T", "ctrl share", "target", "status"]  # fmt: skip
    return render(head, body, left=2)


def tree_digest(*folders: str) -> str:
    """sha256 of the ``.py`` files of ``folders`` as run (the tree may hold edits)."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted((ROOT / folder).glob("*.py")):
            digest.update(f"{folder}/{path.name}".encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# --- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = bench_parser(__doc__, "simulators", "T = 2,000 (a smoke run)").parse_args(argv)
    steps = 2_000 if args.quick else 10_000
    peer_replicates = 5 if args.quick else 20
    load_start = os.getloadavg()
    started = time.perf_counter()
    progress = clock()

    progress("building rows (importing SMPyBandits)")
    rows = [
        autoexp_row(
            "autoexp-thompson-stack",
            "autoexp Thompson + safety stack",
            "thompson",
            safety=True,
            steps=steps,
        ),
        autoexp_row(
            "autoexp-thompson-bare", "autoexp Thompson bare", "thompson", safety=False, steps=steps
        ),
        autoexp_row("autoexp-ucb1-bare", "autoexp UCB1 bare", "ucb1", safety=False, steps=steps),
        autoexp_row(
            "autoexp-ucb1-stack", "autoexp UCB1 + safety stack", "ucb1", safety=True, steps=steps
        ),
    ]
    peers, skipped = smpy_rows(peer_replicates, steps)
    rows += [*peers, numba_row("thompson", steps), numba_row("ucb1", steps)]
    for library, reason in skipped.items():
        print(f"note: {library} skipped ({reason})", file=sys.stderr)

    for row in rows:
        progress(f"warm-up {row.what}")
        row.warm()
    # Repeats are interleaved (every row once, then again), so a burst of load from another
    # process on this machine spreads over the rows instead of landing on one of them.
    for rep in range(args.repeats):
        progress(f"repeat {rep + 1}/{args.repeats}")
        for row in rows:
            row.measure(rep)
    sweep = sweep_rows(steps, args.repeats, progress)
    ratio = ratios(rows)
    checks = targets(rows, ratio, sweep)
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()

    print(table(rows, ratio, checks, sweep))
    print(
        "\nM pulls/s: B x T / seconds, median of "
        f"{args.repeats} (best: fastest run); x SMPy eval / loop / numba: this row's median "
        "over the same algorithm's row (Thompson or UCB); cpu/wall: process CPU time over "
        "wall time (1.00: one core). regret@T: mean pseudo-regret per replicate after T "
        "steps, first repeat; ctrl share: share of pulls on control (arm 0). A sanity check "
        "that rows play the same game, not a claim."
    )
    w1, w2 = sweep["workers_1"], sweep[f"workers_{SWEEP_WORKERS}"]
    print(
        f"Sweep: {sweep['cells']} cells of row 1's scenario via load_sweep; workers=1 runs the "
        "cells one after another in this process (run_sweep does not start a pool for one "
        f"worker), workers={SWEEP_WORKERS} a spawned process pool, whose start-up (fresh "
        "interpreters importing numpy, numba, policies, simulators) is included: alone, "
        f"{sweep['pool_startup_s']['median']:.2f}s median (2 cells of 1 x 1 step). Per cell, "
        f"in M pulls/s: {w2['first_cell_pulls_per_s_median'] / 1e6:.2f} for each worker's first "
        f"cell, {w2['later_cell_pulls_per_s_median'] / 1e6:.2f} for later ones with "
        f"{SWEEP_WORKERS} workers; {w1['later_cell_pulls_per_s_median'] / 1e6:.2f} in this "
        "process. CPU time (this process and its workers) over workers x wall: "
        f"{w2['cpu_utilisation_median']:.2f} with {SWEEP_WORKERS} workers, "
        f"{w1['cpu_utilisation_median']:.2f} with one (below 1: a core went unused or to "
        "other processes)."
    )
    for library, reason in skipped.items():
        print(f"skipped: {library}: {reason}")
    print_checks(checks, load_start, load_end, elapsed)
    if args.quick:
        print("--quick: the targets are set at B = 1,000 x T = 10,000; these are indicative.")

    report = {
        **report_head("simulators", load_start, load_end),
        "source": source() | {"policies_simulators_sha256": tree_digest("policies", "simulators")},
        "config": {
            "n_arms": K,
            "means": MEANS.tolist(),
            "replicates": BATCH,
            "steps": steps,
            "smpybandits_replicates": peer_replicates,
            "repeats": args.repeats,
            "quick": args.quick,
            "seed": SEED,
            "timer": "time.perf_counter (and time.process_time), gc disabled during each run",
            "safety_stack": {
                "policy": f"TrafficCap(ConservativeBudget(<policy>, alpha={ALPHA}, "
                f"delta={ALPHA}, refresh={REFRESH}), explore_share={EXPLORE_SHARE})",
                "refresh_every": REFRESH,
                "test": f"OffPolicyCS(n_expected={N_EXPECTED})",
                "guardrails": f'Guardrail(name="reward", harm="decrease", '
                f"test=OffPolicyCS(n_expected={N_EXPECTED}))",
                "check_every": REFRESH,
                "budget_alpha": ALPHA,
            },
            "smpybandits": "SMPyBandits 0.9.7 runs without numba (its usenumba imports "
            "numba.decorators, gone from current numba) and draws from NumPy's global "
            "generator, seeded per repeat",
        },
        "skipped": skipped,
        "rows": [r.report() | ratio[r.key] for r in rows],
        "sweep": sweep,
        "targets": checks,
        "elapsed_s": elapsed,
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
