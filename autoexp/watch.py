"""The drift watch: after a promotion, the champion's rewards in log order feed the
experiment's change detector; a detected drop begins a new epoch.

Every replica reads the same log from the same point (this epoch's promotion), so all
would signal at the same reward; the store lets one of them reopen
(:func:`~autoexp.lifecycle.begin_epoch`), and the others follow at their next refresh.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from policies.promotion import PROMOTED

from .experiment import Live
from .lifecycle import begin_epoch
from .store.base import Store

__all__ = ["Watch", "drift_status", "watch"]

_PAGE = 10_000  # log records read at once


@dataclass
class Watch:
    """The detector's reading of one experiment's log in one epoch: from ``position``,
    the promoted ``arm``'s rewards once its promotion was seen (``armed``)."""

    epoch: int
    arm: int
    position: int
    armed: bool
    stats: Any


def watch(store: Store, live: Live, lock: threading.RLock, clock: Callable[[], float]) -> None:
    """Read the log from where this replica left off; on a drop, reopen."""
    spec = live.spec
    detector = spec.drift
    with lock:
        promoted = np.flatnonzero(live.status[0] == PROMOTED)
        epoch = live.epoch
    if not promoted.size or live.paused:
        live.watch = None
        return
    arm = int(promoted[0])
    w = live.watch
    if w is None or w.epoch != epoch or w.arm != arm:
        start = int(store.get(spec.name, "epoch_start") or 0)
        w = live.watch = Watch(epoch, arm, start, False, detector.init(1))
    while True:
        page = store.records(spec.name, start=w.position, limit=_PAGE)
        for record in page:
            w.position += 1
            kind = record.get("type")
            if (
                kind == "transition"
                and record.get("new") == "promoted"
                and record.get("arm") == arm
                and record.get("epoch", 0) == epoch
            ):
                w.armed = True  # the champion's stream starts at its promotion
            elif kind == "reward" and w.armed and record.get("arm") == arm:
                w.stats = detector.update(w.stats, np.array([float(record["reward"])]))
                if detector.detected(w.stats)[0]:
                    _reopen(store, live, w, clock())
                    return
        if len(page) < _PAGE:
            return


def _reopen(store: Store, live: Live, w: Watch, now: float) -> None:
    """Log the drift with its evidence and begin a new epoch: the state from now on
    counts from a snapshot, and every alternative explores again."""
    spec = live.spec
    d = spec.drift
    stat = float(d.statistic(w.stats)[0])
    n = int(w.stats.n[0])
    mean = float(w.stats.mean[0])
    record = {
        "type": "transition",
        "by": "drift",
        "time": now,
        "experiment": spec.name,
        "arm": w.arm,
        "alternative": live.names[w.arm],
        "new": "reopened",
        "source": d.name,
        "statistic": stat,
        "threshold": d.threshold,
        "n": n,
        "mean": mean,
        "reason": (
            f"the champion's reward dropped: Page-Hinkley statistic {stat:.1f} > "
            f"threshold {d.threshold:g} after {n} rewards since its promotion (mean "
            f"{mean:.3f}); exploring again on fresh evidence"
        ),
    }
    begin_epoch(store, live, record, position=w.position)
    live.watch = None


def drift_status(live: Live) -> dict[str, Any] | None:
    """The detector's reading of the champion now (``None`` without a detector or while
    nothing is promoted)."""
    d, w = live.spec.drift, live.watch
    if d is None or w is None:
        return None
    return {
        "detector": d.name,
        "alternative": live.names[w.arm],
        "rewards": int(w.stats.n[0]),
        "mean": float(w.stats.mean[0]),
        "statistic": float(d.statistic(w.stats)[0]),
        "threshold": d.threshold,
    }
