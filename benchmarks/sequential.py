"""Anytime-valid A/B tests against peers: type I error, power, harm and the cost of an update.

Run from the repository root::

    python benchmarks/sequential.py [--quick] [--replicates 2000] [--jobs 2]

Two arms (0 is control), users in batches of 100, every test checked after every batch,
B replicates simulated in lockstep. Scenarios: A/A at 5% and 30% (type I error under
continuous monitoring), 5% against 5.5% (power, users until decision), 5% against 4.75%
over 1,000,000 users (rollback, users exposed to the harmful arm), each with a fixed
50/50 split and, for the tests valid on adaptive data, a capped Thompson allocation.
Then the microseconds of one update. Peers in the same run, on the same users:
statsmodels' two-proportion z-test (peeked, and one fixed look), savvi's conversion test
(Lindon and Malek) and confseq's normal-mixture boundary. See README.md.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm

# Run as a script, this file's folder is first on sys.path and its name would shadow the
# `policies` package: the repository root goes in front.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._peers import _version
from benchmarks.policies import _timed, clock, machine, source, write_report
from policies import ArmStats, ThompsonBeta, TrafficCap
from policies.sequential import (
    AsymptoticCS,
    BetaBinomialCS,
    EmpiricalBernsteinCS,
    MixtureSPRT,
    OffPolicyCS,
    SequentialTest,
    n_expected_for,
)
from policies.serving import Server

ROOT = Path(__file__).resolve().parent.parent
SEED = 20_240_715
ALPHA = 0.05
BATCH = 100  # users between two checks
BASE, LIFT, HARM = 0.05, 0.055, 0.0475
HORIZON, HARM_HORIZON = 200_000, 1_000_000
MDE = 0.005
N_STAR = n_expected_for(mde=MDE, variance=BASE * (1.0 - BASE), alpha=ALPHA)  # ~59.6k users
N_STAR_LOOK = math.ceil(N_STAR / BATCH) * BATCH  # the fixed design's one look, in users
Z_CRIT = float(norm.ppf(1.0 - ALPHA / 2.0))
# confseq's normal mixture is tuned in intrinsic time: the variance of n (mean_1 - mean_0)
# at the design size n*, 50/50 split, design variance BASE (1 - BASE) per arm.
CONFSEQ_V_OPT = 4.0 * BASE * (1.0 - BASE) * N_STAR
MIN_PER_ARM = 100  # confseq's asymptotic CS reported from here, as AsymptoticCS's default


def autoexp_tests() -> dict[str, SequentialTest]:
    """The user-facing settings, the same in every scenario (never tuned to it)."""
    return {
        "MixtureSPRT": MixtureSPRT(alpha=ALPHA, mde=MDE),
        "AsymptoticCS": AsymptoticCS(alpha=ALPHA, n_expected=N_STAR),
        "BetaBinomialCS": BetaBinomialCS(alpha=ALPHA),
        "EmpiricalBernsteinCS": EmpiricalBernsteinCS(alpha=ALPHA),
        "OffPolicyCS": OffPolicyCS(alpha=ALPHA, n_expected=N_STAR),
    }


def bandit() -> TrafficCap:
    return TrafficCap(policy=ThompsonBeta(), explore_share=0.1)


def confseq_status() -> str:
    try:
        from confseq.boundaries import normal_mixture_bound  # noqa: F401
    except Exception as exc:  # a peer that does not import is reported, never faked
        return f"not installable: {type(exc).__name__}: {exc}"
    return "ok"


# --- statistics of the peers ------------------------------------------------------------


def z_stat(n: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Pooled two-proportion z of arm 1 against arm 0, (B,), as statsmodels'
    ``proportions_ztest([s1, s0], [n1, n0])``; 0 where undefined."""
    pooled = s.sum(axis=1) / np.maximum(n.sum(axis=1), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = pooled * (1.0 - pooled) * (1.0 / n[:, 1] + 1.0 / n[:, 0])
        z = (s[:, 1] / n[:, 1] - s[:, 0] / n[:, 0]) / np.sqrt(var)
    return np.where(var > 0.0, z, 0.0)


def confseq_bounds(n: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Asymptotic CS for mean_1 - mean_0 with confseq's two-sided normal-mixture boundary on
    ``S_t = t (mean_1 - mean_0)``, intrinsic time ``t^2 V_t`` (plug-in variance)."""
    from confseq.boundaries import normal_mixture_bound

    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s / n
        v_diff = (mean * (1.0 - mean) / n).sum(axis=1)
    t = n.sum(axis=1)
    radius = np.asarray(normal_mixture_bound(t * t * v_diff, ALPHA, CONFSEQ_V_OPT, ALPHA, False))
    ready = n.min(axis=1) >= MIN_PER_ARM
    est = mean[:, 1] - mean[:, 0]
    return np.where(ready, est - radius / t, -np.inf), np.where(ready, est + radius / t, np.inf)


def check_peers() -> dict[str, float]:
    """Assert that the vectorised z equals statsmodels', and that savvi's closed-form
    multinomial odds equal its Lindon-Malek conversion test (solved by cvxpy) for 2 arms."""
    from savvi.multinomial import InhomogeneousBernoulliProcess, Multinomial
    from statsmodels.stats.proportion import proportions_ztest

    rng = np.random.default_rng(SEED)
    n = rng.integers(50, 50_000, size=(20, 2)).astype(np.float64)
    s = rng.binomial(n.astype(np.int64), [0.05, 0.06]).astype(np.float64)
    ours = z_stat(n, s)
    theirs = np.array([proportions_ztest(s[b, ::-1], n[b, ::-1])[0] for b in range(len(n))])
    z_diff = float(np.max(np.abs(ours - theirs)))
    assert z_diff < 1e-9, f"vectorised z differs from statsmodels' by {z_diff}"
    rho = np.array([0.5, 0.5])
    exact = InhomogeneousBernoulliProcess(ALPHA, rho, lambda d: [d[0] == d[1]], np.array([[-1, 1]]))
    closed = Multinomial(ALPHA, rho)
    worst = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for x in rng.binomial(100, [0.05, 0.07], size=(15, 2)):
            exact.update(x)
            closed.update(x)
            p_exact, p_closed = exact.calculate_p_value(), closed.calculate_p_value()
            worst = max(worst, abs(p_exact - p_closed) / p_closed)
    assert worst < 1e-4, f"savvi: multinomial odds differ from the cvxpy solution by {worst}"
    return {"z_max_abs_diff": z_diff, "savvi_p_max_rel_diff": float(worst)}


# --- simulation -------------------------------------------------------------------------


@dataclass(slots=True)
class Tracker:
    """First decision per replicate: its check (-1: none), direction (+1 promote, -1 roll
    back) and the users sent to arm 1 until then."""

    step: np.ndarray
    direction: np.ndarray
    arm1: np.ndarray

    @classmethod
    def new(cls, batch: int) -> Tracker:
        return cls(np.full(batch, -1), np.zeros(batch, np.int8), np.zeros(batch))

    def see(self, t: int, promote: np.ndarray, rollback: np.ndarray, arm1: np.ndarray) -> None:
        new = (self.step < 0) & (promote | rollback)
        self.step[new] = t
        self.direction[new] = np.where(promote[new], 1, -1)
        self.arm1[new] = arm1[new]


@dataclass(frozen=True, slots=True, kw_only=True)
class Sim:
    scenario: str  # "type1", "power" or "harm"
    means: tuple[float, float]
    bandit: bool
    horizon: int
    replicates: int
    savvi: int  # replicates also run through savvi (fixed split only)
    seed: np.random.SeedSequence

    @property
    def name(self) -> str:
        how = "bandit" if self.bandit else "fixed"
        return f"{self.scenario} {self.means[0]:g}/{self.means[1]:g} {how}"


@dataclass(slots=True)
class Outcome:
    sim: Sim
    trackers: dict[tuple[str, str], Tracker]  # (library, test) -> decisions
    arm1_final: np.ndarray  # users sent to arm 1 by the horizon, (B,)
    seconds: float = 0.0


def simulate(sim: Sim) -> Outcome:
    """Play ``sim`` for all replicates in lockstep; every test sees the same users."""
    from savvi.multinomial import Multinomial

    started = time.perf_counter()
    rng = np.random.default_rng(sim.seed)
    size, steps = sim.replicates, sim.horizon // BATCH
    tests = {k: v for k, v in autoexp_tests().items() if v.adaptive or not sim.bandit}
    states = {k: t.init(2, batch=size) for k, t in tests.items()}
    z_looks = {"peeked": None, f"fixed n={N_STAR_LOOK:,}": N_STAR_LOOK // BATCH - 1}
    z_looks[f"fixed n={sim.horizon:,}"] = steps - 1
    track = {("autoexp", k): Tracker.new(size) for k in tests}
    track |= {("statsmodels", f"z-test {k}"): Tracker.new(size) for k in z_looks}
    use_confseq = not sim.bandit and confseq_status() == "ok"
    if use_confseq:
        track["confseq", "normal-mixture CS"] = Tracker.new(size)
    savvi = (
        [] if sim.bandit else [Multinomial(ALPHA, np.array([0.5, 0.5])) for _ in range(sim.savvi)]
    )
    if savvi:
        track["savvi", "conversion test"] = Tracker.new(len(savvi))
    policy, means = bandit(), np.asarray(sim.means)
    n, s = np.zeros((size, 2)), np.zeros((size, 2))
    fixed = np.full((size, 2), 0.5)
    for t in range(steps):
        pi = policy.allocation(ArmStats(n=n, sum_reward=s)) if sim.bandit else fixed
        arm = (rng.random((size, BATCH)) >= pi[:, :1]).astype(np.int64)  # inverse CDF, K = 2
        reward = (rng.random((size, BATCH)) < means[arm]).astype(np.float64)
        n1, s1 = arm.sum(axis=1), (reward * arm).sum(axis=1)
        s0 = reward.sum(axis=1) - s1
        n += np.stack([BATCH - n1, n1], axis=1)
        s += np.stack([s0, s1], axis=1)
        for k, test in tests.items():
            states[k] = test.update(states[k], arm, reward, pi)
            ev = test.evaluate(states[k])
            track["autoexp", k].see(t, ev.lower[:, 1] > 0.0, ev.upper[:, 1] < 0.0, n[:, 1])
        z = z_stat(n, s)
        for look, at in z_looks.items():
            if at is None or at == t:
                track["statsmodels", f"z-test {look}"].see(t, z > Z_CRIT, z < -Z_CRIT, n[:, 1])
        if use_confseq:
            lower, upper = confseq_bounds(n, s)
            track["confseq", "normal-mixture CS"].see(t, lower > 0.0, upper < 0.0, n[:, 1])
        if savvi:
            tr = track["savvi", "conversion test"]
            conv = np.stack([s0, s1], axis=1).astype(np.int64)
            for b in np.flatnonzero(tr.step < 0):  # a decision is final: stop updating
                savvi[b].update(conv[b])
                if savvi[b].calculate_p_value() < ALPHA:
                    tr.step[b], tr.arm1[b] = t, n[b, 1]
                    tr.direction[b] = 1 if s[b, 1] > s[b, 0] else -1  # rho = 1/2 each
        if (t + 1) % max(steps // 10, 1) == 0:
            print(f"  {sim.name}: {(t + 1) * BATCH:,} users", file=sys.stderr, flush=True)
    return Outcome(sim, track, n[:, 1].copy(), time.perf_counter() - started)


# --- summaries --------------------------------------------------------------------------


def share(mask: np.ndarray) -> dict[str, float]:
    p = float(mask.mean())
    return {"rate": p, "se": math.sqrt(p * (1.0 - p) / mask.size)}


def mean(x: np.ndarray) -> dict[str, float | None]:
    """Mean and its standard error (``None`` when undefined: JSON has no NaN)."""
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else None
    return {"mean": float(x.mean()) if x.size else None, "se": se, "count": int(x.size)}


def summarise(out: Outcome) -> list[dict[str, Any]]:
    sim, rows = out.sim, []
    for (library, test), tr in out.trackers.items():
        decided = tr.step >= 0
        users = np.where(decided, (tr.step + 1) * BATCH, sim.horizon).astype(np.float64)
        promoted, rolled = decided & (tr.direction > 0), decided & (tr.direction < 0)
        arm1 = np.where(rolled, tr.arm1, out.arm1_final[: tr.step.size])
        rows.append(
            {
                "scenario": sim.scenario,
                "means": list(sim.means),
                "allocation": "bandit" if sim.bandit else "fixed 50/50",
                "horizon": sim.horizon,
                "library": library,
                "test": test,
                "replicates": int(tr.step.size),
                "decided": share(decided),
                "promoted": share(promoted),
                "rolled_back": share(rolled),
                "users_to_decision_if_decided": mean(users[decided]),
                "users_to_decision_censored": mean(users),
                "users_to_rollback_if_rolled_back": mean(users[rolled]),
                "users_to_rollback_censored": mean(np.where(rolled, users, sim.horizon)),
                "arm1_users_until_rollback_or_horizon": mean(arm1),
            }
        )
    return rows


def render(head: list[str], body: list[list[str]], left: int = 4) -> str:
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, body)])


def pm(x: dict[str, Any], scale: float = 1.0, digits: int = 3) -> str:
    """``value ± SE`` of a share or a mean, divided by ``scale``."""
    value, se = x.get("rate", x.get("mean")), x["se"]
    if value is None:
        return "-"
    return f"{value / scale:.{digits}f}" + ("" if se is None else f" ± {se / scale:.{digits}f}")


K = 1e3  # user counts are printed in thousands
COLUMNS: dict[str, list[tuple[str, str, float, int]]] = {  # header, row key, scale, digits
    "type1": [("rejection rate", "decided", 1.0, 3)],
    "power": [
        ("power", "promoted", 1.0, 3),
        ("wrong way", "rolled_back", 1.0, 3),
        ("k users | decided", "users_to_decision_if_decided", K, 1),
        ("k users censored", "users_to_decision_censored", K, 1),
    ],
    "harm": [
        ("rolled back", "rolled_back", 1.0, 3),
        ("promoted", "promoted", 1.0, 3),
        ("k users | rolled back", "users_to_rollback_if_rolled_back", K, 1),
        ("k users censored", "users_to_rollback_censored", K, 1),
        ("k users on arm 1", "arm1_users_until_rollback_or_horizon", K, 1),
    ],
}
TITLES = {
    "type1": f"1. Type I error, A/A, checked every {BATCH} users up to {HORIZON:,} users "
    f"(valid: rate <= alpha + 3 sqrt(alpha (1 - alpha) / reps), alpha = {ALPHA})",
    "power": f"2. Power, {BASE:.1%} vs {LIFT:.1%} (+10%), up to {HORIZON:,} users "
    "(k users: thousands, until the first decision; censored: none counts as the horizon)",
    "harm": f"3. Harm, {BASE:.1%} vs {HARM:.2%} (-5%), up to {HARM_HORIZON:,} users "
    "(k users on arm 1: sent to the harmful arm until rollback or the horizon)",
}


def valid(r: dict[str, Any]) -> str:
    limit = ALPHA + 3.0 * math.sqrt(ALPHA * (1.0 - ALPHA) / r["replicates"])
    return "ok" if r["decided"]["rate"] <= limit else "NO"


def tables(rows: list[dict[str, Any]]) -> str:
    parts = []
    for scenario, columns in COLUMNS.items():
        head = ["rates", "library", "test", "allocation", "reps", *(c[0] for c in columns)]
        body = [
            [f"{r['means'][0]:.2%}/{r['means'][1]:.2%}", r["library"], r["test"],
             r["allocation"], str(r["replicates"]), *(pm(r[k], sc, d) for _, k, sc, d in columns)]
            + ([valid(r)] if scenario == "type1" else [])
            for r in rows
            if r["scenario"] == scenario
        ]  # fmt: skip
        head += ["valid"] if scenario == "type1" else []
        parts += [TITLES[scenario], render(head, body)]
    return "\n\n".join(parts)


# --- cost of one update -----------------------------------------------------------------


def timing_rows(calls: int, repeats: int) -> list[dict[str, Any]]:
    """Microseconds per call of each row (median and best of ``repeats`` loops of ``calls``
    calls, or a tenth as many for one look), repeats interleaved across the rows."""
    from savvi.multinomial import Multinomial
    from statsmodels.stats.proportion import proportions_ztest

    rng = np.random.default_rng(SEED + 1)
    arms = rng.integers(0, 2, calls).tolist()
    rewards = (rng.random(calls) < BASE).astype(float).tolist()
    prop = np.array([0.5, 0.5])
    looks = calls // 10
    jobs: dict[tuple[str, str, str], tuple[Callable[[], None], int]] = {}
    server = Server(ThompsonBeta(), 2, rng=np.random.default_rng(0), refresh_every=100)

    def serve() -> None:
        select, update = server.select, server.update
        for r in rewards:
            arm, _, version = select()
            update(arm, r, version)

    def observe(test: SequentialTest) -> Callable[[], None]:
        st, p = test.init(2, 1), prop if isinstance(test, OffPolicyCS) else None

        def run() -> None:
            one = test.observe
            for a, r in zip(arms, rewards, strict=True):
                one(st, a, r, p)

        return run

    def repeat(fn: Callable[..., object], *args: Any, n: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(n):
                fn(*args)

        return run

    server_key = ("autoexp", "Server(ThompsonBeta(), refresh_every=100)", "select + update")
    jobs[server_key] = serve, calls
    for k, test in autoexp_tests().items():
        jobs["autoexp", k, "observe (1 user)"] = observe(test), calls
    for k, test in autoexp_tests().items():
        a, r = np.array([arms[:1000]]), np.array([rewards[:1000]])
        st = test.update(test.init(2, 1), a, r, prop[None, :])
        jobs["autoexp", k, "evaluate (1 look, B=1)"] = repeat(test.evaluate, st, n=looks), looks
    savvi, conversions = Multinomial(ALPHA, prop), [np.array([1, 0]), np.array([0, 1])]

    def convert() -> None:  # savvi sees conversions only: one per call, on a random arm
        for a in arms:
            savvi.update(conversions[a])

    jobs["savvi", "Multinomial", "update (1 conversion)"] = convert, calls
    count, nobs = np.array([3000.0, 2900.0]), np.array([50_000.0, 50_000.0])
    z_test = repeat(proportions_ztest, count, nobs, n=looks)
    jobs["statsmodels", "proportions_ztest", "1 look"] = z_test, looks
    if confseq_status() == "ok":
        from confseq.boundaries import normal_mixture_bound

        bound = repeat(normal_mixture_bound, 20.0, ALPHA, CONFSEQ_V_OPT, ALPHA, False, n=calls)
        jobs["confseq", "normal_mixture_bound", "1 look"] = bound, calls
    seconds: dict[tuple[str, str, str], list[float]] = {key: [] for key in jobs}
    for run, _ in jobs.values():
        run()  # warm-up: numba compilation, caches
    for _ in range(repeats):
        for key, (run, n_calls) in jobs.items():
            seconds[key].append(_timed(run)[0] / n_calls * 1e6)
    base = float(np.median(seconds[server_key]))
    return [
        {"library": lib, "row": row, "what": what, "calls": jobs[lib, row, what][1],
         "us_per_call": us, "median_us": float(np.median(us)), "best_us": min(us),
         "vs_server": float(np.median(us)) / base}
        for (lib, row, what), us in seconds.items()
    ]  # fmt: skip


# --- main -------------------------------------------------------------------------------


def policies_digest() -> str:
    """sha256 of policies/*.py as run (the tree may hold uncommitted edits)."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "policies").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def plan(args: argparse.Namespace) -> list[Sim]:
    cells: list[tuple[str, tuple[float, float], bool, int, int]] = []
    for base in (BASE, 0.30):
        for is_bandit in (False, True):
            cells.append(("type1", (base, base), is_bandit, HORIZON, args.replicates))
    cells.append(("power", (BASE, LIFT), False, HORIZON, args.replicates))
    for is_bandit in (False, True):
        cells.append(("harm", (BASE, HARM), is_bandit, HARM_HORIZON, args.harm_replicates))
    seeds = np.random.SeedSequence(SEED).spawn(len(cells))  # one stream per cell, any --jobs
    return [
        Sim(scenario=c, means=m, bandit=b, horizon=h, replicates=r, seed=seed,
            savvi=min(args.savvi_replicates, r))
        for (c, m, b, h, r), seed in zip(cells, seeds, strict=True)
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few replicates (a smoke run)")
    parser.add_argument("--replicates", type=int, help="type I / power replicates (2000)")
    parser.add_argument("--harm-replicates", type=int, help="harm replicates (500)")
    parser.add_argument("--savvi-replicates", type=int, help="savvi replicates (500)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "sequential.json"
    )
    args = parser.parse_args(argv)
    quick = {"replicates": 200, "harm_replicates": 100, "savvi_replicates": 50}
    full = {"replicates": 2000, "harm_replicates": 500, "savvi_replicates": 500}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    load_start = os.getloadavg()
    started = time.perf_counter()
    progress = clock()

    status = confseq_status()
    progress(f"checking peers (confseq: {status})")
    checks = check_peers()
    sims = plan(args)
    # Longest first, so that the workers finish together; the rows keep the plan's order.
    order = sorted(range(len(sims)), key=lambda i: -sims[i].horizon * sims[i].replicates)
    outcomes: list[Outcome] = [None] * len(sims)  # type: ignore[list-item]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(simulate, sims[i]): i for i in order}
        for future in as_completed(futures):
            out = outcomes[futures[future]] = future.result()
            progress(f"done {out.sim.name} ({out.seconds:.0f}s)")
    rows = [row for out in outcomes for row in summarise(out)]
    progress("timing updates")
    calls = 4_000 if args.quick else 20_000
    timing = timing_rows(calls, repeats=3 if args.quick else 7)
    elapsed = time.perf_counter() - started

    print(tables(rows))
    print(
        f"\n4. Cost of one update, microseconds per call (median and best of loops of {calls:,} "
        "calls, a tenth for one look); x Server: this row's median / Server's. savvi sees "
        "conversions only; confseq's row is the boundary alone, without the statistic.\n"
    )
    head = ["library", "row", "what", "median us", "best us", "x Server"]
    print(render(head, [
        [t["library"], t["row"], t["what"], f"{t['median_us']:.2f}", f"{t['best_us']:.2f}",
         f"{t['vs_server']:.2f}"]
        for t in timing
    ], left=3))  # fmt: skip
    print(f"\nn* = {N_STAR:,.0f} users: the fixed design for +10% on 5% at 80% power")
    print(f"peer checks: {checks}; confseq: {status}")
    load_end = os.getloadavg()
    print(f"load average {load_start[0]:.2f} -> {load_end[0]:.2f}; total {elapsed:.0f}s")

    dists = ("numpy", "scipy", "numba", "statsmodels", "savvi", "cvxpy", "confseq")
    report = {
        "benchmark": "sequential",
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": {k: v for k, v in machine().items() if not k.endswith("_version")}
        | {"loadavg_start": load_start, "loadavg_end": load_end},
        "versions": {dist: _version(dist) for dist in dists},
        "source": source() | {"policies_sha256": policies_digest()},
        "config": {
            "alpha": ALPHA,
            "batch_users": BATCH,
            "horizon": HORIZON,
            "harm_horizon": HARM_HORIZON,
            "means": {"base": BASE, "lift": LIFT, "harm": HARM},
            "mde": MDE,
            "n_star": N_STAR,
            "z_fixed_look": N_STAR_LOOK,
            "tests": {k: repr(v) for k, v in autoexp_tests().items()},
            "bandit": repr(bandit()),
            "confseq": {"v_opt": CONFSEQ_V_OPT, "min_per_arm": MIN_PER_ARM, "two_sided": True},
            "savvi": "Multinomial(alpha, theta_0=[0.5, 0.5], k=100) on conversion counts",
            "replicates": args.replicates,
            "harm_replicates": args.harm_replicates,
            "savvi_replicates": args.savvi_replicates,
            "jobs": args.jobs,
            "quick": args.quick,
            "seed": SEED,
        },
        "confseq": status,
        "peer_checks": checks,
        "simulations": {out.sim.name: out.seconds for out in outcomes},
        "rows": rows,
        "timing": timing,
        "elapsed_s": elapsed,
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
