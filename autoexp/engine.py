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

The engine is one class in several modules, one per concept: the decisions
(:mod:`autoexp.deciding`, with the ids and drafts of :mod:`autoexp.draws` and the sticky
units of :mod:`autoexp.units`), an experiment's start and refreshes, and the start of
those waiting for their store (:mod:`autoexp.startup`), the expiry of decisions never
rewarded (:mod:`autoexp.expiry`), and here the engine's setup, rewards, the log and
inspection.
"""

from __future__ import annotations

import atexit
import math
import numbers
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from policies.promotion import STATUS

from .deciding import Deciding
from .draws import Ids
from .errors import ConfigError, RewardError, StoreError, UnknownExperimentError
from .experiment import Decision, ExperimentSpec, Live, budget_of
from .expiry import Scans
from .lifecycle import changes_of, evidence_of, history_of, operator_change, shared_history
from .records import reward_lines
from .startup import Startup
from .state import increments
from .store.base import Item, Store
from .tokens import Ticket, keys_from, verify
from .units import Units
from .watch import drift_status

__all__ = ["Decision", "Engine", "ExperimentSpec"]


def _flush_loop(ref: Any, stop: threading.Event, wake: threading.Event, every_s: float) -> None:
    """The background writer: pending decisions to the log every ``every_s``, or at once
    when a group fills (``wake``), the refreshes ``decide`` asked for, and those of a
    snapshot older than its ``refresh_s`` (a quiet replica's). It holds the
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
                    elif engine._down is None and engine._aged(live):
                        engine._refresh_now(live, aged=True)
                engine._probe()
                if engine._waiting and engine._down is None:  # the store answers again
                    engine._start_waiting()
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


class Engine(Startup, Deciding):
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
    defer_start : an experiment whose store does not answer as the engine starts is
        started later instead of refusing the engine (:class:`~autoexp.errors.StoreError`):
        it is listed in :attr:`waiting`, deciding it or rewarding it raises ``StoreError``
        (serve control), and the background writer starts it once the store answers
        (the sidecar's choice: it forwards to control meanwhile, where a refusal would
        leave it down for as long as the store is). A store that answers and refuses the
        experiment (its stored state has other shapes) still refuses the engine at the
        start; found later, the experiment stays waiting with the reason
        (:meth:`not_started`), logged and tried again every ``REFUSED_RETRY_S``. Needs
        ``log_flush_s > 0``.
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
        defer_start: bool = False,
    ) -> None:
        if not isinstance(log_batch, int) or log_batch < 1:
            raise ConfigError(f"log_batch: must be an integer >= 1 (got {log_batch!r})")
        if isinstance(unit_cache, bool) or not isinstance(unit_cache, int) or unit_cache < 0:
            raise ConfigError(f"unit_cache: must be an integer >= 0 (got {unit_cache!r})")
        if not log_flush_s >= 0:
            raise ConfigError(f"log_flush_s: must be >= 0 (got {log_flush_s!r})")
        if defer_start and not log_flush_s > 0:
            raise ConfigError("defer_start: needs the background writer (log_flush_s > 0)")
        self.store = store
        self._log_batch = log_batch
        self.log_errors = 0
        self._down: StoreError | None = None  # the last store failure, until it recovers
        self._probed = 0.0
        self._keys = keys_from(secret)
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0
        ):
            raise ConfigError(f"seed: must be an integer >= 0 or None (got {seed!r:.60})")
        self._seq = np.random.SeedSequence(seed)
        self._seed = int(self._seq.entropy) if isinstance(self._seq.entropy, int) else None
        self._rng = np.random.default_rng(self._seq)
        self._uniforms: list[float] = []  # self._rng's next draws, the next one last
        self._ids = Ids()
        self._clock = clock
        # Lock order: _log_lock (log writes, in order) before _lock (engine state); code
        # holding only _lock may try _log_lock but never wait for it.
        self._lock = threading.RLock()
        self._log_lock = threading.RLock()
        self._wake = threading.Event()
        self._expiring = threading.Lock()
        self._scans = Scans()  # expire's reading of each experiment's log
        self._holder_tag = secrets.token_hex(4)  # names this engine as a lease holder
        self._units = Units(store, self._lock, unit_cache)
        # Both replaced whole, never changed in place, once the engine runs: decisions on
        # an event loop read them while the writer starts a waiting experiment
        self._live: dict[str, Live] = {}
        self._waiting: dict[str, ExperimentSpec] = {}  # not started yet (defer_start)
        # of those, refused although the store answered: why, and when to try again
        self._refused: dict[str, tuple[str, float]] = {}
        for spec in experiments:
            if spec.name in self._live or spec.name in self._waiting:
                raise ConfigError(f"experiments.{spec.name}: defined twice")
            if self._waiting:  # the store did not answer for the last one: not again
                self._waiting[spec.name] = spec
                continue
            try:
                self._live[spec.name] = self._start(spec)
            except StoreError as e:
                # deferred only if the store does not answer: one that answers refused
                # the experiment (its stored state has other shapes), as without it
                if not defer_start or self._answers(spec.name):
                    raise
                self._waiting[spec.name] = spec
                self._down = e
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

    def _get(self, name: str) -> Live:
        try:
            return self._live[name]
        except KeyError:
            pass
        if name in self._waiting:
            raise StoreError(f"experiment {name!r}: not started yet, {self._why_waiting(name)}")
        live = self._live.get(name)  # started between the two looks
        if live is None:
            raise UnknownExperimentError(
                f"experiment {name!r} is not defined; defined: "
                f"{sorted([*self._live, *self._waiting])}"
            )
        return live

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
        """The allocations and states over time, oldest first: ``time``, ``version``,
        ``allocation``, ``status``, ``paused``. Read from the store, so that it holds
        every replica's points since the experiment began (restarts included; at most
        :data:`~autoexp.experiment.HISTORY_SAVED`, the older ones thinned), with this
        replica's own refreshes (at most :data:`HISTORY`); those alone while the store
        fails."""
        live = self._get(name)
        try:
            return shared_history(self.store, live)
        except StoreError:
            with self._lock:
                return history_of(live)

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

    def _aged(self, live: Live) -> bool:
        """Whether the snapshot is ``refresh_s`` old; if so, its time is reset first, so a
        refresh that fails is tried again ``refresh_s`` later, not at every pass."""
        every = live.spec.refresh_s
        now = time.monotonic()
        if not every or now - live.refreshed_at < every:
            return False
        live.refreshed_at = now
        return True

    def _refresh_now(self, live: Live, *, aged: bool = False) -> None:
        if not aged and live.since_refresh < live.spec.refresh_every:
            return  # refreshed meanwhile (by a reward)
        try:
            self._refresh(live)
        except StoreError as e:  # keep serving this snapshot's decisions; say so
            self._down = e

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
            raise RewardError(f"reward: must be a number (got {value!r:.60})") from None
        except OverflowError:  # an integer too large for a float
            r = math.inf
        low, high = spec.reward_range
        if not (math.isfinite(r) and low <= r <= high):
            raise RewardError(
                f"reward: must be finite and in [{low}, {high}] (got {value!r:.60}) for "
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

    def expire(self, *, hold_s: float | None = None) -> int:
        """Apply the default reward to every decision whose join window closed without a
        reward, whichever replica made it and even if that replica crashed; the number
        applied here.

        ``hold_s``: do it only for the experiments whose lease (:meth:`Store.hold
        <autoexp.store.base.Store.hold>`) this replica holds, taking or renewing each for
        ``hold_s`` seconds; replicas that call it on a cadence shorter than ``hold_s``
        then leave the reading of the whole log to one of them, instead of each reading it
        all, and another takes over at its next pass after the holder's :meth:`close`,
        or within ``hold_s`` of a holder that stopped without it (a crash). The proxy
        passes three times its cadence. ``None``: every experiment, held or not (a manual
        pass). The lease saves work only: correctness does not rest on it, since the store
        applies a decision's reward at most once whoever applies it (a holder stalled past
        its lease and its successor may run a pass together, and double nothing).

        The decisions due are read from the log (:mod:`autoexp.expiry`: from the
        experiment's cursor once, then only what was appended since the last pass); they
        get the default once (the store refuses a second reward for a decision, so
        replicas running ``expire`` together never double it, and a reward that came
        meanwhile wins), and the cursor moves to the first decision still open. The reads
        and the store writes go without the engine's state lock, so decisions are not
        held up. Call it on a cadence (the proxy does).
        """
        if hold_s is not None and (
            isinstance(hold_s, bool)
            or not isinstance(hold_s, numbers.Real)
            or not 0.001 <= hold_s <= 86_400
        ):
            raise ConfigError(f"hold_s: must be seconds in [0.001, 86400] or None (got {hold_s!r})")
        now = self._clock()
        done = 0
        with self._expiring:  # one pass at a time in this replica
            for live in self._live.values():
                if live.spec.default_reward is not None:
                    done += self._expire(live, live.spec.default_reward, now, hold_s)
        return done

    def _expire(self, live: Live, default: float, now: float, hold_s: float | None) -> int:
        name = live.spec.name
        with self._log_lock:
            self._write_log(live, quiet=True)  # this replica's own pending decisions count
        if hold_s is not None:
            live.expire_held = self.store.hold(name, "expire", self._holder(), float(hold_s))
            if not live.expire_held:
                return 0  # another replica reads the log and applies the defaults
        due = self._scans.due(self.store, live.spec, now)
        done = 0
        for start in range(0, len(due), 1_000):
            chunk = due[start : start + 1_000]
            done += sum(self._apply(live, chunk, [default] * len(chunk), now, source="default"))
            self._scans.settled(name, chunk)
        self._scans.save(self.store, name)
        if done:
            live.defaults += done
            self._tick(live)
        return done

    def _holder(self) -> str:
        """This engine's name as a lease holder (pid: workers forked from one parent hold
        apart; host: containers are all pid 1)."""
        return f"{socket.gethostname()}:{os.getpid()}:{self._holder_tag}"

    def _release(self) -> None:
        """Give up the expiry leases this engine holds, so another replica takes over at
        its next pass rather than when the lease runs out; a store that cannot be reached
        now only delays that (the lease runs out on its own)."""
        with self._expiring:  # not in the middle of a pass
            for live in self._live.values():
                if live.expire_held:
                    live.expire_held = False
                    try:
                        self.store.release(live.spec.name, "expire", self._holder())
                    except StoreError as e:
                        self._down = e

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
                for name in [*self._live, *self._waiting]:
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
        """Stop the background writer, write what is pending and give up the expiry
        leases this engine holds (see :meth:`expire`); the store stays open."""
        self._stop.set()
        self._wake.set()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        self.flush()
        self._release()

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
                "defaults_applied": live.defaults,
                "expire_held": live.expire_held,
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
        """The experiments started (all of them, unless some wait: :attr:`waiting`)."""
        return sorted(self._live)

    @property
    def store_ok(self) -> bool:
        """False since a store call failed, until the store answers again (the
        background writer asks it every ``log_flush_s`` meanwhile)."""
        return self._down is None
