"""Off-policy evaluation: coverage on simulated logs, the Open Bandit sample, the readers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from simulators._ope_bounds import eb_path
from simulators.ope import (
    CANDIDATES,
    ESTIMATORS,
    LOG_COLUMNS,
    METHODS,
    Estimate,
    Log,
    arm_means,
    confidence_sequence,
    dr,
    evaluate_log,
    ips,
    read_any,
    read_log,
    read_obd,
    replay,
    snips,
)

OBD = Path(__file__).resolve().parent.parent / "data" / "open-bandit-dataset" / "all.csv"
MEANS = np.array([0.3, 0.5, 0.4, 0.6])
ALPHA = 0.05


def simulated_log(
    rng: np.random.Generator, logging: np.ndarray, n: int, means: np.ndarray = MEANS
) -> Log:
    arm = rng.choice(means.size, size=n, p=logging)
    reward = (rng.random(n) < means[arm]).astype(np.float64)
    return Log(arm=arm, propensity=logging[arm], reward=reward, n_arms=means.size)


def coverage(
    means: np.ndarray, logging: np.ndarray, policy: np.ndarray, n: int, logs: int, seed: int
) -> tuple[dict[tuple[str, str], float], dict[str, float]]:
    """Share of simulated logs whose interval covers the truth, per (estimator, method), and
    share whose running sequence covers it at every row, per estimator. The DR model is
    fitted on a separate log from the same logging policy."""
    truth = float(policy @ means)
    deterministic = policy.max() == 1.0 and bool(np.all(logging == logging[0]))
    names = [e for e in ESTIMATORS if e != "replay" or deterministic]
    rng = np.random.default_rng(seed)
    hits = dict.fromkeys([(e, m) for e in names for m in METHODS], 0)
    always = dict.fromkeys(names, 0)
    for _ in range(logs):
        log = simulated_log(rng, logging, n, means)
        model = np.tile(arm_means(simulated_log(rng, logging, n, means))[0], (n, 1))
        target = np.tile(policy, (n, 1))
        for method in METHODS:
            found = [
                ips(log, target, method=method),
                snips(log, target, method=method),
                dr(log, target, model, method=method),
            ]
            if deterministic:
                found.append(replay(log, np.full(n, int(np.argmax(policy))), method=method))
            for e in found:
                hits[e.estimator, method] += int(e.lower <= truth <= e.upper)
        for name in names:
            seq = confidence_sequence(log, target, estimator=name, model=model)
            always[name] += int(np.all((seq.lower <= truth) & (truth <= seq.upper)))
    return {k: v / logs for k, v in hits.items()}, {k: v / logs for k, v in always.items()}


@pytest.mark.parametrize(
    ("logging", "policy"),
    [
        (np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.1, 0.2, 0.3, 0.4])),
        (np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.0, 0.0, 0.0, 1.0])),
        (np.full(4, 0.25), np.array([0.0, 1.0, 0.0, 0.0])),
    ],
    ids=["stochastic", "deterministic", "uniform-log"],
)
def test_intervals_cover_the_true_value_at_the_stated_rate(
    logging: np.ndarray, policy: np.ndarray
) -> None:
    # 1,000 simulated logs of 2,000 rows with a known truth (sum_a policy[a] mean[a]): each
    # 95% interval must cover it in >= 0.95 - 4 SE of logs, SE = sqrt(0.95 * 0.05 / 1000),
    # and so must each running sequence at all 2,000 row counts at once (anytime validity).
    # The floor is 92.2%. Measured (seed 11): clt 94.4-95.5%; eb 99.7-100% (conservative;
    # 1.5-1.7x clt's width for IPS, DR and replay, 3.5-4.7x for SNIPS, whose interval
    # divides two sequences); the running sequences cover at every row in 97.7-100%.
    logs = 1000
    cover, always = coverage(MEANS, logging, policy, 2000, logs, seed=11)
    floor = 1 - ALPHA - 4 * math.sqrt(ALPHA * (1 - ALPHA) / logs)
    for key, rate in (cover | always).items():
        assert rate >= floor, (key, rate)


def test_rare_rewards_the_normal_interval_undercovers_and_the_sequence_does_not() -> None:
    # 0.5% clicks for the candidate (a deterministic arm among K = 9, means 0.1-0.9%),
    # uniform logging, 2,000 rows: ~222 matched rows and ~1.1 expected clicks among them.
    # With no matched click (probability p0 = (1 - 0.005 / 9)^2000 = 0.329) the IPS, SNIPS
    # and replay normal intervals are [0, 0], and DR's is q (1 - 9 m / n) +- 0.12 q (q the
    # model's mean for the arm, m the matched rows), which reaches 0.005 only if q > ~0.02
    # (5+ clicks in the model's ~222 rows: ~0.5%). So clt coverage <= 1 - p0 = 0.671, up to
    # 4 SE = 4 sqrt(p0 (1 - p0) / 1000) = 0.059 of Monte-Carlo error.
    # The sequences must still cover at >= 0.95 - 4 sqrt(0.95 0.05 / 1000) = 0.922, at the
    # last row and at every row. Measured (seed 5): clt 65.0% for all four estimators; eb
    # 100% (mean width 0.040 for IPS, DR and replay, 0.058 for SNIPS, against clt's 0.014);
    # running sequences 100%.
    means = np.linspace(0.001, 0.009, 9)
    policy = np.eye(9)[4]
    logs, n = 1000, 2000
    cover, always = coverage(means, np.full(9, 1 / 9), policy, n, logs, seed=5)
    p0 = (1 - 0.005 / 9) ** n
    ceiling = 1 - p0 + 4 * math.sqrt(p0 * (1 - p0) / logs)
    floor = 1 - ALPHA - 4 * math.sqrt(ALPHA * (1 - ALPHA) / logs)
    for (name, method), rate in cover.items():
        if method == "clt":
            assert rate <= ceiling < floor, (name, rate)
        else:
            assert rate >= floor, (name, rate)
    for name, rate in always.items():
        assert rate >= floor, (name, rate)


def eb_reference(x: np.ndarray, low: float, high: float, alpha: float, n_tune: float) -> np.ndarray:
    """The predictable plug-in empirical-Bernstein sequence, one term at a time in Python
    (Waudby-Smith and Ramdas 2023, Thm 2, with the bets of policies.sequential)."""
    c, log_a = high - low, math.log(2 / alpha)
    t = s1 = s2 = sl = slx = spv = 0.0
    out = []
    for xi in (x - low) / c:
        mean = s1 / t if t > 0 else 0.5
        var = (max(s2 - t * mean * mean, 0.0) + 0.25) / (t + 1)
        lam = min(math.sqrt(2 * log_a / (var * n_tune)), 0.5)
        psi = -math.log1p(-lam) - lam
        xhat = min(max(mean, 0.0), 1.0)
        t, s1, s2 = t + 1, s1 + xi, s2 + xi * xi
        sl, slx, spv = sl + lam, slx + lam * xi, spv + psi * (xi - xhat) ** 2
        lower = min(max((slx - spv - log_a) / sl, 0.0), 1.0)
        upper = min(max((slx + spv + log_a) / sl, 0.0), 1.0)
        out.append((low + lower * c, low + upper * c))
    return np.array(out)


def test_sequence_kernel_matches_the_reference() -> None:
    rng = np.random.default_rng(3)
    x = np.where(rng.random(500) < 0.1, rng.uniform(-2, 8, 500), 0.5)
    for n_tune in (500.0, 50.0):
        lower, upper = eb_path(x, -2.0, 8.0, 0.1, n_tune)
        np.testing.assert_allclose(np.c_[lower, upper], eb_reference(x, -2, 8, 0.1, n_tune))
    with pytest.raises(ValueError, match="outside their range"):
        eb_path(x, 0.0, 1.0, 0.1, 10.0)


def test_sequence_ends_at_the_estimate_and_scales_with_the_reward_range() -> None:
    rng = np.random.default_rng(4)
    log = simulated_log(rng, np.array([0.4, 0.3, 0.2, 0.1]), 300)
    target = np.tile([0.1, 0.2, 0.3, 0.4], (300, 1))
    model = np.tile(arm_means(log)[0], (300, 1))
    for e in (ips(log, target), snips(log, target), dr(log, target, model)):
        seq = confidence_sequence(log, target, estimator=e.estimator, model=model)
        assert seq.value.shape == seq.lower.shape == seq.upper.shape == (300,)
        assert (seq.value[-1], seq.lower[-1], seq.upper[-1]) == pytest.approx(e[1:4])
        assert e.method == "eb" and e.lower <= e.value <= e.upper
    # IPS, SNIPS and DR are equivariant under scaling the rewards and their range.
    big = Log(arm=log.arm, propensity=log.propensity, reward=5 * log.reward, n_arms=4)
    five = (0.0, 5.0)
    for e1, e5 in (
        (ips(log, target), ips(big, target, reward_range=five)),
        (snips(log, target), snips(big, target, reward_range=five)),
        (dr(log, target, model), dr(big, target, 5 * model, reward_range=five)),
    ):
        assert e5[1:5] == pytest.approx(tuple(5 * v for v in e1[1:5]))
    # Replay is equivariant under shifts too; before the first match it knows nothing.
    choice = np.full(300, 3)
    shifted = Log(arm=log.arm, propensity=log.propensity, reward=log.reward + 2, n_arms=4)
    e1, e2 = replay(log, choice), replay(shifted, choice, reward_range=(2.0, 3.0))
    assert e2[1:5] == pytest.approx((e1.value + 2, e1.lower + 2, e1.upper + 2, e1.se))
    seq = confidence_sequence(log, np.eye(4)[choice], estimator="replay")
    first = int(np.argmax(log.arm == 3))
    assert np.isnan(seq.value[:first]).all() and (seq.upper[:first] == 1.0).all()
    assert (seq.value[-1], seq.lower[-1], seq.upper[-1]) == pytest.approx(e1[1:4])


def test_open_bandit_sample_estimators_agree_within_their_intervals() -> None:
    # Best item per position on the first 5,000 rows (means shrunk towards the overall
    # click rate by 20.8 pseudo-rows, the mean rows per position and item), evaluated on the
    # last 5,000: it chooses items 38, 47 and 18 (1, 1 and 2 clicks in 18, 14 and 29 training
    # rows), and none of the 51 evaluation rows where the log showed them was clicked.
    # Measured (95%):
    #   ips    0       eb [0, 0.118]   clt [0, 0]
    #   snips  0       eb [0, 0.338]   clt [0, 0]
    #   dr     0.0118  eb [0, 0.133]   clt [-0.0021, 0.0257]
    #   replay 0       eb [0, 0.147]   clt [0, 0]   (51 rows)
    # (The exact fixed-n Clopper-Pearson upper bound for 0 clicks in 51 rows is 0.070: being
    # valid at every n, with empirical-Bernstein bets, costs a factor 1.7-2.1 here.)
    # The normal intervals of IPS, SNIPS and replay collapse to the point 0 and exclude
    # DR's estimate; the anytime-valid ones all have positive width, overlap pairwise and
    # contain every estimator's point estimate (0 sits on their lower bound).
    log = read_obd(OBD)
    report = evaluate_log(log, candidate="best-arm", split=0.5, seed=0)
    assert (report.n_train, report.n_test, report.notes) == (5000, 5000, ())
    assert report.choices == (
        "group 0 -> arm 38, group 1 -> arm 47, group 2 -> arm 18 (prior 20.8 rows)",
    )
    eb = [report.get(name, "eb") for name in ESTIMATORS]
    clt = [report.get(name, "clt") for name in ESTIMATORS]
    assert report.get("replay").n == 51
    for e in eb:
        assert e.upper - e.lower > 0.0, e
        for other in eb:
            assert max(e.lower, other.lower) <= min(e.upper, other.upper), (e, other)
            assert other.lower <= e.value <= other.upper, (e, other)
    collapsed = [(e.lower, e.upper) for e in clt if e.estimator != "dr"]
    assert collapsed == [(0.0, 0.0)] * 3
    assert not clt[0].lower <= report.get("dr", "clt").value <= clt[0].upper


def test_open_bandit_sample_logging_policy_value() -> None:
    # The dataset's own check: the uniform logging policy's value must be the observed click
    # rate. IPS and SNIPS (weights all 1) give it exactly; DR up to its model's noise, and
    # every interval, both methods, contains it.
    log = read_obd(OBD)
    assert (len(log), log.n_arms) == (10_000, 80)
    assert sorted(set(log.group.tolist())) == [0, 1, 2]  # type: ignore[union-attr]
    np.testing.assert_allclose(log.propensity, 1 / 80)
    assert float(log.reward.mean()) == pytest.approx(0.0038)
    for candidate in ("logging", "uniform"):
        report = evaluate_log(log, candidate=candidate)
        ctr = report.logged_mean
        assert ctr == pytest.approx(19 / 5000)
        assert report.get("ips").value == pytest.approx(ctr, rel=1e-12)
        assert report.get("snips").value == pytest.approx(ctr, rel=1e-12)
        assert {e.estimator for e in report.estimates} == {"ips", "snips", "dr"}
        for e in report.estimates:
            assert e.lower < ctr < e.upper, e


def test_evaluate_log_replicates_and_report() -> None:
    rng = np.random.default_rng(8)
    log = simulated_log(rng, np.full(4, 0.25), 1000)
    report = evaluate_log(log, candidate="best-arm", split=0.3, replicates=4, seed=2)
    assert (report.n_rows, report.n_train, report.n_test) == (1000, 300, 700)
    assert len(report.per_replicate) == len(report.choices) == 4
    # The summary is the mean over replicates of each figure.
    for e in report.estimates:
        same = [x for rep in report.per_replicate for x in rep if x[0] == e[0] and x[-1] == e[-1]]
        assert e.value == pytest.approx(float(np.mean([x.value for x in same])))
        assert e.upper == pytest.approx(float(np.mean([x.upper for x in same])))
    # Random splits differ between replicates; the same seed gives the same report.
    assert len({rep[0].value for rep in report.per_replicate}) > 1
    again = evaluate_log(log, candidate="best-arm", split=0.3, replicates=4, seed=2)
    assert again == report
    lines = report.table().splitlines()
    assert "means over 4 random splits" in lines and len(lines) == 5 + len(report.estimates)
    assert lines[-1].split()[:2] == ["replay", "clt"]
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["candidate"] == "best-arm" and len(data["estimates"]) == 8
    assert {(d["estimator"], d["method"]) for d in data["estimates"]} == {
        (e, m) for e in ESTIMATORS for m in METHODS
    }
    # Arm 0 is chosen on the first 3 rows and never played in the last 3: SNIPS and replay
    # are left out, and the notes say why.
    arm = np.array([0, 1, 2, 1, 2, 3])
    reward = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    tiny = evaluate_log(Log(arm=arm, propensity=np.full(6, 0.25), reward=reward, n_arms=4))
    snips_note = "left out: snips: the candidate puts no probability on any logged action"
    replay_note = "left out: replay: only 0 logged rows match the candidate"
    assert tiny.notes == tuple(
        f"{name} ({method}) {note}"
        for name, note in (("snips", snips_note), ("replay", replay_note))
        for method in METHODS
    )
    assert {e.estimator for e in tiny.estimates} == {"ips", "dr"}


def test_decision_log_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    rows = [
        dict.fromkeys(LOG_COLUMNS)
        | {"arm": 1, "propensity": 0.2, "reward": 1.0, "context": [0.5, 1.0]},
        dict.fromkeys(LOG_COLUMNS)
        | {"arm": 0, "propensity": 0.8, "reward": None, "context": [0.1, 0.2]},
        dict.fromkeys(LOG_COLUMNS)
        | {"arm": 2, "propensity": 0.5, "reward": 0.0, "context": [1.0, 2.0]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    log = read_log(path)
    assert log.arm.tolist() == [1, 2]  # no reward yet: skipped
    assert log.reward.tolist() == [1.0, 0.0]
    assert log.n_arms == 3 and log.context is not None and log.context.shape == (2, 2)
    assert read_log(path, n_arms=5).n_arms == 5
    assert read_any(path).arm.tolist() == [1, 2]
    assert len(read_any(OBD)) == 10_000


def test_bad_logs_and_inputs_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"arm": 0, "propensity": 0.5, "reward": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not JSON"):
        read_log(bad)
    bad.write_text('{"arm": 0, "reward": 1}\n')
    with pytest.raises(ValueError, match="missing"):
        read_log(bad)
    # each field checked where it is, by line: before, int("x") or an arm of 10**9 (an
    # estimator's arrays of a billion entries) came through as Python's own errors
    good = '{"arm": 0, "propensity": 0.5, "reward": 1}\n'
    for row, words in [
        ('{"arm": "x", "propensity": 0.5, "reward": 1}', r"bad\.jsonl:2: arm: must be an integer"),
        ('{"arm": 1000000000, "propensity": 0.5, "reward": 1}', r"bad\.jsonl:2: arm:"),
        ('{"arm": 1, "propensity": 0, "reward": 1}', r"bad\.jsonl:2: propensity: must be in"),
        ('{"arm": 1, "propensity": 0.5, "reward": "1"}', r"bad\.jsonl:2: reward: must be"),
        ("7", r"bad\.jsonl:2: a record must be a JSON object"),
    ]:
        bad.write_text(good + row + "\n")
        with pytest.raises(ValueError, match=words):
            read_log(bad)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not an Open Bandit Dataset CSV"):
        read_obd(other)
    with pytest.raises(ValueError, match=r"unknown log format \(suffix '\.txt'\); accepted"):
        read_any(tmp_path / "log.txt")
    one = np.array([0, 1])
    with pytest.raises(ValueError, match=r"log\.propensity"):
        Log(arm=one, propensity=np.array([0.5, 0.0]), reward=np.ones(2), n_arms=2)
    with pytest.raises(ValueError, match=r"log\.arm"):
        Log(arm=np.array([0, 2]), propensity=np.full(2, 0.5), reward=np.ones(2), n_arms=2)
    with pytest.raises(ValueError, match=r"log\.reward"):
        Log(arm=one, propensity=np.full(2, 0.5), reward=np.array([1.0, np.nan]), n_arms=2)
    log = Log(arm=one, propensity=np.full(2, 0.5), reward=np.array([1.0, 0.0]), n_arms=2)
    half = np.full((2, 2), 0.5)
    with pytest.raises(ValueError, match="target"):
        ips(log, np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="target"):
        ips(log, np.full((2, 2), 0.7))
    with pytest.raises(ValueError, match="replay"):
        replay(log, np.array([1, 0]), method="clt")
    with pytest.raises(ValueError, match=r"method: unknown \(got 'bootstrap'\); accepted: eb, clt"):
        ips(log, half, method="bootstrap")
    with pytest.raises(ValueError, match="alpha"):
        snips(log, half, alpha=1.0)
    with pytest.raises(ValueError, match="max_weight"):
        ips(log, half, max_weight=0.5)
    with pytest.raises(ValueError, match="model"):
        confidence_sequence(log, half, estimator="dr")
    with pytest.raises(ValueError, match="estimator: unknown"):
        confidence_sequence(log, half, estimator="ipw")
    with pytest.raises(ValueError, match="deterministic"):
        confidence_sequence(log, half, estimator="replay")
    # Rewards outside the stated range are refused, whatever the method.
    clicks = Log(arm=one, propensity=np.full(2, 0.5), reward=np.array([2.0, 0.0]), n_arms=2)
    for method in METHODS:
        with pytest.raises(ValueError, match=r"reward_range \[0, 1\] \(got 2\.0 in row 0\)"):
            ips(clicks, half, method=method)
    assert ips(clicks, half, reward_range=(0.0, 2.0)).upper <= 2.0
    with pytest.raises(ValueError, match="reward_range: must be"):
        ips(clicks, half, reward_range=(2.0, 0.0))
    with pytest.raises(ValueError, match=r"candidate: unknown \(got 'best'\); accepted: best-arm"):
        evaluate_log(log, candidate="best")
    for split in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"split: must be in \(0, 1\)"):
            evaluate_log(log, split=split)
    with pytest.raises(ValueError, match="split: leaves 0 rows"):
        evaluate_log(log, split=0.4)
    with pytest.raises(ValueError, match="replicates"):
        evaluate_log(log, replicates=0)
    assert set(CANDIDATES) == {"best-arm", "uniform", "logging"}
    assert Estimate("ips", 0.0, 0.0, 0.0, 0.0, 1).method == "clt"
