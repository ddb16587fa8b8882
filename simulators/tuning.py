"""Parameter-tuning scenarios: a reward that is a smooth function of a parameter whose best
value is unknown, for experiments whose alternatives are generated (champion /
challenger, :mod:`autoexp.generate`).

The environment is a response curve: a request served with ``param = x`` earns a
Bernoulli reward with mean

    low + (peak - low) * exp(-d(x, optimum)^2 / width),

``d`` the distance ``ln x - ln optimum`` on a log scale, ``x - optimum`` otherwise. A
tuning scenario file gives it as ``[curve]`` beside the ``[experiment]`` the runtime would
run (``autoexp simulate`` drives the real engine on it, since generating alternatives is
runtime logic: proposals, admission, retirement and epochs live in the store)::

    name = "timeout-tuning"
    replicates = 10
    steps = 24_000
    seed = 0
    batch = 50                 # decisions per group; their rewards arrive together

    [curve]
    param = "timeout_ms"
    optimum = 800
    log = true
    low = 0.3
    peak = 0.6
    width = 0.5
    tolerance = 0.06           # a run succeeds if its final champion earns >= best - this

    [experiment]               # as [experiments.NAME] in the runtime's config
    ...

Errors name the dotted path (``curve.optimum: ...``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CURVE_KEYS", "ResponseCurve", "parse_curve"]

CURVE_KEYS = ("param", "optimum", "log", "low", "peak", "width", "tolerance")


@dataclass(frozen=True, kw_only=True)
class ResponseCurve:
    """The hidden truth of a tuning scenario (see the module docstring)."""

    param: str
    optimum: float
    log: bool = False
    low: float = 0.0
    peak: float = 1.0
    width: float = 1.0
    tolerance: float = 0.05

    def mean(self, value: float) -> float:
        """The expected reward at ``value`` of the parameter."""
        if self.log:
            d = math.log(value / self.optimum)
        else:
            d = value - self.optimum
        return self.low + (self.peak - self.low) * math.exp(-(d**2) / self.width)

    @property
    def best(self) -> float:
        return self.peak


def _number(raw: Mapping[str, Any], key: str, default: float | None) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"curve.{key}: must be a finite number (got {value!r})")
    return float(value)


def parse_curve(raw: Any) -> ResponseCurve:
    """A :class:`ResponseCurve` from its ``[curve]`` table; ``ValueError`` naming the key."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"curve: must be a table (got {raw!r})")
    for key in raw:
        if key not in CURVE_KEYS:
            raise ValueError(f"curve.{key}: unknown key; accepted: {', '.join(CURVE_KEYS)}")
    param = raw.get("param")
    if not isinstance(param, str) or not param:
        raise ValueError(f"curve.param: must be the parameter's name (got {param!r})")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"curve.log: must be true or false (got {log!r})")
    optimum = _number(raw, "optimum", None)
    if log and optimum <= 0:
        raise ValueError(f"curve.optimum: a log scale needs > 0 (got {optimum})")
    low, peak = _number(raw, "low", 0.0), _number(raw, "peak", 1.0)
    if not 0.0 <= low < peak <= 1.0:
        raise ValueError(f"curve: needs 0 <= low < peak <= 1 (got low {low}, peak {peak})")
    width = _number(raw, "width", 1.0)
    if width <= 0:
        raise ValueError(f"curve.width: must be > 0 (got {width})")
    tolerance = _number(raw, "tolerance", 0.05)
    if not 0 < tolerance < peak - low:
        raise ValueError(f"curve.tolerance: must be in (0, peak - low) (got {tolerance})")
    return ResponseCurve(
        param=param,
        optimum=optimum,
        log=log,
        low=low,
        peak=peak,
        width=width,
        tolerance=tolerance,
    )
