"""Offline simulators: run the very same :mod:`policies` code on many replicates.

Imports :mod:`policies` and numpy/scipy only, never the runtime (:mod:`autoexp`).
:mod:`simulators.envs` holds the environments (where rewards come from); the runner,
sweeps, off-policy evaluation and reports follow.
"""

from __future__ import annotations

__all__: list[str] = []
