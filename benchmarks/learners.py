"""Cost of one contextual decision and one update: autoexp's learners against the libraries.

Run from the repository root::

    python benchmarks/learners.py [--quick] [--out benchmarks/results/learners.json]

One process, one machine, one game for every row: K = 4 arms, contexts of D = 5 numbers
(a constant 1 and four standard normals), Bernoulli rewards with logistic means
``sigmoid(x . theta_k)``; contexts and reward uniforms are pre-drawn once and shared. Each
round is one decision (autoexp: ``select``, which computes the exact allocation and draws
from it; a peer: its own way to choose) and one update; each is timed on its own with
``time.perf_counter`` (garbage collector off), after a warm-up on another instance. Pairs:

- ``lin-ucb``, ``lin-ts``: ``policies.LinUCB`` / ``LinTS`` against MABWiser's
  ``LinUCB`` / ``LinTS`` (same ridge and width: ``alpha``, ``l2_lambda=1``);
- ``vw-cb squarecb`` / ``epsilon``: ``policies.VWExplore`` against the same
  ``vowpalwabbit.Workspace`` arguments used directly (text examples, ``predict`` for the
  pmf, a draw from it, ``learn``);
- ``river-ts``: ``policies.RiverThompson`` against river used directly: the same n_boot
  logistic regressions per arm, one copy per arm picked at random and the argmax of their
  predictions (K predictions, no propensities), the same Poisson(1)-weighted training.

``vs peer`` is the peer's median time divided by the row's (above 1: the row is faster).
"""

from __future__ import annotations

import gc
import importlib.metadata
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script, this file's folder is first on sys.path and its name would shadow the
# `policies` package: the repository root goes in front.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.policies import bench_parser, clock, report_head, source, write_report
from policies import LinTS, LinUCB, RiverThompson, VWExplore
from policies.base import Decision, PolicyBase

K = 4
D = 5
SEED = 20_240_707
N_BOOT = 10
RIVER_LR = 0.05

#: A player runs ``rounds`` rounds of (contexts, uniforms, means) from ``start`` and returns
#: (seconds choosing, seconds updating, total reward).
Player = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[float, float, float]]
Make = Callable[[int], Player]  # seed -> a fresh player


def game(rounds: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contexts (T, D), reward uniforms (T,), arm means (T, K)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(scale=0.8, size=(K, D))
    x = np.concatenate([np.ones((rounds, 1)), rng.normal(size=(rounds, D - 1))], axis=1)
    return x, rng.random(rounds), 1.0 / (1.0 + np.exp(-(x @ theta.T)))


def ours(policy: PolicyBase, *, sample: bool = False) -> Make:
    """autoexp: ``select`` (exact allocation, then a draw) or ``sample_arm``, then ``update``."""

    def make(seed: int) -> Player:
        rng = np.random.default_rng(seed)
        state = policy.init(K, 1)
        uniform = np.full((1, K), 1.0 / K)

        def play(x: np.ndarray, u: np.ndarray, means: np.ndarray) -> tuple[float, float, float]:
            nonlocal state
            choose = update = total = 0.0
            clock_ = time.perf_counter
            for t in range(u.shape[0]):
                xt = x[t : t + 1]
                t0 = clock_()
                if sample:
                    arm = policy.sample_arm(state, rng, xt)
                    decision = Decision(arm, uniform)
                else:
                    decision = policy.select(state, rng, xt)
                t1 = clock_()
                a = int(decision.arm[0])
                r = 1.0 if u[t] < means[t, a] else 0.0
                t2 = clock_()
                state = policy.update(state, decision, np.array([r]), xt)
                t3 = clock_()
                choose += t1 - t0
                update += t3 - t2
                total += r
            return choose, update, total

        return play

    return make


def mabwiser(kind: str, alpha: float) -> Make:
    """MABWiser ``LinUCB`` / ``LinTS``: ``predict`` then ``partial_fit`` of one row."""
    from mabwiser.mab import MAB, LearningPolicy

    def make(seed: int) -> Player:
        policy = getattr(LearningPolicy, kind)(alpha=alpha, l2_lambda=1.0)
        mab = MAB(arms=list(range(K)), learning_policy=policy, seed=seed)
        # predict() refuses to run before fit(): one pull per arm on a fixed context.
        start = np.ones((K, D))
        mab.fit(decisions=list(range(K)), rewards=[0.0] * K, contexts=start)

        def play(x: np.ndarray, u: np.ndarray, means: np.ndarray) -> tuple[float, float, float]:
            choose = update = total = 0.0
            clock_ = time.perf_counter
            predict, partial_fit = mab.predict, mab.partial_fit
            for t in range(u.shape[0]):
                xt = x[t : t + 1]
                t0 = clock_()
                a = int(predict(contexts=xt))
                t1 = clock_()
                r = 1.0 if u[t] < means[t, a] else 0.0
                t2 = clock_()
                partial_fit(decisions=[a], rewards=[r], contexts=xt)
                t3 = clock_()
                choose += t1 - t0
                update += t3 - t2
                total += r
            return choose, update, total

        return play

    return make


def vw_direct(arguments: list[str]) -> Make:
    """vowpalwabbit used directly: text examples, ``predict`` (the pmf), a draw, ``learn``."""
    import vowpalwabbit

    def make(seed: int) -> Player:
        ws = vowpalwabbit.Workspace(arg_list=arguments)
        draw = random.Random(seed).random
        actions = [f"|a {k}" for k in range(K)]

        def play(x: np.ndarray, u: np.ndarray, means: np.ndarray) -> tuple[float, float, float]:
            choose = update = total = 0.0
            clock_ = time.perf_counter
            rows = x.tolist()
            for t in range(u.shape[0]):
                t0 = clock_()
                shared = "shared |s " + " ".join(f"{i}:{v:.9g}" for i, v in enumerate(rows[t]))
                pmf = ws.predict([shared, *actions])
                target, a, acc = draw() * sum(pmf), K - 1, 0.0
                for k, p in enumerate(pmf):
                    acc += p
                    if target < acc:
                        a = k
                        break
                t1 = clock_()
                r = 1.0 if u[t] < means[t, a] else 0.0
                t2 = clock_()
                lines = [shared, *actions]
                lines[1 + a] = f"0:{1.0 - r}:{pmf[a] / sum(pmf):.9g} {actions[a]}"
                ws.learn(lines)
                t3 = clock_()
                choose += t1 - t0
                update += t3 - t2
                total += r
            return choose, update, total

        return play

    return make


def river_direct() -> Make:
    """river used directly: one random copy per arm, argmax, Poisson-weighted learning."""
    from river import linear_model, optim

    def make(seed: int) -> Player:
        rng = np.random.default_rng(seed)
        models = [
            [linear_model.LogisticRegression(optimizer=optim.SGD(RIVER_LR)) for _ in range(N_BOOT)]
            for _ in range(K)
        ]

        def play(x: np.ndarray, u: np.ndarray, means: np.ndarray) -> tuple[float, float, float]:
            choose = update = total = 0.0
            clock_ = time.perf_counter
            rows = x.tolist()
            for t in range(u.shape[0]):
                t0 = clock_()
                features = dict(enumerate(rows[t]))
                picks = rng.integers(N_BOOT, size=K).tolist()
                scores = [
                    models[k][j].predict_proba_one(features)[True] for k, j in enumerate(picks)
                ]
                best = max(scores)
                ties = [k for k, s in enumerate(scores) if s == best]
                a = ties[int(rng.integers(len(ties)))] if len(ties) > 1 else ties[0]
                t1 = clock_()
                r = 1.0 if u[t] < means[t, a] else 0.0
                t2 = clock_()
                weights = rng.poisson(1.0, N_BOOT).tolist()
                for j, w in enumerate(weights):
                    if w:
                        models[a][j].learn_one(features, r == 1.0, w=float(w))
                t3 = clock_()
                choose += t1 - t0
                update += t3 - t2
                total += r
            return choose, update, total

        return play

    return make


def rows_to_run() -> list[dict[str, Any]]:
    """Every (pair, library) row: labels and how to make a player."""
    squarecb = VWExplore(dim=D)
    epsilon = VWExplore(dim=D, explore="epsilon", epsilon=0.05)
    river_ts = RiverThompson(dim=D, n_boot=N_BOOT, lr=RIVER_LR)
    vw = importlib.metadata.version("vowpalwabbit")
    rv = importlib.metadata.version("river")
    mw = importlib.metadata.version("mabwiser")
    ax = importlib.metadata.version("autoexp")
    return [
        {"pair": "lin-ucb", "library": "autoexp", "version": ax, "how": "LinUCB select+update",
         "make": ours(LinUCB(dim=D, alpha=1.0, ridge=1.0))},
        {"pair": "lin-ucb", "library": "mabwiser", "version": mw, "peer": True,
         "how": "LinUCB(alpha=1) predict+partial_fit", "make": mabwiser("LinUCB", 1.0)},
        {"pair": "lin-ts", "library": "autoexp", "version": ax, "how": "LinTS select (exact)",
         "make": ours(LinTS(dim=D, noise_sd=0.5, ridge=1.0))},
        {"pair": "lin-ts", "library": "autoexp", "version": ax, "how": "LinTS sample_arm",
         "make": ours(LinTS(dim=D, noise_sd=0.5, ridge=1.0), sample=True)},
        {"pair": "lin-ts", "library": "mabwiser", "version": mw, "peer": True,
         "how": "LinTS(alpha=0.5) predict+partial_fit", "make": mabwiser("LinTS", 0.5)},
        {"pair": "vw-cb squarecb", "library": "autoexp", "version": ax,
         "how": "VWExplore select+update", "make": ours(squarecb)},
        {"pair": "vw-cb squarecb", "library": "vowpalwabbit", "version": vw, "peer": True,
         "how": "Workspace predict+learn", "make": vw_direct(squarecb.vw_arguments())},
        {"pair": "vw-cb epsilon", "library": "autoexp", "version": ax,
         "how": "VWExplore select+update", "make": ours(epsilon)},
        {"pair": "vw-cb epsilon", "library": "vowpalwabbit", "version": vw, "peer": True,
         "how": "Workspace predict+learn", "make": vw_direct(epsilon.vw_arguments())},
        {"pair": "river-ts", "library": "autoexp", "version": ax,
         "how": f"RiverThompson select (exact, {K}x{N_BOOT} predictions)", "make": ours(river_ts)},
        {"pair": "river-ts", "library": "autoexp", "version": ax,
         "how": "RiverThompson sample_arm", "make": ours(river_ts, sample=True)},
        {"pair": "river-ts", "library": "river", "version": rv, "peer": True,
         "how": f"{K} sampled copies (no propensities)", "make": river_direct()},
    ]  # fmt: skip


def learner_process(rewards: int, repeats: int) -> list[dict[str, Any]]:
    """Rewards per second of ``autoexp learn``'s loop (:class:`autoexp.learn.Learner`) on a
    SQLite store: read the log, join, train, gate up to 3 pending candidates (one model
    prediction each per row, plus the deployed one's), propose every 1,000 rewards."""
    import tempfile

    from autoexp.learn import Learner
    from autoexp.store import open_store
    from policies.gate import Gate

    x, u, means = game(rewards, SEED + 7)
    rng = np.random.default_rng(SEED + 8)
    arm = rng.integers(0, K, rewards)
    reward = (u < means[np.arange(rewards), arm]).astype(float)
    records: list[dict[str, Any]] = []
    for i in range(rewards):
        records.append(
            {"type": "decision", "decision_id": f"d{i}", "time": float(i),
             "context": x[i].tolist(), "arm": int(arm[i]), "propensity": 1 / K,
             "allocation": [1 / K] * K}
        )  # fmt: skip
        records.append(
            {"type": "reward", "decision_id": f"d{i}", "arm": int(arm[i]),
             "reward": float(reward[i]), "reward_time": float(i)}
        )  # fmt: skip
    out = []
    for policy in (VWExplore(dim=D), RiverThompson(dim=D, n_boot=N_BOOT, lr=RIVER_LR)):
        rates = []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                store = open_store(f"sqlite:///{tmp}/bench.db")
                store.declare("bench", {"n": (1, K)})
                store.set("bench", "alternatives", json.dumps([str(k) for k in range(K)]))
                store.append("bench", records)
                learner = Learner(
                    store, "bench", policy, gate=Gate(max_weight=float(K)), publish_every=1_000
                )
                t0 = time.perf_counter()
                n = learner.step()
                rates.append(n / (time.perf_counter() - t0))
                deployed = learner.deployed
                store.close()
        rates.sort()
        out.append(
            {"policy": policy.name, "store": "sqlite", "rewards": rewards,
             "rewards_per_s": {"median": float(np.median(rates)), "best": rates[-1]},
             "deployed_versions": deployed}
        )  # fmt: skip
    return out


def learner_table(rows: list[dict[str, Any]]) -> str:
    """The learner process's rows as a Markdown table."""
    lines = [
        "| learner | store | rewards | rewards/s (median) | best | versions deployed |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = r["rewards_per_s"]
        lines.append(
            f"| {r['policy']} | {r['store']} | {r['rewards']} | {rate['median']:.0f} "
            f"| {rate['best']:.0f} | {r['deployed_versions']} |"
        )
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    head = [
        "pair",
        "library",
        "what is timed",
        "choose us",
        "update us",
        "total us",
        "vs peer",
        "mean reward",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = r.get("vs_peer")
        cells = [
            r["pair"],
            f"{r['library']} {r['version']}",
            r["how"],
            f"{r['us_choose']['median']:.1f}",
            f"{r['us_update']['median']:.1f}",
            f"{r['us_total']['median']:.1f} (best {r['us_total']['best']:.1f})",
            "-" if ratio is None else f"{ratio:.2f}x",
            f"{r['mean_reward']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = bench_parser(__doc__, "learners", "fewer rounds (a smoke run)").parse_args(argv)
    rounds = 400 if args.quick else 3_000
    warmup = 100 if args.quick else 300
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    progress = clock()
    x, u, means = game(rounds + warmup, SEED)
    timed = (x[warmup:], u[warmup:], means[warmup:])
    jobs = rows_to_run()
    for i, job in enumerate(jobs):
        progress(f"warming up {job['pair']} / {job['library']} ({job['how']})")
        job["make"](SEED - 1 - i)(x[:warmup], u[:warmup], means[:warmup])
        job["runs"] = []
    for rep in range(args.repeats):  # interleaved: a burst of load spreads over the rows
        progress(f"repeat {rep + 1} of {args.repeats}")
        for i, job in enumerate(jobs):
            play = job["make"](SEED + 1_000 * (i + 1) + rep)
            gc.collect()
            gc.disable()
            try:
                job["runs"].append(play(*timed))
            finally:
                gc.enable()
    out: list[dict[str, Any]] = []
    for job in jobs:
        runs = job["runs"]
        row = {k: v for k, v in job.items() if k not in ("make", "runs")}
        for key, pick in (("choose", 0), ("update", 1)):
            us = sorted(r[pick] / rounds * 1e6 for r in runs)
            row[f"us_{key}"] = {"median": float(np.median(us)), "best": us[0]}
        total = sorted((r[0] + r[1]) / rounds * 1e6 for r in runs)
        row["us_total"] = {"median": float(np.median(total)), "best": total[0]}
        row["mean_reward"] = float(np.mean([r[2] for r in runs]) / rounds)
        row["seconds"] = [[r[0], r[1]] for r in runs]
        out.append(row)
    for row in out:
        peer = next((p for p in out if p["pair"] == row["pair"] and p.get("peer")), None)
        if peer is not None and not row.get("peer"):
            row["vs_peer"] = peer["us_total"]["median"] / row["us_total"]["median"]
    markdown = table(out)
    print(markdown)
    progress("the learner process (autoexp learn) on a SQLite store")
    process = learner_process(1_000 if args.quick else 6_000, args.repeats)
    process_markdown = learner_table(process)
    print("\n" + process_markdown)
    best_possible = float(means[warmup:].max(axis=1).mean())
    print(f"\nmean reward of the best arm per context (an oracle): {best_possible:.3f}")
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    elapsed = time.perf_counter() - started
    report = report_head("learners", load_start, load_end) | {
        "source": source(),
        "settings": {
            "arms": K,
            "dim": D,
            "rounds": rounds,
            "warmup": warmup,
            "repeats": args.repeats,
            "n_boot": N_BOOT,
            "river_lr": RIVER_LR,
            "vowpalwabbit_version": importlib.metadata.version("vowpalwabbit"),
            "best_arm_mean_reward": best_possible,
        },
        "rows": out,
        "table_markdown": markdown,
        "learner_process": process,
        "learner_process_markdown": process_markdown,
        "elapsed_s": elapsed,
    }
    write_report(args.out, report)
    print(f"total {elapsed:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
