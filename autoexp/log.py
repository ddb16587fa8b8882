"""The decision log: every decision joined with its reward, and its exports.

The engine appends records to the store's log (``type`` "decision", "reward",
"transition"). :func:`rows` joins each decision with its reward (``reward`` and
``reward_time`` stay ``None`` until one arrives) into :data:`COLUMNS`, the columns
``simulators.ope`` reads, so every production log can evaluate the next policy offline.
:func:`export` writes them as JSON lines, Parquet (pyarrow: ``pip install
'autoexp[parquet]'``) or the Open Bandit Dataset's CSV layout (``obp``: ``item_id`` is the
arm, ``position`` 1, ``click`` the reward, ``propensity_score`` the propensity).

Parquet's columns have fixed types whatever the rows hold (:func:`parquet_schema`); the
``seed`` is a string of decimal digits there, as an engine started without one logs its
generator's 128-bit entropy, which no Parquet integer holds.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from policies.base import LOG_COLUMNS

from .errors import ConfigError
from .outputs import output_file
from .store.base import Store, redacted

__all__ = ["COLUMNS", "FORMATS", "export", "parquet_schema", "rows"]

#: The joined log's columns (:data:`policies.base.LOG_COLUMNS`, the ones the simulators
#: read), then the alternative's name and the whole allocation the arm was drawn from.
COLUMNS = LOG_COLUMNS
EXTRA = ("alternative", "allocation")
FORMATS = ("jsonl", "parquet", "obp")
_PAGE = 10_000


def _records(
    store: Store, experiment: str, progress: Callable[[int], None] | None = None
) -> Iterator[dict[str, Any]]:
    start = 0
    while True:
        page = store.records(experiment, start=start, limit=_PAGE)
        yield from page
        if progress is not None:
            progress(len(page))
        if len(page) < _PAGE:
            return
        start += len(page)


def rows(
    store: Store, experiment: str, progress: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    """Decisions in log order, each with its reward joined (the first one that counted);
    ``progress`` is told how many log records each page read held."""
    decisions: dict[str, dict[str, Any]] = {}
    for record in _records(store, experiment, progress):
        kind = record.get("type")
        if kind == "decision":
            decisions[record["decision_id"]] = {
                **{c: record.get(c) for c in COLUMNS},
                **{c: record.get(c) for c in EXTRA},
            }
        elif kind == "reward":
            row = decisions.get(record["decision_id"])
            if row is not None and row["reward"] is None:
                row["reward"] = record["reward"]
                row["reward_time"] = record["reward_time"]
    return list(decisions.values())


def parquet_schema() -> Any:
    """The Parquet export's columns and their types (``pyarrow.Schema``): the same for
    every log, so a column is not typed by what its rows happen to hold (a log with no
    reward yet, a seeded engine's small seeds)."""
    import pyarrow as pa

    numbers = pa.list_(pa.float64())
    types = {
        "decision_id": pa.string(),
        "time": pa.float64(),
        "experiment": pa.string(),
        "unit_hash": pa.string(),
        "context": numbers,
        "arm": pa.int64(),
        "propensity": pa.float64(),
        "policy": pa.string(),
        "policy_version": pa.int64(),
        "allocation_version": pa.int64(),
        "seed": pa.string(),  # unseeded: 128 bits of entropy
        "reward": pa.float64(),
        "reward_time": pa.float64(),
        "alternative": pa.string(),
        "allocation": numbers,
    }
    return pa.schema([(c, types[c]) for c in (*COLUMNS, *EXTRA)])


def export(
    store: Store,
    experiment: str,
    path: str | Path,
    fmt: str = "jsonl",
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the joined log of ``experiment`` to ``path``; the number of rows written.
    ``obp`` keeps only rewarded decisions (its ``click`` column has no missing value).
    ``progress`` is told how many log records each page read held (decisions, rewards
    and transitions: a million decisions take minutes to read)."""
    if fmt not in FORMATS:
        raise ConfigError(f"format: unknown (got {fmt!r}); accepted: {', '.join(FORMATS)}")
    if experiment not in store.experiments():
        raise ConfigError(
            f"experiment: {experiment!r} has nothing in {redacted(store.url)}; "
            f"there: {store.experiments()}"
        )
    out = output_file(path)
    if fmt == "parquet":  # said before the log is read
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ConfigError(
                "format parquet: pyarrow is not installed; pip install 'autoexp[parquet]'"
            ) from None
    data = rows(store, experiment, progress)
    try:
        return _write(data, out, fmt)
    except OSError as e:  # the disk full, say
        raise ConfigError(f"--out: {str(out)!r}: {e.strerror or e}") from None


def _write(data: list[dict[str, Any]], out: Path, fmt: str) -> int:
    if fmt == "jsonl":
        with open(out, "w") as f:
            for row in data:
                f.write(json.dumps(row, separators=(",", ":")) + "\n")
        return len(data)
    if fmt == "obp":
        done = [r for r in data if r["reward"] is not None]
        with open(out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["timestamp", "item_id", "position", "click", "propensity_score"])
            for r in done:
                writer.writerow([r["time"], r["arm"], 1, r["reward"], r["propensity"]])
        return len(done)
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {c: [r[c] for r in data] for c in (*COLUMNS, *EXTRA)}
    columns["seed"] = [None if x is None else str(x) for x in columns["seed"]]
    pq.write_table(pa.table(columns, schema=parquet_schema()), out)
    return len(data)
