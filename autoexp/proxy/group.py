"""What each worker of a supervised group (``--workers N``) counts on its own, shared so
that whichever worker a scrape reaches answers for all of them.

Prometheus scrapes the port, and the kernel hands each scrape to one worker. When each
said only its own counts, ``autoexp_proxy_events_total`` went up and down from scrape to
scrape (143 and 157 rewards on two workers, in turn), which Prometheus takes for a
counter reset each time it falls (``rate`` and ``increase`` then add the whole count
again), and ``autoexp_expire_holder`` said 1 or 0 by the worker reached. So each worker
writes its own figures (:func:`autoexp.proxy.metrics.replica_figures`) to a file of its
own in a directory the supervisor made: every second, at each scrape it answers, and as
it stops. A scrape sums the files: the counters over every worker the supervisor
started (one that stopped keeps its last counts, so a reload or a replaced worker takes
no count back), the gauges over the workers running.

A file is replaced whole (written aside, then renamed), and a worker writes its own one
at a time, its figures taken as it writes, so each file only ever goes up. The
supervisor folds the counters of the workers that exited into one file
(:func:`fold`), under an exclusive lock that the readers take shared, so that no scrape
counts a worker twice or not at all; the directory does not grow with reloads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["Figures", "Group", "fold", "make_directory", "remove_directory"]

# {"counters": {metric: {label value: count}}, "gauges": {metric: {label value: value}}}
Figures = dict[str, dict[str, dict[str, float]]]

EVERY_S = 1.0  # how often a worker writes its figures (a scrape also writes them)
RETIRED = "retired.json"  # the counters of the workers that exited, folded
_LOCK = ".lock"


def make_directory() -> str:
    """A new directory for one supervisor's workers (removed by :func:`remove_directory`)."""
    return tempfile.mkdtemp(prefix="autoexp-workers-")


def remove_directory(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def _locked(directory: Path, how: int) -> Iterator[None]:
    with open(directory / _LOCK, "a+b") as f:
        fcntl.flock(f, how)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write(path: Path, data: dict[str, Any]) -> None:
    aside = path.with_name(f".{path.name}.{os.getpid()}")
    aside.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(aside, path)


def _read(path: Path) -> dict[str, Any] | None:
    """A worker's file; ``None`` if it is gone or not one (then it counts for nothing)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _add(total: dict[str, dict[str, float]], part: Any) -> None:
    if not isinstance(part, dict):
        return
    for metric, values in part.items():
        if isinstance(values, dict):
            for label, value in values.items():
                if isinstance(value, int | float):
                    into = total.setdefault(metric, {})
                    into[label] = into.get(label, 0.0) + float(value)


def _running(data: dict[str, Any]) -> bool:
    if data.get("stopped"):
        return False
    try:
        os.kill(int(data["pid"]), 0)
    except ProcessLookupError:
        return False  # killed outright: its gauges went with it
    except (KeyError, TypeError, ValueError, PermissionError):
        return True  # a process that exists, not ours to signal
    return True


class Group:
    """This worker's part: its figures written to ``directory`` and everyone's summed.

    ``figures`` gives this worker's own, as they are now (called in a thread)."""

    def __init__(self, directory: str | Path, figures: Callable[[], Figures]) -> None:
        self.directory = Path(directory)
        self.figures = figures
        self.pid = os.getpid()
        self.supervisor = os.getppid()
        self.path = self.directory / f"{self.pid}.json"
        self._lock = threading.Lock()  # one write at a time: the file only goes up

    def publish(self, *, stopped: bool = False) -> Figures:
        """Write this worker's figures as they are now (and whether it has stopped); them."""
        with self._lock:
            own = self.figures()
            _write(self.path, {"pid": self.pid, "stopped": stopped, **own})
        return own

    def orphaned(self) -> bool:
        """Whether the supervisor is gone (killed outright: it could not remove the
        directory, so the workers, stopping, do)."""
        return os.getppid() != self.supervisor

    def total(self) -> Figures:
        """Every worker's figures summed: counters over all the supervisor started,
        gauges over those running (this one's as they are now)."""
        own = self.publish()
        counters: dict[str, dict[str, float]] = {}
        gauges: dict[str, dict[str, float]] = {}
        _add(counters, own.get("counters"))
        _add(gauges, own.get("gauges"))
        with _locked(self.directory, fcntl.LOCK_SH):
            for path in self.directory.glob("*.json"):
                if path == self.path or (data := _read(path)) is None:
                    continue
                _add(counters, data.get("counters"))
                if path.name != RETIRED and _running(data):
                    _add(gauges, data.get("gauges"))
        return {"counters": counters, "gauges": gauges}


def fold(directory: str | Path, pids: Iterable[int]) -> None:
    """The supervisor's: the counters of these workers, which exited, added to the
    retired ones and their files removed, in one step for the readers."""
    directory = Path(directory)
    files = [directory / f"{pid}.json" for pid in pids]
    with _locked(directory, fcntl.LOCK_EX):
        files = [f for f in files if f.exists()]
        if not files:
            return
        retired: dict[str, dict[str, float]] = {}
        _add(retired, (_read(directory / RETIRED) or {}).get("counters"))
        for f in files:
            _add(retired, (_read(f) or {}).get("counters"))
        _write(directory / RETIRED, {"counters": retired})
        for f in files:
            f.unlink()
