"""Policies, tests and safety stacks from plain settings (a config file's tables, SDK
keyword arguments), with errors that name the setting's dotted path.

Both the simulators' scenario files and the runtime's experiments build through here, so
the same settings mean the same objects everywhere. Errors are plain ``ValueError`` s
whose message starts with the path (``policy.prior_alpha: must be > 0 (got -1.0)``);
callers re-raise them as their own kind.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from .base import PolicyBase
from .promotion import PromotionRule
from .safety import ConservativeBudget, Guardrail, TrafficCap

__all__ = [
    "SAFETY_KEYS",
    "construct",
    "find_in_stack",
    "finite",
    "guardrails",
    "named",
    "promotion_rule",
    "safety_stack",
]

#: The settings of the safety wrappers, as config files and the SDK name them.
SAFETY_KEYS = ("explore_share", "conservative_alpha", "conservative_delta")


def construct(cls: type, params: Mapping[str, Any], where: str, skip: tuple[str, ...] = ()) -> Any:
    """``cls(**params)``, with unknown keys and the class's own errors under ``where``."""
    fields = dataclasses.fields(cls)
    accepted = [f.name for f in fields if f.init and f.name not in skip]
    for key in params:
        if key not in accepted and key not in skip:
            raise ValueError(
                f"{where}.{key}: unknown key; accepted: {', '.join(accepted) or 'none'}"
            )
    try:
        return cls(**params)
    except (TypeError, ValueError, OverflowError) as e:  # Overflow: an int past a float
        msg = str(e)
        # classes name themselves first ("thompson-beta.prior_alpha: ..."): use the path
        head, _, what = msg.partition(": ")
        key = head.rpartition(".")[2]
        if what and "." in head and key in accepted:
            raise ValueError(f"{where}.{key}: {what}") from None
        raise ValueError(f"{where}: {msg}") from None


def finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite real number, else ``None``.

    A bool is not a number here, and neither is an integer too large for a float: JSON
    and TOML carry integers of any size, and ``float()`` or ``math.isfinite`` of one
    raises ``OverflowError`` instead of saying no.

    >>> finite(3), finite(0.5), finite(True), finite(float("nan")), finite(10**400)
    (3.0, 0.5, None, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def named(
    registry: Mapping[str, type], raw: Mapping[str, Any], where: str, key: str = "name"
) -> Any:
    """The registry entry ``raw[key]`` built with the rest of ``raw`` as its parameters."""
    params = dict(raw)
    if key not in params:
        raise ValueError(f"{where}.{key}: missing; accepted: {', '.join(sorted(registry))}")
    name = params.pop(key)
    if not isinstance(name, str) or name not in registry:
        raise ValueError(
            f"{where}.{key}: unknown (got {name!r}); accepted: {', '.join(sorted(registry))}"
        )
    return construct(registry[name], params, where)


def safety_stack(
    policy: PolicyBase, safety: Mapping[str, Any], *, refresh: int, where: str = "safety"
) -> PolicyBase:
    """``policy`` inside a conservative budget (if ``conservative_alpha`` or ``_delta`` is
    set; it reserves for ``refresh`` rounds) and a traffic cap (if ``explore_share`` is)."""
    for key in safety:
        if key not in SAFETY_KEYS:
            raise ValueError(f"{where}.{key}: unknown key; accepted: {', '.join(SAFETY_KEYS)}")
    if "conservative_alpha" in safety or "conservative_delta" in safety:
        params = {
            "alpha": safety.get("conservative_alpha", 0.05),
            "delta": safety.get("conservative_delta", 0.05),
            "refresh": refresh,
        }
        try:
            policy = ConservativeBudget(policy=policy, **params)
        except (TypeError, ValueError) as e:
            keys = {"alpha": "conservative_alpha", "delta": "conservative_delta"}
            raise _wrapper_error(e, keys, where) from None
    if "explore_share" in safety:
        try:
            policy = TrafficCap(policy=policy, explore_share=safety["explore_share"])
        except (TypeError, ValueError) as e:
            raise _wrapper_error(e, {"explore_share": "explore_share"}, where) from None
    return policy


def _wrapper_error(e: Exception, keys: Mapping[str, str], where: str) -> ValueError:
    """A wrapper's error (``conservative-budget.alpha: ...``) under its setting's name."""
    head, _, what = str(e).partition(": ")
    key = keys.get(head.rpartition(".")[2])
    return ValueError(f"{where}.{key}: {what}" if key and what else f"{where}: {e}")


def guardrails(raw: Any, where: str, tests: Mapping[str, type]) -> tuple[Guardrail, ...]:
    """Guardrails from an array of tables (each ``test`` a table naming one of ``tests``)."""
    if not isinstance(raw, list):
        raise ValueError(f"{where}: must be an array of tables (got {raw!r})")
    out = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{at}: must be a table (got {item!r})")
        params = dict(item)
        if "test" in params:
            if not isinstance(params["test"], Mapping):
                raise ValueError(f"{at}.test: must be a table with a name (got {params['test']!r})")
            params["test"] = named(tests, params["test"], f"{at}.test")
        out.append(construct(Guardrail, params, at))
    return tuple(out)


def promotion_rule(raw: Any, test: Any, where: str) -> PromotionRule:
    """The promotion rule from its table; it reads ``test``'s evidence."""
    if test is None:
        raise ValueError(f"{where}: needs a test to read evidence from")
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a table (got {raw!r})")
    params = {"test_name": test.name, **raw}
    rule: PromotionRule = construct(PromotionRule, params, where, skip=("test_name",))
    return rule


def find_in_stack(policy: Any, accept: Callable[[Any], bool]) -> Any:
    """The first policy in a stack (``policy``, then each wrapper's ``policy``) that
    ``accept`` takes; ``None`` if none does. The wrappers pass their state through, so a
    stack's state is also the state of what this finds (a budget's, say)."""
    while policy is not None:
        if accept(policy):
            return policy
        policy = getattr(policy, "policy", None)
    return None
