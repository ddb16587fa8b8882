"""What the contextual learners share: their state, context and reward checks, and the
refusals of additive use (:mod:`policies.vw`, :mod:`policies.river_ts`).

Neither learner is additive. Their state is a *model* (Vowpal Wabbit workspaces, river
estimators) that learns from observations in order, so it has one writer: a learner
process (``autoexp learn``) applies ``update`` (which trains the model in place and
returns the same state), publishes snapshots with ``to_bytes``, and serving replicas load
them with ``from_bytes`` and only read (``allocation``, ``select``). Stores that add
increments cannot merge these states; ``increment`` and ``state_from_dict`` refuse with
``TypeError``. ``stats.rows(i)`` shares the models of the selected rows (reading is safe;
updating a sub-state trains the shared models).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from .base import (
    Decision,
    FloatArray,
    PolicyBase,
    Stats,
    check_params,
    context_rows,
    uniforms,
)

__all__ = ["LearnerStats", "ObjectArray"]

ObjectArray = npt.NDArray[np.object_]


@dataclass(frozen=True, slots=True)
class LearnerStats(Stats):
    """The state of a learner: models trained in place, and per-arm counts. Not additive.

    Attributes
    ----------
    model : (B,) object or (B, K, n_boot) object
        :class:`VWExplore`: one ``vowpalwabbit.Workspace`` per row.
        :class:`RiverThompson`: ``n_boot`` river classifiers per row and arm.
    rng : (B,) object
        :class:`RiverThompson`: each row's ``np.random.Generator`` for the bootstrap
        weights (``update`` takes no generator, so the model owns one; snapshots carry
        it). :class:`VWExplore`: ``None`` per row (its training is deterministic).
    n : (B, K) float64
        Rewards learned from per arm.
    """

    additive: ClassVar[bool] = False
    model: ObjectArray
    rng: ObjectArray
    n: FloatArray


class _Learner(PolicyBase):
    """What both learners share: context and reward checks, refusals of additive use."""

    __slots__ = ()
    additive: ClassVar[bool] = False
    dim: int
    low: float
    high: float

    @property
    def reward_range(self) -> tuple[float | None, float | None]:  # type: ignore[override]
        return self.low, self.high

    @property
    def context_dim(self) -> int | None:
        return self.dim

    def _check_common(self) -> None:
        check_params(
            self.name,
            dim=(
                isinstance(self.dim, int) and not isinstance(self.dim, bool) and self.dim >= 1,
                self.dim,
                "an integer >= 1",
            ),
            high=(
                _finite(self.low) and _finite(self.high) and self.low < self.high,
                (self.low, self.high),
                "finite bounds with low < high",
            ),
        )

    def context(self, context: npt.ArrayLike | None, batch: int) -> FloatArray:
        """``context`` as a (B, dim) array of finite numbers (:func:`context_rows`)."""
        return context_rows(self.name, self.dim, context, batch)

    def _observation(
        self, stats: LearnerStats, decision: Decision, reward: FloatArray, context: Any
    ) -> list[tuple[int, float, list[float], float]]:
        """Validated (arm, reward scaled to [0, 1], context, arm's propensity) per row.

        Python lists: a learner updates a few rows at a time, one model call per row, and
        list checks cost less than numpy's per-call overhead on arrays of one row.
        """
        batch, k = stats.n.shape
        if decision.propensity.shape != (batch, k) or decision.arm.shape != (batch,):
            raise ValueError(
                f"{self.name}: decision must have arm ({batch},) and propensity ({batch}, {k}) "
                f"(got {decision.arm.shape} and {decision.propensity.shape})"
            )
        arms = decision.arm.tolist()
        if not all(isinstance(a, int) and 0 <= a < k for a in arms):
            raise ValueError(f"{self.name}: arm out of range (got {arms!r}); accepted: 0..{k - 1}")
        r = self.check(decision, reward)
        x = self.context(context, batch).tolist()
        scale = 1.0 / (self.high - self.low)
        prop = decision.propensity.tolist()
        return [
            (a, (rb - self.low) * scale, xb, prop[b][a])
            for b, (a, rb, xb) in enumerate(zip(arms, r.tolist(), x, strict=True))
        ]

    def select(
        self,
        stats: LearnerStats,
        rng: np.random.Generator | Sequence[np.random.Generator],
        context: FloatArray | None = None,
    ) -> Decision:
        """Draw one arm per row from :meth:`allocation`; the decision carries it.

        The same inverse-CDF draw as :func:`policies.base.draw` (an arm with probability 0
        is never drawn), row by row in Python: cheaper than the vectorised form for the
        few rows a learner serves at a time.
        """
        p = self.allocation(stats, context)
        u = uniforms(rng, p.shape[0]).tolist()
        arm = [_draw_row(row, ub) for row, ub in zip(p.tolist(), u, strict=True)]
        return Decision(np.array(arm, dtype=np.int64), p)

    def increment(
        self, decision: Decision, reward: FloatArray, context: FloatArray | None = None
    ) -> Stats:
        raise TypeError(
            f"{self.name}: not additive (a model that learns in order); "
            "use update(stats, decision, reward, context)"
        )

    def state_from_dict(self, data: Any) -> LearnerStats:
        raise TypeError(
            f"{self.name}: the state is a model, not arrays; load a snapshot with from_bytes()"
        )


def _draw_row(p: list[float], u: float) -> int:
    """The first arm whose cumulative probability exceeds ``u * total`` and has mass."""
    target = u * sum(p)
    acc = 0.0
    last = 0
    for k, pk in enumerate(p):
        if pk > 0.0:
            acc += pk
            last = k
            if acc > target:
                return k
    return last


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: object) -> bool:
    return _finite(value) and float(value) > 0  # type: ignore[arg-type]


def _count(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low
