"""Serving one stream the way a replica does: cached allocation, buffered additive updates.

Between refreshes a decision is one categorical draw from the cached allocation (a
binary search over its cumulative sums with a uniform from a pre-drawn block), and an
observation is validated and appended to a buffer. Every ``refresh_every`` observations
the buffer is applied to the state (as the policy's sparse increment scattered onto the
played arms, or its dense increment summed over the buffer, which additivity allows; in
order through ``update`` for non-additive policies) and the allocation is recomputed.
``refresh_every=1`` is strict online play: the allocation always reflects every reward.
No I/O and no clock: the runtime decides when to call :meth:`Server.refresh`.
"""

from __future__ import annotations

import bisect
import math
from itertools import accumulate
from typing import Any, final

import numpy as np

from .base import Decision, FloatArray, PolicyBase

__all__ = ["Server"]

_BLOCK = 4096  # uniforms drawn at once
_KEEP_VERSIONS = 1024  # allocations a late reward may still refer to


@final
class Server:
    """A single stream (batch 1) of ``policy`` with a cached allocation.

    Parameters
    ----------
    policy : a context-free policy
    n_arms : int
    rng : numpy.random.Generator
    refresh_every : int >= 1
        Observations buffered before the state and allocation are refreshed.
    stats : the starting state (batch 1); ``policy.init(n_arms)`` by default.
    """

    __slots__ = (
        "_arms",
        "_cache",
        "_cdf",
        "_flat",
        "_high",
        "_low",
        "_n_arms",
        "_policy",
        "_props",
        "_rewards",
        "_rng",
        "_rows",
        "_sparse",
        "_state",
        "_total",
        "_u",
        "_versions",
        "allocation",
        "refresh_every",
        "version",
    )

    def __init__(
        self,
        policy: PolicyBase,
        n_arms: int,
        *,
        rng: np.random.Generator,
        refresh_every: int = 1,
        stats: Any = None,
    ) -> None:
        if not isinstance(refresh_every, int) or refresh_every < 1:
            raise ValueError(
                f"Server.refresh_every: must be a positive integer (got {refresh_every!r})"
            )
        start = policy.init(n_arms, 1) if stats is None else stats
        if start.batch != 1:
            raise ValueError(f"Server.stats: must have batch 1 (got {start.batch})")
        self._policy = policy
        self._rng = rng
        self._n_arms = n_arms
        self.refresh_every = refresh_every
        # The server owns its arrays: additive increments are added to them in place.
        self._flat = start.to_dict()
        self._state = start.like(self._flat, copy=False)
        low, high = policy.reward_range
        self._low = -math.inf if low is None else low
        self._high = math.inf if high is None else high
        self._arms: list[int] = []
        self._rewards: list[float] = []
        self._props: list[float] = []
        self._versions: list[int] = []
        self._rows: dict[int, FloatArray] = {}
        self._u: list[float] = []
        self.version = -1
        self.allocation: FloatArray = np.empty(0)
        self._cdf: list[float] = []
        self._total = 1.0
        # Additive policies whose increment touches only the played arm take a reward
        # straight into the state when nothing is buffered.
        self._sparse = policy.additive and (
            policy.sparse_increment(np.zeros(1, dtype=np.int64), np.zeros(1), np.ones(1), n_arms)
            is not None
        )
        # A policy that can update its allocation one arm at a time (Thompson sampling)
        # offers a cache: after a single reward only that arm is recomputed.
        make_cache = getattr(policy, "allocation_cache", None)
        self._cache = make_cache(self._state) if make_cache is not None else None
        self._recompute(None)

    @property
    def stats(self) -> Any:
        """A copy of the current state (buffered observations not yet applied)."""
        return self._state.like(self._state.to_dict())

    def _recompute(self, changed: int | None) -> None:
        if self._cache is not None:
            row = self._cache.refresh(self._state, changed).copy()
        else:
            row = self._policy.allocation(self._state)[0]
        self.version += 1
        self.allocation = row
        self._rows[self.version] = row
        if len(self._rows) > _KEEP_VERSIONS:  # rewards may arrive late, but not forever
            del self._rows[next(iter(self._rows))]
        self._cdf = list(accumulate(row.tolist()))
        self._total = self._cdf[-1]

    def select(self) -> tuple[int, float, int]:
        """Draw an arm: ``(arm, propensity, allocation version)``."""
        if not self._u:
            self._u = self._rng.random(_BLOCK).tolist()
        arm = bisect.bisect_right(self._cdf, self._u.pop() * self._total)
        # cdf[arm - 1] <= u < cdf[arm], so the arm drawn always has positive mass.
        return arm, float(self.allocation[arm]), self.version

    def update(self, arm: int, reward: float, version: int) -> None:
        """Buffer the reward of a decision drawn with allocation ``version``.

        Raises
        ------
        ValueError
            For an unknown version, an arm out of range, or a reward that is not finite
            or outside the policy's range; nothing is buffered then.
        """
        row = self._rows.get(version)
        if row is None:
            raise ValueError(
                f"Server.update: unknown allocation version (got {version!r}); "
                f"accepted: {min(self._rows)}..{self.version}"
            )
        if not 0 <= arm < self._n_arms:
            raise ValueError(f"Server.update: arm out of range (got {arm!r})")
        if not (math.isfinite(reward) and self._low <= reward <= self._high):
            raise ValueError(
                f"Server.update: reward must be finite and in [{self._low}, {self._high}] "
                f"(got {reward!r})"
            )
        if self.refresh_every == 1 and self._sparse:
            # Strict online play: add this reward's increment and recompute at once.
            amounts = self._policy.sparse_increment(arm, reward, row[arm], self._n_arms)
            for key, amount in amounts.items():  # type: ignore[union-attr]
                self._flat[key][0, arm] += amount
            self._recompute(arm)
            return
        self._arms.append(arm)
        self._rewards.append(reward)
        self._props.append(row[arm])
        self._versions.append(version)
        if len(self._arms) >= self.refresh_every:
            self.refresh()

    def refresh(self) -> None:
        """Apply the buffered observations and recompute the allocation."""
        changed = self._apply() if self._arms else None
        self._recompute(changed)

    def _apply(self) -> int | None:
        """Apply the buffer; the one arm whose entries changed, if that is all that did."""
        policy = self._policy
        changed = None
        arms = np.array(self._arms, dtype=np.int64)
        rewards = np.array(self._rewards)
        sparse = (
            policy.sparse_increment(arms, rewards, np.array(self._props), self._n_arms)
            if policy.additive
            else None
        )
        if sparse is not None:
            for key, amount in sparse.items():
                self._flat[key][0] += np.bincount(arms, weights=amount, minlength=self._n_arms)
            if len(set(self._arms)) == 1:
                changed = self._arms[0]
        else:
            decision = Decision(arms, np.stack([self._rows[v] for v in self._versions]))
            if policy.additive:
                for key, value in policy.increment(decision, rewards).sum_rows().to_dict().items():
                    self._flat[key] += value
            else:
                state = self._state
                for i in range(arms.shape[0]):
                    one = Decision(arms[i : i + 1], decision.propensity[i : i + 1])
                    state = policy.update(state, one, rewards[i : i + 1])
                self._flat = state.to_dict()
                self._state = state.like(self._flat, copy=False)
        self._arms.clear()
        self._rewards.clear()
        self._props.clear()
        self._versions.clear()
        return changed
