"""Environments: where simulated rewards come from, vectorised over replicates.

Every environment answers, at step ``t`` for ``B`` replicates in lockstep:

* ``context(t, rng, batch)``: the users' features, (B, D), or ``None`` (context-free);
* ``means(t, context)``: each arm's expected reward, (B, K) (or (1, K), broadcastable),
  the truth that regret and loss against control are measured with;
* ``sample(t, arm, rng, context)``: the rewards of the arms played, (B,);
* ``delay(t, rng, batch)``: steps until each reward is seen by the policy, (B,) int;
* ``entry``: (K,) the step at which each arm becomes available (0: from the start), so an
  alternative may be generated mid-run.

Arm 0 is control. Environments are frozen dataclasses; randomness comes only from the
``rng`` passed in. ``reward_range`` says which policies may play them. The contextual
ones (:class:`Linear`, :class:`Logistic`, :class:`Segments`) live in
:mod:`simulators.contextual` and are importable from here, as is every name of
:data:`ENVIRONMENTS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from policies.base import FloatArray, IntArray

from ._env_base import _Base, _entry, _pick, _vector
from .contextual import Linear, Logistic, Segments

__all__ = [
    "ENVIRONMENTS",
    "AbruptChange",
    "Adversarial",
    "Bernoulli",
    "Delayed",
    "Drift",
    "Environment",
    "Gaussian",
    "Linear",
    "Logistic",
    "Revenue",
    "Segments",
]


class Environment(Protocol):
    """What the runner needs from an environment (see the module docstring)."""

    name: ClassVar[str]
    n_arms: int
    dim: int
    entry: IntArray
    reward_range: tuple[float | None, float | None]

    def context(self, t: int, rng: np.random.Generator, batch: int) -> FloatArray | None: ...

    def means(self, t: int, context: FloatArray | None = None) -> FloatArray: ...

    def sample(
        self,
        t: int,
        arm: IntArray,
        rng: np.random.Generator,
        context: FloatArray | None = None,
    ) -> FloatArray: ...

    def delay(self, t: int, rng: np.random.Generator, batch: int) -> IntArray: ...


@dataclass(frozen=True, kw_only=True)
class Bernoulli(_Base):
    """Conversions: arm ``k`` pays 1 with probability ``p[k]``, else 0.

    >>> env = Bernoulli(p=[0.05, 0.055])
    >>> env.means(0)
    array([[0.05 , 0.055]])
    """

    name: ClassVar[str] = "bernoulli"
    p: Sequence[float]
    entry: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", _vector(f"{self.name}.p", self.p, low=0.0, high=1.0))
        object.__setattr__(self, "entry", _entry(self.name, self.entry, len(self.p)))

    @property
    def n_arms(self) -> int:
        return len(self.p)

    def means(self, t: int, context: FloatArray | None = None) -> FloatArray:
        return np.asarray(self.p, dtype=np.float64)[None, :]

    def sample(
        self, t: int, arm: IntArray, rng: np.random.Generator, context: FloatArray | None = None
    ) -> FloatArray:
        return (rng.random(arm.shape[0]) < _pick(self.means(t, context), arm)).astype(np.float64)


@dataclass(frozen=True, kw_only=True)
class Gaussian(_Base):
    """Real-valued rewards: ``N(mean[k], sd^2)``."""

    name: ClassVar[str] = "gaussian"
    reward_range: ClassVar[tuple[float | None, float | None]] = (None, None)
    mean: Sequence[float]
    sd: float = 1.0
    entry: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _vector(f"{self.name}.mean", self.mean))
        if not (np.isfinite(self.sd) and self.sd > 0):
            raise ValueError(f"{self.name}.sd: must be > 0 (got {self.sd!r})")
        object.__setattr__(self, "entry", _entry(self.name, self.entry, len(self.mean)))

    @property
    def n_arms(self) -> int:
        return len(self.mean)

    def means(self, t: int, context: FloatArray | None = None) -> FloatArray:
        return np.asarray(self.mean, dtype=np.float64)[None, :]

    def sample(
        self, t: int, arm: IntArray, rng: np.random.Generator, context: FloatArray | None = None
    ) -> FloatArray:
        return _pick(self.means(t), arm) + self.sd * rng.standard_normal(arm.shape[0])


@dataclass(frozen=True, kw_only=True)
class Revenue(_Base):
    """Heavy-tailed revenue per user: zero unless the user buys (probability
    ``conversion[k]``), then a lognormal amount ``exp(N(mu[k], sigma[k]^2))``.

    Mean ``conversion * exp(mu + sigma^2 / 2)``; with ``sigma`` near 1.5 a few buyers make
    most of the revenue, as in real shops.
    """

    name: ClassVar[str] = "revenue"
    reward_range: ClassVar[tuple[float | None, float | None]] = (0.0, None)
    conversion: Sequence[float]
    mu: Sequence[float]
    sigma: Sequence[float]
    entry: Any = None

    def __post_init__(self) -> None:
        c = _vector(f"{self.name}.conversion", self.conversion, low=0.0, high=1.0)
        mu = _vector(f"{self.name}.mu", self.mu)
        sigma = _vector(f"{self.name}.sigma", self.sigma, low=0.0)
        if not (c.shape == mu.shape == sigma.shape):
            raise ValueError(
                f"{self.name}: conversion, mu and sigma need one value per arm each "
                f"(got {c.size}, {mu.size}, {sigma.size})"
            )
        object.__setattr__(self, "conversion", c)
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)
        object.__setattr__(self, "entry", _entry(self.name, self.entry, c.size))

    @property
    def n_arms(self) -> int:
        return len(self.conversion)

    def means(self, t: int, context: FloatArray | None = None) -> FloatArray:
        c, mu, s = (np.asarray(v) for v in (self.conversion, self.mu, self.sigma))
        return np.asarray(c * np.exp(mu + 0.5 * s * s))[None, :]

    def sample(
        self, t: int, arm: IntArray, rng: np.random.Generator, context: FloatArray | None = None
    ) -> FloatArray:
        c, mu, s = (np.asarray(v)[arm] for v in (self.conversion, self.mu, self.sigma))
        buys = rng.random(arm.shape[0]) < c
        amount = np.exp(mu + s * rng.standard_normal(arm.shape[0]))
        return np.where(buys, amount, 0.0)


def _draw(family: str, mean: FloatArray, rng: np.random.Generator, sd: float) -> FloatArray:
    if family == "bernoulli":
        return (rng.random(mean.shape[0]) < mean).astype(np.float64)
    return mean + sd * rng.standard_normal(mean.shape[0])


@dataclass(frozen=True, kw_only=True)
class _Moving(_Base):
    """Means that move over time between two vectors (``_ends`` names them), with
    Bernoulli or Gaussian rewards around them."""

    _ends: ClassVar[tuple[str, str]]
    family: str = "bernoulli"
    sd: float = 1.0
    entry: Any = None

    def __post_init__(self) -> None:
        where = self.name
        if self.family not in ("bernoulli", "gaussian"):
            raise ValueError(
                f"{where}.family: must be 'bernoulli' or 'gaussian' (got {self.family!r})"
            )
        if self.family == "gaussian" and not (np.isfinite(self.sd) and self.sd > 0):
            raise ValueError(f"{where}.sd: must be > 0 (got {self.sd!r})")
        bounds = {"low": 0.0, "high": 1.0} if self.family == "bernoulli" else {}
        first, second = self._ends
        a = _vector(f"{where}.{first}", getattr(self, first), **bounds)
        b = _vector(f"{where}.{second}", getattr(self, second), **bounds)
        if a.shape != b.shape:
            raise ValueError(
                f"{where}.{second}: one value per arm, as {first} ({a.size}) (got {b.size})"
            )
        object.__setattr__(self, first, a)
        object.__setattr__(self, second, b)
        object.__setattr__(self, "entry", _entry(where, self.entry, a.size))

    @property
    def reward_range(self) -> tuple[float | None, float | None]:  # type: ignore[override]
        return (0.0, 1.0) if self.family == "bernoulli" else (None, None)

    @property
    def n_arms(self) -> int:
        return len(getattr(self, self._ends[0]))

    def means(self, t: int, context: FloatArray | None = None) -> FloatArray:
        raise NotImplementedError

    def sample(
        self, t: int, arm: IntArray, rng: np.random.Generator, context: FloatArray | None = None
    ) -> FloatArray:
        return _draw(self.family, _pick(self.means(t), arm), rng, self.sd)


def _step(where: str, value: Any, minimum: int) -> None:
    if not (isinstance(value, int | np.integer) and value >= minimum):
        raise ValueError(f"{where}: must be an integer >= {minimum} (got {value!r})")


@dataclass(frozen=True, kw_only=True)
class AbruptChange(_Moving):
    """The means jump from ``before`` to ``after`` at step ``at`` (Bernoulli or Gaussian).

    >>> env = AbruptChange(before=[0.5, 0.4], after=[0.5, 0.6], at=100)
    >>> env.means(99)[0, 1], env.means(100)[0, 1]
    (np.float64(0.4), np.float64(0.6))
    """

    name: ClassVar[str] = "abrupt-change"
    _ends: ClassVar[tuple[str, str]] = ("before", "after")
    before: Sequence[float]
    after: Sequence[float]
    at: int

    def __post_init__(self) -> None:
        super().__post_init__()
        _step(f"{self.name}.at", self.at, 0)

    def means(self, t: int, context: FloatArray | None = None) -> FloatArray:
        return np.asarray(self.after if t >= self.at else self.before, dtype=np.float64)[None, :]


@dataclass(frozen=True, kw_only=True)
class Drift(_Moving):
    """The means move linearly from ``start`` (step 0) to ``end`` (step ``steps``), then
    stay (Bernoulli or Gaussian).

    >>> Drift(start=[0.2, 0.4], end=[0.6, 0.4], steps=100).means(25)
    array([[0.3, 0.4]])
    """

    name: ClassVar[str] = "drift"
    _ends: ClassVar[tuple[str, str]] = ("start", "end")
    start: Sequence[float]
    end: Sequence[float]
    steps: int

    def __post_init__(self) -> None:
        super().__post_init__()
        _step(f"{self.name}.steps", self.steps, 1)

    def means(self, t: int, context: FloatArray | None = None) -> FloatArray:
        w = min(t / self.steps, 1.0)
        start, end = np.asarray(self.start), np.asarray(self.end)
        return np.asarray((1.0 - w) * start + w * end, dtype=np.float64)[None, :]


@dataclass(frozen=True, kw_only=True)
class Adversarial(_Base):
    """A given reward table: arm ``k`` pays ``rewards[t, k]`` at step ``t`` (same for every
    replicate; the policy's randomness is all that differs). Past the table's end it
    repeats from the start.
    """

    name: ClassVar[str] = "adversarial"
    rewards: npt.ArrayLike
    entry: Any = None

    def __post_init__(self) -> None:
        r = np.asarray(self.rewards, dtype=np.float64)
        if r.ndim != 2 or r.shape[1] < 2 or r.shape[0] < 1:
            raise ValueError(
                f"{self.name}.rewards: must be a (T, K) table with K >= 2 (got shape {r.shape!r})"
            )
        if not np.all(np.isfinite(r)) or r.min() < 0.0 or r.max() > 1.0:
            raise ValueError(f"{self.name}.rewards: every reward must be in [0, 1]")
        object.__setattr__(self, "rewards", r)
        object.__setattr__(self, "entry", _entry(self.name, self.entry, r.shape[1]))

    @property
    def n_arms(self) -> int:
        return int(np.shape(self.rewards)[1])

    def means(self, t: int, context: FloatArray | None = None) -> FloatArray:
        table = np.asarray(self.rewards, dtype=np.float64)
        return np.asarray(table[t % table.shape[0]][None, :])

    def sample(
        self, t: int, arm: IntArray, rng: np.random.Generator, context: FloatArray | None = None
    ) -> FloatArray:
        return _pick(self.means(t), arm)


@dataclass(frozen=True, kw_only=True)
class Delayed:
    """Any environment whose rewards reach the policy late: each reward is seen
    ``delay`` steps after its decision, geometric with mean ``mean_delay`` (``"geometric"``,
    support 0, 1, 2, ...) or exactly ``mean_delay`` (``"fixed"``). Updates lag decisions;
    the runner applies each reward at its arrival step.
    """

    name: ClassVar[str] = "delayed"
    env: Any
    mean_delay: float
    kind: str = "geometric"

    def __post_init__(self) -> None:
        if isinstance(self.env, Delayed) or not hasattr(self.env, "sample"):
            raise TypeError(f"{self.name}.env: must be an environment (got {self.env!r})")
        if self.kind not in ("geometric", "fixed"):
            raise ValueError(
                f"{self.name}.kind: must be 'geometric' or 'fixed' (got {self.kind!r})"
            )
        ok = np.isfinite(self.mean_delay) and self.mean_delay >= 0
        if not ok or (self.kind == "fixed" and self.mean_delay != int(self.mean_delay)):
            raise ValueError(
                f"{self.name}.mean_delay: must be >= 0 (a whole number for 'fixed') "
                f"(got {self.mean_delay!r})"
            )

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.env, attr)

    def delay(self, t: int, rng: np.random.Generator, batch: int) -> IntArray:
        if self.kind == "fixed" or self.mean_delay == 0:
            return np.full(batch, int(self.mean_delay), dtype=np.int64)
        # numpy's geometric counts trials (>= 1); minus one gives delays 0, 1, ... with mean m
        return rng.geometric(1.0 / (1.0 + self.mean_delay), batch).astype(np.int64) - 1


#: Environments by their kebab-case name (scenario files use these).
ENVIRONMENTS: dict[str, type[Any]] = {
    cls.name: cls
    for cls in (
        Bernoulli,
        Gaussian,
        Revenue,
        AbruptChange,
        Drift,
        Adversarial,
        Linear,
        Logistic,
        Segments,
    )
}
