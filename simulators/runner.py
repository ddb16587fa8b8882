"""The runner: B replicates x T steps of the whole decision stack, in lockstep.

At every step, for every replicate: the environment's context, the policy stack's
allocation (arms not yet entered or rolled back get nothing, their share goes to control;
a promoted arm takes all traffic), one arm drawn from it with its exact propensity, the
reward, and its arrival after the environment's delay. Rewards update the policy, the
sequential test and the guardrails through the same ``policies`` code the runtime runs;
every ``check_every`` steps the promotion rule reads the evidence.

What the runtime reads from shared state, it reads every ``refresh_every`` steps (a
serving replica recomputes its allocation on a cadence, not per request). So the runner
works in segments between refreshes, looks of the rule and arrivals of new arms: inside
one, the allocation is fixed, arms are drawn step by step, and the segment's observations
are added to the policy and test states at once (additive states: the same sums as one at
a time; the tests' predictable bets are those of the segment's start, as for a replica's
increments). With ``refresh_every=1`` and nothing downstream needing propensities, arms
come from ``policy.sample_arm`` (the same law, without computing the allocation). Delayed
rewards are applied step by step as they arrive.

Contextual policies (``policy.context_dim`` set, e.g. :data:`policies.CONTEXTUAL`) get each
step's context from the environment: inside a segment the state is the one read at its
start and the allocation is that state's at each user's own context (a replica's
recompute gives it the state; every request brings its context); each observation's
increment takes its context. Context-free policies are given no context, even by an
environment that draws one (they refuse it): they learn the population's best arm.

Recorded per replicate: pseudo-regret against the best arm present (entered) for each
user's context (``env.means(t, context)`` row by row), reward lost
against control alone, control's own expected reward (the conservative budget's scale),
whether the constraint ``served >= (1 - alpha) control`` ever broke, when (and which arm)
was promoted and whether that arm was in fact no better than control (a false
promotion), when each arm was rolled back and whether an arm worse than control was left
live (a missed rollback), pulls of arms worse than control, pulls per arm; and, over time,
the mean allocation and the regret's mean, standard deviation and quantiles.

With a drift detector (``Scenario.drift``, a :class:`~policies.drift.PageHinkley`), each
replicate watches its champion as the runtime does (:mod:`simulators.drift`): after a
promotion, the promoted arm's rewards that arrive from then on are fed to the detector in
order; when it signals a drop, the replicate starts a new epoch at the end of the segment
(every alternative exploring again, the policy's, test's and guardrails' rows back to
their initial values, the detector off until the next promotion). Recorded: the step of
every detection, the arm promoted in every epoch, and the environment's change step when
it has one (:class:`~simulators.envs.AbruptChange`), from which :meth:`Result.summary`
gives the time to detect, false reopenings and how often the new best arm is promoted
after one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from policies.base import ArmStatsPolicy, Decision, FloatArray, IntArray, PolicyBase
from policies.drift import PageHinkley
from policies.nonstationary import DiscountedThompson
from policies.promotion import EXPLORING, PROMOTED, ROLLED_BACK, PromotionRule, Transition
from policies.safety import ConservativeBudget

from .drift import Watch, change_step, drift_summary, reset_rows
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
    seed, spawn_key : the replicates' streams come from ``SeedSequence(seed, spawn_key=...)``
        (a sweep gives cell ``i`` the key ``(i,)``: ``SeedSequence(seed).spawn(n)[i]``)
    refresh_every : steps between allocation recomputes
    test : a sequential test from :mod:`policies.sequential` (``None``: no lifecycle)
    guardrails : guardrails fed the reward (harm on the primary metric)
    rule : the promotion rule (default ``PromotionRule(test_name=test.name)``)
    check_every : steps between looks of the rule
    budget_alpha : count replicates where served reward fell below ``(1 - budget_alpha)``
        times control's (the conservative constraint), in expectation given the arms played
    snapshots : how many points of the curves over time to keep
    drift : a drop detector watching each replicate's champion after a promotion; a drop
        reopens exploration in that replicate (needs ``test``; see the module docstring)
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
    spawn_key: tuple[int, ...] = ()
    drift: PageHinkley | None = None

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
        if self.drift is not None:
            if not isinstance(self.drift, PageHinkley):
                raise TypeError(
                    f"scenario.drift: must be a PageHinkley detector "
                    f"(got {type(self.drift).__name__})"
                )
            if self.test is None:
                raise ValueError(
                    "scenario.test: a drift detector needs a sequential test (it watches "
                    "the arm the test promoted)"
                )
        layer: Any = self.policy
        while layer is not None:
            if isinstance(layer, ConservativeBudget) and layer.refresh < self.refresh_every:
                raise ValueError(
                    f"scenario.refresh_every: allocations are reused for {self.refresh_every} "
                    f"steps but the conservative budget reserves for {layer.refresh}; "
                    f"use ConservativeBudget(refresh={self.refresh_every}, ...)"
                )
            layer = getattr(layer, "policy", None)
        need = self.policy.context_dim
        if need is not None:
            width = int(getattr(self.env, "dim", 0) or 0)
            if width == 0:
                raise ValueError(
                    f"scenario.policy: {self.policy.name} needs a context of {need} numbers "
                    f"per user but the environment ({self.env.name}) gives none; use a "
                    "contextual environment (segments, linear, logistic)"
                )
            if width != need:
                raise ValueError(
                    f"scenario.policy.dim: must equal the environment's context width "
                    f"{width} (got {need})"
                )


@dataclass(frozen=True)
class Result:
    """Per-replicate outcomes (arrays with B first) and curves over time."""

    regret: FloatArray
    loss_vs_control: FloatArray
    control_reward: FloatArray
    violated: BoolArray
    promoted_at: FloatArray
    promoted_arm: IntArray
    rolled_back_at: FloatArray
    false_promotion: BoolArray
    missed_rollback: BoolArray
    harmful_pulls: FloatArray
    pulls: FloatArray
    steps: IntArray
    allocation: FloatArray
    regret_curve: FloatArray
    regret_quantiles: FloatArray
    transitions: list[Transition] = field(repr=False)
    #: (M,) standard deviation of the cumulative regret over replicates at each step in
    #: ``steps`` (``regret_curve`` +- 2 sd / sqrt(B): its Monte-Carlo band)
    regret_sd: FloatArray | None = field(default=None, repr=False)
    #: with a drift detector: (B, E) steps (users so far) of each replicate's detections,
    #: in order, ``inf`` past its last (E >= 1: the most detections in any replicate)
    drift_at: FloatArray | None = field(default=None, repr=False)
    #: with a drift detector: (B, E + 1) the arm promoted in each epoch (-1: none) and when
    epoch_arm: IntArray | None = field(default=None, repr=False)
    epoch_promoted_at: FloatArray | None = field(default=None, repr=False)
    #: the environment's known change step (``AbruptChange.at``), else ``None``
    change_at: int | None = None
    #: the best arm at the end (population means over users)
    best_arm: int = -1

    def summary(self) -> dict[str, float]:
        """Means over replicates, and the rates users tune on (with a drift detector, also
        :meth:`drift_summary`'s)."""
        b = self.regret.shape[0]
        promoted = np.isfinite(self.promoted_at)
        out = {
            "replicates": float(b),
            "regret_mean": float(self.regret.mean()),
            "regret_p99": float(np.quantile(self.regret, 0.99)),
            "loss_vs_control_mean": float(self.loss_vs_control.mean()),
            "loss_vs_control_p99": float(np.quantile(self.loss_vs_control, 0.99)),
            "control_reward_mean": float(self.control_reward.mean()),
            "violation_rate": float(self.violated.mean()),
            "promotion_rate": float(promoted.mean()),
            "steps_to_promotion_mean": float(self.promoted_at[promoted].mean())
            if promoted.any()
            else float("nan"),
            "false_promotion_rate": float(self.false_promotion.mean()),
            "missed_rollback_rate": float(self.missed_rollback.mean()),
            "harmful_pulls_mean": float(self.harmful_pulls.mean()),
        }
        return out if self.drift_at is None else {**out, **self.drift_summary()}

    def drift_summary(self) -> dict[str, float]:
        """The drift scenario's figures (``nan`` where undefined): see
        :func:`simulators.drift.drift_summary`."""
        return drift_summary(self)


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
    # quadrature can leave an arm with no chance of being best at -1e-14: counted as 0
    out = np.where(live & (alloc > 0.0), alloc, 0.0)
    # control takes what masked arms had; never below 0 from rounding (tests check [0, 1])
    out[:, 0] = np.maximum(out[:, 0] + 1.0 - out.sum(axis=1), 0.0)
    if done.any():  # a promoted arm takes all of its row's traffic
        out[done] = (status[done] == PROMOTED).astype(np.float64)
    return out


def _masked(inc: Any, rows: BoolArray) -> Any:
    """An additive increment with the rows not in ``rows`` zeroed."""
    m = rows.astype(np.float64)
    return inc._map(lambda a: a * m.reshape((-1,) + (1,) * (a.ndim - 1)))


@numba.njit(cache=True)
def _draw_cdf(p, cdf, u, out):  # type: ignore[no-untyped-def]
    k = p.shape[1]
    for i in range(u.shape[0]):
        for r in range(u.shape[1]):
            x = u[i, r] * cdf[r, k - 1]
            a = 0
            for j in range(k):
                a += cdf[r, j] <= x
            a = min(a, k - 1)
            if p[r, a] <= 0.0:  # rounding reached past the last arm with mass
                a = k - 1
                while p[r, a] <= 0.0:
                    a -= 1
            out[i, r] = a


def _draw_many(p: FloatArray, u: FloatArray) -> IntArray:
    """``draw(p, u[i])`` for every row of ``u`` (L, B): L steps from one allocation, with
    its cumulative sums computed once (the same arithmetic, so the same arms)."""
    out = np.empty(u.shape, dtype=np.int64)
    _draw_cdf(p, np.cumsum(p, axis=1), u, out)
    return out


def _sample_path(sc: Scenario) -> bool:
    """Whether steps may draw arms with ``policy.sample_arm`` (same law, no propensities):
    allocation read every step, nothing downstream needs the propensities, and a policy
    whose update ignores them."""
    policy = sc.policy
    tests = ([sc.test] if sc.test is not None else []) + [g.test for g in sc.guardrails]
    return (
        sc.refresh_every == 1
        and not isinstance(sc.env, Delayed)
        and isinstance(policy, ArmStatsPolicy | DiscountedThompson)
        and type(policy).sample_arm is not PolicyBase.sample_arm
        and not any(t.needs_propensity for t in tests)
    )


def _add_sparse(state: Any, amounts: dict[str, Any], rows: IntArray, arms: IntArray, k: int) -> Any:
    """``state`` plus amounts added at ``[rows[i], arms[i]]`` of each (B, K) field."""
    flat = state.to_dict()
    idx = rows * k + arms
    b = state.batch
    for name, amount in amounts.items():
        flat[name] = flat[name] + np.bincount(idx, weights=amount, minlength=b * k).reshape(b, k)
    return state.like(flat, copy=False)


def _segment_end(t: int, sc: Scenario, entry: IntArray, steps: int, delayed: bool) -> int:
    """The end of the segment starting at ``t``: nothing the policy stack reads changes
    inside it (allocation refresh, lifecycle look, a new arm)."""
    if delayed:
        return t + 1
    end = min(steps, (t // sc.refresh_every + 1) * sc.refresh_every)
    end = min(end, (t // sc.check_every + 1) * sc.check_every)
    later = entry[entry > t]
    return int(min(end, later.min())) if later.size else end


def run(scenario: Scenario, *, progress: Any = None) -> Result:
    """Run the scenario; ``progress(step)`` is called after every look of the rule (or
    every segment without one) if given."""
    sc, env, policy = scenario, scenario.env, scenario.policy
    b, k, steps = sc.replicates, env.n_arms, sc.steps
    delayed = isinstance(env, Delayed)
    if delayed and not policy.additive:
        raise ValueError(
            f"scenario.policy: delayed rewards need an additive policy ({policy.name} is not)"
        )
    rng = np.random.default_rng(np.random.SeedSequence(sc.seed, spawn_key=sc.spawn_key))
    rule = (
        sc.rule
        if sc.rule is not None
        else (PromotionRule(test_name=sc.test.name) if sc.test is not None else None)
    )
    sampled = _sample_path(sc)
    contextual = policy.context_dim is not None
    sparse = (
        policy.additive
        and not sampled
        and not contextual
        and policy.sparse_increment(np.zeros(1, np.int64), np.zeros(1), np.ones(1), k) is not None
    )
    state = policy.init(k, b)
    watch = Watch(sc.drift, b) if sc.drift is not None else None
    tstate = sc.test.init(k, b) if sc.test is not None else None
    gstates = [g.init(k, b) for g in sc.guardrails]
    status = np.zeros((b, k), dtype=np.int8)
    entry = np.asarray(env.entry)
    rows_b = np.arange(b)

    regret = np.zeros(b)
    loss = np.zeros(b)
    served = np.zeros(b)
    control = np.zeros(b)
    violated = np.zeros(b, dtype=bool)
    harmful = np.zeros(b)
    pulls = np.zeros(b * k)
    promoted_at = np.full(b, np.inf)
    promoted_arm = np.full(b, -1, dtype=np.int64)
    false_promotion = np.zeros(b, dtype=bool)
    rolled_back_at = np.full((b, k), np.inf)
    marks = np.unique(np.linspace(0, steps - 1, min(sc.snapshots, steps)).astype(np.int64))
    alloc_curve = np.zeros((marks.size, k))
    regret_curve = np.zeros(marks.size)
    regret_q = np.zeros((marks.size, 3))
    regret_sd = np.zeros(marks.size)
    transitions: list[Transition] = []
    pending: dict[int, list[_Arrival]] = {}
    alloc = np.empty((b, k))
    snap: Any = state  # a contextual policy's state as of the last refresh
    sum_means = np.zeros(k)  # contexts' means summed over steps (population means)
    last_means = np.zeros((1, k))
    no_propensity = np.zeros((1, k))
    mark = 0
    alpha = sc.budget_alpha
    looks = 0
    live_key: tuple[int, int] = (-1, -1)

    t = 0
    while t < steps:
        end = _segment_end(t, sc, entry, steps, delayed)
        n = end - t
        key = (int((entry <= t).sum()), looks)
        if key != live_key:  # a new arm entered or the rule looked since the last segment
            live, done = _live_mask(t, entry, status)
            live_key = key
        if sampled:  # the law of the allocation, without computing it
            p = no_propensity
            arms = np.empty((n, b), dtype=np.int64)
        elif contextual:  # the allocation at each step's contexts, from the refreshed state
            if t % sc.refresh_every == 0:
                snap = state
            u = rng.random((n, b))
            arms = np.empty((n, b), dtype=np.int64)
        else:
            if t % sc.refresh_every == 0:
                alloc = policy.allocation(state)
            p = _restrict(alloc, live, status, done)
            arms = _draw_many(p, rng.random((n, b)))
            rewards = np.empty((n, b))
        for i in range(n):
            ti = t + i
            context = env.context(ti, rng, b)
            if contextual:
                p = _restrict(policy.allocation(snap, context), live, status, done)
                arms[i] = _draw_many(p, u[i : i + 1])[0]
            elif sampled:
                a = policy.sample_arm(state, rng)
                a = np.where(live[rows_b, a], a, 0)
                if done.any():
                    a[done] = np.argmax(status[done] == PROMOTED, axis=1)
                arms[i] = a
            a = arms[i]
            r = env.sample(ti, a, rng, context)
            if watch is not None and watch.on and not delayed:
                watch.feed(a, r, ti)
            m = last_means = env.means(ti, context)
            if context is not None:
                sum_means += m.mean(axis=0)
            got = m[0, a] if m.shape[0] == 1 else m[rows_b, a]
            ctrl = m[:, 0]
            regret += np.where(entry <= ti, m, -np.inf).max(axis=1) - got
            loss += ctrl - got
            harmful += got < ctrl
            served += got
            control += ctrl
            if alpha is not None:
                violated |= served < (1.0 - alpha) * control - 1e-9
            if mark < marks.size and ti == marks[mark]:
                alloc_curve[mark] = np.bincount(a, minlength=k) / b if sampled else p.mean(axis=0)
                regret_curve[mark] = regret.mean()
                regret_q[mark] = np.quantile(regret, [0.05, 0.5, 0.95])
                regret_sd[mark] = regret.std(ddof=1) if b > 1 else 0.0
                mark += 1
            if sampled:
                state = policy.update(state, Decision(a, no_propensity), r)
                tstate, gstates = _feed(sc, tstate, gstates, a[:, None], r[:, None], None, None)
            elif sparse and not delayed:
                rewards[i] = r
            else:
                x = context if contextual else None
                for rows, aa, rr, prop, xx in _arrive(sc, ti, rng, a, r, p, x, pending):
                    if watch is not None and watch.on and delayed:
                        watch.feed(aa, rr, ti, rows)
                    decision = Decision(aa, prop)
                    if rows.all():
                        state = policy.update(state, decision, rr, xx)
                    else:
                        state = state + _masked(policy.increment(decision, rr, xx), rows)
                    tstate, gstates = _feed(
                        sc, tstate, gstates, aa[:, None], rr[:, None], prop, rows
                    )

        # the segment's observations, added at once (nothing read them inside it)
        if sparse and not delayed:
            flat_arm = arms.ravel()
            played = p[np.tile(rows_b, n), flat_arm]
            amounts: Any = policy.sparse_increment(flat_arm, rewards.ravel(), played, k)
            state = _add_sparse(state, amounts, np.tile(rows_b, n), flat_arm, k)
            tstate, gstates = _feed(sc, tstate, gstates, arms.T, rewards.T, p, None)
        pulls += np.bincount((rows_b * k + arms).ravel(), minlength=b * k)
        t = end

        if watch is not None and watch.fired.any():  # a new epoch where the champion dropped
            again, records = watch.reopen()
            n_again = again.size
            status[again] = EXPLORING
            state = reset_rows(state, policy.init(k, n_again), again)
            tstate = reset_rows(tstate, sc.test.init(k, n_again), again)
            gstates = [
                reset_rows(gs, g.init(k, n_again), again)
                for g, gs in zip(sc.guardrails, gstates, strict=True)
            ]
            if contextual:
                snap = reset_rows(snap, policy.init(k, n_again), again)
            elif not sampled:  # as a replica's next refresh would read it
                alloc[again] = policy.allocation(state.rows(again))
            looks += 1
            transitions.extend(records)

        if rule is not None and (t % sc.check_every == 0 or t == steps):
            ev = sc.test.evaluate(tstate)
            gev = [(g.name, g.evaluate(gs)) for g, gs in zip(sc.guardrails, gstates, strict=True)]
            status, changes = rule.step(status, ev, gev, t=np.full(b, float(t)))
            looks += bool(changes)
            for c in changes:
                if c.new == "promoted":
                    if watch is not None:
                        watch.promoted(c.row, c.arm, t)
                    if np.isfinite(promoted_at[c.row]):  # a later epoch's (drift)
                        continue
                    promoted_at[c.row] = t
                    promoted_arm[c.row] = c.arm
                    population = _population(last_means, sum_means, t)
                    false_promotion[c.row] = population[c.arm] <= population[0]
                elif c.new == "rolled_back":
                    rolled_back_at[c.row, c.arm] = t
            transitions.extend(changes)
        if progress is not None:
            progress(t)

    population = _population(last_means, sum_means, steps)
    # harmful arms (worse than control at the end, entered) still live at the end, with
    # nothing promoted (without drift, status is sticky: the arms never rolled back)
    worse = (population < population[0]) & (entry < steps)
    missed = (worse[None, :] & (status != ROLLED_BACK)).any(axis=1)
    missed &= ~(status == PROMOTED).any(axis=1)
    drift_at, epoch_arm, epoch_at = watch.arrays() if watch is not None else (None, None, None)
    return Result(
        regret=regret,
        loss_vs_control=loss,
        control_reward=control,
        violated=violated,
        promoted_at=promoted_at,
        promoted_arm=promoted_arm,
        rolled_back_at=rolled_back_at,
        false_promotion=false_promotion,
        missed_rollback=missed,
        harmful_pulls=harmful,
        pulls=pulls.reshape(b, k),
        steps=marks + 1,
        allocation=alloc_curve,
        regret_curve=regret_curve,
        regret_quantiles=regret_q,
        transitions=transitions,
        regret_sd=regret_sd,
        drift_at=drift_at,
        epoch_arm=epoch_arm,
        epoch_promoted_at=epoch_at,
        change_at=change_step(env),
        best_arm=int(np.argmax(population)),
    )


def _population(last_means: FloatArray, sum_means: FloatArray, t: int) -> FloatArray:
    """(K,) each arm's mean over users: with contexts, averaged over every step so far
    (stationary contextual environments: the population's means, not one step's users);
    without, the last step's (non-stationary ones: the arms as they are now)."""
    if sum_means.any():
        return np.asarray(sum_means / t)
    return np.asarray(last_means.mean(axis=0))


#: An observation reaching the learners: rows it applies to, arm, reward, propensity, context.
_Arrival = tuple[BoolArray, IntArray, FloatArray, FloatArray, FloatArray | None]


def _arrive(
    sc: Scenario,
    t: int,
    rng: np.random.Generator,
    arm: IntArray,
    reward: FloatArray,
    p: FloatArray,
    context: FloatArray | None,
    pending: dict[int, list[_Arrival]],
) -> list[_Arrival]:
    """The observations (rows, arm, reward, propensity, context) that reach the learners at
    step ``t``: this step's, or, with delays, those whose delay ends now."""
    if not isinstance(sc.env, Delayed):
        return [(np.ones(arm.shape[0], dtype=bool), arm, reward, p, context)]
    delay = sc.env.delay(t, rng, arm.shape[0])
    for d in np.unique(delay):
        pending.setdefault(t + int(d), []).append((delay == d, arm, reward, p, context))
    return pending.pop(t, [])


def _feed(
    sc: Scenario,
    tstate: Any,
    gstates: list[Any],
    arm: IntArray,
    reward: FloatArray,
    p: FloatArray | None,
    rows: BoolArray | None,
) -> tuple[Any, list[Any]]:
    """The sequential test's and guardrails' states after observations (B, N)."""
    if tstate is not None:
        inc = sc.test.increment(tstate, arm, reward, p)
        tstate = tstate + (inc if rows is None or rows.all() else _masked(inc, rows))
    for i, g in enumerate(sc.guardrails):
        ginc = g.test.increment(gstates[i], arm, reward, p)
        gstates[i] = gstates[i] + (ginc if rows is None or rows.all() else _masked(ginc, rows))
    return tstate, gstates
