"""Offline simulators: run the very same :mod:`policies` code on many replicates.

Imports :mod:`policies` and numpy/scipy only, never the runtime (:mod:`autoexp`).
:mod:`simulators.envs` holds the environments (where rewards come from),
:mod:`simulators.runner` runs B replicates x T steps of the whole decision stack,
:mod:`simulators.ope` evaluates candidate policies on logged decisions; sweeps, reports
and the CLI follow.
"""

from __future__ import annotations

__all__: list[str] = []
