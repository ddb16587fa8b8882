"""What a decision is drawn with before it is recorded: its id, and the draft that carries it
between the engine's draw and its record (see :meth:`autoexp.engine.Engine.decide`)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .experiment import Live

__all__ = ["Draft", "Ids"]

_FORKS = [0]  # forks of this process so far: a child draws its ids afresh
os.register_at_fork(after_in_child=lambda: _FORKS.__setitem__(0, _FORKS[0] + 1))
ID_BLOCK = 1024  # random parts drawn at a time


class Ids:
    """Decision ids: 24 hex digits, the time in milliseconds (11), then 52 random bits (13).

    Time first, so ids made later sort later: the store's index of applied rewards
    (SQLite's ``once`` table) then grows at its end instead of at random pages, which
    made each batch's commit write a page per reward. Unique across replicas by the
    random part, drawn from fresh OS entropy, never from the engine's seed (replicas
    seeded alike must not make the same ids), and drawn again after a fork; a collision
    needs two replicas to draw the same 52 bits in the same millisecond. A token's
    signature, not the id, is what makes a reward trustworthy. Not thread-safe: the
    engine calls it under its lock.
    """

    def __init__(self) -> None:
        self._forks = -1
        self._rng = np.random.default_rng()
        self._block: list[int] = []

    def __call__(self, now: float) -> str:
        if not self._block or self._forks != _FORKS[0]:
            if self._forks != _FORKS[0]:
                self._forks = _FORKS[0]
                self._rng = np.random.default_rng()
            self._block = self._rng.integers(0, 1 << 52, size=ID_BLOCK).tolist()
        return f"{int(now * 1000) & 0xFFFFFFFFFFF:011x}{self._block.pop():013x}"


class Draft:
    """A decision drawn but not yet recorded (``Deciding._draft`` in
    :mod:`autoexp.deciding`): its unit's store call, if it needs one, goes between the
    two, for a group of decisions at once."""

    __slots__ = (
        "arm",
        "asks",
        "epoch",
        "features",
        "id",
        "live",
        "names",
        "now",
        "params",
        "row",
        "sticky",
        "unit_hash",
        "version",
    )

    def __init__(
        self,
        live: Live,
        unit_hash: str | None,
        features: Sequence[float] | None,
        arm: int,
        row: tuple[float, ...],
        id: str,
        now: float,
    ) -> None:
        self.live, self.unit_hash, self.features = live, unit_hash, features
        self.arm, self.row, self.id, self.now = arm, row, id, now
        # what it is recorded with: a refresh during a store call may install new names
        # (a new epoch of candidates) and a new version
        self.version, self.names, self.params = live.version, live.names, live.params
        self.epoch = live.epoch
        self.sticky = False  # the unit's earlier assignment, kept
        self.asks = False  # its unit's assignment is the store's to say
