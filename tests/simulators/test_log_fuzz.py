"""Decision logs a user brings, with one mistake in them (hypothesis, derandomized): a
JSON-lines log or an Open Bandit Dataset CSV with one field replaced by any value, one
removed, or one line replaced, is either read or refused with a ValueError that names the
file and the line; never another exception from inside."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulators.ope import read_log, read_obd
from tests.autoexp.test_api_fuzz import values

EXAMPLES = 300

ROWS = [
    {
        "decision_id": f"d{i}",
        "arm": i % 3,
        "propensity": 0.5,
        "reward": float(i % 2),
        "context": [0.1 * i, 1.0],
    }
    for i in range(6)
]
CSV_HEAD = "item_id,position,click,propensity_score\n"
CSV_ROWS = [f"{i % 3},{1 + i % 3},{i % 2},0.25" for i in range(6)]


@st.composite
def jsonl_logs(draw: Any) -> tuple[bytes, int, str]:
    """A log's bytes, the line changed and how."""
    rows: list[Any] = [dict(r) for r in ROWS]
    n = draw(st.integers(0, len(rows) - 1))
    how = draw(st.sampled_from(["field", "field", "remove", "line", "bytes"]))
    if how == "field":
        rows[n][draw(st.sampled_from(["arm", "propensity", "reward", "context"]))] = draw(values)
    elif how == "remove":
        del rows[n][draw(st.sampled_from(["arm", "propensity", "reward", "context"]))]
    elif how == "line":
        rows[n] = draw(values)
    lines = [json.dumps(r).encode() for r in rows]
    if how == "bytes":
        lines[n] = draw(st.binary(min_size=1, max_size=20)).replace(b"\n", b" ")
    return b"\n".join(lines) + b"\n", n + 1, how


@st.composite
def obd_logs(draw: Any) -> tuple[bytes, int, str]:
    rows = list(CSV_ROWS)
    n = draw(st.integers(0, len(rows) - 1))
    cells = rows[n].split(",")
    how = draw(st.sampled_from(["cell", "cell", "drop", "line"]))
    if how == "cell":
        cells[draw(st.integers(0, 3))] = draw(st.one_of(values, st.text(max_size=6))).__str__()
        rows[n] = ",".join(cells).replace("\n", " ").replace("\r", " ")
    elif how == "drop":
        rows[n] = ",".join(cells[:-1])
    else:
        rows[n] = draw(st.text(max_size=20)).replace("\n", " ").replace("\r", " ")
    return (CSV_HEAD + "\n".join(rows) + "\n").encode(), n + 2, how


def read_or_refuse(reader: Any, data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"log{suffix}"
        path.write_bytes(data)
        try:
            log = reader(path)
        except ValueError as e:
            # one line is wrong, the others fine: the refusal names the file and a line
            assert re.match(rf"{re.escape(str(path))}:\d+: \S", str(e)), str(e)
            return
        except Exception as e:  # a traceback from inside, no file or line to look at
            pytest.fail(f"{type(e).__name__}: {e} for {data!r:.300}")
        assert len(log) >= 1


def test_the_clean_logs_read() -> None:
    read_or_refuse(read_log, b"\n".join(json.dumps(r).encode() for r in ROWS), ".jsonl")
    read_or_refuse(read_obd, (CSV_HEAD + "\n".join(CSV_ROWS)).encode(), ".csv")


SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@SETTINGS
@given(jsonl_logs())
def test_a_decision_log_with_a_mistake_is_read_or_refused_by_line(case: Any) -> None:
    read_or_refuse(read_log, case[0], ".jsonl")


@SETTINGS
@given(obd_logs())
def test_an_obd_csv_with_a_mistake_is_read_or_refused_by_line(case: Any) -> None:
    read_or_refuse(read_obd, case[0], ".csv")
