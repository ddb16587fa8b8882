"""The deployment gate (:mod:`policies.gate`): under continuous monitoring a policy no
better than the current one is deployed with probability at most alpha; a better one is
deployed once there is enough data; rows that break the weight bound block deployment."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policies.gate import Gate, alpha_spent

# The devices of tests/autoexp/test_contextual.py: success probability of each arm by
# device (mobile, desktop, tablet), devices drawn 40/40/20, logging uniform (p = 1/3), so
# |pi_new - pi_cur| / p <= 3 = max_weight.
P = np.array([(0.2, 0.7, 0.2), (0.2, 0.2, 0.7), (0.5, 0.3, 0.3)])
SHARE = np.array([0.4, 0.4, 0.2])
UNIFORM = np.full((3, 3), 1 / 3)


def fixed(arms: list[int]) -> np.ndarray:
    """(3 devices, K) allocation of the policy playing ``arms[device]``."""
    out = np.zeros((3, 3))
    out[np.arange(3), arms] = 1.0
    return out


def value(policy: np.ndarray) -> float:
    return float(SHARE @ (policy * P).sum(axis=1))


def monitor(
    gate: Gate, new: np.ndarray, cur: np.ndarray, reps: int, rows: int, seed: int, every: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Replicates of a uniformly logged stream; the gate checked after every ``every``
    rows. Whether each replicate ever deployed, and at which row (-1: never)."""
    rng = np.random.default_rng(seed)
    device = rng.choice(3, size=(reps, rows), p=SHARE)
    arm = rng.integers(0, 3, size=(reps, rows))
    reward = (rng.random((reps, rows)) < P[device, arm]).astype(np.float64)
    prop = np.full((reps, rows), 1 / 3)
    stats = gate.init(reps)
    ever = np.zeros(reps, dtype=bool)
    first = np.full(reps, -1)
    for s in range(0, rows, every):
        cut = slice(s, s + every)
        stats = gate.update(
            stats,
            arm[:, cut],
            reward[:, cut],
            prop[:, cut],
            new[device[:, cut]],
            cur[device[:, cut]],
        )
        now = gate.decide(stats)
        first[now & ~ever] = s + every
        ever |= now
    return ever, first


@pytest.mark.parametrize(
    ("new", "cur"),
    [
        # equal values (tablet: arms 1 and 2 both 0.3) but different policies: the
        # boundary of H0, where terms are noisy and the test is hardest
        (fixed([1, 2, 1]), fixed([1, 2, 2])),
        # a worse policy (0.22) than the logging one (0.367)
        (fixed([0, 0, 1]), UNIFORM),
    ],
    ids=["equal", "worse"],
)
def test_under_h0_continuous_monitoring_deploys_with_probability_at_most_alpha(
    new: np.ndarray, cur: np.ndarray
) -> None:
    # R = 2000 seeded replicates of 2000 rows, checked after every 20 rows (100 looks).
    # The sequence is anytime-valid: P(ever lower >= 0 | V(new) <= V(cur)) <= alpha.
    # Assert the rate <= alpha + 4 sqrt(alpha (1 - alpha) / R) = 0.0695 (4 Monte-Carlo SE).
    assert value(new) <= value(cur) + 1e-12
    alpha, reps = 0.05, 2000
    gate = Gate(alpha=alpha, max_weight=3.0, n_expected=1000.0)
    ever, _ = monitor(gate, new, cur, reps, 2000, seed=1)
    assert ever.mean() <= alpha + 4 * math.sqrt(alpha * (1 - alpha) / reps), ever.mean()


def test_a_worse_policy_is_never_deployed_even_at_a_generous_alpha() -> None:
    # alpha = 0.3, R = 1000: the bound still holds (rate <= 0.3 + 4 SE = 0.358), and a
    # policy 0.147 worse is far from the boundary: its rate is much smaller still.
    alpha, reps = 0.3, 1000
    gate = Gate(alpha=alpha, max_weight=3.0, n_expected=1000.0)
    ever, _ = monitor(gate, fixed([0, 0, 1]), UNIFORM, reps, 2000, seed=2, every=1)
    assert ever.mean() <= alpha + 4 * math.sqrt(alpha * (1 - alpha) / reps)


def test_a_better_policy_is_deployed_given_enough_data() -> None:
    # The per-device oracle (0.66) against uniform logging (0.367): a gap of 0.29 with
    # terms in [-1.5, 1.5]. Measured: every replicate deploys by ~250 rows. With R = 200,
    # a true power of 0.99 would put the observed rate below 0.95 with probability
    # < 1e-3 (binomial); assert >= 0.95 within 2000 rows, and that it took < 1000 rows
    # for the median replicate.
    reps = 200
    gate = Gate(alpha=0.05, max_weight=3.0, n_expected=1000.0)
    ever, first = monitor(gate, fixed([1, 2, 0]), UNIFORM, reps, 2000, seed=3)
    assert ever.mean() >= 0.95
    assert np.median(first[ever]) < 1000
    # and the estimate converges to the true difference
    assert value(fixed([1, 2, 0])) - value(UNIFORM) == pytest.approx(0.2933, abs=1e-3)


def test_a_margin_asks_for_more_than_not_worse() -> None:
    # Oracle vs always-arm-1 (0.42): gap 0.24. margin 0.3 > gap: a valid sequence never
    # reaches it more often than alpha; margin 0: deployed.
    reps = 300
    for margin, want_high in ((0.3, False), (0.0, True)):
        gate = Gate(alpha=0.05, margin=margin, max_weight=3.0, n_expected=1000.0)
        ever, _ = monitor(gate, fixed([1, 2, 0]), fixed([1, 1, 1]), reps, 2000, seed=4)
        if want_high:
            assert ever.mean() >= 0.95
        else:
            assert ever.mean() <= 0.05 + 4 * math.sqrt(0.05 * 0.95 / reps)


def test_rows_breaking_the_weight_bound_block_deployment() -> None:
    # A row whose weight exceeds max_weight with a term below its range makes the bound
    # unreliable: the gate then refuses, however good the rows after it look.
    gate = Gate(alpha=0.05, max_weight=3.0, n_expected=1000.0)
    new, cur = np.array([[[1.0, 0.0, 0.0]]]), np.array([[[0.0, 1.0, 0.0]]])
    # weight 10 on a reward of 0, below the running mean 0.5: term -5 < -1.5
    stats = gate.update(gate.init(), [[0]], [[0.0]], [[0.1]], new, cur)
    ev = gate.evaluate(stats)
    assert not ev.valid[0] and stats.n_unsafe[0] == 1
    # then rows where the new policy is better by 1 (arm 0 pays 1, arm 1 pays 0, each
    # logged with p = 0.5): terms near +1
    n = 200
    arm = np.tile([0, 1], n // 2)[None, :]
    rows = (arm, (arm == 0).astype(float), np.full((1, n), 0.5))
    many = (np.repeat(new, n, axis=1), np.repeat(cur, n, axis=1))
    stats = gate.update(stats, *rows, *many)
    assert gate.evaluate(stats).lower[0] > 0.1 and not gate.decide(stats)[0]
    assert gate.decide(gate.update(gate.init(), *rows, *many))[0]  # without it: deployed


def test_update_is_pure_and_row_by_row_equals_batched() -> None:
    gate = Gate(alpha=0.1, max_weight=3.0)
    rng = np.random.default_rng(6)
    n = 50
    arm = rng.integers(0, 3, (1, n))
    reward = rng.random((1, n))
    prop = np.full((1, n), 1 / 3)
    new = rng.dirichlet(np.ones(3), (1, n))
    cur = rng.dirichlet(np.ones(3), (1, n))
    start = gate.init()
    whole = gate.update(start, arm, reward, prop, new, cur)
    assert start.t[0] == 0  # not mutated
    step = start
    for i in range(n):
        c = slice(i, i + 1)
        step = gate.update(step, arm[:, c], reward[:, c], prop[:, c], new[:, c], cur[:, c])
    for a, b in zip(whole.to_dict().values(), step.to_dict().values(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_alpha_spending_sums_to_alpha() -> None:
    total = sum(alpha_spent(0.05, j) for j in range(1, 100_000))
    assert 0.0499 < total <= 0.05


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 1.0}, r"gate.alpha: must be in \(0, 1\) \(got 1.0\)"),
        ({"max_weight": 0.5}, r"gate.max_weight: must be finite and >= 1"),
        ({"n_expected": 0}, r"gate.n_expected"),
        ({"low": 1.0, "high": 0.0}, r"gate.high: must be finite bounds"),
        ({"margin": float("nan")}, r"gate.margin"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Gate(**kwargs)


def test_bad_rows_are_refused() -> None:
    gate = Gate()
    s = gate.init()
    one = np.array([[1 / 3, 1 / 3, 1 / 3]])[None]
    with pytest.raises(ValueError, match=r"reward must be in \[0.0, 1.0\]"):
        gate.update(s, [[0]], [[2.0]], [[0.5]], one, one)
    with pytest.raises(ValueError, match=r"propensity must be in \(0, 1\]"):
        gate.update(s, [[0]], [[1.0]], [[0.0]], one, one)
    with pytest.raises(ValueError, match=r"arm must be integers in 0..2"):
        gate.update(s, [[3]], [[1.0]], [[0.5]], one, one)
    with pytest.raises(ValueError, match=r"new rows must be probabilities"):
        gate.update(s, [[0]], [[1.0]], [[0.5]], one * 2, one)
    with pytest.raises(ValueError, match=r"must be \(1, N\)"):
        gate.update(s, [0], [1.0], [0.5], one, one)
