"""Logged decisions for off-policy evaluation, and the readers of the two log formats.

:class:`Log` holds what any bandit leaves behind; :func:`read_obd` reads the Open Bandit
Dataset's CSV layout, :func:`read_log` autoexp's own decision log (JSON lines with
:data:`LOG_COLUMNS`) and :func:`read_any` picks one by the file's suffix. Re-exported by
:mod:`simulators.ope`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policies.base import LOG_COLUMNS, FloatArray, IntArray
from policies.build import finite

__all__ = ["LOG_COLUMNS", "MAX_ARMS", "Log", "read_any", "read_log", "read_obd"]

#: The largest arm index a log may hold, plus one: the estimators keep arrays of this many
#: entries per row or group, so an arm id of 10**9 (a typo, an item id meant for a
#: lookup) would exhaust memory instead of being refused.
MAX_ARMS = 100_000


@dataclass(frozen=True)
class Log:
    """Logged decisions, one entry per row.

    Attributes
    ----------
    arm : (n,) int, the arm played
    propensity : (n,) float in (0, 1], the probability it was played with
    reward : (n,) float
    n_arms : int
    group : (n,) int or None, e.g. the position an item was shown in
    context : (n, D) float or None
    """

    arm: IntArray
    propensity: FloatArray
    reward: FloatArray
    n_arms: int
    group: IntArray | None = None
    context: FloatArray | None = None

    def __post_init__(self) -> None:
        n = self.arm.shape[0]
        if self.arm.shape != (n,) or self.propensity.shape != (n,) or self.reward.shape != (n,):
            raise ValueError(
                "log: arm, propensity and reward must be 1-D of one length (got shapes "
                f"{self.arm.shape!r}, {self.propensity.shape!r}, {self.reward.shape!r})"
            )
        if n == 0:
            raise ValueError("log: no rows")
        if self.arm.min() < 0 or self.arm.max() >= self.n_arms:
            raise ValueError(f"log.arm: must be in 0..{self.n_arms - 1}")
        bad = ~((self.propensity > 0.0) & (self.propensity <= 1.0))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"log.propensity: must be in (0, 1] (got {float(self.propensity[i])!r} in row {i})"
            )
        if not np.all(np.isfinite(self.reward)):
            raise ValueError("log.reward: must be finite (rows without a reward must be dropped)")

    def __len__(self) -> int:
        return int(self.arm.shape[0])

    def rows(self, index: Any) -> Log:
        """The sub-log of the given rows (a slice or an index array)."""
        return Log(
            arm=self.arm[index],
            propensity=self.propensity[index],
            reward=self.reward[index],
            n_arms=self.n_arms,
            group=None if self.group is None else self.group[index],
            context=None if self.context is None else self.context[index],
        )


def read_obd(path: str | Path) -> Log:
    """Read the Open Bandit Dataset's CSV layout (``item_id``, ``position``, ``click``,
    ``propensity_score``; positions 1..3 become groups 0..2; other columns are ignored).
    A row that is not that is refused with its line."""
    need = ("item_id", "position", "click", "propensity_score")
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not an Open Bandit Dataset CSV (missing {missing!r})")
        for r in reader:
            try:
                item, position = int(r["item_id"]), int(r["position"])
                click, p = finite(float(r["click"])), finite(float(r["propensity_score"]))
            except (TypeError, ValueError):
                click = p = None
            ok = click is not None and p is not None and 0.0 < p <= 1.0
            if not ok or not 0 <= item < MAX_ARMS or not 1 <= position <= MAX_ARMS:
                got = {c: r.get(c) for c in need}
                raise ValueError(
                    f"{path}:{reader.line_num}: item_id must be an integer in "
                    f"0..{MAX_ARMS - 1}, position one in 1..{MAX_ARMS}, click a finite number and "
                    f"propensity_score one in (0, 1] (got {got!r:.200})"
                )
            rows.append((item, position, click, p))
    if not rows:
        raise ValueError(f"{path}: no rows")
    data = np.array(rows, dtype=np.float64)
    arm = data[:, 0].astype(np.int64)
    return Log(
        arm=arm,
        propensity=data[:, 3],
        reward=data[:, 2],
        n_arms=int(arm.max()) + 1,
        group=data[:, 1].astype(np.int64) - 1,
    )


def _record(path: str | Path, lineno: int, row: Any) -> tuple[int, float, float, Any] | None:
    """A decision log record's arm, propensity, reward and context (``None`` if its
    reward has not joined); ``ValueError`` naming the line for anything else."""
    where = f"{path}:{lineno}"
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a record must be a JSON object (got {row!r:.60})")
    missing = [c for c in ("arm", "propensity", "reward") if c not in row]
    if missing:
        raise ValueError(f"{where}: missing {missing!r}; columns: {LOG_COLUMNS}")
    if row["reward"] is None:
        return None
    arm, propensity, reward = row["arm"], finite(row["propensity"]), finite(row["reward"])
    if isinstance(arm, float) and arm.is_integer():  # 2.0: as pandas writes a column of ints
        arm = int(arm)
    if isinstance(arm, bool) or not isinstance(arm, int) or not 0 <= arm < MAX_ARMS:
        raise ValueError(f"{where}: arm: must be an integer in 0..{MAX_ARMS - 1} (got {arm!r:.60})")
    if propensity is None or not 0.0 < propensity <= 1.0:
        raise ValueError(f"{where}: propensity: must be in (0, 1] (got {row['propensity']!r:.60})")
    if reward is None:
        raise ValueError(
            f"{where}: reward: must be a finite number or null (got {row['reward']!r:.60})"
        )
    context = row.get("context")
    if context is not None and not (
        isinstance(context, list) and all(finite(x) is not None for x in context)
    ):
        raise ValueError(
            f"{where}: context: must be a list of finite numbers or null (got {context!r:.60})"
        )
    return arm, propensity, reward, context


def _json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Each line's number and its JSON value (blank lines skipped)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode()
            except UnicodeDecodeError:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON ({e.msg})") from None


def _parquet_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Each row's number (from 1) and its columns, of ``autoexp log export --format
    parquet``'s file (pyarrow: ``pip install 'autoexp[parquet]'``)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            f"{path}: reading Parquet needs pyarrow; pip install 'autoexp[parquet]'"
        ) from None
    if Path(path).is_dir():  # pyarrow would read it as a dataset of files
        raise ValueError(f"{path}: a directory, not a Parquet file")
    try:
        table = pq.read_table(path)
    except pa.ArrowInvalid as e:  # a ValueError: not a Parquet file
        raise ValueError(f"{path}: not a Parquet file ({e})") from None
    rows = (row for batch in table.to_batches() for row in batch.to_pylist())
    yield from enumerate(rows, start=1)  # numbered across the batches (row groups)


def read_log(path: str | Path, *, n_arms: int | None = None) -> Log:
    """Read autoexp's decision log (JSON lines with :data:`LOG_COLUMNS`, or its Parquet
    export: a ``.parquet`` file); rows whose reward has not joined are skipped.
    ``n_arms`` defaults to the largest arm seen + 1. A line (a row of a Parquet file,
    numbered from 1) that is not such a record is refused with its number."""
    arms: list[int] = []
    props: list[float] = []
    rewards: list[float] = []
    contexts: list[Sequence[float] | None] = []
    width: tuple[int, int] | None = None  # the first context's length, and its line
    parquet = Path(path).suffix.lower() == ".parquet"
    for lineno, row in _parquet_rows(path) if parquet else _json_lines(path):
        record = _record(path, lineno, row)
        if record is None:
            continue
        arm, propensity, reward, context = record
        if context is not None:
            if width is None:
                width = (len(context), lineno)
            elif len(context) != width[0]:
                raise ValueError(
                    f"{path}:{lineno}: context: {len(context)} numbers, where line "
                    f"{width[1]}'s has {width[0]}"
                )
        arms.append(arm)
        props.append(propensity)
        rewards.append(reward)
        contexts.append(context)
    if not arms:
        raise ValueError(f"{path}: no decision with a reward")
    context_array = None
    if width is not None and all(c is not None for c in contexts):
        context_array = np.asarray(contexts, dtype=np.float64).reshape(len(contexts), width[0])
    if n_arms is not None and max(arms) >= n_arms:
        raise ValueError(f"{path}: arm {max(arms)} seen, but n_arms is {n_arms}")
    return Log(
        arm=np.asarray(arms, dtype=np.int64),
        propensity=np.asarray(props),
        reward=np.asarray(rewards),
        n_arms=n_arms if n_arms is not None else max(arms) + 1,
        context=context_array,
    )


def read_any(path: str | Path) -> Log:
    """Read a log by its suffix: ``.csv`` with :func:`read_obd` (Open Bandit Dataset),
    ``.jsonl``, ``.json`` or ``.parquet`` with :func:`read_log` (autoexp's decision log)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_obd(path)
    if suffix in (".jsonl", ".json", ".parquet"):
        return read_log(path)
    raise ValueError(
        f"{path}: unknown log format (suffix {suffix!r}); accepted: .csv (Open Bandit "
        "Dataset layout), .jsonl or .json (autoexp decision log, JSON lines), .parquet "
        "(its Parquet export)"
    )
