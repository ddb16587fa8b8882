"""The Page-Hinkley drop detector: false alarms on a stable stream and detection delay
after a drop, against theory; batch rows independent; masks; bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policies.drift import PageHinkley

PH = PageHinkley(tolerance=0.05, threshold=25.0, min_n=30)


def first_alarm(ph: PageHinkley, p: np.ndarray, rng: np.random.Generator, batch: int) -> np.ndarray:
    """Per replicate, the first step at which ``ph`` signals (-1: never) on Bernoulli
    rewards with success probability ``p[t]`` at step t."""
    s = ph.init(batch)
    first = np.full(batch, -1)
    for t, pt in enumerate(p):
        s = ph.update(s, (rng.random(batch) < pt).astype(np.float64))
        new = ph.detected(s) & (first < 0)
        first[new] = t
    return first


def test_false_alarms_on_a_stable_stream_match_siegmunds_approximation() -> None:
    # Bernoulli(0.6) for T = 10,000 steps, B = 2,000 replicates. Before a drop the
    # statistic is a CUSUM with drift -tolerance and variance s2 = 0.24 per step; Siegmund's
    # approximation of its mean time to a false alarm is
    #   ARL0 = (exp(2 a) - 2 a - 1) / (2 tol^2 / s2),  a = tol * threshold / s2,
    # (1.58 million steps here), so P(alarm within T) ~ T / ARL0 = 0.63 %. Assert the
    # measured rate <= that + 4 binomial standard errors (the approximation is close for
    # small per-step drift, as here).
    T, B = 10_000, 2_000
    s2 = 0.6 * 0.4
    a = PH.tolerance * PH.threshold / s2
    arl0 = (math.exp(2 * a) - 2 * a - 1) / (2 * PH.tolerance**2 / s2)
    expected = T / arl0
    alarms = first_alarm(PH, np.full(T, 0.6), np.random.default_rng(1), B) >= 0
    rate = alarms.mean()
    assert rate <= expected + 4 * math.sqrt(expected * (1 - expected) / B), (rate, expected)


def test_a_drop_is_detected_within_walds_bound() -> None:
    # 3,000 stable steps at 0.6, then 0.3. After the drop the statistic climbs by
    # mu = 0.3 - tolerance (less the running mean's lag, at most 0.3 * 600 / 3,000 over
    # 600 steps) per step, from >= 0 and reflected at 0, so by Wald's identity its mean
    # time to pass the threshold is at most (threshold + largest step) / mu, the largest
    # step being 1 (a 0 reward against a mean below 1). B = 1,000 replicates: assert the
    # mean delay + 4 SE is within the bound and every replicate detects within 600 steps.
    # Early alarms have P ~ 3,000 / ARL0 = 0.19 % each (see above): at most that many
    # + 4 binomial SE of the 1,000 (here 0.19 % * 1,000 + 4 * 1.4 = 7.5).
    B, t0 = 1_000, 3_000
    p = np.r_[np.full(t0, 0.6), np.full(600, 0.3)]
    first = first_alarm(PH, p, np.random.default_rng(2), B)
    s2 = 0.24
    a = PH.tolerance * PH.threshold / s2
    early = t0 * (2 * PH.tolerance**2 / s2) / (math.exp(2 * a) - 2 * a - 1)
    assert np.all(first >= 0)
    assert (first < t0).sum() <= B * early + 4 * math.sqrt(B * early * (1 - early))
    delay = first[first >= t0] - t0
    mu = 0.3 - PH.tolerance - 0.3 * 600 / t0
    bound = (PH.threshold + 1.0) / mu
    assert delay.mean() + 4 * delay.std(ddof=1) / math.sqrt(delay.size) <= bound, (
        delay.mean(),
        bound,
    )
    # and it is not free: no test can see a drop before threshold / (largest step) rewards
    assert delay.min() >= PH.threshold / (1 + PH.tolerance) - 1


def test_rows_are_independent_and_masks_skip_rows() -> None:
    rng = np.random.default_rng(3)
    x = (rng.random((500, 3)) < 0.5).astype(np.float64)
    together = PH.init(3)
    for row in x:
        together = PH.update(together, row)
    for j in range(3):
        alone = PH.init(1)
        for row in x:
            alone = PH.update(alone, row[j : j + 1])
        for name in ("n", "mean", "cusum", "peak"):
            assert getattr(together, name)[j] == pytest.approx(getattr(alone, name)[0])
    masked = PH.update(together, np.zeros(3), mask=np.array([True, False, False]))
    assert masked.n.tolist() == [501, 500, 500]
    assert masked.cusum[1:].tolist() == together.cusum[1:].tolist()
    # not additive: merging two streams' states is refused
    with pytest.raises(TypeError, match="not additive"):
        together + together


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"tolerance": -0.1}, "tolerance"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": math.inf}, "threshold"),
        ({"min_n": 0}, "min_n"),
        ({"min_n": True}, "min_n"),
    ],
)
def test_bad_parameters_are_refused(params: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PageHinkley(**params)  # type: ignore[arg-type]


def test_bad_observations_are_refused() -> None:
    with pytest.raises(ValueError, match=r"x must have shape \(2,\)"):
        PH.update(PH.init(2), np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        PH.update(PH.init(1), np.array([math.nan]))
