"""The learner process: explore, log, learn, deploy, for models that are not additive.

Vowpal Wabbit and river models (:class:`policies.VWExplore`, :class:`policies.RiverThompson`)
learn from observations in order, so one process trains them: :class:`Learner` reads an
experiment's decision log from a cursor, joins each reward to its decision (context, arm,
logged allocation), trains the policy in log order (``policy.update``), and every
``publish_every`` rewards *proposes* the trained model as a snapshot (a candidate).

A candidate is deployed only through a :class:`policies.gate.Gate`: an anytime-valid lower
confidence sequence on ``V(candidate) - V(current)``, computed on the rows whose rewards
arrive *after* the candidate was proposed (progressive validation: rows it was not trained
on, which is what makes the sequence valid). ``current`` is the deployed model, or, before
any, the logging policy itself (its logged allocations). The gate is checked after every
row; a candidate that is not yet shown at least as good stays pending and is re-evaluated
as data grows (at most ``max_pending`` at once; the oldest is dropped). Test ``j`` (in the
order tests start) gets the error ``alpha 6 / (pi^2 j^2)``
(:func:`policies.gate.alpha_spent`): over the learner's whole life, the probability of
ever deploying a model worse than the one it replaces is at most the gate's ``alpha``.
When a candidate is deployed, older candidates are discarded and newer ones start a new
test against it.

What it keeps in the experiment's store (meta keys, small strings):

``model:{version}``
    A deployed snapshot, base64 of ``policy.to_bytes``; never rewritten with other bytes.
``model_version``
    The newest deployed version, written *after* its bytes, so a reader that sees a version
    always finds its snapshot (:class:`autoexp.model.ModelReader`).
``candidate:{id}``
    A proposed snapshot (blanked once no checkpoint needs it).
``learner``
    The checkpoint: cursor, training model, pending tests, counters (one JSON value,
    written atomically), so a restarted learner resumes exactly where it was and reaches
    the same deployments.

Every gate decision is a log record ``{"type": "model", "event": ...}`` ("proposed",
"pending" with its bound at each later proposal, "deployed", "dropped", "superseded"),
added with ``once`` so a restarted learner never logs one twice; :func:`learner_status`
reads them for a status page.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from policies.base import Decision as PolicyDecision
from policies.gate import Gate, GateStats, alpha_spent

from .errors import ConfigError, StateError, StoreError, UnknownExperimentError
from .store.base import Store, redacted

__all__ = ["Learner", "is_learner", "learner_status"]

log = logging.getLogger("autoexp.learn")

CHECKPOINT = "learner"
_FORMAT = 1
_PAGE = 10_000


def is_learner(policy: Any) -> bool:
    """Whether ``policy`` trains in order and snapshots (``update``, ``to_bytes``,
    ``from_bytes``) rather than adding increments."""
    return (
        not getattr(policy, "additive", True)
        and all(callable(getattr(policy, m, None)) for m in ("update", "to_bytes", "from_bytes"))
        and getattr(policy, "context_dim", None) is not None
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass
class _Open:
    """A logged decision waiting for its reward."""

    position: int
    time: float
    context: list[float]
    arm: int
    allocation: list[float]


@dataclass
class _Candidate:
    """A proposed snapshot under test against the current model."""

    id: int
    trained_on: int
    test: int
    gate: Gate
    stats: GateStats
    model: Any


class Learner:
    """Train a contextual learner on an experiment's decision log; deploy through a gate.

    Parameters
    ----------
    store : the experiment's store (the engine's)
    experiment : its name
    policy : a learner (``vw-cb``, ``river-ts``) with the experiment's arm count in mind
    gate : the deployment gate (default ``Gate(low=policy.low, high=policy.high)``); its
        reward range must be the policy's
    publish_every : rewards between proposals (>= 1)
    max_pending : candidates under test at once (>= 1)
    join_window_s : decisions older than this (log time, against the newest reward seen)
        without a reward are forgotten; ``None``: kept until rewarded
    clock : seconds since the epoch (for the records' ``learner_time``)

    Raises
    ------
    UnknownExperimentError
        If the store holds nothing of ``experiment``.
    ConfigError
        If ``policy`` is not a learner or its parameters do not fit the experiment.
    """

    def __init__(
        self,
        store: Store,
        experiment: str,
        policy: Any,
        *,
        gate: Gate | None = None,
        publish_every: int = 1_000,
        max_pending: int = 3,
        join_window_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not is_learner(policy):
            raise ConfigError(
                f"learner.policy: {getattr(policy, 'name', type(policy).__name__)!r} is not "
                "a learner (it adds increments, served by the engine itself); accepted: "
                "vw-cb, river-ts"
            )
        if not (isinstance(publish_every, int) and publish_every >= 1):
            raise ConfigError(
                f"learner.publish_every: must be an integer >= 1 (got {publish_every!r})"
            )
        if not (isinstance(max_pending, int) and max_pending >= 1):
            raise ConfigError(f"learner.max_pending: must be an integer >= 1 (got {max_pending!r})")
        if join_window_s is not None and not join_window_s > 0:
            raise ConfigError(f"learner.join_window_s: must be > 0 (got {join_window_s!r})")
        gate = gate if gate is not None else Gate(low=policy.low, high=policy.high)
        if (gate.low, gate.high) != (policy.low, policy.high):
            raise ConfigError(
                f"learner.gate: reward range ({gate.low}, {gate.high}) differs from the "
                f"policy's ({policy.low}, {policy.high})"
            )
        self.store = store
        self.experiment = experiment
        self.policy = policy
        self.gate = gate
        self.publish_every = publish_every
        self.max_pending = max_pending
        self.join_window_s = join_window_s
        self._clock = clock
        state = store.read(experiment)
        raw = store.get(experiment, "alternatives")
        if not state or raw is None:
            raise UnknownExperimentError(
                f"experiment {experiment!r} is not in the store {redacted(store.url)!r}; "
                f"found: {store.experiments()}"
            )
        # this process's handle learns the state's shapes (logging a record checks them)
        store.declare(experiment, {k: tuple(np.shape(v)) for k, v in state.items()})
        self.alternatives: list[str] = json.loads(raw)
        self.n_arms = len(self.alternatives)
        # what the checkpoint holds
        self.position = 0
        self.n_rewards = 0
        self.n_proposed = 0
        self.n_tests = 0
        self.n_unjoined = 0
        self.deployed = 0
        self.log_time = -math.inf  # the newest reward_time seen
        self.model = policy.init(self.n_arms)
        self.current: Any = None  # the deployed model's state
        self.candidates: list[_Candidate] = []
        self._open: dict[str, _Open] = {}
        self._dirty = False
        self._retired: list[int] = []
        self._restore()

    # --- checkpoint -----------------------------------------------------------------

    def _restore(self) -> None:
        raw = self.store.get(self.experiment, CHECKPOINT)
        if not raw:
            return
        cp = json.loads(raw)
        if cp.get("format") != _FORMAT or cp.get("policy") != self.policy.name:
            raise StateError(
                f"learner: checkpoint of {self.experiment!r} was written for "
                f"{cp.get('policy')!r} (format {cp.get('format')!r}); this learner runs "
                f"{self.policy.name!r}"
            )
        self.position = cp["position"]
        self.n_rewards = cp["n_rewards"]
        self.n_proposed = cp["n_proposed"]
        self.n_tests = cp["n_tests"]
        self.n_unjoined = cp["n_unjoined"]
        self.log_time = cp["log_time"] if cp["log_time"] is not None else -math.inf
        self.model = self.policy.from_bytes(base64.b64decode(cp["model"]))
        self.deployed = cp["deployed"]
        if self.deployed:
            self.current = self._load(f"model:{self.deployed}")
        for c in cp["candidates"]:
            gate = dataclasses.replace(self.gate, alpha=c["alpha"])
            stats = GateStats(
                *(np.array(c["stats"][f.name]) for f in dataclasses.fields(GateStats))
            )
            model = self._load(f"candidate:{c['id']}")
            self.candidates.append(
                _Candidate(c["id"], c["trained_on"], c["test"], gate, stats, model)
            )
        # the decisions still open at the checkpoint: rescan from the oldest of them
        start = cp["scan_from"]
        while start < self.position:
            page = self.store.records(
                self.experiment, start=start, limit=min(_PAGE, self.position - start)
            )
            if not page:
                break
            for i, record in enumerate(page):
                self._see(start + i, record, train=False)
            start += len(page)
        self._prune()

    def _load(self, key: str) -> Any:
        data = self.store.get(self.experiment, key)
        if not data:
            raise StateError(f"learner: {self.experiment!r} has no snapshot {key!r}")
        return self.policy.from_bytes(base64.b64decode(data))

    def checkpoint(self) -> None:
        """Write the learner's whole state (one store value); called after each proposal
        and at the end of :meth:`step`."""
        cp = {
            "format": _FORMAT,
            "policy": self.policy.name,
            "position": self.position,
            "scan_from": min((o.position for o in self._open.values()), default=self.position),
            "n_rewards": self.n_rewards,
            "n_proposed": self.n_proposed,
            "n_tests": self.n_tests,
            "n_unjoined": self.n_unjoined,
            "log_time": self.log_time if math.isfinite(self.log_time) else None,
            "deployed": self.deployed,
            "model": _b64(self.policy.to_bytes(self.model)),
            "candidates": [
                {
                    "id": c.id,
                    "trained_on": c.trained_on,
                    "test": c.test,
                    "alpha": c.gate.alpha,
                    "stats": {k: v.tolist() for k, v in c.stats.to_dict().items()},
                }
                for c in self.candidates
            ],
        }
        self.store.set(self.experiment, CHECKPOINT, json.dumps(cp))
        self._dirty = False
        # snapshots of candidates this checkpoint no longer needs (an older one might,
        # should the process die before this point: so only now)
        for cid in self._retired:
            self.store.set(self.experiment, f"candidate:{cid}", "")
        self._retired = []

    # --- reading the log ----------------------------------------------------------------

    def step(self, *, max_records: int | None = None) -> int:
        """Process what the log holds past the cursor (at most ``max_records`` records);
        the number of rewards learned from. Checkpoints at the end."""
        done = 0
        seen = 0
        while max_records is None or seen < max_records:
            limit = _PAGE if max_records is None else min(_PAGE, max_records - seen)
            page = self.store.records(self.experiment, start=self.position, limit=limit)
            for record in page:
                self.position += 1  # first: a checkpoint taken inside is past this record
                self._dirty = True
                done += self._see(self.position - 1, record, train=True)
            seen += len(page)
            if len(page) < limit:
                break
        if self._dirty:
            self._prune()
            self.checkpoint()
        return done

    def _see(self, position: int, record: dict[str, Any], *, train: bool) -> int:
        kind = record.get("type")
        if kind == "decision":
            context = record.get("context")
            if context is None:
                raise ConfigError(
                    f"learner: experiment {self.experiment!r} logs decisions without a "
                    "context; a learner needs the context each decision was made at "
                    f"([experiments.{self.experiment}.context])"
                )
            if len(context) != self.policy.dim:
                raise ConfigError(
                    f"learner.policy.dim: the log's contexts have {len(context)} numbers "
                    f"(got dim={self.policy.dim})"
                )
            self._open[record["decision_id"]] = _Open(
                position,
                float(record["time"]),
                context,
                int(record["arm"]),
                [float(p) for p in record["allocation"]],
            )
            return 0
        if kind != "reward":
            return 0
        opened = self._open.pop(record["decision_id"], None)
        if not train:
            return 0
        self.log_time = max(self.log_time, float(record.get("reward_time") or -math.inf))
        if opened is None:  # before the learner's first position, or forgotten
            self.n_unjoined += 1
            return 0
        self._learn(opened, float(record["reward"]))
        return 1

    def _prune(self) -> None:
        if self.join_window_s is None or not math.isfinite(self.log_time):
            return
        horizon = self.log_time - self.join_window_s
        for key in [k for k, o in self._open.items() if o.time < horizon]:
            del self._open[key]

    # --- learning and the gate ----------------------------------------------------------

    def _allocation(self, stats: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.policy.allocation(stats, x)[0], dtype=np.float64)

    def _learn(self, row: _Open, reward: float) -> None:
        x = np.array([row.context], dtype=np.float64)
        alloc = np.array(row.allocation, dtype=np.float64)
        deployed = self._evaluate(row, x, alloc, reward) if self.candidates else False
        decision = PolicyDecision(np.array([row.arm]), alloc[None, :])
        self.policy.update(self.model, decision, np.array([reward]), x)
        self.n_rewards += 1
        proposed = self.n_rewards % self.publish_every == 0
        if proposed:
            self._propose()
        if deployed or proposed:  # the row fully applied: a restart resumes after it
            self.checkpoint()

    def _evaluate(self, row: _Open, x: np.ndarray, alloc: np.ndarray, reward: float) -> bool:
        """Feed the row to every pending candidate's gate; whether one was deployed."""
        current = alloc if self.current is None else self._allocation(self.current, x)
        arm = np.array([[row.arm]])
        r = np.array([[reward]])
        p = np.array([[alloc[row.arm]]])
        for c in self.candidates:
            new = self._allocation(c.model, x)
            c.stats = c.gate.update(c.stats, arm, r, p, new[None, None], current[None, None])
            if c.gate.decide(c.stats)[0]:
                self._deploy(c)
                return True  # the current model changed: the others start again next row
        return False

    def _evidence(self, c: _Candidate) -> dict[str, Any]:
        ev = c.gate.evaluate(c.stats)
        lower = float(ev.lower[0])
        return {
            "candidate": c.id,
            "trained_on": c.trained_on,
            "test": c.test,
            "alpha": c.gate.alpha,
            "margin": c.gate.margin,
            "evaluated_on": int(ev.n[0]),
            "estimate": float(ev.estimate[0]),
            "lower": lower if math.isfinite(lower) else None,
            "valid": bool(ev.valid[0]),
        }

    def _record(self, event: str, once: str, fields: dict[str, Any]) -> None:
        record = {
            "type": "model",
            "event": event,
            "experiment": self.experiment,
            "policy": self.policy.name,
            "deployed": self.deployed,
            "rewards": self.n_rewards,
            "log_time": self.log_time if math.isfinite(self.log_time) else None,
            "learner_time": self._clock(),
            **fields,
        }
        self.store.add(self.experiment, {}, once=f"learner:{once}", record=record)
        log.info("%s: %s %s", self.experiment, event, json.dumps(fields))

    def _start_test(self, c: _Candidate) -> None:
        self.n_tests += 1
        c.test = self.n_tests
        c.gate = dataclasses.replace(self.gate, alpha=alpha_spent(self.gate.alpha, self.n_tests))
        c.stats = c.gate.init()

    def _propose(self) -> None:
        for c in self.candidates:  # the bounds so far of those still waiting
            self._record("pending", f"pending:{c.id}:{self.n_rewards}", self._evidence(c))
        data = self.policy.to_bytes(self.model)
        self.n_proposed += 1
        cid = self.n_proposed
        self.store.set(self.experiment, f"candidate:{cid}", _b64(data))
        c = _Candidate(
            cid, self.n_rewards, 0, self.gate, self.gate.init(), self.policy.from_bytes(data)
        )
        self._start_test(c)
        self.candidates.append(c)
        self._record("proposed", f"proposed:{cid}", self._evidence(c))
        while len(self.candidates) > self.max_pending:
            old = self.candidates.pop(0)
            self._record("dropped", f"dropped:{old.id}", self._evidence(old))
            self._retired.append(old.id)

    def _deploy(self, c: _Candidate) -> None:
        version = self.deployed + 1
        evidence = self._evidence(c)
        data = self.store.get(self.experiment, f"candidate:{c.id}")
        if not data:
            raise StateError(f"learner: candidate {c.id} of {self.experiment!r} lost its snapshot")
        # the bytes first, the version last: a reader never sees a version without them
        self.store.set(self.experiment, f"model:{version}", data)
        self.store.set(self.experiment, "model_version", str(version))
        self.deployed = version
        self.current = c.model
        self._record("deployed", f"deployed:{c.id}", {**evidence, "version": version})
        keep = []
        for other in self.candidates:
            if other.id < c.id:
                self._record("superseded", f"superseded:{other.id}", self._evidence(other))
                self._retired.append(other.id)
            elif other.id > c.id:
                self._start_test(other)
                keep.append(other)
        self._retired.append(c.id)
        self.candidates = keep

    # --- running --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What a status page shows: cursor, counts, deployed version, pending bounds."""
        return {
            "experiment": self.experiment,
            "policy": self.policy.name,
            "position": self.position,
            "rewards": self.n_rewards,
            "unjoined": self.n_unjoined,
            "open_decisions": len(self._open),
            "proposed": self.n_proposed,
            "deployed": self.deployed,
            "pending": [self._evidence(c) for c in self.candidates],
        }

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        poll_s: float = 1.0,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Process the log as it grows until ``stop`` is set (or interrupted); a store
        that fails is retried at the next poll. ``progress`` gets :meth:`status` after
        every pass that learned something."""
        number = isinstance(poll_s, int | float) and not isinstance(poll_s, bool)
        if not (number and math.isfinite(poll_s) and poll_s > 0):  # else: a busy loop
            raise ConfigError(f"poll_s: must be finite seconds > 0 (got {poll_s!r})")
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                n = self.step()
            except StoreError as e:
                log.warning("%s: store failed (%s); retrying in %.1f s", self.experiment, e, poll_s)
                n = 0
            if n and progress is not None:
                progress(self.status())
            if not n:
                stop.wait(poll_s)


def learner_status(store: Store, experiment: str, *, last: int = 20) -> dict[str, Any]:
    """A status page's view of an experiment's learner, from the store alone: the deployed
    version, the checkpoint's counters, and the last ``last`` model records."""
    raw = store.get(experiment, CHECKPOINT)
    cp = json.loads(raw) if raw else {}
    records = []
    start = 0
    while True:
        page = store.records(experiment, start=start, limit=_PAGE)
        records += [r for r in page if r.get("type") == "model"]
        records = records[-last:]
        start += len(page)
        if len(page) < _PAGE:
            break
    return {
        "experiment": experiment,
        "model_version": int(store.get(experiment, "model_version") or 0),
        "position": cp.get("position", 0),
        "rewards": cp.get("n_rewards", 0),
        "proposed": cp.get("n_proposed", 0),
        "pending": [c["id"] for c in cp.get("candidates", [])],
        "records": records,
    }
