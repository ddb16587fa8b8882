"""Plots of simulation runs (PNG, matplotlib imported lazily).

For each :class:`~simulators.runner.Result`: :func:`plot_regret` (cumulative regret over
time with its spread), :func:`plot_allocation` (who got the traffic) and :func:`plot_loss`
(reward lost against control per replicate, against a budget); with a drift detector,
:func:`plot_drift` (each replicate's lifecycle state over time and the time to detect); for
several policies on one scenario, :func:`plot_compare` (their regret and reward per user
over time, with Monte-Carlo bands). For a sweep (a list of rows, one per cell, holding the
cell's parameters and its ``Result.summary()``):
:func:`plot_frontier`, expected regret against worst-case loss with the Pareto-optimal
cells (:func:`pareto`) labelled. :mod:`simulators.report` puts them in one page.

matplotlib is imported inside the plotting functions (``Figure`` and the Agg canvas, no
pyplot and no global state), so importing this module does not load it. The drift plots
live in :mod:`simulators.plots_drift`, the sizes, palette and figure helpers every plot
shares in :mod:`simulators._plot_base`; both are importable from here.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._plot_base import _ACCENT, _GREY, _TAB, _figure, _save
from ._plot_base import DPI as DPI
from ._plot_base import FRONTIER_SIZE as FRONTIER_SIZE
from ._plot_base import SIZE as SIZE
from ._plot_base import Names as Names
from ._plot_base import _arm_names as _arm_names
from .plots_drift import drift_states as drift_states
from .plots_drift import plot_drift

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .runner import Result

Rows = Sequence[Mapping[str, Any]]

__all__ = [
    "pareto",
    "plot_allocation",
    "plot_compare",
    "plot_drift",
    "plot_frontier",
    "plot_loss",
    "plot_ope",
    "plot_regret",
]


#: Keys of a sweep row the frontier reads (``Result.summary()`` provides them).
FRONTIER_KEYS = ("regret_mean", "loss_vs_control_p99", "steps_to_promotion_mean")

#: Readable labels and kinds (for formatting) of the summary's keys.
_METRICS: dict[str, tuple[str, str, str]] = {  # key: (label, short label, kind)
    "replicates": ("replicates", "replicates", "count"),
    "regret_mean": ("regret, mean (reward)", "regret mean", "num"),
    "regret_p99": ("regret, 99th percentile (reward)", "regret p99", "num"),
    "loss_vs_control_mean": ("loss vs control, mean (reward)", "loss mean", "num"),
    "loss_vs_control_p99": ("loss vs control, 99th percentile (reward)", "loss p99", "num"),
    "violation_rate": ("conservative constraint broken", "violated", "rate"),
    "promotion_rate": ("promoted an arm", "promoted", "rate"),
    "steps_to_promotion_mean": ("steps to promotion, mean (if promoted)", "steps to promo", "num"),
    "false_promotion_rate": ("promoted a worse arm", "false promo", "rate"),
    "missed_rollback_rate": ("missed a rollback", "missed rollback", "rate"),
    "harmful_pulls_mean": ("pulls of arms worse than control, mean", "harmful pulls", "num"),
    "control_reward_mean": ("control's reward alone, mean (reward)", "control reward", "num"),
    "seconds": ("wall time (s)", "seconds", "num"),
    "pulls_per_s": ("arm pulls per second", "pulls/s", "num"),
    "cell": ("cell", "cell", "count"),
    "reopen_rate": ("reopened exploration (drift detected)", "reopened", "rate"),
    "false_reopen_rate": ("reopened before the change (false alarm)", "false reopen", "rate"),
    "detected_rate": ("detected the change", "detected", "rate"),
    "detect_delay_mean": ("steps from the change to its detection, mean", "delay mean", "num"),
    "detect_delay_p50": ("steps from the change to its detection, median", "delay p50", "num"),
    "detect_delay_p90": ("steps from the change to its detection, 90%", "delay p90", "num"),
    "detect_delay_max": ("steps from the change to its detection, max", "delay max", "num"),
    "new_best_rate": ("promoted the new best after reopening", "new best", "rate"),
    "repromotion_steps_mean": ("steps from reopening to promotion, mean", "repromo", "num"),
}


def _check_rows(rows: Rows, required: Sequence[str]) -> None:
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence) or len(rows) == 0:
        raise ValueError(f"rows: must be a non-empty list of dicts, one per cell (got {rows!r})")
    first = rows[0]
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"rows[{i}]: must be a dict (got {type(row).__name__})")
        need = list(required) + [k for k in first if k not in required]
        missing = [k for k in need if k not in row]
        if missing:
            raise ValueError(
                f"rows[{i}]: missing keys {missing} (got {sorted(map(str, row))}); every row "
                f"needs {list(required)} and the keys of rows[0]"
            )


def _check_inputs(scenario: Any, results: Any, rows: Any) -> None:
    if results is None and rows is None:
        raise ValueError("results, rows: give results, rows or both (got neither)")
    if not isinstance(scenario, Mapping):
        raise ValueError(f"scenario: must be a dict (got {type(scenario).__name__})")


def _budget(budget: Any) -> float | None:
    value = None if budget is None else _number("budget", budget)
    if value is not None and not math.isfinite(value):
        raise ValueError(f"budget: must be a finite number (got {budget!r})")
    return value


def _number(where: str, value: Any) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        raise ValueError(f"{where}: must be a number (got {value!r})") from None


def _axes(title: str, xlabel: str, ylabel: str, steps: Any = None) -> tuple[Figure, Any]:
    fig = _figure(SIZE)
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if steps is not None:
        ax.set_xlim(0, max(float(steps[-1]), 1.0))
    return fig, ax


def plot_regret(
    result: Result, path: str | Path, *, title: str = "", arm_names: Names = None
) -> Path:
    """Cumulative regret over time: mean, median and the 5-95% band over replicates.

    Parameters
    ----------
    result, path : a :class:`~simulators.runner.Result`; where to write the PNG (800 x 450 px)
    title : shown above the plot
    arm_names : K names, control first (shown in a corner; checked against K)

    Returns
    -------
    Path : ``path``
    """
    names = _arm_names("result", result, arm_names)
    q = np.asarray(result.regret_quantiles, dtype=float)
    title = title or "Cumulative regret against the best arm present"
    fig, ax = _axes(title, "step (users served)", "cumulative regret (reward)", result.steps)
    band = {"color": "#1f77b4", "alpha": 0.2, "lw": 0, "label": "5–95% of replicates"}
    ax.fill_between(result.steps, q[:, 0], q[:, 2], **band)
    ax.plot(result.steps, q[:, 1], color="#1f77b4", ls="--", lw=1.2, label="median")
    mean = f"mean ({len(result.regret)} replicates)"
    ax.plot(result.steps, result.regret_curve, color="#08306b", lw=2.0, label=mean)
    ax.set_ylim(bottom=min(0.0, float(q[:, 0].min())))
    ax.legend(loc="upper left", frameon=False)
    corner = {"transform": ax.transAxes, "ha": "right", "fontsize": 8, "color": "#444444"}
    ax.text(0.99, 0.02, "arms: " + ", ".join(names), **corner)
    return _save(fig, path)


def plot_allocation(result: Result, path: str | Path, *, arm_names: Names = None) -> Path:
    """Mean share of traffic per arm over time, stacked (control at the bottom).

    Parameters
    ----------
    result, path : a :class:`~simulators.runner.Result`; where to write the PNG (800 x 450 px)
    arm_names : K names, control first

    Returns
    -------
    Path : ``path``
    """
    names = _arm_names("result", result, arm_names)
    ylabel = "share of traffic (mean over replicates)"
    fig, ax = _axes("Allocation over time", "step (users served)", ylabel, result.steps)
    colours = [_GREY] + [_TAB[i % len(_TAB)] for i in range(len(names) - 1)]
    alloc = np.asarray(result.allocation, dtype=float).T
    ax.stackplot(result.steps, alloc, labels=names, colors=colours, alpha=0.85)
    ax.set_ylim(0, 1)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, title="arm")
    return _save(fig, path)


def plot_loss(result: Result, path: str | Path, *, budget: float | None = None) -> Path:
    """Histogram of the reward lost against control per replicate, with its 99th percentile.

    Parameters
    ----------
    result, path : a :class:`~simulators.runner.Result`; where to write the PNG (800 x 450 px)
    budget : the allowed loss (reward); drawn with the share of replicates beyond it

    Returns
    -------
    Path : ``path``
    """
    _arm_names("result", result, None)
    budget = _budget(budget)
    loss = np.asarray(result.loss_vs_control, dtype=float)
    p99 = float(np.quantile(loss, 0.99))
    xlabel = "reward lost against control alone (reward; negative = gained)"
    fig, ax = _axes("Loss against control per replicate", xlabel, f"replicates (of {loss.size})")
    ax.hist(loss, bins=min(50, max(10, loss.size // 10)), color="#6baed6", edgecolor="white")
    ax.axvline(0.0, color="#444444", lw=0.8, label="0: same reward as control alone")
    ax.axvline(p99, color="#08306b", ls="--", lw=1.5, label=f"99th percentile = {p99:.4g}")
    if budget is not None:
        beyond = f"budget = {budget:.4g}: {(loss > budget).mean():.1%} of replicates beyond"
        ax.axvline(budget, color=_ACCENT, lw=2.0, label=beyond)
        ax.axvspan(budget, max(budget, float(loss.max())) + 1e-12, color=_ACCENT, alpha=0.08)
    fig.legend(loc="outside lower center", ncols=3, frameon=False, fontsize=9)
    return _save(fig, path)


def plot_compare(
    results: Mapping[str, Result],
    path: str | Path,
    *,
    title: str = "",
    oracle: float | None = None,
    references: Mapping[str, float] | None = None,
) -> Path:
    """Policies on one scenario: mean cumulative regret over time, each with its
    Monte-Carlo band (the mean +- 2 standard errors over replicates, ``2 sd / sqrt(B)``);
    with ``oracle``, a second panel of the expected reward per user so far.

    Regret is measured against the best arm for each user (its context), so
    ``oracle - regret(t) / t`` is an unbiased estimate of the expected reward per user over
    the first ``t`` users when ``oracle`` is the expected reward of that best arm (e.g.
    :meth:`simulators.envs.Segments.oracle_mean`); its band is the regret's divided by t.

    Parameters
    ----------
    results : label -> :class:`~simulators.runner.Result` (same scenario, same steps), each
        with ``regret_sd``
    path : where to write the PNG (1100 x 450 px with ``oracle``, else 800 x 450)
    title : shown above the plot
    oracle : the expected reward per user of the best arm for each user
    references : label -> reward per user, drawn as horizontal lines on the second panel
        (e.g. control's, the best single arm's)

    Returns
    -------
    Path : ``path``
    """
    if not isinstance(results, Mapping) or not results:
        raise ValueError(f"results: must be a non-empty dict of label -> Result (got {results!r})")
    for label, r in results.items():
        _arm_names(f"results[{label!r}]", r, None)
        if getattr(r, "regret_sd", None) is None:
            raise ValueError(
                f"results[{label!r}]: has no regret_sd; run it with simulators.runner.run"
            )
    oracle = None if oracle is None else _number("oracle", oracle)
    fig = _figure((11.0, 4.5) if oracle is not None else SIZE)
    axes = fig.subplots(1, 2 if oracle is not None else 1, squeeze=False)[0]
    ax = axes[0]
    if title:
        fig.suptitle(title)
    ax.set(
        title="Cumulative regret against the best arm for each user",
        xlabel="step (users served)",
        ylabel="cumulative regret (reward)",
    )
    for i, (label, r) in enumerate(results.items()):
        steps = np.asarray(r.steps, dtype=float)
        mean = np.asarray(r.regret_curve, dtype=float)
        half = 2.0 * np.asarray(r.regret_sd, dtype=float) / math.sqrt(len(r.regret))
        colour = _TAB[i % len(_TAB)]
        ax.fill_between(steps, mean - half, mean + half, color=colour, alpha=0.25, lw=0)
        ax.plot(steps, mean, color=colour, lw=1.8, label=str(label))
        if oracle is not None:
            axes[1].fill_between(
                steps,
                oracle - (mean + half) / steps,
                oracle - (mean - half) / steps,
                color=colour,
                alpha=0.25,
                lw=0,
            )
            axes[1].plot(steps, oracle - mean / steps, color=colour, lw=1.8)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    counts = sorted({len(r.regret) for r in results.values()})
    band = f"mean ± 2 SE over {' / '.join(map(str, counts))} replicates"
    ax.legend(loc="upper left", frameon=False, fontsize=9, title=band, title_fontsize=9)
    if oracle is not None:
        side = axes[1]
        side.set(
            title="Expected reward per user so far",
            xlabel="step (users served)",
            ylabel="reward per user",
        )
        side.axhline(
            oracle, color="black", lw=1.0, ls="--", label=f"each user's best arm ({oracle:.4g})"
        )
        styles = [":", "-.", (0, (1, 3))]
        for j, (label, value) in enumerate((references or {}).items()):
            v = _number(f"references[{label!r}]", value)
            style = styles[j % len(styles)]
            side.axhline(v, color=_GREY, lw=1.2, ls=style, label=f"{label} ({v:.4g})")
        side.set_xlim(left=0)
        side.grid(alpha=0.3)
        side.legend(loc="center right", frameon=False, fontsize=8, title="reward per user of")
    return _save(fig, path)


def pareto(rows: Rows, x: str, y: str) -> list[int]:
    """Indices of the rows no other row beats on both ``x`` and ``y`` (lower is better).

    A row is dominated when another is at most as large on both keys and smaller on one;
    equal rows do not dominate each other. Rows with a NaN in ``x`` or ``y`` are left out.

    Returns
    -------
    list[int] : in order of increasing ``x`` (then ``y``, then index)

    Examples
    --------
    >>> pareto([{"r": 1, "l": 5}, {"r": 2, "l": 2}, {"r": 3, "l": 3}, {"r": 4, "l": 1}],
    ...        "r", "l")
    [0, 1, 3]
    """
    _check_rows(rows, (x, y))
    pts = np.array(
        [[_number(f"rows[{i}].{k}", row[k]) for k in (x, y)] for i, row in enumerate(rows)]
    )
    ok = ~np.isnan(pts).any(axis=1)
    le = (pts[:, None, :] <= pts[None, :, :]).all(axis=2)  # le[j, i]: j <= i on both
    lt = (pts[:, None, :] < pts[None, :, :]).any(axis=2)
    dominated = (le & lt & ok[:, None]).any(axis=0)
    front = np.nonzero(ok & ~dominated)[0]
    return [int(i) for i in sorted(front, key=lambda i: (pts[i, 0], pts[i, 1], i))]


def _settings(row: Mapping[str, Any], params: Sequence[str]) -> str:
    """``thompson-beta, explore_share=0.05``: strings as they are, numbers with their key."""
    return ", ".join(
        str(row[p]) if isinstance(row[p], str) else f"{p}={_fmt(row[p])}" for p in params
    )


def plot_frontier(rows: Rows, params: Sequence[str], path: str | Path) -> Path:
    """The sweep frontier: expected regret against worst-case loss against control.

    Each cell is a point; colour is the mean steps to promotion (grey hollow: never
    promoted), marker shape the ``policy``/``test`` parameters when the sweep has them.
    Pareto-optimal cells (:func:`pareto`) are ringed, joined and numbered, and their
    settings listed at the right.

    Parameters
    ----------
    rows : one dict per cell with its ``params`` and :data:`FRONTIER_KEYS`
    params : the sweep's parameter keys
    path : where to write the PNG (1100 x 600 px)

    Returns
    -------
    Path : ``path``
    """
    _check_rows(rows, [*params, *FRONTIER_KEYS])
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    x, y, t = (
        np.array([_number(f"rows[{i}].{k}", r[k]) for i, r in enumerate(rows)])
        for k in FRONTIER_KEYS
    )
    kinds = [  # marker shape: the policy and test names (``policy``, ``policy.name``, ``test``)
        p
        for p in params
        if str(p).split(".")[0] in ("policy", "test") and all(isinstance(r[p], str) for r in rows)
    ]
    groups = [" / ".join(str(r[p]) for p in kinds) for r in rows]
    shapes = dict(zip(dict.fromkeys(groups), "osD^vPX*ph<>", strict=False))
    front = pareto(rows, *FRONTIER_KEYS[:2])
    fig = _figure(FRONTIER_SIZE)
    ax, side = fig.subplots(1, 2, width_ratios=[3.0, 1.2])
    timed = np.isfinite(t)
    norm = Normalize(float(t[timed].min()), float(t[timed].max())) if timed.any() else None
    mappable = None
    for g, marker in shapes.items():
        sel = np.array([gg == g for gg in groups])
        on = sel & timed
        if on.any():
            style = {"cmap": "viridis", "norm": norm, "edgecolors": "black", "linewidths": 0.4}
            mappable = ax.scatter(x[on], y[on], c=t[on], s=45, marker=marker, zorder=3, **style)
        off = sel & ~timed
        if off.any():
            hollow = {"facecolors": "none", "edgecolors": _GREY, "linewidths": 1.2}
            ax.scatter(x[off], y[off], s=45, marker=marker, zorder=3, **hollow)
    if mappable is not None:
        fig.colorbar(mappable, ax=ax, label="steps to promotion (mean)", pad=0.01)
    ax.plot(x[front], y[front], color=_ACCENT, lw=1.0, ls=":", zorder=2)
    ring = {"facecolors": "none", "edgecolors": _ACCENT, "linewidths": 1.6, "zorder": 4}
    ax.scatter(x[front], y[front], s=180, **ring)
    number = {"textcoords": "offset points", "color": _ACCENT, "fontweight": "bold", "zorder": 5}
    for n, i in enumerate(front, 1):
        off = (8, 6) if n % 2 else (8, -14)  # alternate sides, so neighbours' labels part
        ax.annotate(str(n), (x[i], y[i]), xytext=off, fontsize=9, **number)
    handles = [Line2D([], [], ls="", marker=m, color=_GREY, label=g) for g, m in shapes.items()]
    handles = handles if kinds else []
    if not timed.all():
        key: dict[str, Any] = {"ls": "", "marker": "o", "mfc": "none", "mec": _GREY}
        handles.append(Line2D([], [], label="never promoted", **key))
    ringed: dict[str, Any] = {"mfc": "none", "mec": _ACCENT, "color": _ACCENT, "ms": 11}
    handles.append(Line2D([], [], ls=":", marker="o", label="Pareto-optimal", **ringed))
    kind = " / ".join(kinds) or None
    ax.legend(handles=handles, loc="best", fontsize=8, title=kind, title_fontsize=8)
    ax.set_xlabel("expected regret (reward, mean over replicates)")
    ax.set_ylabel("worst-case loss against control (reward, 99th percentile)")
    unranked = int((np.isnan(x) | np.isnan(y)).sum())
    hidden = f" ({unranked} with NaN not shown)" if unranked else ""
    ax.set_title(f"Sweep frontier: {len(rows)} cells{hidden}, lower left is better")
    ax.grid(alpha=0.3)
    side.axis("off")
    shown = front[:18]
    lines = [f"{n}. " + _settings(rows[i], params) for n, i in enumerate(shown, 1)]
    if len(front) > len(shown):
        lines.append(f"... and {len(front) - len(shown)} more (see the table)")
    side.set_title("Pareto-optimal cells", fontsize=10, loc="left")
    text = "\n".join(textwrap.fill(s, 42, subsequent_indent="    ") for s in lines)
    side.text(0.0, 1.0, text, va="top", fontsize=8, transform=side.transAxes, linespacing=1.4)
    return _save(fig, path)


def _fmt(value: Any, kind: str = "num") -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "—"
        if kind == "rate":
            return f"{v:.1%}"
        if kind == "count" or (v.is_integer() and abs(v) < 1e15):
            return f"{v:,.0f}"
        return f"{v:,.0f}" if abs(v) >= 1e4 and math.isfinite(v) else f"{v:.4g}"
    return str(value)


def plot_ope(report: Any, path: str | Path) -> Path:
    """Each estimator's value and interval (anytime-valid and normal) for an off-policy
    report (:class:`simulators.ope.OPEReport`), beside the logged policy's mean reward."""
    est = list(report.estimates)
    if not est:
        raise ValueError("plot_ope: the report holds no estimate")
    fig = _figure((8.0, 0.5 * len(est) + 1.8))
    ax = fig.add_subplot()
    colours = {"eb": _TAB[0], "clt": _TAB[1]}
    labels = {"eb": "anytime-valid (empirical Bernstein)", "clt": "normal approximation"}
    seen: set[str] = set()
    for i, e in enumerate(reversed(est)):
        c = colours.get(e.method, _GREY)
        label = None if e.method in seen else labels.get(e.method, e.method)
        seen.add(e.method)
        ax.plot([e.lower, e.upper], [i, i], color=c, lw=3, solid_capstyle="butt", label=label)
        ax.plot([e.value], [i], "o", color="black", ms=4)
    ax.axvline(report.logged_mean, color=_GREY, ls="--", lw=1, label="logged policy's mean")
    ax.set_yticks(range(len(est)), [f"{e.estimator} ({e.method})" for e in reversed(est)])
    level = f"{1.0 - report.alpha:.0%}"
    ax.set(
        title=f"Off-policy value of {report.candidate}: estimates and {level} intervals",
        xlabel="policy value (mean reward)",
    )
    ax.grid(alpha=0.3, axis="x")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)
