"""``Expect: 100-continue`` through the proxy (curl sends it on every upload over 1 KiB):
the proxy answers it and never sends it upstream, as nginx and Envoy do. Before, it went
upstream, and an upstream that ignores it (allowed: it may wait for the body instead) left
the request hanging: aiohttp's client waited for a 100 that never came, the upstream for a
body that was never sent."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator

import httpx
import pytest
from aiohttp import web

from autoexp.engine import Engine, ExperimentSpec
from autoexp.proxy.routes import ProxySettings, Route
from autoexp.store.memory import MemoryStore
from policies import ThompsonBeta, TrafficCap
from tests.autoexp.conftest import Served, Sidecar

SECRET = "f" * 32
MAX_BODY = 1024 * 1024


def ignoring(name: str) -> web.Application:
    """An upstream that ignores ``Expect`` (sends no 100) and waits for the body."""

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "who": name,
                "sha": hashlib.sha256(body).hexdigest(),
                "expect": request.headers.get("Expect"),
            }
        )

    async def ignore(request: web.Request) -> None:
        return None

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handler, expect_handler=ignore)
    return app


@pytest.fixture
def side() -> Iterator[Sidecar]:
    ups = {name: Served(ignoring(name)) for name in ("control", "alt")}
    spec = ExperimentSpec(
        name="upload",
        alternatives=("v1", "v2"),
        policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
    )
    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=5)
    routes = [Route(experiment="upload", upstreams=(None, ups["alt"].url), path_prefix="/up")]
    settings = ProxySettings(
        upstream=ups["control"].url, read_timeout_s=3.0, max_body_bytes=MAX_BODY
    )
    sidecar = Sidecar(engine, proxy=settings, routes=routes)
    try:
        yield sidecar
    finally:
        sidecar.close()
        for s in ups.values():
            s.close()


def test_an_upload_expecting_100_continue_reaches_an_upstream_that_ignores_it(
    side: Sidecar,
) -> None:
    # Unmatched and decided, to control and to the alternative's own upstream: each gets
    # its 200 with the whole body, and no upstream sees the Expect header. With the header
    # passed on, the first upload hung: no answer within the client's 10 s.
    body = bytes(range(256)) * 3000  # 768 KiB, under max_body_bytes
    with httpx.Client(base_url=side.url, timeout=10) as http:
        for path in ["/other", *[f"/up/{i}" for i in range(12)]]:
            r = http.post(path, content=body, headers={"Expect": "100-continue"})
            assert r.status_code == 200, r.text
            assert r.json()["sha"] == hashlib.sha256(body).hexdigest()
            assert r.json()["expect"] is None


def head_only(port: int, head: bytes) -> bytes:
    """Send a request's head alone, as a client waiting for its 100 does, and return what
    the proxy answers before any body (up to 2 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(head)
        got = b""
        try:
            while b"\r\n\r\n" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except TimeoutError:
            pass
        return got


def test_the_proxy_says_100_itself_and_refuses_a_body_too_large_before_it_is_sent(
    side: Sidecar,
) -> None:
    def head(length: int, expect: str = "100-continue") -> bytes:
        return (
            f"POST /up/x HTTP/1.1\r\nHost: app\r\nContent-Length: {length}\r\n"
            f"Expect: {expect}\r\n\r\n"
        ).encode()

    assert head_only(side.port, head(10)).startswith(b"HTTP/1.1 100 Continue\r\n")
    # over max_body_bytes: the 413 at once, no 100, so the client never uploads it
    got = head_only(side.port, head(MAX_BODY + 1))
    assert got.startswith(b"HTTP/1.1 413 "), got
    # an expectation the proxy cannot meet: 417, as RFC 9110 says
    assert head_only(side.port, head(10, "something-else")).startswith(b"HTTP/1.1 417 "), got
