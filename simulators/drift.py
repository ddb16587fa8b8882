"""The runner's drift watch: each replicate's champion watched by a drop detector.

With ``Scenario.drift`` (a :class:`~policies.drift.PageHinkley`), after a promotion the
promoted arm's rewards that arrive from then on are fed to the detector in order, one
detector state per replicate (vectorised with masks); when it signals a drop, the runner
starts a new epoch in that replicate at the end of the segment (:meth:`Watch.reopen`, then
:func:`reset_rows` of the policy's, test's and guardrails' states). :meth:`Watch.arrays`
gives the records :class:`~simulators.runner.Result` keeps, and :func:`drift_summary` the
figures computed from them (time to detect, false reopenings, the new best's promotion).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from policies.base import FloatArray, IntArray
from policies.drift import DriftStats, PageHinkley
from policies.promotion import Transition

from .envs import AbruptChange, Delayed

if TYPE_CHECKING:
    from .runner import Result

BoolArray = npt.NDArray[np.bool_]

__all__ = ["Watch", "change_step", "drift_summary", "reset_rows"]


def drift_summary(result: Result) -> dict[str, float]:
    """The drift scenario's figures (``nan`` where undefined).

    ``reopen_rate``: share of replicates that reopened at least once. With a known
    change step ``c``: ``false_reopen_rate``, share with a detection at or before
    ``c`` (on the old means only); ``detected_rate``, share with one after ``c``;
    ``detect_delay_{mean,p50,p90,max}``: steps from ``c`` to the first detection
    after it (the champion's rewards since the change: it serves everyone);
    ``new_best_rate``: among replicates that reopened after ``c``, the share whose
    next epoch promoted the best arm (at the end); ``repromotion_steps_mean``: steps
    from that detection to that promotion (the reopening comes at the segment's end).
    """
    if result.drift_at is None or result.epoch_arm is None or result.epoch_promoted_at is None:
        raise ValueError("drift_summary: this result ran without a drift detector")
    at = result.drift_at
    out = {"reopen_rate": float(np.isfinite(at[:, 0]).mean())}
    c = result.change_at
    nan = float("nan")
    keys = (
        "false_reopen_rate detected_rate detect_delay_mean detect_delay_p50 "
        "detect_delay_p90 detect_delay_max new_best_rate"
    ).split()
    if c is None:
        return {**out, **dict.fromkeys(keys, nan), "repromotion_steps_mean": nan}
    after = np.isfinite(at) & (at > c)
    hit = after.any(axis=1)
    first = np.argmax(after, axis=1)  # the first detection after the change
    rows = np.flatnonzero(hit)
    delay = at[rows, first[rows]] - c
    q = np.quantile(delay, [0.5, 0.9]) if delay.size else np.full(2, nan)
    # the epoch that detection opened is first + 1
    arm = result.epoch_arm[rows, first[rows] + 1]
    when = result.epoch_promoted_at[rows, first[rows] + 1] - at[rows, first[rows]]
    done = arm >= 0
    return {
        **out,
        "false_reopen_rate": float((at <= c).any(axis=1).mean()),
        "detected_rate": float(hit.mean()),
        "detect_delay_mean": float(delay.mean()) if delay.size else nan,
        "detect_delay_p50": float(q[0]),
        "detect_delay_p90": float(q[1]),
        "detect_delay_max": float(delay.max()) if delay.size else nan,
        "new_best_rate": float((arm == result.best_arm).mean()) if rows.size else nan,
        "repromotion_steps_mean": float(when[done].mean()) if done.any() else nan,
    }


def change_step(env: Any) -> int | None:
    """The environment's known change step (:class:`~simulators.envs.AbruptChange`)."""
    base = env.env if isinstance(env, Delayed) else env
    return int(base.at) if isinstance(base, AbruptChange) else None


def reset_rows(state: Any, fresh: Any, rows: IntArray) -> Any:
    """``state`` with its ``rows`` replaced by ``fresh``'s (``rows.size`` rows, in order)."""
    flat, new = state.to_dict(), fresh.to_dict()
    for name, value in flat.items():
        value[rows] = new[name]
    return state.like(flat, copy=False)


class Watch:
    """Each replicate's drift watch (:class:`~policies.drift.PageHinkley`, vectorised):
    the arm it watches (-1: none, before a promotion), the detector's state, detections
    waiting for the segment's end, and the record of detections and promotions."""

    def __init__(self, detector: PageHinkley, b: int) -> None:
        self.detector = detector
        self.stats: DriftStats = detector.init(b)
        self.arm = np.full(b, -1, dtype=np.int64)
        self.fired = np.zeros(b, dtype=bool)
        self.fired_at = np.full(b, np.inf)
        self.epoch = np.zeros(b, dtype=np.int64)
        self.on = False  # whether any replicate is watching
        self.found: list[tuple[int, float]] = []  # (row, step) of each detection
        self.promotions: list[tuple[int, int, int, float]] = []  # (row, epoch, arm, step)

    def feed(
        self, arm: IntArray, reward: FloatArray, t: int, rows: BoolArray | None = None
    ) -> None:
        """Rewards (B,) of step ``t``: those of each row's watched arm go to the detector."""
        on = (self.arm == arm) & ~self.fired
        if rows is not None:
            on &= rows
        if not on.any():
            return
        self.stats = self.detector.update(self.stats, reward, on)
        hit = on & self.detector.detected(self.stats)
        if hit.any():
            self.fired |= hit
            self.fired_at[hit] = t + 1
            self.found.extend((int(r), float(t + 1)) for r in np.flatnonzero(hit))

    def promoted(self, row: int, arm: int, t: int) -> None:
        """Watch ``arm`` of ``row`` from its promotion at ``t`` on."""
        self.promotions.append((row, int(self.epoch[row]), arm, float(t)))
        self.arm[row] = arm
        self.on = True

    def reopen(self) -> tuple[IntArray, list[Transition]]:
        """The rows that detected a drop, now in a new epoch with the detector off, and a
        record of each reopening."""
        d, rows = self.detector, np.flatnonzero(self.fired)
        stat = d.statistic(self.stats)
        records = [
            Transition(
                row=int(r),
                arm=int(self.arm[r]),
                old="promoted",
                new="reopened",
                source=d.name,
                reason=(
                    f"the champion's reward dropped: Page-Hinkley statistic {stat[r]:.1f} > "
                    f"threshold {d.threshold:g} after {self.stats.n[r]:.0f} rewards since "
                    f"its promotion (mean {self.stats.mean[r]:.3f})"
                ),
                estimate=float(self.stats.mean[r]),
                lower=float("nan"),
                upper=float("nan"),
                statistic=float(stat[r]),
                boundary=float(d.threshold),
                n_arm=float(self.stats.n[r]),
                n_control=float("nan"),
                t=float(self.fired_at[r]),
            )
            for r in rows
        ]
        self.stats = reset_rows(self.stats, d.init(rows.size), rows)
        self.arm[rows] = -1
        self.fired[rows] = False
        self.fired_at[rows] = np.inf
        self.epoch[rows] += 1
        self.on = bool((self.arm >= 0).any())
        return rows, records

    def arrays(self) -> tuple[FloatArray, IntArray, FloatArray]:
        """(B, E) detection steps, (B, E + 1) each epoch's promoted arm and its step."""
        b, e = self.arm.size, max(int(self.epoch.max()), 1)
        at = np.full((b, e), np.inf)
        seen = np.zeros(b, dtype=np.int64)
        for r, step in self.found:
            at[r, seen[r]] = step
            seen[r] += 1
        arm = np.full((b, e + 1), -1, dtype=np.int64)
        when = np.full((b, e + 1), np.inf)
        for r, epoch, a, step in self.promotions:
            arm[r, epoch], when[r, epoch] = a, step
        return at, arm, when
