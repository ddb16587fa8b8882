"""WebSockets through the proxy, against real aiohttp WebSocket upstreams on 127.0.0.1:
the handshake passed with its headers and subprotocol, messages both ways as they come
(flow control included), a declined upgrade answered as any request, a decided handshake
rewarded and retried on control, tunnels closed by either end, by an upstream's reset and
by the drain, and an ``https://`` upstream."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from autoexp.engine import Engine, ExperimentSpec
from autoexp.proxy.app import DRAIN, FORWARDER
from autoexp.proxy.routes import ProxySettings, Route
from autoexp.proxy.upstream import Forwarder
from autoexp.store.memory import MemoryStore
from policies import ThompsonBeta, TrafficCap
from tests.autoexp.conftest import Served, Sidecar

SECRET = "w" * 32
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample key
# Handshakes of 40 units sent to the alternative: a fresh Thompson under a 50% cap gives it
# 0.5 (measured: 2,000 of 4,000 fresh units), and no refresh comes within 40 events (every
# 100, or 10 s), so the count is Binomial(40, 0.5): outside [4, 36] with probability
# 2 * P(X <= 3) = 2e-8. Loose on purpose: a slow machine's 10 s refresh may lower the share.
ALT_LOW, ALT_HIGH = 4, 36


class Upstream:
    """A WebSocket upstream at ``/ws`` that says who it is and what it received, echoes
    what it is sent, and on request declines (``?refuse``: 403), fails (:attr:`fail`: 503),
    stalls, closes with a code or resets; every other path answers JSON, as a page."""

    def __init__(self, name: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.fail = False  # every handshake answered 503
        self.closed: list[int | None] = []  # each socket's close code, as it ended here
        self.stall_s = 0.0
        self.server = Served(self._app(), ssl_context)

    def _app(self) -> web.Application:
        async def ws(request: web.Request) -> web.StreamResponse:
            if "refuse" in request.query:
                return web.Response(status=403, text="no sockets for you")
            if self.fail:
                return web.Response(status=503, text="down")
            sock = web.WebSocketResponse(protocols=("chat.v2",), max_msg_size=64 << 20)
            await sock.prepare(request)
            await sock.send_json(
                {
                    "who": self.name,
                    "path_qs": request.rel_url.raw_path_qs,
                    "headers": dict(request.headers),
                }
            )
            try:
                async for m in sock:
                    if m.type == aiohttp.WSMsgType.BINARY:
                        await sock.send_bytes(m.data)
                    elif m.data == "close-4000":
                        await sock.close(code=4000, message=b"bye")
                    elif m.data == "reset":  # an RST, not a FIN: lingering off
                        assert request.transport is not None
                        _reset(request.transport.get_extra_info("socket"))
                        request.transport.abort()
                    elif m.data == "stall":  # read nothing for a while
                        await asyncio.sleep(self.stall_s)
                        await sock.send_str("unstalled")
                    elif m.data.startswith("hush"):  # no answer: the client alone talks
                        pass
                    elif m.data.startswith("flood "):  # a burst the client may not read
                        for _ in range(int(m.data.split()[1])):
                            await sock.send_bytes(b"f" * 65536)
                        await sock.send_str("flooded")
                    else:
                        await sock.send_str(f"{self.name}:{m.data}")
            finally:
                self.closed.append(sock.close_code)
            return sock

        async def page(request: web.Request) -> web.Response:
            return web.json_response({"who": self.name, "path_qs": request.rel_url.raw_path_qs})

        app = web.Application()
        app.router.add_get("/ws", ws)
        app.router.add_route("*", "/{tail:.*}", page)
        return app

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def upstreams() -> Iterator[dict[str, Upstream]]:
    out = {name: Upstream(name) for name in ("control", "alt")}
    try:
        yield out
    finally:
        for u in out.values():
            u.close()


def sidecar(
    control: str,
    alt: str | None = None,
    *,
    read_timeout_s: float = 2.0,
    loop: str = "asyncio",
    preserve_host: bool = False,
    websocket_idle_timeout_s: float = 3600.0,
    **route: Any,
) -> Sidecar:
    """The proxy in front of ``control`` on ``loop`` (``"uvloop"``: as the workers run); a
    route over ``/ws`` (``route`` changes it) sends its alternative to ``alt`` when given."""
    spec = ExperimentSpec(
        name="chat",
        alternatives=("v1", "v2"),
        policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
    )
    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=3)
    routes = (
        [Route(experiment="chat", upstreams=(None, alt), **({"path_prefix": "/ws"} | route))]
        if alt is not None
        else []
    )
    proxy = ProxySettings(
        upstream=control,
        read_timeout_s=read_timeout_s,
        connect_timeout_s=1.0,
        unit_header="X-User-Id",
        preserve_host=preserve_host,
        websocket_idle_timeout_s=websocket_idle_timeout_s,
    )
    return Sidecar(engine, proxy=proxy, routes=routes, uvloop=loop == "uvloop")


def forwarder(side: Sidecar) -> Forwarder:
    return side.app[FORWARDER]


def run(coro: Any, timeout_s: float = 30.0) -> Any:
    """A test's client side, on its own event loop, bounded in time."""

    async def bounded() -> Any:
        async with asyncio.timeout(timeout_s):
            return await coro

    return asyncio.run(bounded())


def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.01)


LOOPS = ["asyncio", "uvloop"]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_websocket_passes_both_ways_with_its_handshake_headers_and_subprotocol(
    upstreams: dict[str, Upstream], loop: str
) -> None:
    side = sidecar(upstreams["control"].url, loop=loop)
    fwd = forwarder(side)
    big = os.urandom(4 << 20)  # 4 MiB each way: many reads and writes, none lost or reordered

    async def client() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(
                side.url + "/ws?room=1",
                protocols=("chat.v1", "chat.v2"),
                headers={"X-Custom": "kept", "X-Forwarded-For": "10.0.0.9"},
                max_msg_size=64 << 20,
                compress=15,  # asks for permessage-deflate
            ) as sock:
                assert sock.protocol == "chat.v2"  # the upstream's choice, passed back
                assert sock.compress == 15  # permessage-deflate, negotiated end to end
                hello = await sock.receive_json()
                assert hello["who"] == "control" and hello["path_qs"] == "/ws?room=1"
                h = {k.lower(): v for k, v in hello["headers"].items()}
                assert h["upgrade"].lower() == "websocket" and "upgrade" in h["connection"].lower()
                assert h["x-custom"] == "kept" and h["sec-websocket-protocol"] == "chat.v1,chat.v2"
                assert h["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
                assert h["host"] == f"127.0.0.1:{upstreams['control'].server.port}"
                assert fwd.websockets_open == 1
                for i in range(50):
                    await sock.send_str(f"m{i}")
                for i in range(50):
                    assert await sock.receive_str() == f"control:m{i}"
                await sock.send_bytes(big)
                echoed = await sock.receive_bytes()
                assert hashlib.sha256(echoed).digest() == hashlib.sha256(big).digest()
                async with http.get(side.url + "/_autoexp/metrics") as r:
                    assert "autoexp_proxy_websockets_open 1.0" in await r.text()
            assert sock.close_code == 1000

    try:
        run(client())
        until(lambda: upstreams["control"].closed == [1000])  # the client's close, passed on
        until(lambda: fwd.websockets_open == 0)
        assert fwd.counts["websockets"] == 1 and fwd.counts["websockets_broken"] == 0
    finally:
        side.close()


def test_preserve_host_sends_the_clients_host_with_the_handshake(
    upstreams: dict[str, Upstream],
) -> None:
    side = sidecar(upstreams["control"].url, preserve_host=True)
    try:
        with socket.create_connection(("127.0.0.1", side.port), timeout=5) as raw:
            raw.sendall(_handshake("/ws"))  # Host: example.test
            got = b""
            while b"}" not in got:  # the head, then the hello frame's JSON
                piece = raw.recv(65536)
                assert piece, got
                got += piece
        head, frame = got.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101 ")
        hello = json.loads(frame[frame.index(b"{") :])
        assert hello["headers"]["Host"] == "example.test"
    finally:
        side.close()


def test_a_quiet_websocket_outlives_the_read_timeout(upstreams: dict[str, Upstream]) -> None:
    # The read timeout bounds the wait for an answer's head and for each piece of a body;
    # a tunnel may stay quiet as long as its ends like (here three read timeouts).
    side = sidecar(upstreams["control"].url, read_timeout_s=0.3)

    async def client() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(side.url + "/ws", autoping=False) as sock:
                await sock.receive_json()
                await asyncio.sleep(0.9)
                await sock.send_str("still there")
                assert await sock.receive_str() == "control:still there"

    try:
        run(client())
        assert forwarder(side).counts["websockets_broken"] == 0
    finally:
        side.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_websocket_quiet_both_ways_for_its_idle_timeout_is_closed(
    upstreams: dict[str, Upstream], loop: str
) -> None:
    # websocket_idle_timeout_s = 1.5. Bytes either way keep a tunnel open: the client's
    # alone every 0.5 s for 2 s (unanswered), then the upstream's alone (its answer to
    # "stall" comes 0.9 s
    # later: at the next message the client has been quiet 1.95 s, over the timeout, the
    # upstream 1.05 s, under it; 0.45 s of slack each way for a busy machine's timers).
    # Quiet both ways, it is closed at the timeout: not before (the timer re-arms from the
    # last byte), and within 2 s after.
    upstreams["control"].stall_s = 0.9
    side = sidecar(upstreams["control"].url, loop=loop, websocket_idle_timeout_s=1.5)

    async def client() -> float:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(side.url + "/ws", autoping=False) as sock:
                await sock.receive_json()
                for _ in range(4):
                    await asyncio.sleep(0.5)
                    await sock.send_str("hush")
                await sock.send_str("stall")
                assert await sock.receive_str() == "unstalled"
                await asyncio.sleep(1.95 - 0.9)
                await sock.send_str("still")
                assert await sock.receive_str() == "control:still"
                last = time.monotonic()
                m = await sock.receive()
                assert m.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), m
                return time.monotonic() - last

    try:
        quiet = run(client())
        assert 1.5 - 0.05 <= quiet < 1.5 + 2.0, quiet
        fwd = forwarder(side)
        until(lambda: fwd.websockets_open == 0 and len(upstreams["control"].closed) == 1)
        assert fwd.counts["websockets_idle"] == 1 and fwd.counts["websockets_broken"] == 0
    finally:
        side.close()


def test_an_upstream_closing_with_a_code_or_resetting_ends_the_client_socket(
    upstreams: dict[str, Upstream],
) -> None:
    side = sidecar(upstreams["control"].url)
    fwd = forwarder(side)

    async def client() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(side.url + "/ws") as sock:
                await sock.receive_json()
                await sock.send_str("close-4000")
                m = await sock.receive()
                assert m.type == aiohttp.WSMsgType.CLOSE and m.data == 4000 and m.extra == "bye"
            async with http.ws_connect(side.url + "/ws") as sock:
                await sock.receive_json()
                await sock.send_str("reset")
                m = await sock.receive()  # the proxy closes the client's end: no hang
                assert m.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)

    try:
        run(client(), timeout_s=10)
        until(lambda: fwd.websockets_open == 0)
        assert fwd.counts["websockets"] == 2 and fwd.counts["websockets_broken"] == 1
    finally:
        side.close()


def test_a_client_that_vanishes_closes_the_upstream_end(upstreams: dict[str, Upstream]) -> None:
    side = sidecar(upstreams["control"].url)
    fwd = forwarder(side)
    try:
        with socket.create_connection(("127.0.0.1", side.port), timeout=5) as raw:
            raw.sendall(_handshake("/ws"))
            head = _read_head(raw)
            assert head.startswith(b"HTTP/1.1 101 ")
            until(lambda: fwd.websockets_open == 1)
            _reset(raw)
        # closed with a reset, no close frame: the upstream's socket ends all the same
        until(lambda: len(upstreams["control"].closed) == 1)
        until(lambda: fwd.websockets_open == 0)
    finally:
        side.close()


def _reset(sock: socket.socket) -> None:
    """Its close is to send a TCP reset (SO_LINGER on, with a timeout of 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _handshake(path: str, extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\n"
        f"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def _read_head(raw: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = raw.recv(65536)
        assert piece, f"closed before a whole head: {data!r}"
        data += piece
    return data.split(b"\r\n\r\n", 1)[0]  # the frames after it are the upstream's hello


def test_an_upstream_that_declines_answers_as_to_any_request_and_the_connection_goes_on(
    upstreams: dict[str, Upstream],
) -> None:
    # The handshake and a plain request behind it on the same connection: the 403 comes
    # back whole, and the next request is parsed as HTTP again (not tunnelled, not lost).
    side = sidecar(upstreams["control"].url)
    fwd = forwarder(side)
    try:
        with socket.create_connection(("127.0.0.1", side.port), timeout=5) as raw:
            raw.sendall(_handshake("/ws?refuse=1") + b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while got.count(b"HTTP/1.1 ") < 2 or not got.endswith(b"}"):
                piece = raw.recv(65536)
                assert piece, f"closed early: {got!r}"
                got += piece
        first, second = got.split(b"HTTP/1.1 ")[1:]
        assert first.startswith(b"403 ") and first.endswith(b"no sockets for you")
        assert b"\r\nupgrade:" not in first.lower()
        assert second.startswith(b"200 ")
        assert json.loads(second.split(b"\r\n\r\n", 1)[1]) == {
            "who": "control",
            "path_qs": "/page",
        }
        assert fwd.counts["websockets"] == 0 and fwd.websockets_open == 0
    finally:
        side.close()


def test_a_decided_websocket_carries_its_token_and_is_rewarded_on_its_handshake(
    upstreams: dict[str, Upstream],
) -> None:
    side = sidecar(upstreams["control"].url, upstreams["alt"].url, reward_from="status")
    fwd = forwarder(side)
    n = 40
    socks = []
    try:
        for i in range(n):
            raw = socket.create_connection(("127.0.0.1", side.port), timeout=5)
            socks.append(raw)
            raw.sendall(_handshake("/ws", f"X-User-Id: u{i}\r\n"))
            head = _read_head(raw).decode()
            assert head.startswith("HTTP/1.1 101 ")
            token = [
                line.split(":", 1)[1].strip()
                for line in head.split("\r\n")
                if line.lower().startswith("x-autoexp-decision:")
            ]
            assert len(token) == 1 and token[0].count(".") >= 1
        # each rewarded on its 101, while its socket is still open
        until(lambda: fwd.counts["rewards"] == n)
        assert fwd.websockets_open == n
        for raw in socks:
            raw.close()
        side.engine.flush()
        log = side.engine.store.records("chat")
        decisions = [r for r in log if r["type"] == "decision"]
        rewards = [r for r in log if r["type"] == "reward"]
        assert len(decisions) == n and len(rewards) == n
        assert all(r["reward"] == 1.0 for r in rewards)
        until(lambda: sum(len(u.closed) for u in upstreams.values()) == n)
        served = {u.name: len(u.closed) for u in upstreams.values()}
        assert ALT_LOW <= served["alt"] <= ALT_HIGH
        assert fwd.counts["fail_open"] == 0 and fwd.counts["retried"] == 0
    finally:
        for raw in socks:
            raw.close()
        side.close()


@pytest.mark.parametrize("how", ["503", "refused"])
def test_an_alternative_failing_the_handshake_is_retried_on_control(
    upstreams: dict[str, Upstream], how: str
) -> None:
    if how == "refused":  # a port nothing listens on
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            alt = f"http://127.0.0.1:{s.getsockname()[1]}"
    else:
        alt = upstreams["alt"].url
        upstreams["alt"].fail = True
    side = sidecar(upstreams["control"].url, alt, reward_from="status")
    fwd = forwarder(side)
    n = 40

    async def client() -> list[str]:
        who = []
        async with aiohttp.ClientSession() as http:
            for i in range(n):
                async with http.ws_connect(side.url + "/ws", headers={"X-User-Id": f"u{i}"}) as s:
                    who.append((await s.receive_json())["who"])
                    await s.send_str("hi")
                    assert await s.receive_str() == "control:hi"
        return who

    try:
        who = run(client())
        assert who == ["control"] * n  # no client saw the alternative's failure
        retried = fwd.counts["retried"]
        assert ALT_LOW <= retried <= ALT_HIGH
        until(lambda: fwd.counts["rewards"] == n)
        side.engine.flush()
        rewards = [r for r in side.engine.store.records("chat") if r["type"] == "reward"]
        # the alternative's decisions get the lowest reward, control's answers the highest
        assert sorted(r["reward"] for r in rewards) == [0.0] * retried + [1.0] * (n - retried)
    finally:
        side.close()


def _tunnel_answer(fwd: Forwarder) -> Any:
    """The one open tunnel's upstream exchange (its :class:`~autoexp.proxy.http1.Answer`)."""
    (close,) = fwd.drain.tunnels
    return close.__self__  # type: ignore[attr-defined]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_slow_reader_on_either_end_holds_the_other_back_not_the_proxys_memory(
    upstreams: dict[str, Upstream], loop: str
) -> None:
    # 32 MiB each way while the receiving end reads nothing for 1.5 s. Without flow control
    # the proxy would take it all in and hold what the kernel's socket buffers cannot
    # (loopback's autotuned buffers hold a few MiB): tens of MiB. With it, reading from the
    # sender pauses once 64 KiB (asyncio's high-water mark) waits to be written upstream,
    # or BUFFER_BYTES (256 KiB) of the upstream's wait for the client; one socket read (up
    # to 256 KiB) may come over: 320 and 512 KiB at most (seen: 216 to 310, and 512). 1 MiB
    # is the line: twice the most those bounds allow, far below what none would hold.
    control = upstreams["control"]
    control.stall_s = 1.5
    side = sidecar(control.url, loop=loop)
    fwd = forwarder(side)
    piece, pieces = b"p" * 65536, 512
    peak = {"to_upstream": 0, "to_client": 0}

    def watch(stop: asyncio.Event) -> Any:
        async def loop() -> None:
            while not stop.is_set():
                answer = _tunnel_answer(fwd)
                transport = answer._conn.transport
                if transport is not None:
                    peak["to_upstream"] = max(
                        peak["to_upstream"], transport.get_write_buffer_size()
                    )
                peak["to_client"] = max(peak["to_client"], answer.buffered)
                await asyncio.sleep(0.005)

        return asyncio.create_task(loop())

    async def client() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(side.url + "/ws", max_msg_size=1 << 20) as sock:
                await sock.receive_json()
                stop = asyncio.Event()
                watcher = watch(stop)
                # the upstream stalls while the client sends; it echoes every piece after
                await sock.send_str("stall")

                async def send() -> None:
                    for _ in range(pieces):
                        await sock.send_bytes(piece)

                sender = asyncio.create_task(send())
                assert await sock.receive_str() == "unstalled"
                for _ in range(pieces):
                    assert await sock.receive_bytes() == piece
                await sender
                # now the client stalls while the upstream floods it
                await sock.send_str(f"flood {pieces}")
                await asyncio.sleep(1.5)
                for _ in range(pieces):
                    assert len(await sock.receive_bytes()) == 65536
                assert await sock.receive_str() == "flooded"
                stop.set()
                await watcher

    try:
        run(client(), timeout_s=60)
        assert 0 < peak["to_upstream"] <= 1 << 20, peak
        assert 0 < peak["to_client"] <= 1 << 20, peak
    finally:
        side.close()


def test_the_drain_closes_open_websockets_at_once(upstreams: dict[str, Upstream]) -> None:
    # As the server stops (autoexp.proxy.serve calls Drain.begin), the tunnels close rather
    # than hold the stop for its timeout: their clients reconnect to the workers that serve.
    side = sidecar(upstreams["control"].url)
    fwd = forwarder(side)

    async def client() -> float:
        async with aiohttp.ClientSession() as http:
            socks = [await http.ws_connect(side.url + "/ws") for _ in range(3)]
            for sock in socks:
                await sock.receive_json()
            assert fwd.websockets_open == 3
            began = time.monotonic()
            side.loop.call_soon_threadsafe(side.app[DRAIN].begin)
            for sock in socks:
                m = await sock.receive()
                assert m.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), m
                await sock.close()
            return time.monotonic() - began

    try:
        took = run(client(), timeout_s=20)
        assert took < 5.0  # at once, not after the 10 s shutdown timeout (bounds the wait)
        until(lambda: fwd.websockets_open == 0 and len(upstreams["control"].closed) == 3)
        # a handshake during the drain is still served, and closed right after its 101
        with socket.create_connection(("127.0.0.1", side.port), timeout=5) as raw:
            raw.sendall(_handshake("/ws"))
            assert _read_head(raw).startswith(b"HTTP/1.1 101 ")
            raw.settimeout(5)
            while raw.recv(65536):  # the hello frame, then the end
                pass
        until(lambda: fwd.websockets_open == 0 and len(upstreams["control"].closed) == 4)
    finally:
        side.close()


def test_an_https_upstream_is_tunnelled_and_its_certificate_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    trusted, stranger = trustme.CA(), trustme.CA()
    servers = {}
    for name, ca in (("tls", trusted), ("forged", stranger)):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        servers[name] = Upstream(name, context)
    authorities = tmp_path / "ca.pem"
    trusted.cert_pem.write_to_path(str(authorities))
    monkeypatch.setenv("SSL_CERT_FILE", str(authorities))  # the system's, for this test
    sides = {name: sidecar(u.url) for name, u in servers.items()}

    async def client() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(sides["tls"].url + "/ws") as sock:
                assert (await sock.receive_json())["who"] == "tls"
                await sock.send_str("hi")
                assert await sock.receive_str() == "tls:hi"
            # a certificate no trusted authority signed: no tunnel, a 502 (as any request)
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(sides["forged"].url + "/ws")
            assert refused.value.status == 502

    try:
        run(client())
        assert servers["forged"].closed == [] and forwarder(sides["forged"]).websockets_open == 0
        assert forwarder(sides["forged"]).counts["upstream_error"] == 1
    finally:
        for side in sides.values():
            side.close()
        for u in servers.values():
            u.close()
