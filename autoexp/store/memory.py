"""``memory://``: one process's dicts behind a lock (tests; nothing survives the process)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .base import (
    FloatArray,
    Item,
    Record,
    UnitsInBatches,
    check_amounts,
    check_declared,
    check_hold,
    check_lease,
    check_name,
    check_shapes,
    check_units,
    dumps,
    tally,
)

__all__ = ["MemoryStore"]


class MemoryStore(UnitsInBatches):
    """The :class:`~autoexp.store.base.Store` protocol in memory."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.Lock()
        self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        self._state: dict[str, dict[str, FloatArray]] = {}
        self._once: dict[str, set[str]] = {}
        self._assign: dict[str, dict[str, str]] = {}
        self._log: dict[str, list[str]] = {}
        self._meta: dict[str, dict[str, str]] = {}
        self._holds: dict[tuple[str, str], tuple[str, float]] = {}  # holder, until (monotonic)

    def declare(self, experiment: str, shapes: Mapping[str, tuple[int, ...]]) -> None:
        check_name("store.declare experiment", experiment)
        wanted = check_shapes("store.declare", shapes)
        with self._lock:
            have = self._shapes.setdefault(experiment, {})
            check_declared(experiment, have, wanted)
            for name, shape in wanted.items():
                if name not in have:
                    have[name] = shape
                    self._state.setdefault(experiment, {})[name] = np.zeros(shape)

    def read(self, experiment: str) -> dict[str, FloatArray]:
        with self._lock:
            return {k: v.copy() for k, v in self._state.get(experiment, {}).items()}

    def read_meta(
        self, experiment: str, names: Sequence[str]
    ) -> tuple[dict[str, FloatArray], list[str | None]]:
        return self.read(experiment), [self.get(experiment, n) for n in names]

    def add(
        self,
        experiment: str,
        amounts: Mapping[str, npt.ArrayLike],
        *,
        at: Mapping[str, npt.ArrayLike] | None = None,
        once: str | None = None,
        record: Record | None = None,
    ) -> bool:
        line = dumps(record) if record is not None else None
        with self._lock:
            checked = check_amounts(experiment, self._shapes.get(experiment, {}), amounts, at)
            seen = self._once.setdefault(experiment, set())
            if once is not None:
                if once in seen:
                    return False
                seen.add(once)
            state = self._state[experiment]
            for name, (index, values) in checked.items():
                np.add.at(state[name].reshape(-1), index, values)
            if line is not None:
                self._log.setdefault(experiment, []).append(line)
            return True

    def add_many(self, experiment: str, items: Sequence[Item]) -> list[bool]:
        with self._lock:
            seen = self._once.setdefault(experiment, set())
            lines, done, totals = tally(experiment, self._shapes.get(experiment, {}), items, seen)
            state = self._state[experiment]
            log = self._log.setdefault(experiment, [])
            for (once, _, _), line, applied in zip(items, lines, done, strict=True):
                if applied:
                    seen.add(once)
                    log.append(line)
            for (name, index), amount in totals.items():
                state[name].reshape(-1)[index] += amount
            return done

    def assign_many(
        self, experiment: str, items: Sequence[tuple[str, str, str | None]]
    ) -> list[str]:
        check_units(items)
        out = []
        with self._lock:  # the whole batch at once, as a transaction would
            table = self._assign.setdefault(experiment, {})
            for unit, value, unless in items:
                current = table.get(unit)
                if current is None or (unless is not None and current == unless):
                    table[unit] = value
                out.append(table[unit])
        return out

    def append(self, experiment: str, records: Sequence[Record]) -> None:
        check_name("store.append experiment", experiment)
        lines = [dumps(r) for r in records]
        with self._lock:
            self._log.setdefault(experiment, []).extend(lines)

    def records(
        self, experiment: str, *, start: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines(experiment, start=start, limit=limit)]

    def lines(self, experiment: str, *, start: int = 0, limit: int | None = None) -> list[str]:
        with self._lock:
            log = self._log.get(experiment, [])
            end = len(log) if limit is None else start + limit
            return log[start:end]

    def get(self, experiment: str, name: str) -> str | None:
        with self._lock:
            return self._meta.get(experiment, {}).get(name)

    def set(self, experiment: str, name: str, value: str) -> None:
        check_name("store.set experiment", experiment)
        with self._lock:
            self._meta.setdefault(experiment, {})[name] = value

    def hold(self, experiment: str, name: str, holder: str, ttl_s: float) -> bool:
        ttl_s = check_hold(experiment, name, holder, ttl_s)
        with self._lock:
            now = time.monotonic()
            held = self._holds.get((experiment, name))
            if held is not None and held[0] != holder and held[1] > now:
                return False
            self._holds[(experiment, name)] = (holder, now + ttl_s)
            return True

    def release(self, experiment: str, name: str, holder: str) -> bool:
        check_lease("store.release", experiment, name, holder)
        with self._lock:
            held = self._holds.get((experiment, name))
            if held is None or held[0] != holder:
                return False
            del self._holds[(experiment, name)]
            return held[1] > time.monotonic()

    def experiments(self) -> list[str]:
        with self._lock:
            names = set(self._shapes) | set(self._log) | set(self._meta) | set(self._assign)
            return sorted(names)

    def close(self) -> None:
        pass
