"""What a demo run did, told: the narrative it prints, the plots and ``report.html``."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .story import COLOURS, PLOTS, VERSIONS, DemoResult

# --- what happened -----------------------------------------------------------------------


def _num(x: Any) -> str:
    """A signed difference, 3 decimals (tiny ones in full); ``None`` or inf: unbounded."""
    if x is None or not math.isfinite(float(x)):
        return "unbounded"
    return f"{x:+.3f}" if abs(x) >= 0.0005 or x == 0 else f"{x:+.1e}"


def _observed(result: DemoResult, until: float) -> dict[str, tuple[int, float]]:
    """Per version: outcomes in the log from decisions up to ``until``, and their mean."""
    out = {}
    for arm, v in enumerate(VERSIONS):
        got = [r["reward"] for r in result.rows if r["arm"] == arm and r["time"] <= until]
        got = [x for x in got if x is not None]
        out[v.name] = (len(got), sum(got) / len(got) if got else math.nan)
    return out


@dataclass(frozen=True)
class _Change:
    """One change, told: where, when, by what, on which evidence."""

    alternative: str
    new: str
    request: int
    seconds: float
    by: str
    estimate: float | None
    lower: float | None
    upper: float | None
    n_arm: int
    n_control: int
    seen_arm: float
    seen_control: float
    time: float


def _changes(result: DemoResult) -> list[_Change]:
    """The logged lifecycle changes, oldest first, told against the run's clock."""
    out = []
    for c in result.changes:
        if c.get("by") == "operator":  # the demo has none; a reused store might
            continue
        request, seconds = result.at(float(c["time"]))
        guard = str(c["reason"]).startswith("guardrail")
        lower, upper, estimate = c["lower"], c["upper"], c["estimate"]
        if guard:  # harm bounds, positive is worse: back to "alternative minus control"
            lower, upper = (None if x is None else -x for x in (c["upper"], c["lower"]))
            after = [look for look in result.looks if look[0] >= c["time"]] or result.looks[-1:]
            estimate = after[0][4][f"guardrail:{c['source']}"]["estimate"][c["arm"]]
        seen = _observed(result, float(c["time"]))
        by = f"the guardrail {c['source']!r}" if guard else f"the test {c['source']}"
        out.append(
            _Change(
                alternative=str(c["alternative"]),
                new=str(c["new"]),
                request=request,
                seconds=seconds,
                by=by,
                estimate=estimate,
                lower=lower,
                upper=upper,
                n_arm=int(c["n_arm"]),
                n_control=int(c["n_control"]),
                seen_arm=seen[str(c["alternative"])][1],
                seen_control=seen["control"][1],
                time=float(c["time"]),
            )
        )
    return out


def _traffic(result: DemoResult) -> dict[str, int]:
    """Decisions per version."""
    return {v.name: sum(r["arm"] == k for r in result.rows) for k, v in enumerate(VERSIONS)}


def narrative(result: DemoResult) -> str:
    """What happened and why, as printed at the end (and shown in the report)."""
    level = f"{1 - result.alpha:.0%}"
    head = f"{result.requests:,} requests in {result.seconds:.1f} s (seed {result.seed})"
    lines = [f"\nWhat happened, in {head}:"]
    changes = _changes(result)
    for c in changes:
        word = {"rolled_back": "ROLLED BACK", "promoted": "PROMOTED"}.get(c.new, c.new.upper())
        margin = f" (margin {result.margin:g})" if c.new == "promoted" else ""
        lines += [
            f"  {c.alternative:<8} {word} at request {c.request:,} ({c.seconds:.1f} s) by {c.by}:",
            f"           {c.alternative} minus control {_num(c.estimate)}, {level} confidence "
            f"sequence [{_num(c.lower)}, {_num(c.upper)}]{margin},",
            f"           on {c.n_arm:,} outcomes of {c.alternative} and {c.n_control:,} of "
            f"control (mean reward so far {c.seen_arm:.1%} vs {c.seen_control:.1%})",
        ]
    promoted = [c for c in changes if c.new == "promoted"]
    if promoted:
        after = [r["alternative"] for r in result.rows if r["time"] > promoted[0].time]
        lines.append(
            f"  After the promotion, {after.count(promoted[0].alternative):,} of the "
            f"{len(after):,} requests that followed went to {promoted[0].alternative}."
        )
    if not result.concluded:
        states = ", ".join(
            f"{v.name} {s}" for v, s in zip(VERSIONS, result.looks[-1][3], strict=True)
        )
        lines.append(f"  DID NOT CONCLUDE: {result.why_stopped}; now {states}.")
    traffic = _traffic(result)
    total = sum(traffic.values()) or 1
    lines.append(
        "\nTraffic: " + ", ".join(f"{k} {n:,} ({n / total:.1%})" for k, n in traffic.items())
    )
    n = result.counts
    lines.append(
        f"Proxy: {n.get('retried', 0):,} of harmful's 503s retried on control (the shopper got "
        f"a page, harmful a 0), {n.get('fail_open', 0):,} requests failed open to control, "
        f"{n.get('upstream_error', 0) + n.get('upstream_timeout', 0):,} upstream errors; "
        f"shoppers saw {result.failed:,} errors; {result.reported:,} outcomes reported."
    )
    base, best = VERSIONS[0].conversion, VERSIONS[1].conversion
    lines.append(
        f"Reward: shoppers bought {result.purchases:,} times in {result.answered:,} visits "
        f"({result.purchases / max(result.answered, 1):.1%}); control alone: about "
        f"{base * result.answered:,.0f} ({base:.0%}), better alone: about "
        f"{best * result.answered:,.0f} ({best:.0%})."
    )
    plots = ", ".join(f"{name}.png" for name in PLOTS)
    lines += [
        f"\nReport:       {result.report}  (plots beside it: {plots})",
        f"Decision log: {result.log}  ({len(result.rows):,} decisions with their rewards; "
        f"evaluate a policy on it offline: autoexp ope {result.log})",
        f"Config:       {result.config}  (autoexp proxy --config {result.config})",
        f"Store:        {result.db}",
    ]
    return "\n".join(lines)


# --- the report --------------------------------------------------------------------------


def _figure(rows: int = 1) -> tuple[Any, Any]:
    """A figure of ``rows`` panels sharing x (the simulators' size and resolution)."""
    from matplotlib.figure import Figure

    from simulators.plots import DPI, SIZE

    fig = Figure(figsize=(SIZE[0], SIZE[1] * (1 if rows == 1 else 1.5)), dpi=DPI)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from simulators.plots import DPI

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    fig.clear()
    return path


def _mark(ax: Any, changes: list[_Change], right: float) -> None:
    """A dashed line at each change, labelled (to its left near the right edge)."""
    for i, c in enumerate(changes):
        colour = COLOURS.get(c.alternative, "#444444")
        ax.axvline(c.request, color=colour, ls="--", lw=1.2)
        left = c.request > 0.75 * right
        ax.annotate(
            f"{c.alternative} {c.new.replace('_', ' ')}",
            (c.request, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-3 if left else 3, -12 - 13 * i),
            textcoords="offset points",
            ha="right" if left else "left",
            color=colour,
            fontsize=9,
            fontweight="bold",
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85},
        )


def _plot_allocation(result: DemoResult, changes: list[_Change], path: Path) -> Path:
    """Each version's share of traffic at each refresh, stacked, control at the bottom."""
    import numpy as np

    fig, (ax,) = _figure()
    rows = result.history
    x = [result.at(h["time"])[0] for h in rows]
    alloc = np.array([h["allocation"] for h in rows]).T
    colours = [COLOURS[v.name] for v in VERSIONS]
    ax.stackplot(
        x, alloc, labels=[v.name for v in VERSIONS], colors=colours, alpha=0.85, step="post"
    )
    _mark(ax, changes, result.requests)
    ax.set(
        title="Allocation: the share of requests each version gets",
        xlabel="requests",
        ylabel="share of traffic",
        ylim=(0, 1),
        xlim=(0, max(result.requests, 1)),
    )
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, title="version")
    return _save(fig, path)


def _plot_reward(result: DemoResult, changes: list[_Change], path: Path) -> Path:
    """Cumulative reward per version and in total, against control's rate alone."""
    import numpy as np

    fig, (ax,) = _figure()
    arms = np.array([r["arm"] for r in result.rows], dtype=int)
    reward = np.array([r["reward"] or 0.0 for r in result.rows])
    x = np.arange(1, len(arms) + 1)
    for k, v in enumerate(VERSIONS):
        ax.plot(
            x,
            np.cumsum(np.where(arms == k, reward, 0.0)),
            color=COLOURS[v.name],
            lw=2,
            label=f"{v.name}",
        )
    ax.plot(x, np.cumsum(reward), color="black", lw=1.5, label="all versions")
    base = VERSIONS[0].conversion
    ax.plot(x, base * x, color="black", ls=":", lw=1.5, label=f"control alone ({base:.0%})")
    _mark(ax, changes, result.requests)
    ax.set(
        title="Cumulative reward (purchases credited in the decision log)",
        xlabel="decisions (requests to /shop)",
        ylabel="purchases",
    )
    ax.legend(loc="upper left", frameon=False)
    return _save(fig, path)


def _plot_evidence(result: DemoResult, changes: list[_Change], path: Path) -> Path:
    """Per alternative, the difference against control as the looks saw it: the test's
    estimate and confidence sequence, the guardrails' sequences, the true difference."""
    import numpy as np
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, axes = _figure(rows=len(VERSIONS) - 1)
    x = [look[1] for look in result.looks]
    guards = [key for key in result.looks[0][4] if key != "test"]

    def series(key: str, name: str, k: int) -> Any:
        values = [look[4][key][name][k] for look in result.looks]
        return np.array([np.nan if y is None else y for y in values], dtype=float)

    for ax, (k, v) in zip(axes, list(enumerate(VERSIONS))[1:], strict=True):
        colour = COLOURS[v.name]
        low, high = series("test", "lower", k), series("test", "upper", k)
        ax.fill_between(x, low, high, color=colour, alpha=0.25, lw=0)
        ax.plot(x, series("test", "estimate", k), color=colour, lw=2)
        for key in guards:
            for side in ("lower", "upper"):
                ax.plot(x, series(key, side, k), color=colour, ls="--", lw=1)
        true = v.value - VERSIONS[0].value
        ax.axhline(0.0, color="black", lw=0.8)
        ax.axhline(true, color="black", ls=":", lw=1.2)
        ax.annotate(
            f"true {true:+.2f}",
            (1.0, true),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            fontsize=8,
        )
        if k == 1:
            ax.axhline(result.margin, color="#1f77b4", ls="-.", lw=1)
        _mark(ax, [c for c in changes if c.alternative == v.name], result.requests)
        ax.set(ylim=(-0.6, 0.6), ylabel=f"{v.name} minus control")
    level = f"{1 - result.alpha:.0%}"
    grey = "#555555"
    handles = [
        Patch(color="#999999", alpha=0.5, label=f"{level} confidence sequence of the test"),
        Line2D([], [], color=grey, lw=2, label="the test's estimate"),
        *(
            Line2D([], [], color=grey, ls="--", label=f"{level} sequence of guardrail {g[10:]!r}")
            for g in guards
        ),
        Line2D([], [], ls=":", lw=1.2, color="black", label="true difference"),
        Line2D([], [], ls="-.", lw=1, color="#1f77b4", label=f"promotion margin {result.margin:g}"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False, fontsize=8)
    axes[0].set_title("Evidence: each alternative's reward minus control's, as it accrued")
    axes[-1].set(xlabel="requests", xlim=(0, max(result.requests, 1)))
    return _save(fig, path)


_CSS = """body{font:15px/1.45 system-ui,sans-serif;color:#222;max-width:1000px;margin:2em auto;
padding:0 1em}h2{margin-top:1.6em;border-bottom:2px solid #ddd}table{border-collapse:collapse;
margin:.6em 0}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:#f3f4f6}
td.n{text-align:right;font-variant-numeric:tabular-nums}figure{margin:1em 0 2em}
figure img{max-width:100%;border:1px solid #eee}figcaption,.note{color:#555;font-size:.9em}
pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:.85em}"""


def _table(head: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; numbers right-aligned."""

    def cell(x: Any) -> str:
        n = isinstance(x, int | float)
        text = f"{x:,}" if isinstance(x, int) else f"{x:.3g}" if isinstance(x, float) else str(x)
        return f"<td{' class=n' if n else ''}>{html.escape(text)}</td>"

    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(cell(x) for x in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def write_report(result: DemoResult) -> Path:
    """The plots, and ``report.html`` embedding them (self-contained)."""
    changes = _changes(result)
    plots = [
        (
            _plot_allocation(result, changes, result.out / "allocation.png"),
            "The share of requests each version got at each refresh of the proxy's allocation; "
            "dashed: the moment of each change.",
        ),
        (
            _plot_evidence(result, changes, result.out / "evidence.png"),
            "Each alternative's reward minus control's: the test's estimate and confidence "
            "sequence (band) and the guardrail's sequence (dashed), valid at every look. A "
            "change happens when a sequence leaves zero: above the margin promotes, a "
            "guardrail's or the test's below zero rolls back. Dotted: the true difference.",
        ),
        (
            _plot_reward(result, changes, result.out / "reward.png"),
            "Purchases credited to each version in the decision log, and in total, against "
            "what serving control alone would have made.",
        ),
    ]
    e = html.escape
    verdict = "concluded" if result.concluded else f"did not conclude ({result.why_stopped})"
    traffic = _traffic(result)
    seen = _observed(result, math.inf)
    level = f"{1 - result.alpha:.0%}"
    head = [*"version change request seconds by estimate".split(), f"{level} lower"]
    head += [f"{level} upper", "n version", "n control"]
    rows = []
    for c in changes:
        evidence = [_num(c.estimate), _num(c.lower), _num(c.upper), c.n_arm, c.n_control]
        rows.append([c.alternative, c.new, c.request, round(c.seconds, 1), c.by, *evidence])
    parts = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>autoexp demo</title>"
        f"<style>{_CSS}</style></head><body><h1>autoexp demo: {e(verdict)}</h1>",
        f"<p>{result.requests:,} requests in {result.seconds:.1f} s, seed {result.seed}. "
        "Shoppers requested a shop page through the autoexp proxy; each version converts "
        "at its own rate and the shop reported every visit's outcome to the proxy.</p>",
        "<h2>Versions</h2>",
        _table(
            ["version", "what it is", "decisions", "outcomes", "observed reward"],
            [
                [v.name, v.story, traffic[v.name], seen[v.name][0], seen[v.name][1]]
                for v in VERSIONS
            ],
        ),
        "<h2>Changes</h2>",
        _table(head, rows or [["none", *[""] * (len(head) - 1)]]),
    ]
    for p, caption in plots:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{e(p.stem)}">'
            f"<figcaption>{e(caption)} ({e(p.name)} beside this page)</figcaption></figure>"
        )
    parts.append(f"<h2>What the demo printed</h2><pre>{e(narrative(result).strip())}</pre>")
    parts.append(
        f"<h2>The config</h2><pre>{e(result.config.read_text(encoding='utf-8'))}</pre>"
        '<p class="note">Beside this page: the PNGs, decisions.jsonl (every decision joined '
        "with its reward), demo.toml and demo.db (the SQLite store).</p></body></html>\n"
    )
    result.report.write_text("".join(parts), encoding="utf-8")
    return result.report
