"""Scenario and sweep files (TOML) -> runnable :class:`~simulators.runner.Scenario` objects.

A scenario file::

    name = "harmful-alternative"
    steps = 10_000
    replicates = 1_000
    seed = 1
    refresh_every = 100        # allocation recomputed every 100 steps, as a serving replica does
    check_every = 100          # the promotion rule looks every 100 steps

    [env]                      # any kind in simulators.envs.ENVIRONMENTS, with its parameters
    kind = "bernoulli"
    p = [0.10, 0.07]
    arms = ["control", "harmful"]   # names for reports (default: control, alt-1, ...)
    # delay = { mean_delay = 50 }   # rewards arrive after a random delay (simulators.envs.Delayed)

    [policy]                   # any name in policies.REGISTRY, with its hyperparameters
    name = "thompson-beta"     # (or in policies.CONTEXTUAL: see below)

    [safety]                   # optional: traffic cap and conservative budget
    explore_share = 0.2
    conservative_alpha = 0.05
    conservative_delta = 0.05

    [test]                     # optional: a test in policies.TESTS (promotion and rollback)
    name = "off-policy-cs"
    n_expected = 10_000

    [[guardrails]]             # optional: harm on the reward (see policies.safety.Guardrail)
    name = "conversion"
    harm = "decrease"
    test = { name = "off-policy-cs", n_expected = 10_000 }

    [rule]                     # optional: policies.promotion.PromotionRule
    margin = 0.0

    [drift]                    # optional: after a promotion, watch the champion for a drop
    tolerance = 0.05           # policies.drift.PageHinkley (or drift = true: its defaults);
    threshold = 25.0           # a detected drop reopens exploration in that replicate
    min_n = 30                 # (needs a [test]); env kind "abrupt-change" gives the known
                               # change step the report measures the time to detect from

A contextual policy (a name in ``policies.CONTEXTUAL``: ``lin-ts``, ``lin-ucb``, ...) needs
an environment that draws a context per user (``segments``, ``linear``, ``logistic``). Its
``dim`` defaults to the environment's context width (if given, it must equal it), and its
reward bounds ``low`` and ``high``, where it has them, default to the environment's
``reward_range`` (so that a conservative budget can wrap it)::

    [env]
    kind = "segments"          # simulators.envs.Segments: the best arm depends on the segment
    segments = ["mobile", "desktop", "tablet"]
    weights = [0.5, 0.35, 0.15]
    p = [[0.10, 0.14, 0.06], [0.10, 0.06, 0.15], [0.10, 0.08, 0.09]]

    [policy]
    name = "lin-ts"            # dim = 3 and low, high = 0, 1 from the environment

Context-free policies run on these environments too (they are given no context).

The conservative constraint checked in the results is ``served >= (1 - alpha) control``
with ``alpha = safety.conservative_alpha`` (or ``budget_alpha`` set at the top level).

A sweep file holds a ``[base]`` scenario (inline, or ``base = "scenario.toml"``, relative
to the sweep file) and a ``[grid]`` whose keys are dotted paths into the scenario and whose
values are lists; every combination is a cell::

    [grid]
    "safety.explore_share" = [0.05, 0.1, 0.2]
    "safety.conservative_alpha" = [0.02, 0.05]
    test = [{ name = "off-policy-cs", n_expected = 10_000 }, { name = "msprt", mde = 0.01 }]

Every error names the dotted path of the bad key (``env.p: ...``, ``grid."safety.x": ...``).
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policies import CONTEXTUAL, REGISTRY, TESTS, ConservativeBudget, TrafficCap
from policies.build import construct, named, promotion_rule, safety_stack
from policies.build import guardrails as build_guardrails
from policies.drift import PageHinkley

from .envs import ENVIRONMENTS, Delayed
from .runner import Scenario

__all__ = ["ScenarioError", "ScenarioSpec", "SweepSpec", "load_scenario", "load_sweep", "scenario"]

_TOP = {
    "name": str,
    "description": str,
    "steps": int,
    "replicates": int,
    "seed": int,
    "refresh_every": int,
    "check_every": int,
    "snapshots": int,
    "budget_alpha": float,
}
_SECTIONS = ("env", "policy", "safety", "test", "guardrails", "rule", "drift")


class ScenarioError(ValueError):
    """A scenario or sweep file that cannot be run; the message names the dotted path."""


@dataclass(frozen=True)
class ScenarioSpec:
    """A scenario ready to run, with what reports need to describe it."""

    name: str
    scenario: Scenario
    arm_names: tuple[str, ...]
    raw: dict[str, Any]

    @property
    def budget_alpha(self) -> float | None:
        return self.scenario.budget_alpha


@dataclass(frozen=True)
class SweepSpec:
    """The cells of a sweep: each a scenario dict (the base with the cell's overrides)."""

    name: str
    base: dict[str, Any]
    params: tuple[str, ...]
    cells: tuple[dict[str, Any], ...]
    labels: tuple[dict[str, Any], ...]
    base_dir: Path | None = None

    def spec(self, i: int) -> ScenarioSpec:
        """Cell ``i`` as a runnable scenario; its streams are ``SeedSequence(seed).spawn``'s
        ``i``-th, whatever runs it and in whatever order."""
        where = f"cell {i} ({_describe(self.labels[i])})"
        return scenario(self.cells[i], where=where, base_dir=self.base_dir, spawn_key=(i,))


def _fail(where: str, what: str) -> ScenarioError:
    return ScenarioError(f"{where}: {what}")


def _read(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ScenarioError(f"{p}: a directory, not a TOML file")
    if not p.is_file():
        raise ScenarioError(f"{p}: no such file")
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ScenarioError(f"{p}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{p}: not valid TOML (not UTF-8 text at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{p}: not valid TOML ({e})") from None


def _table(raw: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise _fail(f"{where}{key}", f"must be a table (got {value!r})")
    return dict(value)


def _kwargs(cls: type, params: dict[str, Any], where: str, skip: tuple[str, ...] = ()) -> Any:
    try:
        return construct(cls, params, where, skip)
    except ValueError as e:
        raise ScenarioError(str(e)) from None


def _named(
    registry: Mapping[str, type], raw: Mapping[str, Any], where: str, key: str = "name"
) -> Any:
    try:
        return named(registry, raw, where, key)
    except ValueError as e:
        raise ScenarioError(str(e)) from None


def _env(raw: dict[str, Any], base_dir: Path | None) -> tuple[Any, tuple[str, ...]]:
    params = dict(raw)
    if not params:
        raise _fail("env", "missing; give at least kind and its parameters")
    names = params.pop("arms", None)
    delay = params.pop("delay", None)
    if params.get("kind") == "adversarial" and isinstance(params.get("rewards"), str):
        path = Path(params["rewards"])
        path = path if path.is_absolute() or base_dir is None else base_dir / path
        try:
            params["rewards"] = np.loadtxt(path, delimiter=",", ndmin=2)
        except (OSError, ValueError) as e:
            raise _fail("env.rewards", f"cannot read {path} as CSV ({e})") from None
    env = _named(ENVIRONMENTS, params, "env", key="kind")
    if delay is not None:
        if not isinstance(delay, Mapping):
            raise _fail("env.delay", f"must be a table like {{ mean_delay = 50 }} (got {delay!r})")
        env = _kwargs(Delayed, {"env": env, **delay}, "env.delay", skip=("env",))
    k = env.n_arms
    if names is None:
        names = ["control", *[f"alt-{i}" for i in range(1, k)]]
    if (
        not isinstance(names, list)
        or len(names) != k
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != k
    ):
        raise _fail("env.arms", f"must be {k} distinct names, control first (got {names!r})")
    return env, tuple(names)


def _policy(raw: dict[str, Any], env: Any) -> Any:
    """The ``[policy]`` table: a context-free policy, or a contextual one fitted to ``env``."""
    name = raw.get("name")
    if isinstance(name, str) and name in CONTEXTUAL:
        width = int(getattr(env, "dim", 0) or 0)
        kind = getattr(env, "env", env).name
        if width == 0:
            raise _fail(
                "policy.name",
                f"{name} is contextual (every decision takes a context) but env kind "
                f"{kind!r} draws none; use env.kind 'segments', 'linear' or 'logistic', or a "
                f"context-free policy ({', '.join(sorted(REGISTRY))})",
            )
        raw = dict(raw)
        if "dim" not in raw:
            raw["dim"] = width
        elif isinstance(raw["dim"], bool) or raw["dim"] != width:
            raise _fail(
                "policy.dim",
                f"must equal the width of env kind {kind!r}'s contexts, {width} (got "
                f"{raw['dim']!r}); leave it out to take the environment's",
            )
        cls: Any = CONTEXTUAL[name]
        fields = {f.name for f in dataclasses.fields(cls)}
        for end, value in zip(("low", "high"), env.reward_range, strict=True):
            if end in fields and end not in raw and value is not None:
                raw[end] = float(value)
    return _named({**REGISTRY, **CONTEXTUAL}, raw, "policy")


def _test(raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise _fail(where, f"must be a table with a name (got {raw!r})")
    return _named(TESTS, raw, where)


def _drift(raw: Any, test: Any) -> PageHinkley | None:
    """``drift = true`` (the defaults), ``false`` (none) or a table of its parameters."""
    if raw is False:
        return None
    if raw is True:
        raw = {}
    if not isinstance(raw, Mapping):
        raise _fail(
            "drift", f"must be true or a table of tolerance, threshold, min_n (got {raw!r})"
        )
    if test is None:
        raise _fail("drift", "needs a [test]: the detector watches the arm the test promoted")
    detector: PageHinkley = _kwargs(PageHinkley, dict(raw), "drift")
    return detector


def scenario(
    raw: Mapping[str, Any],
    *,
    where: str = "scenario",
    base_dir: Path | None = None,
    spawn_key: tuple[int, ...] = (),
) -> ScenarioSpec:
    """Build a scenario from its parsed TOML (see the module docstring)."""
    try:
        return _scenario(dict(raw), base_dir, spawn_key)
    except ScenarioError as e:
        if where == "scenario":
            raise
        raise ScenarioError(f"{where}: {e}") from None


def _scenario(
    raw: dict[str, Any], base_dir: Path | None, spawn_key: tuple[int, ...]
) -> ScenarioSpec:
    for key in raw:
        if key not in _TOP and key not in _SECTIONS:
            accepted = ", ".join([*_TOP, *_SECTIONS])
            raise _fail(key, f"unknown key; accepted: {accepted}")
    top: dict[str, Any] = {}
    for key, kind in _TOP.items():
        if key not in raw:
            continue
        value = raw[key]
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            article = "an" if kind is int else "a"
            raise _fail(key, f"must be {article} {kind.__name__} (got {value!r})")
        top[key] = value
    if "steps" not in top:
        raise _fail("steps", "missing; how many steps (users) each replicate runs")

    env, names = _env(_table(raw, "env", ""), base_dir)
    policy = _policy(_table(raw, "policy", ""), env)
    safety = _table(raw, "safety", "")
    budget_alpha = top.pop("budget_alpha", None)
    try:  # the budget reserves for as many rounds as an allocation is used for
        policy = safety_stack(policy, safety, refresh=top.get("refresh_every", 1))
    except ValueError as e:
        raise ScenarioError(str(e)) from None
    if budget_alpha is None and isinstance(policy, TrafficCap | ConservativeBudget):
        inner = policy.policy if isinstance(policy, TrafficCap) else policy
        if isinstance(inner, ConservativeBudget):
            budget_alpha = inner.alpha

    test = _test(raw["test"], "test") if "test" in raw else None
    try:
        guards = build_guardrails(raw.get("guardrails", []), "guardrails", TESTS)
        rule = promotion_rule(raw["rule"], test, "rule") if "rule" in raw else None
    except ValueError as e:
        raise ScenarioError(str(e)) from None
    guardrails = list(guards)
    if guardrails and test is None:
        raise _fail("guardrails", "need a [test]: the promotion rule that acts on them reads it")
    drift = _drift(raw["drift"], test) if "drift" in raw else None
    try:
        built = Scenario(
            env=env,
            policy=policy,
            test=test,
            guardrails=tuple(guardrails),
            rule=rule,
            drift=drift,
            budget_alpha=budget_alpha,
            spawn_key=spawn_key,
            **{k: v for k, v in top.items() if k not in ("name", "description")},
        )
    except (TypeError, ValueError) as e:
        msg = str(e)
        raise ScenarioError(msg.removeprefix("scenario.")) from None
    return ScenarioSpec(
        name=str(raw.get("name", "scenario")), scenario=built, arm_names=names, raw=raw
    )


def load_scenario(path: str | Path, **overrides: Any) -> ScenarioSpec:
    """Read and build a scenario file; ``overrides`` replace top-level keys (``None`` ones
    are ignored), e.g. ``replicates`` and ``seed`` from the command line."""
    p = Path(path)
    raw = _read(p)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    raw.setdefault("name", p.stem)
    try:
        return scenario(raw, base_dir=p.parent)
    except ScenarioError as e:
        raise ScenarioError(f"{p}: {e}") from None


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = raw
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise _fail(".".join(keys[: i + 1]), f"is not a table (got {child!r})")
        node = child
    node[keys[-1]] = value


def _label(value: Any) -> Any:
    """A cell parameter for tables and plots: numbers and strings as they are, a table by
    its name (or its items)."""
    if isinstance(value, Mapping):
        name = value.get("name") or value.get("kind")
        rest = ", ".join(f"{k}={v}" for k, v in value.items() if k not in ("name", "kind"))
        return f"{name} ({rest})" if name and rest else (name or rest)
    return value


def load_sweep(path: str | Path, **overrides: Any) -> SweepSpec:
    """Read a sweep file and expand its grid; every cell is validated before anything runs."""
    p = Path(path)
    raw = _read(p)
    try:
        return _sweep(raw, p, overrides)
    except ScenarioError as e:
        raise ScenarioError(f"{p}: {e}") from None


def _sweep(raw: dict[str, Any], p: Path, overrides: dict[str, Any]) -> SweepSpec:
    for key in raw:
        if key not in ("name", "description", "base", "grid"):
            raise _fail(key, "unknown key; accepted: name, description, base, grid")
    base = raw.get("base")
    if isinstance(base, str):
        base_path = Path(base) if Path(base).is_absolute() else p.parent / base
        try:
            base = _read(base_path)
        except ScenarioError as e:
            raise _fail("base", str(e)) from None
    if not isinstance(base, dict):
        raise _fail("base", "missing; a [base] scenario table or a path to a scenario file")
    base.update({k: v for k, v in overrides.items() if v is not None})
    grid = raw.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise _fail("grid", 'missing or empty; e.g. "safety.explore_share" = [0.05, 0.1]')
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise _fail(f'grid."{key}"', f"must be a non-empty list of values (got {values!r})")
    params = tuple(grid)
    cells: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for combo in itertools.product(*grid.values()):
        cell = _deepcopy(base)
        for key, value in zip(params, combo, strict=True):
            try:
                _set(cell, key, _deepcopy(value))
            except ScenarioError as e:
                raise _fail(f'grid."{key}"', str(e)) from None
        cells.append(cell)
        labels.append({key: _label(v) for key, v in zip(params, combo, strict=True)})
    spec = SweepSpec(
        name=str(raw.get("name", p.stem)),
        base=base,
        params=params,
        cells=tuple(cells),
        labels=tuple(labels),
        base_dir=p.parent,
    )
    for i in range(len(cells)):  # fail before anything runs
        spec.spec(i)
    return spec


def _describe(label: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in label.items())


def _deepcopy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value
