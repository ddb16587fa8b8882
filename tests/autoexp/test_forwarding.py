"""The proxy's forwarding against real upstream servers on 127.0.0.1: routing, headers,
streamed bodies, decisions and their tokens, sticky units, failing open, and an
alternative that errors, hangs or resets being retried on control."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import re
import socket
import threading
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from aiohttp import web

from autoexp.config import parse_config
from autoexp.engine import Engine, ExperimentSpec
from autoexp.errors import ConfigError, StoreError
from autoexp.proxy.app import FORWARDER, OFFLOAD
from autoexp.proxy.routes import ProxySettings, Route
from autoexp.store.memory import MemoryStore
from autoexp.tokens import keys_from, verify
from policies import OffPolicyCS, ThompsonBeta, TrafficCap
from policies.greedy import EpsilonGreedy
from policies.safety import Guardrail
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
        if "slow_body" in request.query or "break_body" in request.query:
            # a 2 MiB answer in 64 KiB pieces over about 1.6 s; "break_body" aborts it
            # after the head and the first piece
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            await response.prepare(request)
            for i in range(32):
                if i == 1 and "break_body" in request.query:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                await response.write(b"x" * 65536)
                await asyncio.sleep(0.05)
            await response.write_eof()
            return response
        body = await request.read()
        extra = {"X-Autoexp-Reward": request.query["reward"]} if "reward" in request.query else {}
        return web.json_response(
            {
                "who": name,
                "method": request.method,
                "path_qs": request.rel_url.raw_path_qs,
                "headers": {k: v for k, v in request.headers.items()},
                "body_sha": hashlib.sha256(body).hexdigest(),
            },
            headers={"X-Upstream": name, "Connection": "keep-alive", **extra},
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
    servers: dict[str, Served],
    alt: str = "alt",
    *,
    read_timeout_s: float = 5.0,
    max_body_bytes: int = 10 * 1024 * 1024,
    preserve_host: bool = False,
    trusted_proxies: tuple[str, ...] = (),
    **route: Any,
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
        upstream=servers["control"].url,
        read_timeout_s=read_timeout_s,
        connect_timeout_s=1.0,
        max_body_bytes=max_body_bytes,
        preserve_host=preserve_host,
        trusted_proxies=tuple(ipaddress.ip_network(n) for n in trusted_proxies),
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


def test_the_sidecars_own_paths_are_never_forwarded(servers: dict[str, Served]) -> None:
    # Everything outside /_autoexp/ goes to the application; inside it, a path or method
    # the sidecar has no handler for went there too (GET /_autoexp/rewards answered by
    # the application's own 404). Now the sidecar's 405 naming its methods, or its 404.
    side = sidecar(servers)
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            for method, path, allowed in [
                ("POST", "/_autoexp/healthz", "GET, HEAD"),
                ("GET", "/_autoexp/rewards", "POST"),
                ("DELETE", "/_autoexp/admin/experiments/ranker/pause", "POST"),
            ]:
                r = http.request(method, path)
                assert r.status_code == 405 and r.headers["Allow"] == allowed, r.text
                assert r.json()["error"] == f"{method} {path}: not allowed; allowed: {allowed}"
            for path in ("/_autoexp/nope", "/_autoexp/", "/%5Fautoexp/metrics/x"):
                r = http.get(path)
                assert r.status_code == 404 and "not one of the sidecar's paths" in r.text
                assert "X-Upstream" not in r.headers
            assert http.get("/_autoexp/healthz").json()["ok"] is True
            r = http.get("/_autoexp")  # not under /_autoexp/: the application's
            assert r.status_code == 200 and r.json()["path_qs"] == "/_autoexp"
    finally:
        side.close()


@pytest.mark.parametrize("path", ["/other", "/search"])  # unmatched; decided
def test_forwarded_proto_and_host_pass_on_from_a_trusted_proxy_only(
    servers: dict[str, Served], path: str
) -> None:
    # Behind a load balancer that ends TLS, the application must see the client's scheme:
    # told "http" (the proxy's own), Django's SECURE_SSL_REDIRECT or Rails' force_ssl
    # redirect to https for ever. From a peer in trusted_proxies, the balancer's
    # X-Forwarded-Proto and -Host go on as it sent them; from any other, the proxy's own,
    # as before (a client cannot claim https). X-Forwarded-For is appended to either way.
    sent = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "shop.example",
        "X-Forwarded-For": "203.0.113.9",
    }
    balancer = ("10.0.0.0/8", "127.0.0.0/8")
    for trusted, headers, scheme, host in [
        ((), sent, "http", None),
        (("10.0.0.0/8", "::1"), sent, "http", None),  # 127.0.0.1 not among them
        (balancer, sent, "https", "shop.example"),
        (balancer, {}, "http", None),  # a trusted peer that sent none: the proxy's own
    ]:
        side = sidecar(servers, trusted_proxies=trusted)
        try:
            with httpx.Client(base_url=side.url, timeout=10) as http:
                r = http.get(path, headers={**headers, "X-User-Id": "u1"})
            assert r.status_code == 200
            seen = r.json()["headers"]
            h = {k.lower(): v for k, v in seen.items()}
            assert h["x-forwarded-proto"] == scheme, (trusted, seen)
            assert h["x-forwarded-host"] == (host or f"127.0.0.1:{side.port}"), (trusted, seen)
            prior = "203.0.113.9, " if headers else ""
            assert h["x-forwarded-for"] == prior + "127.0.0.1"
            assert (path == "/search") == ("X-Autoexp-Decision" in r.headers)
        finally:
            side.close()


def test_a_peer_is_trusted_by_address_network_and_family() -> None:
    settings = ProxySettings(
        upstream="http://x",
        trusted_proxies=(ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("fd00::/8")),
    )
    assert settings.trusts("10.1.2.3") and settings.trusts("fd00::5")
    assert settings.trusts("::ffff:10.1.2.3")  # an IPv4 peer on a dual-stack socket
    assert settings.trusts("fd00::5%eth0")  # with its zone id
    for peer in ("10.2.0.1", "127.0.0.1", "::1", "not an address", "", None):
        assert not settings.trusts(peer), peer
    assert not ProxySettings(upstream="http://x").trusts("10.1.2.3")  # none by default


def test_a_client_connection_without_a_whole_request_is_closed_after_client_idle_timeout_s(
    servers: dict[str, Served],
) -> None:
    # client_idle_timeout_s = 0.6: a connection that sends nothing, one that trickles its
    # head a byte every 0.2 s (slowloris), and one idle after its answer are each closed at
    # 0.6 s, not before, and within 2 s after (a loaded machine's timers); a request
    # whose upstream takes longer than that (1 s of a slow body) is not cut.
    spec = ExperimentSpec(name="ranker", alternatives=("v1", "v2"), policy=ThompsonBeta())
    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=1)
    proxy = ProxySettings(upstream=servers["control"].url, client_idle_timeout_s=0.6)
    side = Sidecar(engine, proxy=proxy, routes=[])

    def held(mode: str) -> float:
        with socket.create_connection(("127.0.0.1", side.port), timeout=10) as c:
            if mode == "answered":
                c.sendall(b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n")
                assert c.recv(65536).startswith(b"HTTP/1.1 200 ")
            began = time.monotonic()
            if mode == "trickle":
                c.sendall(b"GET /p HTTP/1.1\r\nHost: h\r\nX-Slow: ")
                with contextlib.suppress(OSError):  # the proxy closed it: a reset or a pipe
                    for _ in range(50):
                        time.sleep(0.2)
                        c.sendall(b"s")
                return time.monotonic() - began - 0.2  # the last send that found it open
            with contextlib.suppress(ConnectionError):
                while c.recv(65536):
                    pass
            return time.monotonic() - began

    try:
        for mode in ("silent", "trickle", "answered"):
            took = held(mode)
            assert 0.6 - 0.25 <= took < 0.6 + 2.0, (mode, took)
        with httpx.Client(base_url=side.url, timeout=10) as http:
            r = http.get("/p", params={"slow_body": 1})  # 2 MiB over about 1.6 s
            assert r.status_code == 200 and len(r.content) == 2 * 1024 * 1024
    finally:
        side.close()


def test_preserve_host_sends_the_clients_host_upstream_through_either_client(
    servers: dict[str, Served],
) -> None:
    # A sidecar in front of an application that builds its URLs (redirects, links) from
    # Host: with preserve_host the application sees the Host the client asked for, through
    # autoexp's own client (a GET, a HEAD) and aiohttp's (a body), decided or not; without,
    # the upstream's own address, as the test above shows.
    side = sidecar(servers, preserve_host=True)
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            for method, path, body in [
                ("GET", "/page", None),
                ("POST", "/page", b"x" * 100),
                ("GET", "/search", None),  # decided: control or the alternative's upstream
                ("POST", "/search", b"{}"),
            ]:
                r = http.request(method, path, content=body, headers={"Host": "shop.example"})
                # one Host header, not the upstream's beside it: aiohttp's server answers a
                # request with two "400 Duplicate 'Host' header found"
                assert r.status_code == 200, r.text
                h = {k.lower(): v for k, v in r.json()["headers"].items()}
                assert h["host"] == "shop.example" and h["x-forwarded-host"] == "shop.example"
            r = http.head("/page", headers={"Host": "shop.example:8443"})
            assert r.status_code == 200
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


def test_a_held_unit_is_decided_without_the_store_or_a_thread(
    servers: dict[str, Served],
) -> None:
    # A unit's first request reads and writes the store, in a worker thread (never on the
    # event loop); its later ones are served from the assignment the engine holds: no
    # store call, no thread hop, the same alternative with its first propensity.
    side = sidecar(servers)
    threads: list[str] = []
    real = side.engine.store.assign_many

    def assign_many(*args: Any, **kwargs: Any) -> list[str]:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    side.engine.store.assign_many = assign_many  # type: ignore[method-assign]
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            answers = [http.get("/search", headers={"X-User-Id": "u1"}) for _ in range(10)]
        assert len(threads) == 1 and threads[0] != side.thread.name
        assert len({r.json()["who"] for r in answers}) == 1
        keys = keys_from(SECRET)
        tickets = [verify(keys, r.headers["X-Autoexp-Decision"], now=time.time()) for r in answers]
        assert len({(t.arm, t.propensity) for t in tickets}) == 1
        assert len({t.id for t in tickets}) == 10  # each request its own decision
    finally:
        side.close()


def test_new_units_queued_together_are_assigned_in_one_store_call(
    servers: dict[str, Served],
) -> None:
    # While one new unit's store call is held, twelve more requests with new units queue
    # for the store thread; once it answers, they are decided in one store call (one
    # transaction), each with its own decision and its own answer.
    side = sidecar(servers)
    calls: list[int] = []
    entered, release = threading.Event(), threading.Event()
    real = side.engine.store.assign_many

    def assign_many(experiment: str, items: Any) -> list[str]:
        calls.append(len(items))
        entered.set()
        assert release.wait(10)
        return real(experiment, items)

    side.engine.store.assign_many = assign_many  # type: ignore[method-assign]

    def get(unit: str) -> httpx.Response:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            return http.get("/search", headers={"X-User-Id": unit})

    try:
        with ThreadPoolExecutor(13) as pool:
            first = pool.submit(get, "first")
            assert entered.wait(5)
            rest = [pool.submit(get, f"user-{i}") for i in range(12)]
            deadline = time.monotonic() + 5
            while side.app[OFFLOAD].queued < 12 and time.monotonic() < deadline:
                time.sleep(0.01)
            release.set()
            answers = [first.result(), *(f.result() for f in rest)]
        assert calls == [1, 12]
        assert all(r.status_code == 200 for r in answers)
        keys = keys_from(SECRET)
        tickets = [verify(keys, r.headers["X-Autoexp-Decision"], now=time.time()) for r in answers]
        assert len({t.id for t in tickets}) == 13
        assert side.app[FORWARDER].counts["fail_open"] == 0
    finally:
        release.set()
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
def test_a_failing_alternative_is_retried_on_control(
    servers: dict[str, Served], alt: str, caplog: pytest.LogCaptureFixture
) -> None:
    # 40 GETs, about half decided for an alternative that answers 503, hangs past the read
    # timeout (0.5 s) or resets the connection: every request is answered 200 by control,
    # and each retry is counted (and logged at most every 10 s, not once each).
    side = sidecar(servers, alt, read_timeout_s=0.5)
    try:
        began = time.monotonic()
        with httpx.Client(base_url=side.url, timeout=10) as http:
            answers = [http.get("/search") for _ in range(40)]
        elapsed = time.monotonic() - began
        assert [r.status_code for r in answers] == [200] * 40
        assert {r.json()["who"] for r in answers} == {"control"}
        retried = side.app[FORWARDER].counts["retried"]
        # each failure fed the alternative's statistics a reward of 0 (its guardrail sees it)
        applied = settle(side)
        assert applied["policy.n"][1] == retried and applied["policy.sum_reward"][1] == 0
        decided_alt = sum(
            r.headers.get("X-Autoexp-Decision") is not None
            and r.json()["headers"]["X-Autoexp-Alternative"] == "v1"
            for r in answers
        )
        assert retried >= 5 and retried + decided_alt >= 40
        # the throttle says the first and then one per full 10 s: 1 + elapsed // 10 lines
        # at most (one per retry, 5 or more, without it)
        said = [r for r in caplog.records if "retried on control" in r.getMessage()]
        assert 1 <= len(said) <= 1 + int(elapsed // 10), len(said)
    finally:
        side.close()


def test_alternative_timeout_s_answers_a_slow_alternatives_users_from_control(
    servers: dict[str, Served],
) -> None:
    # The alternative answers after 2 s, inside the proxy's read timeout (5 s): without
    # alternative_timeout_s its users wait the 2 s and get its answer; with 0.3 s, each GET
    # and HEAD (autoexp's own client) decided for it goes to control after
    # 0.3 s, counted in retried and fed to the alternative's statistics as a 0. A POST with
    # a body cannot go to control instead: it keeps the proxy's read timeout and gets the
    # alternative's answer.
    for limit in (None, 0.3):
        side = sidecar(servers, "hang", read_timeout_s=5.0, alternative_timeout_s=limit)
        try:
            with httpx.Client(base_url=side.url, timeout=10) as http:
                if limit is not None:
                    # first, while the allocation is a fresh 0.5 (no reward, no refresh
                    # yet): until one is decided for the alternative, at most 12, which
                    # all go to control with probability 0.5**12 = 2.4e-4
                    posted: list[str] = []
                    while "hang" not in posted and len(posted) < 12:
                        posted.append(http.post("/search", content=b"{}").json()["who"])
                    assert posted[-1] == "hang" and set(posted) <= {"control", "hang"}
                    who = [http.get("/search").json()["who"] for _ in range(8)]
                    heads = [http.head("/search").headers["X-Upstream"] for _ in range(6)]
                else:  # until one is decided for the alternative (as above)
                    who = []
                    while "hang" not in who and len(who) < 12:
                        who.append(http.get("/search").json()["who"])
            retried = side.app[FORWARDER].counts["retried"]
            if limit is None:
                assert who[-1] == "hang" and retried == 0  # waited for, answered by it
            else:
                # 14 draws at 0.5, all for control with probability 0.5**14 = 6e-5
                assert set(who) == set(heads) == {"control"} and retried >= 1
                # the route reads no reward from answers: only the timeouts' zeros arrive
                assert settle(side)["policy.n"] == [0.0, retried]
        finally:
            side.close()


def test_a_client_gone_mid_answer_is_not_an_upstream_failure(servers: dict[str, Served]) -> None:
    # 12 clients read the head of a slow 2 MiB answer, then reset their connections (RST,
    # SO_LINGER 0) while the proxy is still streaming: the proxy counts each as client_gone,
    # never as an upstream error, retries nothing, and rewards each decision from its
    # status (200: 1.0) for whichever alternative answered. Counting them as failures (as
    # before) would hand each alternative a 0 and a retry for its user's disconnect.
    import socket
    import struct

    side = sidecar(servers, reward_from="status")
    try:
        for _ in range(12):
            with socket.create_connection(("127.0.0.1", side.port), timeout=5) as sock:
                sock.sendall(b"GET /search?slow_body=1 HTTP/1.1\r\nHost: t\r\n\r\n")
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        forwarder = side.app[FORWARDER]
        deadline = time.monotonic() + 10  # each answer's remaining writes fail within 1.6 s
        while forwarder.counts["client_gone"] < 12 and time.monotonic() < deadline:
            time.sleep(0.02)
        counts = dict(forwarder.counts)
        state = settle(side)
        assert counts.get("client_gone") == 12
        assert not {"upstream_error", "upstream_timeout", "retried"} & counts.keys()
        assert sum(state["policy.n"]) == 12 and sum(state["policy.sum_reward"]) == 12.0
    finally:
        side.close()


def test_a_body_that_cannot_be_read_whole_is_the_clients_fault(
    servers: dict[str, Served],
) -> None:
    # Two ways a body streamed up fails that are no upstream's doing: 6 clients declare 100
    # bytes, send 10 and close; 6 send a chunked body past max_body_bytes (1,000 here; no
    # Content-Length to refuse it by up front). aiohttp's client reports either as a
    # ClientError of its own, which the proxy took for the upstream's: a 502, counted as
    # upstream_error, and a 0 for the decision's alternative. Now: client_gone counts the
    # first, the second gets a 413, and none of the 12 decisions is rewarded from them.
    import socket

    side = sidecar(servers, reward_from="status", max_body_bytes=1_000)
    forwarder = side.app[FORWARDER]
    try:
        for _ in range(6):
            with socket.create_connection(("127.0.0.1", side.port), timeout=5) as sock:
                sock.sendall(b"POST /search HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
                sock.sendall(b"0123456789")
                time.sleep(0.05)  # decided, and its 10 bytes on their way upstream

        def chunks() -> Iterator[bytes]:
            yield from [b"x" * 500] * 10

        with httpx.Client(base_url=side.url, timeout=10) as http:
            for _ in range(6):
                r = http.post("/search", content=chunks())
                assert r.status_code == 413, r.text
                assert r.json()["error"] == "body: larger than 1000 bytes"
        deadline = time.monotonic() + 10
        while forwarder.counts["client_gone"] < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        counts = dict(forwarder.counts)
        state = settle(side)
        side.engine.flush()
        kinds = [r["type"] for r in side.engine.store.records("ranker")]
        assert counts.get("client_gone") == 6
        assert not {"upstream_error", "upstream_timeout", "retried"} & counts.keys()
        assert kinds == ["decision"] * 12 and sum(state["policy.n"]) == 0
    finally:
        side.close()


@pytest.mark.parametrize("alt", ["alt", "params"])
def test_an_upstream_breaking_off_mid_answer_is_cut_not_retried(
    servers: dict[str, Served], alt: str
) -> None:
    # Upstreams (both arms) send the head and 64 KiB, then abort. Once the head reached the
    # client a retry on control would write a second answer into the same connection, so
    # the proxy must close it instead: each of 16 GETs ends in a protocol error (never a
    # 200 with a whole body), nothing is retried, and every decision gets the lowest reward.
    side = sidecar(servers, alt, reward_from="status")
    try:
        failures = 0
        for _ in range(16):
            with httpx.Client(base_url=side.url, timeout=10) as http:
                try:
                    r = http.get("/search?break_body=1")
                except httpx.HTTPError:
                    failures += 1
                else:
                    raise AssertionError(f"a whole answer: {r.status_code}, {len(r.content)} B")
        assert failures == 16
        counts = side.app[FORWARDER].counts
        assert counts["upstream_error"] == 16 and counts["retried"] == 0
        state = settle(side)
        assert sum(state["policy.n"]) == 16 and sum(state["policy.sum_reward"]) == 0.0
    finally:
        side.close()


@pytest.mark.parametrize("alt", ["five", "hang", "reset"])
def test_a_failing_alternative_is_rolled_back_and_no_user_request_fails(
    servers: dict[str, Served], alt: str
) -> None:
    # Control answers 200 (reward 1, read from the status); the alternative answers 503,
    # hangs past the read timeout (0.5 s) or resets the connection. Each of its requests
    # is retried on control, so the user gets a 200, and it gets a 0: its guardrail (the
    # off-policy sequence, tuned for 50) sees 1 against 0 and rolls it back, after which
    # nothing reaches it. Users come 16 at a time, at most 480. Epsilon-greedy (0.5) in a
    # 50% cap sends it about a quarter of the traffic until then. Measured while this test
    # was written (4 runs of each kind): rolled back after 8 to 15 of its own failures,
    # within the first 32 requests; the bounds below (40 failures, 160 requests) leave
    # room for slow machines, where more requests are in flight before a refresh.

    spec = ExperimentSpec(
        name="ranker",
        alternatives=("v1", "v2"),
        policy=TrafficCap(policy=EpsilonGreedy(epsilon=0.5), explore_share=0.5),
        test=OffPolicyCS(n_expected=1_000),
        guardrails=(Guardrail(name="errors", harm="decrease", test=OffPolicyCS(n_expected=50)),),
        refresh_every=10,
    )
    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=11)
    route = Route(
        experiment="ranker",
        upstreams=(None, servers[alt].url),
        path_prefix="/search",
        reward_from="status",
    )
    proxy = ProxySettings(upstream=servers["control"].url, read_timeout_s=0.5)
    side = Sidecar(engine, proxy=proxy, routes=[route])
    forwarder = side.app[FORWARDER]
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http, ThreadPoolExecutor(16) as pool:
            codes: list[int] = []
            while len(codes) < 480 and engine.status("ranker")["status"][1] != "rolled_back":
                codes += pool.map(lambda _: http.get("/search").status_code, range(16))
                time.sleep(0.06)  # the forwarder applies its queued rewards every 50 ms
            failures = forwarder.counts["retried"]
            after = [http.get("/search").json() for _ in range(40)]
        assert engine.status("ranker")["status"] == ["exploring", "rolled_back"], len(codes)
        assert codes == [200] * len(codes)  # no user request failed
        assert failures <= 40 and len(codes) <= 160, (failures, len(codes))
        assert {a["headers"]["X-Autoexp-Alternative"] for a in after} == {"v1"}
        assert forwarder.counts["retried"] == failures  # nothing reached it afterwards
        (move,) = [r for r in engine.store.records("ranker") if r["type"] == "transition"]
        assert (move["arm"], move["new"], move["source"]) == (1, "rolled_back", "errors")
    finally:
        side.close()


def settle(side: Sidecar) -> dict[str, list[float]]:
    """Wait until the forwarder's queued rewards are applied; the policy's state per arm."""
    forwarder = side.app[FORWARDER]
    deadline = time.monotonic() + 10
    while (forwarder.pending or forwarder.applying) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not forwarder.pending and not forwarder.applying
    state = side.engine.store.read("ranker")
    return {k: v[0].tolist() for k, v in state.items() if k.startswith("policy.")}


@pytest.mark.parametrize(("reward_from", "expect"), [("status", 1.0), ("latency", 1.0)])
def test_rewards_read_from_answers(
    servers: dict[str, Served], reward_from: str, expect: float
) -> None:
    # POSTs (not retried): control answers 200 (reward 1), the alternative 503 (reward 0,
    # passed through to the user as it is); "latency" with a 60 s SLO rewards like "status".
    options: dict[str, Any] = {"reward_from": reward_from}
    if reward_from == "latency":
        options["slo_ms"] = 60_000.0
    side = sidecar(servers, "five", **options)
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            codes = [http.post("/search", content=b"q").status_code for _ in range(30)]
        state = settle(side)
        assert set(codes) == {200, 503}  # a fresh 50% cap: both, but for 2^-30
        assert state["policy.n"] == [codes.count(200), codes.count(503)]
        assert state["policy.sum_reward"] == [expect * codes.count(200), 0.0]
    finally:
        side.close()


def test_rewards_from_a_header_are_checked_and_hidden(servers: dict[str, Served]) -> None:
    side = sidecar(servers, reward_from="header")
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            ok = [http.get("/search", params={"reward": "0.25"}) for _ in range(10)]
            bad = [http.get("/search", params={"reward": v}) for v in ("7", "nan", "x")]
            none = http.get("/search")
        assert all("X-Autoexp-Reward" not in r.headers for r in [*ok, *bad, none])
        state = settle(side)
        assert sum(state["policy.n"]) == 10 and sum(state["policy.sum_reward"]) == 2.5
        assert side.app[FORWARDER].counts["rewards_refused"] == 3
    finally:
        side.close()


def test_rewards_survive_a_store_that_fails_for_a_while(servers: dict[str, Served]) -> None:
    # The store refuses the first two reward batches: they stay queued (counted) and are
    # applied once it answers; none is lost or doubled.
    side = sidecar(servers, reward_from="status")
    store = side.engine.store
    real = store.add_many
    failures = [2]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures[0]:
            failures[0] -= 1
            raise StoreError("store: refused for the test")
        return real(*args, **kwargs)

    store.add_many = flaky  # type: ignore[method-assign]
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            answers = [http.get("/search") for _ in range(20)]
        assert all(r.status_code == 200 for r in answers)
        # a failed store call also makes the engine fail open until it probes the store
        # again, so some answers may carry no decision: those earn nothing
        decided = sum("X-Autoexp-Decision" in r.headers for r in answers)
        deadline = time.monotonic() + 10
        while failures[0] and time.monotonic() < deadline:
            time.sleep(0.02)
        state = settle(side)
        assert decided >= 1
        assert sum(state["policy.n"]) == decided and sum(state["policy.sum_reward"]) == decided
        assert side.app[FORWARDER].counts["reward_store_errors"] == 2
    finally:
        side.close()


def test_a_refused_reward_does_not_take_the_others_in_its_batch_with_it(
    servers: dict[str, Served],
) -> None:
    # Six rewards handed to the applier together (one store call), one of them past its
    # decision's join window: it alone is refused and counted; the other five are applied.
    side = sidecar(servers, reward_from="status")
    forwarder = side.app[FORWARDER]
    try:
        good = [side.engine.decide("ranker") for _ in range(5)]
        d = side.engine.decide("ranker")
        late = dataclasses.replace(d, ticket=dataclasses.replace(d.ticket, issued=0.0))

        def queue_all() -> None:  # on the event loop, as the forwarder queues them
            for x in [*good[:2], late, *good[2:]]:
                forwarder._queue(x, 1.0)

        side.loop.call_soon_threadsafe(queue_all)
        deadline = time.monotonic() + 10
        while forwarder.counts["rewards"] + forwarder.counts["rewards_refused"] < 6:
            assert time.monotonic() < deadline, forwarder.counts
            time.sleep(0.02)
        state = settle(side)
        assert sum(state["policy.n"]) == 5 and sum(state["policy.sum_reward"]) == 5
        assert forwarder.counts["rewards"] == 5 and forwarder.counts["rewards_refused"] == 1
    finally:
        side.close()


def test_rewards_held_for_a_failing_store_are_bounded(servers: dict[str, Served]) -> None:
    # While the store refuses every reward batch, what the forwarder holds (queued on the
    # event loop, or handed to the applier thread and waiting to be tried again) never
    # exceeds max_pending: the rest is dropped and counted. Once the store answers, what
    # was held is applied, once.
    side = sidecar(servers, reward_from="status")
    forwarder = side.app[FORWARDER]
    forwarder.max_pending = 3
    store = side.engine.store
    real = store.add_many
    down = [True]

    def failing(*args: Any, **kwargs: Any) -> Any:
        if down[0]:
            raise StoreError("store: refused for the test")
        return real(*args, **kwargs)

    store.add_many = failing  # type: ignore[method-assign]
    try:
        held, decided = [], 0
        with httpx.Client(base_url=side.url, timeout=10) as http:
            for _ in range(80):  # about 2 s: the engine's store probe (once a second) lets
                answer = http.get("/search")  # it decide again after a failure
                assert answer.status_code == 200
                decided += "X-Autoexp-Decision" in answer.headers
                held.append(len(forwarder.pending) + forwarder.applying)
                time.sleep(0.02)  # the hand-over (every 50 ms) and the retries run between
        assert max(held) <= 3 and decided > 3
        deadline = time.monotonic() + 5
        while forwarder.counts["reward_store_errors"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        down[0] = False
        state = settle(side)
        counts = forwarder.counts
        # an engine that saw the store fail serves control without a decision until its
        # probe succeeds: those requests earned nothing and are neither held nor dropped
        applied = sum(state["policy.n"])
        assert counts["reward_store_errors"] >= 2 and counts["rewards_dropped"] >= 1
        assert 1 <= applied <= 3 and applied == counts["rewards"]
        assert applied + counts["rewards_dropped"] == decided
    finally:
        side.close()


def test_metrics_say_what_happened(servers: dict[str, Served]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    side = sidecar(servers, "five", reward_from="status")
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            codes = [http.get("/search").status_code for _ in range(30)]
            assert codes == [200] * 30  # the alternative's 503s were retried on control
            settle(side)
            side.engine.refresh()
            text = http.get("/_autoexp/metrics").text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

        def get(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]

        retried = side.app[FORWARDER].counts["retried"]
        assert get("autoexp_proxy_events_total", event="retried") == retried >= 1
        assert get("autoexp_rewarded", experiment="ranker", alternative="v2") == retried
        assert get("autoexp_reward_sum", experiment="ranker", alternative="v2") == 0
        assert get("autoexp_rewarded", experiment="ranker", alternative="v1") == 30 - retried
        share = get("autoexp_allocation", experiment="ranker", alternative="v1")
        assert share + get("autoexp_allocation", experiment="ranker", alternative="v2") == (
            pytest.approx(1.0)
        )
        assert get("autoexp_state", experiment="ranker", alternative="v2", state="exploring") == 1
        assert get("autoexp_store_up") == 1
        assert get("autoexp_paused", experiment="ranker") == 0
    finally:
        side.close()


def test_a_failing_decision_fails_open_to_control(servers: dict[str, Served]) -> None:
    side = sidecar(servers)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("store: down for the test")

    side.engine.store.assign_many = broken  # type: ignore[method-assign]
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
    trusting = json.loads(json.dumps(raw))
    trusting["proxy"]["trusted_proxies"] = ["10.0.0.0/8", "192.0.2.7", "fd00::/8"]
    proxy = parse_config(trusting).proxy
    assert proxy is not None and proxy.trusted_proxies == tuple(
        map(ipaddress.ip_network, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"])
    )
    (route,) = config.routes
    assert route.upstreams == (None, "http://127.0.0.1:8081") and route.method == "GET"
    assert route.matches("GET", "h", "/search/x", {"X-Beta": "1"})
    assert not route.matches("GET", "h", "/search/x", {"X-Beta": "2"})
    assert not route.matches("POST", "h", "/search", {"X-Beta": "1"})
    # a string prefix, as the README says (nginx's location): "/search/" for the folder only
    assert route.matches("GET", "h", "/searchx", {"X-Beta": "1"})
    folder = dataclasses.replace(route, path_prefix="/search/")
    assert folder.matches("GET", "h", "/search/x", {"X-Beta": "1"})
    # a host route: any case, any port of the request's Host
    hosted = json.loads(json.dumps(raw))
    hosted["experiments"]["ranker"]["route"] = {"host": "Shop.Example.com"}
    (by_host,) = parse_config(hosted).routes
    assert by_host.matches("GET", "shop.example.COM:8443", "/", {})
    assert not by_host.matches("GET", "example.com", "/", {})
    assert not folder.matches("GET", "h", "/searchx", {"X-Beta": "1"})
    assert not folder.matches("GET", "h", "/search", {"X-Beta": "1"})
    bad = [
        ({"proxy": {"upstream": "ftp://x"}}, "proxy.upstream: must be an http"),
        ({"proxy": {"upstream": "http://x/path"}}, "without path or query"),
        ({"proxy": {"upstream": "http://x", "read_timeout_s": 0}}, "proxy.read_timeout_s"),
        # an integer TOML holds and a float cannot (was an OverflowError)
        ({"proxy": {"upstream": "http://x", "connect_timeout_s": 10**400}}, "finite number"),
        ({"proxy": {"upstrem": "http://x"}}, "proxy.upstrem: unknown key"),
        # urlsplit's and .port's ValueErrors were tracebacks
        ({"proxy": {"upstream": "http://[::1"}}, "(got 'http://[::1': Invalid IPv6 URL)"),
        ({"proxy": {"upstream": "http://h:99999"}}, "got 'http://h:99999': Port out of range"),
        ({"proxy": {"upstream": "http://:80"}}, "proxy.upstream: must be an http(s)://host"),
        ({"upstream": "http://h:x"}, "alternatives[1].upstream: must be an http(s)://host:port"),
        ({"proxy": {"upstream": "http://x", "preserve_host": 1}}, "proxy.preserve_host: must be"),
        (
            {"proxy": {"upstream": "http://x", "websocket_idle_timeout_s": -1}},
            "proxy.websocket_idle_timeout_s: must be a finite number > 0",
        ),
        (
            {"proxy": {"upstream": "http://x", "client_idle_timeout_s": 0}},
            "proxy.client_idle_timeout_s: must be a finite number > 0",
        ),
        (
            {"proxy": {"upstream": "http://x", "trusted_proxies": "10.0.0.0/8"}},
            "proxy.trusted_proxies: must be a list of addresses or networks",
        ),
        (
            {"proxy": {"upstream": "http://x", "trusted_proxies": ["10.0.0.0/8", "lb"]}},
            "proxy.trusted_proxies[1]: not an IP address or network",
        ),
        (
            {"proxy": {"upstream": "http://x", "trusted_proxies": [10]}},
            "proxy.trusted_proxies[0]: not an IP address or network",
        ),
        ({"route": {"path_prefix": "search"}}, "experiments.ranker.route.path_prefix"),
        ({"route": {"path_prefix": "/_autoexp/x"}}, "the sidecar's own"),
        ({"route": {"method": "BREW"}}, "experiments.ranker.route.method"),
        ({"route": {"header": "no colon"}}, "experiments.ranker.route.header"),
        ({"route": {"header": "X Beta: 1"}}, "route.header: must be a header or cookie name"),
        ({"route": {"path_prefix": "/search?q=shoes"}}, "route.path_prefix: a path, without"),
        # matched against the Host without its port: these never matched a request
        ({"route": {"host": "shop.example.com:8080"}}, "route.host: must be a host name without"),
        ({"route": {"host": "https://shop.example.com"}}, "route.host: must be a host name"),
        ({"route": {"host": ""}}, "route.host: must be a host name"),
        (
            {"route": {"reward_from": "header", "reward_header": "X Reward"}},
            "route.reward_header: must be a header or cookie name",
        ),
        ({"route": {"reward_from": "vibes"}}, "experiments.ranker.route.reward_from"),
        # said missing (it said "must be a finite number > 0 (got 0.0)", a value not given)
        ({"route": {"reward_from": "latency"}}, "experiments.ranker.route.slo_ms: missing; "),
        ({"route": {"reward_from": "latency", "slo_ms": 0}}, "route.slo_ms: must be a finite"),
        ({"route": {"slo_ms": 100}}, "only with reward_from"),
        ({"route": {"alternative_timeout_s": 0}}, "route.alternative_timeout_s: must be"),
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
        with pytest.raises(ConfigError, match=re.escape(words)):
            parse_config(trial)


def test_through_the_proxy_alone_the_better_is_promoted_and_the_harmful_rolled_back() -> None:
    # Three upstreams that each set a Bernoulli reward header: control 0.3, a better
    # alternative 0.45, a harmful one that never earns (0). Users reach them only through
    # the proxy; it reads each answer's reward, the guardrail (harm "decrease") rolls the
    # harmful one back, the off-policy test promotes the better one, and then every
    # request goes to it. Epsilon-greedy keeps sampling every arm, so evidence accrues
    # for all three.
    # The order is not luck: an arm that never earns against control's 0.3 breaches a
    # guardrail tuned for 100 users within about a hundred of its own, while a difference
    # of 0.15 between 0.45 and 0.3 takes several hundred per arm to show at the 1,000-user
    # tuning (here: promoted by about user 1,000, the rollback some hundreds before; 11 of
    # 11 runs of this test agreed while it was written). 6,000 users is the bound.
    import random

    def bernoulli(name: str, p: float, seed: int) -> web.Application:
        rng = random.Random(seed)

        async def handler(request: web.Request) -> web.Response:
            reward = "1" if rng.random() < p else "0"
            return web.Response(text=name, headers={"X-Autoexp-Reward": reward})

        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        return app

    ups = {
        n: Served(bernoulli(n, p, s))
        for n, p, s in [("v1", 0.3, 1), ("v2", 0.45, 2), ("v3", 0.0, 3)]
    }
    spec = ExperimentSpec(
        name="ranker",
        alternatives=("v1", "v2", "v3"),
        policy=TrafficCap(policy=EpsilonGreedy(epsilon=0.3), explore_share=0.6),
        test=OffPolicyCS(n_expected=1_000),
        guardrails=(Guardrail(name="reward", harm="decrease", test=OffPolicyCS(n_expected=100)),),
        refresh_every=20,
    )
    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=5)
    route = Route(
        experiment="ranker",
        upstreams=(None, ups["v2"].url, ups["v3"].url),
        path_prefix="/",
        reward_from="header",
    )
    side = Sidecar(engine, proxy=ProxySettings(upstream=ups["v1"].url), routes=[route])
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            for n in range(6_000):
                assert http.get("/page").status_code == 200
                if n % 100 == 0:
                    status = engine.status("ranker")["status"]
                    if status[1] == "promoted":
                        break
            served = {http.get("/page").text for _ in range(30)}
            metrics = http.get("/_autoexp/metrics").text
        status = engine.status("ranker")["status"]
        assert status == ["exploring", "promoted", "rolled_back"], (n, status)
        assert served == {"v2"}
        moves = [r for r in engine.store.records("ranker") if r["type"] == "transition"]
        assert [(m["arm"], m["new"]) for m in moves] == [(2, "rolled_back"), (1, "promoted")]
        # each change in the metrics, by the rule, with its test and reason
        from prometheus_client.parser import text_string_to_metric_families

        (family,) = [
            f
            for f in text_string_to_metric_families(metrics)
            if f.name == "autoexp_last_change_time_seconds"
        ]
        got = {
            (s.labels["alternative"], s.labels["state"], s.labels["by"], s.labels["source"])
            for s in family.samples
        }
        assert got == {(m["alternative"], m["new"], "rule", m["source"]) for m in moves}
        assert all(s.labels["reason"] and s.labels["source"] for s in family.samples)
    finally:
        side.close()
        for u in ups.values():
            u.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        # request smuggling: both framings, which one the upstream would believe is unknown
        (
            b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"400",
        ),
        # a transfer coding but chunked: aiohttp's server undid the chunking and passed
        # the gzip bytes on as the plain body, the coding lost (RFC 9112 6.1: 501)
        (
            b"POST /search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"2\r\n\x1f\x8b\r\n0\r\n\r\n",
            b"501",
        ),
        (
            b"POST /search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
            b"2\r\n\x1f\x8b\r\n0\r\n\r\n",
            b"400",
        ),
        # two different Content-Lengths
        (
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"400",
        ),
        # a header line over aiohttp's 8,190-byte limit (aiohttp answers 400, not 431)
        (b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", b"400"),
        # not HTTP at all
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", b"400"),
        # HTTP/2 never comes as a text request line (aiohttp's parser takes any version)
        (b"GET /search HTTP/2.0\r\nHost: x\r\n\r\n", b"505"),
        (b"GET /search HTTP/0.9\r\nHost: x\r\n\r\n", b"400"),
    ],
)
def test_malformed_requests_get_a_4xx_and_decide_nothing(
    servers: dict[str, Served], request_bytes: bytes, status: bytes
) -> None:
    side = sidecar(servers)
    try:
        answer = raw(side.port, request_bytes)
        assert answer.split(b" ")[1] == status, answer[:80]
        assert side.engine.status("ranker")["version"] >= 1
        side.engine.flush()
        assert side.engine.store.records("ranker") == []  # nothing decided or logged
    finally:
        side.close()
