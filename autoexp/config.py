"""The runtime's config file (TOML): the store, the signing key and the experiments.

.. code-block:: toml

    store = "sqlite:///autoexp.db"     # or AUTOEXP_STORE; redis://host:6379/0 for replicas
    # secret = "..."                   # better: AUTOEXP_SECRET in the environment

    [experiments.ranker]
    alternatives = ["v1", "v2"]         # control first; or tables with name and params:
    # alternatives = [{ name = "slow", params = { timeout_s = 5 } }, { name = "fast", ... }]
    policy = { name = "thompson-beta" }
    safety = { explore_share = 0.1, conservative_alpha = 0.05 }
    test = { name = "off-policy-cs", n_expected = 10_000 }
    guardrails = [{ name = "conversion", harm = "decrease" }]
    rule = { margin = 0.0 }
    drift = { tolerance = 0.05, threshold = 25 }   # after a promotion, watch the champion
    reward = { low = 0.0, high = 1.0, join_window_s = 86_400, default = 0.0 }
    refresh_every = 100                  # a replica's snapshot re-read every 100 events,
    refresh_s = 10                       # and at least every 10 s

    [experiments.ranker.context]         # named features (see autoexp.context); with a
    features = [                         # contextual policy (lin-ucb, lin-ts) they decide,
      { name = "device", header = "X-Device", one_hot = ["mobile", "desktop"] },
    ]                                    # else they are logged for the next model

A contextual policy's ``dim`` defaults to the context's width and its ``low``/``high`` to
the reward's range.

Validated once, at load: every error is a :class:`~autoexp.errors.ConfigError` naming the
dotted path (``experiments.ranker.safety.explore_share: must be in (0, 1] (got 5)``).
``AUTOEXP_STORE`` and ``AUTOEXP_SECRET`` override the file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policies import CONTEXTUAL, REGISTRY, TESTS
from policies.build import construct, named, promotion_rule, safety_stack
from policies.build import guardrails as build_guardrails
from policies.drift import PageHinkley

from .context import parse_context, policy_defaults
from .engine import Engine, ExperimentSpec
from .errors import ConfigError
from .experiment import check_params
from .generate import parse_generation
from .proxy.routes import ProxySettings, Route, parse_proxy, parse_route
from .store import open_store

__all__ = ["Config", "load_config", "parse_config"]

_TOP = ("store", "secret", "proxy", "experiments")
_EXPERIMENT = (
    "alternatives",
    "policy",
    "safety",
    "test",
    "guardrails",
    "rule",
    "reward",
    "refresh_every",
    "refresh_s",
    "token_ttl_s",
    "route",
    "context",
    "drift",
    "generate",
)
_REWARD = ("low", "high", "join_window_s", "default")


@dataclass(frozen=True)
class Config:
    """A loaded config: where state lives, the signing key(s), the experiments."""

    store: str | None
    secret: Any
    experiments: tuple[ExperimentSpec, ...]
    proxy: ProxySettings | None = None
    routes: tuple[Route, ...] = ()

    def engine(self, *, seed: int | None = None) -> Engine:
        """An engine on this config's store, for its experiments."""
        return Engine(open_store(self.store), self.experiments, secret=self.secret, seed=seed)


def _fail(where: str, what: str) -> ConfigError:
    return ConfigError(f"{where}: {what}")


def _table(raw: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise _fail(f"{where}.{key}", f"must be a table (got {value!r})")
    return dict(value)


def _unknown(raw: Mapping[str, Any], accepted: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in accepted:
            raise _fail(
                f"{where}.{key}" if where else key, f"unknown key; accepted: {', '.join(accepted)}"
            )


def _alternatives(
    raw: Any, where: str, *, generated: bool = False
) -> tuple[tuple[str, ...], tuple[dict[str, Any], ...]]:
    if generated and not (isinstance(raw, list) and len(raw) == 1):
        raise _fail(where, f"a generated experiment lists its control only (got {raw!r})")
    if not isinstance(raw, list) or len(raw) < (1 if generated else 2):
        raise _fail(where, f"need a control and at least one alternative (got {raw!r})")
    names: list[str] = []
    params: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            names.append(item)
            params.append({})
        elif isinstance(item, Mapping) and isinstance(item.get("name"), str):
            _unknown(item, ("name", "params", "upstream"), f"{where}[{i}]")
            p = item.get("params", {})
            if not isinstance(p, Mapping):
                raise _fail(f"{where}[{i}].params", f"must be a table (got {p!r})")
            check_params(p, f"{where}[{i}].params")
            names.append(item["name"])
            params.append(dict(p))
        else:
            raise _fail(f"{where}[{i}]", f"must be a name or {{ name, params }} (got {item!r})")
    return tuple(names), tuple(params)


def _experiment(name: str, raw: Any) -> ExperimentSpec:
    where = f"experiments.{name}"
    if not isinstance(raw, Mapping):
        raise _fail(where, f"must be a table (got {raw!r})")
    _unknown(raw, _EXPERIMENT, where)
    generated = "generate" in raw
    names, params = _alternatives(
        raw.get("alternatives"), f"{where}.alternatives", generated=generated
    )
    generate = None
    if generated:
        generate = parse_generation(raw["generate"], f"{where}.generate", params[0])
        names = (names[0], *generate.slot_names())
        params = (params[0], *({} for _ in generate.slot_names()))
    refresh = raw.get("refresh_every", 100)
    if not isinstance(refresh, int) or isinstance(refresh, bool) or refresh < 1:
        raise _fail(f"{where}.refresh_every", f"must be an integer >= 1 (got {refresh!r})")
    reward = _table(raw, "reward", where)
    _unknown(reward, _REWARD, f"{where}.reward")
    low = _number(reward.get("low", 0.0), f"{where}.reward.low")
    high = _number(reward.get("high", 1.0), f"{where}.reward.high")
    context = parse_context(raw["context"], f"{where}.context") if "context" in raw else None
    table = policy_defaults(_table(raw, "policy", where), context, (low, high))
    try:
        policy = named({**REGISTRY, **CONTEXTUAL}, table, f"{where}.policy")
        policy = safety_stack(
            policy, _table(raw, "safety", where), refresh=refresh, where=f"{where}.safety"
        )
        test = None
        if "test" in raw:
            test = named(
                TESTS, {"low": low, "high": high, **_table(raw, "test", where)}, f"{where}.test"
            )
        guards = build_guardrails(raw.get("guardrails", []), f"{where}.guardrails", TESTS)
        rule = promotion_rule(raw["rule"], test, f"{where}.rule") if "rule" in raw else None
        drift = drift_detector(raw.get("drift"), f"{where}.drift")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return ExperimentSpec(
        name=name,
        alternatives=names,
        params=params,
        policy=policy,
        test=test,
        guardrails=guards,
        rule=rule,
        reward_range=(low, high),
        refresh_every=refresh,
        refresh_s=_number(raw.get("refresh_s", 10.0), f"{where}.refresh_s"),
        token_ttl_s=_number(raw.get("token_ttl_s", 7 * 24 * 3600.0), f"{where}.token_ttl_s"),
        join_window_s=_number(
            reward.get("join_window_s", 24 * 3600.0), f"{where}.reward.join_window_s"
        ),
        default_reward=(
            None
            if "default" not in reward
            else _number(reward["default"], f"{where}.reward.default")
        ),
        context=context,
        drift=drift,
        generate=generate,
    )


def drift_detector(raw: Any, where: str) -> PageHinkley | None:
    """``drift = true`` (the defaults) or ``{ tolerance, threshold, min_n }``: a
    :class:`~policies.drift.PageHinkley`; ``None``/``false``: none."""
    if raw is None or raw is False:
        return None
    if raw is True:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be true or a table of tolerance, threshold, min_n")
    return construct(PageHinkley, raw, where)  # type: ignore[no-any-return]


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, f"must be a number (got {value!r})")
    try:
        return float(value)
    except OverflowError:  # TOML's integers have no bound
        raise _fail(where, f"must be a number a float can hold (got {value!r:.60})") from None


def parse_config(raw: Mapping[str, Any]) -> Config:
    """A config from its parsed TOML (environment overrides applied)."""
    _unknown(raw, _TOP, "")
    experiments = raw.get("experiments")
    if not isinstance(experiments, Mapping) or not experiments:
        raise _fail("experiments", "missing; define at least one [experiments.NAME] table")
    specs = tuple(_experiment(str(name), body) for name, body in experiments.items())
    routes = []
    for name, body in experiments.items():
        where = f"experiments.{name}"
        alternatives = body.get("alternatives", [])
        if "route" in body:
            spec = next(e for e in specs if e.name == str(name))
            if spec.generate is not None:  # the slots: parameters for the control's upstream
                alternatives = [*alternatives, *spec.alternatives[1:]]
            routes.append(parse_route(str(name), body["route"], alternatives, f"{where}.route"))
        elif any(isinstance(a, Mapping) and "upstream" in a for a in alternatives):
            raise _fail(f"{where}.route", "missing; an alternative with an upstream needs one")
    proxy = parse_proxy(raw["proxy"]) if "proxy" in raw else None
    if routes and proxy is None:
        raise _fail("proxy", "missing; experiments with a route need [proxy] upstream = ...")
    store = os.environ.get("AUTOEXP_STORE") or raw.get("store")
    if store is not None and not isinstance(store, str):
        raise _fail("store", f"must be a URL string (got {store!r})")
    env = os.environ.get("AUTOEXP_SECRET")  # comma-separated for rotation, as keys_from
    secret = env.split(",") if env else raw.get("secret")
    return Config(store=store, secret=secret, experiments=specs, proxy=proxy, routes=tuple(routes))


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's tables; a :class:`ConfigError` naming the file and why otherwise
    (not there, a directory, not readable, not UTF-8 text, not TOML)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: a directory, not a TOML file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML (not UTF-8 text at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; errors name the file and the dotted path."""
    p = Path(path)
    raw = read_toml(p)
    try:
        return parse_config(raw)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
