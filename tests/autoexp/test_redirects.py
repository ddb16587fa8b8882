"""Redirects through the proxy: an application behind a sidecar sees the upstream's own
address as its Host (``127.0.0.1:8080``), so an absolute redirect it builds from it points
where the client cannot go. ``rewrite_redirects`` (on by default, as nginx's
``proxy_redirect default``) makes such a ``Location`` or ``Refresh`` URL relative; tested
on the rewriting itself and through real upstream servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from autoexp.config import parse_config
from autoexp.engine import Engine, ExperimentSpec
from autoexp.errors import ConfigError
from autoexp.proxy.routes import ProxySettings, Route
from autoexp.proxy.upstream import _origins, _rewritten
from autoexp.store.memory import MemoryStore
from policies import ThompsonBeta, TrafficCap
from tests.autoexp.conftest import Served, Sidecar

SECRET = "f" * 32
UP = _origins(["http://127.0.0.1:8080", "http://app", "https://alt.internal:443"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:8080/login?next=%2Fa#top", "/login?next=%2Fa#top"),
        ("http://127.0.0.1:8080", "/"),
        ("http://127.0.0.1:8080?x=1", "/?x=1"),
        ("http://127.0.0.1:8080#f", "/#f"),
        ("HTTP://127.0.0.1:8080/Case", "/Case"),  # scheme and host in any case; path kept
        ("http://app/a", "/a"),  # the default port, left out or spelled out
        ("http://app:80/a", "/a"),
        ("https://alt.internal/b", "/b"),
        ("https://alt.internal:443/b", "/b"),
        # left as they are: another site, another port, another scheme, relative
        ("https://accounts.example/login", "https://accounts.example/login"),
        ("http://127.0.0.1:80800/x", "http://127.0.0.1:80800/x"),
        ("http://127.0.0.1:8081/x", "http://127.0.0.1:8081/x"),
        ("https://127.0.0.1:8080/x", "https://127.0.0.1:8080/x"),
        ("http://app.example/x", "http://app.example/x"),
        ("/already/relative", "/already/relative"),
        ("login", "login"),
        # a user name and another host: not the upstream's address at all
        ("http://127.0.0.1:8080@evil.example/", "http://127.0.0.1:8080@evil.example/"),
        # a path that would read as a host once its origin were gone: not made relative
        ("http://127.0.0.1:8080//evil.example/x", "http://127.0.0.1:8080//evil.example/x"),
        ("http://127.0.0.1:8080/\\evil.example", "http://127.0.0.1:8080/\\evil.example"),
    ],
)
def test_location_on_an_upstreams_own_address_is_made_relative(value: str, expected: str) -> None:
    assert _rewritten("location", value, UP) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0; url=http://127.0.0.1:8080/next", "0; url=/next"),
        ("5;URL='http://app/next'", "5;URL='/next'"),
        ("3; url = http://127.0.0.1:8080", "3; url = /"),
        ("5; url=https://elsewhere.example/", "5; url=https://elsewhere.example/"),
        ("5", "5"),  # a reload of the same page: no URL to mend
    ],
)
def test_refresh_url_on_an_upstreams_own_address_is_made_relative(
    value: str, expected: str
) -> None:
    assert _rewritten("refresh", value, UP) == expected


def redirecting(name: str) -> web.Application:
    """An application that redirects as Django or Rails would behind a proxy that does
    not pass the client's Host: to an absolute URL built from the Host it was sent."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/login":
            return web.json_response({"who": name, "host": request.host})
        if request.path.endswith("/refresh"):
            return web.Response(
                text="moved", headers={"Refresh": f"0; url=http://{request.host}/login"}
            )
        return web.Response(
            status=303 if request.method == "POST" else 302,
            headers={
                "Location": f"http://{request.host}/login?next={request.path}",
                "X-Upstream": name,
            },
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@pytest.fixture
def apps() -> Iterator[dict[str, Served]]:
    out = {name: Served(redirecting(name)) for name in ("control", "alt")}
    try:
        yield out
    finally:
        for s in out.values():
            s.close()


def sidecar(apps: dict[str, Served], **proxy: Any) -> Sidecar:
    spec = ExperimentSpec(
        name="checkout",
        alternatives=("v1", "v2"),
        policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
    )
    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=3)
    routes = [Route(experiment="checkout", upstreams=(None, apps["alt"].url), path_prefix="/co")]
    settings = ProxySettings(upstream=apps["control"].url, connect_timeout_s=1.0, **proxy)
    return Sidecar(engine, proxy=settings, routes=routes)


def test_a_redirect_to_the_upstreams_address_brings_the_client_back_to_the_proxy(
    apps: dict[str, Served],
) -> None:
    # Through either of the proxy's clients (a GET: autoexp's own; a POST: aiohttp's),
    # decided or not, to control or to the alternative's own upstream: the Location comes
    # out relative, and a client following it asks the proxy, not 127.0.0.1:<upstream>.
    side = sidecar(apps)
    try:
        seen, served = set(), set()
        with httpx.Client(base_url=side.url, timeout=10) as http:
            for method, path in [("GET", "/account"), ("POST", "/account")] + [
                ("GET", f"/co/{i}") for i in range(40)
            ]:
                r = http.request(method, path, content=b"{}" if method == "POST" else None)
                assert r.status_code in (302, 303), r.text
                assert r.headers["Location"] == f"/login?next={path}"
                seen.add(r.headers.get("X-Autoexp-Decision") is not None)
                served.add(r.headers["X-Upstream"])
            r = http.get("/account", follow_redirects=True)
            assert r.status_code == 200 and r.url == httpx.URL(f"{side.url}/login?next=/account")
            assert r.json()["who"] == "control"
            r = http.get("/refresh")
            assert r.headers["Refresh"] == "0; url=/login"
        assert seen == {True, False}  # decided requests and unmatched ones both
        # both upstreams redirected: the alternative's address was rewritten too (at 50%
        # exploration and no rewards, Thompson sampling splits them evenly: 40 decided
        # requests all on one side would have probability 2 * 0.5^40; the engine is seeded)
        assert served == {"control", "alt"}
    finally:
        side.close()


def test_rewrite_redirects_false_and_preserve_host_leave_location_as_sent(
    apps: dict[str, Served],
) -> None:
    side = sidecar(apps, rewrite_redirects=False)
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            r = http.get("/account")
            assert r.headers["Location"] == f"{apps['control'].url}/login?next=/account"
    finally:
        side.close()
    # with the client's Host passed on, the application builds its redirect on it: there is
    # nothing of the upstream's to take out
    side = sidecar(apps, preserve_host=True)
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            r = http.get("/account", headers={"Host": "shop.example"})
            assert r.headers["Location"] == "http://shop.example/login?next=/account"
    finally:
        side.close()


def test_rewrite_redirects_is_read_from_the_config_and_checked() -> None:
    def proxy(**extra: Any) -> ProxySettings:
        raw = {
            "secret": SECRET,
            "proxy": {"upstream": "http://127.0.0.1:8080", **extra},
            "experiments": {"e": {"alternatives": ["a", "b"], "policy": {"name": "ucb1"}}},
        }
        settings = parse_config(raw).proxy
        assert settings is not None
        return settings

    assert proxy().rewrite_redirects is True  # on unless turned off, as nginx's default
    assert proxy(rewrite_redirects=False).rewrite_redirects is False
    with pytest.raises(ConfigError, match=r"proxy\.rewrite_redirects: must be true or false"):
        proxy(rewrite_redirects="no")


def test_the_check_says_when_redirects_are_passed_on_as_sent(tmp_path: Any) -> None:
    from autoexp.proxy.check import check

    def upstream_line(extra: str) -> str:
        path = tmp_path / "autoexp.toml"
        path.write_text(
            f'store = "sqlite:///{tmp_path / "state.db"}"\nsecret = "{SECRET}"\n\n'
            f'[proxy]\nupstream = "http://127.0.0.1:9"\n{extra}\n'
            '[experiments.page]\nalternatives = ["v1", "v2"]\n'
            'policy = { name = "thompson-beta" }\n'
        )
        _, lines = check(str(path))
        (line,) = [line for line in lines if line.strip().startswith("upstream")]
        return line

    said = "; redirects to an upstream's address passed on as sent"
    assert said in upstream_line("rewrite_redirects = false\n")
    assert "redirects" not in upstream_line("")  # the default says nothing
    # and how long a quiet WebSocket is kept (the line that reports the timeouts)
    assert ", an idle client 3630 s, a quiet WebSocket 3600 s;" in upstream_line("")
    assert ", an idle client 75 s," in upstream_line("client_idle_timeout_s = 75\n")
    assert ", a quiet WebSocket 120 s;" in upstream_line("websocket_idle_timeout_s = 120\n")
    # and whose X-Forwarded-Proto and -Host it passes on
    trusted = upstream_line('trusted_proxies = ["10.0.0.0/8", "fd00::1"]\n')
    assert "; X-Forwarded-Proto and -Host passed on from 10.0.0.0/8, fd00::1/128" in trusted
    assert "X-Forwarded" not in upstream_line("")
