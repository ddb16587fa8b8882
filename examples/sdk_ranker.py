"""The SDK on simulated users: two rankers, the new one converts better; autoexp learns
it on a capped share of traffic and promotes it.

    AUTOEXP_SECRET=$(python -c 'import secrets; print(secrets.token_hex(16))') \\
        python examples/sdk_ranker.py [--store sqlite:///ranker.db] [--users 20000]
"""

from __future__ import annotations

import argparse
import random

import autoexp


def build(store: str, seed: int) -> autoexp.Experiment:
    exp = autoexp.Experiment(
        "ranker",
        policy="thompson-beta",
        explore_share=0.5,  # at most half the users see the new ranker while it is tested
        conservative_alpha=0.05,  # and served conversion stays >= 95% of control's
        test="off-policy-cs",
        test_params={"n_expected": 5_000},
        refresh_every=50,
        store=store,
        seed=seed,
    )

    @exp.control
    def rank_v1(query: str) -> list[str]:
        return sorted(query.split())

    @exp.alternative
    def rank_v2(query: str) -> list[str]:
        return sorted(query.split(), key=len)

    return exp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///ranker.db")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    exp = build(args.store, args.seed)
    users = random.Random(args.seed)
    conversion = {"rank_v1": 0.30, "rank_v2": 0.36}  # the simulated truth (+20%)
    for i in range(args.users):
        answer = exp("red fox jumps", unit=f"user-{i}")
        if answer.decision is not None:
            converted = users.random() < conversion[answer.decision.alternative]
            exp.reward(answer.decision.token, 1.0 if converted else 0.0)
        status = exp.status()
        if "promoted" in status["status"]:
            winner = status["alternatives"][status["status"].index("promoted")]
            print(f"promoted {winner} after {i + 1} users; allocation {status['allocation']}")
            return 0
    print(f"no decision after {args.users} users: {exp.status()['status']}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
