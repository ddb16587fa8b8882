"""The proxy's part of the config: where requests go, and which experiment takes which.

.. code-block:: toml

    [proxy]
    upstream = "http://127.0.0.1:8080"   # the application: control, and unmatched requests
    unit_header = "X-User-Id"            # sticky units from this header (or unit_cookie)
    # unit_cookie = "autoexp_uid"; set_unit_cookie = true: a browser without a unit gets
    # one (a random id in that cookie), so its alternative holds from its first request
    connect_timeout_s = 1.0
    read_timeout_s = 30.0
    max_body_bytes = 10_485_760
    preserve_host = false                # true: the client's Host header goes upstream
    rewrite_redirects = true             # Location: http://127.0.0.1:8080/x comes out as /x
    websocket_idle_timeout_s = 3600.0    # a WebSocket with no byte either way this long: closed
    client_idle_timeout_s = 3630.0       # a connection without a whole request: closed (keep
    # it above a load balancer's idle timeout in front; lower it if clients come straight)
    trusted_proxies = []                 # ["10.0.0.0/8"]: from these peers (a load balancer
    # ending TLS in front), X-Forwarded-Proto and -Host go upstream as they sent them

    [experiments.ranker]
    alternatives = ["v1", { name = "v2", upstream = "http://127.0.0.1:8081" },
                    { name = "fast", params = { timeout_ms = 200 } }]
    route = { path_prefix = "/search", method = "GET" }   # also host, header = "X-Beta: 1"
    # alternative_timeout_s = 0.5: each wait for an alternative's bytes, on a request that
    # can go to control instead (idempotent, no body): before its head, control answers;
    # after, the answer is cut off as any broken one (the proxy's read_timeout_s otherwise)
    # rewards read from each answer: reward_from = "status" (1 below 400, else 0),
    # "latency" (1 if below 400 within slo_ms), "header" (the upstream's X-Autoexp-Reward,
    # or reward_header = "..."), or "none" (the default: rewards come to /_autoexp/rewards)

An alternative is another upstream, or the same upstream told its parameters in the
``X-Autoexp-Params`` header (JSON). Validated once, errors by dotted path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any
from urllib.parse import urlsplit

from policies.build import finite

from ..errors import ConfigError

__all__ = ["ProxySettings", "Route", "parse_proxy", "parse_route"]

_PROXY = (
    "upstream",
    "unit_header",
    "unit_cookie",
    "set_unit_cookie",
    "unit_cookie_max_age_s",
    "connect_timeout_s",
    "read_timeout_s",
    "max_body_bytes",
    "preserve_host",
    "rewrite_redirects",
    "websocket_idle_timeout_s",
    "client_idle_timeout_s",
    "trusted_proxies",
)
_ROUTE = (
    "path_prefix",
    "host",
    "method",
    "header",
    "reward_from",
    "slo_ms",
    "reward_header",
    "alternative_timeout_s",
)
_FLAGS = {"set_unit_cookie": False, "preserve_host": False, "rewrite_redirects": True}
_REWARD_FROM = ("none", "status", "latency", "header")
# RFC 9110's token: what a header's name, and a cookie's (RFC 6265), is made of; a name
# with a space or a ";" never reaches the proxy as one, so a route or a unit by it would
# never match
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")
_TOKEN_CHARS = "letters, digits and !#$%&'*+-.^_`|~ only"


def _token(value: Any, where: str) -> str:
    if not (isinstance(value, str) and _TOKEN.fullmatch(value)):
        raise ConfigError(
            f"{where}: must be a header or cookie name, {_TOKEN_CHARS} (got {value!r:.60})"
        )
    return value


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _url(value: Any, where: str) -> str:
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        port = None if parts is None else parts.port  # a number in [0, 65535]
    except ValueError as e:  # "Invalid IPv6 URL", "Port out of range 0-65535", ...
        raise ConfigError(
            f"{where}: must be an http(s)://host:port URL (got {value!r}: {e})"
        ) from None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ConfigError(f"{where}: must be an http(s)://host:port URL (got {value!r})")
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"{where}: a base URL without path or query (got {value!r})")
    return f"{parts.scheme}://{parts.netloc}"


def _positive(raw: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = raw.get(key, default)
    x = finite(value)
    if x is None or not x > 0:
        raise ConfigError(f"{where}.{key}: must be a finite number > 0 (got {value!r:.60})")
    return x


@dataclass(frozen=True)
class ProxySettings:
    """The ``[proxy]`` table."""

    upstream: str
    unit_header: str | None = "X-User-Id"
    unit_cookie: str | None = None
    set_unit_cookie: bool = False  # mint a unit for a routed request without one
    unit_cookie_max_age_s: int = 365 * 86_400
    connect_timeout_s: float = 1.0
    read_timeout_s: float = 30.0
    max_body_bytes: int = 10 * 1024 * 1024
    preserve_host: bool = False  # the client's Host upstream, not the upstream's own
    rewrite_redirects: bool = True  # an upstream's own address out of Location and Refresh
    websocket_idle_timeout_s: float = 3600.0  # a tunnel quiet both ways this long is closed
    # a client's connection without a whole request this long is closed (aiohttp's
    # keep-alive timeout: also what a client trickling its head gets)
    client_idle_timeout_s: float = 3630.0
    # peers whose X-Forwarded-Proto and -Host are passed on as they sent them (a load
    # balancer ending TLS in front); from any other peer they are the proxy's own
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()

    def trusts(self, peer: str | None) -> bool:
        """Whether ``peer`` (an address, as aiohttp gives ``request.remote``) is in
        ``trusted_proxies``."""
        if peer is None or not self.trusted_proxies:
            return False
        try:
            ip = ip_address(peer.partition("%")[0])  # an IPv6 zone id is not an address's
        except ValueError:
            return False
        if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:  # a dual-stack socket
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.trusted_proxies)


def _networks(value: Any, where: str) -> tuple[IPv4Network | IPv6Network, ...]:
    if not isinstance(value, list):
        raise ConfigError(
            f"{where}: must be a list of addresses or networks, like "
            f'["10.0.0.0/8", "192.0.2.7"] (got {value!r:.60})'
        )
    nets = []
    for i, item in enumerate(value):
        try:
            if not isinstance(item, str):  # ip_network takes 10 for 0.0.0.10
                raise TypeError
            nets.append(ip_network(item, strict=False))
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}[{i}]: not an IP address or network such as 10.0.0.0/8 (got {item!r:.60})"
            ) from None
    return tuple(nets)


def parse_proxy(raw: Any, where: str = "proxy") -> ProxySettings:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table (got {raw!r})")
    for key in raw:
        if key not in _PROXY:
            raise ConfigError(f"{where}.{key}: unknown key; accepted: {', '.join(_PROXY)}")
    if "upstream" not in raw:
        raise ConfigError(f"{where}.upstream: missing; the application's base URL")
    names = {"unit_header": raw.get("unit_header", "X-User-Id"), "unit_cookie": None}
    for key in ("unit_header", "unit_cookie"):
        value = raw.get(key, names[key])
        names[key] = None if value is None else _token(value, f"{where}.{key}")
    flags = {key: raw.get(key, default) for key, default in _FLAGS.items()}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: must be true or false (got {value!r:.60})")
    set_cookie = flags["set_unit_cookie"]
    if set_cookie and names["unit_cookie"] is None:
        raise ConfigError(
            f"{where}.set_unit_cookie: needs unit_cookie, the name of the cookie to set"
        )
    age = raw.get("unit_cookie_max_age_s", 365 * 86_400)
    if isinstance(age, bool) or not isinstance(age, int) or age < 1:
        raise ConfigError(
            f"{where}.unit_cookie_max_age_s: must be an integer number of seconds >= 1 "
            f"(got {age!r:.60})"
        )
    size = raw.get("max_body_bytes", 10 * 1024 * 1024)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"{where}.max_body_bytes: must be an integer >= 1 (got {size!r})")
    return ProxySettings(
        upstream=_url(raw["upstream"], f"{where}.upstream"),
        unit_header=names["unit_header"],
        unit_cookie=names["unit_cookie"],
        set_unit_cookie=set_cookie,
        unit_cookie_max_age_s=age,
        connect_timeout_s=_positive(raw, "connect_timeout_s", 1.0, where),
        read_timeout_s=_positive(raw, "read_timeout_s", 30.0, where),
        websocket_idle_timeout_s=_positive(raw, "websocket_idle_timeout_s", 3600.0, where),
        client_idle_timeout_s=_positive(raw, "client_idle_timeout_s", 3630.0, where),
        max_body_bytes=size,
        preserve_host=flags["preserve_host"],
        rewrite_redirects=flags["rewrite_redirects"],
        trusted_proxies=_networks(raw.get("trusted_proxies", []), f"{where}.trusted_proxies"),
    )


@dataclass(frozen=True)
class Route:
    """Which requests an experiment takes, and each alternative's upstream (``None``:
    the default upstream, told the alternative's parameters)."""

    experiment: str
    upstreams: tuple[str | None, ...]
    path_prefix: str = "/"
    host: str | None = None
    method: str | None = None
    header: tuple[str, str] | None = None
    reward_from: str = "none"
    slo_ms: float | None = None
    reward_header: str = "X-Autoexp-Reward"
    # an alternative's request that can go to control instead (idempotent, no body) waits
    # this long for each of the alternative's bytes, then goes there (None: read_timeout_s)
    alternative_timeout_s: float | None = None

    def matches(self, method: str, host: str | None, path: str, headers: Mapping[str, str]) -> bool:
        if not path.startswith(self.path_prefix):
            return False
        if self.method is not None and method != self.method:
            return False
        if self.host is not None and (host or "").split(":")[0].lower() != self.host:
            return False
        return self.header is None or headers.get(self.header[0]) == self.header[1]


def parse_route(name: str, raw: Any, alternatives: Any, where: str) -> Route:
    """The ``route`` table of experiment ``name`` and its alternatives' upstreams."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table (got {raw!r})")
    for key in raw:
        if key not in _ROUTE:
            raise ConfigError(f"{where}.{key}: unknown key; accepted: {', '.join(_ROUTE)}")
    prefix = raw.get("path_prefix", "/")
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ConfigError(f"{where}.path_prefix: must start with '/' (got {prefix!r})")
    if "?" in prefix or "#" in prefix:  # matched against the path alone: never matched
        raise ConfigError(
            f"{where}.path_prefix: a path, without '?' or '#' (got {prefix!r:.60}): it "
            "matches the request's path, not its query"
        )
    if prefix.startswith("/_autoexp"):
        raise ConfigError(f"{where}.path_prefix: /_autoexp/ is the sidecar's own")
    method = raw.get("method")
    if method is not None and (not isinstance(method, str) or method.upper() not in _METHODS):
        raise ConfigError(f"{where}.method: one of {', '.join(_METHODS)} (got {method!r})")
    host = raw.get("host")
    if host is not None and not (isinstance(host, str) and _HOST.fullmatch(host)):
        # matched against the request's Host without its port: "shop.example.com:8080" or
        # "https://shop.example.com" never matched
        raise ConfigError(
            f"{where}.host: must be a host name without scheme, port or path, as "
            f"shop.example.com (got {host!r:.60})"
        )
    header = raw.get("header")
    pair = None
    if header is not None:
        if not isinstance(header, str) or ":" not in header:
            raise ConfigError(f"{where}.header: must be 'Name: value' (got {header!r})")
        key, _, value = header.partition(":")
        pair = (_token(key.strip(), f"{where}.header"), value.strip())
    reward_from = raw.get("reward_from", "none")
    if reward_from not in _REWARD_FROM:
        raise ConfigError(
            f"{where}.reward_from: one of {', '.join(_REWARD_FROM)} (got {reward_from!r})"
        )
    slo_ms = raw.get("slo_ms")
    if reward_from == "latency":
        if slo_ms is None:
            raise ConfigError(
                f'{where}.slo_ms: missing; reward_from = "latency" needs the SLO in '
                "milliseconds (a reward of 1 for an answer below 400 within it)"
            )
        slo_ms = _positive(raw, "slo_ms", 0.0, where)
    elif slo_ms is not None:
        raise ConfigError(f'{where}.slo_ms: only with reward_from = "latency"')
    reward_header = _token(raw.get("reward_header", "X-Autoexp-Reward"), f"{where}.reward_header")
    alternative_timeout_s = None
    if "alternative_timeout_s" in raw:
        alternative_timeout_s = _positive(raw, "alternative_timeout_s", 0.0, where)
    upstreams: list[str | None] = []
    for i, item in enumerate(alternatives):
        up = item.get("upstream") if isinstance(item, Mapping) else None
        base = f"{where.rsplit('.', 1)[0]}.alternatives[{i}].upstream"
        upstreams.append(None if up is None else _url(up, base))
    return Route(
        experiment=name,
        upstreams=tuple(upstreams),
        path_prefix=prefix,
        host=None if host is None else host.lower(),
        method=None if method is None else method.upper(),
        header=pair,
        reward_from=reward_from,
        slo_ms=slo_ms,
        reward_header=reward_header,
        alternative_timeout_s=alternative_timeout_s,
    )
