"""Independent reference implementations of the registered policies, written from the
papers rather than from ``policies/``, for the regret tests to compare against.

Each class takes ``(n_arms, n_runs, **hyperparameters)`` with the same hyperparameter
names and defaults as the project's class of the same name, runs ``n_runs`` independent
replicates side by side, and offers ``choose(rng) -> (n_runs,) int64`` and
``observe(arm, reward)``. Ties are broken uniformly at random.
"""

from __future__ import annotations

from .adversarial import EXP3, EXP3IX
from .nonstationary import DiscountedThompson, SlidingWindowUCB
from .stochastic import KLUCB, MOSS, UCB1, EpsilonGreedy, ThompsonBeta, ThompsonGaussian

#: Reference class per registry name of :data:`policies.REGISTRY`.
REFERENCE: dict[str, type] = {
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

__all__ = [
    "EXP3",
    "EXP3IX",
    "KLUCB",
    "MOSS",
    "REFERENCE",
    "UCB1",
    "DiscountedThompson",
    "EpsilonGreedy",
    "SlidingWindowUCB",
    "ThompsonBeta",
    "ThompsonGaussian",
]
