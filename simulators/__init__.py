"""Offline simulators: run the very same :mod:`policies` code on many replicates.

Imports :mod:`policies` and numpy/scipy/numba only, never the runtime (:mod:`autoexp`);
matplotlib and Ray load only when a plot is drawn or a sweep runs on Ray.

* :mod:`simulators.envs`: the environments (where rewards come from; the contextual
  ones in :mod:`simulators.contextual`);
* :mod:`simulators.runner`: B replicates x T steps of the whole decision stack (the
  drift watch after a promotion in :mod:`simulators.drift`);
* :mod:`simulators.gating`: gated deployment of a candidate policy on logged users;
* :mod:`simulators.config`: scenario and sweep files (TOML);
* :mod:`simulators.sweep`: grids of scenarios over processes or a Ray cluster;
* :mod:`simulators.ope`: candidate policies evaluated on logged decisions;
* :mod:`simulators.plots` and :mod:`simulators.report`: PNG plots, JSON/CSV, one HTML page.

``autoexp simulate``, ``autoexp sweep`` and ``autoexp ope`` drive them from files.
"""

from __future__ import annotations

__all__: list[str] = []
