"""The sidecar's HTTP API (aiohttp): decide and reward for applications in any language.

Routes, all under ``/_autoexp/`` so they never shadow the application's own paths:

``POST /_autoexp/decide``
    ``{"experiment": "ranker", "unit": "user-7", "context": [0.1, 2.0]}`` (``unit`` and
    ``context`` optional) -> 200 with the decision: ``id``, ``experiment``, ``arm``,
    ``alternative``, ``propensity``, ``params``, ``policy``, ``allocation_version``,
    ``token``, ``sticky``. 503 with ``"fail_open": true`` while the store is failing: serve
    control (the Python client does).
``POST /_autoexp/rewards``
    ``{"token": "...", "value": 1.0}`` or a batch ``{"rewards": [{"token", "value"}, ...]}``
    -> 202 ``{"applied": [true, false, ...]}`` (``false``: that decision was already
    rewarded; sending a reward again is safe). A bad item refuses the whole request with
    400 and its index, nothing written; 503 when the store failed (nothing acknowledged:
    retry).
``GET /_autoexp/experiments/NAME/definition``
    the experiment's alternatives, their parameters, its policy and reward range.
``GET /_autoexp/healthz`` (the process answers, with its pid) and ``GET /_autoexp/readyz``
    (it serves: 503 only while it drains to stop; the body says whether the store answers,
    and ``?store=required`` makes that a 503 too: :func:`readyz`).
``GET /_autoexp/metrics``
    Prometheus metrics (:mod:`autoexp.proxy.metrics`).
``/_autoexp/admin/...``
    inspect, pause, resume, promote, roll back, with a bearer token
    (:mod:`autoexp.proxy.admin`).
``GET /_autoexp/ui`` (and its data, ``/_autoexp/ui/data``)
    the status page, read-only (:mod:`autoexp.proxy.ui`).

Every error is JSON ``{"error": "<where>: <what is wrong>", "kind": "<class>"}`` with a
4xx for the caller's mistakes (400 malformed, 404 unknown experiment, 413 too large) and
503 for the store's. Decisions are in-memory draws and run on the event loop (a sticky
unit's too, once the engine holds its assignment); a unit not held yet and rewards touch
the store and run in the offload thread (:mod:`autoexp.proxy.offload`), probes and chores
in worker threads, so a slow store never stalls decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from policies.build import finite

from ..engine import Engine
from ..errors import RequestError, RewardError, StoreError, UnknownExperimentError
from ..throttle import Throttle
from .admin import add_admin_routes
from .errors import encoded, json_error
from .group import EVERY_S, Group, remove_directory
from .metrics import figures, metrics_handler, replica_figures
from .offload import Offload
from .routes import ProxySettings, Route
from .ui import add_ui_routes
from .upstream import Drain, Forwarder, untyped

__all__ = ["DRAIN", "MAX_BODY_BYTES", "MAX_REWARDS", "ServerLog", "make_app"]

log = logging.getLogger("autoexp.proxy")

MAX_BODY_BYTES = 2 << 20  # a request body larger than this gets 413
MAX_REWARDS = 1_000  # rewards in one request
ENGINE: web.AppKey[Engine] = web.AppKey("engine", Engine)
FORWARDER: web.AppKey[Forwarder] = web.AppKey("forwarder", Forwarder)
OFFLOAD: web.AppKey[Offload] = web.AppKey("offload", Offload)
CONFIG_SHA256: web.AppKey[str | None] = web.AppKey("config_sha256")
DRAIN: web.AppKey[Drain] = web.AppKey("drain", Drain)  # set as the server stops
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Refused(Exception):
    """A request refused with ``status`` and a reason (turned into JSON by :func:`_api`)."""

    def __init__(self, status: int, message: str, kind: str = "RequestError") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


async def _body(request: web.Request) -> Mapping[str, Any]:
    """The request's JSON object; :class:`_Refused` with the reason otherwise."""
    if (why := encoded(request)) is not None:
        raise _Refused(415, why)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:  # aiohttp's own check of client_max_size
        raise _Refused(413, f"body: larger than {MAX_BODY_BYTES} bytes") from None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise _Refused(400, f"body: not JSON ({e})") from None
    if not isinstance(body, Mapping):
        raise _Refused(400, f"body: must be a JSON object (got {type(body).__name__})")
    return body


def _api(handler: Handler) -> Handler:
    """The handler, with its refusals as JSON errors, and its connection closed after
    the answer once the server stops (:class:`~autoexp.proxy.upstream.Drain`)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except _Refused as e:
            response = json_error(e.status, e.kind, str(e))
        if request.app[DRAIN].closing:
            response.force_close()
        return response

    return wrapped


@_api
async def decide(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = await _body(request)
    name = body.get("experiment")
    if not isinstance(name, str) or not name:
        raise _Refused(400, f"experiment: must be a non-empty string (got {name!r})")
    unit = body.get("unit")
    if unit is not None and not (isinstance(unit, str) and 0 < len(unit) <= 1024):
        raise _Refused(400, f"unit: must be a string of 1 to 1024 characters (got {unit!r:.60})")
    context = body.get("context")
    if isinstance(context, Mapping):  # named feature values, encoded by the config
        if len(context) > 256:
            raise _Refused(400, "context: at most 256 named features")
    elif context is not None and not (
        isinstance(context, list)
        and len(context) <= 4096
        and all(finite(x) is not None for x in context)
    ):
        raise _Refused(
            400,
            "context: must be a list of at most 4096 finite numbers or an object of named "
            "feature values",
        )
    try:
        # an in-memory draw, on the loop, unless a sticky unit's assignment is not held
        # here (a store read and maybe write): then in the offload thread
        decision = engine.try_decide(name, unit=unit, context=context)
        if decision is None:
            offload = request.app[OFFLOAD]
            decision = await offload.run(engine.decide, name, unit=unit, context=context)
    except RequestError as e:  # a context this experiment cannot take
        raise _Refused(400, str(e)) from None
    except UnknownExperimentError:
        raise _Refused(
            404, f"experiment: no experiment named {name!r}", "UnknownExperimentError"
        ) from None
    except StoreError as e:
        return json_error(503, "StoreError", str(e), fail_open=True)
    return web.json_response(decision.public())


def _reward_items(body: Mapping[str, Any]) -> tuple[list[tuple[Any, Any]], bool]:
    """The (token, value) pairs of a reward request, and whether it was a single one."""
    if "rewards" in body:
        items = body["rewards"]
        if not isinstance(items, list) or not items:
            raise _Refused(400, "rewards: must be a non-empty list of {token, value} objects")
        if len(items) > MAX_REWARDS:
            raise _Refused(413, f"rewards: at most {MAX_REWARDS} in one request (got {len(items)})")
        single = False
    else:
        items = [body]
        single = True
    out = []
    for n, item in enumerate(items):
        where = "" if single else f"rewards[{n}]: "
        if not isinstance(item, Mapping) or "token" not in item or "value" not in item:
            raise _Refused(400, f"{where}must be an object with token and value")
        value = item["value"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Refused(400, f"{where}reward: must be a number (got {value!r:.60})")
        out.append((item["token"], value))
    return out, single


@_api
async def rewards(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    items, single = _reward_items(await _body(request))
    offload = request.app[OFFLOAD]
    try:
        if single:  # joined with other requests' single rewards queued meanwhile
            applied = [await offload.run_each(engine.reward_each, items[0])]
        else:
            applied = await offload.run(engine.reward_many, items)
    except RewardError as e:
        raise _Refused(400, str(e), "RewardError") from None
    except UnknownExperimentError as e:
        raise _Refused(404, str(e.args[0]), "UnknownExperimentError") from None
    except StoreError as e:
        return json_error(503, "StoreError", f"{e}; nothing was acknowledged: retry")
    return web.json_response({"applied": applied}, status=202)


@_api
async def definition(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    name = request.match_info["name"]
    try:
        spec = engine.spec(name)
    except UnknownExperimentError:
        raise _Refused(
            404, f"experiment: no experiment named {name!r}", "UnknownExperimentError"
        ) from None
    except StoreError as e:  # not started yet: waiting for its store
        return json_error(503, "StoreError", str(e), fail_open=True)
    return web.json_response(
        {
            "experiment": spec.name,
            "alternatives": list(spec.alternatives),
            "params": [dict(p) for p in spec.params or [{} for _ in spec.alternatives]],
            "policy": spec.policy.name,
            "reward_range": list(spec.reward_range),
        }
    )


async def healthz(request: web.Request) -> web.Response:
    config = request.app[CONFIG_SHA256]
    body: dict[str, Any] = {"ok": True, "pid": os.getpid()}  # which worker answered
    if config is not None:
        body["config_sha256"] = config  # and on which config
    return web.json_response(body)


async def readyz(request: web.Request) -> web.Response:
    """200 while this worker serves, 503 once it drains to stop. A store that does not
    answer does not make it unready: requests go to control meanwhile, and the API's
    decisions are 503 with ``fail_open`` (a Kubernetes readiness probe here must not take
    the application's pods out of their Service for the store's sake). ``?store=required``:
    503 also while the store does not answer or an experiment waits for it (for a
    decisions-only service behind a load balancer that should skip such a replica)."""
    engine = request.app[ENGINE]
    required = request.query.get("store")
    if required not in (None, "required"):
        return json_error(
            400,
            "RequestError",
            f"store: the only value accepted is 'required' (got {required!r:.60})",
        )
    ok, error = await asyncio.to_thread(engine.check_store)
    waiting = engine.waiting
    draining = request.app[DRAIN].closing
    ready = not draining and (required is None or (ok and not waiting))
    body = {"ok": ready, "store_ok": ok, "store_error": error, "waiting": waiting}
    if draining:
        body["draining"] = True
    return web.json_response(body, status=200 if ready else 503)


def _background(every_s: float) -> Callable[[web.Application], AsyncIterator[None]]:
    """The engine's chores on a cadence: default rewards for closed join windows."""

    async def chores(app: web.Application) -> AsyncIterator[None]:
        engine = app[ENGINE]

        async def loop() -> None:
            while True:
                await asyncio.sleep(every_s)
                try:
                    # one replica of those sharing the store reads the log for all; another
                    # takes over within three rounds of it stopping
                    await asyncio.to_thread(engine.expire, hold_s=min(3 * every_s, 86_400.0))
                except StoreError as e:  # the store is down: the next round tries again
                    log.warning("autoexp: expiring rewards failed: %s", e)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return chores


def _publishing(group: Group) -> Callable[[web.Application], AsyncIterator[None]]:
    """A supervised worker's figures written for the others every ``EVERY_S``, and a
    last time, marked stopped, as it stops (then the directory removed if the supervisor
    was killed outright: each worker stopping tries, so the last one gets it all)."""

    async def publishing(app: web.Application) -> AsyncIterator[None]:
        said = Throttle()

        async def loop() -> None:
            while True:
                try:
                    await asyncio.to_thread(group.publish)
                except Exception as e:  # its directory gone, say: tried again each second
                    if said.due():
                        log.warning("autoexp: this worker's figures not shared: %r", e)
                await asyncio.sleep(EVERY_S)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(OSError):
            await asyncio.to_thread(group.publish, stopped=True)
        if group.orphaned():  # nobody left to sum them, nor to remove them
            remove_directory(str(group.directory))

    return publishing


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, as the proxy's runner is given it: a malformed request
    (aiohttp's own 400: a line over 8 KiB, conflicting lengths, not HTTP) is counted in
    ``events`` (``malformed``) and said on one line at most every 10 s, where aiohttp
    logs each with its traceback at ERROR (a scanner could fill the log); the rest as
    aiohttp says it."""

    def __init__(self, events: Counter[str]) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.events = events
        self._said = Throttle()

    def _malformed(self, kwargs: dict[str, Any]) -> bool:
        if not isinstance(kwargs.get("exc_info"), HttpProcessingError):
            return False
        self.events["malformed"] += 1
        return True

    def exception(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not self._malformed(kwargs):
            super().exception(msg, *args, **kwargs)
        elif self._said.due():
            error = kwargs["exc_info"]
            self.logger.warning(
                "autoexp: a malformed request from %s answered %d: %s: %.120s (%d so far; "
                "said at most every %.0f s, all counted in autoexp_proxy_events_total)",
                args[0] if args else "?",
                error.code,
                type(error).__name__,
                str(error.message).strip(),
                self.events["malformed"],
                self._said.every_s,
            )

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._malformed(kwargs)  # not HTTP on a first request: counted, kept quiet
        super().debug(msg, *args, **kwargs)


def make_app(
    engine: Engine,
    *,
    proxy: ProxySettings | None = None,
    routes: Sequence[Route] = (),
    expire_every_s: float = 10.0,
    close_engine: bool = True,
    admin_token: str | None = None,
    config_sha256: str | None = None,
    workers_dir: str | None = None,
) -> web.Application:
    """The sidecar's application around a started engine.

    Parameters
    ----------
    engine : decides and rewards
    proxy : forward every request outside ``/_autoexp/`` (see
        :mod:`autoexp.proxy.upstream`); ``None``: the API only
    routes : which requests each experiment takes
    expire_every_s : how often default rewards are applied to closed join windows
    close_engine : on shutdown, write the pending log and close the engine's store
    admin_token : the bearer token of the admin API (:mod:`autoexp.proxy.admin`);
        ``None``: no admin
    config_sha256 : the SHA-256 of the config file served, in ``healthz`` and the
        metrics (``autoexp_config_info``): which config each worker and replica serves,
        after a reload say
    workers_dir : a supervised worker's: where the workers of its group share what each
        counts on its own, so that the metrics sum them (:mod:`autoexp.proxy.group`)
    """
    # bodies as they came: aiohttp would decompress a gzip body and the proxy send it on
    # labelled gzip still, cut to the compressed length (and the API refuses them: 415)
    handler: dict[str, Any] = {"auto_decompress": False}
    if proxy is not None:  # also the time a client may take to send a request's head
        handler["keepalive_timeout"] = proxy.client_idle_timeout_s
    app = web.Application(client_max_size=MAX_BODY_BYTES, handler_args=handler)
    app[ENGINE] = engine
    app[CONFIG_SHA256] = config_sha256
    drain = app[DRAIN] = Drain()

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        yield
        if close_engine:  # after every request finished: nothing acknowledged is lost
            await asyncio.to_thread(engine.close)
            await asyncio.to_thread(engine.store.close)

    app.cleanup_ctx.append(lifetime)  # unwinds last: after the chores stopped
    forwarder: Forwarder | None = None
    group = None
    if workers_dir is not None:
        group = Group(workers_dir, lambda: replica_figures(engine, forwarder))
        app.cleanup_ctx.append(_publishing(group))  # its last figures once requests ended
    app.cleanup_ctx.append(_background(expire_every_s))
    offload = app[OFFLOAD] = Offload()
    app.cleanup_ctx.append(offload.lifetime)  # stopped after the forwarder's requests
    app.router.add_post("/_autoexp/decide", decide)
    app.router.add_post("/_autoexp/rewards", rewards)
    app.router.add_get("/_autoexp/experiments/{name}/definition", definition)
    app.router.add_get("/_autoexp/healthz", healthz)
    app.router.add_get("/_autoexp/readyz", readyz)
    if routes and proxy is None:
        raise ValueError("make_app: routes need proxy settings (the default upstream)")
    if proxy is not None:
        forwarder = Forwarder(
            engine=engine, settings=proxy, routes=tuple(routes), offload=offload, drain=drain
        )
        app[FORWARDER] = forwarder
        app.cleanup_ctx.append(forwarder.lifetime)  # closed first: before the engine
    metrics = metrics_handler(engine, forwarder, config_sha256, group)
    app.router.add_get("/_autoexp/metrics", metrics)
    add_admin_routes(
        app,
        engine,
        admin_token,
        None if group is None else lambda: figures(engine, forwarder, group),
    )
    add_ui_routes(app, engine)
    if forwarder is not None:  # last: everything outside /_autoexp/
        app.router.add_route("*", "/{tail:.*}", forwarder.handle, expect_handler=forwarder.expect)
        app.on_response_prepare.append(untyped)
    return app
