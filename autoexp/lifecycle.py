"""An experiment's lifecycle on the store: the promotion rule's changes, an operator's
changes, and what a status page or the admin API reads about them.

Every change is logged as a ``transition`` record with its evidence (the rule's) or its
reason (an operator's), and kept as the alternative's last change in the store's
``change:ARM`` entry (``change:paused`` for pause and resume), so every replica and
every restart sees it. The engine calls these with its locks held.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from policies.promotion import STATUS, PromotionRule

from .errors import StateError, UnknownExperimentError
from .experiment import HISTORY_SAVE_S, HISTORY_SAVED, Live
from .store.base import Store

__all__ = ["ACTIONS", "changes_of", "evidence_of", "history_of", "look", "operator_change"]

ACTIONS = ("pause", "resume", "promote", "roll_back")


def shared_status(store: Store, live: Live) -> list[str]:
    """Each alternative's state as the store has it (all exploring before any change)."""
    raw = store.get(live.spec.name, "status")
    return json.loads(raw) if raw else ["exploring"] * len(live.spec.alternatives)


def transition_key(epoch: int, arm: int, new: str) -> str:
    """The store's once-key of a lifecycle change: one per arm and state in each epoch
    (a reopened experiment may promote the same arm again)."""
    return f"transition:{arm}:{new}" if epoch == 0 else f"transition:{epoch}:{arm}:{new}"


def look(store: Store, live: Live, rule: PromotionRule, status: np.ndarray, now: float) -> Any:
    """Let the rule read the evidence in ``live``'s snapshot: the new status, with each
    change logged exactly once across replicas (keyed by arm and new state)."""
    spec = live.spec
    ev = spec.test.evaluate(live.test_state)
    gev = [(g.name, g.evaluate(s)) for g, s in zip(spec.guardrails, live.guard_states, strict=True)]
    users = float(ev.n.sum()) if ev.n is not None else 0.0
    new, changes = rule.step(status, ev, gev, t=np.array([users]))
    for c in changes:
        evidence = {  # an unbounded side of a bound is null in JSON
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in c.to_dict().items()
        }
        record = {
            "type": "transition",
            "time": now,
            "experiment": spec.name,
            "epoch": live.epoch,
            "alternative": live.names[c.arm],
            **evidence,
        }
        if store.add(spec.name, {}, once=transition_key(live.epoch, c.arm, c.new), record=record):
            store.set(spec.name, f"change:{c.arm}", json.dumps(record))
    if changes:
        store.set(spec.name, "status", json.dumps([STATUS[s] for s in new[0]]))
    return new


def operator_change(
    store: Store, live: Live, action: str, *, alternative: str | None, reason: str, now: float
) -> None:
    """Apply and log an operator's ``action`` (one of :data:`ACTIONS`) in the store."""
    spec = live.spec
    name = spec.name
    record: dict[str, Any] = {
        "type": "transition",
        "time": now,
        "experiment": name,
        "by": "operator",
        "reason": reason,
        "action": action,
        "epoch": live.epoch,
    }
    if action in ("pause", "resume"):
        store.set(name, "paused", "1" if action == "pause" else "0")
        about = "paused"
    elif action in ("promote", "roll_back"):
        if alternative not in spec.alternatives:
            raise UnknownExperimentError(
                f"{name}: no alternative {alternative!r}; defined: {list(spec.alternatives)}"
            )
        arm = spec.alternatives.index(alternative)
        if arm == 0:
            raise StateError(f"{name}: {alternative!r} is the control")
        status = shared_status(store, live)
        new = "promoted" if action == "promote" else "rolled_back"
        if new == "promoted" and "promoted" in status:
            winner = spec.alternatives[status.index("promoted")]
            raise StateError(f"{name}: {winner!r} is promoted already")
        status[arm] = new
        store.set(name, "status", json.dumps(status))
        record |= {"arm": arm, "alternative": alternative, "new": new}
        about = str(arm)
    else:
        raise StateError(f"{name}: unknown action {action!r}; {', '.join(ACTIONS)}")
    store.add(name, {}, once=f"operator:{os.urandom(8).hex()}", record=record)
    store.set(name, f"change:{about}", json.dumps(record))


def evidence_of(live: Live) -> dict[str, Any]:
    """The primary test's (``test``) and each guardrail's (``guardrail:NAME``) evidence in
    ``live``'s snapshot: per alternative against control, ``estimate``, ``lower`` and
    ``upper`` (the confidence sequence of the difference; ``None`` while unbounded) and
    ``n``."""
    spec = live.spec
    parts = []
    if spec.test is not None:
        parts.append(("test", spec.test.evaluate(live.test_state)))
    for g, state in zip(spec.guardrails, live.guard_states, strict=True):
        parts.append((f"guardrail:{g.name}", g.test.evaluate(state)))
    return {
        label: {
            key: [
                float(x) if math.isfinite(x) else None
                for x in np.asarray(getattr(ev, key), dtype=np.float64)[0].tolist()
            ]
            for key in ("estimate", "lower", "upper", "n")
        }
        for label, ev in parts
    }


def changes_of(store: Store, live: Live) -> list[dict[str, Any]]:
    """The last change of each alternative and the last pause or resume, oldest first."""
    name = live.spec.name
    keys = [
        *(str(arm) for arm in range(1, len(live.spec.alternatives))),
        "paused",
        "drift",
        "epoch",
    ]
    found = (store.get(name, f"change:{key}") for key in keys)
    return sorted((json.loads(raw) for raw in found if raw), key=lambda r: float(r["time"]))


_HISTORY_KEYS = ("time", "version", "allocation", "status", "paused")


def history_of(live: Live) -> list[dict[str, Any]]:
    """``live``'s allocation and states at its last refreshes, oldest first."""
    return [dict(zip(_HISTORY_KEYS, row, strict=True)) for row in live.history]


def _points(raw: str | None) -> list[list[Any]]:
    """The store's history points; those not of the form :func:`save_history` writes
    are left out (a value written by hand or by another version: the chart's, never a
    reason to stop refreshing or to fail the page)."""
    try:
        points = json.loads(raw) if raw else []
    except ValueError:
        return []
    if not isinstance(points, list):
        return []
    return [
        p
        for p in points
        if isinstance(p, list)
        and len(p) == 4
        and isinstance(p[0], int | float)
        and isinstance(p[1], list)
        and isinstance(p[2], list)
        and isinstance(p[3], bool)
    ]


def save_history(store: Store, live: Live) -> None:
    """Add ``live``'s last refresh to the store's shared history (key ``history``: a JSON
    list of ``[time, allocation, status, paused]``, oldest first) if its states changed
    since this replica's last point there or that point is :data:`HISTORY_SAVE_S` old.
    Beyond :data:`HISTORY_SAVED` points, the older half is thinned to every other point,
    but for changes of state, so a long run keeps its whole span, its recent past in
    detail. Replicas read, add and write it whole: two saving at once may lose one point
    of the chart, never a record (the log and the ``change:*`` keys hold those)."""
    if not live.history:
        return
    now, _, allocation, status, paused = live.history[-1]
    last = live.saved
    if last is not None and (status, paused) == last[1:] and now - last[0] < HISTORY_SAVE_S:
        return
    points = _points(store.get(live.spec.name, "history"))
    points.append([now, allocation, status, paused])
    points.sort(key=lambda p: p[0])  # another replica's may be later
    if len(points) > HISTORY_SAVED:
        half = len(points) - HISTORY_SAVED // 2
        older = [
            p
            for i, p in enumerate(points[:half])
            if i % 2 == 0 or p[2:] != points[i - 1][2:]  # every other, and every change
        ]
        points = (older + points[half:])[-HISTORY_SAVED:]
    store.set(live.spec.name, "history", json.dumps(points, separators=(",", ":")))
    live.saved = (now, status, paused)


def shared_history(store: Store, live: Live) -> list[dict[str, Any]]:
    """The store's shared history (every replica's points, since the experiment began)
    with ``live``'s own refreshes that are not among them, oldest first, each as
    :func:`history_of` gives them (``version``: ``None`` for the store's points, whose
    replica's count is not this one's). Points of another number of alternatives (a
    config since changed) are left out."""
    k = len(live.spec.alternatives)
    stored = [
        {"time": t, "version": None, "allocation": a, "status": s, "paused": p}
        for t, a, s, p in _points(store.get(live.spec.name, "history"))
        if len(a) == k and len(s) == k
    ]
    saved = {h["time"] for h in stored}
    own = [h for h in history_of(live) if h["time"] not in saved]
    return sorted(stored + own, key=lambda h: h["time"])  # stable: the store's first


def begin_epoch(
    store: Store,
    live: Live,
    record: dict[str, Any],
    *,
    position: int | None = None,
    control_params: Mapping[str, Any] | None = None,
) -> bool:
    """Start epoch ``live.epoch + 1`` (once across replicas, whatever caused it: a drift,
    a champion, spent slots): log ``record``, snapshot the state as the new epoch's
    baseline (its evidence is counted afresh), set every alternative exploring, and
    (generated experiments) the control's new parameters. ``False`` if another replica
    began it first. The epoch number is written last, when the rest is in place."""
    name = live.spec.name
    epoch = live.epoch + 1
    record = {**record, "epoch": epoch}
    if not store.add(name, {}, once=f"epoch:{live.epoch}", record=record):
        return False
    state = store.read(name)
    store.set(name, "baseline", json.dumps({k: v.ravel().tolist() for k, v in state.items()}))
    if position is not None:  # where the drift watch reads the new epoch's log from
        store.set(name, "epoch_start", str(position))
    store.set(name, "status", json.dumps(["exploring"] * len(live.spec.alternatives)))
    if control_params is not None:
        store.set(name, f"control_params:{epoch}", json.dumps(dict(control_params)))
    store.set(
        name, "change:epoch" if record.get("by") != "drift" else "change:drift", json.dumps(record)
    )
    store.set(name, "epoch", str(epoch))
    return True


def retire(
    store: Store,
    live: Live,
    arm: int,
    new: str,
    reason: str,
    evidence: Mapping[str, Any],
    now: float,
) -> None:
    """Log that generated candidate ``arm`` is retired (``rolled_back`` as futile, or
    ``inconclusive``) with its evidence, once, and mark it in the shared status."""
    spec = live.spec
    record = {
        "type": "transition",
        "by": "generator",
        "time": now,
        "experiment": spec.name,
        "epoch": live.epoch,
        "arm": arm,
        "alternative": live.names[arm],
        "new": new,
        "source": "generator",
        "reason": reason,
        **evidence,
    }
    if store.add(spec.name, {}, once=transition_key(live.epoch, arm, new), record=record):
        store.set(spec.name, f"change:{arm}", json.dumps(record))
        status = shared_status(store, live)
        status[arm] = new
        store.set(spec.name, "status", json.dumps(status))
