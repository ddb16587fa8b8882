"""The decision log: joined rows, and exports the simulators' off-policy evaluation reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autoexp.cli import main
from autoexp.engine import Engine, ExperimentSpec
from autoexp.log import COLUMNS, export, parquet_schema, rows
from autoexp.store import open_store
from policies import ThompsonBeta, TrafficCap
from simulators.ope import ips, read_any, read_log, read_obd

SECRET = "s" * 32


def run(store: Any, users: int = 300, seed: int | None = 1, rewards: bool = True) -> list[Any]:
    spec = ExperimentSpec(
        name="exp",
        alternatives=("a", "b"),
        policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
        refresh_every=10,
    )
    engine = Engine(store, [spec], secret=SECRET, seed=seed)
    rng = np.random.default_rng(2)
    out = []
    for i in range(users):
        d = engine.decide("exp", unit=f"u{i}", context=[float(i % 3)])
        if rewards and i % 10:  # every tenth decision never gets its reward
            engine.reward(d, float(rng.random() < (0.3, 0.6)[d.arm]))
        out.append(d)
    engine.flush()  # the decisions still queued for the log's background writer
    return out


def test_rows_join_each_decision_with_its_reward(store: Any) -> None:
    decisions = run(store)
    table = rows(store, "exp")
    assert [r["decision_id"] for r in table] == [d.id for d in decisions]
    assert sum(r["reward"] is None for r in table) == 30
    assert all(r["propensity"] == r["allocation"][r["arm"]] for r in table)
    assert all(r["reward_time"] is not None for r in table if r["reward"] is not None)


def test_exports_read_back_by_the_simulators(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    run(store)
    n = export(store, "exp", tmp_path / "log.jsonl", "jsonl")
    assert n == 300
    log = read_log(tmp_path / "log.jsonl")  # rows without a reward are skipped
    assert len(log) == 270 and log.context is not None and log.context.shape == (270, 1)
    # the logging policy evaluated on its own log (its allocation rows as the target):
    # IPS is exactly the mean reward, a check that arms, propensities and rewards line up
    table = [r for r in rows(store, "exp") if r["reward"] is not None]
    target = np.array([r["allocation"] for r in table])
    mean = np.mean([r["reward"] for r in table])
    assert ips(log, target, method="clt").value == pytest.approx(mean, rel=1e-12)
    assert export(store, "exp", tmp_path / "log.csv", "obp") == 270
    obd = read_obd(tmp_path / "log.csv")
    np.testing.assert_array_equal(obd.arm, log.arm)
    np.testing.assert_array_equal(obd.propensity, log.propensity)
    assert export(store, "exp", tmp_path / "log.parquet", "parquet") == 300
    pq_table = pq.read_table(tmp_path / "log.parquet")
    assert pq_table.num_rows == 300 and pq_table.column_names[:13] == list(COLUMNS)
    # the Parquet export is read back as the JSON lines are, row for row
    again = read_any(tmp_path / "log.parquet")
    for field in ("arm", "propensity", "reward", "context"):
        np.testing.assert_array_equal(getattr(again, field), getattr(log, field))
    # a bad row is named by its number in the file, across its row groups (each group
    # is read as a batch of its own; the numbering restarted at each)
    bad = pq_table.slice(0, 30).to_pylist()
    bad[24]["propensity"] = 0.0
    pq.write_table(
        pa.Table.from_pylist(bad, schema=parquet_schema()),
        tmp_path / "bad.parquet",
        row_group_size=10,
    )
    assert pq.ParquetFile(tmp_path / "bad.parquet").num_row_groups == 3
    with pytest.raises(ValueError, match=r"bad\.parquet:25: propensity: must be in \(0, 1\]"):
        read_any(tmp_path / "bad.parquet")
    (tmp_path / "not.parquet").write_text("{}\n")
    with pytest.raises(ValueError, match=r"not\.parquet: not a Parquet file \("):
        read_any(tmp_path / "not.parquet")
    store.close()


def test_parquet_columns_keep_their_types_whatever_the_log_holds(tmp_path: Path) -> None:
    # An engine started without a seed (every proxy) logs its generator's 128-bit
    # entropy: exporting such a log as Parquet raised OverflowError ("Python int too
    # large to convert to C long"), the demo's own log included. The seed is written as
    # its decimal digits, exactly; and a log with no reward yet still has a float reward
    # column (it was typed "null" by its rows).
    store = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    run(store, 40, seed=None, rewards=False)
    assert export(store, "exp", tmp_path / "log.parquet", "parquet") == 40
    table = pq.read_table(tmp_path / "log.parquet")
    assert table.schema == parquet_schema()
    logged = [r["seed"] for r in rows(store, "exp")]
    assert max(logged) >= 2**64  # 128 bits of entropy: under 2^64 with probability 2^-64
    assert table.column("seed").to_pylist() == [str(x) for x in logged]
    assert table.column("reward").null_count == 40
    assert table.column("context").to_pylist()[:3] == [[0.0], [1.0], [2.0]]
    store.close()


def test_cli_export_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    store = open_store(url)
    run(store, 50)
    store.close()
    out = tmp_path / "e.jsonl"
    assert main(["log", "export", "exp", "--store", url, "--out", str(out)]) == 0
    said = capsys.readouterr()
    assert "50 decisions of 'exp' written" in said.out
    # the progress bar counts every record read: 50 decisions and 45 rewards
    assert "reading exp's log: 95record" in said.err.replace("\r", "\n"), said.err
    assert main(["log", "export", "exp", "--store", url, "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    first = json.loads(out.read_text().splitlines()[0])
    assert set(COLUMNS) <= set(first)
    assert main(["log", "export", "nope", "--store", url, "--out", str(out)]) == 2
    assert "'nope' has nothing in" in capsys.readouterr().err
    assert main(["log", "export", "exp", "--store", "postgres://x", "--out", str(out)]) == 2
    assert "unknown URL scheme" in capsys.readouterr().err
    # a mistyped path (or the default, autoexp.db, where there is none) is said, and no
    # empty database is left behind in its place
    typo = tmp_path / "y.db"
    assert main(["log", "export", "exp", "--store", f"sqlite:///{typo}", "--out", str(out)]) == 2
    assert f"store: sqlite:///{typo}: no such file {typo}" in capsys.readouterr().err
    assert not typo.exists()
    # memory:// is empty in any new process: said, not "'exp' has nothing in memory://"
    assert main(["log", "export", "exp", "--store", "memory://", "--out", str(out)]) == 2
    assert "store: memory:// lives inside one process" in capsys.readouterr().err
    # where the file cannot be written: said (it was a FileNotFoundError's traceback)
    nowhere = tmp_path / "no" / "e.jsonl"
    assert main(["log", "export", "exp", "--store", url, "--out", str(nowhere)]) == 2
    err = capsys.readouterr().err
    assert f"--out: {str(nowhere)!r}: no such directory {str(nowhere.parent)!r}" in err
    assert main(["log", "export", "exp", "--store", url, "--out", str(tmp_path)]) == 2
    assert f"--out: {str(tmp_path)!r} is a directory" in capsys.readouterr().err
