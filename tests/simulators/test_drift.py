"""The drift scenario in the simulator (issue 7): the champion degrades at a known step, the
Page-Hinkley detector watching it reopens exploration, and the new best arm is promoted.
Detection delay against Wald's bound, false reopenings against Siegmund's approximation,
the new epoch's evidence counted afresh; config errors; no drift, no change."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from policies import OffPolicyCS, ThompsonBeta, TrafficCap
from policies.drift import PageHinkley
from simulators.config import ScenarioError, load_scenario, load_sweep, scenario
from simulators.envs import Bernoulli
from simulators.runner import Result, Scenario, run

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "drift.toml"
B = 2_000  # replicates
THRESHOLD = 20.0  # lower than the example's 25, so that false reopenings are measurable
TOL = 0.05
C = 3_000  # the change step: a 0.7 -> 0.3, b 0.4 -> 0.7, control 0.5
STEPS = 6_000
CHECK = 50  # refresh_every = check_every = 50: a reopening takes effect at the next multiple


def raw_scenario(**top: Any) -> dict[str, Any]:
    raw = tomllib.loads(EXAMPLE.read_text())
    raw.update(top)
    return raw


@pytest.fixture(scope="module")
def drift_run() -> Result:
    raw = raw_scenario(replicates=B, seed=11)
    raw["drift"] = {"tolerance": TOL, "threshold": THRESHOLD, "min_n": 30}
    spec = scenario(raw)
    assert spec.scenario.steps == STEPS and spec.scenario.env.at == C
    assert spec.scenario.refresh_every == spec.scenario.check_every == CHECK
    return run(spec.scenario)


def first_after_change(r: Result) -> tuple[np.ndarray, np.ndarray]:
    """Rows that detected a drop after the change, and the index of that detection."""
    assert r.drift_at is not None
    after = np.isfinite(r.drift_at) & (r.drift_at > C)
    rows = np.flatnonzero(after.any(axis=1))
    return rows, np.argmax(after[rows], axis=1)


def test_detection_delay_is_within_walds_bound(drift_run: Result) -> None:
    # A row's champion a serves everyone once promoted (at step P, from the test), so its
    # detector reads one reward per step: n0 = C - P at mean 0.7, then 0.3. After the
    # change the Page-Hinkley statistic climbs by mean_s - 0.3 - tolerance per reward,
    # the running mean being mean_s >= 0.3 + (m0 - 0.3) n0 / (n0 + s) after s post-change
    # rewards, with m0 >= 0.7 - 4 sqrt(0.21 / n0) (the mean of n0 Bernoulli(0.7), 4 SD).
    # Within S = 200 rewards the drift is so at least
    #   mu = (m0 - 0.3) n0 / (n0 + S) - tolerance > 0,
    # and the statistic starts >= 0 (reflected at 0), so by Wald's identity its mean time
    # to pass the threshold is at most (threshold + largest step) / mu, the largest step
    # being 1 (a 0 reward against a mean below 1). Rows whose champion was promoted at
    # least 1,000 steps before the change (n0 >= 1,000): assert every one detects within
    # S, and the mean delay + 4 SE <= the mean of the rows' bounds (E[delay_i] <= bound_i).
    r = drift_run
    assert r.epoch_promoted_at is not None and r.drift_at is not None
    rows, j = first_after_change(r)
    n0 = C - r.epoch_promoted_at[rows, j]  # the watched champion's promotion
    keep = n0 >= 1_000
    assert keep.mean() > 0.9, keep.mean()
    delay = r.drift_at[rows, j][keep] - C
    n0 = n0[keep]
    s_max = 200
    assert delay.max() <= s_max, delay.max()
    m0 = 0.7 - 4 * np.sqrt(0.21 / n0)
    mu = (m0 - 0.3) * n0 / (n0 + s_max) - TOL
    bound = (THRESHOLD + 1.0) / mu
    se = delay.std(ddof=1) / math.sqrt(delay.size)
    assert delay.mean() + 4 * se <= bound.mean(), (delay.mean(), se, bound.mean())
    # and the summary reports these delays (all rows, so the same or a little longer)
    s = r.summary()
    assert s["detect_delay_mean"] >= delay.min() and s["detect_delay_p50"] <= s["detect_delay_p90"]


def test_false_reopenings_match_siegmunds_approximation(drift_run: Result) -> None:
    # Before the change the watched champion a pays Bernoulli(0.7) (variance s2 = 0.21),
    # from its first promotion at P_i: e_i = C - P_i rewards (an upper bound on the
    # exposure: a row that reopened early watches less until it is promoted again).
    # Siegmund's approximation of the CUSUM's mean time to a false alarm,
    #   ARL0 = (exp(2 a) - 2 a - 1) / (2 tol^2 / s2),  a = tol * threshold / s2,
    # is 574,000 rewards here; with exponential run lengths a row's chance of a false
    # alarm is p_i = 1 - exp(-e_i / ARL0) (~0.45 % for e_i ~ 2,600). Assert the count of
    # rows with a detection at or before the change <= sum p_i + 4 binomial SE.
    r = drift_run
    assert r.drift_at is not None and r.epoch_promoted_at is not None
    s2 = 0.7 * 0.3
    a = TOL * THRESHOLD / s2
    arl0 = (math.exp(2 * a) - 2 * a - 1) / (2 * TOL**2 / s2)
    exposure = np.clip(C - r.epoch_promoted_at[:, 0], 0.0, None)
    p = 1.0 - np.exp(-exposure / arl0)
    false = (r.drift_at <= C).any(axis=1)
    bound = p.sum() + 4 * math.sqrt((p * (1 - p)).sum())
    assert false.sum() <= bound, (false.sum(), p.sum(), bound)
    assert r.summary()["false_reopen_rate"] == pytest.approx(false.mean())


def test_the_new_best_is_promoted_after_reopening(drift_run: Result) -> None:
    # After a reopening that follows the change, the epoch's evidence is all post-change:
    # a (0.3) is worse than control (0.5), so promoting it needs the off-policy confidence
    # sequence to miss, probability <= alpha = 0.05 per row (anytime-valid): assert the
    # share promoting a <= alpha + 4 binomial SE. The new epoch is the first one mirrored
    # (fresh state, the good arm 0.2 above control, the other arm below it), so b's
    # promotion within a horizon h should come at least as often as a's did from step 0
    # (F0(h), the empirical share): with h the shortest horizon any row had left, assert
    # the share promoting b >= F0(h) - alpha - 4 SE (both shares' binomial errors).
    r = drift_run
    assert r.epoch_arm is not None and r.epoch_promoted_at is not None and r.drift_at is not None
    rows, j = first_after_change(r)
    assert rows.size >= 0.95 * B
    assert r.best_arm == 2
    arm = r.epoch_arm[rows, j + 1]
    n = rows.size
    alpha = 0.05
    wrong = (arm == 1).mean()
    assert wrong <= alpha + 4 * math.sqrt(alpha * (1 - alpha) / n), wrong
    start = np.ceil(r.drift_at[rows, j] / CHECK) * CHECK  # the new epoch's first step
    h = STEPS - start.max()
    f0 = (r.epoch_promoted_at[:, 0] <= h).mean()
    got = (arm == 2).mean()
    se = math.sqrt(f0 * (1 - f0) / B + max(got * (1 - got), 1e-4) / n)
    assert got >= f0 - alpha - 4 * se, (got, f0, h)
    assert r.summary()["new_best_rate"] == pytest.approx(got)


def test_the_new_epoch_counts_only_fresh_evidence(drift_run: Result) -> None:
    # On reopening, the replicate's policy and test rows go back to their initial values:
    # the test's counts behind a later promotion (the promoted arm's and control's) come
    # from users served since the reopening only, so they cannot exceed them. Kept
    # counts would hold the first epoch's thousands of users.
    r = drift_run
    assert r.drift_at is not None
    reopened = [c for c in r.transitions if c.new == "reopened"]
    assert len(reopened) == int(np.isfinite(r.drift_at).sum())
    assert all(c.old == "promoted" and c.source == "page-hinkley" for c in reopened)
    assert all(c.statistic > THRESHOLD for c in reopened)
    last: dict[int, float] = {}
    checked = 0
    for c in r.transitions:  # in order of time
        if c.new == "reopened":
            last[c.row] = math.ceil(c.t / CHECK) * CHECK
        elif c.new == "promoted" and c.row in last:
            assert c.n_arm + c.n_control <= c.t - last[c.row], c
            checked += 1
    assert checked >= 0.9 * B


def test_without_drift_nothing_changes() -> None:
    # the same scenario with a detector that never fires (threshold 1e9) gives exactly the
    # results of the scenario without one: watching draws no randomness and changes no
    # state until a detection; and without [drift], the Result has no drift records and
    # its summary no drift keys
    raw = raw_scenario(replicates=200, seed=5, steps=2_000)
    raw.pop("drift")
    plain = run(scenario(raw).scenario)
    watched = run(scenario({**raw, "drift": {"threshold": 1e9}}).scenario)
    assert watched.epoch_arm is not None and (watched.epoch_arm[:, 0] >= 0).mean() > 0.9
    for name in (
        "regret loss_vs_control control_reward violated promoted_at promoted_arm "
        "rolled_back_at false_promotion missed_rollback harmful_pulls pulls steps "
        "allocation regret_curve regret_quantiles regret_sd"
    ).split():
        np.testing.assert_array_equal(getattr(plain, name), getattr(watched, name), name)
    assert plain.transitions == watched.transitions
    assert plain.drift_at is None and plain.epoch_arm is None
    assert set(watched.summary()) - set(plain.summary()) == set(watched.drift_summary())
    assert "reopen_rate" not in plain.summary()


def test_drift_true_takes_the_defaults_and_false_none() -> None:
    raw = raw_scenario(drift=True)
    assert scenario(raw).scenario.drift == PageHinkley()
    assert scenario(raw_scenario(drift=False)).scenario.drift is None


@pytest.mark.parametrize(
    ("drift", "match"),
    [
        ("yes", r"^drift: must be true or a table of tolerance, threshold, min_n \(got 'yes'\)"),
        ({"threshold": -1}, r"^drift\.threshold: must be finite and > 0"),
        ({"tolerance": -0.1}, r"^drift\.tolerance: must be finite and >= 0"),
        ({"min_n": 0}, r"^drift\.min_n: must be an integer >= 1"),
        ({"window": 3}, r"^drift\.window: unknown key; accepted: tolerance, threshold, min_n"),
    ],
)
def test_drift_config_errors_name_the_path(drift: Any, match: str) -> None:
    with pytest.raises(ScenarioError, match=match):
        scenario(raw_scenario(drift=drift))


def test_drift_needs_a_test(tmp_path: Path) -> None:
    raw = raw_scenario()
    raw.pop("test")
    with pytest.raises(ScenarioError, match=r"^drift: needs a \[test\]"):
        scenario(raw)
    path = tmp_path / "d.toml"
    path.write_text(EXAMPLE.read_text().replace("threshold = 25.0", "threshold = 0"))
    with pytest.raises(ScenarioError, match=rf"^{path}: drift\.threshold: must be finite"):
        load_scenario(path)
    sweep = tmp_path / "s.toml"
    sweep.write_text(f'base = "{EXAMPLE}"\n[grid]\n"drift.threshold" = [10.0, -1.0]\n')
    with pytest.raises(ScenarioError, match=r"cell 1 \(drift.threshold=-1.0\): drift\.threshold"):
        load_sweep(sweep)


def test_scenario_refuses_a_bad_detector() -> None:
    base: dict[str, Any] = {
        "env": Bernoulli(p=[0.5, 0.6]),
        "policy": TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
        "steps": 10,
    }
    with pytest.raises(TypeError, match=r"scenario\.drift: must be a PageHinkley"):
        Scenario(**base, test=OffPolicyCS(), drift="page-hinkley")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"scenario\.test: a drift detector needs"):
        Scenario(**base, drift=PageHinkley())
