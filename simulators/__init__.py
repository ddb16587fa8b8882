"""Offline simulators: run the very same :mod:`policies` code on many replicates.

Imports :mod:`policies` and numpy/scipy only, never the runtime (:mod:`autoexp`).
:mod:`simulators.envs` holds the environments (where rewards come from),
:mod:`simulators.ope` off-policy evaluation of logged decisions; the runner, sweeps and
reports follow.
"""

from __future__ import annotations

__all__: list[str] = []
