"""Numbers that come from outside (requests, rewards, config files, SDK calls), checked
the same way everywhere."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["finite"]


def finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite real number, else ``None``.

    A bool is not a number here, and neither is an integer too large for a float: JSON
    and TOML carry integers of any size, and ``float()`` or ``math.isfinite`` of one
    raises ``OverflowError`` instead of saying no.

    >>> finite(3), finite(0.5), finite(True), finite(float("nan")), finite(10**400)
    (3.0, 0.5, None, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None
