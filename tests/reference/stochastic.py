"""Reference policies for stochastic bandits with rewards in [0, 1].

Written from the papers, not from ``policies/``: epsilon-greedy, UCB1 (Auer, Cesa-Bianchi
& Fischer 2002), KL-UCB (Garivier & Cappé 2011), MOSS (Audibert & Bubeck 2009; anytime
variant of Degenne & Perchet 2016), Beta-Bernoulli Thompson sampling (Thompson 1933;
Agrawal & Goyal 2012) and Gaussian Thompson sampling (Agrawal & Goyal 2013).

Every class runs ``n_runs`` independent replicates side by side: its state has one row
per replicate, ``choose(rng)`` returns one arm per row and ``observe(arm, reward)``
records one reward per row. Thompson sampling here samples the posterior and takes the
argmax, as in the papers (the project computes the allocation instead).
"""

from __future__ import annotations

import numpy as np
from scipy.special import rel_entr, xlogy

from .common import FloatArray, IntArray, argmax_random_ties

__all__ = [
    "KLUCB",
    "MOSS",
    "UCB1",
    "ArmCounts",
    "EpsilonGreedy",
    "ThompsonBeta",
    "ThompsonGaussian",
    "bernoulli_kl",
    "kl_ucb_index",
]


class ArmCounts:
    """Pull counts and reward sums per replicate and arm, (R, K) each."""

    def __init__(self, n_arms: int, n_runs: int) -> None:
        self.n_arms = n_arms
        self.n_runs = n_runs
        self.pulls = np.zeros((n_runs, n_arms), dtype=np.int64)
        self.total = np.zeros((n_runs, n_arms))

    def observe(self, arm: IntArray, reward: FloatArray) -> None:
        rows = np.arange(self.n_runs)
        self.pulls[rows, arm] += 1
        self.total[rows, arm] += reward

    def mean(self) -> FloatArray:
        """Empirical means; NaN-free: 0 where an arm has not been pulled (callers mask)."""
        return self.total / np.maximum(self.pulls, 1)

    def time(self) -> FloatArray:
        """(R, 1): the number of rewards observed so far in each replicate.

        Floored at 1: an index is only used once its arm has a reward, so ``t >= 1``
        wherever it matters, and the floor keeps ``ln t`` finite before the first reward.
        """
        return np.maximum(self.pulls.sum(axis=1, keepdims=True), 1).astype(np.float64)


class _IndexPolicy(ArmCounts):
    """Play the arm with the largest index; an arm never pulled has an infinite index."""

    def index(self) -> FloatArray:
        raise NotImplementedError

    def choose(self, rng: np.random.Generator) -> IntArray:
        pulled = self.pulls > 0
        # index() is computed for every arm (with n floored at 1) but used only where the
        # arm has been pulled at least once, which is where the papers define it.
        index = np.full((self.n_runs, self.n_arms), np.inf)
        index[pulled] = self.index()[pulled]
        return argmax_random_ties(index, rng)


class EpsilonGreedy(ArmCounts):
    """With probability ``epsilon`` a uniformly random arm, otherwise the best mean so far.

    Arms never pulled count as best (so each is tried once).
    """

    def __init__(self, n_arms: int, n_runs: int, *, epsilon: float = 0.1) -> None:
        super().__init__(n_arms, n_runs)
        self.epsilon = epsilon

    def choose(self, rng: np.random.Generator) -> IntArray:
        greedy_value = np.where(self.pulls > 0, self.mean(), np.inf)
        greedy = argmax_random_ties(greedy_value, rng)
        explore = rng.random(self.n_runs) < self.epsilon
        uniform = rng.integers(self.n_arms, size=self.n_runs)
        return np.where(explore, uniform, greedy).astype(np.int64)


class UCB1(_IndexPolicy):
    """Auer et al. 2002, Fig. 1: index ``mean + sqrt(2 ln t / n)``.

    ``t`` is the number of rewards observed so far and ``n`` the arm's pull count;
    ``exploration`` is the 2 under the square root.
    """

    def __init__(self, n_arms: int, n_runs: int, *, exploration: float = 2.0) -> None:
        super().__init__(n_arms, n_runs)
        self.exploration = exploration

    def index(self) -> FloatArray:
        n = np.maximum(self.pulls, 1)
        return self.mean() + np.sqrt(self.exploration * np.log(self.time()) / n)


def bernoulli_kl(p: FloatArray, q: FloatArray) -> FloatArray:
    """``kl(p, q) = p ln(p / q) + (1 - p) ln((1 - p) / (1 - q))``, with ``0 ln 0 = 0``."""
    return np.asarray(rel_entr(p, q) + rel_entr(1.0 - p, 1.0 - q))


def kl_ucb_index(p: FloatArray, level: FloatArray) -> FloatArray:
    """``max{q in [p, 1] : kl(p, q) <= level}`` for Bernoulli KL, elementwise.

    Newton's method on ``f(q) = kl(p, q) - level``, which is increasing
    (``f' = (q - p) / (q (1 - q)) > 0``) and convex (``f'' = p / q^2 + (1 - p) / (1 - q)^2``)
    on ``(p, 1)``: started at any ``q0`` with ``f(q0) >= 0`` the iterates decrease
    monotonically to the root. Two such starts, the smaller is used:

    - ``kl(p, q) >= (q - p)^2 / (2 q)`` for ``q >= p`` (Taylor in ``p`` about ``q``, with
      ``d^2 kl / dp^2 = 1 / (p (1 - p)) >= 1 / q`` between ``p`` and ``q``); equality at
      ``q0 = p + level + sqrt(level^2 + 2 p level)``. Tight for small means; it may exceed 1.
    - ``kl(p, q) >= p ln p + (1 - p) ln((1 - p) / (1 - q))``; equality at
      ``ln(1 - q0) = ln(1 - p) - (level - p ln p) / (1 - p)``. Always at most 1.

    A start that rounds to 1 is the answer (the whole of ``[p, 1]`` is plausible).
    """
    p = np.asarray(p, dtype=np.float64)
    level = np.broadcast_to(np.asarray(level, dtype=np.float64), p.shape)
    out = p.copy()
    # p = 1 needs nothing (kl(1, 1) = 0, the index is 1); level = 0 leaves q = p.
    todo = (p < 1.0) & (level > 0.0)
    pt = p[todo]
    dt = level[todo]
    q_quadratic = pt + dt + np.sqrt(dt * dt + 2.0 * pt * dt)
    q_entropy = -np.expm1(np.log1p(-pt) - (dt - xlogy(pt, pt)) / (1.0 - pt))
    q = np.minimum(q_quadratic, q_entropy)
    at_one = q >= 1.0
    q[at_one] = 1.0
    inside = ~at_one
    p_in, d_in, q_in = pt[inside], dt[inside], q[inside]
    for _ in range(100):
        f = bernoulli_kl(p_in, q_in) - d_in
        step = f * q_in * (1.0 - q_in) / (q_in - p_in)
        q_in = q_in - step
        # Quadratic convergence: once the step is below 1e-10 the error is far below it.
        if np.all(np.abs(step) <= 1e-10):
            break
    else:
        raise RuntimeError("kl_ucb_index: Newton's method did not converge in 100 steps")
    q[inside] = q_in
    out[todo] = q
    return out


class KLUCB(_IndexPolicy):
    """Garivier & Cappé 2011: ``max{q : n kl(mean, q) <= ln t + c ln ln t}``.

    ``t`` is the number of rewards observed so far; the ``c ln ln t`` term is dropped
    while ``ln ln t <= 0`` (``t <= e``). The default ``c = 0`` is the variant the paper
    recommends in practice.
    """

    def __init__(self, n_arms: int, n_runs: int, *, c: float = 0.0) -> None:
        super().__init__(n_arms, n_runs)
        self.c = c

    def index(self) -> FloatArray:
        log_t = np.log(self.time())
        level = log_t.copy()
        if self.c > 0:
            level = level + self.c * np.log(np.maximum(log_t, 1.0))
        n = np.maximum(self.pulls, 1)
        return kl_ucb_index(self.mean(), level / n)


class MOSS(_IndexPolicy):
    """Audibert & Bubeck 2009: index ``mean + sqrt(ln+(T / (K n)) / n)``.

    With ``horizon=None`` the anytime variant uses ``t``, the number of rewards observed
    so far, in place of ``T`` (Degenne & Perchet 2016). ``ln+(x) = max(ln x, 0)``.
    """

    def __init__(self, n_arms: int, n_runs: int, *, horizon: int | None = None) -> None:
        super().__init__(n_arms, n_runs)
        self.horizon = horizon

    def index(self) -> FloatArray:
        big_t = self.time() if self.horizon is None else float(self.horizon)
        n = np.maximum(self.pulls, 1)
        log_plus = np.maximum(np.log(big_t / (self.n_arms * n)), 0.0)
        return self.mean() + np.sqrt(log_plus / n)


class ThompsonBeta(ArmCounts):
    """Beta-Bernoulli Thompson sampling: draw each arm's mean from its posterior
    ``Beta(prior_alpha + successes, prior_beta + failures)`` and play the largest draw.

    A reward ``r`` in [0, 1] counts as ``r`` successes and ``1 - r`` failures.
    """

    def __init__(
        self, n_arms: int, n_runs: int, *, prior_alpha: float = 1.0, prior_beta: float = 1.0
    ) -> None:
        super().__init__(n_arms, n_runs)
        self.prior_alpha = prior_alpha
        self.prior_beta = prior_beta

    def choose(self, rng: np.random.Generator) -> IntArray:
        successes = self.total
        failures = self.pulls - self.total
        theta = rng.beta(self.prior_alpha + successes, self.prior_beta + failures)
        return argmax_random_ties(theta, rng)


class ThompsonGaussian(ArmCounts):
    """Gaussian Thompson sampling with known noise: prior ``N(prior_mean, prior_sd^2)``
    per arm, rewards ``N(mu, noise_sd^2)``; the conjugate posterior after ``n`` rewards
    summing to ``S`` is normal with precision ``1 / prior_sd^2 + n / noise_sd^2`` and mean
    ``(prior_mean / prior_sd^2 + S / noise_sd^2) / precision``. With the defaults this is
    Agrawal & Goyal's ``N(S / (n + 1), 1 / (n + 1))``.
    """

    def __init__(
        self,
        n_arms: int,
        n_runs: int,
        *,
        prior_mean: float = 0.0,
        prior_sd: float = 1.0,
        noise_sd: float = 1.0,
    ) -> None:
        super().__init__(n_arms, n_runs)
        self.prior_mean = prior_mean
        self.prior_sd = prior_sd
        self.noise_sd = noise_sd

    def choose(self, rng: np.random.Generator) -> IntArray:
        precision = 1.0 / self.prior_sd**2 + self.pulls / self.noise_sd**2
        mean = (self.prior_mean / self.prior_sd**2 + self.total / self.noise_sd**2) / precision
        theta = rng.normal(mean, 1.0 / np.sqrt(precision))
        return argmax_random_ties(theta, rng)
