"""What every environment of :mod:`simulators.envs` is built from: the checks of per-arm
vectors and entry steps, picking each replicate's arm's mean, and the defaults (no context,
rewards seen at once, every arm present from the start).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from policies.base import FloatArray, IntArray

__all__: list[str] = []


def _vector(where: str, value: Any, *, low: float = -np.inf, high: float = np.inf) -> FloatArray:
    a = np.asarray(value, dtype=np.float64)
    if a.ndim != 1 or a.size < 2:
        raise ValueError(
            f"{where}: must be a list of at least 2 numbers, one per arm (got {value!r})"
        )
    if not np.all(np.isfinite(a)) or np.any(a < low) or np.any(a > high):
        raise ValueError(
            f"{where}: every value must be finite and in [{low}, {high}] (got {value!r})"
        )
    return a


def _entry(where: str, entry: Any, n_arms: int) -> IntArray:
    if entry is None:
        return np.zeros(n_arms, dtype=np.int64)
    e = np.asarray(entry)
    if e.shape != (n_arms,) or not np.issubdtype(e.dtype, np.integer) or np.any(e < 0) or e[0] != 0:
        raise ValueError(
            f"{where}.entry: must be {n_arms} integer steps >= 0 with control (arm 0) at 0 "
            f"(got {entry!r})"
        )
    return e.astype(np.int64)


def _pick(means: FloatArray, arm: IntArray) -> FloatArray:
    """``means[b, arm[b]]`` for (B, K) or broadcastable (1, K) means."""
    m = np.broadcast_to(means, (arm.shape[0], means.shape[1]))
    return np.asarray(m[np.arange(arm.shape[0]), arm])


@dataclass(frozen=True, kw_only=True)
class _Base:
    """Defaults: no context, rewards seen at once, every arm present from the start."""

    name: ClassVar[str]
    reward_range: ClassVar[tuple[float | None, float | None]] = (0.0, 1.0)
    dim: int = field(default=0, init=False)

    def context(self, t: int, rng: np.random.Generator, batch: int) -> FloatArray | None:
        return None

    def delay(self, t: int, rng: np.random.Generator, batch: int) -> IntArray:
        return np.zeros(batch, dtype=np.int64)
