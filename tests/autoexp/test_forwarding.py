"""The proxy's forwarding against real upstream servers on 127.0.0.1: routing, headers,
streamed bodies, decisions and their tokens, sticky units, failing open, and an
alternative that errors, hangs or resets being retried on control."""

from __future__ import annotations

import asyncio
import hashlib
import json
import tomllib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from autoexp.config import parse_config
from autoexp.engine import Engine, ExperimentSpec
from autoexp.errors import ConfigError, StoreError
from autoexp.proxy.app import FORWARDER
from autoexp.proxy.routes import ProxySettings, Route
from autoexp.store.memory import MemoryStore
from policies import ThompsonBeta, TrafficCap
from tests.autoexp.conftest import Served, Sidecar

SECRET = "f" * 32


def upstream(name: str, mode: str = "ok") -> web.Application:
    """An upstream that says who it is and what it received; ``mode`` makes it fail."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if mode == "500":
            return web.Response(status=503, text="down")
        if mode == "hang":
            await asyncio.sleep(2)  # past the proxy's read timeout (0.5 s in the test)
        if mode == "reset":
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(1)
        body = await request.read()
        return web.json_response(
            {
                "who": name,
                "method": request.method,
                "path_qs": request.rel_url.raw_path_qs,
                "headers": {k: v for k, v in request.headers.items()},
                "body_sha": hashlib.sha256(body).hexdigest(),
            },
            headers={"X-Upstream": name, "Connection": "keep-alive"},
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@pytest.fixture
def servers() -> Iterator[dict[str, Served]]:
    out = {
        name: Served(upstream(name, mode))
        for name, mode in [
            ("control", "ok"),
            ("alt", "ok"),
            ("five", "500"),
            ("hang", "hang"),
            ("reset", "reset"),
        ]
    }
    try:
        yield out
    finally:
        for s in out.values():
            s.close()


def sidecar(
    servers: dict[str, Served], alt: str = "alt", *, read_timeout_s: float = 5.0, **route: Any
) -> Sidecar:
    spec = ExperimentSpec(
        name="ranker",
        alternatives=("v1", "v2"),
        params=({}, {"depth": 2}),
        policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
    )
    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=1)
    upstreams = (None, None if alt == "params" else servers[alt].url)
    routes = [
        Route(experiment="ranker", upstreams=upstreams, **({"path_prefix": "/search"} | route))
    ]
    proxy = ProxySettings(
        upstream=servers["control"].url, read_timeout_s=read_timeout_s, connect_timeout_s=1.0
    )
    return Sidecar(engine, proxy=proxy, routes=routes)


def test_unmatched_requests_pass_through_with_headers_and_streamed_bodies(
    servers: dict[str, Served],
) -> None:
    side = sidecar(servers)
    try:
        body = bytes(range(256)) * 8192  # 2 MiB, streamed both ways
        with httpx.Client(base_url=side.url, timeout=10) as http:
            r = http.post(
                "/other/path?q=a%20b&x=1",
                content=body,
                headers={
                    "X-Custom": "kept",
                    "Proxy-Authorization": "secret",
                    "X-Forwarded-For": "10.0.0.1",
                    "X-Autoexp-Decision": "spoofed",
                },
            )
        assert r.status_code == 200
        got = r.json()
        assert got["who"] == "control" and got["path_qs"] == "/other/path?q=a%20b&x=1"
        assert got["body_sha"] == hashlib.sha256(body).hexdigest()
        h = {k.lower(): v for k, v in got["headers"].items()}
        assert h["x-custom"] == "kept" and "proxy-authorization" not in h
        assert h["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
        assert (
            h["x-forwarded-proto"] == "http" and h["x-forwarded-host"] == f"127.0.0.1:{side.port}"
        )
        assert h["host"] == f"127.0.0.1:{servers['control'].port}"
        assert "x-autoexp-decision" not in h  # only autoexp sets these
        assert r.headers["X-Upstream"] == "control"
        assert "X-Autoexp-Decision" not in r.headers
    finally:
        side.close()


def test_matched_requests_are_decided_logged_and_rewardable(servers: dict[str, Served]) -> None:
    side = sidecar(servers)
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            seen = []
            for i in range(60):
                r = http.get("/search", params={"q": i})
                assert r.status_code == 200
                who = r.json()["who"]
                alternative = r.json()["headers"]["X-Autoexp-Alternative"]
                assert (who, alternative) in (("control", "v1"), ("alt", "v2"))
                seen.append(who)
                token = r.headers["X-Autoexp-Decision"]
                ok = http.post("/_autoexp/rewards", json={"token": token, "value": 1})
                assert ok.status_code == 202 and ok.json() == {"applied": [True]}
            # a fresh Thompson in a 50% cap sends about half to the alternative
            assert 15 <= seen.count("alt") <= 45
            sticky = {
                http.get("/search", headers={"X-User-Id": "u1"}).json()["who"] for _ in range(10)
            }
            assert len(sticky) == 1
        side.engine.flush()
        log = side.engine.store.records("ranker")
        assert sum(r["type"] == "decision" for r in log) == 70
        assert sum(r["type"] == "reward" for r in log) == 60
    finally:
        side.close()


def test_parameter_alternatives_reach_the_default_upstream_with_their_params(
    servers: dict[str, Served],
) -> None:
    side = sidecar(servers, alt="params")
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            got = [http.get("/search").json() for _ in range(40)]
        assert {g["who"] for g in got} == {"control"}
        params = [g["headers"].get("X-Autoexp-Params") for g in got]
        alternatives = [g["headers"]["X-Autoexp-Alternative"] for g in got]
        for p, a in zip(params, alternatives, strict=True):
            assert (a, p) in (("v1", None), ("v2", json.dumps({"depth": 2}, separators=(",", ":"))))
        assert "v2" in alternatives
    finally:
        side.close()


@pytest.mark.parametrize("alt", ["five", "hang", "reset"])
def test_a_failing_alternative_is_retried_on_control(servers: dict[str, Served], alt: str) -> None:
    # 40 GETs, about half decided for an alternative that answers 503, hangs past the read
    # timeout (0.5 s) or resets the connection: every request is answered 200 by control,
    # and each retry is counted.
    side = sidecar(servers, alt, read_timeout_s=0.5)
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            answers = [http.get("/search") for _ in range(40)]
        assert [r.status_code for r in answers] == [200] * 40
        assert {r.json()["who"] for r in answers} == {"control"}
        retried = side.app[FORWARDER].counts["retried"]
        decided_alt = sum(
            r.headers.get("X-Autoexp-Decision") is not None
            and r.json()["headers"]["X-Autoexp-Alternative"] == "v1"
            for r in answers
        )
        assert retried >= 5 and retried + decided_alt >= 40
    finally:
        side.close()


def test_a_failing_decision_fails_open_to_control(servers: dict[str, Served]) -> None:
    side = sidecar(servers)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("store: down for the test")

    side.engine.store.assign = broken  # type: ignore[method-assign]
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            r = http.get("/search", headers={"X-User-Id": "u1"})
        assert r.status_code == 200 and r.json()["who"] == "control"
        assert "X-Autoexp-Decision" not in r.headers
        assert side.app[FORWARDER].counts["fail_open"] == 1
    finally:
        side.close()


def test_an_unreachable_control_is_a_502_and_large_bodies_a_413(servers: dict[str, Served]) -> None:
    side = sidecar(servers)
    servers["control"].close()
    servers["control"] = Served(web.Application())  # another port; teardown closes it
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            r = http.get("/elsewhere")  # control's port is closed now
            assert r.status_code == 502 and r.json()["error"].startswith("upstream:")
            pass
        # a declared body over max_body_bytes (10 MiB) is refused before reading it
        head = b"POST /elsewhere HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n"
        assert raw(side.port, head).startswith(b"HTTP/1.1 413")
    finally:
        side.close()


def raw(port: int, data: bytes) -> bytes:
    """Send bytes on a fresh connection to 127.0.0.1:port; the first bytes answered."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        return sock.recv(4096)


def test_proxy_config_parses_and_errors_name_the_path() -> None:
    raw = tomllib.loads(
        """
        [proxy]
        upstream = "http://127.0.0.1:8080"
        unit_cookie = "uid"

        [experiments.ranker]
        alternatives = ["v1", { name = "v2", upstream = "http://127.0.0.1:8081" }]
        policy = { name = "thompson-beta" }
        route = { path_prefix = "/search", method = "get", header = "X-Beta: 1" }
        """
    )
    config = parse_config(raw)
    assert config.proxy == ProxySettings(upstream="http://127.0.0.1:8080", unit_cookie="uid")
    (route,) = config.routes
    assert route.upstreams == (None, "http://127.0.0.1:8081") and route.method == "GET"
    assert route.matches("GET", "h", "/search/x", {"X-Beta": "1"})
    assert not route.matches("GET", "h", "/search/x", {"X-Beta": "2"})
    assert not route.matches("POST", "h", "/search", {"X-Beta": "1"})
    bad = [
        ({"proxy": {"upstream": "ftp://x"}}, "proxy.upstream: must be an http"),
        ({"proxy": {"upstream": "http://x/path"}}, "without path or query"),
        ({"proxy": {"upstream": "http://x", "read_timeout_s": 0}}, "proxy.read_timeout_s"),
        ({"proxy": {"upstrem": "http://x"}}, "proxy.upstrem: unknown key"),
        ({"route": {"path_prefix": "search"}}, "experiments.ranker.route.path_prefix"),
        ({"route": {"path_prefix": "/_autoexp/x"}}, "the sidecar's own"),
        ({"route": {"method": "BREW"}}, "experiments.ranker.route.method"),
        ({"route": {"header": "no colon"}}, "experiments.ranker.route.header"),
        ({"route": None, "upstream": "http://x"}, "experiments.ranker.route: missing"),
        ({"proxy": None}, "proxy: missing; experiments with a route"),
    ]
    for change, words in bad:
        trial = json.loads(json.dumps(raw))
        body = trial["experiments"]["ranker"]
        if "route" in change:
            if change["route"] is None:
                del body["route"]
            else:
                body["route"] = change["route"]
        if "upstream" in change:
            body["alternatives"][1]["upstream"] = change["upstream"]
        if "proxy" in change:
            if change["proxy"] is None:
                del trial["proxy"]
            else:
                trial["proxy"] = change["proxy"]
        with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
            parse_config(trial)
