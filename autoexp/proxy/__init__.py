"""The sidecar: an HTTP API (decide, reward, health) around the engine.

``autoexp proxy --config FILE`` serves it; :class:`autoexp.Client` talks to it.
"""

from __future__ import annotations

from .app import make_app

__all__ = ["make_app"]
