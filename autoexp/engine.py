"""The engine: decide, reward, and keep each experiment's lifecycle, on a shared store.

An experiment's whole state lives in the store as additive arrays: the policy stack's
(``policy.*``), the primary test's (``test.*``) and each guardrail's (``guard.N.*``). A
replica keeps a snapshot, refreshed every ``refresh_every`` decisions and rewards (not per
request): the allocation is computed from it, decisions are draws from the allocation,
and a reward's increments are computed against it and added to the store atomically with
its log record. Increments from any number of replicas add up to the same state.

Decisions
    ``decide(name, unit=...)`` draws an arm from the current allocation (alternatives
    rolled back get nothing; a promoted one gets everything), or, for a unit seen before
    whose arm is still live, returns that arm with the propensity recorded at its first
    exposure (sticky assignment without a separate service, and off-policy estimates stay
    unbiased when allocations move). It logs the decision (``policies.base.LOG_COLUMNS``
    plus the full ``allocation``; written in groups, always before its reward) and
    returns a signed token. While the store is failing it refuses to decide
    (:class:`~autoexp.errors.StoreError`; the SDK then serves control) until the store
    answers again.

Rewards
    ``reward(token, value)`` verifies the token (forged, expired, unknown experiment:
    refused), checks the value (finite, in the experiment's range), refuses it after the
    join window, and applies it once: a second reward for the same decision is a no-op.
    Nothing is written unless everything checks out.

Lifecycle
    At every refresh the promotion rule reads the test's and guardrails' evidence; each
    change is logged exactly once across replicas with its evidence, and the status is
    kept in the store.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import numpy as np

from policies.promotion import STATUS, PromotionRule

from .context import decision_context
from .errors import (
    ConfigError,
    RequestError,
    RewardError,
    StoreError,
    UnknownExperimentError,
)
from .experiment import (
    Decision,
    ExperimentSpec,
    Live,
    budget_of,
    draw,
    make_decision,
    served,
)
from .generate import generation_step
from .lifecycle import (
    changes_of,
    evidence_of,
    history_of,
    operator_change,
)
from .records import decision_line, floats_json, outline, reward_lines
from .snapshot import serving_policy
from .state import increments, install
from .store.base import Item, Store
from .tokens import Ticket, keys_from, sign, verify
from .watch import drift_status, watch

__all__ = ["Decision", "Engine", "ExperimentSpec"]


_FORKS = [0]  # forks of this process so far: a child draws its ids afresh
os.register_at_fork(after_in_child=lambda: _FORKS.__setitem__(0, _FORKS[0] + 1))
_ID_BLOCK = 1024  # random parts drawn at a time
_DRAW_BLOCK = 1024  # the seeded uniforms of decisions' draws taken at a time


class _Ids:
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
            self._block = self._rng.integers(0, 1 << 52, size=_ID_BLOCK).tolist()
        return f"{int(now * 1000) & 0xFFFFFFFFFFF:011x}{self._block.pop():013x}"


@dataclass
class _Scan:
    """What :meth:`Engine.expire` has read of one experiment's log: positions
    ``[start, end)``, and in them the decisions not yet rewarded nor defaulted (id to
    position, its record's time and its record's JSON text, parsed only if it falls due)."""

    start: int
    end: int
    open: dict[str, tuple[int, float, str]] = field(default_factory=dict)


def _flush_loop(ref: Any, stop: threading.Event, wake: threading.Event, every_s: float) -> None:
    """The background writer: pending decisions to the log every ``every_s``, or at once
    when a group fills (``wake``), and the refreshes ``decide`` asked for. It holds the
    engine's state lock only to take the pending group or install a snapshot, so decisions
    go on while the store works (an fsync, a round trip)."""
    while not stop.is_set():
        wake.wait(every_s)
        wake.clear()
        engine = ref()
        if engine is None:
            return
        with engine._log_lock:
            try:
                for live in engine._live.values():
                    engine._write_log(live, quiet=True)
                    if live.refresh_due:  # decide's cadence, off its path
                        live.refresh_due = False
                        engine._refresh_now(live)
                engine._probe()
            except Exception as e:  # a client library failing oddly (e.g. a store closed
                # under it): the writer must not die; the store counts as down, and
                # the pending decisions stay for the next try
                with engine._lock:
                    engine.log_errors += 1
                    engine._down = StoreError(f"store: background write failed: {e!r}")
        del engine


def _flush_at_exit(ref: Any) -> None:
    engine = ref()
    if engine is not None:
        try:
            engine.close()
        except StoreError:  # the store may be gone at exit; nothing more can be done
            pass


class _Draft:
    """A decision drawn but not yet recorded (see ``Engine._draft``): its unit's store
    call, if it needs one, goes between the two, for a group of decisions at once."""

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


def _assignment(stored: str) -> tuple[int, tuple[float, ...], int]:
    """A unit's stored assignment: its arm, first propensities and epoch."""
    value = json.loads(stored)
    return int(value[0]), tuple(float(x) for x in value[1]), int(value[3]) if len(value) > 3 else 0


class Engine:
    """Decide and reward for a set of experiments on one store (see the module docstring).

    Parameters
    ----------
    store : a :class:`~autoexp.store.base.Store`
    experiments : the specs
    secret : signing key(s) for tokens (default: ``AUTOEXP_SECRET``)
    seed : seeds this replica's draws (default: fresh entropy)
    clock : seconds since the epoch (tests pass a fake one)
    log_batch : decisions written to the log in one store write (group commit). A full
        group wakes the background writer, which writes it while decisions go on (the
        engine's lock is held only to take the group); a reward, :meth:`flush` and
        :meth:`close` wait for a write in progress and write what is pending first, so a
        decision is always logged before its reward. 1: every decision at once.
    log_flush_s : the background writer also writes pending decisions this often (0: no
        background writer; then a full group or a refresh writes inline). A decision not
        yet written when the process dies is lost from the log (its reward, if any,
        never is).
    unit_cache : sticky units' assignments held in memory, per experiment (least
        recently used dropped first; 0: none, every sticky decision asks the store). A
        held unit whose arm is still live is decided without a store call
        (:meth:`try_decide` says whether one is needed).
    """

    def __init__(
        self,
        store: Store,
        experiments: Sequence[ExperimentSpec],
        *,
        secret: Any = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        log_batch: int = 256,
        log_flush_s: float = 0.05,
        unit_cache: int = 65_536,
    ) -> None:
        if not isinstance(log_batch, int) or log_batch < 1:
            raise ConfigError(f"log_batch: must be an integer >= 1 (got {log_batch!r})")
        if isinstance(unit_cache, bool) or not isinstance(unit_cache, int) or unit_cache < 0:
            raise ConfigError(f"unit_cache: must be an integer >= 0 (got {unit_cache!r})")
        self._unit_cache = unit_cache
        if not log_flush_s >= 0:
            raise ConfigError(f"log_flush_s: must be >= 0 (got {log_flush_s!r})")
        self.store = store
        self._log_batch = log_batch
        self.log_errors = 0
        self._down: StoreError | None = None  # the last store failure, until it recovers
        self._probed = 0.0
        self._keys = keys_from(secret)
        self._seq = np.random.SeedSequence(seed)
        self._seed = int(self._seq.entropy) if isinstance(self._seq.entropy, int) else None
        self._rng = np.random.default_rng(self._seq)
        self._uniforms: list[float] = []  # self._rng's next draws, the next one last
        self._ids = _Ids()
        self._clock = clock
        # Lock order: _log_lock (log writes, in order) before _lock (engine state); code
        # holding only _lock may try _log_lock but never wait for it.
        self._lock = threading.RLock()
        self._log_lock = threading.RLock()
        self._wake = threading.Event()
        self._expiring = threading.Lock()
        self._scans: dict[str, _Scan] = {}  # expire's reading of each experiment's log
        self._live: dict[str, Live] = {}
        for spec in experiments:
            if spec.name in self._live:
                raise ConfigError(f"experiments.{spec.name}: defined twice")
            self._live[spec.name] = self._start(spec)
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if log_flush_s > 0:
            self._flusher = threading.Thread(
                target=_flush_loop,
                args=(weakref.ref(self), self._stop, self._wake, log_flush_s),
                name="autoexp-log-flush",
                daemon=True,
            )
            self._flusher.start()
        atexit.register(_flush_at_exit, weakref.ref(self))

    # --- setup and refresh ------------------------------------------------------------

    def _start(self, spec: ExperimentSpec) -> Live:
        # a learner (VW, river) serves its deployed snapshots: see autoexp.snapshot
        policy, reader = serving_policy(spec.policy, self.store, spec.name)
        if reader is not None:
            spec = dataclasses.replace(spec, policy=policy)
        k = len(spec.alternatives)
        rule = spec.rule
        if rule is None and spec.test is not None:
            rule = PromotionRule(test_name=spec.test.name)
        parts = {"policy": spec.policy.init(k, 1).to_dict()}
        if spec.test is not None:
            parts["test"] = spec.test.init(k, 1).to_dict()
        for i, g in enumerate(spec.guardrails):
            parts[f"guard.{i}"] = g.init(k, 1).to_dict()
        shapes: dict[str, tuple[int, ...]] = {}
        for prefix, data in parts.items():
            for name, array in data.items():
                shapes[f"{prefix}.{name}"] = tuple(np.shape(array))
        self.store.declare(spec.name, shapes)
        if self.store.get(spec.name, "alternatives") is None:
            self.store.set(spec.name, "alternatives", json.dumps(list(spec.alternatives)))
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
        if spec.generate is not None:
            generation_step(self.store, live, self._lock, self._clock())

    def _get(self, name: str) -> Live:
        try:
            return self._live[name]
        except KeyError:
            raise UnknownExperimentError(
                f"experiment {name!r} is not defined; defined: {sorted(self._live)}"
            ) from None

    def operate(
        self, name: str, action: str, *, alternative: str | None = None, reason: str = ""
    ) -> dict[str, Any]:
        """An operator's change: ``pause`` (control only) or ``resume`` the experiment,
        ``promote`` or ``roll_back`` one alternative. Logged as a transition with
        ``"by": "operator"`` and the reason; shared through the store by every replica at
        its next refresh (this one refreshes now). The new status."""
        with self._log_lock, self._lock:
            live = self._get(name)
            operator_change(
                self.store, live, action, alternative=alternative, reason=reason, now=self._clock()
            )
            self._refresh(live)
            return self.status(name)

    def evidence(self, name: str) -> dict[str, Any]:
        """The primary test's and the guardrails' evidence in this replica's snapshot:
        per alternative against control, ``estimate``, ``lower`` and ``upper`` (the
        confidence sequence of the difference; ``None`` while unbounded) and ``n``."""
        with self._lock:
            return evidence_of(self._get(name))

    def changes(self, name: str) -> list[dict[str, Any]]:
        """The last lifecycle change of each alternative and the last pause or resume, as
        logged (with the evidence or the operator's reason), oldest first; read from the
        store, so changes made by any replica are there."""
        return changes_of(self.store, self._get(name))

    def history(self, name: str) -> list[dict[str, Any]]:
        """This replica's allocations and states at its last refreshes (at most
        :data:`HISTORY`), oldest first: ``time``, ``version``, ``allocation``, ``status``,
        ``paused``."""
        with self._lock:
            return history_of(self._get(name))

    def spec(self, name: str) -> ExperimentSpec:
        """The definition of experiment ``name``."""
        return self._get(name).spec

    def _tick(self, live: Live, *, defer: bool = False) -> None:
        """Count one event; refresh at the cadence, here or (``defer``, from ``decide``
        with a background writer) in the writer's thread, so that a decision never waits
        for the store (a commit, a checkpoint's fsync, a round trip)."""
        live.since_refresh += 1
        if live.since_refresh >= live.spec.refresh_every:
            if defer:
                if not live.refresh_due:  # once: the writer clears it when it refreshes
                    live.refresh_due = True
                    self._wake.set()
                return
            self._refresh_now(live)

    def _refresh_now(self, live: Live) -> None:
        if live.since_refresh < live.spec.refresh_every:
            return  # refreshed meanwhile (by a reward)
        try:
            self._refresh(live)
        except StoreError as e:  # keep serving this snapshot's decisions; say so
            self._down = e

    # --- decide -----------------------------------------------------------------------

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
                    self._sticky(asked)
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
        if unit is None:
            return None, features
        key = f"{live.spec.name}\0{unit}".encode()
        return hashlib.sha256(key).hexdigest()[:32], features

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
                    self._sticky([draft])
                finally:
                    self._lock.acquire()
            return self._record(draft)

    def _draft(
        self, live: Live, unit_hash: str | None, features: Sequence[float] | None, *, wait: bool
    ) -> _Draft | None:
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
        held = None if unit_hash is None else self._held(live, unit_hash, row)
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
        draft = _Draft(live, unit_hash, features, arm, row, self._ids(now := self._clock()), now)
        if held is not None:
            draft.arm, draft.row = held
            draft.sticky = True
        else:
            draft.asks = unit_hash is not None
        return draft

    def _record(self, d: _Draft) -> Decision:
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
        token = sign(self._keys, ticket)
        live.buffer.append(
            decision_line(  # JSON text (autoexp.records)
                decision_id=d.id,
                time=now,
                experiment=name,
                unit_hash=d.unit_hash,
                context=None if d.features is None else floats_json(d.features),
                arm=arm,
                alternative=d.names[arm],
                propensity=row[arm],
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

    def _sticky(self, drafts: Sequence[_Draft]) -> None:
        """Each drafted unit's assignment from the store, in one call per experiment: the
        draft's arm (drawn from its row in its epoch) if the unit has none, or none that
        still stands; the stored arm and first propensities otherwise (``sticky``), a
        second call setting the units whose stored arm no longer stands. Called without
        the state lock."""
        groups: dict[str, list[tuple[_Draft, str]]] = {}
        for d in drafts:
            assert d.unit_hash is not None  # only a decision with a unit asks the store
            groups.setdefault(d.live.spec.name, []).append((d, d.unit_hash))
        for name, group in groups.items():
            live = group[0][0].live
            # each value names its decision, so "stored == value" means "assigned now"
            values = [json.dumps([d.arm, list(d.row), d.id, d.epoch]) for d, _ in group]
            stored = self.store.assign_many(
                name, [(unit, v, None) for (_, unit), v in zip(group, values, strict=True)]
            )
            again = []
            for (d, unit), value, got in zip(group, values, stored, strict=True):
                if got == value:  # assigned just now
                    arm, row, epoch = d.arm, d.row, d.epoch
                else:
                    arm, row, epoch = _assignment(got)
                    # kept unless its arm lost its share, or (a generated experiment) its
                    # slot holds another candidate now
                    if not self._stands(live, arm, epoch, d.row, d.epoch):
                        again.append((d, unit, value, got))
                        continue
                self._hold(live, unit, arm, row, epoch)
                d.arm, d.row, d.sticky = arm, row, got != value
            if not again:
                continue
            stored = self.store.assign_many(name, [(u, v, old) for _, u, v, old in again])
            for (d, unit, value, _), got in zip(again, stored, strict=True):
                arm, row, epoch = _assignment(got)
                self._hold(live, unit, arm, row, epoch)
                d.arm, d.row, d.sticky = arm, row, got != value

    @staticmethod
    def _stands(live: Live, arm: int, epoch: int, p: tuple[float, ...], now: int) -> bool:
        """Whether a unit's assignment (``arm`` in ``epoch``) still stands under the
        allocation ``p`` of epoch ``now``: the arm has a share, and in a generated
        experiment the slot still holds the same candidate (the same epoch)."""
        return (live.spec.generate is None or epoch == now) and p[arm] > 0.0

    def _held(
        self, live: Live, unit_hash: str, p: tuple[float, ...]
    ) -> tuple[int, tuple[float, ...]] | None:
        """The unit's arm and first propensities if this engine holds its assignment
        and it still stands; ``None``: ask the store."""
        held = live.units.get(unit_hash)
        if held is None or not self._stands(live, held[0], held[2], p, live.epoch):
            return None
        live.units.move_to_end(unit_hash)
        return held[0], held[1]

    def _hold(
        self, live: Live, unit_hash: str, arm: int, row: tuple[float, ...], epoch: int
    ) -> None:
        """Hold a unit's assignment as the store has it (the least recently used goes
        when ``unit_cache`` are held)."""
        if self._unit_cache == 0:
            return
        with self._lock:  # _held reads and reorders them under it
            live.units[unit_hash] = (arm, row, epoch)
            live.units.move_to_end(unit_hash)
            if len(live.units) > self._unit_cache:
                live.units.popitem(last=False)

    # --- reward -----------------------------------------------------------------------

    def reward(self, decision: Decision | str, value: float) -> bool:
        """Record the outcome of a decision; ``False`` if it was already rewarded."""
        return bool(self._rewards([(decision, value)], single=True)[0])

    def reward_many(self, items: Sequence[tuple[Decision | str, float]]) -> list[bool]:
        """Record many outcomes in one store call per experiment (one transaction, one
        Redis round trip); for each, ``False`` if it was already rewarded.

        Every item is checked first (token, experiment, value, join window); a bad one
        refuses the whole batch, naming its index, with nothing written. Each applied
        reward is still applied atomically and once; their increments are computed
        against the same snapshot, as a replica's are.
        """
        return self._rewards(items, single=False)

    def _check(self, decision: Any, value: Any, now: float) -> tuple[Live, Ticket, float]:
        if isinstance(decision, Decision) and decision.signer is self._keys:
            ticket = decision.ticket  # made here: its signature is known good
            if now > ticket.expires:
                verify(self._keys, decision.token, now=now)  # refused as expired, as said there
        else:
            token = decision.token if isinstance(decision, Decision) else decision
            ticket = verify(self._keys, token, now=now)
        live = self._get(ticket.experiment)
        spec = live.spec
        k = len(spec.alternatives)
        if ticket.arm >= k or len(ticket.propensity) != k:
            raise RewardError(f"token: does not match experiment {spec.name!r}'s arms")
        dim = live.dim
        if dim is not None and (ticket.context is None or len(ticket.context) != dim):
            raise RewardError(
                f"token: carries no context of {dim} numbers, which experiment "
                f"{spec.name!r}'s policy {spec.policy.name} learns from"
            )
        try:
            r = float(value)
        except (TypeError, ValueError):
            raise RewardError(f"reward: must be a number (got {value!r})") from None
        low, high = spec.reward_range
        if not (math.isfinite(r) and low <= r <= high):
            raise RewardError(
                f"reward: must be finite and in [{low}, {high}] (got {value!r}) for "
                f"experiment {spec.name!r}"
            )
        if now > ticket.issued + spec.join_window_s:
            live.late += 1
            raise RewardError(
                f"reward: late by {now - ticket.issued - spec.join_window_s:.0f} s (join "
                f"window {spec.join_window_s:.0f} s, decision {ticket.id}); counted, "
                "not applied"
            )
        return live, ticket, r

    def reward_each(
        self, items: Sequence[tuple[Decision | str, float]]
    ) -> list[bool | RewardError | UnknownExperimentError]:
        """Record many independent outcomes (each its own caller's): like
        :meth:`reward_many`, one store call per experiment, but each item is checked on
        its own: a bad one gets its error in its place (as :meth:`reward` would raise
        it) and the others are applied. A store failure raises for all of them."""
        return self._rewards(items, single=False, each=True)

    def _rewards(
        self, items: Sequence[tuple[Any, Any]], *, single: bool, each: bool = False
    ) -> list[Any]:
        now = self._clock()
        # _log_lock for the whole call (a decision's record is written before its
        # reward's); the state lock only while reading or changing the snapshot, never
        # across a store call, so decisions on the event loop do not wait for the store
        with self._log_lock:
            out: list[Any] = [False] * len(items)
            checked: dict[int, tuple[Live, Ticket, float]] = {}
            with self._lock:
                for n, (decision, value) in enumerate(items):
                    try:
                        checked[n] = self._check(decision, value, now)
                    except (RewardError, UnknownExperimentError) as e:
                        if each:
                            out[n] = e
                            continue
                        if single:
                            raise
                        raise type(e)(f"rewards[{n}]: {e.args[0]}") from None
            groups: dict[str, list[int]] = {}
            for n, (live, _, _) in checked.items():
                groups.setdefault(live.spec.name, []).append(n)
            for idx in groups.values():
                live = checked[idx[0]][0]
                self._write_log(live)  # decisions are logged before their rewards
                tickets = [checked[n][1] for n in idx]
                values = [checked[n][2] for n in idx]
                try:
                    applied = self._apply(live, tickets, values, now, source="reward")
                except StoreError as e:
                    self._down = e
                    raise
                for n, ok in zip(idx, applied, strict=True):
                    out[n] = ok
                live.since_refresh += len(idx) - 1
                self._tick(live)
            return out

    def _apply(
        self,
        live: Live,
        tickets: Sequence[Ticket],
        values: Sequence[float],
        now: float,
        *,
        source: str,
    ) -> list[bool]:
        """Apply rewards: each one's increments, once, with its log record."""
        with self._lock:  # against the snapshot; the store call below goes without it
            columns = increments(live, tickets, values)
        spec = live.spec
        rewards = [(t.id, t.arm, float(v)) for t, v in zip(tickets, values, strict=True)]
        lines = reward_lines(source, spec.name, now, rewards)
        batch: list[Item] = [
            (f"reward:{t.id}", columns.row(i), lines[i]) for i, t in enumerate(tickets)
        ]
        return self.store.add_many(spec.name, batch)

    def warm_up(self) -> None:
        """Compute (and throw away) one reward's increments per experiment, so compiled
        code is loaded before the first real reward rather than during it; nothing is
        written. The sidecar calls this before it reports ready."""
        with self._lock:
            for live in self._live.values():
                k = len(live.spec.alternatives)
                dim = live.spec.policy.context_dim
                x = None if dim is None else (0.0,) * dim
                ticket = Ticket("warm-up", live.spec.name, 0, (1.0 / k,) * k, 0.0, 1.0, x)
                increments(live, [ticket], [live.spec.reward_range[0]])

    def expire(self) -> int:
        """Apply the default reward to every decision whose join window closed without a
        reward, whichever replica made it and even if that replica crashed; the number
        applied here.

        The log is the source of truth: each experiment keeps a cursor (``expire_cursor``
        in the store) before which every decision is settled. This replica reads the log
        from there once and then only what was appended since its last call, keeping the
        decisions not yet rewarded (memory: those within their join window); the ones
        past their window get the default (once: the store refuses a second reward for a
        decision, so replicas running ``expire`` together never double it, and a reward
        that came meanwhile wins), and the cursor moves to the first decision still open.
        The reads and the store writes go without the engine's state lock, so decisions
        are not held up. Call it on a cadence (the proxy does).
        """
        now = self._clock()
        done = 0
        with self._expiring:  # one pass at a time in this replica
            for live in self._live.values():
                if live.spec.default_reward is not None:
                    done += self._expire(live, live.spec.default_reward, now)
        return done

    def _expire(self, live: Live, default: float, now: float) -> int:
        spec = live.spec
        with self._log_lock:
            self._write_log(live, quiet=True)  # this replica's own pending decisions count
        dim = spec.policy.context_dim
        cursor = int(self.store.get(spec.name, "expire_cursor") or 0)
        scan = self._scans.get(spec.name)
        if scan is None or cursor > scan.end:  # first pass, or others settled past it
            scan = self._scans[spec.name] = _Scan(cursor, cursor)
        elif cursor > scan.start:  # another replica settled up to there
            # (a cursor behind scan.start, from a replica's older pass, changes nothing:
            # this replica saw everything before scan.start settled)
            scan.open = {k: v for k, v in scan.open.items() if v[0] >= cursor}
            scan.start = cursor
        opened = scan.open
        while True:
            page = self.store.lines(spec.name, start=scan.end, limit=10_000)
            # every decision and reward passes here once: read by its head, the rest of
            # a decision's record parsed only if it falls due
            for pos, line in enumerate(page, scan.end):
                kind, decision_id, issued = outline(line)
                if kind == "decision":
                    opened[decision_id] = (pos, float(issued), line)
                elif kind == "reward":
                    opened.pop(decision_id, None)
            scan.end += len(page)
            if len(page) < 10_000:
                break
        due = []  # most decisions are rewarded before their window closes
        for decision_id, (_, issued, line) in scan.open.items():
            if now > issued + spec.join_window_s:
                record = json.loads(line)
                due.append(
                    Ticket(
                        decision_id,
                        spec.name,
                        int(record["arm"]),
                        tuple(float(x) for x in record["allocation"]),
                        issued,
                        issued + spec.token_ttl_s,
                        None if dim is None else tuple(record.get("context")),
                    )
                )
        done = 0
        for start in range(0, len(due), 1_000):
            chunk = due[start : start + 1_000]
            done += sum(self._apply(live, chunk, [default] * len(chunk), now, source="default"))
            for t in chunk:
                del scan.open[t.id]
        scan.start = min((pos for pos, _, _ in scan.open.values()), default=scan.end)
        self.store.set(spec.name, "expire_cursor", str(scan.start))
        if done:
            self._tick(live)
        return done

    # --- the log ------------------------------------------------------------------------

    def _write_log(self, live: Live, *, quiet: bool = False) -> None:
        """Write pending decisions (one store write); the caller holds ``_log_lock``, and
        ``_lock`` is held only to take the group (unless the caller holds it too).
        ``quiet``: on a store failure put them back for the next try and count it,
        instead of raising."""
        with self._lock:
            batch = live.buffer
            if not batch:
                return
            live.buffer = []
        try:
            self.store.append(live.spec.name, batch)
        except BaseException as e:
            with self._lock:
                live.buffer[:0] = batch  # before anything decided meanwhile: order kept
                if isinstance(e, StoreError):
                    self.log_errors += 1
                    self._down = e
            if quiet and isinstance(e, StoreError):
                return
            raise
        self._down = None

    def _try_flush(self, live: Live) -> None:
        """Write pending decisions unless another thread is writing the log (then they
        go with its next group); safe while holding ``_lock``."""
        if self._log_lock.acquire(blocking=False):
            try:
                self._write_log(live, quiet=True)
            finally:
                self._log_lock.release()

    def _probe(self) -> None:
        """While the store is down, try it (the background writer calls this)."""
        if self._down is not None:
            self.check_store()

    def check_store(self) -> tuple[bool, str | None]:
        """Ask the store now: ``(True, None)`` if it answers, else ``(False, why)`` (and
        decisions are refused until it answers again)."""
        with self._lock:
            self._probed = time.monotonic()
            try:
                for name in self._live:
                    self.store.get(name, "status")
            except StoreError as e:
                self._down = e
                return False, str(e)
            self._down = None
            return True, None

    def flush(self) -> None:
        """Write every pending decision to the log now."""
        with self._log_lock:
            for live in self._live.values():
                self._write_log(live)

    def close(self) -> None:
        """Stop the background writer and write what is pending (the store stays open)."""
        self._stop.set()
        self._wake.set()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        self.flush()

    # --- inspection ---------------------------------------------------------------------

    def refresh(self, name: str | None = None) -> None:
        """Refresh now (one experiment, or all)."""
        with self._lock:
            for live in [self._get(name)] if name else list(self._live.values()):
                self._refresh(live)

    def status(self, name: str) -> dict[str, Any]:
        """The experiment's allocation, lifecycle and counters as this replica sees them."""
        with self._lock:
            live = self._get(name)
            state = live.policy_state
            return {
                "experiment": name,
                "alternatives": list(live.names),
                "params": [dict(p) for p in live.params],
                "allocation": live.allocation.tolist(),
                "status": [STATUS[s] for s in live.status[0]],
                "version": live.version,
                "late_rewards": live.late,
                "unlogged": len(live.buffer),
                "store_ok": self._down is None,
                "store_error": None if self._down is None else str(self._down),
                "paused": live.paused,
                "epoch": live.epoch,
                "drift": drift_status(live),
                "model_version": None if live.reader is None else live.reader.version,
                "budget": budget_of(live.spec.policy, state),
                "state": {k: np.asarray(v).tolist() for k, v in state.to_dict().items()},
            }

    @property
    def experiments(self) -> list[str]:
        return sorted(self._live)
