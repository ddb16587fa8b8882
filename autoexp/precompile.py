"""numba's compiled kernels, made ahead of time, for a container whose root is read-only.

The engine's policies and tests run numba kernels cached on disk (``cache=True``). A
process with no cache compiles them first: ``autoexp proxy`` took 14 s to answer in a
fresh container here, against 1.6 s with the cache. Where the root filesystem is
read-only (``deploy/kubernetes.yaml``), numba's cache can only live in a writable
folder (``NUMBA_CACHE_DIR``, an ``emptyDir`` at ``/tmp``), empty at every start.

So the image compiles them while it is built, and each start copies them over:

- ``NUMBA_CACHE_DIR=DIR python -m autoexp.precompile`` compiles into ``DIR`` every kernel
  an experiment may use: one engine on a memory store with an experiment per policy
  (each context-free one, with a traffic cap and a conservative budget; each contextual
  one on a context of two features), per sequential test and with a guardrail, each
  decided, rewarded and refreshed a few times. It prints the kernels cached.
- :func:`seed` (``autoexp proxy`` calls it before its engine starts) copies the files of
  the folder ``AUTOEXP_NUMBA_SEED`` names into ``NUMBA_CACHE_DIR``, keeping any already
  there. numba checks each file against its kernel's source (its path, size and time),
  and compiles again whatever does not match; a seed that cannot be read or copied is
  said and skipped: the kernels are then compiled as before.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

__all__ = ["compile_all", "seed"]

SEED = "AUTOEXP_NUMBA_SEED"
SECRET = "autoexp.precompile, no token leaves it"


def seed(environ: Any = os.environ) -> int:
    """Copy ``$AUTOEXP_NUMBA_SEED``'s files into ``$NUMBA_CACHE_DIR`` where missing; the
    number of files copied (0 without both variables, or with nothing to copy)."""
    source, target = environ.get(SEED), environ.get("NUMBA_CACHE_DIR")
    if not source or not target or Path(source).resolve() == Path(target).resolve():
        return 0
    copied = 0
    try:
        for path in sorted(Path(source).rglob("*")):
            if not path.is_file():
                continue
            dest = Path(target) / path.relative_to(source)
            if dest.exists():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            # whole or not at all, as numba writes its own: the workers of a supervised
            # proxy seed one folder at once, and numba's reading of an index another
            # worker had only begun to write would raise in the warm-up
            part = dest.with_name(f"{dest.name}.{os.getpid()}.part")
            shutil.copyfile(path, part)
            os.replace(part, dest)
            copied += 1
    except OSError as e:
        print(f"autoexp: compiled kernels not copied from {source} ({e}); compiling them")
    return copied


def _experiments() -> dict[str, dict[str, Any]]:
    from policies import CONTEXTUAL, REGISTRY, TESTS

    safety = {"explore_share": 0.5, "conservative_alpha": 0.1}
    base: dict[str, Any] = {"alternatives": ["a", "b", "c"], "refresh_every": 5}
    experiments: dict[str, dict[str, Any]] = {}
    for name in sorted(REGISTRY):
        experiments[f"policy-{name}"] = {
            **base,
            "policy": {"name": name},
            "safety": safety,
            "test": {"name": "off-policy-cs"},
            "guardrails": [{"name": "errors", "harm": "decrease"}],
        }
    context = {"features": [{"name": "x", "header": "X-X"}, {"name": "y", "header": "X-Y"}]}
    for name in sorted(CONTEXTUAL):
        experiments[f"contextual-{name}"] = {
            **base,
            "policy": {"name": name},
            "safety": {"explore_share": 0.5},
            "context": context,
        }
    for name in sorted(TESTS):
        experiments[f"test-{name}"] = {
            **base,
            "policy": {"name": "thompson-beta"},
            "safety": {"explore_share": 0.5},
            "test": {"name": name},
        }
    return experiments


def compile_all(rounds: int = 12) -> list[str]:
    """Run every experiment of :func:`_experiments` through decisions, rewards and
    refreshes on a memory store; the kernels numba has compiled, by name."""
    import numpy as np

    from .config import parse_config
    from .engine import Engine, ExperimentSpec
    from .errors import ConfigError
    from .store.memory import MemoryStore

    specs: list[ExperimentSpec] = []
    for name, body in _experiments().items():
        for table in (body, {**body, "safety": {"explore_share": 0.5}}):
            try:  # with the budget where the policy takes one (bounded rewards)
                specs += parse_config({"secret": SECRET, "experiments": {name: table}}).experiments
                break
            except ConfigError as e:
                refused = e
        else:  # one the engine cannot serve (a state that depends on the order of rewards)
            print(f"autoexp.precompile: {name} skipped ({refused})")
    rng = np.random.default_rng(0)
    for spec in specs:
        engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=0)
        try:
            engine.warm_up()
            for _ in range(rounds):
                context = None
                if spec.context is not None:
                    context = {"x": float(rng.random()), "y": float(rng.random())}
                decision = engine.decide(spec.name, context=context)
                engine.reward(decision, float(rng.random() < 0.5))
            engine.refresh(spec.name)
        finally:
            engine.close()
    return _compiled()


def _compiled() -> list[str]:
    folder = os.environ.get("NUMBA_CACHE_DIR")
    if not folder:
        return []
    return sorted(p.name.split("-")[0] for p in Path(folder).rglob("*.nbi"))


def main() -> int:
    if not os.environ.get("NUMBA_CACHE_DIR"):
        print("autoexp.precompile: set NUMBA_CACHE_DIR to the folder to compile into")
        return 2
    import policies

    kernels = compile_all()
    print(
        f"autoexp.precompile: {len(kernels)} kernels in {os.environ['NUMBA_CACHE_DIR']}, of "
        f"{Path(policies.__file__).parent} (numba files them under their source's folder)"
    )
    for kernel in kernels:
        print(f"  {kernel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
