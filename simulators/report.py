"""Reports of simulation runs: plots, a JSON/CSV summary and one self-contained HTML page.

:func:`write_summary` writes the numbers as strict JSON and CSV; :func:`write_report`
draws every applicable plot (:mod:`simulators.plots`: regret, allocation and loss per
result, and the drift plot for a scenario with a drift detector; the frontier for a sweep)
and writes an HTML page that embeds them, so the one file can be mailed or attached to a
ticket. Importing this module does not load matplotlib.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .plots import (
    _METRICS,
    FRONTIER_KEYS,
    Names,
    Rows,
    _arm_names,
    _budget,
    _check_inputs,
    _check_rows,
    _fmt,
    _number,
    pareto,
    plot_allocation,
    plot_drift,
    plot_frontier,
    plot_loss,
    plot_regret,
)

if TYPE_CHECKING:
    from .runner import Result

__all__ = [
    "pareto",
    "plot_allocation",
    "plot_drift",
    "plot_frontier",
    "plot_loss",
    "plot_regret",
    "write_report",
    "write_summary",
]


def _plain(value: Any) -> Any:
    """A JSON-safe copy: non-finite floats become None, arrays lists, other objects str."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, np.bool_, np.integer)):
        return value.item() if isinstance(value, np.generic) else value
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return str(value)


def _transition_counts(result: Result) -> dict[str, dict[str, int]]:
    """{new state: {reason (up to its first colon): count}}."""
    counts: Counter[tuple[str, str]] = Counter(
        (str(c.new), str(c.reason).split(":", 1)[0].strip()) for c in result.transitions
    )
    out: dict[str, dict[str, int]] = {}
    for (new, reason), n in sorted(counts.items()):
        out.setdefault(new, {})[reason] = n
    return out


def _summaries(results: Mapping[str, Result] | None, arm_names: Names) -> dict[str, Any]:
    if results is None:
        return {}
    if not isinstance(results, Mapping) or not results:
        raise ValueError(f"results: must be a non-empty dict of name -> Result (got {results!r})")
    out = {}
    for name, r in results.items():
        names = _arm_names(f"results[{name!r}]", r, arm_names)
        pulls = np.asarray(r.pulls, dtype=float).mean(axis=0)
        out[str(name)] = {
            "summary": r.summary(),
            "arms": names,
            "pulls_mean": pulls.tolist(),
            "transitions": _transition_counts(r),
        }
    return out


def write_summary(
    path_json: str | Path,
    path_csv: str | Path,
    *,
    scenario: Mapping[str, Any],
    results: Mapping[str, Result] | None = None,
    rows: Rows | None = None,
    arm_names: Names = None,
) -> tuple[Path, Path]:
    """Write the numbers: strict JSON (sorted keys, NaN and inf as null) and a CSV.

    The JSON holds ``scenario``; ``results``, per name: ``summary`` (``Result.summary()``),
    ``arms``, ``pulls_mean`` (per arm, mean over replicates) and ``transitions`` (counts
    by new state and reason); and ``sweep``: the rows, each with ``pareto`` (on the
    regret / worst-case loss frontier). The CSV has one line per result (``name`` is its
    name) and one per sweep row (``name`` is ``sweep[i]``); NaN and inf are empty cells.

    Parameters
    ----------
    path_json, path_csv : where to write
    scenario : a description of the scenario (values made JSON-safe: objects as ``str``)
    results : name -> :class:`~simulators.runner.Result`
    rows : sweep rows (parameters, ``Result.summary()`` keys, ``seconds``)
    arm_names : K names, control first, for every result

    Raises
    ------
    ValueError : neither results nor rows, or either is malformed
    """
    _check_inputs(scenario, results, rows)
    summaries = _summaries(results, arm_names)
    sweep: list[dict[str, Any]] = []
    if rows is not None:
        _check_rows(rows, FRONTIER_KEYS)
        front = set(pareto(rows, *FRONTIER_KEYS[:2]))
        sweep = [{**row, "pareto": i in front} for i, row in enumerate(rows)]
    doc = {"scenario": scenario, "results": summaries, "sweep": sweep}
    text = json.dumps(_plain(doc), sort_keys=True, indent=2, allow_nan=False)
    pj, pc = Path(path_json), Path(path_csv)
    pj.write_text(text + "\n", encoding="utf-8")

    lines = [{"name": n, **s["summary"]} for n, s in summaries.items()]
    lines += [{"name": f"sweep[{i}]", **row} for i, row in enumerate(sweep)]
    columns = list(dict.fromkeys(k for line in lines for k in line))
    with pc.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        for line in lines:
            writer.writerow({k: _cell(v) for k, v in line.items()})
    return pj, pc


def _cell(value: Any) -> Any:
    v = _plain(value)
    return "" if v is None else int(v) if isinstance(v, bool) else v


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
 max-width:1180px;margin:2em auto;padding:0 1em}
h1{font-size:1.7em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:2px solid #ddd}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f4f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.pareto td{background:#fdecea}.note{color:#555;font-size:.9em}
.sweep{max-height:640px;overflow:auto}.sweep td,.sweep th{white-space:nowrap}
.row{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}
figure{margin:1em 0 2em}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#444;font-size:.9em;max-width:900px}
"""


def _td(value: Any, kind: str = "num") -> str:
    num = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    return f"<td{' class=n' if num else ''}>{html.escape(_fmt(value, kind))}</td>"


def _label(key: str, short: bool = False) -> str:
    return _METRICS.get(key, (key, key))[int(short)]


def _kind(key: str) -> str:
    return _METRICS.get(key, (key, key, "num"))[-1]


def _flat(value: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in value.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out += _flat(v, key + ".")
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, Mapping) for x in v):
            out += [kv for i, x in enumerate(v) for kv in _flat(x, f"{key}[{i}].")]
        elif isinstance(v, (list, tuple, np.ndarray)):
            out.append((key, ", ".join(_fmt(x) for x in np.asarray(v, dtype=object).ravel())))
        else:
            out.append((key, v))
    return out


def _figure_html(path: Path, alt: str, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _table(head: Sequence[str], body: str) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _result_html(name: str, info: Mapping[str, Any], plots: Sequence[Path], b: Any) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><th>{e(_label(k))}</th>{_td(v, _kind(k))}</tr>" for k, v in info["summary"].items()
    )
    total = sum(info["pulls_mean"]) or 1.0
    arms = "".join(
        f"<tr><td>{e(a)}</td>{_td(p)}{_td(p / total, 'rate')}</tr>"
        for a, p in zip(info["arms"], info["pulls_mean"], strict=True)
    )
    trans = (
        "".join(
            f"<tr><td>{e(new)}</td><td>{e(reason)}</td>{_td(n)}</tr>"
            for new, reasons in info["transitions"].items()
            for reason, n in reasons.items()
        )
        or '<tr><td colspan="3">none</td></tr>'
    )
    captions = (
        f"Cumulative regret (reward) against the best arm present, by step. Solid: mean over "
        f"{b} replicates; dashed: median; band: 5–95% of replicates. A curve that flattens "
        "has stopped paying for exploration; a wide band means runs differ a lot.",
        "Mean share of traffic per arm at each step (stacked; sums to 1), control at the "
        "bottom. An arm's band growing to the top is a promotion; one shrinking to nothing "
        "was rolled back or starved.",
        "Reward lost against serving control alone, one count per replicate, over the whole "
        "run (negative: gained). Dashed line: 99th percentile, the loss exceeded in 1 run in "
        "100. Red line (if set): the budget, with the share of runs that lost more.",
        "Drift: left, the share of replicates in each lifecycle state over time (never "
        "promoted; an arm promoted; exploring again after the drift detector saw the "
        "champion's reward drop), the dashed line the environment's change. Right: steps "
        "from the change to its detection, one count per replicate that detected it.",
    )
    figs = "".join(
        _figure_html(p, f"{name}: {p.stem}", c)
        for p, c in zip(plots, captions[: len(plots)], strict=True)
    )
    tables = _table(["metric", "value"], rows) + _table(["arm", "pulls (mean)", "share"], arms)
    tables += _table(["transition to", "reason", "count"], trans)
    return f"<h2>{e(name)}</h2><div class=row>{tables}</div>{figs}"


def _sweep_html(rows: Rows, params: Sequence[str], plot: Path) -> str:
    e = html.escape
    front = pareto(rows, *FRONTIER_KEYS[:2])
    rank = {i: n for n, i in enumerate(front, 1)}
    regret = [_number(f"rows[{i}].regret_mean", r["regret_mean"]) for i, r in enumerate(rows)]
    rest = sorted(
        (i for i in range(len(rows)) if i not in rank),
        key=lambda i: (math.isnan(regret[i]), 0.0 if math.isnan(regret[i]) else regret[i], i),
    )
    metrics = [k for k in rows[0] if k not in params]
    same = [  # columns equal in every cell go to a note, so the table stays narrow
        k
        for k in metrics
        if len(rows) > 1 and k not in FRONTIER_KEYS and len({_fmt(r[k]) for r in rows}) == 1
    ]
    metrics = [k for k in metrics if k not in same]
    note = "; ".join(f"{_label(k)} {_fmt(rows[0][k], _kind(k))}" for k in same)
    head = "".join(f"<th>{e(k)}</th>" for k in ["Pareto #", *params]) + "".join(
        f'<th title="{e(_label(k))}">{e(_label(k, short=True))}</th>' for k in metrics
    )
    body = "".join(
        f"<tr{' class=pareto' if i in rank else ''}>"
        f"{_td(rank[i]) if i in rank else '<td></td>'}"
        + "".join(_td(rows[i][p]) for p in params)
        + "".join(_td(rows[i][k], _kind(k)) for k in metrics)
        + "</tr>"
        for i in [*front, *rest]
    )
    caption = (
        "Each point is one sweep cell: expected regret (x) against worst-case loss against "
        "control (99th percentile over replicates, y), both in reward; lower left is better. "
        "Colour: mean steps to promotion (grey hollow: never promoted). Marker: policy / "
        "test. Ringed, joined and numbered: Pareto-optimal cells (no other cell is lower on "
        "both axes); their settings are listed at the right and first in the table."
    )
    return (
        f"<h2>Sweep ({len(rows)} cells)</h2>{_figure_html(plot, 'sweep frontier', caption)}"
        '<p class="note">Pareto-optimal cells first (in order of regret), then the others '
        f"by expected regret.{' The same in every cell: ' + e(note) + '.' if note else ''}</p>"
        f'<div class="sweep"><table><tr>{head}</tr>{body}</table></div>'
    )


def _guess_params(row: Mapping[str, Any]) -> list[str]:
    """The keys that are not summary metrics (known ones, or ``*_mean``/``*_rate``/``*_p99``)."""
    metric = re.compile(r".*_(mean|rate|p\d+)$")
    return [k for k in row if k not in _METRICS and not metric.match(str(k))]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:40] or "result"


def write_report(
    out_dir: str | Path,
    *,
    title: str,
    scenario: Mapping[str, Any],
    results: Mapping[str, Result] | None = None,
    rows: Rows | None = None,
    params: Sequence[str] | None = None,
    arm_names: Names = None,
    budget: float | None = None,
) -> Path:
    """Write every applicable plot, ``summary.json``, ``summary.csv`` and ``report.html``.

    Per result: regret, allocation and loss plots (and the drift plot when the scenario
    had a drift detector); for a sweep: the frontier. The HTML is
    self-contained (plots as base64 data URIs, inline CSS, no script, no external link).

    Parameters
    ----------
    out_dir : created if missing; files in it are overwritten
    title : the page title
    scenario : a description of the scenario (shown as a table, keys flattened with dots)
    results : name -> :class:`~simulators.runner.Result`
    rows : sweep rows (parameters, ``Result.summary()`` keys, ``seconds``)
    params : the sweep's parameter keys (default: the first row's keys that are not
        summary metrics)
    arm_names : K names, control first, for every result
    budget : the allowed loss against control (reward), drawn on the loss plots

    Returns
    -------
    Path : the HTML file

    Raises
    ------
    ValueError : neither results nor rows, or any input malformed (checked before writing)
    """
    _check_inputs(scenario, results, rows)  # everything is checked before anything is written
    summaries = _summaries(results, arm_names)
    if rows is not None:
        if params is None and isinstance(rows, Sequence) and rows and isinstance(rows[0], Mapping):
            params = _guess_params(rows[0])
        _check_rows(rows, [*(params or []), *FRONTIER_KEYS])
    budget = _budget(budget)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "summary.json", out / "summary.csv")
    write_summary(*paths, scenario=scenario, results=results, rows=rows, arm_names=arm_names)

    e = html.escape
    parts = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{e(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>"
    ]
    scen = "".join(f"<tr><td>{e(k)}</td>{_td(v)}</tr>" for k, v in _flat(scenario))
    parts.append("<h2>Scenario</h2>" + _table(["setting", "value"], scen))
    for n, (name, r) in enumerate((results or {}).items()):
        stem = out / f"{n:02d}-{_slug(str(name))}"
        plots = [
            plot_regret(r, f"{stem}-regret.png", title=f"Regret: {name}", arm_names=arm_names),
            plot_allocation(r, f"{stem}-allocation.png", arm_names=arm_names),
            plot_loss(r, f"{stem}-loss.png", budget=budget),
        ]
        if getattr(r, "drift_at", None) is not None:
            plots.append(plot_drift(r, f"{stem}-drift.png", arm_names=arm_names))
        parts.append(_result_html(str(name), summaries[str(name)], plots, len(r.regret)))
    if rows is not None:
        frontier = plot_frontier(rows, params or [], out / "frontier.png")
        parts.append(_sweep_html(rows, params or [], frontier))
    parts.append(
        '<p class="note">Files next to this page: summary.json (all numbers, strict JSON), '
        "summary.csv (one line per result and per sweep cell), the plots as PNG.</p>"
        "</body></html>\n"
    )
    page = out / "report.html"
    page.write_text("".join(parts), encoding="utf-8")
    return page
