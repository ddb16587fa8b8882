"""Sweeps: every cell of a grid over safety settings and policies, in parallel.

Each cell is a scenario (see :mod:`simulators.config`) whose random streams come from
``SeedSequence(seed).spawn(n_cells)[i]``, so a cell's result depends only on its index and
settings: the same in one process, in many, or on a Ray cluster, in any order
(``tests/simulators/test_sweep.py`` checks serial and parallel runs give equal rows).

Executors:

* ``"processes"`` (default): a pool of ``workers`` processes on this machine (spawned, so
  nothing of the parent's state leaks in);
* ``"serial"``: one cell after another in this process;
* ``"ray"``: one Ray task per cell on the cluster at ``ray_address`` (or a local Ray
  instance started for the sweep); install with ``pip install 'autoexp[ray]'``.

The result is one row per cell: the cell's settings, its :meth:`Result.summary` and its
wall time; :func:`simulators.report.write_report` draws the frontier from them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from .config import SweepSpec, scenario
from .runner import run

__all__ = ["EXECUTORS", "SweepResult", "run_cell", "run_sweep"]

EXECUTORS = ("processes", "serial", "ray")


@dataclass(frozen=True)
class SweepResult:
    """The sweep's rows (one per cell, in cell order) and how it ran."""

    name: str
    params: tuple[str, ...]
    rows: list[dict[str, Any]]
    executor: str
    workers: int
    seconds: float


def run_cell(cell: dict[str, Any], index: int, base_dir: str | None) -> dict[str, Any]:
    """Build and run cell ``index`` (in whatever process gets it); its summary row."""
    spec = scenario(
        cell,
        where=f"cell {index}",
        base_dir=Path(base_dir) if base_dir else None,
        spawn_key=(index,),
    )
    start = time.perf_counter()
    result = run(spec.scenario)
    seconds = time.perf_counter() - start
    sc = spec.scenario
    return {
        "cell": index,
        **result.summary(),
        "pulls_per_s": sc.replicates * sc.steps / seconds,
        "seconds": seconds,
    }


def run_sweep(
    spec: SweepSpec,
    *,
    executor: str = "processes",
    workers: int | None = None,
    ray_address: str | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> SweepResult:
    """Run every cell; ``progress(row)`` is called as each one finishes (in any order).

    Parameters
    ----------
    spec : the sweep (from :func:`simulators.config.load_sweep`)
    executor : one of :data:`EXECUTORS`
    workers : processes (default: the CPUs this process may use); for Ray, the CPUs of
        the local instance it starts (ignored with ``ray_address``)
    ray_address : a running Ray cluster's address (``"auto"``, ``"ray://host:10001"``)
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor: unknown (got {executor!r}); accepted: {', '.join(EXECUTORS)}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers: must be an integer >= 1 (got {workers!r})")
    n_workers = workers or len(os.sched_getaffinity(0))
    base_dir = str(spec.base_dir) if spec.base_dir is not None else None
    jobs = [(cell, i, base_dir) for i, cell in enumerate(spec.cells)]
    start = time.perf_counter()
    rows: dict[int, dict[str, Any]] = {}

    def done(row: dict[str, Any]) -> None:
        row = {**spec.labels[row["cell"]], **row}
        rows[row["cell"]] = row
        if progress is not None:
            progress(row)

    if executor == "serial" or (executor == "processes" and n_workers == 1):
        n_workers = 1
        for job in jobs:
            done(run_cell(*job))
    elif executor == "processes":
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_cell, *job) for job in jobs]
            for future in as_completed(futures):
                done(future.result())
    else:
        n_workers = _run_ray(jobs, n_workers, ray_address, done)
    return SweepResult(
        name=spec.name,
        params=spec.params,
        rows=[rows[i] for i in range(len(jobs))],
        executor=executor,
        workers=n_workers,
        seconds=time.perf_counter() - start,
    )


def _run_ray(
    jobs: list[tuple[dict[str, Any], int, str | None]],
    n_workers: int,
    address: str | None,
    done: Callable[[dict[str, Any]], None],
) -> int:
    try:
        import ray
    except ImportError:
        raise RuntimeError(
            "executor 'ray': Ray is not installed; pip install 'autoexp[ray]'"
        ) from None
    started = not ray.is_initialized()
    if started:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:
            options["num_cpus"] = n_workers
        ray.init(address=address, **options)
    try:
        task = ray.remote(num_cpus=1)(run_cell)
        pending = [task.remote(*job) for job in jobs]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done(ray.get(ready[0]))
        return int(ray.cluster_resources().get("CPU", n_workers))  # type: ignore[no-untyped-call]
    finally:
        if started:
            ray.shutdown()
