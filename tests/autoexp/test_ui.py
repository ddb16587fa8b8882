"""The status page at /_autoexp/ui: its HTML and JSON after a real rollback (by a guardrail),
promotion and pause (by an operator), names from the config escaped, and the page in
headless Chromium: the script's re-render equals the server's, and a screenshot shows the
allocation chart and the state badges where and as large as the data says."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from autoexp.engine import Engine, ExperimentSpec
from autoexp.errors import StoreError
from autoexp.proxy.ui import BADGES, HEIGHT, MAX_POINTS, PLOT, SERIES, collect, render
from autoexp.store import open_store
from autoexp.store.memory import MemoryStore
from policies import ConservativeBudget, OffPolicyCS, ThompsonBeta, TrafficCap
from policies.greedy import EpsilonGreedy
from policies.safety import Guardrail
from tests.autoexp.conftest import Sidecar, free_port

SECRET = "u" * 32
TOKEN = "t" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# alternative names from the config that would run if they were not escaped
SCRIPT_NAME = '<script>document.body.dataset.pwned = "script"</script>'
IMG_NAME = '<img src=x onerror="document.body.dataset.pwned = 1">'


class Clock:
    """One second per simulated user, so the chart's time axis counts users."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def specs() -> list[ExperimentSpec]:
    checkout = ExperimentSpec(
        name="checkout",
        alternatives=("control", "fast-path", "big-button"),
        policy=TrafficCap(
            policy=ConservativeBudget(policy=EpsilonGreedy(epsilon=0.3), alpha=0.5, refresh=20),
            explore_share=0.6,
        ),
        test=OffPolicyCS(n_expected=500),
        guardrails=(Guardrail(name="success", harm="decrease", test=OffPolicyCS(n_expected=200)),),
        refresh_every=20,
    )
    ranker = ExperimentSpec(
        name="ranker",
        alternatives=("v1", SCRIPT_NAME, IMG_NAME),
        # parameters are shown under the names, escaped like them
        params=({}, {"depth": 2, "note": "<b>bold</b>"}, {"boost": 0.25}),
        policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.6),
        test=OffPolicyCS(n_expected=500),
        refresh_every=20,
    )
    fresh = ExperimentSpec(name="fresh", alternatives=("a", "b"), policy=ThompsonBeta())
    return [checkout, ranker, fresh]


def users(engine: Engine, clock: Clock, name: str, n: int, rates: tuple[float, ...]) -> None:
    rng = np.random.default_rng(len(engine.history(name)))
    for _ in range(n):
        clock.now += 1.0
        d = engine.decide(name)
        engine.reward(d, float(rng.random() < rates[d.arm]))


@pytest.fixture(scope="module")
def side() -> Iterator[Sidecar]:
    """checkout: fast-path always fails, so the guardrail rolls it back; later an operator
    promotes big-button. ranker: paused by an operator. fresh: no traffic, no test."""
    clock = Clock()
    engine = Engine(MemoryStore(), specs(), secret=SECRET, seed=7, clock=clock)
    rates = (0.5, 0.0, 0.55)
    for _ in range(150):  # 20 users at a time until the guardrail acts (within 3,000)
        users(engine, clock, "checkout", 20, rates)
        if engine.status("checkout")["status"][1] == "rolled_back":
            break
    assert engine.status("checkout")["status"] == ["exploring", "rolled_back", "exploring"]
    users(engine, clock, "checkout", 300, rates)
    users(engine, clock, "ranker", 300, (0.3, 0.35, 0.3))
    s = Sidecar(engine, admin_token=TOKEN)
    try:
        with httpx.Client(base_url=s.url, timeout=10, headers=AUTH) as http:
            r = http.post(
                "/_autoexp/admin/experiments/checkout/promote",
                json={"alternative": "big-button", "reason": "ship it <now>"},
            )
            assert r.status_code == 200, r.text
            r = http.post("/_autoexp/admin/experiments/ranker/pause", json={"reason": "incident"})
            assert r.status_code == 200, r.text
        users(engine, clock, "checkout", 200, rates)
        users(engine, clock, "ranker", 100, (0.3, 0.35, 0.3))
        yield s
    finally:
        s.close()


def get(side: Sidecar, path: str) -> httpx.Response:
    with httpx.Client(base_url=side.url, timeout=10) as http:  # no token: read-only
        return http.get(path)


def test_the_data_has_each_experiments_lifecycle(side: Sidecar) -> None:
    r = get(side, "/_autoexp/ui/data")
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    data = r.json()
    checkout, fresh, ranker = data["experiments"]
    assert [e["experiment"] for e in data["experiments"]] == ["checkout", "fresh", "ranker"]
    # the control's state reads "replaced" once an alternative is promoted: the
    # lifecycle's "exploring" showed it so at 0% of the traffic
    assert checkout["status"] == ["replaced", "rolled_back", "promoted"]
    assert ranker["status"][0] == "control"
    assert checkout["allocation"] == [0.0, 0.0, 1.0]
    assert "state" not in checkout  # the raw arrays stay out
    rollback, promotion = checkout["changes"]
    assert rollback["new"] == "rolled_back" and rollback["source"] == "success"
    assert rollback["reason"].startswith("guardrail success: harm") and rollback["lower"] > 0
    assert promotion["new"] == "promoted" and promotion["by"] == "operator"
    assert promotion["reason"] == "ship it <now>"
    # the history: the store's shared points (every replica's, kept across restarts;
    # "version" null, as no one replica's count): here one per refresh, fewer than
    # MAX_POINTS, as the fake clock moves HISTORY_SAVE_S between refreshes and each state
    # change is saved at once; through the states in their order
    history = checkout["history"]
    version = side.engine.status("checkout")["version"]
    assert len(history) == version and all(h["version"] is None for h in history)
    times = [h["time"] for h in history]
    assert times == sorted(times)
    order = ["exploring", "rolled_back"]
    assert [h["status"][1] for h in history] == sorted(
        (h["status"][1] for h in history), key=order.index
    )
    assert history[-1]["allocation"] == [0.0, 0.0, 1.0]
    assert set(checkout["evidence"]) == {"test", "guardrail:success"}
    assert checkout["evidence"]["guardrail:success"]["upper"][1] < 0  # fast-path harms
    assert checkout["budget"]["alpha"] == 0.5 and checkout["budget"]["remaining"] > 0
    assert ranker["paused"] and ranker["allocation"] == [1.0, 0.0, 0.0]
    assert [(c["action"], c["reason"]) for c in ranker["changes"]] == [("pause", "incident")]
    assert ranker["alternatives"][1] == SCRIPT_NAME  # data, not markup: JSON keeps it as is
    assert fresh["evidence"] == {} and fresh["changes"] == [] and fresh["budget"] is None
    assert len(fresh["history"]) == 1


def test_the_page_shows_it_escaped_and_self_contained(side: Sidecar) -> None:
    r = get(side, "/_autoexp/ui")
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/html; charset=utf-8"
    page = r.text
    main = experiments_of(page)
    data = get(side, "/_autoexp/ui/data").json()
    checkout = data["experiments"][0]
    # self-contained: one inline script, nothing loaded from elsewhere
    assert page.count("<script") == 1 and "src=" not in page.replace(html.escape(IMG_NAME), "")
    assert "http://" not in page and "https://" not in page
    # names from the config are text, never markup
    assert SCRIPT_NAME not in page and IMG_NAME not in page
    assert html.escape(SCRIPT_NAME) in page and html.escape(IMG_NAME) in page
    assert "ship it &lt;now&gt;" in page
    # an alternative's parameters under its name, as text
    assert "depth=2, note=&quot;&lt;b&gt;bold&lt;/b&gt;&quot;" in main and "<b>bold" not in page
    assert "boost=0.25" in main
    # each alternative's row: name, state, share, the test's interval, the last change
    rows = re.findall(r"<tr><td>(.*?)</tr>", main)
    assert len(rows) == 3 + 2 + 3
    fast = next(row for row in rows if "fast-path" in row)
    test = checkout["evidence"]["test"]
    shown = f"{test['estimate'][1]:+.3f} [{test['lower'][1]:+.3f}, {test['upper'][1]:+.3f}]"
    assert shown in fast and re.search(
        r"fast-path</td><td><span [^>]*>rolled_back</span></td><td>0\.0%<", fast
    )
    assert html.escape(checkout["changes"][0]["reason"]) in fast and "by rule success" in fast
    big = next(row for row in rows if "big-button" in row)
    assert re.search(r"big-button</td><td><span [^>]*>promoted</span></td><td>100\.0%<", big)
    assert "by operator" in big
    assert f"budget left {checkout['budget']['remaining']:.2f} (alpha 0.5, delta 0.05)" in main
    assert main.count("no conservative budget") == 2
    assert main.count(">paused</span>") == 1 and ">pause</span> by operator" in main
    assert main.count("<polygon") == 3 + 2 + 3  # one area per alternative


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/_autoexp/ui/nope", 404),
        ("GET", "/_autoexp/ui/data/checkout", 404),
        ("GET", "/_autoexp/uidata", 404),
        ("POST", "/_autoexp/ui", 405),
        ("POST", "/_autoexp/ui/data", 405),
    ],
)
def test_unknown_routes_and_methods(side: Sidecar, method: str, path: str, status: int) -> None:
    with httpx.Client(base_url=side.url, timeout=10) as http:
        assert http.request(method, path).status_code == status


def test_a_fresh_engine_and_a_failing_store_render() -> None:
    engine = Engine(MemoryStore(), specs()[2:], secret=SECRET, seed=1)
    try:
        data = collect(engine)
        page = experiments_of(render(data))
        assert page.count(">exploring</span>") == 1 and page.count(">control</span>") == 1
        assert page.count("50.0%") == 2
        assert "no conservative budget" in page and "difference vs control" not in page
        # a long history is thinned evenly, the first and the last refresh kept
        for _ in range(2 * MAX_POINTS):
            engine.refresh()
        history = collect(engine)["experiments"][0]["history"]
        versions = [h["version"] for h in history]  # the first, the start's, the store's
        assert len(versions) == MAX_POINTS and versions[0] is None
        assert versions[-1] == 2 * MAX_POINTS + 1
        assert set(np.diff(versions[1:])) == {2, 3}  # 600 steps in 299: evenly
        # no history yet, and the store failing while the changes are read
        data["experiments"][0]["history"] = []
        assert "no allocation yet" in render(data)

        def fail(name: str) -> Any:
            raise StoreError("store: connection refused")

        engine.changes = fail
        data = collect(engine)
        assert data["experiments"][0]["changes"] is None
        assert "store failing: store: connection refused" in render(data)
    finally:
        engine.close()


# --- in Chromium ---------------------------------------------------------------------


def chromium(tmp_path: Path, url: str, *args: str) -> str:
    """Run Debian's headless Chromium on ``url`` (loopback only) with ``args``; its stdout."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: install Debian's `chromium` package (CI does)")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--window-size=1200,900",
        *args,
        url,
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the browser and its helpers
            proc.communicate()
            pytest.fail(f"chromium did not finish within 60 s: {' '.join(command)}")
    if proc.returncode != 0:
        pytest.fail(f"chromium exited with {proc.returncode}: {err.decode()[-2000:]}")
    return out.decode()


def experiments_of(dom: str) -> str:
    found = re.search(r'<main id="experiments">(.*)</main>', dom, re.S)
    assert found is not None, dom[:2000]
    return found.group(1)


def test_the_script_re_renders_the_same_page(side: Sidecar, tmp_path: Path) -> None:
    url = f"{side.url}/_autoexp/ui"
    # at load: the server's rendering; after 6 s of virtual time: the script's, from the data
    served = chromium(tmp_path, url, "--dump-dom")
    refreshed = chromium(tmp_path, url, "--dump-dom", "--virtual-time-budget=6000")
    assert "data-refreshes" not in served
    assert re.search(r'<body data-refreshes="[1-9]">', refreshed), refreshed[:500]
    assert 'id="note"></span>' in refreshed  # no refresh error shown
    assert experiments_of(refreshed) == experiments_of(served)  # markup for markup
    text = experiments_of(refreshed)
    for words in ("checkout", "fast-path", ">rolled_back<", ">promoted<", "ship it &lt;now&gt;"):
        assert words in text
    # the names were shown as text by both renderers, and nothing of them ran
    assert html.escape(SCRIPT_NAME, quote=False) in text
    assert "pwned" not in re.search(r"<body[^>]*>", refreshed).group(0)


def test_an_experiment_waiting_for_its_store_is_shown_by_both_renderers(tmp_path: Path) -> None:
    # a proxy started while its store does not answer (nothing listens on the port)
    url = f"redis://127.0.0.1:{free_port()}/0?connect_timeout_s=0.2&socket_timeout_s=0.2"
    store = open_store(url)
    engine = Engine(store, specs()[1:2], secret=SECRET, seed=1, defer_start=True)
    side = Sidecar(engine)
    try:
        served = chromium(tmp_path, f"{side.url}/_autoexp/ui", "--dump-dom")
        refreshed = chromium(
            tmp_path, f"{side.url}/_autoexp/ui", "--dump-dom", "--virtual-time-budget=6000"
        )
        assert re.search(r'<body data-refreshes="[1-9]">', refreshed), refreshed[:500]
        assert experiments_of(refreshed) == experiments_of(served)
        text = experiments_of(served)
        assert "<h2>ranker</h2>" in text and "no experiments" not in text
        assert "not started yet, its store has not answered since this process started" in text
        assert "Redis failed: Error 111 connecting to 127.0.0.1:" in text
        assert "its requests go to control" in text
    finally:
        side.close()
        store.close()


def bands(pixels: np.ndarray, colors: list[np.ndarray]) -> list[tuple[int, int]]:
    """Row ranges [start, stop) where at least half the plot's width is one of ``colors``:
    the charts (the stacked areas fill the plot), top to bottom."""
    mask = np.zeros(pixels.shape[:2], dtype=bool)
    for c in colors:
        mask |= (pixels == c).all(axis=2)
    full = mask.sum(axis=1) >= PLOT // 2
    edges = np.flatnonzero(np.diff(np.r_[0, full.astype(int), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def test_a_screenshot_shows_the_allocation_and_the_states(side: Sidecar, tmp_path: Path) -> None:
    from PIL import Image

    data = get(side, "/_autoexp/ui/data").json()
    checkout = data["experiments"][0]
    shot = tmp_path / "ui.png"
    chromium(
        tmp_path, f"{side.url}/_autoexp/ui", f"--screenshot={shot}", "--virtual-time-budget=6000"
    )
    image = Image.open(shot)
    assert image.size == (1200, 900)
    pixels = np.asarray(image.convert("RGB"))
    # not blank: the page's background is one color, and far from all of it
    colors, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    assert len(colors) > 50 and counts.max() < 0.6 * pixels.shape[0] * pixels.shape[1]

    series = [rgb(c) for c in SERIES[:3]]
    found = bands(pixels, series)
    assert found, "no chart in the screenshot"
    (top, bottom), next_top = found[0], found[1][0] if len(found) > 1 else pixels.shape[0]
    assert bottom - top == HEIGHT, found  # the plot's edges are on whole pixels
    chart = pixels[top:bottom]
    cols = np.flatnonzero(
        np.logical_or.reduce([(chart == c).all(axis=2) for c in series]).any(axis=0)
    )
    left, right = int(cols[0]), int(cols[-1]) + 1
    assert right - left == PLOT, (left, right)

    # The chart, column by column. Refresh i's allocation holds until refresh i + 1, x is
    # linear in time. In a pixel column clear of every step edge and change marker (none
    # within 1 px), alternative j covers the rows [H (1 - cum_j), H (1 - cum_(j-1))); the
    # pixels wholly inside that span have exactly its color and only the (at most 2)
    # pixels cut by its ends may be blends: inner <= exactly colored <= touched.
    history, changes = checkout["history"], checkout["changes"]
    t = np.array([h["time"] for h in history])
    share = np.array([h["allocation"] for h in history])  # (T, K)
    span = t[-1] - t[0]
    edges = PLOT * (t - t[0]) / span  # px from the plot's left
    markers = np.array([PLOT * (c["time"] - t[0]) / span for c in changes])
    cuts = np.sort(np.r_[edges, markers, np.inf])
    column = np.arange(PLOT, dtype=np.float64)  # covers [column, column + 1)
    clear = cuts[np.searchsorted(cuts, column - 1, side="right")] >= column + 2
    assert clear.sum() >= 0.7 * PLOT  # most of the chart is checked
    step = np.searchsorted(edges, column + 0.5, side="right") - 1  # (PLOT,)
    high = HEIGHT * (1 - np.cumsum(share, axis=1))[step]  # (PLOT, K) upper end, in rows
    low = np.c_[np.full(PLOT, float(HEIGHT)), high[:, :-1]]  # lower end
    for j, c in enumerate(series):
        seen = (chart[:, left : left + PLOT] == c).all(axis=2).sum(axis=0)  # (PLOT,)
        inner = np.maximum(np.floor(low[:, j]) - np.ceil(high[:, j]), 0)
        touched = np.ceil(low[:, j]) - np.floor(high[:, j])
        bad = clear & ((seen < inner) | (seen > touched))
        assert not bad.any(), (j, np.flatnonzero(bad)[:10], seen[bad][:10], inner[bad][:10])
        assert (clear & (inner >= 5)).sum() >= 20  # every alternative is drawn somewhere

    # fast-path has nothing after its rollback, big-button everything after its promotion
    rollback, promotion = (left + int(np.ceil(m)) + 2 for m in markers)
    assert not (chart[:, rollback : left + PLOT] == series[1]).all(axis=2).any()
    after = (chart[:, promotion : left + PLOT - 2] == series[2]).all(axis=2)
    assert after.mean() >= 0.99, after.mean()

    # the table under the chart: each alternative's swatch and, on its row, its state badge
    table = pixels[bottom:next_top]
    for alt, state in enumerate(checkout["status"]):
        rows = np.flatnonzero((table == series[alt]).all(axis=2).any(axis=1))
        assert 8 <= len(rows) <= 12, (alt, rows)  # the 10 px swatch, once
        row = table[max(rows[0] - 6, 0) : rows[-1] + 6]
        badge = int((row == rgb(BADGES[state])).all(axis=2).sum())
        # a badge: at least 6 characters of 12 px type, 6 px padding, 16 px high; its
        # white text covers well under half of it
        assert badge >= 300, (alt, state, badge)
    assert not (pixels == rgb(BADGES["inconclusive"])).all(axis=2).any()
