"""autoexp: autonomous experimentation with bounded risk.

The runtime package (engine, stores, proxy, SDK) grows here; the decision logic lives in
:mod:`policies` and the offline simulators in :mod:`simulators`.
"""

from __future__ import annotations

from ._version import __version__
from .errors import (
    AutoexpError,
    ConfigError,
    RewardError,
    StateError,
    StoreError,
    UnknownExperimentError,
)

__all__ = [
    "AutoexpError",
    "ConfigError",
    "RewardError",
    "StateError",
    "StoreError",
    "UnknownExperimentError",
    "__version__",
]
