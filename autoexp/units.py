"""Sticky units: the assignments an engine holds in memory, and the store calls that read
and set them for a group of decisions at once (see :meth:`autoexp.engine.Engine.decide`).

A unit's assignment is stored as ``[arm, first propensities, decision id, epoch]``. It
stands while its arm keeps a share of the allocation and, in a generated experiment, its
slot still holds the same candidate (the same epoch); otherwise the unit is drawn again.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence

from .draws import Draft
from .experiment import Live
from .store.base import Store

__all__ = ["Units", "assignment", "hashed", "stands"]


def hashed(experiment: str, unit: str) -> str:
    """What a unit is recorded and assigned by: 32 hex digits of SHA-256 of the
    experiment's name and the unit, so the log never holds the unit itself. Any text
    hashes, even a lone surrogate JSON let through (``"\\ud800"``)."""
    key = f"{experiment}\0{unit}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(key).hexdigest()[:32]


def assignment(stored: str) -> tuple[int, tuple[float, ...], int]:
    """A unit's stored assignment: its arm, first propensities and epoch."""
    value = json.loads(stored)
    return int(value[0]), tuple(float(x) for x in value[1]), int(value[3]) if len(value) > 3 else 0


def stands(live: Live, arm: int, epoch: int, p: tuple[float, ...], now: int) -> bool:
    """Whether a unit's assignment (``arm`` in ``epoch``) still stands under the
    allocation ``p`` of epoch ``now``: the arm has a share, and in a generated experiment
    the slot still holds the same candidate (the same epoch)."""
    return (live.spec.generate is None or epoch == now) and p[arm] > 0.0


class Units:
    """An engine's sticky units: the last ``capacity`` assignments it read or made, per
    experiment (``Live.units``, least recently used dropped first; 0: none held), read
    and reordered under the engine's state ``lock``; and the store calls for those it
    does not hold."""

    def __init__(self, store: Store, lock: threading.RLock, capacity: int) -> None:
        self._store, self._lock, self._capacity = store, lock, capacity

    def held(
        self, live: Live, unit_hash: str, p: tuple[float, ...]
    ) -> tuple[int, tuple[float, ...]] | None:
        """The unit's arm and first propensities if the engine holds its assignment and
        it still stands; ``None``: ask the store. Called under the state lock."""
        held = live.units.get(unit_hash)
        if held is None or not stands(live, held[0], held[2], p, live.epoch):
            return None
        live.units.move_to_end(unit_hash)
        return held[0], held[1]

    def hold(
        self, live: Live, unit_hash: str, arm: int, row: tuple[float, ...], epoch: int
    ) -> None:
        """Hold a unit's assignment as the store has it."""
        if self._capacity == 0:
            return
        with self._lock:  # held() reads and reorders them under it
            live.units[unit_hash] = (arm, row, epoch)
            live.units.move_to_end(unit_hash)
            if len(live.units) > self._capacity:
                live.units.popitem(last=False)

    def settle(self, drafts: Sequence[Draft]) -> None:
        """Each drafted unit's assignment from the store, in one call per experiment: the
        draft's arm (drawn from its row in its epoch) if the unit has none, or none that
        still stands; the stored arm and first propensities otherwise (``sticky``), a
        second call setting the units whose stored arm no longer stands. Called without
        the state lock."""
        groups: dict[str, list[tuple[Draft, str]]] = {}
        for d in drafts:
            assert d.unit_hash is not None  # only a decision with a unit asks the store
            groups.setdefault(d.live.spec.name, []).append((d, d.unit_hash))
        for name, group in groups.items():
            live = group[0][0].live
            # each value names its decision, so "stored == value" means "assigned now"
            values = [json.dumps([d.arm, list(d.row), d.id, d.epoch]) for d, _ in group]
            stored = self._store.assign_many(
                name, [(unit, v, None) for (_, unit), v in zip(group, values, strict=True)]
            )
            again = []
            for (d, unit), value, got in zip(group, values, stored, strict=True):
                if got == value:  # assigned just now
                    arm, row, epoch = d.arm, d.row, d.epoch
                else:
                    arm, row, epoch = assignment(got)
                    # kept unless its arm lost its share, or (a generated experiment) its
                    # slot holds another candidate now
                    if not stands(live, arm, epoch, d.row, d.epoch):
                        again.append((d, unit, value, got))
                        continue
                self.hold(live, unit, arm, row, epoch)
                d.arm, d.row, d.sticky = arm, row, got != value
            if not again:
                continue
            stored = self._store.assign_many(name, [(u, v, old) for _, u, v, old in again])
            for (d, unit, value, _), got in zip(again, stored, strict=True):
                arm, row, epoch = assignment(got)
                self.hold(live, unit, arm, row, epoch)
                d.arm, d.row, d.sticky = arm, row, got != value
