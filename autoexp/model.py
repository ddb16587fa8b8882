"""Serving a learner's published model: :class:`ModelReader`.

The learner process (:mod:`autoexp.learn`) writes each deployed snapshot under
``model:{version}`` and then ``model_version``; a serving replica holds a
:class:`ModelReader` and calls :meth:`~ModelReader.refresh` on its cadence. A refresh reads
two small store values and, only when the version changed, decodes the new snapshot
*before* swapping it in (one reference assignment), so a decision in progress keeps using
the model it started with, serving never waits for training, and no reader ever sees a
version whose bytes are missing or half-decoded.
"""

from __future__ import annotations

import base64
import binascii
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import StateError
from .store.base import Store

__all__ = ["ModelReader"]


class ModelReader:
    """The newest deployed snapshot of an experiment's learner, for serving.

    Parameters
    ----------
    store : the experiment's store
    experiment : its name
    policy : the learner that wrote the snapshots (same hyperparameters)

    Attributes
    ----------
    version : int
        The loaded version; 0 while none is published.

    Examples
    --------
    The engine's side, per decision (after ``reader.refresh()`` on its cadence)::

        if reader.version:
            propensity = reader.allocation(context)   # (K,), sums to 1
    """

    def __init__(self, store: Store, experiment: str, policy: Any) -> None:
        self.store = store
        self.experiment = experiment
        self.policy = policy
        self._model: tuple[int, Any] = (0, None)
        self._predict = threading.Lock()  # a model's prediction is not thread-safe
        self.errors = 0

    @property
    def version(self) -> int:
        return self._model[0]

    @property
    def stats(self) -> Any:
        """The loaded model's state (``None`` while none is published)."""
        return self._model[1]

    def refresh(self) -> bool:
        """Load the newest published snapshot if its version changed; whether it did.

        A snapshot that cannot be read (missing, not base64, refused by ``from_bytes``)
        keeps the current model and counts in ``errors``.
        """
        raw = self.store.get(self.experiment, "model_version")
        version = int(raw) if raw else 0
        if version == self._model[0] or version == 0:
            return False
        data = self.store.get(self.experiment, f"model:{version}")
        if not data:  # the learner writes the bytes first, so this is a store out of step
            self.errors += 1
            return False
        try:
            stats = self.policy.from_bytes(base64.b64decode(data, validate=True))
        except (ValueError, binascii.Error):
            self.errors += 1
            return False
        self._model = (version, stats)
        return True

    def allocation(self, context: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The loaded model's propensities at ``context`` (dim,): (K,) float64, sums to 1.

        Raises
        ------
        StateError
            While no model is published (``version == 0``).
        """
        stats = self._model[1]
        if stats is None:
            raise StateError(f"model: experiment {self.experiment!r} has no published model yet")
        x = np.asarray(context, dtype=np.float64).reshape(1, -1)
        with self._predict:
            p = self.policy.allocation(stats, x)[0]
        return np.asarray(p, dtype=np.float64)
