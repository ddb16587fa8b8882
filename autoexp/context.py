"""Context features: how a request's facts become the numbers a contextual policy reads.

An experiment's ``[experiments.NAME.context]`` table lists named features; each has one
encoding and, for the sidecar, one source in the request:

.. code-block:: toml

    [experiments.ranker.context]
    intercept = true                   # a constant 1 first (default)
    features = [
      { name = "device", header = "X-Device", one_hot = ["mobile", "desktop", "tablet"] },
      { name = "country", query = "country", hash = 16 },
      { name = "section", path = 1, one_hot = ["shoes", "hats"] },
      { name = "basket", header = "X-Basket-Eur", number = 0.01 },
      { name = "hour", time = "hour" },
      { name = "weekday", time = "weekday" },
    ]

Encodings (each feature's width in brackets):

- ``one_hot = [values]`` [len(values)]: 1 at the value's position; a value not listed
  (or missing) is all zeros, so "other" needs no slot of its own.
- ``hash = N`` [N]: 1 at ``crc32(value) mod N`` (stable across processes and versions);
  for open-ended values (countries, referrers). Missing: all zeros.
- ``number = scale`` [1]: ``float(value) * scale``; missing: 0.
- ``time = "hour"`` [2]: the hour of day (UTC) on the unit circle, ``sin`` and ``cos`` of
  ``2 pi h / 24``, so 23:59 sits next to 00:00. ``time = "weekday"`` [7]: one-hot of the
  day (Monday first). Taken from the clock at the decision unless the caller gives the
  value (an hour in [0, 24), a weekday in 0..6).

Sources, for the sidecar: ``header`` (a request header, case-insensitive), ``query`` (a
query parameter), ``path`` (the N-th segment of the path, 0 first: ``/shoes/42`` has
``shoes`` at 0), ``time`` (the clock). A feature without a source is for SDK callers,
who pass ``context={"device": "mobile", ...}`` by name. Keys not defined are refused; a
missing key is a missing value (zeros), as in the proxy.

The encoded vector is what the policy reads and what the decision log keeps.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policies.build import finite

from .errors import ConfigError, RequestError

__all__ = ["ContextSpec", "Feature", "decision_context", "parse_context", "policy_defaults"]

_SOURCES = ("header", "query", "path", "time")
_ENCODINGS = ("one_hot", "hash", "number")
_TIMES = ("hour", "weekday")
_MAX_WIDTH = 4096  # numbers in one decision's context (the engine's limit too)


@dataclass(frozen=True, kw_only=True)
class Feature:
    """One named feature: where the sidecar finds it and how it is encoded."""

    name: str
    source: str | None = None  # one of _SOURCES, or None (SDK only)
    key: str | int | None = None  # the header, query parameter, path segment or time unit
    encoding: str = "one_hot"  # one of _ENCODINGS, or "time"
    values: tuple[str, ...] = ()  # one_hot
    buckets: int = 0  # hash
    scale: float = 1.0  # number

    @property
    def width(self) -> int:
        if self.encoding == "one_hot":
            return len(self.values)
        if self.encoding == "hash":
            return self.buckets
        if self.encoding == "time":
            return 2 if self.key == "hour" else 7
        return 1

    def encode(self, value: Any, now: float, out: list[float]) -> None:
        """Append this feature's numbers for ``value`` (``None``: missing) to ``out``;
        :class:`RequestError` for a value of the wrong kind."""
        where = f"context.{self.name}"
        if self.encoding == "one_hot":
            row = [0.0] * len(self.values)
            if value is not None:
                text = _text(value, where)
                if text in self.values:
                    row[self.values.index(text)] = 1.0
            out.extend(row)
        elif self.encoding == "hash":
            row = [0.0] * self.buckets
            if value is not None:
                raw = _text(value, where).encode("utf-8", "surrogatepass")  # any text
                row[zlib.crc32(raw) % self.buckets] = 1.0
            out.extend(row)
        elif self.encoding == "number":
            out.append(0.0 if value is None else _real(value, where) * self.scale)
        elif self.key == "hour":
            if value is None:
                hour = (now % 86400) / 3600
            else:
                hour = _real(value, where)
                if not 0 <= hour < 24:
                    raise RequestError(f"{where}: an hour must be in [0, 24) (got {value!r})")
            angle = 2 * math.pi * hour / 24
            out.extend((math.sin(angle), math.cos(angle)))
        else:  # weekday
            day = time.gmtime(now).tm_wday if value is None else _real(value, where)
            if day not in range(7):
                raise RequestError(f"{where}: a weekday must be 0..6 (got {value!r})")
            row = [0.0] * 7
            row[int(day)] = 1.0
            out.extend(row)


def _text(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RequestError(f"{where}: must be a string (got {value!r:.60})")
    return str(value)


def _real(value: Any, where: str) -> float:
    try:
        x = float(value)  # a header's text too
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"{where}: must be a number (got {value!r:.60})") from None
    if isinstance(value, bool) or not math.isfinite(x):
        raise RequestError(f"{where}: must be a finite number (got {value!r:.60})")
    return x


@dataclass(frozen=True, kw_only=True)
class ContextSpec:
    """An experiment's features, in order; :meth:`encode` makes the policy's vector."""

    features: tuple[Feature, ...]
    intercept: bool = True

    @property
    def dim(self) -> int:
        """Numbers in an encoded context."""
        return int(self.intercept) + sum(f.width for f in self.features)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def encode(self, values: Mapping[str, Any], *, now: float | None = None) -> list[float]:
        """The vector for named ``values`` (missing ones count as missing; unknown names
        are refused with :class:`RequestError`)."""
        unknown = [k for k in values if k not in self.names]
        if unknown:
            raise RequestError(
                f"context: unknown feature {unknown[0]!r}; defined: {', '.join(self.names)}"
            )
        t = time.time() if now is None else now
        out: list[float] = [1.0] if self.intercept else []
        for f in self.features:
            f.encode(values.get(f.name), t, out)
        return out

    def describe(self) -> list[str]:
        """A name for each number of the vector (``device=mobile``, ``hour.sin``, ...),
        for the status page and exports."""
        out = ["intercept"] if self.intercept else []
        for f in self.features:
            if f.encoding == "one_hot":
                out += [f"{f.name}={v}" for v in f.values]
            elif f.encoding == "hash":
                out += [f"{f.name}#{i}" for i in range(f.buckets)]
            elif f.encoding == "number":
                out.append(f.name)
            elif f.key == "hour":
                out += [f"{f.name}.sin", f"{f.name}.cos"]
            else:
                out += [f"{f.name}={d}" for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")]
        return out


def _feature(raw: Any, where: str) -> Feature:
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{where}: must be a table {{ name, <source>, <encoding> }} (got {raw!r})"
        )
    accepted = ("name", *_SOURCES, *_ENCODINGS)
    for key in raw:
        if key not in accepted:
            raise ConfigError(f"{where}.{key}: unknown key; accepted: {', '.join(accepted)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.name: must be a non-empty string (got {name!r})")
    sources = [s for s in _SOURCES if s in raw]
    if len(sources) > 1:
        raise ConfigError(f"{where}: one source at most (got {', '.join(sources)})")
    source = sources[0] if sources else None
    key = raw[source] if source else None
    if source in ("header", "query") and (not isinstance(key, str) or not key):
        raise ConfigError(f"{where}.{source}: must be a non-empty string (got {key!r})")
    if source == "path" and (not isinstance(key, int) or isinstance(key, bool) or key < 0):
        raise ConfigError(f"{where}.path: must be a segment index >= 0 (got {key!r})")
    encodings = [e for e in _ENCODINGS if e in raw]
    if source == "time":
        if key not in _TIMES:
            raise ConfigError(f"{where}.time: must be one of {', '.join(_TIMES)} (got {key!r})")
        if encodings:
            raise ConfigError(f"{where}.{encodings[0]}: a time feature has its own encoding")
        return Feature(name=name, source=source, key=key, encoding="time")
    if len(encodings) != 1:
        raise ConfigError(
            f"{where}: needs exactly one encoding of {', '.join(_ENCODINGS)} "
            f"(got {', '.join(encodings) or 'none'})"
        )
    encoding = encodings[0]
    value = raw[encoding]
    if encoding == "one_hot":
        ok = isinstance(value, list) and value and all(isinstance(v, str) for v in value)
        if not ok or len(set(value)) != len(value):
            raise ConfigError(
                f"{where}.one_hot: must be a list of distinct strings (got {value!r})"
            )
        return Feature(name=name, source=source, key=key, encoding=encoding, values=tuple(value))
    if encoding == "hash":
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1024:
            raise ConfigError(f"{where}.hash: must be a bucket count in 1..1024 (got {value!r})")
        return Feature(name=name, source=source, key=key, encoding=encoding, buckets=value)
    scale = finite(value)
    if scale is None:
        raise ConfigError(f"{where}.number: must be a finite scale (got {value!r:.60})")
    return Feature(name=name, source=source, key=key, encoding=encoding, scale=scale)


def parse_context(raw: Any, where: str) -> ContextSpec:
    """A :class:`ContextSpec` from its config table; :class:`ConfigError` naming the
    dotted path otherwise."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table (got {raw!r})")
    for key in raw:
        if key not in ("features", "intercept"):
            raise ConfigError(f"{where}.{key}: unknown key; accepted: features, intercept")
    intercept = raw.get("intercept", True)
    if not isinstance(intercept, bool):
        raise ConfigError(f"{where}.intercept: must be true or false (got {intercept!r})")
    items = raw.get("features")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}.features: must be a non-empty list of tables (got {items!r})")
    features = tuple(_feature(f, f"{where}.features[{i}]") for i, f in enumerate(items))
    names = [f.name for f in features]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{where}.features[{i}].name: {name!r} defined twice")
    spec = ContextSpec(features=features, intercept=intercept)
    if spec.dim > _MAX_WIDTH:
        raise ConfigError(f"{where}: at most {_MAX_WIDTH} numbers in all (got {spec.dim})")
    return spec


def policy_defaults(
    table: Mapping[str, Any], context: ContextSpec | None, reward_range: tuple[float, float]
) -> dict[str, Any]:
    """A policy's config table with a contextual policy's defaults filled in: ``dim`` from
    the context's width, ``low`` and ``high`` from the experiment's reward range."""
    from policies import CONTEXTUAL

    out = dict(table)
    name = out.get("name")
    if isinstance(name, str) and name in CONTEXTUAL:  # else the registry says what is wrong
        if context is not None:
            out.setdefault("dim", context.dim)
        out.setdefault("low", reward_range[0])
        out.setdefault("high", reward_range[1])
    return out


def _numbers(context: Any) -> list[float]:
    """A decision's context given as numbers, as plain floats; :class:`RequestError`
    (nothing recorded) for anything else: a value the log could not hold would fail its
    whole group."""
    if isinstance(context, str | bytes | Mapping) or not isinstance(context, Iterable):
        raise RequestError(f"context: must be a sequence of numbers (got {context!r:.60})")
    out = []
    for i, x in enumerate(context):
        number = finite(x)
        if number is None:
            raise RequestError(f"context[{i}]: must be a finite number (got {x!r:.60})")
        out.append(number)
        if i >= _MAX_WIDTH:
            raise RequestError(f"context: at most {_MAX_WIDTH} numbers")
    return out


def decision_context(spec: Any, context: Any, clock: Callable[[], float]) -> list[float] | None:
    """The numbers a decision of experiment ``spec`` logs and (for a contextual policy)
    decides on: named values encoded by its :class:`ContextSpec`, or numbers checked
    against its width; :class:`RequestError` for a context it cannot take."""
    where = f"experiment {spec.name!r}"
    dim = spec.policy.context_dim
    named: ContextSpec | None = spec.context
    if isinstance(context, Mapping):
        if named is None:
            raise RequestError(
                f"context: {where} defines no named features ([experiments.{spec.name}."
                "context]); pass a list of numbers"
            )
        return named.encode(context, now=clock())
    if context is None:
        if dim is None:
            return None
        if named is not None:  # every feature missing (the clock's still known)
            return named.encode({}, now=clock())
        raise RequestError(
            f"context: {where}'s policy {spec.policy.name} needs a context of {dim} numbers"
        )
    features = _numbers(context)
    want = named.dim if named is not None else dim
    if want is not None and len(features) != want:
        names = f": {', '.join(named.describe())}" if named is not None else ""
        raise RequestError(f"context: {where} takes {want} numbers (got {len(features)}){names}")
    return features
