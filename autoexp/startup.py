"""Starting an experiment, and refreshing it: the setup methods of
:class:`~autoexp.engine.Engine` (one class in several modules: see there).

An experiment starts by declaring its state's arrays in the store (refused if the store
holds them with other shapes) and reading its snapshot; a refresh reads the shared state
again, recomputes the allocation and lets the promotion rule look. With ``defer_start``
an experiment whose store does not answer as the engine starts waits
(:attr:`Startup.waiting`, :meth:`Startup.not_started`) and the background writer starts
it once the store answers (:meth:`Startup._start_waiting`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from policies.promotion import PromotionRule

from .errors import StoreError
from .experiment import ExperimentSpec, Live, renamed, state_shapes
from .generate import generation_step
from .lifecycle import save_history
from .snapshot import serving_policy
from .state import increments, install
from .tokens import Ticket
from .watch import watch

if TYPE_CHECKING:
    from .store.base import Store

__all__ = ["REFUSED_RETRY_S", "Startup"]

log = logging.getLogger("autoexp")

REFUSED_RETRY_S = 10.0  # a waiting experiment refused once its store answered: tried again


class Startup:
    """The setup and refresh methods of :class:`~autoexp.engine.Engine`, which holds the
    state they use (declared here for the type checker)."""

    if TYPE_CHECKING:
        store: Store
        _clock: Callable[[], float]
        _down: StoreError | None
        _live: dict[str, Live]
        _lock: threading.RLock
        _refused: dict[str, tuple[str, float]]
        _waiting: dict[str, ExperimentSpec]

        def _try_flush(self, live: Live) -> None: ...

    def _start(self, spec: ExperimentSpec) -> Live:
        # a learner (VW, river) serves its deployed snapshots: see autoexp.snapshot
        policy, reader = serving_policy(spec.policy, self.store, spec.name)
        if reader is not None:
            spec = dataclasses.replace(spec, policy=policy)
        k = len(spec.alternatives)
        rule = spec.rule
        if rule is None and spec.test is not None:
            rule = PromotionRule(test_name=spec.test.name)
        shapes = state_shapes(spec)
        self.store.declare(spec.name, shapes)
        stored = self.store.get(spec.name, "alternatives")
        if stored is None:
            self.store.set(spec.name, "alternatives", json.dumps(list(spec.alternatives)))
        elif (said := renamed(spec, stored)) is not None:
            log.warning("autoexp: %s", said)
        live = Live(spec=spec, rule=rule, shapes=shapes, reader=reader)
        live.dim = spec.policy.context_dim
        live.names = list(spec.alternatives)
        live.params = list(spec.params) if spec.params is not None else [{} for _ in range(k)]
        self._refresh(live)
        return live

    def _refresh(self, live: Live) -> None:
        """Re-read the shared state; recompute the allocation; let the rule look."""
        spec = live.spec
        self._try_flush(live)
        # the store's answers first, without the state lock (decisions go on meanwhile)
        if live.reader is not None:  # a newly deployed model, loaded before it serves
            live.reader.refresh()
        if spec.drift is not None:
            watch(self.store, live, self._lock, self._clock)
        if spec.drift is not None or spec.generate is not None:
            epoch = int(self.store.get(spec.name, "epoch") or 0)
            if epoch != live.epoch:  # reopened (here or by another replica): new baseline
                raw_base = self.store.get(spec.name, "baseline")
                base = json.loads(raw_base) if raw_base else {}
                baseline = {
                    k: np.asarray(base[k], dtype=np.float64).reshape(shape)
                    for k, shape in live.shapes.items()
                    if k in base
                }
                control = None
                if spec.generate is not None:
                    raw_control = self.store.get(spec.name, f"control_params:{epoch}")
                    control = json.loads(raw_control) if raw_control else None
                with self._lock:
                    live.epoch, live.baseline = epoch, baseline
                    live.control_params = control
                    live.since = {}
            if spec.generate is not None:
                admitted = int(self.store.get(spec.name, f"admitted:{live.epoch}") or 0)
                with self._lock:
                    live.admitted = min(admitted, spec.generate.slots)
        data, (raw, paused_raw) = self.store.read_meta(spec.name, ("status", "paused"))
        if not set(live.shapes) <= set(data):  # a store that lost everything (a Redis
            self.store.declare(spec.name, live.shapes)  # restarted without persistence)
            data = self.store.read(spec.name)
        paused = paused_raw == "1"
        with self._lock:
            install(self.store, live, data, raw, paused, self._clock)
        save_history(self.store, live)  # for the status page: every replica's, kept
        if spec.generate is not None:
            generation_step(self.store, live, self._lock, self._clock())

    def _start_waiting(self) -> None:
        """Start the experiments waiting for their store, in order, until the store fails
        again (the background writer calls this, holding ``_log_lock``, once the store
        answers)."""
        for name, spec in list(self._waiting.items()):
            if name in self._refused and time.monotonic() < self._refused[name][1]:
                continue
            try:
                live = self._start(spec)
            except Exception as e:
                if isinstance(e, StoreError) and not self._answers(name):
                    self._down = e  # down again: the next pass once it answers
                    return
                # refused although the store answers (its stored state has other shapes
                # than the definition, say): not the store's to fix. It stays waiting,
                # its requests to control, said and tried again every REFUSED_RETRY_S
                # (a store that failed and answered at once is not refused for long)
                again = time.monotonic() + REFUSED_RETRY_S
                self._refused = {**self._refused, name: (f"refused: {e}", again)}
                log.error("autoexp: experiment %s cannot start: %s", name, e)
                continue
            self._warm(live)
            with self._lock:  # in _live before it leaves _waiting: see _get
                self._live = {**self._live, name: live}
                self._waiting = {k: v for k, v in self._waiting.items() if k != name}
                self._refused = {k: v for k, v in self._refused.items() if k != name}
            log.info("autoexp: experiment %s started: its store answers", name)

    def _answers(self, name: str) -> bool:
        """Whether the store answers now (one read)."""
        try:
            self.store.get(name, "status")
        except StoreError:
            return False
        return True

    def warm_up(self) -> None:
        """Compute (and throw away) one reward's increments per experiment, so compiled
        code is loaded before the first real reward rather than during it; nothing is
        written. The sidecar calls this before it reports ready."""
        for live in self._live.values():
            self._warm(live)

    def _warm(self, live: Live) -> None:
        k = len(live.spec.alternatives)
        dim = live.spec.policy.context_dim
        x = None if dim is None else (0.0,) * dim
        ticket = Ticket("warm-up", live.spec.name, 0, (1.0 / k,) * k, 0.0, 1.0, x)
        with self._lock:
            increments(live, [ticket], [live.spec.reward_range[0]])

    @property
    def waiting(self) -> list[str]:
        """The experiments not started yet because their store has not answered since
        the engine started (``defer_start``); the background writer starts them when it
        does (see :meth:`not_started` for why each waits)."""
        return sorted(self._waiting)

    def not_started(self) -> dict[str, str]:
        """Why each experiment in :attr:`waiting` has not started: its store has not
        answered (with its last failure), or, once it did, what refused the experiment
        (its stored state does not match its definition, say)."""
        return {name: self._why_waiting(name) for name in sorted(self._waiting)}

    def _why_waiting(self, name: str) -> str:
        refused = self._refused.get(name)
        if refused is not None:
            return refused[0]
        down = self._down
        why = "its store has not answered since this process started"
        return why if down is None else f"{why} ({down})"
