"""autoexp's decision logic: bandit policies, safety wrappers, guardrails, anytime-valid
sequential tests and the promotion rule.

Pure: numpy, scipy and numba only; no I/O. Every policy follows :class:`policies.base.Policy`;
every test in :data:`TESTS` follows :class:`policies.sequential.SequentialTest`.

>>> sorted(REGISTRY)[:3]
['discounted-thompson', 'epsilon-greedy', 'exp3']
"""

from __future__ import annotations

from .base import ArmStats, Decision, Policy, PolicyBase, Stats, draw
from .exp3 import EXP3, EXP3IX
from .greedy import EpsilonGreedy
from .linear import LinearStats, LinTS, LinUCB
from .nonstationary import DiscountedThompson, SlidingWindowUCB
from .promotion import PromotionRule, Transition
from .river_ts import RiverThompson
from .safety import ConservativeBudget, Guardrail, TrafficCap
from .sequential import (
    TESTS,
    AsymptoticCS,
    BetaBinomialCS,
    EmpiricalBernsteinCS,
    Evidence,
    MixtureSPRT,
    OffPolicyCS,
)
from .thompson import ThompsonBeta, ThompsonGaussian
from .ucb import KLUCB, MOSS, UCB1
from .vw import VWExplore

#: Registered policies by their kebab-case name.
REGISTRY: dict[str, type[PolicyBase]] = {
    "epsilon-greedy": EpsilonGreedy,
    "ucb1": UCB1,
    "kl-ucb": KLUCB,
    "moss": MOSS,
    "thompson-beta": ThompsonBeta,
    "thompson-gaussian": ThompsonGaussian,
    "exp3": EXP3,
    "exp3-ix": EXP3IX,
    "discounted-thompson": DiscountedThompson,
    "sliding-window-ucb": SlidingWindowUCB,
}

#: Contextual policies: each decision takes a context of ``dim`` numbers. Not yet served
#: by the engine, the simulators or the safety wrappers (which take context-free ones).
CONTEXTUAL: dict[str, type[PolicyBase]] = {
    "lin-ucb": LinUCB,
    "lin-ts": LinTS,
    "vw-cb": VWExplore,
    "river-ts": RiverThompson,
}

#: Safety wrappers: each wraps any policy (arm 0 is control).
SAFETY: dict[str, type[PolicyBase]] = {
    "traffic-cap": TrafficCap,
    "conservative-budget": ConservativeBudget,
}

__all__ = [
    "CONTEXTUAL",
    "EXP3",
    "EXP3IX",
    "KLUCB",
    "MOSS",
    "REGISTRY",
    "SAFETY",
    "TESTS",
    "UCB1",
    "ArmStats",
    "AsymptoticCS",
    "BetaBinomialCS",
    "ConservativeBudget",
    "Decision",
    "DiscountedThompson",
    "EmpiricalBernsteinCS",
    "EpsilonGreedy",
    "Evidence",
    "Guardrail",
    "LinTS",
    "LinUCB",
    "LinearStats",
    "MixtureSPRT",
    "OffPolicyCS",
    "Policy",
    "PolicyBase",
    "PromotionRule",
    "RiverThompson",
    "SlidingWindowUCB",
    "Stats",
    "ThompsonBeta",
    "ThompsonGaussian",
    "TrafficCap",
    "Transition",
    "VWExplore",
    "draw",
]
