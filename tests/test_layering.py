"""The dependency flows one way: policies <- simulators, policies <- autoexp."""

from __future__ import annotations

import subprocess
import sys

import pytest

RUNTIME = ("autoexp", "aiohttp", "redis")
#: Heavy optional pieces that only load when used: plots (matplotlib), Ray sweeps.
LAZY = ("matplotlib", "ray")


@pytest.mark.parametrize("package", ["policies", "simulators"])
def test_pure_packages_load_no_runtime(package: str) -> None:
    code = (
        f"import sys, {package}\n"
        f"import {package}.__init__\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {RUNTIME + LAZY!r})\n"
        "print(','.join(loaded))\n"
    )
    # Every module of the package, not just its facade.
    code = (
        f"import pkgutil, importlib, {package}\n"
        f"for m in pkgutil.iter_modules({package}.__path__):\n"
        f"    importlib.import_module('{package}.' + m.name)\n" + code
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "", f"{package} loaded {out.stdout.strip()}"


def test_the_check_can_fail() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys, autoexp; print('autoexp' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "True"
