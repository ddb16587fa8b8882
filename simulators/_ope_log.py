"""Logged decisions for off-policy evaluation, and the readers of the two log formats.

:class:`Log` holds what any bandit leaves behind; :func:`read_obd` reads the Open Bandit
Dataset's CSV layout, :func:`read_log` autoexp's own decision log (JSON lines with
:data:`LOG_COLUMNS`) and :func:`read_any` picks one by the file's suffix. Re-exported by
:mod:`simulators.ope`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policies.base import LOG_COLUMNS, FloatArray, IntArray

__all__ = ["LOG_COLUMNS", "Log", "read_any", "read_log", "read_obd"]


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
    ``propensity_score``; positions 1..3 become groups 0..2; other columns are ignored)."""
    need = ("item_id", "position", "click", "propensity_score")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not an Open Bandit Dataset CSV (missing {missing!r})")
        rows = [(r["item_id"], r["position"], r["click"], r["propensity_score"]) for r in reader]
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


def read_log(path: str | Path, *, n_arms: int | None = None) -> Log:
    """Read autoexp's decision log (JSON lines with :data:`LOG_COLUMNS`); rows whose reward
    has not joined are skipped. ``n_arms`` defaults to the largest arm seen + 1."""
    arms: list[int] = []
    props: list[float] = []
    rewards: list[float] = []
    contexts: list[Sequence[float] | None] = []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            missing = [c for c in ("arm", "propensity", "reward") if c not in row]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing {missing!r}; columns: {LOG_COLUMNS}")
            if row["reward"] is None:
                continue
            arms.append(int(row["arm"]))
            props.append(float(row["propensity"]))
            rewards.append(float(row["reward"]))
            contexts.append(row.get("context"))
    if not arms:
        raise ValueError(f"{path}: no decision with a reward")
    context = None
    if all(c is not None for c in contexts):
        context = np.asarray(contexts, dtype=np.float64)
        if context.ndim != 2:
            raise ValueError(f"{path}: contexts must be lists of one length")
    return Log(
        arm=np.asarray(arms, dtype=np.int64),
        propensity=np.asarray(props),
        reward=np.asarray(rewards),
        n_arms=n_arms if n_arms is not None else max(arms) + 1,
        context=context,
    )


def read_any(path: str | Path) -> Log:
    """Read a log by its suffix: ``.csv`` with :func:`read_obd` (Open Bandit Dataset),
    ``.jsonl`` or ``.json`` with :func:`read_log` (autoexp's decision log)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_obd(path)
    if suffix in (".jsonl", ".json"):
        return read_log(path)
    raise ValueError(
        f"{path}: unknown log format (suffix {suffix!r}); accepted: .csv (Open Bandit "
        "Dataset layout), .jsonl or .json (autoexp decision log, JSON lines)"
    )
