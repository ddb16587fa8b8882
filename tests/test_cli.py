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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # 70000 was served on port 4464 (taken modulo 65536)
        (
            ["proxy", "--config", "x.toml", "--port", "70000"],
            "--port: must be a port in [0, 65535]",
        ),
        (["proxy", "--config", "x.toml", "--port", "-1"], "--port: must be a port in [0, 65535]"),
        # served, then stopped at the first expire pass (-1), or a uvloop traceback (nan)
        (["proxy", "--config", "x.toml", "--expire-every-s", "-1"], "--expire-every-s: must be"),
        (["proxy", "--config", "x.toml", "--expire-every-s", "nan"], "--expire-every-s: must be"),
        (["proxy", "--config", "x.toml", "--shutdown-timeout-s", "-5"], "--shutdown-timeout-s"),
        # polled the store in a busy loop
        (["learn", "--config", "x.toml", "--experiment", "e", "--poll-s", "-1"], "--poll-s: must"),
        # numpy's SeedSequence: a ValueError traceback, after the demo had started
        (["demo", "--seed", "-1"], "--seed: must be an integer >= 0 (got '-1')"),
        (["simulate", "x.toml", "--seed", "-1"], "--seed: must be an integer >= 0 (got '-1')"),
        (["sweep", "x.toml", "--seed", "-1"], "--seed: must be an integer >= 0 (got '-1')"),
        (["ope", "x.jsonl", "--seed", "-1"], "--seed: must be an integer >= 0 (got '-1')"),
        (["simulate", "x.toml", "--replicates", "0"], "--replicates: must be an integer >= 1"),
    ],
)
def test_numbers_out_of_range_are_refused_before_anything_starts(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert f"error: argument {message}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["proxy", "--config"],
        ["proxy", "--check", "--config"],
        ["learn", "--experiment", "e", "--config"],
        ["simulate"],
        ["sweep"],
    ],
    ids=["proxy", "check", "learn", "simulate", "sweep"],
)
def test_a_config_that_is_no_text_file_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    # a directory (IsADirectoryError) and bytes that are not UTF-8 (UnicodeDecodeError)
    # were tracebacks
    binary = tmp_path / "x.toml"
    binary.write_bytes(b'name = "x"\n\xd0\x00\xff\n')
    for path, why in ((tmp_path, "a directory, not a TOML file"), (binary, "not UTF-8 text")):
        assert main([*command, str(path)]) == 2
        assert f"error: {path}: " in (err := capsys.readouterr().err) and why in err, err
