"""autoexp: autonomous experimentation with bounded risk.

The runtime: :class:`Experiment` (the SDK), the :class:`Engine` it drives, the stores
(:func:`open_store`), and :class:`Client` for a running sidecar. The decision logic lives
in :mod:`policies` and the offline simulators in :mod:`simulators`.
"""

from __future__ import annotations

from ._version import __version__
from .client import Client
from .engine import Decision, Engine, ExperimentSpec
from .errors import (
    AutoexpError,
    ConfigError,
    RequestError,
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
    "Client",
    "ConfigError",
    "Decision",
    "Engine",
    "Experiment",
    "ExperimentSpec",
    "RequestError",
    "RewardError",
    "StateError",
    "StoreError",
    "UnknownExperimentError",
    "__version__",
    "open_store",
]
