"""Reports: valid, non-blank PNGs of the stated size; strict JSON and CSV that carry exactly
the runner's numbers; a self-contained, escaped HTML page; the Pareto set against a naive
reference; clear errors on bad input."""

from __future__ import annotations

import base64
import csv
import dataclasses
import gc
import json
import math
import re
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from policies import OffPolicyCS, ThompsonBeta, TrafficCap
from simulators.envs import Bernoulli
from simulators.plots import DPI, FRONTIER_SIZE, SIZE
from simulators.report import (
    pareto,
    plot_allocation,
    plot_frontier,
    plot_loss,
    plot_regret,
    write_report,
    write_summary,
)
from simulators.runner import Result, Scenario, run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"
PARAMS = ["policy", "test", "explore_share"]


@pytest.fixture(scope="module")
def result() -> Result:
    scenario = Scenario(
        env=Bernoulli(p=[0.3, 0.4]),
        policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.2),
        steps=500,
        replicates=50,
        test=OffPolicyCS(n_expected=500),
    )
    return run(scenario)


@pytest.fixture(scope="module")
def never_promoted(result: Result) -> Result:
    """The same run with no promotion at all: its mean steps to promotion is NaN."""
    b = result.regret.shape[0]
    return dataclasses.replace(
        result, promoted_at=np.full(b, np.inf), promoted_arm=np.full(b, -1), transitions=[]
    )


def three_arms(result: Result) -> Result:
    b, m = result.pulls.shape[0], result.steps.shape[0]
    return dataclasses.replace(result, pulls=np.ones((b, 3)), allocation=np.full((m, 3), 1.0 / 3.0))


def row(policy: str, test: str, share: float, regret: float, loss: float, t: float) -> dict:
    return {
        "policy": policy,
        "test": test,
        "explore_share": share,
        "regret_mean": regret,
        "regret_p99": 2 * regret,
        "loss_vs_control_mean": loss / 2,
        "loss_vs_control_p99": loss,
        "promotion_rate": 0.0 if math.isnan(t) else 0.5,
        "steps_to_promotion_mean": t,
        "replicates": 100.0,
        "seconds": 0.25,
    }


# regret (x) and worst-case loss (y); by hand, the frontier is rows 1, 0, 4, 3:
#   row 2 (12, 30) is beaten by row 0 (10, 30); row 5 (40, 10) by row 3 (40, 5);
#   row 1 and row 0 tie on nothing; row 6 has a NaN and cannot be ranked.
ROWS = [
    row("thompson-beta", "off-policy-cs", 0.2, 10.0, 30.0, 100.0),  # 0: pareto
    row("thompson-beta", "msprt", 0.2, 5.0, 50.0, 80.0),  # 1: pareto
    row("ucb1", "off-policy-cs", 0.2, 12.0, 30.0, 120.0),  # 2
    row("ucb1", "msprt", 0.05, 40.0, 5.0, math.nan),  # 3: pareto, never promoted
    row("thompson-beta", EVIL, 0.1, 20.0, 20.0, 300.0),  # 4: pareto
    row("ucb1", "msprt", 0.05, 40.0, 10.0, math.nan),  # 5
    row("ucb1", "msprt", 0.01, math.nan, 1.0, math.nan),  # 6
]
FRONT = [1, 0, 4, 3]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def assert_drawn(path: Path, size: tuple[float, float], coloured: float = 0.02) -> np.ndarray:
    from matplotlib.image import imread

    assert png_size(path) == (round(size[0] * DPI), round(size[1] * DPI))
    pixels = imread(path)[..., :3]
    assert pixels.var() > 0
    # Something beyond axes and text: a share of pixels neither white nor grey.
    colour = np.ptp(pixels, axis=-1) > 0.1
    assert colour.mean() > coloured, f"{path}: only {colour.mean():.2%} coloured pixels"
    return pixels


# --------------------------------------------------------------------------- import


def test_import_loads_no_matplotlib_and_plotting_uses_no_pyplot(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import simulators.report as r\n"
        "assert 'matplotlib' not in sys.modules, 'import loaded matplotlib'\n"
        "r.plot_frontier([{'p': 1, 'regret_mean': 1.0, 'loss_vs_control_p99': 2.0,\n"
        "                  'steps_to_promotion_mean': 3.0}], ['p'], sys.argv[1])\n"
        "assert 'matplotlib' in sys.modules\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'plotting loaded pyplot'\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "f.png")],
        check=True,
        timeout=120,
        capture_output=True,
    )
    png_size(tmp_path / "f.png")


# --------------------------------------------------------------------------- plots


def test_result_plots_are_pngs_of_the_stated_size_and_not_blank(
    result: Result, tmp_path: Path
) -> None:
    names = ["control", "new ranker"]
    paths = [
        plot_regret(result, tmp_path / "regret.png", title="t", arm_names=names),
        plot_allocation(result, tmp_path / "allocation.png", arm_names=names),
        plot_loss(result, tmp_path / "loss.png"),
    ]
    assert paths == [tmp_path / "regret.png", tmp_path / "allocation.png", tmp_path / "loss.png"]
    for path in paths:
        assert_drawn(path, SIZE)


def test_loss_plot_draws_the_budget(result: Result, tmp_path: Path) -> None:
    plain = assert_drawn(plot_loss(result, tmp_path / "a.png"), SIZE)
    budget = float(np.median(result.loss_vs_control))
    drawn = assert_drawn(plot_loss(result, tmp_path / "b.png", budget=budget), SIZE)
    # the budget line is red (#d62728): present only when a budget is given
    red = np.array([0xD6, 0x27, 0x28]) / 255

    def n_red(px: np.ndarray) -> int:
        return int((np.abs(px - red).max(axis=-1) < 0.05).sum())

    assert n_red(plain) == 0
    assert n_red(drawn) > 100


def test_frontier_is_a_png_of_the_stated_size(tmp_path: Path) -> None:
    assert_drawn(plot_frontier(ROWS, PARAMS, tmp_path / "f.png"), FRONTIER_SIZE)
    # all cells unpromoted (no colour scale) and a sweep without policy/test parameters
    rows = [{**r, "steps_to_promotion_mean": math.nan} for r in ROWS]
    # (grey hollow markers, red rings: few coloured pixels)
    path = plot_frontier(rows, ["explore_share"], tmp_path / "g.png")
    assert_drawn(path, FRONTIER_SIZE, coloured=0.001)
    # dotted parameter names, as sweep files give them, still pick the marker shapes
    dotted = [{("policy.name" if k == "policy" else k): v for k, v in r.items()} for r in ROWS]
    path = plot_frontier(dotted, ["policy.name", "test"], tmp_path / "h.png")
    assert_drawn(path, FRONTIER_SIZE)


def test_plots_leave_no_figure_behind(result: Result, tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    def n_figures() -> int:
        gc.collect()
        return sum(isinstance(o, Figure) for o in gc.get_objects())

    before = n_figures()
    for i in range(3):
        plot_regret(result, tmp_path / f"r{i}.png")
        plot_allocation(result, tmp_path / f"a{i}.png")
        plot_loss(result, tmp_path / f"l{i}.png", budget=1.0)
        plot_frontier(ROWS, PARAMS, tmp_path / f"f{i}.png")
    assert n_figures() == before


# --------------------------------------------------------------------------- pareto


def naive_pareto(points: list[tuple[float, float]]) -> set[int]:
    keep = set()
    for i, (xi, yi) in enumerate(points):
        if math.isnan(xi) or math.isnan(yi):
            continue
        beaten = any(
            xj <= xi and yj <= yi and (xj < xi or yj < yi)
            for j, (xj, yj) in enumerate(points)
            if j != i and not (math.isnan(xj) or math.isnan(yj))
        )
        if not beaten:
            keep.add(i)
    return keep


def test_pareto_by_hand() -> None:
    assert pareto(ROWS, "regret_mean", "loss_vs_control_p99") == FRONT
    assert pareto([{"x": 1, "y": 1}], "x", "y") == [0]
    # equal points do not dominate each other; a point equal on x and better on y does
    assert pareto([{"x": 1, "y": 2}, {"x": 1, "y": 2}, {"x": 1, "y": 3}], "x", "y") == [0, 1]


def test_pareto_against_a_naive_reference() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 25))
        pts = rng.integers(0, 6, size=(n, 2)).astype(float)  # small range: many ties
        pts[rng.random((n, 2)) < 0.05] = np.nan
        rows = [{"x": a, "y": b} for a, b in pts]
        got = pareto(rows, "x", "y")
        assert set(got) == naive_pareto([(a, b) for a, b in pts])
        assert [pts[i, 0] for i in got] == sorted(pts[i, 0] for i in got)


# --------------------------------------------------------------------------- summary


def strict_load(path: Path) -> Any:
    def reject(name: str) -> None:
        raise AssertionError(f"{path}: non-standard JSON literal {name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def same(a: Any, b: float) -> bool:
    return (a is None and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


def test_summary_json_carries_the_runner_numbers(
    result: Result, never_promoted: Result, tmp_path: Path
) -> None:
    results = {"capped": result, "never": never_promoted}
    scenario = {"steps": 500, "p": [0.3, 0.4], "limit": math.inf, "env": Bernoulli(p=[0.3, 0.4])}
    pj, pc = write_summary(
        tmp_path / "s.json", tmp_path / "s.csv", scenario=scenario, results=results
    )
    doc = strict_load(pj)
    assert set(doc) == {"scenario", "results", "sweep"}
    assert doc["scenario"]["limit"] is None  # inf -> null
    assert doc["scenario"]["p"] == [0.3, 0.4]
    assert isinstance(doc["scenario"]["env"], str)
    assert math.isnan(never_promoted.summary()["steps_to_promotion_mean"])
    for name, r in results.items():
        got = doc["results"][name]
        assert got["summary"].keys() == r.summary().keys()
        for key, value in r.summary().items():
            assert same(got["summary"][key], value), key
        assert got["summary"]["steps_to_promotion_mean"] is not None or name == "never"
        assert got["pulls_mean"] == pytest.approx(r.pulls.mean(axis=0).tolist())
        assert got["arms"] == ["control", "arm 1"]
        by_new = Counter(t.new for t in r.transitions)
        assert {k: sum(v.values()) for k, v in got["transitions"].items()} == dict(by_new)
    assert doc["results"]["never"]["summary"]["steps_to_promotion_mean"] is None
    assert doc["results"]["never"]["transitions"] == {}

    # deterministic: sorted keys, and the same bytes when written again
    text = pj.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    again = write_summary(
        tmp_path / "t.json", tmp_path / "t.csv", scenario=scenario, results=results
    )
    assert again[0].read_bytes() == pj.read_bytes()
    assert again[1].read_bytes() == pc.read_bytes()


def test_summary_csv_one_line_per_result(
    result: Result, never_promoted: Result, tmp_path: Path
) -> None:
    results = {"capped": result, "never": never_promoted}
    _, pc = write_summary(tmp_path / "s.json", tmp_path / "s.csv", scenario={}, results=results)
    with pc.open(newline="") as f:
        lines = list(csv.DictReader(f))
    assert [line["name"] for line in lines] == ["capped", "never"]
    assert list(lines[0]) == ["name", *result.summary()]
    for line, r in zip(lines, results.values(), strict=True):
        for key, value in r.summary().items():
            cell = line[key]
            assert (cell == "" and math.isnan(value)) or float(cell) == pytest.approx(value)
    assert lines[1]["steps_to_promotion_mean"] == ""  # NaN -> empty cell


def test_summary_of_a_sweep(tmp_path: Path) -> None:
    pj, pc = write_summary(tmp_path / "s.json", tmp_path / "s.csv", scenario={"a": 1}, rows=ROWS)
    doc = strict_load(pj)
    assert doc["results"] == {}
    assert len(doc["sweep"]) == len(ROWS)
    assert [i for i, r in enumerate(doc["sweep"]) if r["pareto"]] == sorted(FRONT)
    assert doc["sweep"][3]["steps_to_promotion_mean"] is None
    assert doc["sweep"][4]["test"] == EVIL  # data stays data in JSON
    with pc.open(newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == len(ROWS)
    assert list(lines[0]) == ["name", *ROWS[0], "pareto"]
    assert [line["name"] for line in lines] == [f"sweep[{i}]" for i in range(len(ROWS))]
    assert [i for i, line in enumerate(lines) if line["pareto"] == "1"] == sorted(FRONT)
    assert lines[6]["regret_mean"] == ""
    assert float(lines[2]["loss_vs_control_p99"]) == ROWS[2]["loss_vs_control_p99"]


# --------------------------------------------------------------------------- report


def test_report_is_self_contained_and_escaped(result: Result, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "report"
    page = write_report(
        out,
        title=f"Checkout {EVIL}",
        scenario={
            "env": {"kind": "bernoulli", "p": [0.3, 0.4]},
            "guardrails": [{"name": "conversion", "test": {"n_expected": 2000}}],
            EVIL: EVIL,
        },
        results={f"capped {EVIL}": result},
        rows=ROWS,
        params=PARAMS,
        arm_names=["control", EVIL],
        budget=5.0,
    )
    assert page == out / "report.html"
    text = page.read_text(encoding="utf-8")
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4  # regret, allocation, loss; frontier
    for png in pngs:
        uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
        assert uri in text, f"{png.name} is not embedded"
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert text.count(EVIL.replace("<", "&lt;").replace(">", "&gt;")) >= 4
    assert (out / "summary.json").is_file() and (out / "summary.csv").is_file()
    # the scenario, flattened to dotted keys
    for key, value in [("env.p", "0.3, 0.4"), ("guardrails[0].test.n_expected", "2000")]:
        assert re.search(rf"<td>{re.escape(key)}</td><td[^>]*>{value}</td>", text), key


def test_report_sweep_table_marks_and_orders_the_pareto_cells(tmp_path: Path) -> None:
    page = write_report(tmp_path, title="sweep", scenario={}, rows=ROWS, params=PARAMS)
    text = page.read_text(encoding="utf-8")
    table = text[text.index('<div class="sweep">') :]
    trs = re.findall(r"<tr( class=pareto)?><td[^>]*>([^<]*)</td><td>([^<]*)</td>", table)
    marked = [(mark, rank) for mark, rank, _ in trs]
    # Pareto cells first, numbered in order of regret, then the rest by regret (NaN last)
    assert marked == [(" class=pareto", str(n)) for n in range(1, 5)] + [("", "")] * 3
    order = [r["regret_mean"] for r in (ROWS[i] for i in FRONT)] + [12.0, 40.0]
    regrets = re.findall(r"<tr[^>]*>(?:<td[^>]*>[^<]*</td>){4}<td class=n>([^<]*)</td>", table)
    assert [float(v) for v in regrets[:6]] == order
    assert regrets[6] == "—"
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["frontier.png"]


def test_report_guesses_the_sweep_parameters(tmp_path: Path) -> None:
    text = write_report(tmp_path, title="t", scenario={}, rows=ROWS).read_text(encoding="utf-8")
    header = re.search(r'<div class="sweep"><table><tr>(.*?)</tr>', text)
    assert header is not None
    assert re.findall(r"<th>([^<]*)</th>", header.group(1))[:4] == ["Pareto #", *PARAMS]


# --------------------------------------------------------------------------- bad input


def test_bad_rows_raise(tmp_path: Path) -> None:
    f = tmp_path / "f.png"
    with pytest.raises(ValueError, match=r"rows: must be a non-empty list"):
        plot_frontier([], PARAMS, f)
    with pytest.raises(ValueError, match=r"rows: must be a non-empty list"):
        write_report(tmp_path / "r", title="t", scenario={}, rows=[])
    broken = [dict(r) for r in ROWS]
    del broken[2]["loss_vs_control_p99"]
    with pytest.raises(ValueError, match=r"rows\[2\]: missing keys \['loss_vs_control_p99'\]"):
        plot_frontier(broken, PARAMS, f)
    with pytest.raises(ValueError, match=r"rows\[0\]: missing keys \['alpha'\]"):
        plot_frontier(ROWS, [*PARAMS, "alpha"], f)
    with pytest.raises(ValueError, match=r"rows\[1\]\.x: must be a number"):
        pareto([{"x": 1, "y": 1}, {"x": "fast", "y": 2}], "x", "y")
    with pytest.raises(ValueError, match=r"rows\[3\]: must be a dict"):
        write_summary(tmp_path / "a", tmp_path / "b", scenario={}, rows=[*ROWS[:3], 5])
    assert not f.exists() and not (tmp_path / "r").exists()


def test_bad_results_raise(result: Result, tmp_path: Path) -> None:
    j, c = tmp_path / "s.json", tmp_path / "s.csv"
    with pytest.raises(ValueError, match=r"give results, rows or both"):
        write_summary(j, c, scenario={})
    with pytest.raises(ValueError, match=r"results: must be a non-empty dict"):
        write_summary(j, c, scenario={}, results={})
    with pytest.raises(ValueError, match=r"scenario: must be a dict"):
        write_summary(j, c, scenario=[1, 2], results={"a": result})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"results\['b'\]: missing attributes \['regret'"):
        write_summary(j, c, scenario={}, results={"b": object()})  # type: ignore[dict-item]
    # arm names for 2 arms, and a result with 3
    mixed = {"two": result, "three": three_arms(result)}
    with pytest.raises(ValueError, match=r"results\['three'\]: has 3 arms but arm_names has 2"):
        write_report(tmp_path / "r", title="t", scenario={}, results=mixed, arm_names=["c", "x"])
    with pytest.raises(ValueError, match=r"result: has 2 arms but arm_names has 3"):
        plot_regret(result, tmp_path / "x.png", arm_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"budget: must be a finite number"):
        plot_loss(result, tmp_path / "x.png", budget=math.nan)
    assert list(tmp_path.iterdir()) == []
    # without names, results of different arm counts are fine
    doc = strict_load(write_summary(j, c, scenario={}, results=mixed)[0])
    assert doc["results"]["three"]["arms"] == ["control", "arm 1", "arm 2"]
