"""``autoexp proxy --config FILE`` as users run it: a real process on 127.0.0.1, driven by
``autoexp.Client``, stopped with SIGTERM (graceful: what was decided is logged)."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

import autoexp
from autoexp.store import open_store
from tests.autoexp.conftest import RedisServer, Served, free_port

PROXY = [sys.executable, "-m", "autoexp.cli", "proxy"]
CONFIG = """
store = "sqlite:///{db}"
secret = "a-test-secret-of-32-bytes-at-least"

[experiments.ranker]
alternatives = ["v1", {{ name = "v2", params = {{ depth = 3 }} }}]
policy = {{ name = "thompson-beta" }}
safety = {{ explore_share = 0.5 }}
test = {{ name = "off-policy-cs", n_expected = 1000 }}
"""


def in_front_of(upstream: str) -> str:
    """``CONFIG`` with ``[proxy]`` forwarding to ``upstream`` (``ranker`` still last)."""
    proxy = f'\n[proxy]\nupstream = "{upstream}"\n'
    return CONFIG.replace("\n[experiments.ranker]", f"{proxy}\n[experiments.ranker]")


def search_upstream() -> Served:
    """An application on 127.0.0.1 answering ``GET /search`` with ``ok``."""

    async def search(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/search", search)
    return Served(app)


def start(
    tmp_path: Path,
    port: int,
    *options: str,
    config_text: str = CONFIG,
    command: Sequence[str] = PROXY,
) -> subprocess.Popen[str]:
    config = tmp_path / "autoexp.toml"
    config.write_text(config_text.format(db=tmp_path / "state.db"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("AUTOEXP_STORE", None)
    env.pop("AUTOEXP_SECRET", None)
    proc = subprocess.Popen(
        [*command, "--config", str(config), "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/_autoexp/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"the proxy exited: {proc.communicate(timeout=30)[0]}")
        time.sleep(0.1)
    proc.kill()
    proc.communicate(timeout=30)
    raise AssertionError("the proxy did not become ready in 60 s")


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, and the process's output once it exited (killed after 60 s)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)  # reaped and its pipe closed: no stray warnings


def test_the_proxy_command_serves_and_shuts_down_gracefully(tmp_path: Path) -> None:
    port = free_port()
    proc = start(tmp_path, port)
    try:
        proc.send_signal(signal.SIGHUP)  # one worker, no supervisor: said and ignored
        # which config it serves, by its digest: in healthz and in the metrics
        digest = sha256(tmp_path / "autoexp.toml")
        assert configs(port, 1) == {digest}
        metrics = httpx.get(f"http://127.0.0.1:{port}/_autoexp/metrics", timeout=30).text
        assert f'autoexp_config_info{{sha256="{digest}"}} 1.0' in metrics
        # generous timeouts: a loaded 2-core CI machine, each sticky decision an fsync
        with autoexp.Client(f"http://127.0.0.1:{port}", timeout_s=30) as client:
            made = [client.decide("ranker", unit=f"u{i % 7}") for i in range(50)]
            assert {d.alternative for d in made} <= {"v1", "v2"}
            assert all(d.params == ({"depth": 3} if d.arm else {}) for d in made)
            assert client.reward_many([(d, 1.0) for d in made[:20]]) == [True] * 20
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)  # reaped and its pipe closed: no stray warnings
    assert proc.returncode == 0, out
    assert "experiments ranker" in out
    assert "SIGHUP ignored: reloading the config takes the supervisor" in out
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    log = store.records("ranker")
    # every decision is logged, each reward once, after a graceful stop
    assert [r["decision_id"] for r in log if r["type"] == "decision"] == [d.id for d in made]
    assert sorted(r["decision_id"] for r in log if r["type"] == "reward") == sorted(
        d.id for d in made[:20]
    )
    assert store.read("ranker")["policy.n"].sum() == 20
    store.close()


def test_after_sigterm_requests_on_open_connections_are_served_and_told_to_close(
    tmp_path: Path,
) -> None:
    # Three keep-alive connections: A has asked the API, B a proxied path, C is accepted
    # with no request yet (a client's request follows its connection by a round trip).
    # SIGTERM: the proxy stops listening at once, and for STOP_GRACE_S (0.25 s) serves
    # what comes on open connections, each answer with "Connection: close", before it
    # closes those with no request in progress. So 50 ms after the signal all three are
    # served, and keep-alive clients learn to send their next request elsewhere (another
    # worker, the new ones after a reload) rather than on a connection closing under
    # them. aiohttp's run_app closed A, B and C unanswered one loop pass after the signal.

    upstream = search_upstream()
    port = free_port()
    text = in_front_of(upstream.url)
    proc = start(tmp_path, port, config_text=text + 'route = {{ path_prefix = "/search" }}\n')
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(3)]
    body = b'{"experiment": "ranker"}'

    def ask(conn: http.client.HTTPConnection) -> http.client.HTTPResponse:
        if conn is conns[0]:
            conn.request("POST", "/_autoexp/decide", body)
        elif conn is conns[1]:
            conn.request("GET", "/search")
        else:
            conn.request("GET", "/_autoexp/healthz")
        got = conn.getresponse()
        got.read()
        assert got.status == 200
        return got

    try:
        for conn in conns[:2]:
            assert ask(conn).getheader("Connection") is None  # kept alive
        conns[2].connect()
        time.sleep(0.3)  # C accepted by the proxy's event loop meanwhile
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        answers = [ask(conn) for conn in conns]
        assert [got.getheader("Connection") for got in answers[:2]] == ["close", "close"]
        assert answers[1].getheader("X-Autoexp-Decision")  # decided, as before the stop
        out, _ = proc.communicate(timeout=30)
    finally:
        for conn in conns:
            conn.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        upstream.close()
    assert proc.returncode == 0, out


def test_sigterm_closes_open_websockets_and_the_proxy_stops_at_once(tmp_path: Path) -> None:
    # A WebSocket open through the real process (its route decided and rewarded on the
    # handshake): SIGTERM closes it at once, so the stop does not wait out its 10 s
    # shutdown timeout, and the decision and its reward are in the log afterwards.
    import asyncio

    import aiohttp

    from tests.autoexp.test_websocket import Upstream

    upstream = Upstream("app")
    port = free_port()
    text = in_front_of(upstream.url)
    proc = start(
        tmp_path,
        port,
        config_text=text + 'route = {{ path_prefix = "/ws", reward_from = "status" }}\n',
    )

    async def client() -> tuple[aiohttp.WSMsgType, float]:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"http://127.0.0.1:{port}/ws") as sock:
                assert (await sock.receive_json())["who"] == "app"
                await sock.send_str("hi")
                assert await sock.receive_str() == "app:hi"
                began = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                m = await sock.receive()
                return m.type, time.monotonic() - began

    try:
        kind, took = asyncio.run(asyncio.wait_for(client(), 30))
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        upstream.close()
    assert proc.returncode == 0, out
    assert kind in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    assert took < 5.0  # closed by the drain, not after the shutdown timeout (10 s)
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    log = store.records("ranker")
    assert [r["type"] for r in log] == ["decision", "reward"] and log[1]["reward"] == 1.0
    store.close()


def test_malformed_requests_are_counted_and_said_once_not_a_traceback_each(
    tmp_path: Path,
) -> None:
    # aiohttp logs each request it cannot parse with a traceback at ERROR, about 8 lines
    # each: a scanner could fill the proxy's log. Each gets its 400 as before.
    port = free_port()
    config = CONFIG + '\n[proxy]\nupstream = "http://127.0.0.1:9"\n'
    proc = start(tmp_path, port, config_text=config)
    try:
        bad = [
            b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",  # line too long
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # smuggling
            b"\x16\x03\x01 not http\r\n\r\n",  # TLS to a plain port: aiohttp's debug line
        ] * 5
        for request in bad:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(request)
                assert s.recv(64).startswith(b"HTTP/1.0 400 "), request[:40]
        metrics = httpx.get(f"http://127.0.0.1:{port}/_autoexp/metrics", timeout=30).text
        assert f'autoexp_proxy_events_total{{event="malformed"}} {len(bad)}.0' in metrics
    finally:
        out = stop(proc)
    said = [line for line in out.splitlines() if "malformed request" in line]
    # the first said at once; the next 14 within the 10 s throttle (the test takes ~1 s)
    assert len(said) == 1 and "answered 400: LineTooLong" in said[0], out
    assert "Traceback" not in out and "Error handling request" not in out, out


def test_a_bad_config_exits_with_a_reason(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[experiments.ranker]\nalternatives = ["only-one"]\n')
    proc = subprocess.run(
        [sys.executable, "-m", "autoexp.cli", "proxy", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "experiments.ranker.alternatives: need a control and at least one" in proc.stderr


def test_a_port_taken_is_said_not_a_traceback(tmp_path: Path) -> None:
    # One worker binds as it serves: a port another process listens on was an OSError
    # traceback out of uvloop (the supervisor of --workers N already said so)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = tmp_path / "autoexp.toml"
    config.write_text(CONFIG.format(db=tmp_path / "state.db"))
    try:
        proc = subprocess.run(
            [*PROXY, "--config", str(config), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        taken.close()
    assert proc.returncode == 2, proc.stderr
    said = f"autoexp proxy: error: --host 127.0.0.1 --port {port}: cannot listen there ("
    assert said in proc.stderr and "address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_upstream_that_is_the_proxy_itself_is_refused(tmp_path: Path, workers: str) -> None:
    # Forwarding to its own port, every request came back to the proxy, hop after hop,
    # until its X-Forwarded-For passed 8 KiB: a 400 "malformed request" after about 800
    # hops, the cause nowhere said
    port = free_port()
    config = tmp_path / "autoexp.toml"
    config.write_text(in_front_of(f"http://localhost:{port}").format(db=tmp_path / "s.db"))
    proc = subprocess.run(
        [*PROXY, "--config", str(config), "--port", str(port), "--workers", workers],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    said = f"proxy.upstream: http://localhost:{port} is this proxy's own address (--host "
    assert said in proc.stderr and proc.stderr.count("own address") == 1, proc.stderr
    checked = subprocess.run(
        [*PROXY, "--config", str(config), "--port", str(port), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 2 and said in checked.stderr, checked.stdout


def test_which_upstreams_are_the_proxy_itself() -> None:
    from autoexp.config import parse_config
    from autoexp.proxy.serve import check_not_itself

    def refused(upstream: str, host: str, port: int = 8700) -> bool:
        text = in_front_of(upstream).format(db="x.db")
        config = parse_config(tomllib.loads(text.replace('"sqlite:///x.db"', '"memory://"')))
        try:
            check_not_itself(config, "c.toml", host, port)
        except autoexp.ConfigError:
            return True
        return False

    assert refused("http://127.0.0.1:8700", "127.0.0.1")
    assert refused("http://localhost:8700", "::1")
    assert refused("http://127.0.0.1:8700", "0.0.0.0")
    assert refused("http://[::1]:8700", "::")
    assert refused("http://proxy.internal:8700", "proxy.internal")
    assert refused("http://127.0.0.1", "127.0.0.1", port=80)  # the scheme's port
    assert not refused("http://127.0.0.1:8080", "127.0.0.1")  # the application
    assert not refused("http://[::1]:8700", "127.0.0.1")  # another family's loopback
    assert not refused("http://[::1]:8700", "0.0.0.0")
    assert not refused("http://10.0.0.5:8700", "0.0.0.0")  # another host: not looked up
    assert refused("https://127.0.0.1", "127.0.0.1", port=443)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def configs(port: int, connections: int) -> set[str]:
    """The config digests the workers answering ``connections`` fresh connections serve."""
    out = set()
    for _ in range(connections):
        got = httpx.get(f"http://127.0.0.1:{port}/_autoexp/healthz", timeout=30).json()
        out.add(got["config_sha256"])
    return out


def pids(port: int, connections: int) -> set[int]:
    """The worker pids answering ``connections`` fresh connections."""
    out = set()
    for _ in range(connections):  # httpx.get: a new connection each time
        out.add(httpx.get(f"http://127.0.0.1:{port}/_autoexp/healthz", timeout=30).json()["pid"])
    return out


def both_workers(port: int) -> set[int]:
    """The two workers' pids, once both serve (``start`` returns once one does)."""
    deadline = time.monotonic() + 120
    while len(found := pids(port, 20)) < 2:
        assert time.monotonic() < deadline, "the second worker did not serve in 120 s"
        time.sleep(0.2)
    return found


def successors(port: int, old: set[int]) -> set[int]:
    """The workers' pids once none of ``old`` serves (a reload's old workers drain)."""
    deadline = time.monotonic() + 120
    while (new := pids(port, 20)) & old:
        assert time.monotonic() < deadline, "an old worker still serves after 120 s"
        time.sleep(0.2)
    return new


class Said:
    """What a running proxy says, read line by line in a thread as it says it."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def count(self, what: str) -> int:
        return sum(what in line for line in self.lines)

    def wait_for(self, what: str, times: int = 1) -> None:
        deadline = time.monotonic() + 120
        while self.count(what) < times:
            assert time.monotonic() < deadline, f"not said in 120 s: {what!r}: {self.lines}"
            time.sleep(0.02)

    def stop(self) -> str:
        """SIGTERM, the exit waited for (killed after 60 s), and all that was said."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=30)
            self.reader.join(timeout=30)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        return "".join(self.lines)


def test_two_workers_share_the_port_and_the_state(tmp_path: Path) -> None:
    # Two worker processes on one port (SO_REUSEPORT) and one SQLite file. The kernel
    # spreads connections by a hash of their addresses: 40 fresh connections all reaching
    # one worker would have probability 2 * 2^-40. Decisions and rewards made through
    # both are all in the shared store, exactly once, after a graceful stop; a worker
    # killed with SIGKILL is replaced.
    port = free_port()
    proc = start(tmp_path, port, "--workers", "2")
    try:
        workers = pids(port, 40)
        assert len(workers) == 2 and proc.pid not in workers
        made = []
        for i in range(60):  # a fresh client, so a fresh connection, for each pair
            with autoexp.Client(f"http://127.0.0.1:{port}", timeout_s=30) as client:
                d = client.decide("ranker", unit=f"user-{i}")
                assert client.reward(d, float(i % 2)) is True
                made.append(d)
        # each worker writes its decisions within log_flush_s (50 ms) in the background; a
        # SIGKILL loses at most those (never an acknowledged reward): let them be written
        time.sleep(1.0)
        os.kill(min(workers), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (now := pids(port, 20)) <= workers - {min(workers)}:
            assert time.monotonic() < deadline, "the killed worker was not replaced in 60 s"
            time.sleep(0.2)
        assert len(now) == 2 and min(workers) not in now
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "exited with -9; restarting" in out
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    log = store.records("ranker")
    assert sorted(r["decision_id"] for r in log if r["type"] == "reward") == sorted(
        d.id for d in made
    )
    assert {r["decision_id"] for r in log if r["type"] == "decision"} >= {d.id for d in made}
    state = store.read("ranker")
    assert state["policy.n"].sum() == 60 and state["policy.sum_reward"].sum() == 30
    store.close()


def test_workers_need_a_shared_store_a_fixed_port_and_a_free_one(tmp_path: Path) -> None:
    # Refused at once with the reason (exit 2), never workers restarting on and on.
    memory = tmp_path / "memory.toml"
    memory.write_text(CONFIG.format(db="x").replace('store = "sqlite:///x"', 'store = "memory://"'))
    sqlite = tmp_path / "sqlite.toml"
    sqlite.write_text(CONFIG.format(db=tmp_path / "state.db"))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    try:
        for config, options, words in [
            (memory, ["--port", "8701"], "lives inside one process, so 2 workers would each"),
            (memory, ["--port", "0"], "--port: several workers need a fixed port"),
            (memory, ["--workers", "0"], "--workers: must be >= 1 (got 0)"),
            (sqlite, ["--port", port], f"--port {port}: cannot listen there ([Errno 98]"),
        ]:
            proc = subprocess.run(
                [*PROXY, "--config", str(config), "--workers", "2", *options],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    finally:
        taken.close()


def test_a_store_holding_other_shapes_is_a_refused_config(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # Redis answers and holds ranker with three arms; the config has two. A refused
    # config (exit 2, the store's reason), not an outage: with --workers 2 it was exit 3
    # ("could not reach its store") for each worker, restarted every 10 s for ever.
    from autoexp.engine import Engine, ExperimentSpec
    from policies import ThompsonBeta

    redis_server.flush()
    store = open_store(redis_server.url)
    three = ExperimentSpec(name="ranker", alternatives=("a", "b", "c"), policy=ThompsonBeta())
    Engine(store, [three], secret="x" * 32, log_flush_s=0).close()
    store.close()
    config = tmp_path / "autoexp.toml"
    config.write_text(CONFIG.format(db="x").replace("sqlite:///x", redis_server.url))
    for workers in ("1", "2"):
        proc = subprocess.run(
            [*PROXY, "--config", str(config), "--port", str(free_port()), "--workers", workers],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert "'ranker'.policy.n has shape (1, 3) (asked (1, 2)): a different policy" in (
            proc.stderr
        )
        assert "restarting" not in proc.stderr and "Traceback" not in proc.stderr
        refused = re.search(r"worker [01] refused the config", proc.stderr)  # the first
        assert (refused is not None) == (workers == "2"), proc.stderr


def test_a_short_admin_token_is_refused_before_anything_serves(tmp_path: Path) -> None:
    # Before, the worker died in a traceback (ValueError from the admin routes), and with
    # --workers each one was restarted every 10 s for ever.
    config = tmp_path / "autoexp.toml"
    config.write_text(CONFIG.format(db=tmp_path / "state.db"))
    env = {**os.environ, "AUTOEXP_ADMIN_TOKEN": "fifteen-chars.."}
    port = free_port()
    for workers in ("1", "2"):
        proc = subprocess.run(
            [*PROXY, "--config", str(config), "--port", str(port), "--workers", workers],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(
            "autoexp proxy: error: AUTOEXP_ADMIN_TOKEN: at least 16 characters (got 15)"
        ), proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        assert not (tmp_path / "state.db").exists()  # refused before the store was opened
        assert_port_free(port)


def test_a_worker_replaced_while_redis_is_down_serves_at_once_and_decides_once_it_answers(
    tmp_path: Path,
) -> None:
    # Redis stopped, then a worker killed: its replacement cannot reach the store as it
    # starts. Before, it exited (3) and was restarted with pauses until Redis answered
    # (and before 33c15a5 the supervisor stopped every worker). Now it serves at once, its
    # experiment waiting for the store (decisions 503 fail_open), and starts the
    # experiment once Redis answers.
    (tmp_path / "redis").mkdir()  # this test's own Redis, stopped and started, with its data
    redis = RedisServer(tmp_path / "redis", "--appendonly", "yes")
    text = CONFIG.replace('store = "sqlite:///{db}"', f'store = "{redis.url}"')
    port = free_port()
    base = f"http://127.0.0.1:{port}/_autoexp"
    proc = start(tmp_path, port, "--workers", "2", config_text=text)
    said = Said(proc)
    try:
        old = both_workers(port)
        redis.stop()
        os.kill(min(old), signal.SIGKILL)
        said.wait_for("experiment ranker not started yet")  # the replacement's word
        now = both_workers(port)
        assert max(old) in now and min(old) not in now
        waiting = []
        for _ in range(20):  # a fresh connection each: both workers are ready
            ready = httpx.get(f"{base}/readyz", timeout=30)
            assert ready.status_code == 200, ready.text
            waiting.append(ready.json()["waiting"])
        assert ["ranker"] in waiting  # the replacement (0.5^20 to miss it)
        redis.start()
        said.wait_for("experiment ranker started: its store answers")
        deadline = time.monotonic() + 60
        in_a_row = 0
        while in_a_row < 20:  # fresh connections: both workers decide (0.5^19 to miss one)
            assert time.monotonic() < deadline, f"{in_a_row} decided in a row in 60 s"
            r = httpx.post(f"{base}/decide", json={"experiment": "ranker"}, timeout=30)
            if r.status_code == 200:
                in_a_row += 1
            else:  # the old worker not yet past its store's failure: control, said so
                assert r.status_code == 503 and r.json()["fail_open"] is True, r.text
                in_a_row = 0
                time.sleep(0.05)
        for _ in range(20):
            ready = httpx.get(f"{base}/readyz?store=required", timeout=30)
            assert ready.status_code == 200, ready.text
    finally:
        out = said.stop()
        redis.stop()
    assert proc.returncode == 0, out
    assert "refused the config" not in out and "could not reach its store" not in out
    assert "its store has not answered since this process started (store (" in out


def test_sigterm_during_a_reload_stops_the_new_workers_and_the_old(tmp_path: Path) -> None:
    # SIGTERM while a reload waits for its new workers (they take seconds to load):
    # the reload is given up, the new workers and then the old ones stop, each old one
    # after writing its log, and the supervisor exits 0 with the port free again.
    port = free_port()
    proc = start(tmp_path, port, "--workers", "2")
    try:
        old = pids(port, 20)
        with autoexp.Client(f"http://127.0.0.1:{port}", timeout_s=30) as client:
            made = [client.decide("ranker") for _ in range(20)]
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)  # the new workers started (within 0.1 s), not yet serving (1 s+)
        out = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "reload given up: stopping" in out and "reloaded" not in out, out
    new = re.search(r"reloading \S+: workers (\d+), (\d+) start", out)
    assert new is not None, out
    workers = old | {int(pid) for pid in new.groups()}
    assert len(workers) == 4, out
    for pid in workers:  # all stopped
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} still runs"
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    logged = {r["decision_id"] for r in store.records("ranker") if r["type"] == "decision"}
    assert logged >= {d.id for d in made}
    store.close()
    assert_port_free(port)


def assert_port_free(port: int) -> None:
    """Nothing listens on ``port`` (connections closing there may linger in TIME_WAIT)."""
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (an exited orphan not yet reaped is a zombie)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_workers_stop_gracefully_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    # SIGKILL to the supervisor leaves it no chance to stop its workers; the kernel sends
    # each SIGTERM (PR_SET_PDEATHSIG), so none serves on, orphaned, and each drains and
    # writes its log as at any stop: every decision made is in the store, and nothing
    # listens on the port. (Without, both workers served on until killed by the test.)
    port = free_port()
    proc = start(tmp_path, port, "--workers", "2")
    workers: set[int] = set()
    try:
        workers = pids(port, 40)
        assert len(workers) == 2
        shared = workers_dir(min(workers))
        assert shared.is_dir()
        made = []
        for _ in range(20):  # a fresh client, so a fresh connection, each: both workers
            with autoexp.Client(f"http://127.0.0.1:{port}", timeout_s=30) as client:
                made.append(client.decide("ranker"))
        proc.kill()
        proc.wait(timeout=30)  # its output pipe stays open while a worker runs
        deadline = time.monotonic() + 60
        while any(running(pid) for pid in workers):
            assert time.monotonic() < deadline, "workers still run 60 s after the supervisor"
            time.sleep(0.1)
    finally:
        for pid in workers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.communicate(timeout=30)  # reaped, its pipe read to the end and closed
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    logged = {r["decision_id"] for r in store.records("ranker") if r["type"] == "decision"}
    assert logged >= {d.id for d in made}
    store.close()
    assert_port_free(port)
    # the directory their figures were shared in: removed by the workers, as the
    # supervisor could not (it was left behind in /tmp by every such kill before)
    assert not shared.exists()


def workers_dir(pid: int) -> Path:
    """The directory a supervised worker shares its figures in (its --workers-dir)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return Path(argv[argv.index(b"--workers-dir") + 1].decode())


def test_each_worker_gets_the_supervisors_options() -> None:
    # A supervised worker's command line parses back into the options it was given, the
    # access log included, plus the hidden --listen-fds (the sockets its supervisor bound)
    # and --workers-dir (where the workers share what each counts, for the metrics).
    from autoexp.cli import build_parser
    from autoexp.proxy.serve import ServeOptions

    for access_log in (False, True):
        options = ServeOptions(
            config="x.toml",
            host="127.0.0.1",
            port=8701,
            workers=3,
            expire_every_s=2.5,
            shutdown_timeout_s=4.0,
            access_log=access_log,
            workers_dir="/tmp/autoexp-workers-x",
        )
        argv = options.worker_argv([5, 7])
        assert argv[:4] == [sys.executable, "-m", "autoexp.cli", "proxy"]
        args = build_parser().parse_args(argv[3:])
        assert (args.config, args.host, args.port) == ("x.toml", "127.0.0.1", 8701)
        assert (args.expire_every_s, args.shutdown_timeout_s) == (2.5, 4.0)
        assert args.access_log is access_log and args.workers == 1
        assert args.listen_fds == [5, 7] and args.workers_dir == "/tmp/autoexp-workers-x"


def test_a_proxy_stopped_gracefully_gives_up_its_expire_lease(tmp_path: Path) -> None:
    # With default rewards, the proxy takes its experiment's expire lease on its first
    # pass (after --expire-every-s, 2 s) for three times that (6 s). Stopped with SIGTERM,
    # it gives the lease up, so another replica takes over at its next pass rather than
    # when the lease runs out: right after the stop the lease is free to a new holder.
    # (Measured by hand with two proxies on one file: the other took over 1.9 s after
    # the SIGTERM, against 5.8-5.9 s without the release.)
    port = free_port()
    text = CONFIG + "reward = {{ join_window_s = 60, default = 0.0 }}\n"
    proc = start(tmp_path, port, "--expire-every-s", "2", config_text=text)
    try:
        deadline = time.monotonic() + 60
        while True:
            metrics = httpx.get(f"http://127.0.0.1:{port}/_autoexp/metrics", timeout=30).text
            if 'autoexp_expire_holder{experiment="ranker"} 1.0' in metrics:
                break
            assert time.monotonic() < deadline, "the proxy took no lease in 60 s"
            time.sleep(0.1)
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    assert store.hold("ranker", "expire", "the-next-replica", 60) is True
    store.close()


def test_the_proxy_hides_its_stores_password_and_warns_of_a_route_without_traffic(
    tmp_path: Path, redis_server: Any
) -> None:
    # A password in the store's URL (Redis takes one it was not configured with) is not
    # in the line the proxy prints as it starts, nor anywhere else it writes. A route
    # that an earlier one takes every request from is served, and said as it starts.
    redis_server.flush()
    url = f"redis://:pw-in-url@127.0.0.1:{redis_server.port}/0"
    head, experiment = CONFIG.replace('store = "sqlite:///{db}"', f'store = "{url}"').split(
        "\n\n", 1
    )
    text = head + '\n\n[proxy]\nupstream = "http://127.0.0.1:9"\n\n'
    text += experiment + 'route = {{ path_prefix = "/" }}\n\n'
    text += experiment.replace("ranker", "search") + 'route = {{ path_prefix = "/search" }}\n'
    proc = start(tmp_path, free_port(), config_text=text)
    out = stop(proc)
    assert proc.returncode == 0, out
    assert f"experiments ranker, search on redis://:***@127.0.0.1:{redis_server.port}/0" in out
    assert "pw-in-url" not in out
    assert (
        "experiments.search.route: every request it matches goes to experiments.ranker, "
        "listed before it: this experiment gets no traffic"
    ) in out


def sockets_held(pid: int) -> int:
    """How many sockets process ``pid`` holds open (Linux: its /proc fd links)."""
    fds = Path(f"/proc/{pid}/fd")
    return sum(os.readlink(fd).startswith("socket:") for fd in fds.iterdir())


def test_a_worker_dying_during_a_reload_leaves_its_socket_to_its_successor(
    tmp_path: Path,
) -> None:
    # An old worker killed while the reload waits for the new ones to load: its slot's
    # listening socket stays with the supervisor, taken by the slot's new worker. (Closed
    # when the worker died, as outside a reload, the slot would lose it: the next reload
    # would bind the slot a new socket and reset what waits in the old one as it stops.)
    port = free_port()
    proc = start(tmp_path, port, "--workers", "2")
    said = Said(proc)
    try:
        old = both_workers(port)
        held = sockets_held(proc.pid)
        assert held == 2  # one listening socket per slot, on 127.0.0.1
        proc.send_signal(signal.SIGHUP)
        said.wait_for("reloading ")  # the new workers load for a second or more
        assert not said.count("reloaded "), said.lines  # still waiting for them
        os.kill(min(old), signal.SIGKILL)
        said.wait_for("reloaded ")
        assert sockets_held(proc.pid) == held
        assert len(successors(port, old)) == 2  # once the other old worker has stopped
    finally:
        out = said.stop()
    assert proc.returncode == 0, out


CLOSE = {"Connection": "close"}
SEARCH = """
[experiments.search]
alternatives = ["a", "b"]
policy = { name = "ucb1" }
"""


def test_sighup_reloads_the_config_with_new_workers_while_the_port_is_served(
    tmp_path: Path,
) -> None:
    # Two workers; 32 clients send requests each on a new connection, 8 on keep-alive
    # connections, all through two reloads, and none is retried. SIGHUP after the config
    # gained an experiment: new workers start on it, and once they serve the port the old
    # ones drain and stop. Not a request fails:
    # - the supervisor holds the listening sockets, so the connections waiting for an old
    #   worker as it stops are the new one's, and one it accepted just before is served
    #   (with each worker binding its own socket, 39 of 61,060 requests from 16 clients
    #   on new connections were reset through five reloads);
    # - the old workers' answers while they stop say "Connection: close", so a keep-alive
    #   client opens a new connection rather than use one about to close under it
    #   (without: 72 failed on 16 keep-alive connections through five reloads).
    # A config that does not load is refused, and one whose new workers exit (their store
    # cannot be opened) fails: either way the workers keep theirs.
    port = free_port()
    proc = start(tmp_path, port, "--workers", "2")
    config = tmp_path / "autoexp.toml"
    text = config.read_text()
    base = f"http://127.0.0.1:{port}/_autoexp"
    answered: list[int] = []
    failed: list[str] = []
    told: list[bool] = []  # connections closed after an answer: True if told to close
    done = threading.Event()

    def client(keep_alive: bool) -> None:
        body = b'{"experiment": "ranker"}'
        conn = None
        while not done.is_set():
            conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("POST", "/_autoexp/decide", body, {} if keep_alive else CLOSE)
                got = conn.getresponse()
                got.read()
                answered.append(got.status)
                if keep_alive and got.getheader("Connection") != "close":
                    continue
                told.append(keep_alive)
            except OSError as e:  # reset, or closed without an answer
                failed.append(repr(e))
            conn.close()
            conn = None
        if conn is not None:
            conn.close()

    def reload(new_text: str, times: int) -> set[int]:
        """SIGHUP on ``new_text``; the new workers' pids once the old ones are gone."""
        old = pids(port, 20)
        config.write_text(new_text)
        proc.send_signal(signal.SIGHUP)
        said.wait_for(f"reloaded {config}: workers ", times)
        new = successors(port, old)  # the old ones drain and stop
        assert len(new) == 2 and configs(port, 20) == {sha256(config)}  # the new one's
        return new

    said = Said(proc)  # the supervisor's and workers' output, line by line
    try:
        assert len(both_workers(port)) == 2 and configs(port, 20) == {sha256(config)}
        clients = [threading.Thread(target=client, args=(n < 8,)) for n in range(40)]
        for thread in clients:
            thread.start()
        reload(text + SEARCH, 1)
        got = httpx.post(f"{base}/decide", json={"experiment": "search"}, timeout=30)
        assert got.status_code == 200, got.text  # a new worker: the old knew no "search"
        new = reload(text + SEARCH + "# and again\n", 2)
        reloaded = sha256(config)
        done.set()
        for thread in clients:
            thread.join(timeout=60)
        served = len(answered)
        assert failed == [] and served > 0 and answered == [200] * served, (failed, served)
        assert sum(told) >= 8, sum(told)  # the keep-alive clients were told at the reloads
        config.write_text(text + SEARCH + "broken = [\n")
        proc.send_signal(signal.SIGHUP)
        said.wait_for("reload refused: ")
        missing = tmp_path / "no-such-directory" / "state.db"
        config.write_text(text.replace(str(tmp_path / "state.db"), str(missing)) + SEARCH)
        proc.send_signal(signal.SIGHUP)
        said.wait_for("reload failed: a new worker")
        assert pids(port, 20) == new  # the same workers, on the config they had
        assert configs(port, 20) == {reloaded} != {sha256(config)}
        got = httpx.post(f"{base}/decide", json={"experiment": "search"}, timeout=30)
        assert got.status_code == 200, got.text
    finally:
        done.set()
        out = said.stop()
    assert proc.returncode == 0, out
    assert "not valid TOML" in out
    assert "exited with 3 (its store not opened); the workers keep their config" in out


def scraped(port: int, name: str) -> float | None:
    """One sample of ``GET /_autoexp/metrics`` on a fresh connection (so on either
    worker); ``None`` if absent."""
    text = httpx.get(f"http://127.0.0.1:{port}/_autoexp/metrics", timeout=30).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return None if found is None else float(found.group(1))


def test_the_metrics_of_several_workers_sum_what_each_counts(tmp_path: Path) -> None:
    # Prometheus scrapes the port, and the kernel hands each scrape to one worker. Each
    # worker counts its own events (a reward queued per decided request), WebSockets and
    # expire lease; scraped, each must answer for all, or the counter falls whenever a
    # scrape reaches the worker that counted fewer, which Prometheus takes for a reset
    # (before: 143 and 157 of 300 rewards, in turn). 60 requests on fresh connections all
    # reaching one worker has probability 2 * 2^-60; 20 scrapes all reaching one, 2^-19.
    # The counts outlive a reload and a worker killed outright (written each second); a
    # killed worker's lease is not counted, so exactly one worker or none holds it.
    upstream = search_upstream()
    port = free_port()
    text = in_front_of(upstream.url)
    text += 'route = {{ path_prefix = "/search", reward_from = "status" }}\n'
    text += "reward = {{ low = 0.0, high = 1.0, join_window_s = 3600, default = 0.0 }}\n"
    proc = start(tmp_path, port, "--workers", "2", "--expire-every-s", "1", config_text=text)
    said = Said(proc)
    rewards = 'autoexp_proxy_events_total{event="rewards"}'
    holder = 'autoexp_expire_holder{experiment="ranker"}'

    def requests(n: int) -> None:
        for _ in range(n):
            got = httpx.get(f"http://127.0.0.1:{port}/search", timeout=30)
            assert got.status_code == 200 and got.headers["X-Autoexp-Decision"]

    def settle(count: int) -> None:
        """Until a scrape says ``count`` rewards (queued within the request, counted once
        the reward applier took them) and a holder; then 20 scrapes all say exactly so."""
        deadline = time.monotonic() + 60
        while (scraped(port, rewards), scraped(port, holder)) != (count, 1.0):
            assert time.monotonic() < deadline, (scraped(port, rewards), said.lines)
            time.sleep(0.2)
        samples = [(scraped(port, rewards), scraped(port, holder)) for _ in range(20)]
        assert samples == [(count, 1.0)] * 20

    try:
        workers = both_workers(port)
        requests(60)
        settle(60)
        config = tmp_path / "autoexp.toml"
        config.write_text(config.read_text() + "# reloaded\n")
        proc.send_signal(signal.SIGHUP)
        said.wait_for("reloaded ")
        workers = successors(port, workers)  # the old ones stopped: their counts kept
        requests(10)
        settle(70)
        time.sleep(1.5)  # each worker's figures written since (every second)
        os.kill(min(workers), signal.SIGKILL)
        said.wait_for("exited with -9; restarting")
        samples = [(scraped(port, rewards), scraped(port, holder)) for _ in range(20)]
        assert all(n == 70 and held in (0.0, 1.0) for n, held in samples), samples
        deadline = time.monotonic() + 60
        while len(workers := pids(port, 20)) < 2:  # replaced
            assert time.monotonic() < deadline, said.lines
            time.sleep(0.2)
        settle(70)
        # the directory the workers share (a worker's hidden --workers-dir): the running
        # workers' files and one for the three that exited, folded by the supervisor
        shared = workers_dir(min(workers))
        files = {f"{pid}.json" for pid in workers} | {"retired.json"}
        assert {p.name for p in shared.glob("*.json")} == files
    finally:
        out = said.stop()
        upstream.close()
    assert proc.returncode == 0, out
    assert not shared.exists()  # removed as the supervisor stopped


def test_the_admin_api_of_several_workers_says_what_all_of_them_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A status holds what each worker counts on its own: the late rewards it refused, the
    # default rewards it applied, its unwritten decisions and its expire lease. With two
    # workers, each admin call must give every worker's, as the metrics do (before: the
    # late rewards about 20 and 20 of 40 in turn, the lease held on one worker and not
    # on the other, the defaults 40 or 0). 40 rewards on fresh connections all reaching
    # one worker has probability 2 * 2^-40; 20 admin calls all reaching one, 2^-19.
    port = free_port()
    text = CONFIG + "reward = {{ low = 0.0, high = 1.0, join_window_s = 1, default = 0.0 }}\n"
    token = "an-admin-token-for-the-test"
    monkeypatch.setenv("AUTOEXP_ADMIN_TOKEN", token)
    proc = start(tmp_path, port, "--workers", "2", "--expire-every-s", "1", config_text=text)
    said = Said(proc)
    counts = ("late_rewards", "defaults_applied", "unlogged", "expire_held")
    whole = {"late_rewards": 40, "defaults_applied": 40, "unlogged": 0, "expire_held": True}

    def admin(path: str, method: str = "GET") -> dict[str, Any]:
        got = httpx.request(
            method,
            f"http://127.0.0.1:{port}/_autoexp/admin/experiments{path}",
            headers={"Authorization": f"Bearer {token}"},
            json={} if method == "POST" else None,
            timeout=30,
        )
        assert got.status_code == 200, got.text
        body: dict[str, Any] = got.json()
        return body

    try:
        both_workers(port)
        made = []
        for i in range(40):  # a fresh client, so a fresh connection, each
            with autoexp.Client(f"http://127.0.0.1:{port}", timeout_s=30) as client:
                made.append(client.decide("ranker", unit=f"user-{i}"))
        time.sleep(1.5)  # past the join window: each reward is refused as late, and counted
        for d in made:
            with autoexp.Client(f"http://127.0.0.1:{port}", timeout_s=30) as client:
                try:
                    client.reward(d, 1.0)
                except autoexp.RewardError as e:
                    assert "late by" in str(e)
                else:
                    raise AssertionError("a late reward was applied")
        deadline = time.monotonic() + 60  # until every worker's file says so (each second)
        while {k: admin("/ranker")[k] for k in counts} != whole:
            assert time.monotonic() < deadline, (admin("/ranker"), said.lines)
            time.sleep(0.2)
        for _ in range(20):
            assert {k: admin("/ranker")[k] for k in counts} == whole
            (listed,) = admin("")["experiments"]
            assert {k: listed[k] for k in counts} == whole
        paused = admin("/ranker/pause", "POST")
        assert paused["paused"] and {k: paused[k] for k in counts} == whole
    finally:
        out = said.stop()
    assert proc.returncode == 0, out


def test_workers_with_nowhere_to_share_their_figures_serve_and_say_so(tmp_path: Path) -> None:
    # A supervisor that cannot make its directory (no writable temporary directory; here
    # tempfile.mkdtemp made to fail in it, not in the workers) runs its workers all the
    # same, each one's metrics its own counts, and says why.
    refuse = (
        "import sys, tempfile\n"
        "def refuse(*args, **kwargs):\n"
        "    raise PermissionError(13, 'Permission denied', '/tmp')\n"
        "tempfile.mkdtemp = refuse\n"
        "from autoexp.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    port = free_port()
    proc = start(tmp_path, port, "--workers", "2", command=[sys.executable, "-c", refuse, "proxy"])
    said = Said(proc)
    try:
        both_workers(port)
        got = httpx.get(f"http://127.0.0.1:{port}/_autoexp/metrics", timeout=30)
        assert got.status_code == 200 and "autoexp_allocation{" in got.text
    finally:
        out = said.stop()
    assert proc.returncode == 0, out
    assert "no directory for the workers' figures ([Errno 13] Permission denied" in out
