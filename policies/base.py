"""The policy protocol: additive state, allocations, decisions.

A policy's hyperparameters are the (frozen) policy object; its state is a separate
frozen dataclass of arrays with a leading batch axis ``B`` (``B = 1`` online, ``B =
replicates`` offline). Deciding is a pure function of the state: the policy computes an
*allocation* (the probability of each arm, shape ``(B, K)``) and ``select`` draws one
arm per row from it, so every :class:`Decision` carries its exact propensity.

For additive policies ``increment`` returns the contribution of one observation per row,
and the new state is ``stats + increment``. Addition commutes, so increments may be
applied in any order, merged across replicas, replayed after a crash or summed over a
batch of buffered observations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt

from ._kernels import FloatArray, IntArray, arm_stats_add, first_bad

__all__ = [
    "LOG_COLUMNS",
    "ArmStats",
    "ArmStatsPolicy",
    "Decision",
    "FloatArray",
    "IntArray",
    "Policy",
    "PolicyBase",
    "Stats",
    "argmax_allocation",
    "arm_stats_sparse",
    "check_context_free",
    "check_params",
    "check_reward",
    "context_rows",
    "draw",
    "ratio",
    "uniforms",
]


#: The decision log's columns: what the runtime writes for each decision (one JSON object
#: per line) and what the simulators' off-policy evaluation reads.
#: ``context`` is a list of numbers or null; ``reward`` and ``reward_time`` are null until
#: the reward has joined. ``propensity`` is the probability the arm was played with.
LOG_COLUMNS = (
    "decision_id",
    "time",
    "experiment",
    "unit_hash",
    "context",
    "arm",
    "propensity",
    "policy",
    "policy_version",
    "allocation_version",
    "seed",
    "reward",
    "reward_time",
)


class Decision(NamedTuple):
    """One decision per batch row.

    Attributes
    ----------
    arm : (B,) int64
        The chosen arm; arm 0 is control wherever a safety wrapper is used.
    propensity : (B, K) float64
        The allocation the arm was drawn from; rows sum to 1.
    """

    arm: IntArray
    propensity: FloatArray


@dataclass(frozen=True, slots=True)
class Stats:
    """Base of every policy state: a frozen dataclass of arrays (or nested states).

    Every array has the batch axis first. Subclasses only declare fields. A state whose
    policy is not additive sets ``additive = False``; adding two of them is refused.
    """

    additive: ClassVar[bool] = True

    def __add__(self, other: Self) -> Self:
        if type(other) is not type(self):
            return NotImplemented
        if not self.additive:
            raise TypeError(
                f"{type(self).__name__}: this state is not additive; "
                "apply observations in order with the policy's update()"
            )
        return type(self)(*[getattr(self, f.name) + getattr(other, f.name) for f in _fields(self)])

    def merge(self, other: Self) -> Self:
        """The state of the two streams taken together (``self + other``)."""
        return self + other

    @property
    def batch(self) -> int:
        """The number of rows ``B``."""
        first = getattr(self, _fields(self)[0].name)
        return first.batch if isinstance(first, Stats) else int(first.shape[0])

    def to_dict(self) -> dict[str, npt.NDArray[Any]]:
        """A flat ``{name: array}`` copy; nested states get dotted names. Lossless."""
        out: dict[str, npt.NDArray[Any]] = {}
        for f in _fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Stats):
                out.update({f"{f.name}.{k}": v for k, v in value.to_dict().items()})
            else:
                out[f.name] = np.array(value, copy=True)
        return out

    def like(self, data: Mapping[str, npt.ArrayLike], *, copy: bool = True) -> Self:
        """A state of this one's structure holding ``data`` (the output of ``to_dict``).

        ``self`` only supplies the structure (field names, nesting, dtypes); batch and arm
        counts come from ``data``. Policies expose this as ``state_from_dict``. With
        ``copy=False`` arrays of the right dtype are shared, not copied.

        Raises
        ------
        ValueError
            If a field is missing or unexpected, or the batch axes disagree.
        """
        flat = self.to_dict()
        missing = sorted(set(flat) - set(data))
        extra = sorted(set(data) - set(flat))
        if missing or extra:
            raise ValueError(
                f"{type(self).__name__}: state fields do not match "
                f"(missing {missing!r}, unexpected {extra!r}); accepted: {sorted(flat)!r}"
            )
        arrays = {
            k: np.array(data[k], dtype=flat[k].dtype, copy=True if copy else None) for k in flat
        }
        bad = {k: a.shape for k, a in arrays.items() if a.ndim != flat[k].ndim}
        if bad:
            raise ValueError(f"{type(self).__name__}: wrong number of dimensions (got {bad!r})")
        batches = {a.shape[0] for a in arrays.values()}
        if len(batches) != 1:
            raise ValueError(
                f"{type(self).__name__}: fields disagree on the batch axis (got {batches!r})"
            )
        return self._build(arrays, "")

    def _build(self, arrays: Mapping[str, npt.NDArray[Any]], prefix: str) -> Self:
        kwargs: dict[str, Any] = {}
        for f in _fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Stats):
                kwargs[f.name] = value._build(arrays, f"{prefix}{f.name}.")
            else:
                kwargs[f.name] = arrays[prefix + f.name]
        return type(self)(**kwargs)

    def _map(self, fn: Any) -> Self:
        """The state with ``fn`` applied to every array, nested states included."""
        return type(self)(
            *[
                value._map(fn) if isinstance(value, Stats) else fn(value)
                for value in (getattr(self, f.name) for f in _fields(self))
            ]
        )

    def rows(self, index: npt.ArrayLike) -> Self:
        """The sub-state of the given batch rows (a slice keeps the batch axis)."""
        idx = np.atleast_1d(np.asarray(index))
        return self._map(lambda a: a[idx])

    def sum_rows(self) -> Self:
        """One row holding the sum over the batch axis (for additive states: the
        combined effect of B observations on one stream)."""
        return self._map(lambda a: a.sum(axis=0, keepdims=True))


_FIELDS: dict[type, tuple[dataclasses.Field[Any], ...]] = {}


def _fields(obj: Stats) -> tuple[dataclasses.Field[Any], ...]:
    kind = type(obj)
    found = _FIELDS.get(kind)
    if found is None:
        found = _FIELDS[kind] = dataclasses.fields(obj)
    return found


@dataclass(frozen=True, slots=True)
class ArmStats(Stats):
    """Per-arm counts and reward sums: the sufficient statistics of most policies.

    Attributes
    ----------
    n : (B, K) float64
        Number of rewards observed per arm (float so that stores can add it).
    sum_reward : (B, K) float64
        Sum of rewards per arm.
    """

    n: FloatArray
    sum_reward: FloatArray

    @classmethod
    def zeros(cls, n_arms: int, batch: int) -> ArmStats:
        shape = (batch, n_arms)
        return cls(n=np.zeros(shape), sum_reward=np.zeros(shape))

    def with_observations(self, arm: IntArray, reward: FloatArray) -> ArmStats:
        """``self + ArmStats.of(...)`` for one observation per row, in one compiled pass."""
        n, s = arm_stats_add(self.n, self.sum_reward, arm, reward)
        return ArmStats(n=n, sum_reward=s)

    @classmethod
    def of(cls, decision: Decision, reward: FloatArray) -> ArmStats:
        """The increment of observing ``reward`` (B,) for ``decision.arm``."""
        onehot = _onehot(decision.arm, decision.propensity.shape[1])
        r = reward[:, None]
        return cls(n=onehot, sum_reward=onehot * r)


def arm_stats_sparse(reward: Any) -> dict[str, Any]:
    """:meth:`ArmStats.of` as amounts added at each observation's arm (see ``sparse_increment``)."""
    # reward * 0 + 1 rather than ones_like: the serving path passes plain floats.
    return {"n": reward * 0.0 + 1.0, "sum_reward": reward}


def ratio(num: FloatArray, den: FloatArray, empty: float) -> FloatArray:
    """``num / den`` where ``den > 0``, ``empty`` elsewhere (no warnings, no errstate)."""
    out = np.full(np.broadcast_shapes(num.shape, den.shape), empty)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _onehot(arm: IntArray, n_arms: int) -> FloatArray:
    out = np.zeros((arm.shape[0], n_arms))
    out[np.arange(arm.shape[0]), arm] = 1.0
    return out


S = TypeVar("S", bound=Stats)


class Policy(Protocol[S]):
    """What every policy in :data:`policies.REGISTRY` provides."""

    name: ClassVar[str]
    #: ``True`` when ``update(s, d, r) == s + increment(d, r)`` (state is additive).
    additive: ClassVar[bool]
    #: Rewards accepted: ``(low, high)``; ``None`` ends are unbounded.
    reward_range: ClassVar[tuple[float | None, float | None]]

    def init(self, n_arms: int, batch: int = 1) -> S: ...

    def allocation(self, stats: S, context: FloatArray | None = None) -> FloatArray: ...

    def select(
        self,
        stats: S,
        rng: np.random.Generator | Sequence[np.random.Generator],
        context: FloatArray | None = None,
    ) -> Decision: ...

    def increment(
        self, decision: Decision, reward: FloatArray, context: FloatArray | None = None
    ) -> S: ...

    def update(
        self, stats: S, decision: Decision, reward: FloatArray, context: FloatArray | None = None
    ) -> S: ...

    def sample_arm(
        self, stats: S, rng: np.random.Generator, context: FloatArray | None = None
    ) -> IntArray: ...

    def sparse_increment(
        self, arm: Any, reward: Any, propensity: Any, n_arms: int
    ) -> dict[str, Any] | None: ...

    def state_from_dict(self, data: Mapping[str, npt.ArrayLike]) -> S: ...

    def regret_bound(self) -> str: ...

    @classmethod
    def example(cls) -> Self: ...


def uniforms(rng: np.random.Generator | Sequence[np.random.Generator], batch: int) -> FloatArray:
    """``batch`` uniforms in [0, 1): from one generator, or one from each of ``batch``.

    Passing one generator per row (``SeedSequence(seed).spawn(B)``) makes a batched run
    draw exactly what ``B`` separate runs of batch 1 would.
    """
    if isinstance(rng, np.random.Generator):
        return rng.random(batch)
    if len(rng) != batch:
        raise ValueError(f"rng: expected one generator per row ({batch}), got {len(rng)}")
    return np.array([g.random() for g in rng])


def draw(propensity: FloatArray, u: FloatArray) -> IntArray:
    """Inverse-CDF draw of one arm per row: ``P(arm = k) = propensity[:, k]`` exactly.

    >>> draw(np.array([[0.2, 0.8], [1.0, 0.0]]), np.array([0.1, 0.99]))
    array([0, 0])
    """
    cdf = np.cumsum(propensity, axis=1)
    # u * total guards against rows summing to 1 - 1e-16: the last arm with mass wins.
    arm = (cdf <= (u * cdf[:, -1])[:, None]).sum(axis=1)
    # An arm with zero probability is never drawn, even at the edges of float rounding.
    arm = np.minimum(arm, propensity.shape[1] - 1)
    bad = propensity[np.arange(arm.shape[0]), arm] <= 0.0
    if bad.any():  # u * total rounded up to total: take the last arm with mass
        last = propensity.shape[1] - 1 - np.argmax(propensity[bad, ::-1] > 0.0, axis=1)
        arm[bad] = last
    return np.asarray(arm, dtype=np.int64)


def argmax_allocation(index: FloatArray) -> FloatArray:
    """One-hot allocation on the maximal index; ties share the mass uniformly.

    >>> argmax_allocation(np.array([[1.0, 3.0, 3.0], [np.inf, 0.0, np.inf]]))
    array([[0. , 0.5, 0.5],
           [0.5, 0. , 0.5]])
    """
    top = index.max(axis=1, keepdims=True)
    hit = (index == top).astype(np.float64)
    return np.asarray(hit / hit.sum(axis=1, keepdims=True), dtype=np.float64)


def check_reward(
    where: str,
    reward: npt.ArrayLike,
    batch: int,
    low: float | None = 0.0,
    high: float | None = 1.0,
) -> FloatArray:
    """Validate a reward vector: shape (B,), finite, within ``[low, high]``."""
    r = np.ascontiguousarray(reward, dtype=np.float64)
    if r.shape != (batch,):
        raise ValueError(f"{where}: reward must have shape ({batch},) (got {r.shape!r})")
    bad = first_bad(r, -np.inf if low is None else low, np.inf if high is None else high)
    if bad >= 0:
        value = float(r[bad])
        if not np.isfinite(value):
            raise ValueError(f"{where}: reward must be finite (got {value!r} in row {bad})")
        raise ValueError(
            f"{where}: reward out of range (got {value!r} in row {bad}); accepted: [{low}, {high}]"
        )
    return r


def context_rows(where: str, dim: int, context: npt.ArrayLike | None, batch: int) -> FloatArray:
    """A contextual policy's ``context`` as a (B, dim) array of finite numbers (one row of
    ``dim`` is taken for B = 1).

    Raises
    ------
    TypeError
        If there is no context or it is not numbers.
    ValueError
        If its shape is not (B, dim), or a number is not finite.
    """
    if context is None:
        raise TypeError(f"{where}: needs a context of {dim} numbers per row")
    try:
        x = np.asarray(context, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{where}: context must be numbers (got {type(context).__name__})"
        ) from None
    if x.ndim == 1:
        x = x[None, :]
    if x.shape != (batch, dim):
        raise ValueError(f"{where}: context must have shape ({batch}, {dim}) (got {x.shape})")
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: context must be finite numbers")
    return x


def check_context_free(where: str, context: object) -> None:
    """Context-free policies refuse a context rather than silently ignore it."""
    if context is not None:
        raise TypeError(f"{where}: this policy takes no context (got {type(context).__name__})")


class PolicyBase:
    """Shared behaviour of the registered policies (a mixin; the protocol is :class:`Policy`).

    ``select`` draws from ``allocation``; ``update`` adds ``increment`` for additive
    policies. Subclasses are frozen, slotted, keyword-only dataclasses.
    """

    __slots__ = ()
    name: ClassVar[str]
    additive: ClassVar[bool] = True
    reward_range: ClassVar[tuple[float | None, float | None]] = (0.0, 1.0)

    def init(self, n_arms: int, batch: int = 1) -> Any:
        raise NotImplementedError

    @property
    def context_dim(self) -> int | None:
        """Numbers each context must have; ``None`` for a policy that takes no context."""
        return None

    def allocation(self, stats: Any, context: FloatArray | None = None) -> FloatArray:
        raise NotImplementedError

    def increment(
        self, decision: Decision, reward: FloatArray, context: FloatArray | None = None
    ) -> Any:
        raise NotImplementedError

    def select(
        self,
        stats: Any,
        rng: np.random.Generator | Sequence[np.random.Generator],
        context: FloatArray | None = None,
    ) -> Decision:
        """Draw one arm per row from :meth:`allocation`; the decision carries it."""
        p = self.allocation(stats, context)
        return Decision(draw(p, uniforms(rng, p.shape[0])), p)

    def state_from_dict(self, data: Mapping[str, npt.ArrayLike]) -> Any:
        """Rebuild a state from its ``to_dict()`` (as stores keep it), losslessly."""
        return self.init(1, 1).like(data)

    @classmethod
    def example(cls) -> Any:
        """An instance with typical hyperparameters (used by the contract tests)."""
        return cls()

    def sparse_increment(
        self, arm: Any, reward: Any, propensity: Any, n_arms: int
    ) -> dict[str, Any] | None:
        """The increment of P observations as ``{field: (P,) amounts}`` added at ``arm``.

        For additive, context-free policies whose increment touches only the played
        arm's entries: adding ``amount[i]`` at ``[0, arm[i]]`` of each flat field equals
        adding ``increment`` summed over the P observations. ``propensity`` is the (P,)
        probability each arm was played with, out of ``n_arms``. Scalars (an int arm,
        float reward and propensity) give scalar amounts. ``None`` when the
        increment has another form; the serving path then uses ``increment``. Rewards
        must be validated first.
        """
        return None

    def sample_arm(
        self, stats: Any, rng: np.random.Generator, context: FloatArray | None = None
    ) -> IntArray:
        """An arm per row with the law of ``select(...).arm``; may skip the propensities."""
        return self.select(stats, rng, context).arm

    def update(
        self,
        stats: Any,
        decision: Decision,
        reward: FloatArray,
        context: FloatArray | None = None,
    ) -> Any:
        """The state after observing ``reward``: ``stats + increment(...)`` when additive."""
        return stats + self.increment(decision, reward, context)

    def check(self, decision: Decision, reward: npt.ArrayLike) -> FloatArray:
        """Validate ``reward`` against this policy's ``reward_range`` and the decision."""
        low, high = self.reward_range
        return check_reward(self.name, reward, decision.arm.shape[0], low, high)

    def regret_bound(self) -> str:
        """One line: the policy's worst-case regret bound and its source."""
        lines = [line.strip() for line in (type(self).__doc__ or "").splitlines()]
        for i, line in enumerate(lines):
            if line.startswith("Regret:"):
                parts = [line[len("Regret:") :].strip()]
                for more in lines[i + 1 :]:
                    if not more:
                        break
                    parts.append(more)
                return " ".join(parts)
        return "no bound stated"


def check_params(where: str, **checks: tuple[bool, object, str]) -> None:
    """Raise ``ValueError`` naming the first hyperparameter whose check failed.

    Each keyword is ``name=(ok, value, accepted)``.
    """
    for name, (ok, value, accepted) in checks.items():
        if not ok:
            raise ValueError(f"{where}.{name}: must be {accepted} (got {value!r})")


class ArmStatsPolicy(PolicyBase):
    """Mixin for the context-free policies whose state is :class:`ArmStats`."""

    __slots__ = ()

    def init(self, n_arms: int, batch: int = 1) -> ArmStats:
        return ArmStats.zeros(n_arms, batch)

    def increment(
        self, decision: Decision, reward: FloatArray, context: FloatArray | None = None
    ) -> ArmStats:
        check_context_free(self.name, context)
        return ArmStats.of(decision, self.check(decision, reward))

    def update(
        self,
        stats: ArmStats,
        decision: Decision,
        reward: FloatArray,
        context: FloatArray | None = None,
    ) -> ArmStats:
        check_context_free(self.name, context)
        return stats.with_observations(decision.arm, self.check(decision, reward))

    def sparse_increment(
        self, arm: Any, reward: Any, propensity: Any, n_arms: int
    ) -> dict[str, Any]:
        return arm_stats_sparse(reward)
