"""The proxy against generated requests, good and bad, sent as raw bytes over loopback
(hypothesis, derandomized: the same 300 requests each run): whatever arrives, the proxy
answers with a well-formed HTTP answer, never a 5xx of its own (the upstreams here are
healthy; a 505 only for a text request line claiming HTTP/2 or later), forwards every
valid request, keeps serving, and logs only decisions: those whose tokens it answered
with, and those of requests still waiting for the body they declared."""

from __future__ import annotations

import re
import socket
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoexp.engine import Engine, ExperimentSpec
from autoexp.proxy.routes import ProxySettings, Route
from autoexp.store.memory import MemoryStore
from autoexp.tokens import keys_from, verify
from policies import ThompsonBeta, TrafficCap
from tests.autoexp.conftest import Served, Sidecar
from tests.autoexp.test_forwarding import upstream

SECRET = "z" * 32
EXAMPLES = 300  # each is one connection: about 10 ms

_TOKEN = re.compile(rb"\r\nX-Autoexp-Decision: ([A-Za-z0-9_.-]+)\r\n", re.IGNORECASE)
_STATUS = re.compile(rb"HTTP/(\d)\.\d (\d{3}) ")

printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=24)
weird = st.text(max_size=12)  # any code point but surrogates: sent as UTF-8

# a valid request, then at most one thing about it made odd (several at once would
# mostly test the first one the parser trips on)
methods = st.sampled_from(["GET", "GET", "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"])
targets = st.one_of(
    st.just("/search"),
    st.builds("/search?q={}".format, st.text("abc xyz%&=+09", max_size=12).map(str.strip)),
    st.builds("/other/{}".format, st.text("abc-_.~09", max_size=12)),
).map(lambda t: t.replace(" ", "+"))
names = st.sampled_from(
    ["X-User-Id", "Cookie", "Accept", "X-Context-Country", "X-Forwarded-For", "Accept-Encoding"]
)
forged = st.sampled_from(["X-Autoexp-Params", "X-Autoexp-Decision", "X-Autoexp-Alternative"])
values = st.one_of(
    printable,
    st.sampled_from(['{"depth": 9}', "uid=alice; uid=bob", "close", "keep-alive", "127.0.0.1"]),
)
headers = st.lists(st.tuples(st.one_of(names, forged), values), max_size=4)
bodies = st.binary(max_size=48)
odd = st.one_of(
    st.tuples(st.just("method"), st.sampled_from(["BREW", "get", "G ET", "", "GET\x00", "PATCH"])),
    st.tuples(
        st.just("target"),
        st.one_of(
            st.builds("/search/{}".format, weird),
            st.sampled_from(["*", "http://127.0.0.1/search?q=1", "search", "/search#x", "//s"]),
        ),
    ),
    st.tuples(
        st.just("version"),
        st.sampled_from(["HTTP/1.0", "HTTP/2.0", "HTTP/3.0", "HTTP/0.9", "HTTP/1.1x", ""]),
    ),
    st.tuples(
        st.just("header"),
        st.tuples(
            st.one_of(
                st.sampled_from(["Content-Length", "Transfer-Encoding", "Host", "Connection"]),
                st.sampled_from(["Upgrade", "Expect"]),
                st.sampled_from(["Bad Name", "X:Y", "", "X-\x01"]),
                names,
            ),
            st.one_of(
                st.sampled_from(["0", "5", "-1", "99999999999999999999", "chunked"]),
                st.sampled_from(["gzip, chunked", "chunked, chunked", " chunked", "websocket"]),
                st.sampled_from(["close", "upgrade", "100-continue", "keep-alive, X-User-Id"]),
                weird,
            ),
        ),
    ),
    st.tuples(st.just("no-host"), st.none()),
    st.tuples(st.just("flip"), st.tuples(st.integers(0, 200), st.integers(0, 255))),
    st.tuples(st.just("tail"), st.binary(min_size=1, max_size=48)),
)
changes = st.one_of(st.none(), odd)


def request_bytes(
    method: str, target: str, head: Any, body: bytes, change: tuple[str, Any] | None
) -> bytes:
    """The request, with ``change`` made to it (``None``: as it is)."""
    kind, what = change or ("", None)
    method = what if kind == "method" else method
    target = what if kind == "target" else target
    version = what if kind == "version" else "HTTP/1.1"
    lines = [f"{method} {target} {version}"] + ["Host: x"] * (kind != "no-host")
    lines.append("Connection: close")  # the answer ends with the connection
    lines += [f"{k}: {v}" for k, v in head]
    if body and method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    else:
        body = b""
    if kind == "header":
        lines.append(f"{what[0]}: {what[1]}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    if kind == "flip":
        at, byte = what
        data = data[: at % len(data)] + bytes([byte]) + data[at % len(data) + 1 :]
    if kind == "tail":
        data += what
    return data


def exchange(port: int, data: bytes, idle_s: float = 0.5) -> tuple[bytes, bool]:
    """Send ``data`` on a fresh connection and read what is answered until the proxy
    closes the connection or stays silent for ``idle_s`` (a request whose declared body
    never came is still waiting for it); the bytes, and whether the proxy closed."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(data)
        sock.settimeout(idle_s)
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return out, True
            except TimeoutError:
                return out, False
            if not chunk:
                return out, True
            out += chunk


def test_generated_requests_never_break_the_proxy_or_its_log() -> None:
    servers = {name: Served(upstream(name)) for name in ("control", "alt")}
    spec = ExperimentSpec(
        name="ranker",
        alternatives=("v1", "v2"),
        params=({}, {"depth": 2}),
        policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
    )
    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=5)
    proxy = ProxySettings(
        upstream=servers["control"].url,
        read_timeout_s=5.0,
        connect_timeout_s=1.0,
        unit_header="X-User-Id",
        unit_cookie="uid",
    )
    routes = [
        Route(
            experiment="ranker",
            upstreams=(None, servers["alt"].url),
            path_prefix="/s",
            reward_from="status",
        )
    ]
    side = Sidecar(engine, proxy=proxy, routes=routes)
    answered: list[bytes] = []  # every token the proxy answered with
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,  # the same requests on every run
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(methods, targets, headers, bodies, changes)
    def one(method: str, target: str, head: Any, body: bytes, change: Any) -> None:
        data = request_bytes(method, target, head, body, change)
        answer, closed = exchange(side.port, data)
        while (status := _STATUS.match(answer)) and status[2].startswith(b"1"):
            answer = answer[answer.find(b"\r\n\r\n") + 4 :]  # past a 100 Continue
        if not answer and not closed:  # waiting for a body it was promised (a decision,
            # if the route decides, is made and logged: its token comes with the answer)
            seen[0] = seen.get(0, 0) + 1
            return
        # an answer, well formed, and never the proxy's own failure: the upstreams are up
        # (a 5xx here would be autoexp's 502/504 or a crash in a handler)
        assert status is not None, (data, answer[:200])
        code = int(status[2])
        # a 505 only for HTTP/2 or later claimed in text
        assert code < 500 or (code == 505 and status[1] >= b"2"), (data, answer[:300])
        if change is None:  # a valid request is forwarded and answered by the upstream
            assert code == 200 and b"X-Upstream: " in answer, (data, answer[:300])
        seen[code] = seen.get(code, 0) + 1
        answered.extend(_TOKEN.findall(answer))

    try:
        one()
        # still serving, and deciding, after all of that
        answer, _ = exchange(side.port, b"GET /search?q=ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        answered.extend(_TOKEN.findall(answer))
        engine.flush()
        logged = [
            r["decision_id"] for r in engine.store.records("ranker") if r["type"] == "decision"
        ]
        keys = keys_from(SECRET)
        ids = [verify(keys, t.decode(), now=time.time()).id for t in answered]
        # every token answered is a decision logged, once; a decision logged without its
        # token answered is one whose request still waits for its body
        assert len(set(ids)) == len(ids) and set(ids) <= set(logged)
        assert len(logged) - len(ids) <= seen.get(0, 0), (len(logged), len(ids), seen)
        # the generator reached both the decided route and the proxy's refusals
        assert seen.get(200, 0) >= EXAMPLES / 4 and seen.get(400, 0) >= EXAMPLES / 10, seen
    finally:
        side.close()
        for s in servers.values():
            s.close()


@pytest.mark.parametrize("mode", ["500", "reset"])
def test_generated_valid_requests_never_fail_on_a_failing_alternative(mode: str) -> None:
    # The acceptance's "no failed user request on idempotent methods", over generated
    # valid requests: half the traffic goes to an alternative that answers 503 (or resets
    # the connection). A GET, HEAD, OPTIONS, PUT or DELETE without a body is retried on
    # control and answered by it; a request with a body, or a POST, is not retried (it
    # may have had effects) and gets the alternative's failure as it came.
    servers = {"control": Served(upstream("control")), "bad": Served(upstream("bad", mode))}
    spec = ExperimentSpec(
        name="ranker",
        alternatives=("v1", "v2"),
        policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
    )
    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=6)
    proxy = ProxySettings(upstream=servers["control"].url, read_timeout_s=5.0)
    routes = [Route(experiment="ranker", upstreams=(None, servers["bad"].url), path_prefix="/s")]
    side = Sidecar(engine, proxy=proxy, routes=routes)
    retried: list[bool] = []

    @settings(
        max_examples=EXAMPLES // 3,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(methods, targets, headers, bodies)
    def one(method: str, target: str, head: Any, body: bytes) -> None:
        data = request_bytes(method, target, head, body, None)
        answer, _ = exchange(side.port, data)
        status = _STATUS.match(answer)
        assert status is not None, (data, answer[:200])
        has_body = b"Content-Length: " in data
        if method in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE") and not has_body:
            assert status[2] == b"200" and b"X-Upstream: control" in answer, (data, answer[:300])
            if target.startswith("/s") and b"X-Autoexp-Decision: " not in answer:
                retried.append(True)  # decided for the alternative, answered by control
        elif target.startswith("/s"):  # not retried: control's answer or the failure
            assert status[2] in (b"200", b"502", b"503"), (data, answer[:300])

    try:
        one()
        # the alternative was chosen, failed and was retried on control many times over
        assert len(retried) >= EXAMPLES // 20, len(retried)
    finally:
        side.close()
        for s in servers.values():
            s.close()
