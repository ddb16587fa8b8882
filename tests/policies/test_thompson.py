"""Thompson sampling's exact allocation: edge cases of the quadrature."""

from __future__ import annotations

import numpy as np

from policies._kernels import beta_prob_best


def test_prob_best_is_never_negative() -> None:
    # A hopeless arm's quadrature used to round to about -6e-29 here (seen in the drift
    # simulator: the off-policy test then refused the propensities as not probabilities).
    p = beta_prob_best(np.array([[600.0, 200, 800]]), np.array([[300.0, 50, 560]]), 1.0, 1.0)
    assert p.min() >= 0.0 and abs(p.sum() - 1.0) < 1e-12
