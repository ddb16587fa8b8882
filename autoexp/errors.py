"""The one exception hierarchy of the runtime (``policies`` raises plain ValueError/TypeError)."""

from __future__ import annotations

__all__ = [
    "AutoexpError",
    "ConfigError",
    "RequestError",
    "RewardError",
    "StateError",
    "StoreError",
    "UnknownExperimentError",
]


class AutoexpError(Exception):
    """Base of every error autoexp raises on purpose."""


class ConfigError(AutoexpError, ValueError):
    """A configuration value is invalid; the message names its dotted path."""


class RewardError(AutoexpError, ValueError):
    """A reward was refused (forged, expired, duplicate, non-finite or out of range)."""


class UnknownExperimentError(AutoexpError, KeyError):
    """No experiment of that name."""


class StoreError(AutoexpError):
    """The state store failed or is unreachable."""


class StateError(AutoexpError, RuntimeError):
    """An operation is not allowed in the experiment's current state."""


class RequestError(AutoexpError, ValueError):
    """A request was refused as malformed, by the sidecar or the engine (a decision's
    context that is not finite numbers); the message says which part."""
