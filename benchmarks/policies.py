"""Cost of one decision: autoexp's Thompson sampling and UCB1 against peer libraries.

Run from the repository root::

    python benchmarks/policies.py [--quick] [--out benchmarks/results/policies.json]

One process, one machine: every library plays the same instance (K = 10 Bernoulli arms,
means ``linspace(0.02, 0.06, 10)``) on the same pre-drawn reward uniforms. A round is one
full decision: select an arm, draw its reward, hand the reward back (update). Each
library is warmed up first (numba compilation, caches), then timed ``--repeats`` times
on a fresh instance; the table shows the median and the best run. See README.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script, this file's folder is first on sys.path and its name would shadow the
# `policies` package: the repository root goes in front.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._peers import Peer, Player, load_peers
from policies import UCB1, Decision, PolicyBase, ThompsonBeta
from policies.serving import Server

ROOT = Path(__file__).resolve().parent.parent
K = 10
MEANS = np.linspace(0.02, 0.06, K)
GAPS = MEANS.max() - MEANS
SEED = 20_240_601
ALGORITHMS = {"thompson": ThompsonBeta, "ucb1": UCB1}

# Targets evaluated (reported, never asserted).
ONLINE_THOMPSON_VS_PEER = 1.0  # online Thompson at least as fast as the fastest peer
SERVING_VS_PEER = 5.0  # serving (refresh 100) at least 5x the fastest peer
BATCHED_PULLS_PER_S = {"thompson": 1.5e6, "ucb1": 10e6}


# --- timing -----------------------------------------------------------------------------


def _timed(run: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds of one call of ``run`` (garbage collector off, as timeit does)."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        out = run()
        return time.perf_counter() - start, out
    finally:
        gc.enable()


@dataclass(slots=True, kw_only=True)
class Job:
    """One row of the table: how to warm it up and how to time one run of it."""

    labels: dict[str, Any]
    warm: Callable[[], object]
    once: Callable[[int], tuple[float, float]]  # repeat -> (seconds, regret)
    rounds: int
    batch: int | None = None  # None: online, one decision per round
    seconds: list[float] = field(default_factory=list)
    regret: float = float("nan")

    def row(self) -> dict[str, Any]:
        out = self.labels | {"rounds": self.rounds, "seconds": self.seconds}
        if self.batch is None:
            us = sorted(s / self.rounds * 1e6 for s in self.seconds)
            out["us_per_decision"] = {"median": float(np.median(us)), "best": us[0]}
        else:
            pulls = sorted((self.rounds * self.batch / s for s in self.seconds), reverse=True)
            out["batch"] = self.batch
            out["pulls_per_s"] = {"median": float(np.median(pulls)), "best": pulls[0]}
        return out | {"regret": self.regret, "regret_horizon": self.rounds}


def online_job(
    make: Callable[[int, int], Player],
    *,
    u: list[float],
    warmup: list[float],
    seed: int,
    **labels: Any,
) -> Job:
    """Play ``len(u)`` rounds on a fresh player per repeat (warm-up: another player)."""
    means = MEANS.tolist()

    def once(rep: int) -> tuple[float, float]:
        play = make(K, seed + rep)
        dt, arms = _timed(lambda: play(u, means))
        return dt, float(np.bincount(np.asarray(arms), minlength=K) @ GAPS)

    return Job(
        labels=labels, warm=lambda: make(K, seed - 1)(warmup, means), once=once, rounds=len(u)
    )


def serving(policy: PolicyBase, refresh_every: int) -> Callable[[int, int], Player]:
    """autoexp's single-stream Server: strict online play when ``refresh_every`` is 1."""

    def make(n_arms: int, seed: int) -> Player:
        server = Server(
            policy, n_arms, rng=np.random.default_rng(seed), refresh_every=refresh_every
        )

        def play(u: list[float], means: list[float]) -> list[int]:
            out = [0] * len(u)
            select, update = server.select, server.update
            for i, ui in enumerate(u):
                arm, _, version = select()
                update(arm, 1.0 if ui < means[arm] else 0.0, version)
                out[i] = arm
            return out

        return play

    return make


# --- batched ----------------------------------------------------------------------------

Batched = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # (U, rng) -> counts (B, K)


def autoexp_batched(policy: PolicyBase) -> Batched:
    """B replicates in lockstep through ``sample_arm`` and ``update``."""

    def run(uniforms: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        batch = uniforms.shape[1]
        state = policy.init(K, batch)
        # Thompson's and UCB1's increments read only decision.arm and the propensity's
        # shape, so one uniform dummy stands in for the allocation sample_arm skips.
        dummy = np.full((batch, K), 1.0 / K)
        sample_arm, update = policy.sample_arm, policy.update
        for u_t in uniforms:
            arm = sample_arm(state, rng)
            reward = (u_t < MEANS[arm]).astype(np.float64)
            state = update(state, Decision(arm, dummy), reward)
        return np.asarray(state.n)

    return run


def numpy_thompson(uniforms: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Plain vectorised Beta-Bernoulli Thompson sampling: rng.beta, argmax, np.add.at."""
    batch = uniforms.shape[1]
    rows = np.arange(batch)
    a = np.ones((batch, K))
    b = np.ones((batch, K))
    for u_t in uniforms:
        arm = rng.beta(a, b).argmax(axis=1)
        reward = (u_t < MEANS[arm]).astype(np.float64)
        np.add.at(a, (rows, arm), reward)
        np.add.at(b, (rows, arm), 1.0 - reward)
    return a + b - 2.0


def numpy_ucb1(uniforms: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Plain vectorised UCB1 (first maximum wins ties): index, argmax, np.add.at."""
    batch = uniforms.shape[1]
    rows = np.arange(batch)
    n = np.zeros((batch, K))
    s = np.zeros((batch, K))
    index = np.empty((batch, K))
    for t, u_t in enumerate(uniforms):
        index.fill(np.inf)
        pulled = n > 0
        np.divide(s + np.sqrt(2.0 * np.log(max(t, 1)) * n), n, out=index, where=pulled)
        arm = index.argmax(axis=1)
        reward = (u_t < MEANS[arm]).astype(np.float64)
        np.add.at(n, (rows, arm), 1.0)
        np.add.at(s, (rows, arm), reward)
    return n


def batched_job(
    run: Batched, *, uniforms: np.ndarray, warmup: np.ndarray, seed: int, **labels: Any
) -> Job:
    """``run`` B replicates for T steps; regret is the mean over the replicates."""

    def once(rep: int) -> tuple[float, float]:
        rng = np.random.default_rng(seed + rep)
        dt, counts = _timed(lambda: run(uniforms, rng))
        return dt, float((counts @ GAPS).mean())

    steps, batch = uniforms.shape
    return Job(
        labels=labels,
        warm=lambda: run(warmup, np.random.default_rng(seed - 1)),
        once=once,
        rounds=steps,
        batch=batch,
    )


# --- report -----------------------------------------------------------------------------


def us_per_pull(row: dict[str, Any]) -> float:
    """Median microseconds per decision (per arm-pull for batched rows)."""
    if "pulls_per_s" in row:
        return 1e6 / float(row["pulls_per_s"]["median"])
    return float(row["us_per_decision"]["median"])


def bench_parser(doc: str, name: str, quick_help: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--quick``, ``--repeats``, ``--out``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (default 3)")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / f"{name}.json",
        help=f"JSON results path (default benchmarks/results/{name}.json)",
    )
    return parser


def clock() -> Callable[[str], None]:
    """A progress logger: each message on stderr with the seconds since this call."""
    started = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return progress


def print_checks(
    checks: list[dict[str, Any]], load_start: Any, load_end: Any, elapsed: float
) -> None:
    """The targets' verdicts, the machine's load during the run and the total time."""
    print()
    for c in checks:
        value = "-" if c["value"] is None else f"{c['value']:,.2f}"
        print(f"{c['status']:4}  {c['target']}: {value}")
    if load_start is not None and load_end is not None:
        print(
            f"\nload average (1 min) {load_start[0]:.2f} at start, {load_end[0]:.2f} at end, "
            f"on {os.cpu_count()} CPUs: other processes inflate the medians; see 'best'."
        )
    print(f"total {elapsed:.0f}s")


def report_head(name: str, load_start: Any, load_end: Any) -> dict[str, Any]:
    """The JSON report's first keys: which benchmark, when, the command and the machine."""
    return {
        "benchmark": name,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": machine() | {"loadavg_start": load_start, "loadavg_end": load_end},
    }


def write_report(out: Path, report: dict[str, Any]) -> None:
    """Write a benchmark's JSON report (creating its folder) and say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    for dist in ("numpy", "scipy", "numba", "mabwiser", "river", "SMPyBandits", "obp"):
        try:
            info[f"{dist.lower()}_version"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[f"{dist.lower()}_version"] = None
    return info


def source() -> dict[str, Any]:
    """The commit benchmarked, and whether policies/ had uncommitted edits."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--", "policies")
    return {
        "commit": git("rev-parse", "HEAD"),
        "policies_dirty": None if dirty is None else bool(dirty),
    }


def fmt_row(row: dict[str, Any]) -> list[str]:
    if "pulls_per_s" in row:
        median = f"{row['pulls_per_s']['median'] / 1e6:.2f}"
        best = f"{row['pulls_per_s']['best'] / 1e6:.2f}"
        unit = "M pulls/s"
        rounds = f"{row['batch']}x{row['rounds']}"
    else:
        median = f"{row['us_per_decision']['median']:.2f}"
        best = f"{row['us_per_decision']['best']:.2f}"
        unit = "us/decision"
        rounds = str(row["rounds"])
    ratio = row.get("vs_fastest_peer")
    return [
        row["library"],
        row["algorithm"],
        row["mode"],
        rounds,
        median,
        best,
        unit,
        "-" if ratio is None else f"{ratio:.2f}x",
        f"{row['regret']:.1f}",
    ]


def table(rows: list[dict[str, Any]]) -> str:
    head = [
        "library",
        "algorithm",
        "mode",
        "rounds",
        "median",
        "best",
        "unit",
        "vs fastest peer",
        "regret@T",
    ]
    body = [fmt_row(r) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    right = {3, 4, 5, 7, 8}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), rule, *(line(b) for b in body)])


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def find(algorithm: str, mode: str) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in rows
                if r["library"] == "autoexp" and r["algorithm"] == algorithm and r["mode"] == mode
            ),
            None,
        )

    out: list[dict[str, Any]] = []

    def check(name: str, row: dict[str, Any] | None, value_key: str, threshold: float) -> None:
        value = None if row is None else row.get(value_key)
        status = "n/a" if value is None else ("PASS" if value >= threshold else "FAIL")
        out.append({"target": name, "value": value, "threshold": threshold, "status": status})

    check(
        "online Thompson >= fastest peer Thompson (ratio >= 1)",
        find("thompson", "online"),
        "vs_fastest_peer",
        ONLINE_THOMPSON_VS_PEER,
    )
    for algorithm in ALGORITHMS:
        check(
            f"serving (refresh 100) {algorithm} >= 5x fastest peer",
            find(algorithm, "serving refresh=100"),
            "vs_fastest_peer",
            SERVING_VS_PEER,
        )
    for algorithm, threshold in BATCHED_PULLS_PER_S.items():
        row = find(algorithm, "batched")
        value = None if row is None else row["pulls_per_s"]["median"]
        out.append(
            {
                "target": f"batched {algorithm} >= {threshold / 1e6:g}M arm-pulls/s",
                "value": value,
                "threshold": threshold,
                "status": "n/a" if value is None else ("PASS" if value >= threshold else "FAIL"),
            }
        )
    return out


# --- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = bench_parser(__doc__, "policies", "fewer rounds (a smoke run)").parse_args(argv)
    rounds = 2_000 if args.quick else 10_000
    steps = 1_000 if args.quick else 10_000
    batch = 1_000
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    progress = clock()

    reward_rng = np.random.default_rng(SEED)
    u = reward_rng.random(rounds).tolist()
    warmup = reward_rng.random(2_500).tolist()  # > 2 refreshes at refresh_every=1000
    uniforms = reward_rng.random((steps, batch))
    warmup_batched = reward_rng.random((50, batch))

    progress("importing peers")
    peers, skipped = load_peers()
    for library, reason in skipped.items():
        print(f"note: {library} skipped ({reason})", file=sys.stderr)

    ours = importlib.metadata.version("autoexp")
    jobs: list[Job] = []
    seeds = iter(range(SEED + 1_000, SEED + 1_000_000, 1_000))  # distinct streams per row

    def labels(
        kind: str, library: str, version: str, algorithm: str, mode: str, note: str
    ) -> dict[str, Any]:
        return {
            "kind": kind,
            "library": library,
            "version": version,
            "algorithm": algorithm,
            "mode": mode,
            "note": note,
        }

    peer: Peer
    for peer in peers:
        jobs.append(
            online_job(
                peer.make,
                u=u,
                warmup=warmup,
                seed=next(seeds),
                **labels("peer", peer.library, peer.version, peer.algorithm, "online", peer.note),
            )
        )
    for algorithm, cls in ALGORITHMS.items():
        policy = cls()
        for refresh, mode in (
            (1, "online"),
            (100, "serving refresh=100"),
            (1000, "serving refresh=1000"),
        ):
            note = f"Server(refresh_every={refresh})"
            jobs.append(
                online_job(
                    serving(policy, refresh),
                    u=u,
                    warmup=warmup,
                    seed=next(seeds),
                    refresh_every=refresh,
                    **labels("autoexp", "autoexp", ours, algorithm, mode, note),
                )
            )
        jobs.append(
            batched_job(
                autoexp_batched(policy),
                uniforms=uniforms,
                warmup=warmup_batched,
                seed=next(seeds),
                **labels("autoexp", "autoexp", ours, algorithm, "batched", "sample_arm + update"),
            )
        )
        baseline = numpy_thompson if algorithm == "thompson" else numpy_ucb1
        doc = (baseline.__doc__ or "").strip()
        jobs.append(
            batched_job(
                baseline,
                uniforms=uniforms,
                warmup=warmup_batched,
                seed=next(seeds),
                **labels("reference", "numpy loop", np.__version__, algorithm, "batched", doc),
            )
        )

    for job in jobs:
        progress(f"warm-up {job.labels['library']} {job.labels['algorithm']} {job.labels['mode']}")
        job.warm()
    # Repeats are interleaved (every row once, then again), so a burst of load from another
    # process on this machine spreads over the rows instead of landing on one library.
    for rep in range(args.repeats):
        progress(f"repeat {rep + 1}/{args.repeats}")
        for job in jobs:
            dt, regret = job.once(rep)
            job.seconds.append(dt)
            if rep == 0:
                job.regret = regret
    rows = [job.row() for job in jobs]

    fastest = {
        algorithm: min(
            (us_per_pull(r) for r in rows if r["kind"] == "peer" and r["algorithm"] == algorithm),
            default=float("nan"),
        )
        for algorithm in ALGORITHMS
    }
    for row in rows:
        best_peer = fastest[row["algorithm"]]
        row["vs_fastest_peer"] = None if np.isnan(best_peer) else best_peer / us_per_pull(row)
    rows.sort(key=lambda r: (list(ALGORITHMS).index(r["algorithm"]), r["kind"] != "peer"))
    checks = targets(rows)
    elapsed = time.perf_counter() - started

    print(table(rows))
    print()
    print(
        "vs fastest peer = fastest peer's median us/decision / this row's (>1: faster than "
        "every peer); batched rows per arm-pull, amortised over B replicates, not like for like."
    )
    print(
        f"regret@T: pseudo-regret after T rounds, one seed (batched: mean of B replicates); "
        f"a sanity check, not a claim. Uniform play would give {rounds * GAPS.mean():.0f} "
        f"(T={rounds})."
    )
    print(
        "Rewards: 1.0 if u < mean[arm] with u pre-drawn once and shared by every library; "
        "gc off while timing."
    )
    for library, reason in skipped.items():
        print(f"skipped: {library}: {reason}")
    print()
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    print_checks(checks, load_start, load_end, elapsed)

    report = {
        **report_head("policies", load_start, load_end),
        "source": source(),
        "config": {
            "n_arms": K,
            "means": MEANS.tolist(),
            "rounds": rounds,
            "batch": batch,
            "batched_steps": steps,
            "repeats": args.repeats,
            "warmup_rounds": len(warmup),
            "quick": args.quick,
            "seed": SEED,
            "timer": "time.perf_counter, gc disabled during each timed run",
            "rewards": "pre-drawn uniforms shared by all libraries; reward = u < mean[arm]",
        },
        "skipped": skipped,
        "fastest_peer_us_per_decision": fastest,
        "rows": rows,
        "targets": checks,
        "elapsed_s": elapsed,
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
