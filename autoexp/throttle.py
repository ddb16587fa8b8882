"""Saying something at most every so often: what can happen on every request (a request
failing open to control while the store is down) is counted each time, and logged at most
every :data:`SAY_EVERY_S` seconds, so an outage does not flood the log with a line per
request."""

from __future__ import annotations

import math
import time

__all__ = ["SAY_EVERY_S", "Throttle"]

SAY_EVERY_S = 10.0


class Throttle:
    """``due()`` is true at most once every ``every_s`` seconds (the first time, always).
    Not locked: two threads asking at the same instant may both be told yes (a line
    said twice), never neither."""

    def __init__(self, every_s: float = SAY_EVERY_S) -> None:
        self.every_s = every_s
        self._said = -math.inf

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._said < self.every_s:
            return False
        self._said = now
        return True
