"""Safety: a traffic cap and a conservative budget around any policy, and guardrails.

Arm 0 is control. Both wrappers are policies themselves: they transform the wrapped
policy's allocation, so propensities stay exact, and their state is additive whenever the
wrapped policy's is. They compose: ``TrafficCap(policy=ConservativeBudget(policy=p))``.
:class:`Guardrail` watches a harm metric and tells the promotion rule to roll back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
import numpy.typing as npt

from .base import (
    ArmStats,
    Decision,
    FloatArray,
    PolicyBase,
    Stats,
    arm_stats_sparse,
    check_params,
    ratio,
)
from .greedy import empirical_mean
from .sequential import BetaBinomialCS, EmpiricalBernsteinCS, OffPolicyCS

__all__ = [
    "HARM",
    "LIMIT",
    "NO_BREACH",
    "BudgetStats",
    "ConservativeBudget",
    "Guardrail",
    "GuardrailEvidence",
    "TrafficCap",
    "conservative_slack",
    "over_slo",
]


def _check_wrapped(where: str, policy: object) -> None:
    if not isinstance(policy, PolicyBase):
        raise TypeError(f"{where}.policy: must be a policy (got {type(policy).__name__})")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficCap(PolicyBase):
    """All alternatives together get at most ``explore_share`` of the allocation.

    If the wrapped allocation gives the alternatives (arms 1..K-1) more than
    ``explore_share`` in total, their probabilities are scaled down proportionally and
    control takes the rest; otherwise the allocation is unchanged. The cap holds until the
    runtime promotes an alternative (it then becomes the new control).

    Parameters
    ----------
    policy : a policy
    explore_share : float in (0, 1]

    Notes
    -----
    Regret: the wrapped policy's bound is not kept: with a better alternative, regret grows as (1 -
      explore_share) gap T until promotion, by design
    """

    name: ClassVar[str] = "traffic-cap"
    policy: Any
    explore_share: float = 0.05

    def __post_init__(self) -> None:
        _check_wrapped(self.name, self.policy)
        check_params(
            self.name,
            explore_share=(
                0.0 < self.explore_share <= 1.0,
                self.explore_share,
                "in (0, 1]",
            ),
        )

    @property
    def additive(self) -> bool:  # type: ignore[override]
        return bool(self.policy.additive)

    @property
    def context_dim(self) -> int | None:
        return self.policy.context_dim  # type: ignore[no-any-return]

    @property
    def reward_range(self) -> tuple[float | None, float | None]:  # type: ignore[override]
        return self.policy.reward_range  # type: ignore[no-any-return]

    def init(self, n_arms: int, batch: int = 1) -> Any:
        return self.policy.init(n_arms, batch)

    def allocation(self, stats: Any, context: FloatArray | None = None) -> FloatArray:
        return cap_allocation(self.policy.allocation(stats, context), self.explore_share)

    def increment(
        self, decision: Decision, reward: FloatArray, context: FloatArray | None = None
    ) -> Any:
        return self.policy.increment(decision, reward, context)

    def update(
        self, stats: Any, decision: Decision, reward: FloatArray, context: FloatArray | None = None
    ) -> Any:
        return self.policy.update(stats, decision, reward, context)

    def sparse_increment(
        self, arm: Any, reward: Any, propensity: Any, n_arms: int
    ) -> dict[str, Any] | None:
        return self.policy.sparse_increment(arm, reward, propensity, n_arms)  # type: ignore[no-any-return]

    @classmethod
    def example(cls) -> TrafficCap:
        from .thompson import ThompsonBeta

        return cls(policy=ThompsonBeta(), explore_share=0.2)


def cap_allocation(p: FloatArray, share: float) -> FloatArray:
    """Scale arms 1.. down to ``share`` in total where they exceed it; control gets the rest.

    >>> cap_allocation(np.array([[0.1, 0.6, 0.3], [0.9, 0.05, 0.05]]), 0.3).round(12)
    array([[0.7 , 0.2 , 0.1 ],
           [0.9 , 0.05, 0.05]])
    """
    alt = p[:, 1:].sum(axis=1, keepdims=True)
    # 1e-12 below the exact factor, so that the scaled probabilities still sum to at most
    # ``share`` after rounding (the cap holds exactly, not to within an ulp).
    scale = np.where(alt > share, share * (1.0 - 1e-12) / np.where(alt > 0, alt, 1.0), 1.0)
    out = p.copy()
    out[:, 1:] = p[:, 1:] * scale
    out[:, 0] = 1.0 - out[:, 1:].sum(axis=1)
    return out


@dataclass(frozen=True, slots=True)
class BudgetStats(Stats):
    """The wrapped policy's state and the budget's own per-arm counts and reward sums."""

    base: Any
    budget: ArmStats

    @property
    def additive(self) -> bool:  # type: ignore[override]
        return bool(self.base.additive)


def confidence_radius(n: FloatArray, n_arms: int, delta: float) -> FloatArray:
    """Anytime Hoeffding radius for a mean of ``n`` rewards in [0, 1], union over arms.

    ``sqrt(ln(pi^2 K n^2 / (3 delta)) / (2 n))``: the failure probabilities
    ``6 delta / (pi^2 K n^2)`` sum to ``delta`` over every arm and every ``n >= 1``.
    """
    level = np.log(math.pi**2 * n_arms * np.maximum(n, 1.0) ** 2 / (3.0 * delta))
    return np.sqrt(ratio(level, 2.0 * n, np.inf))


def conservative_slack(budget: ArmStats, alpha: float, delta: float, rounds: int = 1) -> FloatArray:
    """Lower confidence bound on ``served - (1 - alpha) * control`` if each arm is played
    for the next ``rounds`` rounds.

    For candidate arm ``k``, with ``t`` the last of those rounds (rewards so far +
    ``rounds``): ``sum_{i>0} n_i L_i + rounds L_k + (n_0 - (1 - alpha) t) M_0`` where ``L``
    are lower confidence bounds and ``M_0`` is control's lower bound when its coefficient
    is positive, its upper bound when negative. (Wu et al. 2016, Conservative UCB with the
    baseline mean unknown, for ``rounds = 1``; more rounds reserve budget for an
    allocation that is reused until it is next recomputed: the worst case is that every
    one of them plays an alternative, since each round of control only adds
    ``alpha mu_0 >= 0``.) Returns (B, K); column 0 is 0 (control is always allowed).
    """
    k = budget.n.shape[1]
    mean = empirical_mean(budget, 0.0)
    rad = confidence_radius(budget.n, k, delta)
    lower = np.clip(mean - rad, 0.0, 1.0)
    upper = np.clip(mean + rad, 0.0, 1.0)
    t = budget.n.sum(axis=1) + float(rounds)
    served = (budget.n[:, 1:] * lower[:, 1:]).sum(axis=1)
    coef0 = budget.n[:, 0] - (1.0 - alpha) * t
    control = np.where(coef0 >= 0, coef0 * lower[:, 0], coef0 * upper[:, 0])
    slack = (served + control)[:, None] + rounds * lower
    slack[:, 0] = 0.0
    return np.asarray(slack)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConservativeBudget(PolicyBase):
    """Play the wrapped policy's choice only while the conservative constraint allows it.

    The constraint (Wu, Shariff, Lattimore, Szepesvari 2016): the expected reward served
    up to every round ``t`` stays at least ``(1 - alpha)`` times what control alone would
    have earned, ``sum_{s<=t} mu_{I_s} >= (1 - alpha) t mu_0``, with probability at least
    ``1 - delta``. The wrapped policy's probability for an alternative whose lower
    confidence bound (see :func:`conservative_slack`) would break the constraint goes to
    control instead, so propensities stay exact.

    Parameters
    ----------
    policy : a policy
    alpha : float in (0, 1)
        The share of control's reward that exploration may cost.
    delta : float in (0, 1)
        The probability that the constraint may fail.
    refresh : int >= 1
        Rounds an allocation is used for before it is recomputed (the runtime's and the
        simulator's ``refresh_every``). An alternative is allowed only if the budget
        covers that many rounds of it: with ``refresh = 1`` an allocation reused for 100
        rounds could spend 100 rounds' worth of budget on one check.

    Notes
    -----
    Regret: the wrapped policy's regret plus O(sum_i H_i ln(K/delta) / (alpha mu_0)) rounds of
      forced control (Wu et al. 2016, Thm 4, for UCB)

    Rewards must lie in [0, 1] (the confidence bounds are Hoeffding's). The state is the
    wrapped policy's plus per-arm counts and sums, additive when the wrapped one is.
    """

    name: ClassVar[str] = "conservative-budget"
    policy: Any
    alpha: float = 0.05
    delta: float = 0.05
    refresh: int = 1

    def __post_init__(self) -> None:
        _check_wrapped(self.name, self.policy)
        check_params(
            self.name,
            alpha=(0.0 < self.alpha < 1.0, self.alpha, "in (0, 1)"),
            delta=(0.0 < self.delta < 1.0, self.delta, "in (0, 1)"),
            refresh=(
                isinstance(self.refresh, int) and self.refresh >= 1,
                self.refresh,
                "an integer >= 1",
            ),
        )
        low, high = self.policy.reward_range
        if low is None or high is None or low < 0.0 or high > 1.0:
            raise ValueError(
                f"{self.name}.policy: must take rewards bounded in [0, 1] "
                f"(got {self.policy.name} with reward range {self.policy.reward_range!r})"
            )

    @property
    def additive(self) -> bool:  # type: ignore[override]
        return bool(self.policy.additive)

    @property
    def context_dim(self) -> int | None:
        return self.policy.context_dim  # type: ignore[no-any-return]

    def init(self, n_arms: int, batch: int = 1) -> BudgetStats:
        return BudgetStats(
            base=self.policy.init(n_arms, batch), budget=ArmStats.zeros(n_arms, batch)
        )

    def allowed(self, stats: BudgetStats) -> np.ndarray:
        """(B, K) bool: which arms the budget allows next (control always)."""
        return conservative_slack(stats.budget, self.alpha, self.delta, self.refresh) >= 0.0

    def remaining(self, stats: BudgetStats) -> FloatArray:
        """(B,) the budget left, in reward units: a lower confidence bound on the reward
        served so far minus ``(1 - alpha)`` times what control alone would have earned
        (:func:`conservative_slack` with no further rounds). Exploration may spend it; an
        alternative is allowed while its next ``refresh`` rounds would leave it >= 0."""
        return np.asarray(conservative_slack(stats.budget, self.alpha, self.delta, 0)[:, -1])

    def allocation(self, stats: BudgetStats, context: FloatArray | None = None) -> FloatArray:
        return self.gate(self.policy.allocation(stats.base, context), stats)

    def gate(self, p: FloatArray, stats: BudgetStats) -> FloatArray:
        """``p`` (B, K) with the share of every arm the budget does not allow moved to
        control."""
        ok = self.allowed(stats)
        out = np.where(ok, p, 0.0)
        out[:, 0] += (p * ~ok).sum(axis=1)
        return np.asarray(out)

    def increment(
        self, decision: Decision, reward: FloatArray, context: FloatArray | None = None
    ) -> BudgetStats:
        r = self.check(decision, reward)
        return BudgetStats(
            base=self.policy.increment(decision, r, context), budget=ArmStats.of(decision, r)
        )

    def update(
        self,
        stats: BudgetStats,
        decision: Decision,
        reward: FloatArray,
        context: FloatArray | None = None,
    ) -> BudgetStats:
        r = self.check(decision, reward)
        return BudgetStats(
            base=self.policy.update(stats.base, decision, r, context),
            budget=stats.budget + ArmStats.of(decision, r),
        )

    def sparse_increment(
        self, arm: Any, reward: Any, propensity: Any, n_arms: int
    ) -> dict[str, Any] | None:
        base = self.policy.sparse_increment(arm, reward, propensity, n_arms)
        if base is None:
            return None
        own = arm_stats_sparse(reward)
        return {
            **{f"base.{k}": v for k, v in base.items()},
            **{f"budget.{k}": v for k, v in own.items()},
        }

    @classmethod
    def example(cls) -> ConservativeBudget:
        from .ucb import UCB1

        return cls(policy=UCB1(), alpha=0.1, delta=0.05)


# ---------------------------------------------------------------------------------------
# Guardrails
# ---------------------------------------------------------------------------------------

#: Why a guardrail fired, per entry of :attr:`GuardrailEvidence.breach`.
NO_BREACH, HARM, LIMIT = 0, 1, 2


class GuardrailEvidence(NamedTuple):
    """A guardrail's verdict per alternative; every field is (B, K), column 0 is control.

    Attributes
    ----------
    breach : int8, :data:`NO_BREACH`, :data:`HARM` (worse than control by more than
        ``margin``) or :data:`LIMIT` (the alternative's own metric past ``limit``)
    harm_lower, harm_upper : confidence sequence for the harm, the difference against
        control signed so that positive is worse
    arm_lower, arm_upper : the alternative's own metric, bounds at ``1 - alpha / 2``
    statistic, threshold : what crossed what: the harm's lower bound against ``margin``,
        or (for a hard-limit breach) the metric's bound against ``limit``
    n : observations of the metric per arm
    """

    breach: npt.NDArray[np.int8]
    harm_lower: FloatArray
    harm_upper: FloatArray
    arm_lower: FloatArray
    arm_upper: FloatArray
    statistic: FloatArray
    threshold: FloatArray
    n: FloatArray


@dataclass(frozen=True, slots=True, kw_only=True)
class Guardrail:
    """A one-sided sequential test for harm on a guardrail metric (arm 0 is control).

    The metric (error rate, share of requests over a latency SLO via :func:`over_slo`, any
    bounded metric) is tracked per arm by a per-arm confidence sequence from
    :mod:`policies.sequential`, valid under any allocation and from the first observation
    (no minimum sample size, no normal approximation). An alternative breaches when

    * **harm**: the lower bound of its harm against control exceeds ``margin``, or
    * **hard limit** (``limit`` set): its own metric is past ``limit`` with confidence
      (its lower bound above ``limit`` for ``harm="increase"``).

    :class:`policies.promotion.PromotionRule` rolls a breaching alternative back at once.
    Each side is checked with the two-sided sequences, so the error of a false breach is
    at most ``test.alpha`` (conservative by up to a factor 2).

    Parameters
    ----------
    name : the metric's name (it appears in the evidence of a rollback)
    test : a per-arm sequence, :class:`~policies.sequential.BetaBinomialCS` (rates, the
        default) or :class:`~policies.sequential.EmpiricalBernsteinCS` (bounded metrics);
        or :class:`~policies.sequential.OffPolicyCS` (tighter on the difference, needs the
        propensities, no hard limit)
    harm : "increase" (larger is worse: errors, latency) or "decrease"
    margin : float >= 0, harm tolerated against control, in metric units
    limit : float or None, the hard limit on the alternative's metric
    """

    name: str
    test: Any = None
    harm: str = "increase"
    margin: float = 0.0
    limit: float | None = None

    def __post_init__(self) -> None:
        if self.test is None:
            object.__setattr__(self, "test", BetaBinomialCS())
        where = f"guardrail {self.name!r}"
        per_arm = isinstance(self.test, BetaBinomialCS | EmpiricalBernsteinCS)
        check_params(
            where,
            test=(
                per_arm or isinstance(self.test, OffPolicyCS),
                type(self.test).__name__,
                "a BetaBinomialCS, EmpiricalBernsteinCS or OffPolicyCS",
            ),
            harm=(self.harm in ("increase", "decrease"), self.harm, "'increase' or 'decrease'"),
            margin=(self.margin >= 0.0, self.margin, ">= 0"),
        )
        lo, hi = self.test.low, self.test.high
        if self.limit is not None and not per_arm:
            raise ValueError(f"{where}.limit: a hard limit needs a per-arm test (got OffPolicyCS)")
        if self.limit is not None and not lo <= self.limit <= hi:
            raise ValueError(f"{where}.limit: must be in [{lo}, {hi}] (got {self.limit!r})")

    def init(self, n_arms: int, batch: int = 1) -> Any:
        return self.test.init(n_arms, batch)

    def update(
        self, stats: Any, arm: npt.ArrayLike, value: npt.ArrayLike, propensity: Any = None
    ) -> Any:
        """The state after observing the metric ``value`` (B,) or (B, N) at ``arm``
        (``propensity`` as for the test: required by ``OffPolicyCS``)."""
        return self.test.update(stats, arm, value, propensity)

    def observe(
        self, stats: Any, arm: int, value: float, propensity: Any = None, *, row: int = 0
    ) -> None:
        """One observation applied in place (the serving path)."""
        self.test.observe(stats, arm, value, propensity, row=row)

    def evaluate(self, stats: Any) -> GuardrailEvidence:
        if isinstance(self.test, OffPolicyCS):  # a difference only
            ev = self.test.evaluate(stats)
            arm_lower = np.full_like(ev.lower, np.nan)
            arm_upper = np.full_like(ev.lower, np.nan)
        else:
            ev, (_, arm_lower, arm_upper) = self.test.evaluate_with_bounds(stats)
        if self.harm == "increase":
            harm_lower, harm_upper, bound = ev.lower, ev.upper, arm_lower
        else:
            harm_lower, harm_upper, bound = -ev.upper, -ev.lower, arm_upper
        breach = np.where(harm_lower > self.margin, HARM, NO_BREACH).astype(np.int8)
        statistic = harm_lower.copy()
        threshold = np.full_like(harm_lower, self.margin)
        if self.limit is not None:
            past = bound > self.limit if self.harm == "increase" else bound < self.limit
            breach[past] = LIMIT
            statistic[past] = bound[past]
            threshold[past] = self.limit
        breach[:, 0] = NO_BREACH
        return GuardrailEvidence(
            breach, harm_lower, harm_upper, arm_lower, arm_upper, statistic, threshold, ev.n
        )


def over_slo(latency_ms: npt.ArrayLike, slo_ms: float) -> FloatArray:
    """1.0 where a request took longer than ``slo_ms``, else 0.0 (a rate guardrail's input).

    >>> over_slo([120.0, 250.0, 300.5], 250.0)
    array([0., 0., 1.])
    """
    return (np.asarray(latency_ms, dtype=np.float64) > slo_ms).astype(np.float64)


def restricted_allocation(
    policy: Any, stats: Any, active: npt.ArrayLike, context: FloatArray | None = None
) -> FloatArray:
    """``policy``'s (B, K) allocation when only the ``active`` (K,) arms may be played
    (control, arm 0, always is): the innermost policy chooses among the active arms as
    if the others did not exist (its state sliced on the arm axis), and the safety
    wrappers act on the whole state as usual: a conservative budget keeps counting
    every arm's rewards, so retiring an arm never forgets what it cost.

    For arms that come and go (generated candidates): an empty slot's uninformed prior
    would otherwise draw a share that belongs to the arms in play.
    """
    on = np.asarray(active, dtype=bool).copy()
    on[0] = True
    if isinstance(policy, TrafficCap):
        return cap_allocation(
            restricted_allocation(policy.policy, stats, on, context), policy.explore_share
        )
    if isinstance(policy, ConservativeBudget):
        return policy.gate(restricted_allocation(policy.policy, stats.base, on, context), stats)
    sliced = stats.like({k: np.asarray(v)[:, on] for k, v in stats.to_dict().items()})
    sub = policy.allocation(sliced, context)
    out = np.zeros((sub.shape[0], on.shape[0]))
    out[:, on] = sub
    return out
