"""Forwarding: a request in, the chosen upstream's answer out, streamed both ways.

For each request outside ``/_autoexp/``: the first route that matches names the
experiment; the engine decides (sticky by the unit header or cookie: on the event loop,
or in the offload thread when the unit's assignment needs a store call); the request goes to
the alternative's upstream (or to the default one with ``X-Autoexp-Alternative`` and
``X-Autoexp-Params``), and the answer comes back with the decision's token in
``X-Autoexp-Decision``. Unmatched requests go straight to the default upstream.

Failing open: if deciding fails (store down, anything), the request goes to control and
``fail_open`` counts it. If an alternative's upstream cannot be reached, times out or
answers 5xx, an idempotent request without a body is sent again to control, and
``retried`` counts it: a user's request does not fail because an alternative did.
Rewards from answers (a route's ``reward_from``): the status class, the latency against an
SLO, or a header the upstream sets (hidden from the client); an alternative that failed
and was retried on control gets the lowest reward, so its errors feed its guardrail. They
are queued and handed every 50 ms to a thread that applies them in batches
(``reward_each``: a refused one does not take the others with it), never on the request's
path; ``rewards_refused`` counts header values out of range and rewards the engine
refused.
A client that goes away mid-answer is not the upstream's failure: ``client_gone`` counts
it and the answer is rewarded as the upstream gave it. Nor is a body that cannot be read
whole while it is streamed up (the client gone: ``client_gone``; over ``max_body_bytes``
without a Content-Length saying so: a 413): the decision gets no reward from it. An
upstream that breaks off after its answer's head was sent cannot be retried: the client's
connection is closed (it sees a truncated answer, never a second one), ``upstream_error``
counts it and the decision gets the lowest reward. Hop-by-hop headers are dropped both
ways; ``X-Forwarded-For``, ``-Proto`` and ``-Host`` are set (a ``trusted_proxies`` peer's
``-Proto`` and ``-Host`` kept); ``Host`` is the upstream's
own, or the client's with ``preserve_host``; an answer's ``Location`` or ``Refresh`` URL
on an upstream's own address loses it (``rewrite_redirects``, as nginx's
``proxy_redirect default``); bodies are streamed, never buffered whole, and capped at
``max_body_bytes``. A request line claiming HTTP/2 or later as text gets a 505, as from
nginx; a body in a transfer coding but chunked a 501. The request target goes up as the
client wrote it (:func:`_target`). ``Expect: 100-continue`` is answered here, never sent
upstream (:meth:`Forwarder.expect`). An answer without a Content-Type goes on without one
(:func:`untyped`), and both clients cap an answer's head at ``HEAD_BYTES`` and
``HEAD_FIELDS`` (a 502 beyond), and refuse one in a transfer coding but chunked (a 502).

WebSockets: a ``GET`` asking to upgrade to ``websocket`` is sent to its upstream with its
``Upgrade`` and ``Connection`` headers (on a connection of its own). An upstream that
declines answers as to any request; one that switches protocols has its ``101`` passed to
the client (with the decision's token, if the route decided), and from then on the bytes
go both ways as they come, until either end closes, or the server drains to stop (then
the tunnel is closed at once: the client reconnects, to another worker or the new ones),
or no byte has gone either way for ``websocket_idle_timeout_s`` (an hour by default).
On a route the handshake is decided, retried on control and rewarded like any ``GET``:
its status and the time to its head, not what the socket carries afterwards.

Two clients, one contract: a request without a body (but ``CONNECT``) to an
``http://`` upstream goes through autoexp's own pooled HTTP/1.1 client
(:mod:`autoexp.proxy.http1`: less than half the CPU per request of aiohttp's); the
others through one pooled ``aiohttp.ClientSession``. Both fail with an
``aiohttp.ClientError`` or a ``TimeoutError``, and both keep connections alive per
upstream under the same connect and read timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import queue
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler
from yarl import URL

from ..engine import Decision, Engine
from ..errors import StoreError
from ..throttle import Throttle
from .features import request_context
from .http1 import (
    CONTROL,
    HEAD_BYTES,
    HEAD_FIELDS,
    IDEMPOTENT,
    Answer,
    Pool,
    UpstreamError,
    chunked,
)
from .offload import Offload
from .routes import ProxySettings, Route

__all__ = ["Forwarder", "untyped"]

log = logging.getLogger("autoexp.proxy")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {
    "host",
    "x-autoexp-decision",
    "x-autoexp-alternative",
    "x-autoexp-params",
}
# Expect: 100-continue is the proxy's to answer (Forwarder.expect), as nginx and Envoy do
_NOT_SENT = _NOT_FORWARDED | {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "expect"}
_NOT_SENT_LEAN = _NOT_SENT | {"content-length"}
_NOT_LEAN = frozenset({"CONNECT"})  # aiohttp's client
DECISION_HEADER = "X-Autoexp-Decision"
CHUNK = 64 * 1024
HAND_OVER_S = 0.05  # queued rewards go to the applier thread this often
APPLY_BATCH = 1_000  # rewards per store call
APPLIER_STOP_S = 30.0  # at exit, the applier's last writes are awaited this long
# the client's body could not be read whole (too large, cut off, malformed): its fault, not
# the upstream's, though aiohttp's client reports it as a ClientError of its own
BODY_FAILED = web.RequestKey("autoexp_body_failed", str)
NEW_UNIT = web.RequestKey("autoexp_new_unit", str)  # minted for it: set_unit_cookie


_REDIRECTING = ("Location", "Refresh")  # headers whose URL rewrite_redirects mends
_REFRESH_URL = re.compile(r";\s*url\s*=\s*['\"]?", re.IGNORECASE)  # "5; url=..."


def _origins(bases: Iterable[str]) -> tuple[str, ...]:
    """The upstreams' origins as their answers may spell them: lower case, with and
    without the scheme's default port (``http://app`` and ``http://app:80``)."""
    out: set[str] = set()
    for base in bases:
        parts = urlsplit(base)
        origin = f"{parts.scheme}://{parts.netloc}".lower()
        default = 443 if parts.scheme == "https" else 80
        out.add(origin)
        if parts.port is None:
            out.add(f"{origin}:{default}")
        elif parts.port == default:
            out.add(origin.rsplit(":", 1)[0])
    return tuple(sorted(out, key=len, reverse=True))


def _relative(url: str, origins: tuple[str, ...]) -> str:
    """``url`` without an upstream's origin it starts with (``http://127.0.0.1:8080/a?b``
    is ``/a?b``, which the client resolves against the address it asked), else as it
    was: another site's, a relative one, or one whose path would read as another host
    (``//evil.example``, ``/\\evil.example``) once its origin was gone."""
    low = url.lower()
    for origin in origins:
        if low.startswith(origin):
            rest = url[len(origin) :]
            if rest[:1] in ("", "?", "#"):
                return "/" + rest
            if rest[0] == "/":  # "//x" and "/\x" would name host x
                return url if rest[1:2] in ("/", "\\") else rest
    return url


@functools.lru_cache(maxsize=256)
def _named(connection: str) -> frozenset[str]:
    """The header names a ``Connection`` value lists that are not hop-by-hop already
    (none for ``keep-alive`` or ``close``, the values nearly every request carries)."""
    return frozenset(t.strip().lower() for t in connection.split(",")) - HOP_BY_HOP


async def untyped(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: an answer relayed without a Content-Type goes on without
    one. aiohttp gives every body one (``application/octet-stream``), which makes a browser
    download a page whose server left it to be sniffed (Node's ``res.end(html)``)."""
    if getattr(response, "untyped", False):
        response.headers.popall("Content-Type", None)


def _rewritten(name: str, value: str, origins: tuple[str, ...]) -> str:
    """A ``Location`` or ``Refresh`` value (``name`` in any case), its URL relative."""
    if name.lower() == "location":
        return _relative(value, origins)
    found = _REFRESH_URL.search(value)
    if found is None:
        return value
    return value[: found.end()] + _relative(value[found.end() :], origins)


class _Flags:
    """What the forwarder knows of an answer it makes, as attributes rather than response
    keys: a key looked up on a response without it raises and catches a KeyError (0.4 us),
    and three were read for every decided request."""

    failed = False  # no whole answer from the upstream: the proxy's 502/504, or broken off
    client_fault = False  # the request never reached the upstream whole: no reward
    untyped = False  # the upstream's answer had no Content-Type: none is added (untyped)
    reward: str | None = None  # the upstream's hidden reward header
    tunnel: Callable[[], Awaitable[None]] | None = None  # the 101 sent: the WebSocket's bytes


class _Relayed(_Flags, web.StreamResponse):
    """An upstream's answer, relayed."""


class _Own(_Flags, web.Response):
    """The proxy's own answer: ``{"error": ...}``."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(
            text=json.dumps({"error": error}), status=status, content_type="application/json"
        )


_Made = _Relayed | _Own


def _not_implemented(coding: str) -> _Own:
    """A request body in a transfer coding other than chunked alone (``gzip, chunked``):
    aiohttp's server undoes the chunking and passes the rest as it is, so the upstream
    would get gzip bytes as the plain body, the coding lost. RFC 9112 6.1: a 501, as from
    nginx; the connection is closed, its body unread."""
    response = _Own(501, f"Transfer-Encoding: {coding[:60]!r} is not implemented; chunked is")
    response.force_close()
    return response


class _ClientGone(Exception):
    """Writing the answer to the client failed: it closed or reset its connection."""


async def _to_client(write: Awaitable[object]) -> None:
    try:
        await write
    except ConnectionError as e:  # aiohttp's ClientConnectionResetError is one
        raise _ClientGone from e


class _TooLarge(Exception):
    pass


def _target(request: web.Request) -> str:
    """The request target for the upstream, as the client wrote it: aiohttp's parsed URL
    (yarl) would drop an empty query (``/p?``), and aiohttp's client would resolve dot
    segments and re-quote (``/a/%2e%2e/b`` sent as ``/b``, ``%7e`` as ``~``, ``%zz`` as
    ``%25zz``), so that the upstream could see another path than the client asked for,
    and routes have matched. An absolute-form target (``http://host/p``, RFC 9112 3.2.2)
    goes on in origin form; a fragment, never sent by a browser, is left out."""
    raw = request.raw_path
    if raw[:1] != "/":
        return request.rel_url.raw_path_qs
    return raw.partition("#")[0] if "#" in raw else raw


def _headers(
    request: web.Request,
    extra: dict[str, str],
    *,
    lean: bool,
    cookie: str | None = None,
    trusted: bool = False,
) -> list[tuple[str, str]]:
    """The headers sent upstream: the client's but hop-by-hop ones, Host (the upstream's
    own), autoexp's (only it sets them) and ``X-Forwarded-*`` (set here, but a
    ``trusted`` peer's ``-Proto`` and ``-Host``, passed on as it sent them); without a
    body to send (``lean``), its Content-Length too. ``cookie`` (``name=value``, a unit
    minted for this request) joins the client's cookies, as the browser will send it
    from now on."""
    skip = _NOT_SENT_LEAN if lean else _NOT_SENT
    connection = request.headers.get("Connection")
    if connection is not None:  # and the headers it names: hop-by-hop too (RFC 9110 7.6.1)
        named = _named(connection)
        if named:
            skip = skip | named
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in skip]
    if cookie is not None:  # one Cookie header (RFC 6265): the client's, then the unit's
        cookies = [v for k, v in headers if k.lower() == "cookie"]
        headers = [(k, v) for k, v in headers if k.lower() != "cookie"]
        headers.append(("Cookie", "; ".join([*cookies, cookie])))
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers.append(("X-Forwarded-For", f"{prior}, {peer}" if prior else peer))
    proto = host = None
    if trusted:  # a load balancer ending TLS in front: the client's scheme, not ours
        proto = request.headers.get("X-Forwarded-Proto")
        host = request.headers.get("X-Forwarded-Host")
    headers.append(("X-Forwarded-Proto", proto or request.scheme))
    headers.append(("X-Forwarded-Host", host or request.host))
    headers.extend(extra.items())
    return headers


def _trusts_none(peer: str | None) -> bool:
    return False


@dataclass
class Drain:
    """Whether the server is stopping (set by :mod:`autoexp.proxy.serve`): its answers
    then say ``Connection: close``, so a keep-alive client sends its next request on a
    new connection (to another worker, or the new ones after a reload) rather than on
    one about to be closed under it."""

    closing: bool = False
    tunnels: set[Callable[[], None]] = field(default_factory=set)  # each closes one

    def begin(self) -> None:
        """The server stops: answers say ``Connection: close`` and the WebSockets open
        are closed (their clients reconnect elsewhere rather than wait to be cut off)."""
        self.closing = True
        for close in list(self.tunnels):
            close()


@dataclass
class Forwarder:
    """The forwarding handler's state: settings, routes, the pooled clients (one aiohttp
    session; one :class:`~autoexp.proxy.http1.Pool` per ``http://`` upstream)."""

    engine: Engine
    settings: ProxySettings
    routes: Sequence[Route]
    session: aiohttp.ClientSession | None = None
    events: Counter[str] = field(default_factory=Counter)  # counted on the event loop
    applier_events: Counter[str] = field(default_factory=Counter)  # by the applier thread
    pending: list[tuple[Decision, float]] = field(default_factory=list)  # rewards to apply
    max_pending: int = 100_000
    applying: int = 0  # rewards handed to the applier thread, not yet applied or dropped
    _handoff: queue.SimpleQueue[list[tuple[Decision, float]] | None] = field(
        default_factory=queue.SimpleQueue
    )
    _applying_lock: threading.Lock = field(default_factory=threading.Lock)
    offload: Offload = field(default_factory=Offload)  # store calls (a unit not held)
    pools: dict[str, Pool] = field(default_factory=dict)  # http:// upstreams, bodiless requests
    upgrades: dict[str, Pool] = field(default_factory=dict)  # WebSocket handshakes, per upstream
    drain: Drain = field(default_factory=Drain)
    _fail_open_said: Throttle = field(default_factory=Throttle)  # logged, not every time
    _retry_said: Throttle = field(default_factory=Throttle)  # likewise
    _store_error_said: Throttle = field(default_factory=Throttle)  # the applier's, likewise
    _origins: tuple[str, ...] = field(default=(), init=False)  # rewrite_redirects' prefixes
    # whether a peer is a trusted proxy: cached per address (a balancer's are few)
    _trusts: Callable[[str | None], bool] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._trusts = (
            functools.lru_cache(maxsize=4096)(self.settings.trusts)
            if self.settings.trusted_proxies
            else _trusts_none
        )
        if self.settings.rewrite_redirects:
            ups = (u for r in self.routes for u in r.upstreams if u is not None)
            self._origins = _origins([self.settings.upstream, *ups])

    @property
    def counts(self) -> Counter[str]:
        """Every event counted so far, on the event loop and by the applier thread. Safe
        from another thread (the metrics'): each counter is copied whole first (one C call
        under the GIL), where adding them walks one in Python, and an event counted for
        the first time meanwhile would change its size under the walk."""
        total = Counter(dict(self.events))
        total.update(dict(self.applier_events))
        return +total  # as adding them: events counted at least once

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: the pooled keep-alive connections live as long as the app, and so
        does the thread that applies rewards; at the end, what the last requests earned
        is applied before the app stops."""
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.settings.connect_timeout_s,
                sock_read=self.settings.read_timeout_s,
            ),
            auto_decompress=False,  # bytes pass through as the upstream sent them
            # an answer's head capped as autoexp's own client caps it (aiohttp's default
            # is 8,190 bytes a line, so a large Set-Cookie or CSP failed on one client only)
            max_line_size=HEAD_BYTES,
            max_field_size=HEAD_BYTES,
            max_headers=HEAD_FIELDS,
            # nothing the client did not send: aiohttp would add Accept, User-Agent, a
            # Content-Type, and Accept-Encoding: gzip, deflate, so a compressing upstream
            # answered gzip to a client that never said it could read it
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        applier = threading.Thread(target=self._applier, name="autoexp-rewards", daemon=True)
        applier.start()
        task = asyncio.create_task(self._hand_over_loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._hand_over()  # what the last requests earned
        self._handoff.put(None)
        await asyncio.to_thread(applier.join, APPLIER_STOP_S)
        await self.session.close()
        for pool in [*self.pools.values(), *self.upgrades.values()]:
            pool.close()

    async def _hand_over_loop(self) -> None:
        while True:
            await asyncio.sleep(HAND_OVER_S)
            self._hand_over()

    def _hand_over(self) -> None:
        """The rewards queued since the last call, to the applier thread."""
        if not self.pending:
            return
        with self._applying_lock:  # before they leave pending: never seen in neither
            self.applying += len(self.pending)
        batch, self.pending = self.pending, []
        self._handoff.put(batch)

    def _applier(self) -> None:
        """The applier thread: rewards applied in store calls of at most
        ``APPLY_BATCH``; a batch the store failed is tried again (bounded by
        ``max_pending``) every ``HAND_OVER_S`` until it answers; ``None`` stops it after
        one more try.

        A thread of its own, fed through a queue, rather than ``asyncio.to_thread``:
        measured at one request at a time (benchmarks/proxy.py's setting), the executor's
        round trip every 50 ms cost the event loop about 50 us of p50 and 10% of its
        requests per second, even for a function that did nothing."""
        retry: list[tuple[Decision, float]] = []
        stop = False
        while not stop:
            try:
                batches = [self._handoff.get(timeout=HAND_OVER_S if retry else None)]
            except queue.Empty:
                batches = []
            with contextlib.suppress(queue.Empty):
                while True:  # everything handed over meanwhile (a slow store call)
                    batches.append(self._handoff.get_nowait())
            stop = None in batches
            work, retry = retry + [x for b in batches if b is not None for x in b], []
            for start in range(0, len(work), APPLY_BATCH):
                chunk = work[start : start + APPLY_BATCH]
                if not self._apply_chunk(chunk):
                    retry = work[start:][: self.max_pending]
                    self._done(len(work) - start - len(retry), "rewards_dropped")
                    break
                time.sleep(0)  # the GIL to the event loop between store calls
        if retry:
            self._done(len(retry), "rewards_dropped")
            log.warning("autoexp: %d rewards not applied at exit: the store failed", len(retry))

    def _apply_chunk(self, chunk: list[tuple[Decision, float]]) -> bool:
        """Apply one chunk; ``False`` if the store failed (the chunk is to be retried).
        Each reward is checked on its own (``reward_each``): one refused (late, its
        experiment gone...) is dropped and counted, the others are applied."""
        try:
            results = self.engine.reward_each(chunk)
        except StoreError as e:  # kept for the next try (bounded), counted
            self.applier_events["reward_store_errors"] += 1
            if self._store_error_said.due():  # tried every 50 ms while the store is down
                log.warning(
                    "autoexp: applying %d rewards failed: %s (kept and tried again; said at "
                    "most every %.0f s, counted in reward_store_errors)",
                    len(chunk),
                    e,
                    self._store_error_said.every_s,
                )
            return False
        except Exception as e:  # the engine failing oddly: dropped, said
            self._done(len(chunk), "rewards_refused")
            log.warning("autoexp: %d rewards refused: %r", len(chunk), e)
            return True
        refused = [r for r in results if isinstance(r, Exception)]
        self._done(len(chunk) - len(refused), "rewards")
        if refused:
            self._done(len(refused), "rewards_refused")
            log.warning("autoexp: %d rewards refused, the first: %s", len(refused), refused[0])
        return True

    def _done(self, n: int, event: str) -> None:
        if n:
            self.applier_events[event] += n
            with self._applying_lock:
                self.applying -= n

    def _earned(self, route: Route, decision: Decision, response: _Made, seconds: float) -> None:
        """Queue the reward this answer earned under the route's ``reward_from``."""
        if route.reward_from == "none":
            return
        low, high = self.engine.spec(route.experiment).reward_range
        ok = response.status < 400
        if route.reward_from == "status":
            value = high if ok else low
        elif route.reward_from == "latency":
            assert route.slo_ms is not None
            value = high if ok and seconds * 1000.0 <= route.slo_ms else low
        else:
            raw = response.reward
            if raw is None:
                return
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and low <= value <= high):
                self.events["rewards_refused"] += 1
                log.warning("autoexp: reward header %r out of [%s, %s]", raw, low, high)
                return
        self._queue(decision, value)

    def _queue(self, decision: Decision, value: float) -> None:
        # bounded with what the applier holds: a store down for long costs no memory
        if len(self.pending) + self.applying < self.max_pending:
            self.pending.append((decision, value))  # this engine's: not verified again
        else:
            self.events["rewards_dropped"] += 1

    def _unit(self, request: web.Request) -> str | None:
        s = self.settings
        if s.unit_header and request.headers.get(s.unit_header):
            return request.headers[s.unit_header][:1024]
        if s.unit_cookie and request.cookies.get(s.unit_cookie):
            return request.cookies[s.unit_cookie][:1024]
        if s.set_unit_cookie:  # a new visitor: its unit from now on, in the cookie set
            unit = request[NEW_UNIT] = secrets.token_urlsafe(16)  # 128 random bits
            return unit
        return None

    def _unit_cookie(self, request: web.Request) -> str | None:
        """``name=value`` of the unit minted for this request, if one was."""
        if not self.settings.set_unit_cookie:  # the common case: no lookup
            return None
        unit = request.get(NEW_UNIT)
        return None if unit is None else f"{self.settings.unit_cookie}={unit}"

    def _set_unit_cookie(self, request: web.Request, response: web.StreamResponse) -> None:
        cookie = self._unit_cookie(request)
        if cookie is None:
            return
        # behind a TLS proxy: the first hop's scheme, as the client used it
        first = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        secure = request.secure or first == "https"
        response.headers.add(
            "Set-Cookie",
            f"{cookie}; Max-Age={self.settings.unit_cookie_max_age_s}; Path=/; SameSite=Lax; "
            f"HttpOnly{'; Secure' if secure else ''}",
        )

    async def _decide(self, route: Route, request: web.Request) -> Decision | None:
        unit = self._unit(request)
        try:
            spec = self.engine.spec(route.experiment).context
            context = None if spec is None else request_context(spec, request)
            # on the loop unless a store call is needed (a unit whose assignment this
            # engine does not hold): then in the offload thread, never on the loop
            decision = self.engine.try_decide(route.experiment, unit=unit, context=context)
            if decision is not None:
                return decision
            # the units queued together get their assignments in one store call
            decided: Decision = await self.offload.run_each(
                self.engine.decide_each, (route.experiment, unit, context)
            )
            return decided
        except Exception as e:  # fail open: whatever broke, the request goes to control
            self.events["fail_open"] += 1
            if self._fail_open_said.due():  # not a line per request
                log.warning(
                    "autoexp: %s failed open to control: %r (%d failed open so far; said at "
                    "most every %.0f s, all counted in autoexp_proxy_events_total)",
                    route.experiment,
                    e,
                    self.events["fail_open"],
                    self._fail_open_said.every_s,
                )
            return None

    def _too_large(self, request: web.Request) -> bool:
        length = request.content_length
        return length is not None and length > self.settings.max_body_bytes

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``, answered here and never sent upstream (as nginx and
        Envoy do): an upstream that ignores it would leave aiohttp's client waiting for its
        100 and itself waiting for the body. A body declared over ``max_body_bytes`` gets
        its 413 before the client sends it; any other the 100 (aiohttp's own handler, which
        answers an expectation other than 100-continue with a 417)."""
        if self._too_large(request):
            return self._client_fault(request, "too_large")
        await _default_expect_handler(request)
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The handler: the answer, and for a WebSocket whose upstream switched, the
        tunnel's bytes until it closes (the decision is rewarded before, on its 101)."""
        response = await self._handle(request)
        if response.tunnel is not None:
            await response.tunnel()
        return response

    async def _handle(self, request: web.Request) -> _Made:
        version = request.version
        if version.major != 1:  # a text request line the parser takes as it comes; as
            # nginx does: 505 for HTTP/2 and later (they never come as text), 400 below 1
            return _Own(
                505 if version.major > 1 else 400,
                f"version: HTTP/{version.major}.{version.minor} is not supported; "
                "HTTP/1.0 and HTTP/1.1 are",
            )
        coding = request.headers.get("Transfer-Encoding")
        if coding is not None and not chunked(coding):
            return _not_implemented(coding)
        if self._too_large(request):
            return self._client_fault(request, "too_large")
        path = request.path
        if path.startswith("/_autoexp/"):  # the sidecar's own: never the application's
            return await self._not_ours(request)
        route = next(
            (
                r
                for r in self.routes
                if r.matches(request.method, request.host, path, request.headers)
            ),
            None,
        )
        if route is None:
            return await self._safe(request, self.settings.upstream, {})
        decision = await self._decide(route, request)
        if decision is None:
            return await self._safe(request, self.settings.upstream, {})
        base = route.upstreams[decision.arm] or self.settings.upstream
        extra = {
            DECISION_HEADER: decision.token,
            "X-Autoexp-Alternative": decision.alternative,
        }
        if decision.params:
            extra["X-Autoexp-Params"] = json.dumps(decision.params, separators=(",", ":"))
        retry = decision.arm != 0 and request.method in IDEMPOTENT and not request.body_exists
        hide = route.reward_header if route.reward_from == "header" else None
        started = time.monotonic()
        if not retry:
            response = await self._safe(request, base, extra, hide=hide)
            self._outcome(route, decision, response, started)
            return response
        try:
            response = await self._forward(
                request,
                base,
                extra,
                raise_5xx=True,
                hide=hide,
                read_timeout_s=route.alternative_timeout_s,
            )
            self._outcome(route, decision, response, started)
            return response
        except (aiohttp.ClientError, TimeoutError) as e:  # before anything reached the client
            self.events["retried"] += 1
            low = self.engine.spec(route.experiment).reward_range[0]
            self._queue(decision, low)  # the alternative failed: its guardrail sees it
            if self._retry_said.due():  # a failing alternative under load: not a line each
                log.warning(
                    "autoexp: %s on %s failed (%r); retried on control (%d retried so far; "
                    "said at most every %.0f s, all counted in autoexp_proxy_events_total)",
                    path,
                    base,
                    e,
                    self.events["retried"],
                    self._retry_said.every_s,
                )
            control = self.engine.spec(route.experiment).alternatives[0]
            return await self._safe(
                request, self.settings.upstream, {"X-Autoexp-Alternative": control}
            )

    async def _not_ours(self, request: web.Request) -> _Own:
        """A path under ``/_autoexp/`` the sidecar has no handler for: a 404, or a 405
        naming the methods its path takes (``POST /_autoexp/healthz``). It was forwarded
        to the application, whose own 404 said nothing of the typo."""
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if any(route.handler == self.handle for route in resource):
                continue  # this catch-all
            allowed |= (await resource.resolve(request))[1]
        if allowed:
            methods = ", ".join(sorted(allowed))
            answer = _Own(405, f"{request.method} {request.path}: not allowed; allowed: {methods}")
            answer.headers["Allow"] = methods
            return answer
        return _Own(404, f"{request.path}: not one of the sidecar's paths under /_autoexp/")

    def _outcome(self, route: Route, decision: Decision, response: _Made, started: float) -> None:
        if response.client_fault:  # the request never reached the upstream whole
            return  # unrewarded: the join window's default, if the experiment has one
        if response.failed:  # no (whole) answer from the upstream
            self._queue(decision, self.engine.spec(route.experiment).reward_range[0])
        else:
            self._earned(route, decision, response, time.monotonic() - started)

    async def _safe(
        self, request: web.Request, base: str, extra: dict[str, str], hide: str | None = None
    ) -> _Made:
        """Forward; an upstream that cannot answer is a 502 (504 on a timeout)."""
        try:
            return await self._forward(request, base, extra, hide=hide)
        except TimeoutError:
            self.events["upstream_timeout"] += 1
            failed = _Own(504, "upstream: timed out")
        except aiohttp.ClientError as e:
            self.events["upstream_error"] += 1
            failed = _Own(502, f"upstream: {e.__class__.__name__}")
        failed.failed = True
        return failed

    async def _forward(
        self,
        request: web.Request,
        base: str,
        extra: dict[str, str],
        *,
        raise_5xx: bool = False,
        hide: str | None = None,
        read_timeout_s: float | None = None,
    ) -> _Made:
        """``read_timeout_s``: each wait for the upstream's bytes (``None``: the proxy's
        ``read_timeout_s``)."""
        lean = not request.body_exists and request.method not in _NOT_LEAN
        headers = _headers(
            request,
            extra,
            lean=lean,
            cookie=self._unit_cookie(request),
            trusted=self._trusts(request.remote),
        )
        host = request.host if self.settings.preserve_host else None
        if _wants_websocket(request):  # a GET without a body: lean
            return await self._upgrade(request, base, headers, host, extra, raise_5xx, hide)
        pool = self.pools.get(base) if lean else None
        if pool is None and lean and base.startswith("http://"):
            pool = self._pool(self.pools, base)
        if pool is None:
            if host is not None:
                headers.append(("Host", host))
            return await self._forward_aiohttp(
                request, base, headers, extra, raise_5xx, hide, read_timeout_s
            )
        answer = await pool.request(request.method, _target(request), headers, host, read_timeout_s)
        try:
            if raise_5xx and answer.status >= 500:
                raise UpstreamError(f"upstream: answered {answer.status}")
            response = _Relayed(status=answer.status, reason=answer.reason)
            return await self._relay(
                request, response, answer.headers, answer.chunks(), extra, hide, base
            )
        finally:
            answer.close()

    async def _forward_aiohttp(
        self,
        request: web.Request,
        base: str,
        headers: list[tuple[str, str]],
        extra: dict[str, str],
        raise_5xx: bool,
        hide: str | None,
        read_timeout_s: float | None = None,
    ) -> _Made:
        """Through aiohttp's client: a request with a body, CONNECT, or an https upstream."""
        assert self.session is not None
        body = self._body(request) if request.body_exists else None
        timeout = (
            self.session.timeout  # the proxy's, as the session was made
            if read_timeout_s is None
            else aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.settings.connect_timeout_s,
                sock_read=read_timeout_s,
            )
        )
        try:
            async with self.session.request(
                request.method,
                URL(base + _target(request), encoded=True),  # as it is: not re-quoted
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=timeout,
            ) as up:
                if raise_5xx and up.status >= 500:
                    raise aiohttp.ClientResponseError(
                        up.request_info, (), status=up.status, message=up.reason or ""
                    )
                if CONTROL.search(up.reason or "") or any(
                    CONTROL.search(v) for v in up.headers.values()
                ):  # refused before the head is prepared: a failed prepare leaves its mark
                    raise UpstreamError("upstream: a control character in its head")
                codings = up.headers.getall("Transfer-Encoding", None)
                if codings and (len(codings) > 1 or not chunked(codings[0])):
                    raise UpstreamError("upstream: a transfer coding but chunked")
                response = _Relayed(status=up.status, reason=up.reason)
                chunks = up.content.iter_chunked(CHUNK)
                return await self._relay(
                    request, response, up.headers.items(), chunks, extra, hide, base
                )
        except aiohttp.ClientError:
            if BODY_FAILED in request:  # reading the client's body failed, not the upstream
                return self._client_fault(request)
            raise

    async def _upgrade(
        self,
        request: web.Request,
        base: str,
        headers: list[tuple[str, str]],
        host: str | None,
        extra: dict[str, str],
        raise_5xx: bool,
        hide: str | None,
    ) -> _Made:
        """A WebSocket handshake to ``base`` (``headers`` as :meth:`_forward` made them):
        declined, its answer relayed as any other; accepted, the 101 sent and the tunnel
        handed to the handler (the answer's ``tunnel``)."""
        upgrade = request.headers["Upgrade"]
        headers += [("Connection", "Upgrade"), ("Upgrade", upgrade)]
        pool = self.upgrades.get(base) or self._pool(self.upgrades, base)
        answer = await pool.upgrade(_target(request), headers, host)
        handed = False
        try:
            if raise_5xx and answer.status >= 500:
                raise UpstreamError(f"upstream: answered {answer.status}")
            response = _Relayed(status=answer.status, reason=answer.reason)
            if not answer.upgraded:
                return await self._relay(
                    request, response, answer.headers, answer.chunks(), extra, hide, base
                )
            self._head(request, response, answer.headers, extra, hide)
            switched = [v for k, v in answer.headers if k.lower() == "upgrade"]
            response.headers["Connection"] = "Upgrade"
            response.headers["Upgrade"] = switched[0] if switched else upgrade
            try:
                await _to_client(response.prepare(request))
            except _ClientGone:
                self.events["client_gone"] += 1
                return response

            async def tunnel() -> None:
                await self._tunnel(request, response, answer)

            response.tunnel = tunnel
            handed = True
            return response
        finally:
            if not handed:
                answer.close()

    async def _tunnel(self, request: web.Request, response: _Relayed, answer: Answer) -> None:
        """The WebSocket's bytes both ways until either end closes it (or the drain)."""
        transport = request.transport
        self.events["websockets"] += 1
        self.drain.tunnels.add(answer.close)
        idle: asyncio.TimerHandle | None = None
        try:
            if transport is None or self.drain.closing:
                return
            # what the client sends from now on: aiohttp hands it to the request's payload
            # parser (as to its own WebSocket reader), here straight to the upstream
            feed = _ToUpstream(answer)
            cast(Any, request.protocol).set_parser(feed)
            answer.on_writable(transport.pause_reading, transport.resume_reading)
            loop, quiet_s = asyncio.get_running_loop(), self.settings.websocket_idle_timeout_s

            def watch() -> None:  # closed once no byte went either way for quiet_s
                nonlocal idle
                left = feed.last + quiet_s - time.monotonic()
                if left > 0:
                    idle = loop.call_later(left, watch)
                else:
                    self.events["websockets_idle"] += 1
                    answer.close()  # the upstream's end: chunks() ends, the client's below

            idle = loop.call_later(quiet_s, watch)
            async for chunk in answer.chunks():  # no read timeout: until either end closes
                feed.last = time.monotonic()
                await _to_client(response.write(chunk))
        except _ClientGone:
            pass  # the client closed first
        except aiohttp.ClientError as e:  # reset by the upstream
            self.events["websockets_broken"] += 1
            log.info("autoexp: a WebSocket's upstream broke off: %r", e)
        finally:
            if idle is not None:
                idle.cancel()
            self.drain.tunnels.discard(answer.close)
            answer.close()
            if transport is not None:
                transport.close()

    def _pool(self, pools: dict[str, Pool], base: str) -> Pool:
        """A new pool for ``base`` in ``pools``, with the proxy's timeouts."""
        pool = pools[base] = Pool(
            base,
            connect_timeout_s=self.settings.connect_timeout_s,
            read_timeout_s=self.settings.read_timeout_s,
        )
        return pool

    @property
    def websockets_open(self) -> int:
        """WebSocket tunnels open now."""
        return len(self.drain.tunnels)

    def _head(
        self,
        request: web.Request,
        response: _Relayed,
        headers: Iterable[tuple[str, str]],
        extra: dict[str, str],
        hide: str | None,
    ) -> None:
        """The client's answer's head: the upstream's (hop-by-hop headers dropped, the
        reward header hidden, a redirect to an upstream's own address made relative), the
        decision's token and a new unit's cookie added."""
        connection = None
        for k, v in headers:
            name = k.lower()
            if name not in HOP_BY_HOP:
                response.headers.add(k, v)
            elif name == "connection":
                connection = v
        if connection is not None:  # the headers it names are hop-by-hop too
            for name in _named(connection):
                response.headers.popall(name, None)
        if self._origins:  # looked up once each, not compared with every header
            for name in _REDIRECTING:
                if name in response.headers:
                    values = response.headers.popall(name)
                    for value in values:
                        response.headers.add(name, _rewritten(name, value, self._origins))
        if hide is not None:  # the upstream's reward, for autoexp only
            if hide in response.headers:
                response.reward = response.headers.popall(hide)[0]
        if "Content-Type" not in response.headers:  # aiohttp would say octet-stream
            response.untyped = True
        if DECISION_HEADER in extra:
            response.headers[DECISION_HEADER] = extra[DECISION_HEADER]
        self._set_unit_cookie(request, response)
        if self.drain.closing:
            response.force_close()

    async def _relay(
        self,
        request: web.Request,
        response: _Relayed,
        headers: Iterable[tuple[str, str]],
        chunks: AsyncIterator[bytes],
        extra: dict[str, str],
        hide: str | None,
        base: str,
    ) -> _Relayed:
        """The upstream's answer to the client: its head (:meth:`_head`), then its body as
        it comes."""
        self._head(request, response, headers, extra, hide)
        try:
            await _to_client(response.prepare(request))
            try:
                async for chunk in chunks:
                    await _to_client(response.write(chunk))
            except (aiohttp.ClientError, TimeoutError) as e:
                # the head is sent: no retry, no second answer; the client's
                # connection closes on a truncated one
                self.events["upstream_error"] += 1
                response.failed = True
                if request.transport is not None:
                    request.transport.close()
                log.warning("autoexp: %s broke off its answer: %r", base, e)
                return response
            await _to_client(response.write_eof())
        except _ClientGone:
            self.events["client_gone"] += 1
        return response

    def _client_fault(self, request: web.Request, why: str | None = None) -> _Own:
        """The answer to a request whose body could not be read whole, or is declared too
        large to read (so no upstream saw it whole): 413 over ``max_body_bytes``, else 400;
        a client gone reads none of it, and ``client_gone`` counts it."""
        why = why or request[BODY_FAILED]
        if why == "too_large":
            error, status = f"body: larger than {self.settings.max_body_bytes} bytes", 413
        elif why == "client_gone":
            self.events["client_gone"] += 1
            error, status = "body: the client went away before sending all of it", 400
        else:
            error, status = f"body: could not be read ({why})", 400
        response = _Own(status, error)
        response.client_fault = True
        return response

    async def _body(self, request: web.Request) -> AsyncIterator[bytes]:
        """The client's body, streamed to the upstream and capped; a failure to read it
        is marked on the request (:data:`BODY_FAILED`), as the upstream's session wraps
        it in an error of its own."""
        seen = 0
        try:
            async for chunk in request.content.iter_chunked(CHUNK):
                seen += len(chunk)
                if seen > self.settings.max_body_bytes:
                    request[BODY_FAILED] = "too_large"
                    raise _TooLarge
                yield chunk
        except _TooLarge:
            raise
        except ConnectionError:  # the client closed or reset its connection
            request[BODY_FAILED] = "client_gone"
            raise
        except Exception as e:  # the parser's, if it ever fails a body it began to pass
            request[BODY_FAILED] = e.__class__.__name__
            raise


def _wants_websocket(request: web.Request) -> bool:
    """A WebSocket handshake: ``GET`` over HTTP/1.1 with ``Upgrade: websocket`` and
    ``Connection: upgrade`` (what aiohttp's server also takes as one, and then stops
    parsing the connection's bytes as HTTP)."""
    if request.method != "GET" or request.version != aiohttp.HttpVersion11:
        return False
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return False
    tokens = request.headers.get("Connection", "").lower().split(",")
    return "upgrade" in (t.strip() for t in tokens)


class _ToUpstream:
    """The payload parser of a connection switched to WebSocket (aiohttp's interface,
    as its ``WebSocketReader``): each piece the client sends goes to the upstream; the
    client's end closes the tunnel."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.last = time.monotonic()  # when a byte last went either way

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.last = time.monotonic()
        self.answer.send(data)
        return False, b""

    def feed_eof(self) -> None:
        self.answer.close()
