"""Plots of a drift scenario's runs (PNG, matplotlib imported lazily): each replicate's
lifecycle state over time (:func:`drift_states`) and the time to detect the change
(:func:`plot_drift`). Importable from :mod:`simulators.plots` too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._plot_base import _TAB, Names, _arm_names, _figure, _save

if TYPE_CHECKING:
    from policies.base import FloatArray

    from .runner import Result

__all__ = ["drift_states", "plot_drift"]


def drift_states(result: Result, steps: Any) -> tuple[FloatArray, list[str]]:
    """The share of replicates in each lifecycle state at each of ``steps`` (S,): (S, K + 2)
    with columns: exploring (never promoted), each arm promoted (K, control's stays 0),
    exploring again after a reopening; and the columns' names (``arm k`` for arms)."""
    if result.drift_at is None or result.epoch_promoted_at is None or result.epoch_arm is None:
        raise ValueError("result: ran without a drift detector (Scenario.drift)")
    t = np.asarray(steps, dtype=float)[:, None, None]
    d = (result.drift_at[None] <= t).sum(axis=2)  # (S, B) detections so far
    p = (result.epoch_promoted_at[None] <= t).sum(axis=2)  # promotions so far
    k = np.shape(result.pulls)[-1]
    champion = np.take_along_axis(result.epoch_arm[None], d[..., None], axis=2)[..., 0]
    state = np.where(p > d, champion, np.where(d > 0, k, -1)) + 1  # 0: never promoted
    share = np.stack([(state == j).mean(axis=1) for j in range(k + 2)], axis=1)
    return share, ["exploring", *[f"arm {j}" for j in range(k)], "reopened, exploring"]


def plot_drift(result: Result, path: str | Path, *, arm_names: Names = None) -> Path:
    """Left: the share of replicates in each lifecycle state over time (stacked: never
    promoted, each arm promoted, exploring again after a drift reopened it), the
    environment's change step marked. Right: a histogram of the time to detect (steps
    from the change to the first detection after it), or of the detection steps when the
    change step is not known.

    Parameters
    ----------
    result, path : a :class:`~simulators.runner.Result` of a scenario with a drift
        detector; where to write the PNG (1100 x 450 px)
    arm_names : K names, control first

    Returns
    -------
    Path : ``path``

    Raises
    ------
    ValueError : the result has no drift records
    """
    names = _arm_names("result", result, arm_names)
    end = float(result.steps[-1])
    grid = np.linspace(0.0, end, 400)
    share, _ = drift_states(result, grid)
    fig = _figure((11.0, 4.5))
    left, right = fig.subplots(1, 2, width_ratios=[1.4, 1.0])
    labels = ["exploring", *[f"{n} promoted" for n in names[1:]], "reopened, exploring"]
    colours = ["#c7c7c7", *[_TAB[i % len(_TAB)] for i in range(len(names) - 1)], "#fdd0a2"]
    shown = share[:, [0, *range(2, share.shape[1])]].T  # control is never promoted
    left.stackplot(grid, shown, labels=labels, colors=colours, alpha=0.9)
    left.set(xlim=(0, end), ylim=(0, 1), xlabel="step (users served)")
    left.set(ylabel=f"share of replicates (of {len(result.regret)})")
    left.set_title("Lifecycle state of each replicate")
    c = result.change_at
    if c is not None:
        left.axvline(c, color="black", ls="--", lw=1.2, label=f"change at step {c:,}")
    left.legend(loc="lower left", fontsize=8, framealpha=0.85)
    at = np.asarray(result.drift_at, dtype=float)
    right.grid(alpha=0.3)
    if c is not None:
        s = result.drift_summary()
        after = np.where(np.isfinite(at) & (at > c), at, np.inf).min(axis=1)
        delay = after[np.isfinite(after)] - c
        if delay.size:  # whole steps: one bin per step, or per few
            width = max(1, math.ceil((delay.max() - delay.min() + 1) / 40))
            bins = np.arange(delay.min(), delay.max() + width + 1, width) - 0.5
            right.hist(delay, bins=bins, color="#6baed6", edgecolor="white")
            mean = f"mean {s['detect_delay_mean']:.4g}, 90% {s['detect_delay_p90']:.4g}"
            right.axvline(s["detect_delay_mean"], color="#08306b", ls="--", label=mean)
            right.legend(loc="upper right", fontsize=8, framealpha=0.85)
        right.set(xlabel="steps from the change to its detection")
        right.set_title(
            f"Time to detect (detected in {s['detected_rate']:.1%})\nreopened before the "
            f"change {s['false_reopen_rate']:.1%}; new best promoted {s['new_best_rate']:.1%}",
            fontsize=9,
        )
    else:
        first = at[:, 0][np.isfinite(at[:, 0])]
        right.hist(first, bins=40, color="#6baed6", edgecolor="white")
        right.set(xlabel="step of the first detection")
        right.set_title("Detections (no known change step)", fontsize=9)
    right.set(ylabel="replicates")
    return _save(fig, path)
