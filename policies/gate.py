"""Gated deployment: deploy a new model only once logged data show it is not worse.

A learner process trains a model on the decision log and proposes snapshots; serving
switches to a snapshot only when an anytime-valid lower confidence sequence on
``V(new) - V(current)``, built from logged data the snapshot was *not* trained on, clears
a margin (Karampatziakis, Mineiro and Ramdas 2021, "Off-policy confidence sequences").
Because the sequence holds at every row count simultaneously, the gate may be checked
after every row or batch, for as long as one likes: the probability that a policy worse
than the current one is ever deployed is at most ``alpha``.

Each logged row ``i`` (context ``x``, arm ``a`` played with the logging policy's
propensity ``p = mu(a | x)``, reward ``r`` scaled to [0, 1]) gives the term

    phi_i = (pi_new(a | x) - pi_cur(a | x)) / p * (r - m_i),

with ``m_i`` the running mean of the earlier rows' rewards (predictable). Since
``sum_a (pi_new(a | x) - pi_cur(a | x)) = 0``, the control variate ``m_i`` does not move the
conditional mean: ``E[phi_i | past] = V(new) - V(cur)`` (IPS with a baseline), as long as
the logging policy gives every arm where the two policies differ a positive propensity.

Assumption (bounded weights): ``|pi_new(a | x) - pi_cur(a | x)| / mu(a | x) <= max_weight``
for the arms the logging policy plays; for a logging policy that explores with at least
``eps / K`` per arm, ``max_weight = K / eps`` suffices. Then ``phi_i`` lies in
``[-h_i, h_i]``, ``h_i = max_weight * max(m_i, 1 - m_i)``, known before the row arrives,
and the empirical-Bernstein supermartingale with predictable bets of
:mod:`policies._cs_kernels` (Howard et al. 2021, Thm 4; Waudby-Smith and Ramdas 2023,
Thm 2) gives the one-sided sequence. The range may not depend on the row's context (a bet
sized on the context would face a term whose mean is the context's own difference, not
the policy values'), hence a constant weight bound. A term above its range is clipped
down, which only lowers the bound (still valid). A term below its range breaks the
assumption: the row is counted in ``n_unsafe`` and the gate refuses to deploy on that
sequence (:meth:`Gate.decide`), since its bound is no longer guaranteed.

Other assumptions: contexts and rewards are i.i.d. given the arm (stationary), and
whether (and when) a reward arrives does not depend on its value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numba
import numpy as np
import numpy.typing as npt

from ._cs_kernels import _eb_bet, _eb_put
from .base import FloatArray, Stats, check_params

__all__ = ["Gate", "GateEvidence", "GateStats", "alpha_spent"]


@dataclass(frozen=True, slots=True)
class GateStats(Stats):
    """A gate's running sums, each (B,) float64. Not additive: the bets depend on order.

    Attributes
    ----------
    t, s1, s2 : rows seen, sum and sum of squares of the terms (the bets' plug-ins)
    sl, slx, spv : sums of the bets, bets times terms, and penalties (the bound)
    sum_reward : sum of the rows' rewards scaled to [0, 1] (the control variate)
    n_unsafe : rows whose term fell below its range (the weight bound did not hold)
    """

    additive: ClassVar[bool] = False
    t: FloatArray
    s1: FloatArray
    s2: FloatArray
    sl: FloatArray
    slx: FloatArray
    spv: FloatArray
    sum_reward: FloatArray
    n_unsafe: FloatArray


class GateEvidence(NamedTuple):
    """What a gate's sequence says now, each (B,): in reward units."""

    estimate: FloatArray  # mean of the terms: an estimate of V(new) - V(current)
    lower: FloatArray  # anytime-valid lower bound on V(new) - V(current) (-inf before data)
    n: FloatArray  # rows seen
    valid: npt.NDArray[np.bool_]  # False once a row broke the weight bound


def alpha_spent(alpha: float, test: int) -> float:
    """The error given to the ``test``-th sequence (1-based) of a learner: ``alpha 6 /
    (pi^2 test^2)``, which sums to ``alpha`` over all tests (a union bound).

    >>> round(alpha_spent(0.05, 1), 6), round(alpha_spent(0.05, 2), 6)
    (0.030396, 0.007599)
    """
    if not (isinstance(test, int) and test >= 1):
        raise ValueError(f"alpha_spent.test: must be an integer >= 1 (got {test!r})")
    return alpha * 6.0 / (math.pi**2 * test * test)


@numba.njit(cache=True)
def _gate_add(st, arm, r01, prop, new, cur, max_weight, log_a, n_tune):  # type: ignore[no-untyped-def]
    # st: (t, s1, s2, sl, slx, spv, sum_reward, n_unsafe), each (B, 1), changed in place
    # row by row: every bet sees the rows before it (predictable).
    eb = (st[0], st[1], st[2], st[3], st[4], st[5])
    for b in range(arm.shape[0]):
        for i in range(arm.shape[1]):
            a = arm[b, i]
            t = st[0][b, 0]
            m = (st[6][b, 0] + 0.5) / (t + 1.0)
            half = max_weight * max(m, 1.0 - m)
            lam, psi, xhat = _eb_bet(st[0], st[1], st[2], b, 0, -half, half, log_a, n_tune)
            x = (new[b, i, a] - cur[b, i, a]) / prop[b, i] * (r01[b, i] - m)
            if x > half:
                x = half  # lowers the mean: the lower bound stays valid
            elif x < -half:
                x = -half  # raises it: the bound no longer holds
                st[7][b, 0] += 1.0
            _eb_put(eb, b, 0, x, lam, psi, xhat)
            st[6][b, 0] += r01[b, i]


@dataclass(frozen=True, slots=True, kw_only=True)
class Gate:
    """Deploy a new policy only when an off-policy lower confidence sequence on
    ``V(new) - V(current)`` reaches ``margin`` (see the module docstring).

    Parameters
    ----------
    alpha : float in (0, 1)
        The probability that a policy worse than the current one (by any amount, or by
        more than ``-margin``) is ever deployed, however often the gate is checked.
    margin : float
        Deploy when the lower bound is at least this (reward units); 0: not worse.
    max_weight : float >= 1
        Bound on ``|pi_new(a|x) - pi_cur(a|x)| / mu(a|x)`` (the assumption).
    n_expected : float > 0
        Rows at which the bets are tightest (any value fixed in advance keeps validity).
    low, high : float
        The reward range; rewards outside are refused.

    Notes
    -----
    Karampatziakis, Mineiro and Ramdas 2021 (off-policy confidence sequences); the bound is
    the empirical-Bernstein one of :class:`policies.sequential.OffPolicyCS`, one-sided.

    Examples
    --------
    >>> gate = Gate(alpha=0.05, max_weight=3.0)
    >>> stats = gate.init()
    >>> gate.evaluate(stats).lower
    array([-inf])
    >>> gate.decide(stats)
    array([False])
    """

    name: ClassVar[str] = "gate"
    alpha: float = 0.05
    margin: float = 0.0
    max_weight: float = 20.0
    n_expected: float = 5_000.0
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        def finite(v: object) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        check_params(
            self.name,
            alpha=(finite(self.alpha) and 0.0 < self.alpha < 1.0, self.alpha, "in (0, 1)"),
            margin=(finite(self.margin), self.margin, "a finite number"),
            max_weight=(
                finite(self.max_weight) and self.max_weight >= 1.0,
                self.max_weight,
                "finite and >= 1",
            ),
            n_expected=(
                finite(self.n_expected) and self.n_expected > 0,
                self.n_expected,
                "finite and > 0",
            ),
            high=(
                finite(self.low) and finite(self.high) and self.low < self.high,
                (self.low, self.high),
                "finite bounds with low < high",
            ),
        )

    def init(self, batch: int = 1) -> GateStats:
        """Zeros for ``batch`` independent sequences."""
        if not (isinstance(batch, int) and batch >= 1):
            raise ValueError(f"{self.name}.batch: must be an integer >= 1 (got {batch!r})")
        return GateStats(*(np.zeros(batch) for _ in range(8)))

    def update(
        self,
        stats: GateStats,
        arm: npt.ArrayLike,
        reward: npt.ArrayLike,
        propensity: npt.ArrayLike,
        new: npt.ArrayLike,
        current: npt.ArrayLike,
    ) -> GateStats:
        """The state after ``N`` more logged rows per sequence, in order (a new state).

        Parameters
        ----------
        stats : GateStats, batch B
        arm : (B, N) int
            The arms played.
        reward : (B, N) float
            In ``[low, high]``.
        propensity : (B, N) float in (0, 1]
            The logging policy's probability of the arm played.
        new, current : (B, N, K) float
            The two policies' allocations at each row's context (rows sum to 1).

        Raises
        ------
        ValueError
            For shapes that disagree, an arm out of range, a reward outside
            ``[low, high]``, a propensity outside (0, 1], or allocations that are not
            probabilities.
        """
        batch = stats.t.shape[0]
        a = np.asarray(arm)
        r = np.asarray(reward, dtype=np.float64)
        p = np.asarray(propensity, dtype=np.float64)
        pn = np.asarray(new, dtype=np.float64)
        pc = np.asarray(current, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != batch or r.shape != a.shape or p.shape != a.shape:
            raise ValueError(
                f"{self.name}: arm, reward and propensity must be ({batch}, N) "
                f"(got {a.shape}, {r.shape}, {p.shape})"
            )
        if pn.ndim != 3 or pn.shape[:2] != a.shape or pc.shape != pn.shape:
            raise ValueError(
                f"{self.name}: new and current must be ({batch}, {a.shape[1]}, K) "
                f"(got {pn.shape} and {pc.shape})"
            )
        k = pn.shape[2]
        if not np.issubdtype(a.dtype, np.integer) or (a.size and (a.min() < 0 or a.max() >= k)):
            raise ValueError(f"{self.name}: arm must be integers in 0..{k - 1}")
        if not np.all((r >= self.low) & (r <= self.high)):
            raise ValueError(
                f"{self.name}: reward must be in [{self.low}, {self.high}] (got "
                f"{r[~((r >= self.low) & (r <= self.high))][:3].tolist()!r})"
            )
        if not np.all((p > 0.0) & (p <= 1.0)):
            raise ValueError(f"{self.name}: propensity must be in (0, 1]")
        for label, q in (("new", pn), ("current", pc)):
            if not (np.all(q >= 0.0) and np.allclose(q.sum(axis=2), 1.0, atol=1e-6)):
                raise ValueError(f"{self.name}: {label} rows must be probabilities summing to 1")
        out = GateStats(*(np.array(x, dtype=np.float64)[:, None] for x in _arrays(stats)))
        r01 = (r - self.low) / (self.high - self.low)
        _gate_add(
            _arrays(out),
            a.astype(np.int64),
            r01,
            p,
            pn,
            pc,
            float(self.max_weight),
            math.log(1.0 / self.alpha),
            float(self.n_expected),
        )
        return GateStats(*(x[:, 0] for x in _arrays(out)))

    def evaluate(self, stats: GateStats) -> GateEvidence:
        """The estimate and the anytime-valid lower bound on ``V(new) - V(current)``."""
        scale = self.high - self.low
        log_a = math.log(1.0 / self.alpha)
        with np.errstate(divide="ignore", invalid="ignore"):
            estimate = np.where(stats.t > 0, stats.s1 / stats.t, 0.0) * scale
            lower = np.where(
                stats.sl > 0,
                np.maximum((stats.slx - stats.spv - log_a) / stats.sl, -1.0) * scale,
                -np.inf,
            )
        return GateEvidence(estimate, lower, stats.t.copy(), stats.n_unsafe == 0)

    def decide(self, stats: GateStats) -> npt.NDArray[np.bool_]:
        """(B,) bool: deploy, i.e. the lower bound is at least ``margin`` and every row
        kept the weight bound."""
        ev = self.evaluate(stats)
        return np.asarray(ev.valid & (ev.lower >= self.margin) & (ev.n > 0))


def _arrays(stats: GateStats) -> tuple[FloatArray, ...]:
    return (
        stats.t,
        stats.s1,
        stats.s2,
        stats.sl,
        stats.slx,
        stats.spv,
        stats.sum_reward,
        stats.n_unsafe,
    )
