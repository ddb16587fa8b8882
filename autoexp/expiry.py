"""Which decisions' join windows closed without a reward, read from the log (see
:meth:`autoexp.engine.Engine.expire`, which applies the default reward to them).

The log is the source of truth: each experiment keeps a cursor (``expire_cursor`` in the
store) before which every decision is settled. A replica reads the log from there once
and then only what was appended since its last pass, keeping the decisions not yet
rewarded (in memory: those within their join window); the cursor moves to the first
decision still open.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from .experiment import ExperimentSpec
from .records import outline
from .store.base import Store
from .tokens import Ticket

__all__ = ["Scans"]

PAGE = 10_000  # log records read at a time


@dataclass
class _Scan:
    """What has been read of one experiment's log: positions ``[start, end)``, and in
    them the decisions not yet rewarded nor defaulted (id to position, its record's time
    and its record's JSON text, parsed only if it falls due)."""

    start: int
    end: int
    open: dict[str, tuple[int, float, str]] = field(default_factory=dict)


class Scans:
    """A replica's reading of each experiment's log, kept between passes. Not
    thread-safe: the engine runs one pass at a time."""

    def __init__(self) -> None:
        self._scans: dict[str, _Scan] = {}

    def due(self, store: Store, spec: ExperimentSpec, now: float) -> list[Ticket]:
        """Read what was appended since the last pass; the tickets of the open decisions
        whose join window closed before ``now``."""
        cursor = int(store.get(spec.name, "expire_cursor") or 0)
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
            page = store.lines(spec.name, start=scan.end, limit=PAGE)
            # every decision and reward passes here once: read by its head, the rest of
            # a decision's record parsed only if it falls due
            for pos, line in enumerate(page, scan.end):
                kind, decision_id, issued = outline(line)
                if kind == "decision":
                    opened[decision_id] = (pos, float(issued), line)
                elif kind == "reward":
                    opened.pop(decision_id, None)
            scan.end += len(page)
            if len(page) < PAGE:
                break
        dim = spec.policy.context_dim
        due = []  # most decisions are rewarded before their window closes
        for decision_id, (_, issued, line) in opened.items():
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
        return due

    def settled(self, name: str, tickets: Sequence[Ticket]) -> None:
        """These decisions (from :meth:`due`) have their reward now, the default or an
        earlier one."""
        scan = self._scans[name]
        for t in tickets:
            del scan.open[t.id]

    def save(self, store: Store, name: str) -> None:
        """Move the experiment's cursor to its first decision still open."""
        scan = self._scans[name]
        scan.start = min((pos for pos, _, _ in scan.open.values()), default=scan.end)
        store.set(name, "expire_cursor", str(scan.start))
