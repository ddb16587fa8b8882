"""Serving a learner (Vowpal Wabbit, river) that trains elsewhere: the engine's side of the
explore, log, learn, deploy loop.

A learner's state is a model trained in order by one process (``autoexp learn``), not
additive arrays, so a serving replica cannot hold it in the store. In the engine the
learner at the heart of the policy stack is replaced by :class:`SnapshotPolicy`: its
allocation at a request's context is the newest *deployed* snapshot's (loaded by
:class:`~autoexp.model.ModelReader` at each refresh, atomically, never waiting for
training), or uniform over the alternatives until one is deployed (the exploration the
first model learns from); its own state is per-arm counts and reward sums, additive like
any other, for the status page. The safety wrappers around it stay as configured: the
traffic cap caps the snapshot's allocation and the conservative budget gates it, so a
deployed model is bounded exactly as any policy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from policies.base import ArmStats, Decision, FloatArray, PolicyBase

from .model import ModelReader
from .store.base import Store

__all__ = ["SnapshotPolicy", "serving_policy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotPolicy(PolicyBase):
    """A learner's deployed snapshot as an additive policy (see the module docstring).

    Parameters
    ----------
    learner : the configured learner (``vw-cb``, ``river-ts``); its hyperparameters read
        the snapshots
    reader : the :class:`~autoexp.model.ModelReader` the engine refreshes
    """

    name: ClassVar[str] = "snapshot"
    learner: Any
    reader: ModelReader = dataclasses.field(compare=False)

    @property
    def context_dim(self) -> int | None:
        return self.learner.context_dim  # type: ignore[no-any-return]

    @property
    def reward_range(self) -> tuple[float | None, float | None]:  # type: ignore[override]
        return self.learner.reward_range  # type: ignore[no-any-return]

    @property
    def version(self) -> int:
        """The deployed snapshot served (0: none yet, uniform exploration)."""
        return self.reader.version

    def init(self, n_arms: int, batch: int = 1) -> ArmStats:
        return ArmStats.zeros(n_arms, batch)

    def allocation(self, stats: ArmStats, context: FloatArray | None = None) -> FloatArray:
        batch, k = stats.n.shape
        if context is None or self.reader.version == 0:
            return np.full((batch, k), 1.0 / k)
        x = np.asarray(context, dtype=np.float64).reshape(batch, -1)
        return np.stack([self.reader.allocation(row) for row in x])

    def increment(
        self, decision: Decision, reward: FloatArray, context: FloatArray | None = None
    ) -> ArmStats:
        return ArmStats.of(decision, self.check(decision, reward))

    def sparse_increment(
        self, arm: Any, reward: Any, propensity: Any, n_arms: int
    ) -> dict[str, Any] | None:
        return None  # the engine takes the dense path for contextual policies


def serving_policy(policy: Any, store: Store, experiment: str) -> tuple[Any, ModelReader | None]:
    """``policy`` with a learner at its heart replaced by a :class:`SnapshotPolicy` (and
    the reader to refresh), or ``policy`` itself (and ``None``) when it has none."""
    from .learn import is_learner

    inner = getattr(policy, "policy", None)
    if inner is not None and not is_learner(policy):
        served, reader = serving_policy(inner, store, experiment)
        if reader is None:
            return policy, None
        return dataclasses.replace(policy, policy=served), reader
    if is_learner(policy):
        reader = ModelReader(store, experiment, policy)
        return SnapshotPolicy(learner=policy, reader=reader), reader
    return policy, None
