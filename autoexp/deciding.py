"""The engine's decisions: :meth:`~autoexp.engine.Engine.decide` and its kin, a part of
:class:`autoexp.engine.Engine` kept in a module of its own (see that module's docstring).

A decision is drawn under the engine's state lock (:meth:`Deciding._draft`), its unit's
assignment read or set in the store without it (for a group of decisions at once:
:class:`autoexp.units.Units`), then signed and logged (:meth:`Deciding._record`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Any

import numpy as np

from .context import decision_context
from .draws import Draft, Ids
from .errors import RequestError, StoreError, UnknownExperimentError
from .experiment import Decision, Live, draw, make_decision, served
from .records import decision_line, float_text, floats_json
from .tokens import Ticket, sign
from .units import Units, hashed

__all__ = ["Deciding"]

_DRAW_BLOCK = 1024  # the seeded uniforms of decisions' draws taken at a time


class Deciding:
    """The decision methods of :class:`~autoexp.engine.Engine`, which holds the state
    they use (declared here for the type checker)."""

    if TYPE_CHECKING:
        _clock: Callable[[], float]
        _down: StoreError | None
        _flusher: threading.Thread | None
        _ids: Ids
        _keys: tuple[bytes, ...]
        _lock: threading.RLock
        _log_batch: int
        _probed: float
        _rng: np.random.Generator
        _seed: int | None
        _uniforms: list[float]
        _units: Units
        _wake: threading.Event

        def _get(self, name: str) -> Live: ...
        def _probe(self) -> None: ...
        def _tick(self, live: Live, *, defer: bool = False) -> None: ...
        def _try_flush(self, live: Live) -> None: ...

    def decide(
        self,
        name: str,
        *,
        unit: str | None = None,
        context: Sequence[float] | Mapping[str, Any] | None = None,
    ) -> Decision:
        """Choose the alternative for one request (see the module docstring).

        ``context``: named feature values (a mapping, encoded by the experiment's
        :class:`~autoexp.context.ContextSpec`) or the numbers themselves. A contextual
        policy needs one (with a context spec, a missing one means every feature
        missing); :class:`RequestError` otherwise, with nothing recorded.

        A sticky ``unit`` costs a store call (read, and write if new) unless this
        engine holds its assignment: the last ``unit_cache`` units it assigned or read
        are held, and one whose arm is still live in this replica's snapshot is served
        from memory. An assignment changed by another replica (its arm rolled back
        there first) is read here once this replica's snapshot has the arm rolled back
        too, as every replica's view of the lifecycle lags by at most its refresh.
        """
        decision = self._decide(name, unit, context, wait=True)
        assert decision is not None  # with wait=True, always one
        return decision

    def try_decide(
        self,
        name: str,
        *,
        unit: str | None = None,
        context: Sequence[float] | Mapping[str, Any] | None = None,
    ) -> Decision | None:
        """:meth:`decide`, if it needs no store call: without a unit, or for a unit
        whose assignment this engine holds (its arm still live); ``None`` otherwise,
        with nothing recorded. For callers on an event loop, which run :meth:`decide`
        in a thread only when this says ``None``."""
        return self._decide(name, unit, context, wait=False)

    def decide_each(
        self,
        asks: Sequence[tuple[str, str | None, Sequence[float] | Mapping[str, Any] | None]],
    ) -> list[Decision | RequestError | UnknownExperimentError]:
        """:meth:`decide` for many requests ``(name, unit, context)``, each its own
        caller's (the sidecar's requests whose units this engine does not hold, queued
        together): the units' assignments are read and written in one store call per
        experiment (one transaction, one Redis round trip; a second one for units whose
        stored arm no longer stands) instead of one or two each. A request refused
        (unknown experiment, bad context) gets its error in its place and the others are
        decided; a store failure raises for all of them, with nothing recorded."""
        out: list[Any] = [None] * len(asks)
        inputs = []
        for n, (name, unit, context) in enumerate(asks):
            try:
                live = self._get(name)
                inputs.append((n, live, *self._inputs(live, unit, context)))
            except (RequestError, UnknownExperimentError) as e:
                out[n] = e
        with self._lock:
            drafts = [(n, self._draft(live, uh, x, wait=True)) for n, live, uh, x in inputs]
            asked = [d for _, d in drafts if d is not None and d.asks]
            if asked:  # without the state lock, as in decide
                self._lock.release()
                try:
                    self._units.settle(asked)
                finally:
                    self._lock.acquire()
            for n, draft in drafts:
                assert draft is not None  # with wait=True, always one
                out[n] = self._record(draft)
        return out

    def _inputs(
        self,
        live: Live,
        unit: str | None,
        context: Sequence[float] | Mapping[str, Any] | None,
    ) -> tuple[str | None, Sequence[float] | None]:
        """A request's unit hash and features (no state lock needed)."""
        # the common case (no context, a context-free policy) without a call
        features = (
            None
            if context is None and live.dim is None
            else decision_context(live.spec, context, self._clock)
        )
        return None if unit is None else hashed(live.spec.name, unit), features

    def _decide(
        self,
        name: str,
        unit: str | None,
        context: Sequence[float] | Mapping[str, Any] | None,
        *,
        wait: bool,
    ) -> Decision | None:
        live = self._get(name)
        unit_hash, features = self._inputs(live, unit, context)
        with self._lock:
            draft = self._draft(live, unit_hash, features, wait=wait)
            if draft is None:
                return None  # a store call: not from here
            if draft.asks:
                # the store's part without the state lock (unless a caller holds it too),
                # so decisions on the event loop go on meanwhile
                self._lock.release()
                try:
                    self._units.settle([draft])
                finally:
                    self._lock.acquire()
            return self._record(draft)

    def _draft(
        self, live: Live, unit_hash: str | None, features: Sequence[float] | None, *, wait: bool
    ) -> Draft | None:
        """A decision's draw (under the state lock): its arm, id and time, and what it is
        recorded with; ``None`` if it needs a store call (a unit this engine does not
        hold) and ``wait`` is false, with nothing drawn."""
        if self._down is not None and time.monotonic() - self._probed >= 1.0:
            self._probe()  # at most once a second from here (the writer probes too)
        if self._down is not None:
            raise StoreError(f"store unavailable since its last call failed: {self._down}")
        if live.dim is None:
            row = live.row
            alloc = None
        else:  # this request's own allocation, from the snapshot
            x = np.array([features])
            alloc = served(
                live.spec.policy.allocation(live.policy_state, x)[0], live.status, live.paused
            )
            row = tuple(alloc.tolist())
        held = None if unit_hash is None else self._units.held(live, unit_hash, row)
        if held is None and unit_hash is not None and not wait:
            return None
        arm = draw(
            live.cumulative if alloc is None else list(accumulate(row)),
            row,
            self._uniform(),  # drawn for a held unit too: a seed's draws stay aligned
        )
        if alloc is not None:
            if live.served_sum is None:
                live.served_sum = alloc
            else:
                live.served_sum += alloc
            live.served_n += 1
        draft = Draft(live, unit_hash, features, arm, row, self._ids(now := self._clock()), now)
        if held is not None:
            draft.arm, draft.row = held
            draft.sticky = True
        else:
            draft.asks = unit_hash is not None
        return draft

    def _record(self, d: Draft) -> Decision:
        """Sign and log a drafted decision (under the state lock)."""
        live, spec, arm, row, now = d.live, d.live.spec, d.arm, d.row, d.now
        name, dim = spec.name, live.dim
        ticket = Ticket(
            d.id,
            name,
            arm,
            row,
            now,
            now + spec.token_ttl_s,
            None if dim is None else tuple(d.features),  # type: ignore[arg-type]
        )
        when = float_text(now)  # in the token and the record, its digits found once
        token = sign(self._keys, ticket, issued=when)
        live.buffer.append(
            decision_line(  # JSON text (autoexp.records)
                decision_id=d.id,
                time=when,
                experiment=name,
                unit_hash=d.unit_hash,
                context=None if d.features is None else floats_json(d.features),
                arm=arm,
                alternative=d.names[arm],
                propensity=live.row_texts[arm] if row is live.row else float_text(row[arm]),
                allocation=live.row_json if row is live.row else floats_json(row),
                policy=spec.policy.name,
                version=d.version,
                seed=self._seed,
            )
        )
        if len(live.buffer) >= self._log_batch:
            if self._flusher is not None:
                # written by the background writer, off this path; woken once (a set
                # flag means it has not yet cleared it, so it takes this one too)
                if not self._wake.is_set():
                    self._wake.set()
            else:
                self._try_flush(live)
        decision = make_decision(
            d.id,
            name,
            arm,
            d.names[arm],
            row[arm],
            d.params[arm],
            spec.policy.name,
            d.version,
            token,
            d.sticky,
            ticket,
            self._keys,
        )
        # last: a refresh here may rename the arms (a new epoch of candidates)
        self._tick(live, defer=self._flusher is not None)
        return decision

    def _uniform(self) -> float:
        """The seeded stream's next draw: the same numbers as one ``random()`` call each,
        taken 1,024 at a time (a call into numpy per decision cost more than the rest of
        the draw). Called under the state lock."""
        if not self._uniforms:
            self._uniforms = self._rng.random(_DRAW_BLOCK).tolist()[::-1]
        return self._uniforms.pop()
