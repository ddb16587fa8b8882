"""Generated alternatives: a parameter space, candidates proposed in it, champion/challenger.

An experiment may declare a parameter space instead of fixed alternatives::

    [experiments.search]
    alternatives = [{ name = "current", params = { timeout_ms = 200, boost = 0.5 } }]
    policy = { name = "thompson-beta" }
    safety = { explore_share = 0.2, conservative_alpha = 0.05 }   # a budget is required
    test = { name = "off-policy-cs", n_expected = 2_000 }

    [experiments.search.generate]
    challengers = 2          # at most this many candidates at once
    slots = 12               # candidates per epoch (arms beside control)
    initial = 4              # the first candidates: scrambled Sobol points in the space
    local_scale = 0.15       # then: the champion's point + N(0, scale^2) per unit axis
    initial_share = 0.02     # a new candidate's cap until it has `warmup` rewards
    warmup = 200
    max_users = 4_000        # no verdict after this many users (all arms) since admission:
    min_effect = 0.01        #   retire; and retire one whose upper bound < min_effect
    seed = 1
    [experiments.search.generate.space]
    timeout_ms = { low = 50, high = 5_000, log = true, integer = true }
    boost = { low = 0.0, high = 1.0 }
    ranker = { choices = ["bm25", "dense"] }

How it runs (in the engine, at every refresh):

- **Admission**: while fewer than ``challengers`` candidates explore and a slot is free,
  the next candidate is proposed (deterministically from ``seed``, its slot and the
  champion) and admitted into the slot, once across replicas. It starts capped at
  ``initial_share`` of traffic until it has ``warmup`` rewards; the traffic cap and the
  conservative budget cover it as any alternative (a candidate with no rewards has a
  lower confidence bound of 0, so the budget admits it only as far as the reward
  already banked covers its worst case).
- **Retirement**: the sequential test rolls back a candidate shown worse than control;
  one whose upper bound falls below ``min_effect`` (it cannot improve on control by that
  much) is retired as futile, and one without a verdict ``max_users`` users (of the whole
  experiment) after its admission as inconclusive, so that slots keep turning over.
- **Promotion**: a candidate shown better becomes the champion: a new epoch starts
  (every state counted afresh from a snapshot), control serves the champion's
  parameters, and the next candidates are proposed around it. When every slot of an
  epoch is spent without a winner, a new epoch starts with the same champion.

Every candidate, its parameters and its fate are in the decision log (``candidate`` and
``transition`` records) and on the status page.
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from policies.build import finite
from policies.promotion import EXPLORING, PROMOTED

from .errors import ConfigError
from .store.base import Store

if TYPE_CHECKING:
    from .experiment import Live

__all__ = [
    "Generation",
    "Param",
    "generated_allocation",
    "generation_active",
    "generation_step",
    "parse_generation",
]

_GENERATE = (
    "space",
    "challengers",
    "slots",
    "initial",
    "local_scale",
    "initial_share",
    "warmup",
    "max_users",
    "min_effect",
    "seed",
)


@dataclass(frozen=True, kw_only=True)
class Param:
    """One parameter: a range (``low``..``high``, optionally log-scaled or integer) or
    ``choices``. Maps the unit interval onto its values."""

    name: str
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def value(self, u: float) -> Any:
        """The parameter's value at ``u`` in [0, 1]."""
        u = min(max(u, 0.0), 1.0)
        if self.choices:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        if self.log:
            x = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            x = self.low + u * (self.high - self.low)
        return round(x) if self.integer else x

    def unit(self, value: Any) -> float:
        """Where ``value`` sits in [0, 1] (the middle of a choice's cell)."""
        if self.choices:
            return (self.choices.index(value) + 0.5) / len(self.choices)
        x = float(value)
        if self.log:
            return (math.log(x) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (x - self.low) / (self.high - self.low)


@dataclass(frozen=True, kw_only=True)
class Generation:
    """How an experiment generates its alternatives (see the module docstring)."""

    space: tuple[Param, ...]
    challengers: int = 2
    slots: int = 12
    initial: int = 4
    local_scale: float = 0.15
    initial_share: float = 0.02
    warmup: int = 200
    max_users: int = 4_000
    min_effect: float = 0.0
    seed: int = 0

    def slot_names(self) -> tuple[str, ...]:
        return tuple(f"slot-{i}" for i in range(1, self.slots + 1))

    def propose(self, epoch: int, slot: int, champion: Mapping[str, Any]) -> dict[str, Any]:
        """Candidate ``slot`` of ``epoch``: ``{"name", "params", "unit", "source"}``. The
        first ``initial`` of epoch 0 are scrambled Sobol points; the rest are the
        champion's point plus Gaussian noise (``local_scale`` per unit axis), clipped."""
        d = len(self.space)
        if epoch == 0 and slot <= self.initial:
            from scipy.stats import qmc

            m = max(1, math.ceil(math.log2(self.initial)))
            points = qmc.Sobol(d, scramble=True, seed=self.seed).random_base2(m)
            unit = points[slot - 1]
            source = "sobol"
        else:
            rng = np.random.default_rng([self.seed, epoch, slot])
            centre = np.array([p.unit(champion[p.name]) for p in self.space])
            unit = np.clip(centre + rng.normal(0.0, self.local_scale, d), 0.0, 1.0)
            source = "local"
        params = {p.name: p.value(float(u)) for p, u in zip(self.space, unit, strict=True)}
        return {
            "name": f"e{epoch}.c{slot}",
            "params": params,
            "unit": [float(u) for u in unit],
            "source": source,
        }


def _int(raw: Mapping[str, Any], key: str, default: int, low: int, where: str) -> int:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"{where}.{key}: must be an integer >= {low} (got {v!r})")
    return v


def _param(name: str, raw: Any, where: str) -> Param:
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{where}: must be a table {{ low, high }} or {{ choices }} (got {raw!r})"
        )
    if "choices" in raw:
        for key in raw:
            if key != "choices":
                raise ConfigError(f"{where}.{key}: a choice parameter takes only choices")
        c = raw["choices"]
        ok = isinstance(c, list) and len(c) >= 2
        if not ok or len({json.dumps(x) for x in c}) != len(c):
            raise ConfigError(f"{where}.choices: at least two distinct values (got {c!r})")
        return Param(name=name, choices=tuple(c))
    for key in raw:
        if key not in ("low", "high", "log", "integer"):
            raise ConfigError(f"{where}.{key}: unknown key; accepted: low, high, log, integer")
    for key in ("low", "high"):
        v = raw.get(key)
        if finite(v) is None:
            raise ConfigError(f"{where}.{key}: must be a finite number (got {v!r:.60})")
    low, high = float(raw["low"]), float(raw["high"])
    if not low < high:
        raise ConfigError(f"{where}: needs low < high (got {low}, {high})")
    log, integer = raw.get("log", False), raw.get("integer", False)
    for key, v in (("log", log), ("integer", integer)):
        if not isinstance(v, bool):
            raise ConfigError(f"{where}.{key}: must be true or false (got {v!r})")
    if log and low <= 0:
        raise ConfigError(f"{where}.low: a log scale needs low > 0 (got {low})")
    return Param(name=name, low=float(low), high=float(high), log=log, integer=integer)


def parse_generation(raw: Any, where: str, control: Mapping[str, Any]) -> Generation:
    """A :class:`Generation` from its config table; ``control`` (the control's params)
    must give every parameter a value inside the space."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table (got {raw!r})")
    for key in raw:
        if key not in _GENERATE:
            raise ConfigError(f"{where}.{key}: unknown key; accepted: {', '.join(_GENERATE)}")
    space_raw = raw.get("space")
    if not isinstance(space_raw, Mapping) or not space_raw:
        raise ConfigError(f"{where}.space: must be a table of at least one parameter")
    space = tuple(_param(str(k), v, f"{where}.space.{k}") for k, v in space_raw.items())
    for p in space:
        if p.name not in control:
            raise ConfigError(
                f"{where}.space.{p.name}: the control must set it (its params lack {p.name!r})"
            )
        value = control[p.name]
        if p.choices:
            inside = value in p.choices
        else:
            x = finite(value)
            inside = x is not None and p.low <= x <= p.high
        if not inside:
            raise ConfigError(
                f"{where}.space.{p.name}: the control's value {control[p.name]!r} is outside it"
            )
    slots = _int(raw, "slots", 12, 1, where)
    challengers = _int(raw, "challengers", 2, 1, where)
    if challengers > slots:
        raise ConfigError(f"{where}.challengers: at most slots ({slots}) (got {challengers})")
    effect = raw.get("min_effect", 0.0)
    if isinstance(effect, bool) or not isinstance(effect, int | float) or not effect >= 0:
        raise ConfigError(f"{where}.min_effect: must be a number >= 0 (got {effect!r})")
    scale = raw.get("local_scale", 0.15)
    share = raw.get("initial_share", 0.02)
    for key, v, ok in (
        ("local_scale", scale, isinstance(scale, int | float) and 0 < scale <= 1),
        ("initial_share", share, isinstance(share, int | float) and 0 < share <= 1),
    ):
        if isinstance(v, bool) or not ok:
            raise ConfigError(f"{where}.{key}: must be in (0, 1] (got {v!r})")
    return Generation(
        space=space,
        challengers=challengers,
        slots=slots,
        initial=_int(raw, "initial", 4, 0, where),
        local_scale=float(scale),
        initial_share=float(share),
        warmup=_int(raw, "warmup", 200, 0, where),
        max_users=_int(raw, "max_users", 4_000, 1, where),
        min_effect=float(effect),
        seed=_int(raw, "seed", 0, 0, where),
    )


@functools.lru_cache(maxsize=4096)
def _proposal(gen: Generation, epoch: int, slot: int, champion: str) -> dict[str, Any]:
    return gen.propose(epoch, slot, json.loads(champion))


def _control(live: Live) -> Mapping[str, Any]:
    """The control's parameters in this epoch: the last champion's, or the config's."""
    if live.control_params is not None:
        return live.control_params
    return live.spec.params[0] if live.spec.params is not None else {}


def generation_active(live: Live, status: np.ndarray) -> np.ndarray:
    """(K,) bool: control and the admitted candidates still exploring (or promoted)."""
    k = len(live.spec.alternatives)
    on = np.zeros(k, dtype=bool)
    on[0] = True
    admitted = np.arange(k) <= live.admitted
    on |= admitted & ((status == EXPLORING) | (status == PROMOTED))
    return on


def generated_allocation(live: Live, alloc: np.ndarray) -> np.ndarray:
    """The policy's (K,) allocation with the slots as they are now: each admitted slot
    named and parametrised by its candidate; an empty slot's share to control; a
    candidate with fewer than ``warmup`` users capped at ``initial_share``. Sets
    ``live.names`` and ``live.params``; the caller holds the engine's lock."""
    spec = live.spec
    gen = spec.generate
    assert gen is not None  # the engine calls this for generated experiments only
    control = _control(live)
    champion = json.dumps(dict(control), sort_keys=True)
    names, params = [spec.alternatives[0]], [control]
    for slot in range(1, gen.slots + 1):
        if slot <= live.admitted:
            c = _proposal(gen, live.epoch, slot, champion)
            names.append(c["name"])
            params.append(c["params"])
        else:
            names.append(spec.alternatives[slot])
            params.append({})
    live.names, live.params = names, params
    out = alloc.copy()
    users = np.asarray(spec.test.evaluate(live.test_state).n[0], dtype=np.float64)
    for slot in range(1, gen.slots + 1):
        cap = 0.0 if slot > live.admitted else out[slot]
        if slot <= live.admitted and users[slot] < gen.warmup:
            cap = min(cap, gen.initial_share)
        out[0] += out[slot] - cap
        out[slot] = cap
    return out


def generation_step(store: Store, live: Live, lock: threading.RLock, now: float) -> None:
    """After a refresh: a promoted candidate becomes the champion (a new epoch); the
    futile and the inconclusive retire; free slots take new candidates up to
    ``challengers`` at once; spent slots start a new epoch. Every change once across
    replicas (store once-keys); the others see it at their next refresh."""
    from .lifecycle import begin_epoch, retire

    spec = live.spec
    gen = spec.generate
    assert gen is not None and spec.test is not None  # checked by ExperimentSpec
    with lock:
        status = live.status[0].copy()
        ev = spec.test.evaluate(live.test_state)
        epoch, admitted = live.epoch, live.admitted
        names, params = list(live.names), list(live.params)
    control = _control(live)
    promoted = np.flatnonzero(status == PROMOTED)
    if promoted.size:
        arm = int(promoted[0])
        record = {
            "type": "transition",
            "by": "generator",
            "time": now,
            "experiment": spec.name,
            "arm": arm,
            "alternative": names[arm],
            "new": "champion",
            "source": "generator",
            "params": dict(params[arm]),
            "reason": (
                f"{names[arm]} was promoted: from epoch {epoch + 1} control serves its "
                f"parameters {json.dumps(dict(params[arm]), sort_keys=True)}, and new "
                "candidates are proposed around them"
            ),
        }
        begin_epoch(store, live, record, control_params=params[arm])
        return
    users = float(ev.n[0].sum())
    for arm in range(1, admitted + 1):
        if arm not in live.since:  # users when it was admitted (set by the admitting replica)
            raw = store.get(spec.name, f"since:{epoch}:{arm}")
            with lock:
                live.since[arm] = float(raw) if raw is not None else users
        if status[arm] != EXPLORING:
            continue
        upper, n_arm = float(ev.upper[0, arm]), float(ev.n[0, arm])
        evidence = {
            "estimate": _finite(ev.estimate[0, arm]),
            "lower": _finite(ev.lower[0, arm]),
            "upper": _finite(upper),
            "n_arm": n_arm,
            "n_control": float(ev.n[0, 0]),
        }
        if gen.min_effect > 0 and upper < gen.min_effect:
            reason = f"futile: upper bound {upper:.4g} < min_effect {gen.min_effect:g}"
            retire(store, live, arm, "rolled_back", reason, evidence, now)
            status[arm] = -1
        elif users - live.since[arm] >= gen.max_users:
            reason = (
                f"no verdict {users - live.since[arm]:.0f} users after its admission "
                f"(max_users {gen.max_users}; {n_arm:.0f} of them on it)"
            )
            retire(store, live, arm, "inconclusive", reason, evidence, now)
            status[arm] = -1
    exploring = int(np.sum(status[1 : admitted + 1] == EXPLORING))
    if admitted >= gen.slots and exploring == 0:
        record = {
            "type": "transition",
            "by": "generator",
            "time": now,
            "experiment": spec.name,
            "new": "exhausted",
            "source": "generator",
            "reason": (
                f"every slot of epoch {epoch} retired without a winner: new candidates "
                "around the same champion, on fresh evidence"
            ),
        }
        begin_epoch(store, live, record, control_params=control)
        return
    champion = json.dumps(dict(control), sort_keys=True)
    while exploring < gen.challengers and admitted < gen.slots:
        slot = admitted + 1
        c = _proposal(gen, epoch, slot, champion)
        record = {
            "type": "candidate",
            "time": now,
            "experiment": spec.name,
            "epoch": epoch,
            "arm": slot,
            "alternative": c["name"],
            "params": c["params"],
            "unit": c["unit"],
            "source": c["source"],
        }
        # whoever logged it, the candidate is the same (proposals are deterministic), so
        # a replica that lost the race still records the slot as admitted
        if store.add(spec.name, {}, once=f"candidate:{epoch}:{slot}", record=record):
            store.set(spec.name, f"since:{epoch}:{slot}", repr(users))
        store.set(spec.name, f"admitted:{epoch}", str(slot))
        admitted = slot
        exploring += 1


def _finite(x: Any) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None
