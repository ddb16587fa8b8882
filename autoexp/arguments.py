"""Argument types for the command line: a number out of range is refused by argparse,
naming the flag (``argument --port: must be a port in [0, 65535] (got '70000')``), before
anything starts, rather than wrapped (a port taken modulo 65536), looped on (a negative
poll), or failing later inside (a negative seed)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

__all__ = ["PORT", "SEED", "bounded"]


def bounded(kind: type, low: float, what: str, high: float = math.inf) -> Callable[[str], Any]:
    """An argparse type: ``kind`` of the text, finite and in ``[low, high]``; ``what``
    says so in the error."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {what} (got {text!r})")
        return value

    return parse


PORT = bounded(int, 0, "a port in [0, 65535]", 65535)
# numpy's SeedSequence takes no negative entropy ("expected non-negative integer")
SEED = bounded(int, 0, "an integer >= 0")
