"""The throttle that keeps per-request events (failing open) to a log line every 10 s."""

from __future__ import annotations

import pytest

from autoexp.throttle import SAY_EVERY_S, Throttle


def test_due_at_most_once_every_period(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000.0]
    monkeypatch.setattr("autoexp.throttle.time.monotonic", lambda: now[0])
    throttle = Throttle()
    assert throttle.every_s == SAY_EVERY_S == 10.0
    said = []
    for t in (1_000.0, 1_000.0, 1_005.0, 1_009.999, 1_010.0, 1_019.0, 1_020.5, 1_030.4):
        now[0] = t
        said.append(throttle.due())
    # the first time; then once 10 s have passed since the last time said
    assert said == [True, False, False, False, True, False, True, False]
