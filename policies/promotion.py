"""The promotion rule: from evidence to each alternative's lifecycle state, with reasons.

Pure and batched: the state is a (B, K) array of status codes (column 0 is control and
never changes) and :meth:`PromotionRule.step` maps it, with the latest
:class:`~policies.sequential.Evidence` and any guardrails' evidence, to the next one plus a
:class:`Transition` record for every change. Decisions are sticky: an alternative leaves
``exploring`` once, which is what makes checking after every observation safe with
anytime-valid evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .base import FloatArray, check_params
from .safety import HARM, GuardrailEvidence
from .sequential import Evidence

__all__ = [
    "EXPLORING",
    "INCONCLUSIVE",
    "PROMOTED",
    "ROLLED_BACK",
    "STATUS",
    "PromotionRule",
    "Transition",
]

EXPLORING, PROMOTED, ROLLED_BACK, INCONCLUSIVE = 0, 1, 2, 3
#: Status names by code.
STATUS = ("exploring", "promoted", "rolled_back", "inconclusive")

StatusArray = npt.NDArray[np.int8]


@dataclass(frozen=True, slots=True)
class Transition:
    """One lifecycle change of one alternative, with the evidence that caused it.

    ``lower``/``upper`` bound the difference against control (for a guardrail: the harm,
    positive is worse); ``statistic`` and ``boundary`` are the test's (see
    :class:`~policies.sequential.Evidence`); ``t`` is the number of users so far.
    """

    row: int
    arm: int
    old: str
    new: str
    source: str
    reason: str
    estimate: float
    lower: float
    upper: float
    statistic: float
    boundary: float
    n_arm: float
    n_control: float
    t: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class PromotionRule:
    """Decide each alternative's state from anytime-valid evidence.

    In order, for every alternative still ``exploring``:

    1. a guardrail breach (harm or hard limit) rolls it back at once;
    2. the primary test's upper bound below 0 (worse than control) rolls it back;
    3. its lower bound above ``margin`` promotes it; when several qualify in one row, the
       one with the largest lower bound is promoted (an exact tie goes to the lower arm
       index: the rule is deterministic) and the others keep exploring (the promoted arm
       becomes the new control and the runtime starts a new comparison);
    4. at ``horizon`` users, whatever still explores is ``inconclusive``.

    The primary test's own ``min_samples`` guards its early, asymptotic part: its bounds
    are infinite until then. Guardrail sequences are non-asymptotic and act from the
    first observation.

    Parameters
    ----------
    test_name : the primary test's name, for the records
    margin : float >= 0, the effect an alternative must beat to be promoted
    horizon : float or None, users after which exploring becomes inconclusive
    rollback_worse : bool, roll back on evidence that an alternative is worse

    Examples
    --------
    >>> import numpy as np
    >>> rule = PromotionRule(test_name="asymptotic-cs")
    >>> status = rule.init(3, 1)
    >>> ev = Evidence(*[np.array([[np.nan, x, y]]) for x, y in
    ...     [(0.1, -0.1), (0.05, -0.2), (0.15, -0.01), (0, 0), (0, 0), (1, 1)]],
    ...     np.array([[500.0, 500.0, 500.0]]))
    >>> status, changes = rule.step(status, ev)
    >>> [STATUS[s] for s in status[0]], [(c.arm, c.new) for c in changes]
    (['exploring', 'promoted', 'rolled_back'], [(2, 'rolled_back'), (1, 'promoted')])
    """

    test_name: str = "primary"
    margin: float = 0.0
    horizon: float | None = None
    rollback_worse: bool = True

    def __post_init__(self) -> None:
        check_params(
            "promotion",
            margin=(self.margin >= 0.0, self.margin, ">= 0"),
            horizon=(self.horizon is None or self.horizon > 0, self.horizon, "> 0 or None"),
        )

    def init(self, n_arms: int, batch: int = 1) -> StatusArray:
        """Every alternative exploring."""
        return np.zeros((batch, n_arms), dtype=np.int8)

    def step(
        self,
        status: StatusArray,
        evidence: Evidence,
        guardrails: Sequence[tuple[str, GuardrailEvidence]] = (),
        t: FloatArray | None = None,
    ) -> tuple[StatusArray, list[Transition]]:
        """The next status (a new array) and the records of what changed.

        Parameters
        ----------
        status : (B, K) int8 status codes
        evidence : the primary test's evidence
        guardrails : ``(name, evidence)`` pairs
        t : (B,) users so far; defaults to the primary test's total count
        """
        if status.shape != evidence.lower.shape:
            raise ValueError(
                f"promotion: status shape {status.shape!r} differs from the evidence's "
                f"{evidence.lower.shape!r}"
            )
        users = evidence.n.sum(axis=1) if t is None else np.asarray(t, dtype=np.float64)
        new = status.copy()
        # Fast exit, the common case when checking after every reward: nothing crosses.
        crossing = (evidence.lower > self.margin) | (evidence.upper < 0.0)
        if not (
            crossing.any()
            or any(g.breach.any() for _, g in guardrails)
            or (self.horizon is not None and users.max() >= self.horizon)
        ):
            return new, []
        live = new == EXPLORING
        live[:, 0] = False
        changes: list[Transition] = []

        for name, g in guardrails:
            hit = live & (g.breach != 0)
            for row, arm in zip(*np.nonzero(hit), strict=True):
                kind = "harm" if g.breach[row, arm] == HARM else "hard limit"
                lo, hi = g.arm_lower[row, arm], g.arm_upper[row, arm]
                metric = (  # the metric's own bounds (an off-policy guardrail has none)
                    f", metric bounds [{lo:.4g}, {hi:.4g}]"
                    if np.isfinite(lo) or np.isfinite(hi)
                    else ""
                )
                reason = (
                    f"guardrail {name}: {kind} (harm bounds [{g.harm_lower[row, arm]:.4g}, "
                    f"{g.harm_upper[row, arm]:.4g}]{metric})"
                )
                changes.append(
                    self._record(row, arm, ROLLED_BACK, name, reason, g, users, guard=True)
                )
            new[hit] = ROLLED_BACK
            live &= ~hit

        if self.rollback_worse:
            worse = live & (evidence.upper < 0.0)
            for row, arm in zip(*np.nonzero(worse), strict=True):
                reason = f"worse than control: upper bound {evidence.upper[row, arm]:.4g} < 0"
                changes.append(
                    self._record(row, arm, ROLLED_BACK, self.test_name, reason, evidence, users)
                )
            new[worse] = ROLLED_BACK
            live &= ~worse

        better = live & (evidence.lower > self.margin)
        better &= ~(new == PROMOTED).any(axis=1, keepdims=True)
        rows = np.nonzero(better.any(axis=1))[0]
        if rows.size:
            score = np.where(better[rows], evidence.lower[rows], -np.inf)
            arms = np.argmax(score, axis=1)
            for row, arm in zip(rows, arms, strict=True):
                reason = (
                    f"better than control: lower bound {evidence.lower[row, arm]:.4g} > "
                    f"margin {self.margin:g}"
                )
                changes.append(
                    self._record(row, arm, PROMOTED, self.test_name, reason, evidence, users)
                )
                new[row, arm] = PROMOTED
                live[row, arm] = False

        if self.horizon is not None:
            done = live & (users >= self.horizon)[:, None]
            for row, arm in zip(*np.nonzero(done), strict=True):
                reason = f"horizon of {self.horizon:g} users reached without a decision"
                changes.append(
                    self._record(row, arm, INCONCLUSIVE, self.test_name, reason, evidence, users)
                )
            new[done] = INCONCLUSIVE
        return new, changes

    def _record(
        self,
        row: Any,
        arm: Any,
        to: int,
        source: str,
        reason: str,
        ev: Any,
        users: FloatArray,
        *,
        guard: bool = False,
    ) -> Transition:
        r, a = int(row), int(arm)
        if guard:
            lower, upper = ev.harm_lower[r, a], ev.harm_upper[r, a]
            estimate, statistic, boundary = np.nan, ev.statistic[r, a], ev.threshold[r, a]
        else:
            lower, upper = ev.lower[r, a], ev.upper[r, a]
            estimate, statistic, boundary = ev.estimate[r, a], ev.statistic[r, a], ev.boundary[r, a]
        return Transition(
            row=r,
            arm=a,
            old=STATUS[EXPLORING],
            new=STATUS[to],
            source=source,
            reason=reason,
            estimate=float(estimate),
            lower=float(lower),
            upper=float(upper),
            statistic=float(statistic),
            boundary=float(boundary),
            n_arm=float(ev.n[r, a]),
            n_control=float(ev.n[r, 0]),
            t=float(users[r]),
        )
