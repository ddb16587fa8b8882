"""What every plot of :mod:`simulators.plots` shares: resolution and sizes, the palette
(control grey, the arms in tab10's other colours), the check of a
:class:`~simulators.runner.Result` and its arm names, and drawing on a ``Figure`` saved
through the Agg canvas (matplotlib imported inside, no pyplot and no global state).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .runner import Result

Names = Sequence[str] | None

__all__ = ["DPI", "FRONTIER_SIZE", "SIZE", "Names"]

#: Resolution and sizes (inches) of every plot: 100 dpi, so 800 x 450 px and 1100 x 600 px.
DPI = 100
SIZE = (8.0, 4.5)
FRONTIER_SIZE = (11.0, 6.0)

_RESULT_ATTRS = (  # what the report reads of a Result
    "regret loss_vs_control pulls steps allocation regret_quantiles regret_curve transitions"
).split()

#: The palette: control grey, the other arms in tab10's remaining colours, an accent.
_GREY = "#7f7f7f"
_TAB = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22"]
_TAB += ["#17becf"]  # tab10 without its grey, which is control's
_ACCENT = "#d62728"


def _arm_names(where: str, result: Result, arm_names: Names) -> list[str]:
    """Check ``result`` has what the report reads; the K arm names (default names if None)."""
    missing = [a for a in _RESULT_ATTRS if not hasattr(result, a)]
    if missing:
        raise ValueError(
            f"{where}: missing attributes {missing} (got {type(result).__name__}); "
            "a simulators.runner.Result is accepted"
        )
    k = np.shape(result.pulls)[-1]
    m = np.shape(result.steps)[0]
    if np.shape(result.allocation) != (m, k) or np.shape(result.regret_quantiles) != (m, 3):
        raise ValueError(
            f"{where}: allocation {np.shape(result.allocation)} and regret_quantiles "
            f"{np.shape(result.regret_quantiles)} must be ({m}, {k}) and ({m}, 3) for "
            f"{m} steps and {k} arms"
        )
    if arm_names is None:
        return ["control"] + [f"arm {i}" for i in range(1, k)]
    names = [str(a) for a in arm_names]
    if len(names) != k:
        raise ValueError(
            f"{where}: has {k} arms but arm_names has {len(names)} (got {names!r}); "
            "give one name per arm, control first"
        )
    return names


def _figure(size: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=DPI, layout="constrained")


def _save(fig: Figure, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = Path(path)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=DPI, format="png", metadata={"Software": None})
    fig.clear()  # a Figure outside pyplot is freed with its last reference; drop artists now
    return out
