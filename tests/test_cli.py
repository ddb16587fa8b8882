"""The ``autoexp`` console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoexp import __version__
from autoexp.cli import main
from policies import CONTEXTUAL, REGISTRY, SAFETY, TESTS


def test_version_from_the_installed_script() -> None:
    # The script installed beside this interpreter (the venv's bin), else the one on PATH.
    beside = Path(sys.executable).with_name("autoexp")
    exe = str(beside) if beside.exists() else shutil.which("autoexp")
    if exe is None:
        pytest.fail("the autoexp console script is not installed")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.strip() == f"autoexp {__version__}"


def test_policies_lists_every_policy_with_its_bound(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policies"]) == 0
    out = capsys.readouterr().out
    policies, tests = out.split("\n\n")
    rows = {line.split()[0]: line for line in policies.splitlines()[1:]}
    assert set(rows) == set(REGISTRY) | set(SAFETY) | set(CONTEXTUAL)
    assert all(("[context]" in line) == (name in CONTEXTUAL) for name, line in rows.items())
    listed = {line.split()[0]: line.split()[1] for line in tests.strip().splitlines()[1:]}
    assert listed == {name: "yes" if cls.adaptive else "no" for name, cls in TESTS.items()}
    for name, line in rows.items():
        bound = line.split(maxsplit=2)[2]
        assert bound != "no bound stated" and len(bound) > 10, name
    assert "Auer" in rows["ucb1"] and "Neu 2015" in rows["exp3-ix"]


def test_no_command_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_module_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "autoexp.cli", "policies"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "thompson-beta" in out.stdout
