"""``autoexp.proxy.group``: what the workers of ``--workers N`` count on their own, summed
by whichever worker a scrape reaches (the whole proxy run: ``test_cli_proxy.py``)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from autoexp.proxy.group import RETIRED, Figures, Group, fold


def figures(rewards: float, holder: float = 0.0, sockets: float = 0.0) -> Figures:
    return {
        "counters": {"autoexp_proxy_events": {"rewards": rewards}},
        "gauges": {
            "autoexp_expire_holder": {"ranker": holder},
            "autoexp_proxy_websockets_open": {"": sockets},
        },
    }


def exited_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(proc.stdout)


def worker_file(directory: Path, pid: int, data: Figures, **extra: Any) -> Path:
    path = directory / f"{pid}.json"
    path.write_text(json.dumps({"pid": pid, **extra, **data}))
    return path


def test_counters_sum_over_every_worker_and_gauges_over_those_running(tmp_path: Path) -> None:
    own = Group(tmp_path, lambda: figures(5, holder=0, sockets=2))
    parent = os.getppid()  # a process that runs: this test's parent
    worker_file(tmp_path, parent, figures(7, holder=1, sockets=1), stopped=False)
    worker_file(tmp_path, exited_pid(), figures(11, holder=1, sockets=4), stopped=False)
    worker_file(tmp_path, 1_000_000_000, figures(13, holder=1), stopped=True)  # said so
    (tmp_path / "999.json").write_text("{not json")  # a torn or foreign file: nothing
    (tmp_path / "998.json").write_text('{"pid": 998, "counters": {"x": {"y": "NaN?"}}}')
    total = own.total()
    # every worker's counts, the exited ones' included: 5 + 7 + 11 + 13
    assert total["counters"] == {"autoexp_proxy_events": {"rewards": 36.0}}
    # gauges: this worker's and the running one's only (the killed one held the lease)
    assert total["gauges"] == {
        "autoexp_expire_holder": {"ranker": 1.0},
        "autoexp_proxy_websockets_open": {"": 3.0},
    }
    # and this worker's own are in its file, as it answered them
    mine = json.loads((tmp_path / f"{os.getpid()}.json").read_text())
    assert mine["stopped"] is False and mine["counters"] == figures(5)["counters"]
    own.publish(stopped=True)
    assert json.loads(own.path.read_text())["stopped"] is True


def test_folding_exited_workers_keeps_every_total_and_shrinks_the_directory(
    tmp_path: Path,
) -> None:
    # A reader sums the files over and over while the exited workers' files are folded
    # into the retired one, one by one: every total it sees is the same (a worker counted
    # twice or not at all would show as another figure), and only the retired file and
    # the reader's own are left.
    own = Group(tmp_path, lambda: figures(1))
    dead = [exited_pid() for _ in range(2)] + list(range(2_000_000_000, 2_000_000_030))
    for i, pid in enumerate(dead):
        worker_file(tmp_path, pid, figures(10 + i, holder=1), stopped=True)
    expected = 1.0 + sum(10 + i for i in range(len(dead)))
    seen: list[float] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(own.total()["counters"]["autoexp_proxy_events"]["rewards"])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for pid in dead:
            fold(tmp_path, [pid])
        fold(tmp_path, dead[:3])  # folded already: nothing twice
    finally:
        done.set()
        reader.join(timeout=60)
    seen.append(own.total()["counters"]["autoexp_proxy_events"]["rewards"])
    assert len(seen) > 1 and set(seen) == {expected}, sorted(set(seen))
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(
        [RETIRED, f"{os.getpid()}.json"]
    )
    assert own.total()["gauges"]["autoexp_expire_holder"] == {"ranker": 0.0}  # stopped ones


def test_a_workers_file_only_goes_up_while_scrapes_and_its_timer_both_write(
    tmp_path: Path,
) -> None:
    # The scrape's write and the timer's run in threads of their own; each takes the
    # figures as it writes, one write at a time, so the file never goes back to figures
    # older than some it already held (a scrape that answered 100 and then a timer's
    # write of the 95 it took earlier would make the next scrape's total fall). Taking
    # the figures sleeps a little, as reading the engine's status lets other threads run.
    count = [0]
    lock = threading.Lock()

    def now() -> Figures:
        with lock:
            count[0] += 1
            taken = count[0]
        time.sleep(0.0002)
        return figures(taken)

    own = Group(tmp_path, now)
    own.publish()
    read: list[float] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            data = json.loads(own.path.read_text())
            read.append(data["counters"]["autoexp_proxy_events"]["rewards"])

    def write() -> None:  # a scrape's writes, or the timer's
        for _ in range(200):
            own.publish()

    writers = [threading.Thread(target=write) for _ in range(2)]
    watching = threading.Thread(target=reader)
    watching.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join(timeout=60)
    done.set()
    watching.join(timeout=60)
    final = json.loads(own.path.read_text())["counters"]["autoexp_proxy_events"]["rewards"]
    assert final == count[0] == 401
    falls = [(a, b) for a, b in itertools.pairwise(read) if b < a]
    assert len(read) > 100 and falls == [], falls[:5]


def test_the_proxys_events_can_be_read_while_the_event_loop_counts_new_ones() -> None:
    # The figures are taken in a thread (each second, and at each scrape) while the event
    # loop counts: an event counted for the first time grows the counter's dict, and a
    # walk of it in Python (adding the two counters did one) would meet "dictionary
    # changed size during iteration". 20,000 new events counted, read all the while: no
    # error, and every read a total of what was counted by then.
    from types import SimpleNamespace

    from autoexp.proxy.upstream import Forwarder

    events: Counter[str] = Counter({f"old{i}": 1 for i in range(2000)})
    ns = SimpleNamespace(events=events, applier_events=Counter({"rewards": 5}))
    done = threading.Event()
    errors: list[BaseException] = []
    reads: list[int] = []

    def read() -> None:
        while not done.is_set():
            try:
                counts = Forwarder.counts.fget(ns)
            except BaseException as e:
                errors.append(e)
                return
            reads.append(counts["rewards"] + sum(v for k, v in counts.items() if k != "rewards"))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(20_000):
            events[f"new{i}"] += 1
    finally:
        done.set()
        reader.join(timeout=60)
    assert errors == [] and len(reads) > 0
    assert all(2005 <= n <= 22_005 for n in reads) and reads == sorted(reads)


def test_the_metrics_answer_with_the_workers_own_figures_if_the_directory_is_gone(
    tmp_path: Path,
) -> None:
    # The supervisor removes the directory only after its workers stopped; removed by
    # hand (or a cleaner of /tmp) under a running worker, the scrape still answers, with
    # this worker's own figures, rather than a 500.
    from prometheus_client import CollectorRegistry, generate_latest

    from autoexp.engine import Engine, ExperimentSpec
    from autoexp.proxy.metrics import _EngineCollector, replica_figures
    from autoexp.store.memory import MemoryStore
    from policies import ThompsonBeta

    spec = ExperimentSpec(name="ranker", alternatives=("v1", "v2"), policy=ThompsonBeta())
    engine = Engine(MemoryStore(), [spec], secret="a" * 32, seed=1)
    shared = tmp_path / "shared"
    shared.mkdir()
    worker_file(shared, os.getppid(), figures(7), stopped=False)
    group = Group(shared, lambda: replica_figures(engine, None))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_EngineCollector(engine, None, None, group))
    assert "autoexp_proxy_events_total" in generate_latest(registry).decode()  # the other's
    for path in shared.iterdir():
        path.unlink()
    shared.rmdir()
    text = generate_latest(registry).decode()
    assert 'autoexp_late_rewards_total{experiment="ranker"} 0.0' in text
    assert "autoexp_proxy_events_total" not in text  # this worker counts none
    engine.close()
