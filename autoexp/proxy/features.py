"""A request's named feature values, as an experiment's context spec says to read them.

Headers (case-insensitive), query parameters and path segments (``/shoes/42``: ``shoes``
is segment 0) are read as text; time features are left to the engine's clock. A number
feature whose text is not a finite number counts as missing, as does anything absent: the
sidecar never fails or re-routes a user's request over a malformed header.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from ..context import ContextSpec

__all__ = ["request_context"]


def _finite(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def request_context(spec: ContextSpec, request: web.Request) -> dict[str, Any]:
    """``{feature name: value}`` for the features ``request`` holds."""
    segments: list[str] | None = None
    out: dict[str, Any] = {}
    for f in spec.features:
        value: str | None
        if f.source == "header":
            value = request.headers.get(str(f.key))
        elif f.source == "query":
            value = request.query.get(str(f.key))
        elif f.source == "path":
            if segments is None:
                segments = [s for s in request.path.split("/") if s]
            index = int(f.key)  # type: ignore[arg-type]
            value = segments[index] if index < len(segments) else None
        else:  # time (the engine's clock) or SDK-only
            continue
        if value is None or (f.encoding == "number" and not _finite(value)):
            continue
        out[f.name] = value
    return out
