"""autoexp: autonomous experimentation with bounded risk.

The runtime: :class:`Experiment` (the SDK), the :class:`Engine` it drives, and the stores
(:func:`open_store`). The decision logic lives in :mod:`policies` and the offline
simulators in :mod:`simulators`.
"""

from __future__ import annotations

from ._version import __version__
from .engine import Decision, Engine, ExperimentSpec
from .errors import (
    AutoexpError,
    ConfigError,
    RewardError,
    StateError,
    StoreError,
    UnknownExperimentError,
)
from .sdk import Answer, Experiment
from .store import open_store

__all__ = [
    "Answer",
    "AutoexpError",
    "ConfigError",
    "Decision",
    "Engine",
    "Experiment",
    "ExperimentSpec",
    "RewardError",
    "StateError",
    "StoreError",
    "UnknownExperimentError",
    "__version__",
    "open_store",
]
