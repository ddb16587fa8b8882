"""An experiment's definition (:class:`ExperimentSpec`), what a decision returns
(:class:`Decision`), and a replica's live view of one experiment (:class:`Live`) with the
small pure helpers the engine uses on it."""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from policies.base import PolicyBase
from policies.build import find_in_stack, finite
from policies.drift import PageHinkley
from policies.promotion import INCONCLUSIVE, PROMOTED, ROLLED_BACK, PromotionRule
from policies.safety import ConservativeBudget, Guardrail

from .context import ContextSpec
from .errors import ConfigError
from .generate import Generation

__all__ = [
    "HISTORY",
    "HISTORY_SAVED",
    "HISTORY_SAVE_S",
    "Decision",
    "ExperimentSpec",
    "Live",
    "check_params",
    "make_decision",
    "renamed",
    "state_shapes",
]

HISTORY = 2_000  # refreshes kept per experiment for :meth:`Engine.history`
# the history shared through the store (every replica's, kept across restarts): a point
# at least this often per replica, and at every change of state; at most this many, the
# older ones thinned
HISTORY_SAVE_S = 10.0
HISTORY_SAVED = 1_000


def check_params(value: Any, where: str) -> None:
    """A :class:`ConfigError` naming ``where`` unless ``value`` is what JSON carries
    exactly: strings, integers, finite numbers, booleans, ``None``, and lists and string-keyed
    tables of them. An alternative's parameters go upstream as JSON (``X-Autoexp-Params``)
    and in the API's answers: a TOML date was a 500 for every request given that
    alternative, and an infinite number JSON that is not JSON (``Infinity``)."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if finite(value) is None:
            raise ConfigError(f"{where}: must be a finite number (got {value!r})")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}: keys must be strings (got {key!r:.60})")
            check_params(item, f"{where}.{key}")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_params(item, f"{where}[{i}]")
        return
    raise ConfigError(
        f"{where}: must be a string, number, boolean, list or table, as it goes upstream "
        f"in JSON (got {value!r:.60}); a date or a time goes as a string"
    )


def _iterable(value: Any) -> list[Any]:
    """``value``'s items; ``[value]`` if it has none (so a check of items refuses it)."""
    try:
        return list(value)
    except TypeError:
        return [value]


def check_servable(policy: PolicyBase, where: str) -> None:
    """Refuse a policy whose state depends on the order of its observations (discounted
    Thompson, sliding-window UCB): replicas add their rewards' increments to the store in
    any order, so only additive state, or a learner served from snapshots, can be shared.
    Refused where the experiment is defined, so ``--check`` refuses it too."""
    from .learn import is_learner

    inner: Any = policy
    while not is_learner(inner) and isinstance(getattr(inner, "policy", None), PolicyBase):
        inner = inner.policy  # through the safety stack's wrappers
    if not is_learner(inner) and not getattr(inner, "additive", True):
        raise ConfigError(
            f"{where}.policy: {getattr(inner, 'name', type(inner).__name__)} cannot be served: "
            "its state depends on the order of observations, and replicas add theirs to the "
            "store in any order; it runs in the simulators (autoexp simulate), or choose an "
            "additive policy (thompson-beta, ucb1, ...)"
        )


@dataclass(frozen=True, kw_only=True)
class ExperimentSpec:
    """One experiment: a control and alternatives, and how to decide between them.

    Parameters
    ----------
    name : the experiment's name (the store keys everything by it)
    alternatives : names, control first (at least two)
    params : per alternative, the parameters it stands for (default: none)
    policy : the policy stack (e.g. ``TrafficCap(ConservativeBudget(ThompsonBeta()))``)
    test : the primary sequential test (``None``: no promotion or rollback)
    guardrails : :class:`policies.safety.Guardrail` s on the reward
    rule : the promotion rule (default: ``PromotionRule(test_name=test.name)``)
    reward_range : (low, high) of valid rewards
    refresh_every : decisions and rewards between snapshot refreshes of a replica
    refresh_s : seconds at most between them, whatever the traffic: the background writer
        (``Engine(log_flush_s > 0)``, as the sidecar's and the SDK's engines have) refreshes
        a snapshot this old, so a quiet replica's status, metrics and lifecycle follow the
        store (other replicas' rewards, an operator's change) within it. 0: by count only
    token_ttl_s : how long a decision's token can be rewarded
    join_window_s : rewards later than this after the decision are refused and counted;
        :meth:`Engine.expire` applies ``default_reward`` to decisions whose window closed
        unrewarded
    default_reward : the reward of a decision nobody rewarded (``None``: none applied)
    context : the named features a decision's context is encoded from
        (:mod:`autoexp.context`); without one, contexts are plain lists of numbers. A
        contextual policy (``policy.context_dim`` not ``None``) needs a context of that
        many numbers at every decision; a context-free one logs whatever context it is
        given, for training and evaluating the next model.
    drift : a change detector (:class:`policies.drift.PageHinkley`) watching the promoted
        alternative's rewards; when it signals a drop, exploration reopens (a new epoch:
        every alternative exploring again, on fresh evidence). ``None``: a promotion is
        final.
    generate : generated alternatives (:mod:`autoexp.generate`): then ``alternatives``
        are the control and ``generate.slot_names()``, and the control's ``params`` set
        every parameter of the space.
    """

    name: str
    alternatives: tuple[str, ...]
    policy: PolicyBase
    params: tuple[Mapping[str, Any], ...] | None = None
    test: Any = None
    guardrails: tuple[Any, ...] = ()
    rule: PromotionRule | None = None
    reward_range: tuple[float, float] = (0.0, 1.0)
    refresh_every: int = 100
    refresh_s: float = 10.0
    token_ttl_s: float = 7 * 24 * 3600.0
    join_window_s: float = 24 * 3600.0
    default_reward: float | None = None
    context: ContextSpec | None = None
    drift: Any = None
    generate: Generation | None = None

    def __post_init__(self) -> None:
        where = f"experiments.{self.name}"
        if not isinstance(self.name, str) or not self.name or "{" in self.name:
            raise ConfigError(f"experiments: bad name {self.name!r}")
        names = tuple(self.alternatives)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError(
                f"{where}.alternatives: need a control and at least one alternative, all "
                f"distinct (got {list(names)!r})"
            )
        for name in names:  # each goes upstream in a header (X-Autoexp-Alternative)
            if not isinstance(name, str) or not name or any(c < " " or c == "\x7f" for c in name):
                raise ConfigError(
                    f"{where}.alternatives: each a non-empty string without control "
                    f"characters such as line breaks (got {name!r})"
                )
        if not isinstance(self.policy, PolicyBase):
            raise ConfigError(f"{where}.policy: must be a policy (got {self.policy!r})")
        check_servable(self.policy, where)
        if self.params is not None:
            if len(self.params) != len(names):
                raise ConfigError(f"{where}.params: one mapping per alternative ({len(names)})")
            for i, p in enumerate(self.params):
                if not isinstance(p, Mapping):
                    raise ConfigError(f"{where}.params[{i}]: must be a mapping (got {p!r:.60})")
                check_params(p, f"{where}.params[{i}]")
        pair = self.reward_range
        try:
            low, high = (finite(x) for x in pair)  # any pair: a tuple, a list, an array
        except (TypeError, ValueError):
            low = high = None
        if low is None or high is None or not low < high:
            raise ConfigError(f"{where}.reward_range: need finite low < high (got {pair!r:.60})")
        refresh = self.refresh_every
        if isinstance(refresh, bool) or not isinstance(refresh, int) or refresh < 1:
            raise ConfigError(f"{where}.refresh_every: must be an integer >= 1 (got {refresh!r})")
        seconds = finite(self.refresh_s)
        if isinstance(self.refresh_s, bool) or seconds is None or seconds < 0:
            raise ConfigError(
                f"{where}.refresh_s: must be a finite number >= 0 (got {self.refresh_s!r:.60})"
            )
        for key in ("token_ttl_s", "join_window_s"):
            x = finite(getattr(self, key))
            if x is None or not x > 0:
                raise ConfigError(
                    f"{where}.{key}: must be a finite number > 0 (got {getattr(self, key)!r:.60})"
                )
        default = self.default_reward
        if default is not None and not (finite(default) is not None and low <= default <= high):
            raise ConfigError(
                f"{where}.default_reward: must be a number in [{low}, {high}] (got {default!r:.60})"
            )
        if isinstance(self.guardrails, str | bytes | Mapping) or not all(
            isinstance(g, Guardrail) for g in _iterable(self.guardrails)
        ):
            raise ConfigError(
                f"{where}.guardrails: must be a sequence of Guardrail objects (got "
                f"{self.guardrails!r:.60})"
            )
        if (self.guardrails or self.rule is not None) and self.test is None:
            raise ConfigError(f"{where}.test: guardrails and a rule need a sequential test")
        if self.context is not None and not isinstance(self.context, ContextSpec):
            raise ConfigError(f"{where}.context: must be a ContextSpec (got {self.context!r})")
        if self.drift is not None and not isinstance(self.drift, PageHinkley):
            raise ConfigError(f"{where}.drift: must be a PageHinkley detector (got {self.drift!r})")
        if self.drift is not None and self.test is None:
            raise ConfigError(f"{where}.drift: watches a promoted alternative; needs a test")
        if self.generate is not None:
            self._check_generate(where, names)
        dim = self.policy.context_dim
        if dim is not None and self.context is not None and dim != self.context.dim:
            raise ConfigError(
                f"{where}.policy.dim: the context has {self.context.dim} numbers "
                f"({', '.join(self.context.describe())}) (got dim = {dim})"
            )

    def _check_generate(self, where: str, names: tuple[str, ...]) -> None:
        gen = self.generate
        if not isinstance(gen, Generation):
            raise ConfigError(f"{where}.generate: must be a Generation (got {gen!r})")
        if names[1:] != gen.slot_names():
            raise ConfigError(
                f"{where}.alternatives: a generated experiment has the control and "
                f"{', '.join(gen.slot_names()[:2])}, ... (got {list(names)!r})"
            )
        if self.test is None:
            raise ConfigError(f"{where}.test: generated candidates need a sequential test")
        if budget_in(self.policy) is None:
            raise ConfigError(
                f"{where}.safety.conservative_alpha: generated candidates need a "
                "conservative budget (nothing generated may push served reward below it)"
            )
        if self.drift is not None:
            raise ConfigError(
                f"{where}.drift: a generated experiment never stops exploring; drift "
                "watches a final promotion"
            )
        control = self.params[0] if self.params is not None else {}
        missing = [p.name for p in gen.space if p.name not in control]
        if missing:
            raise ConfigError(f"{where}.alternatives[0].params: must set {', '.join(missing)}")


@dataclass(frozen=True)
class Decision:
    """What ``decide`` returns: the alternative to serve and the token to reward it by."""

    id: str
    experiment: str
    arm: int
    alternative: str
    propensity: float
    params: Mapping[str, Any]
    policy: str
    allocation_version: int
    token: str
    sticky: bool = False
    # the signed ticket and the keys that signed it, kept by the engine that decided, so
    # that rewarding this object there needs no second look at its own signature
    ticket: Any = field(default=None, repr=False, compare=False)
    signer: Any = field(default=None, repr=False, compare=False)

    def public(self) -> dict[str, Any]:
        """The fields a caller sees (the sidecar's answer to a decide), as plain data: all
        but the engine's own ``ticket`` and ``signer``."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.compare}
        out["params"] = dict(self.params)
        return out


def make_decision(
    id: str,
    experiment: str,
    arm: int,
    alternative: str,
    propensity: float,
    params: Mapping[str, Any],
    policy: str,
    allocation_version: int,
    token: str,
    sticky: bool,
    ticket: Any,
    signer: Any,
) -> Decision:
    """``Decision(...)``, the same object, made without the frozen dataclass's
    ``object.__setattr__`` call per field (3.2 us, now 0.8, on every decision): its
    fields go into its ``__dict__`` at once. ``tests/autoexp/test_engine.py`` holds the
    parameters to the dataclass's fields."""
    made = object.__new__(Decision)
    made.__dict__.update(
        id=id,
        experiment=experiment,
        arm=arm,
        alternative=alternative,
        propensity=propensity,
        params=params,
        policy=policy,
        allocation_version=allocation_version,
        token=token,
        sticky=sticky,
        ticket=ticket,
        signer=signer,
    )
    return made


@dataclass
class Live:
    """A replica's view of one experiment."""

    spec: ExperimentSpec
    rule: PromotionRule | None
    shapes: dict[str, tuple[int, ...]]  # its store fields ("policy.n", "test.eb.t", ...)
    policy_state: Any = None
    test_state: Any = None
    guard_states: list[Any] = field(default_factory=list)
    allocation: np.ndarray = field(default_factory=lambda: np.zeros(0))
    status: np.ndarray = field(default_factory=lambda: np.zeros((1, 0), dtype=np.int8))
    version: int = 0
    since_refresh: int = 0
    refresh_due: bool = False  # decide's cadence reached: the background writer refreshes
    refreshed_at: float = 0.0  # time.monotonic() of the last refresh, or of its last try
    late: int = 0
    # expire: whether this replica held the experiment's lease at its last pass (None:
    # no pass with a lease yet), and the default rewards it applied
    expire_held: bool | None = None
    defaults: int = 0
    row: tuple[float, ...] = ()  # the allocation as plain floats, and its running sums
    row_json: str = "[]"  # the row as the decision log writes it (autoexp.records)
    row_texts: tuple[str, ...] = ()  # each of its numbers so written (a propensity)
    cumulative: list[float] = field(default_factory=list)
    buffer: list[Any] = field(default_factory=list)  # decisions not yet logged (records)
    # a contextual policy's allocations served since the last refresh: their sum and count
    # (the status page shows their mean as "the" allocation)
    served_sum: np.ndarray | None = None
    served_n: int = 0
    # epochs: a drift reopened the experiment this many times; the state counts from the
    # store's "baseline" snapshot taken at the last reopening
    epoch: int = 0
    baseline: dict[str, np.ndarray] | None = None
    watch: Any = None  # the drift detector's reading of the log (autoexp.watch.Watch)
    reader: Any = None  # a learner's deployed snapshots (autoexp.model.ModelReader)
    dim: int | None = None  # the policy's context_dim, read once (decide reads it each call)
    # each arm's name and parameters now (generated experiments: the candidates')
    names: list[str] = field(default_factory=list)
    params: list[Mapping[str, Any]] = field(default_factory=list)
    admitted: int = 0  # generated: slots admitted in this epoch
    since: dict[int, float] = field(default_factory=dict)  # generated: users at admission
    control_params: Mapping[str, Any] | None = None  # generated: the champion's, epoch > 0
    paused: bool = False
    # sticky units' assignments as the store holds them (unit hash to arm, first
    # propensities, epoch), most recently used last: a unit seen again whose arm is still
    # live is served without a store call (Engine's unit_cache bounds it)
    units: OrderedDict[str, tuple[int, tuple[float, ...], int]] = field(default_factory=OrderedDict)
    # (time, version, allocation, status, paused) at each refresh, for the status page
    history: deque[tuple[float, int, list[float], list[str], bool]] = field(
        default_factory=lambda: deque(maxlen=HISTORY)
    )
    # the last point this replica saved to the store's shared history: its time and states
    saved: tuple[float, list[str], bool] | None = None


def state_shapes(spec: ExperimentSpec) -> dict[str, tuple[int, ...]]:
    """The shapes of the experiment's state arrays in the store, as the engine declares
    them: its policy stack's (``policy.*``), its test's (``test.*``) and each guardrail's
    (``guard.N.*``)."""
    k = len(spec.alternatives)
    parts = {"policy": spec.policy.init(k, 1).to_dict()}
    if spec.test is not None:
        parts["test"] = spec.test.init(k, 1).to_dict()
    for i, g in enumerate(spec.guardrails):
        parts[f"guard.{i}"] = g.init(k, 1).to_dict()
    return {
        f"{prefix}.{name}": tuple(np.shape(array))
        for prefix, data in parts.items()
        for name, array in data.items()
    }


def renamed(spec: ExperimentSpec, stored: str | None) -> str | None:
    """What to say when the store holds the experiment's state for other alternative names
    (``stored``: the JSON list the engine wrote when it first declared it; ``None``: not
    there yet): each position's evidence counts for the name the config gives that
    position now. ``None`` when the names agree."""
    if stored is None:
        return None
    names = json.loads(stored)
    if names == list(spec.alternatives):
        return None
    return (
        f"experiments.{spec.name}: the store holds its state for alternatives {names}, the "
        f"config names them {list(spec.alternatives)}: the evidence gathered for each "
        "position counts for the config's name at that position (a new experiment name "
        "starts afresh)"
    )


def served(alloc: np.ndarray, status: np.ndarray, paused: bool) -> np.ndarray:
    """The allocation actually served, from the policy's (K,) one: control only while
    paused; everything to a promoted alternative; nothing to one rolled back or
    inconclusive at the horizon (its share goes to control)."""
    if paused:  # an operator's pause: control only, until resumed
        return np.asarray(np.eye(alloc.shape[0])[0])
    if (status == PROMOTED).any():
        return np.asarray((status[0] == PROMOTED).astype(np.float64))
    alloc = alloc.copy()
    off = (status[0] == ROLLED_BACK) | (status[0] == INCONCLUSIVE)
    alloc[0] += alloc[off].sum()
    alloc[off] = 0.0
    return np.asarray(alloc / alloc.sum())


def draw(cumulative: list[float], row: tuple[float, ...], u: float) -> int:
    """The arm whose cumulative share first exceeds ``u * total`` (an arm with no share
    is never drawn, even at the edges of rounding)."""
    x = u * cumulative[-1]
    arm = len(row) - 1
    for i, c in enumerate(cumulative):
        if x < c:
            arm = i
            break
    while row[arm] <= 0.0:
        arm -= 1
    return arm


def budget_in(policy: Any) -> ConservativeBudget | None:
    """The conservative budget in a policy stack, if it has one."""
    return find_in_stack(policy, lambda p: isinstance(p, ConservativeBudget))  # type: ignore[no-any-return]


def budget_of(policy: Any, stats: Any) -> dict[str, float] | None:
    """The conservative budget in a policy stack: ``alpha``, ``delta`` and ``remaining``
    (:meth:`~policies.safety.ConservativeBudget.remaining`); ``None`` without one."""
    budget = budget_in(policy)
    if budget is None:
        return None
    left = float(budget.remaining(stats)[0])  # a traffic cap keeps its policy's state
    return {"alpha": budget.alpha, "delta": budget.delta, "remaining": left}


def part(prefix: str, data: Mapping[str, Any]) -> dict[str, Any]:
    p = prefix + "."
    return {k[len(p) :]: v for k, v in data.items() if k.startswith(p)}
