"""The runner: B replicates x T steps of the whole decision stack, in lockstep.

At every step, for every replicate: the environment's context, the policy stack's
allocation (recomputed every ``refresh_every`` steps, as a serving replica does; arms not
yet entered or rolled back get nothing, their share goes to control; a promoted arm takes
all traffic), one arm drawn from it with its exact propensity, the reward, and its
arrival after the environment's delay. Arrived rewards update the policy, the sequential
test and the guardrails through the same ``policies`` code the runtime runs; every
``check_every`` steps the promotion rule reads the evidence.

Recorded per replicate: pseudo-regret against the best arm present (entered), reward lost
against control alone, whether the conservative constraint ``served >= (1 - alpha)
control`` ever broke, when (and which arm) was promoted, when each arm was rolled back,
pulls of arms worse than control, pulls per arm; and, over time, the mean allocation and
the regret's mean and quantiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from policies.base import Decision, FloatArray, IntArray, PolicyBase, draw
from policies.promotion import PROMOTED, ROLLED_BACK, PromotionRule, Transition

from .envs import Delayed

BoolArray = npt.NDArray[np.bool_]

__all__ = ["Result", "Scenario", "run"]


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """One simulated experiment (see the module docstring).

    Parameters
    ----------
    env : an environment from :mod:`simulators.envs`
    policy : the policy stack, e.g. ``TrafficCap(policy=ConservativeBudget(policy=...))``
    steps, replicates : T and B
    seed : the replicates' streams come from ``SeedSequence(seed)``
    refresh_every : steps between allocation recomputes
    test : a sequential test from :mod:`policies.sequential` (``None``: no lifecycle)
    guardrails : guardrails fed the reward (harm on the primary metric)
    rule : the promotion rule (default ``PromotionRule(test_name=test.name)``)
    check_every : steps between looks of the rule
    budget_alpha : count replicates where served reward fell below ``(1 - budget_alpha)``
        times control's (the conservative constraint), in expectation given the arms played
    snapshots : how many points of the curves over time to keep
    """

    env: Any
    policy: PolicyBase
    steps: int
    replicates: int = 1000
    seed: int = 0
    refresh_every: int = 1
    test: Any = None
    guardrails: tuple[Any, ...] = ()
    rule: PromotionRule | None = None
    check_every: int = 100
    budget_alpha: float | None = None
    snapshots: int = 100

    def __post_init__(self) -> None:
        for name in ("steps", "replicates", "refresh_every", "check_every", "snapshots"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"scenario.{name}: must be an integer >= 1 (got {value!r})")
        if not isinstance(self.policy, PolicyBase):
            raise TypeError(f"scenario.policy: must be a policy (got {type(self.policy).__name__})")
        if self.budget_alpha is not None and not 0.0 < self.budget_alpha < 1.0:
            raise ValueError(
                f"scenario.budget_alpha: must be in (0, 1) (got {self.budget_alpha!r})"
            )
        if (self.guardrails or self.rule is not None) and self.test is None:
            raise ValueError("scenario.test: guardrails and a rule need a sequential test")


@dataclass(frozen=True)
class Result:
    """Per-replicate outcomes (arrays with B first) and curves over time."""

    regret: FloatArray
    loss_vs_control: FloatArray
    violated: BoolArray
    promoted_at: FloatArray
    promoted_arm: IntArray
    rolled_back_at: FloatArray
    harmful_pulls: FloatArray
    pulls: FloatArray
    steps: IntArray
    allocation: FloatArray
    regret_curve: FloatArray
    regret_quantiles: FloatArray
    transitions: list[Transition] = field(repr=False)

    def summary(self) -> dict[str, float]:
        """Means over replicates, and the rates users tune on."""
        b = self.regret.shape[0]
        promoted = np.isfinite(self.promoted_at)
        return {
            "replicates": float(b),
            "regret_mean": float(self.regret.mean()),
            "regret_p99": float(np.quantile(self.regret, 0.99)),
            "loss_vs_control_mean": float(self.loss_vs_control.mean()),
            "loss_vs_control_p99": float(np.quantile(self.loss_vs_control, 0.99)),
            "violation_rate": float(self.violated.mean()),
            "promotion_rate": float(promoted.mean()),
            "steps_to_promotion_mean": float(self.promoted_at[promoted].mean())
            if promoted.any()
            else float("nan"),
            "harmful_pulls_mean": float(self.harmful_pulls.mean()),
        }


def _live_mask(
    t: int, entry: IntArray, status: npt.NDArray[np.int8]
) -> tuple[BoolArray, BoolArray]:
    """(live (B, K), promoted rows (B,)): arms that may be played at step t."""
    live = np.broadcast_to(entry <= t, status.shape).copy()
    live &= status != ROLLED_BACK
    live[:, 0] = True
    return live, (status == PROMOTED).any(axis=1)


def _restrict(
    alloc: FloatArray, live: BoolArray, status: npt.NDArray[np.int8], done: BoolArray
) -> FloatArray:
    out = np.where(live, alloc, 0.0)
    # control takes what masked arms had; never below 0 from rounding (tests check [0, 1])
    out[:, 0] = np.maximum(out[:, 0] + 1.0 - out.sum(axis=1), 0.0)
    if done.any():  # a promoted arm takes all of its row's traffic
        out[done] = (status[done] == PROMOTED).astype(np.float64)
    return out


def _masked(inc: Any, rows: BoolArray) -> Any:
    """An additive increment with the rows not in ``rows`` zeroed."""
    m = rows.astype(np.float64)
    return inc._map(lambda a: a * m.reshape((-1,) + (1,) * (a.ndim - 1)))


def run(scenario: Scenario, *, progress: Any = None) -> Result:
    """Run the scenario; ``progress(step)`` is called every ``check_every`` steps if given."""
    sc, env, policy = scenario, scenario.env, scenario.policy
    b, k, steps = sc.replicates, env.n_arms, sc.steps
    delayed = isinstance(env, Delayed)
    if delayed and not policy.additive:
        raise ValueError(
            f"scenario.policy: delayed rewards need an additive policy ({policy.name} is not)"
        )
    rng = np.random.default_rng(np.random.SeedSequence(sc.seed))
    rule = (
        sc.rule
        if sc.rule is not None
        else (PromotionRule(test_name=sc.test.name) if sc.test is not None else None)
    )
    state = policy.init(k, b)
    tstate = sc.test.init(k, b) if sc.test is not None else None
    gstates = [g.init(k, b) for g in sc.guardrails]
    status = np.zeros((b, k), dtype=np.int8)
    entry = np.asarray(env.entry)

    regret = np.zeros(b)
    loss = np.zeros(b)
    served = np.zeros(b)
    control = np.zeros(b)
    violated = np.zeros(b, dtype=bool)
    harmful = np.zeros(b)
    pulls = np.zeros((b, k))
    promoted_at = np.full(b, np.inf)
    promoted_arm = np.full(b, -1, dtype=np.int64)
    rolled_back_at = np.full((b, k), np.inf)
    marks = np.unique(np.linspace(0, steps - 1, min(sc.snapshots, steps)).astype(np.int64))
    alloc_curve = np.zeros((marks.size, k))
    regret_curve = np.zeros(marks.size)
    regret_q = np.zeros((marks.size, 3))
    transitions: list[Transition] = []
    pending: dict[int, list[tuple[BoolArray, IntArray, FloatArray, FloatArray]]] = {}
    alloc = np.empty((b, k))
    mark = 0

    for t in range(steps):
        context = env.context(t, rng, b)
        live, done = _live_mask(t, entry, status)
        if t % sc.refresh_every == 0:
            alloc = policy.allocation(state)
        p = _restrict(alloc, live, status, done)
        arm = draw(p, rng.random(b))
        reward = env.sample(t, arm, rng, context)
        means = np.broadcast_to(env.means(t, context), (b, k))
        got = means[np.arange(b), arm]
        # against the best arm that exists now, whatever the lifecycle did with it
        best = np.where(entry <= t, means, -np.inf).max(axis=1)
        regret += best - got
        loss += means[:, 0] - got
        served += got
        control += means[:, 0]
        harmful += got < means[:, 0]
        pulls[np.arange(b), arm] += 1.0
        if sc.budget_alpha is not None:
            violated |= served < (1.0 - sc.budget_alpha) * control - 1e-9

        # Rewards reach the learners now or after their delay.
        if delayed:
            delay = env.delay(t, rng, b)
            for d in np.unique(delay):
                rows = delay == d
                pending.setdefault(t + int(d), []).append((rows, arm, reward, p))
            arrivals = pending.pop(t, [])
        else:
            arrivals = [(np.ones(b, dtype=bool), arm, reward, p)]
        for rows, a, r, prop in arrivals:
            decision = Decision(a, prop)
            if rows.all():
                state = policy.update(state, decision, r)
            else:
                state = state + _masked(policy.increment(decision, r), rows)
            if tstate is not None:
                inc = sc.test.increment(tstate, a[:, None], r[:, None], prop)
                tstate = tstate + (inc if rows.all() else _masked(inc, rows))
            for i, g in enumerate(sc.guardrails):
                ginc = g.test.increment(gstates[i], a[:, None], r[:, None], prop)
                gstates[i] = gstates[i] + (ginc if rows.all() else _masked(ginc, rows))

        if rule is not None and ((t + 1) % sc.check_every == 0 or t == steps - 1):
            ev = sc.test.evaluate(tstate)
            gev = [(g.name, g.evaluate(gs)) for g, gs in zip(sc.guardrails, gstates, strict=True)]
            status, changes = rule.step(status, ev, gev, t=np.full(b, float(t + 1)))
            for c in changes:
                if c.new == "promoted":
                    promoted_at[c.row] = t + 1
                    promoted_arm[c.row] = c.arm
                elif c.new == "rolled_back":
                    rolled_back_at[c.row, c.arm] = t + 1
            transitions.extend(changes)
            if progress is not None:
                progress(t + 1)

        if mark < marks.size and t == marks[mark]:
            alloc_curve[mark] = p.mean(axis=0)
            regret_curve[mark] = regret.mean()
            regret_q[mark] = np.quantile(regret, [0.05, 0.5, 0.95])
            mark += 1

    return Result(
        regret=regret,
        loss_vs_control=loss,
        violated=violated,
        promoted_at=promoted_at,
        promoted_arm=promoted_arm,
        rolled_back_at=rolled_back_at,
        harmful_pulls=harmful,
        pulls=pulls,
        steps=marks + 1,
        allocation=alloc_curve,
        regret_curve=regret_curve,
        regret_quantiles=regret_q,
        transitions=transitions,
    )
