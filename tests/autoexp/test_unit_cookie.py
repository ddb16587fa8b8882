"""``set_unit_cookie``: a browser without a unit gets one from the proxy (a random id in
``unit_cookie``), so its alternative holds from its first request; against real upstream
servers on 127.0.0.1."""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from autoexp.config import parse_config
from autoexp.engine import Engine, ExperimentSpec
from autoexp.errors import ConfigError
from autoexp.proxy.app import FORWARDER
from autoexp.proxy.routes import ProxySettings, Route
from autoexp.store.memory import MemoryStore
from policies import ThompsonBeta, TrafficCap
from tests.autoexp.conftest import Served, Sidecar
from tests.autoexp.test_forwarding import upstream

SECRET = "c" * 32
NAME = "autoexp_uid"
# secrets.token_urlsafe(16): 128 random bits in 22 URL-safe base64 characters
MINTED = re.compile(r"[A-Za-z0-9_-]{22}")


@pytest.fixture
def servers() -> Iterator[dict[str, Served]]:
    out = {name: Served(upstream(name)) for name in ("control", "alt")}
    try:
        yield out
    finally:
        for s in out.values():
            s.close()


def sidecar(servers: dict[str, Served], **settings: Any) -> Sidecar:
    spec = ExperimentSpec(
        name="page",
        alternatives=("v1", "v2"),
        policy=TrafficCap(policy=ThompsonBeta(), explore_share=0.5),
    )
    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=5)
    proxy = ProxySettings(
        upstream=servers["control"].url,
        unit_cookie=NAME,
        **({"set_unit_cookie": True} | settings),
    )
    routes = [Route(experiment="page", upstreams=(None, servers["alt"].url), path_prefix="/page")]
    return Sidecar(engine, proxy=proxy, routes=routes)


def test_a_new_browser_gets_a_unit_cookie_and_keeps_its_alternative(
    servers: dict[str, Served],
) -> None:
    side = sidecar(servers)
    try:
        # a browser: it keeps the cookies it is given, and has one of its own
        with httpx.Client(base_url=side.url, timeout=10, cookies={"theme": "dark"}) as browser:
            first = browser.get("/page/1")
            (set_cookie,) = first.headers.get_list("Set-Cookie")
            value = set_cookie.split(";")[0].removeprefix(f"{NAME}=")
            assert MINTED.fullmatch(value), set_cookie
            attributes = [a.strip() for a in set_cookie.split(";")[1:]]
            assert attributes == ["Max-Age=31536000", "Path=/", "SameSite=Lax", "HttpOnly"]
            # the application saw the same unit on this first request, beside its cookie
            sent = first.json()["headers"]["Cookie"]
            assert sorted(sent.split("; ")) == sorted(["theme=dark", f"{NAME}={value}"])
            who = {first.json()["who"]}
            for i in range(19):
                r = browser.get(f"/page/{i}")
                assert "Set-Cookie" not in r.headers  # it has one now
                assert r.json()["headers"]["Cookie"].count(NAME) == 1
                who.add(r.json()["who"])
            assert len(who) == 1  # sticky from the first request on
            # requests outside every route get no unit
            with httpx.Client(base_url=side.url, timeout=10) as other:
                assert "Set-Cookie" not in other.get("/elsewhere").headers
        units = decided_units(side)  # by their keyed hash: one unit, every decision
        assert len(units) == 20 and len(set(units)) == 1 and None not in units
    finally:
        side.close()


def test_each_new_browser_gets_its_own_unit_and_both_alternatives_are_served(
    servers: dict[str, Served],
) -> None:
    side = sidecar(servers)
    n = 60
    try:
        units, who = set(), Counter()
        for _ in range(n):
            with httpx.Client(base_url=side.url, timeout=10) as browser:
                r = browser.get("/page")
                units.add(r.cookies[NAME])
                who[r.json()["who"]] += 1
                again = browser.get("/page")  # the cookie sent back: the same alternative
                assert again.json()["who"] == r.json()["who"]
        assert len(units) == n
        # a fresh Thompson under a 50% cap gives the alternative half of the new units, and
        # half it stays: no reward comes (the route's reward_from is "none"), so no refresh
        # moves it. Binomial(60, 0.5) is outside [14, 46] with probability 2 * P(X <= 13),
        # 1.2e-5.
        assert 14 <= who["alt"] <= 46
        assert forwarder_counts(side)["fail_open"] == 0
    finally:
        side.close()


def forwarder_counts(side: Sidecar) -> Counter[str]:
    return side.app[FORWARDER].counts


def decided_units(side: Sidecar) -> list[str | None]:
    """Each logged decision's unit, as the log holds it (its keyed hash; ``None``: none)."""
    side.engine.flush()
    return [r["unit_hash"] for r in side.engine.store.records("page") if r["type"] == "decision"]


def test_a_unit_from_the_header_or_the_cookie_is_used_and_none_is_minted(
    servers: dict[str, Served],
) -> None:
    side = sidecar(servers)
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            by_header = http.get("/page", headers={"X-User-Id": "u1"})
            by_cookie = http.get("/page", headers={"Cookie": f"{NAME}=known-unit"})
        for r in (by_header, by_cookie):
            assert "Set-Cookie" not in r.headers
        assert by_cookie.json()["headers"]["Cookie"] == f"{NAME}=known-unit"
        units = decided_units(side)
        assert len(units) == 2 and len(set(units)) == 2 and None not in units
    finally:
        side.close()


def test_the_cookie_is_secure_behind_https_and_not_set_when_turned_off(
    servers: dict[str, Served],
) -> None:
    side = sidecar(servers, unit_cookie_max_age_s=3600)
    off = sidecar(servers, set_unit_cookie=False)
    try:
        with httpx.Client(base_url=side.url, timeout=10) as http:
            for proto in ("https", "HTTPS, http"):  # the client's hop is the first
                r = http.get("/page", headers={"X-Forwarded-Proto": proto})
                assert r.headers["Set-Cookie"].endswith(
                    "; Max-Age=3600; Path=/; SameSite=Lax; HttpOnly; Secure"
                )
            r = http.get("/page", headers={"X-Forwarded-Proto": "http, https"})
            assert not r.headers["Set-Cookie"].endswith("Secure")
        with httpx.Client(base_url=off.url, timeout=10) as http:
            r = http.get("/page")
        assert "Set-Cookie" not in r.headers and "Cookie" not in r.json()["headers"]
        assert decided_units(off) == [None]  # decided afresh
    finally:
        side.close()
        off.close()


def test_a_browser_whose_decision_failed_open_still_gets_its_unit(
    servers: dict[str, Served],
) -> None:
    # The store failing: the request goes to control, and the browser gets its unit all
    # the same, so once the store answers it is decided once and kept.
    side = sidecar(servers)
    store = side.engine.store

    def down(*args: Any, **kwargs: Any) -> Any:
        from autoexp.errors import StoreError

        raise StoreError("store: down for the test")

    real = store.assign_many
    store.assign_many = down  # type: ignore[method-assign]
    try:
        with httpx.Client(base_url=side.url, timeout=10) as browser:
            r = browser.get("/page")
            assert r.json()["who"] == "control" and MINTED.fullmatch(r.cookies[NAME])
            assert forwarder_counts(side)["fail_open"] == 1
            store.assign_many = real  # type: ignore[method-assign]
            who = {browser.get("/page").json()["who"] for _ in range(5)}
            assert len(who) == 1 and "Set-Cookie" not in browser.get("/page").headers
        units = decided_units(side)
        assert len(units) == 6 and len(set(units)) == 1 and None not in units
    finally:
        side.close()


def test_the_settings_are_checked() -> None:
    base = {
        "experiments": {
            "page": {
                "alternatives": ["v1", "v2"],
                "policy": {"name": "thompson-beta"},
                "route": {"path_prefix": "/page"},
            }
        }
    }

    def config(**proxy: Any) -> Any:
        return parse_config(base | {"proxy": {"upstream": "http://127.0.0.1:8080", **proxy}})

    made = config(unit_cookie="uid", set_unit_cookie=True, unit_cookie_max_age_s=60).proxy
    assert made.set_unit_cookie and made.unit_cookie_max_age_s == 60
    assert config(unit_cookie="uid").proxy.unit_cookie_max_age_s == 365 * 86_400
    bad = [
        ({"set_unit_cookie": True}, "proxy.set_unit_cookie: needs unit_cookie"),
        ({"unit_cookie": "uid", "set_unit_cookie": "yes"}, "proxy.set_unit_cookie: must be"),
        ({"unit_cookie": "my uid", "set_unit_cookie": True}, "proxy.unit_cookie: must be a"),
        ({"unit_cookie": "a;b", "set_unit_cookie": True}, "header or cookie name, letters,"),
        # a name no request can carry was taken, and stickiness silently never worked
        ({"unit_cookie": "a;b"}, "proxy.unit_cookie: must be a header or cookie name"),
        ({"unit_header": "X User"}, "proxy.unit_header: must be a header or cookie name"),
        ({"unit_header": ""}, "proxy.unit_header: must be a header or cookie name"),
        ({"unit_cookie_max_age_s": 0}, "proxy.unit_cookie_max_age_s: must be an integer"),
        ({"unit_cookie_max_age_s": 1.5}, "proxy.unit_cookie_max_age_s"),
        ({"unit_cookie_max_age_s": True}, "proxy.unit_cookie_max_age_s"),
    ]
    for proxy, words in bad:
        with pytest.raises(ConfigError, match=re.escape(words)):
            config(**proxy)
    # in a TOML file, as users write it
    raw = tomllib.loads(
        '[proxy]\nupstream = "http://127.0.0.1:8080"\nunit_cookie = "autoexp_uid"\n'
        "set_unit_cookie = true\n"
    )
    assert parse_config(base | raw).proxy.set_unit_cookie


def test_the_check_says_what_the_proxy_settings_do(tmp_path: Any) -> None:
    from autoexp.proxy.check import check

    path = tmp_path / "autoexp.toml"
    path.write_text(
        f'store = "sqlite:///{tmp_path / "state.db"}"\nsecret = "{SECRET}"\n\n'
        '[proxy]\nupstream = "http://127.0.0.1:9"\nunit_cookie = "autoexp_uid"\n'
        "set_unit_cookie = true\nunit_cookie_max_age_s = 2592000\npreserve_host = true\n\n"
        '[experiments.page]\nalternatives = ["v1", "v2"]\npolicy = { name = "thompson-beta" }\n'
        'route = { path_prefix = "/page", alternative_timeout_s = 0.5 }\n'
    )
    _, lines = check(str(path))
    (upstream,) = [line for line in lines if line.strip().startswith("upstream")]
    assert (
        "units from header X-User-Id or cookie autoexp_uid, set for 30 days where a routed "
        "request has no unit; the client's Host passed on)" in upstream
    ), upstream
    (route,) = [line for line in lines if line.strip().startswith("route:")]
    said = "path_prefix /page, an alternative's idempotent request to control after 0.5 s;"
    assert said in route, route
