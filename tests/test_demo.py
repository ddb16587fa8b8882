"""``autoexp demo``: the real command, end to end (upstreams on 127.0.0.1, the proxy, the
SQLite store, the shoppers), its story, its report and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoexp.cli import main
from autoexp.config import load_config
from autoexp.store.sqlite import SQLiteStore


@pytest.mark.timeout(120)
def test_the_demo_rolls_back_the_harmful_and_promotes_the_better(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The default command (seed 3, 300 requests/s): the harmful version (reward 0.05
    # against control's 0.30) is rolled back and the better one (0.45) promoted, in 3-30 s
    # of load. The load is concurrent, so the seed fixes the draws but not how they
    # interleave with the proxy's refreshes: that the story concludes is a power statement,
    # not a pinned trace. Its one way to miss: control's first outcomes running low let the
    # test promote before the guardrail has rolled harmful back, after which harmful gets
    # no traffic (the demo says so and exits 1). With a promotion margin of 0.05 that
    # happened in 1 of 188 runs measured when the demo was written (seed 7), then in a CI
    # run on 2026-11-30 (seed 3: promoted at request 432 on control's 20% of its first 170
    # outcomes). With the margin at 0.08 (true difference 0.15) the promotion needs about
    # twice the evidence: 34 of 34 runs concluded (seed 3 15 times, seeds 1-20), harmful
    # rolled back at requests 149 to 642 (median 347), better promoted at 841 to 8,550
    # (median 1,650), never closer than 199 requests after the rollback. A wrong change
    # (harmful promoted, better rolled back) needs a 95% confidence sequence to miss the
    # true difference: probability at most alpha = 5% per sequence (Howard et al. 2021),
    # far less with effects this large; it would fail here too.
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.db").write_bytes(b"a previous run's store")  # removed, and said so
    code = main(["demo", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert "removed the previous run's SQLite store" in captured.err
    assert "control 0%  better 100% (PROMOTED)  harmful 0% (rolled back)" in captured.err

    # the store says what happened, with the evidence that made it happen
    store = SQLiteStore(f"sqlite:///{out / 'demo.db'}")
    try:
        records = store.records("shop")
    finally:
        store.close()
    moves = {(r["alternative"], r["new"]): r for r in records if r["type"] == "transition"}
    assert set(moves) == {("harmful", "rolled_back"), ("better", "promoted")}
    promoted, rolled = moves["better", "promoted"], moves["harmful", "rolled_back"]
    assert promoted["source"] == "off-policy-cs" and promoted["lower"] > 0.08  # the margin
    if rolled["source"] == "conversion":  # the guardrail: harm bounds, positive is worse
        assert rolled["lower"] > 0.0 and rolled["reason"].startswith("guardrail conversion")
    else:  # the test: the difference's sequence entirely below zero
        assert rolled["source"] == "off-policy-cs" and rolled["upper"] < 0.0
    decisions = [r for r in records if r["type"] == "decision"]
    after = {r["alternative"] for r in decisions if r["time"] > promoted["time"]}
    assert after == {"better"}  # every decision after the promotion
    assert len(decisions) >= 300  # the demo's tail after the story concluded

    # what it printed: when, by what, on which evidence, what it cost, where the files are
    text = captured.out
    assert "harmful  ROLLED BACK at request" in text and "better   PROMOTED at request" in text
    assert text.count("95% confidence sequence [") == 2
    assert "better minus control +" in text and "harmful minus control -" in text
    assert "(margin 0.08)" in text and "outcomes of better and" in text
    assert "requests that followed went to better" in text
    assert "of harmful's 503s retried on control" in text and "shoppers saw 0 errors" in text
    assert "DID NOT CONCLUDE" not in text

    # the report, the log and the config beside it
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 3
    for name in ("allocation", "evidence", "reward"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"{name}.png" in page
    assert "autoexp demo: concluded" in page and "guardrail" in page
    rows = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    assert len(rows) == len(decisions)
    assert all(r["reward"] in (0.0, 1.0, None) and 0 < r["propensity"] <= 1 for r in rows)
    config = load_config(out / "demo.toml")  # reusable with `autoexp proxy --config`
    (spec,) = config.experiments
    assert spec.alternatives == ("control", "better", "harmful")
    assert config.proxy is not None and config.proxy.unit_header == "X-User-Id"


@pytest.mark.timeout(60)
def test_a_run_that_ends_before_the_story_exits_1_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 100 requests: too few for the promotion (its lower bound must pass the margin; the
    # earliest of the 188 runs measured came at request 390), so the run stops at the
    # bound, says it did not conclude, and still writes its report.
    out = tmp_path / "short"
    code = main(["demo", "--out", str(out), "--max-requests", "100", "--quiet", "--rate", "0"])
    captured = capsys.readouterr()
    assert code == 1
    assert "DID NOT CONCLUDE: --max-requests 100 reached" in captured.out
    assert "requests:" not in captured.err  # --quiet: no progress bar
    assert "autoexp demo: did not conclude" in (out / "report.html").read_text()


def test_an_out_that_is_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "taken"
    path.write_text("not a directory")
    assert main(["demo", "--out", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"autoexp demo: error: --out: not a directory (got {str(path)!r})" in err
    assert path.read_text() == "not a directory"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--max-requests", "5"], "argument --max-requests: must be an integer >= 100 (got '5')"),
        (["--timeout-s", "nan"], "argument --timeout-s: must be a number of seconds >= 1"),
        (["--rate", "-1"], "argument --rate: must be a number >= 0 (got '-1')"),
        (["--concurrency", "x"], "argument --concurrency: must be an integer >= 1 (got 'x')"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path / "never"), *option])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
