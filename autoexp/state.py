"""A replica's snapshot of one experiment: installing it from the store's answers (the
allocation each decision draws from), and each reward's increments computed against it.

Both are pure but for the store call of the promotion rule's look; the engine holds its
lock around them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from policies.base import Decision as PolicyDecision
from policies.promotion import STATUS
from policies.safety import restricted_allocation

from .experiment import ExperimentSpec, Live, part, served
from .generate import generated_allocation, generation_active
from .lifecycle import look
from .records import float_text, floats_json
from .store.base import Columns, Store
from .tokens import Ticket

__all__ = ["blank_context", "increments", "install"]


def install(
    store: Store,
    live: Live,
    data: dict[str, Any],
    raw: str | None,
    paused: bool,
    clock: Callable[[], float],
) -> None:
    """A refresh's new snapshot from the store's answers (``data``: the state; ``raw``:
    the status; ``paused``); the promotion rule looks; the allocation is recomputed. The
    caller holds the engine's lock."""
    spec = live.spec
    if live.baseline:  # this epoch's evidence only: additive state minus the snapshot
        data = {k: v - live.baseline[k] if k in live.baseline else v for k, v in data.items()}
    live.policy_state = spec.policy.state_from_dict(part("policy", data))
    if spec.test is not None:
        live.test_state = spec.test.state_from_dict(part("test", data))
    live.guard_states = [
        g.test.state_from_dict(part(f"guard.{i}", data)) for i, g in enumerate(spec.guardrails)
    ]
    k = len(spec.alternatives)
    status = np.zeros((1, k), dtype=np.int8)
    if raw is not None:
        status[0] = [STATUS.index(s) for s in json.loads(raw)]
    if live.rule is not None and spec.test is not None:
        status = look(store, live, live.rule, status, clock())
    live.status = status
    live.paused = paused
    if spec.generate is not None:  # only the candidates in play draw a share
        alloc = restricted_allocation(
            spec.policy, live.policy_state, generation_active(live, status[0])
        )[0]
    elif spec.policy.context_dim is None:
        alloc = spec.policy.allocation(live.policy_state)[0]
    elif live.served_sum is not None and live.served_n:
        # a contextual policy has one allocation per context: show the mean served
        alloc = live.served_sum / live.served_n
    else:  # none served yet: the allocation at the context with every feature missing
        alloc = spec.policy.allocation(live.policy_state, blank_context(spec, clock()))[0]
    live.served_sum = None
    live.served_n = 0
    if spec.generate is not None:  # the candidates now in the slots, and their caps
        alloc = generated_allocation(live, alloc)
    live.allocation = served(alloc, status, paused)
    live.row = tuple(float(x) for x in live.allocation)
    live.row_json = floats_json(live.row)
    live.row_texts = tuple(map(float_text, live.row))
    live.cumulative = np.cumsum(live.allocation).tolist()
    live.version += 1
    live.since_refresh = 0
    live.refreshed_at = time.monotonic()
    live.history.append(
        (
            clock(),
            live.version,
            list(live.row),
            [STATUS[s] for s in status[0]],
            live.paused,
        )
    )


def blank_context(spec: ExperimentSpec, now: float) -> np.ndarray:
    """(1, dim): the context with every feature missing (zeros without a spec)."""
    if spec.context is not None:
        return np.array([spec.context.encode({}, now=now)])
    return np.zeros((1, spec.policy.context_dim or 0))


def increments(live: Live, tickets: Sequence[Ticket], values: Sequence[float]) -> Columns:
    """Each reward's increments against the snapshot: row ``i`` of each field's
    ``(n, size)`` array is reward ``i``'s (its entries: ``.row(i)``)."""
    spec = live.spec
    k = len(spec.alternatives)
    n = len(tickets)
    arm = np.array([t.arm for t in tickets], dtype=np.int64)
    prop = np.array([t.propensity for t in tickets])
    reward = np.asarray(values, dtype=np.float64)
    fields: dict[str, np.ndarray] = {}
    contextual = live.dim is not None
    sparse = (
        None
        if contextual
        else spec.policy.sparse_increment(arm, reward, prop[np.arange(n), arm], k)
    )
    if sparse is not None:  # amounts at [0, arm] of each (1, K) field
        for name, amount in sparse.items():
            flat = np.zeros((n, k))
            flat[np.arange(n), arm] = amount
            fields[f"policy.{name}"] = flat
    else:
        for i in range(n):
            one = PolicyDecision(arm[i : i + 1], prop[i : i + 1])
            x = np.array([tickets[i].context]) if contextual else None
            inc = spec.policy.increment(one, reward[i : i + 1], x).to_dict()
            for name, array in inc.items():
                row = np.asarray(array, dtype=np.float64).reshape(-1)
                if f"policy.{name}" not in fields:
                    fields[f"policy.{name}"] = np.zeros((n, row.size))
                fields[f"policy.{name}"][i] = row
    # the tests' increments, one row per reward, against the same snapshot
    rows = np.zeros(n, dtype=np.int64)
    parts = []
    if spec.test is not None:
        inc = spec.test.increment(live.test_state.rows(rows), arm[:, None], reward[:, None], prop)
        parts.append(("test", inc.to_dict()))
    for g, (guard, state) in enumerate(zip(spec.guardrails, live.guard_states, strict=True)):
        inc = guard.test.increment(state.rows(rows), arm[:, None], reward[:, None], prop)
        parts.append((f"guard.{g}", inc.to_dict()))
    for prefix, data in parts:
        for name, array in data.items():
            fields[f"{prefix}.{name}"] = array
    return Columns(n, fields)
