"""Offline simulators: run the very same :mod:`policies` code on many replicates.

Imports :mod:`policies` and numpy/scipy only, never the runtime (:mod:`autoexp`).
"""

from __future__ import annotations

__all__: list[str] = []
