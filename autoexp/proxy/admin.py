"""The admin API under ``/_autoexp/admin/``: inspect experiments, pause, resume, promote,
roll back. Every call needs ``Authorization: Bearer <token>`` with the token from
``AUTOEXP_ADMIN_TOKEN`` (at least 16 characters); with no token configured there
is no admin at all (403), and a missing or wrong token is a 401. Nothing changes unless
the call is authorised and valid. An experiment not started yet because its store has
not answered since the proxy started is listed with ``"waiting": true`` and its
``reason``; the others answer 503 for it until it starts.

``GET  /_autoexp/admin/experiments``                      every experiment's status
``GET  /_autoexp/admin/experiments/NAME``                 its status and evidence
``POST /_autoexp/admin/experiments/NAME/pause``           control only, until resumed
``POST /_autoexp/admin/experiments/NAME/resume``
``POST /_autoexp/admin/experiments/NAME/promote``         ``{"alternative": ..., "reason": ...}``
``POST /_autoexp/admin/experiments/NAME/roll_back``       ``{"alternative": ..., "reason": ...}``

A status holds what the process counts on its own beside the shared state: the late
rewards refused (``late_rewards``), the default rewards applied (``defaults_applied``),
the decisions not yet written (``unlogged``) and whether it holds the experiment's expire
lease (``expire_held``; ``null`` before the first pass). With ``--workers N`` these are
every worker's, summed (:mod:`autoexp.proxy.group`), as in the metrics: whichever worker
a call reaches answers alike.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..engine import Engine
from ..errors import ConfigError, StateError, StoreError, UnknownExperimentError
from .errors import encoded, json_error
from .group import Figures

__all__ = ["add_admin_routes", "admin_token"]

MIN_TOKEN_CHARS = 16
TOKEN_VARIABLE = "AUTOEXP_ADMIN_TOKEN"


def admin_token() -> str | None:
    """The admin API's bearer token from ``AUTOEXP_ADMIN_TOKEN``; ``None`` (no admin API)
    when unset or empty. One too short to be a secret is a :class:`ConfigError` before
    anything serves, rather than an admin API that anyone could guess into."""
    token = os.environ.get(TOKEN_VARIABLE) or None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"{TOKEN_VARIABLE}: at least {MIN_TOKEN_CHARS} characters (got {len(token)}); "
            "e.g. python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return token


# a status's fields each worker counts on its own: where the summed figures hold them
SUMMED = {
    "late_rewards": ("counters", "autoexp_late_rewards"),
    "defaults_applied": ("counters", "autoexp_defaults_applied"),
    "unlogged": ("gauges", "autoexp_unlogged_decisions"),
}


def summed_status(status: dict[str, Any], figures: Figures) -> dict[str, Any]:
    """``status`` with its worker's own counts replaced by the group's ``figures``."""
    name = status["experiment"]
    for field, (kind, metric) in SUMMED.items():
        value = figures[kind].get(metric, {}).get(name)
        if value is not None:
            status[field] = int(value)
    held = figures["gauges"].get("autoexp_expire_holder", {}).get(name)
    status["expire_held"] = None if held is None else held >= 1.0  # one worker holds it
    return status


def add_admin_routes(
    app: web.Application,
    engine: Engine,
    token: str | None,
    summed: Callable[[], Figures] | None = None,
) -> None:
    """Mount the admin API on ``app`` (refusing every call when ``token`` is ``None``);
    ``summed`` gives every worker's own counts summed (a supervised worker's; it reads
    files, so it is called in a thread)."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"admin_token: at least {MIN_TOKEN_CHARS} characters")

    def authorised(request: web.Request) -> web.Response | None:
        if token is None:
            return json_error(403, "Forbidden", "admin: disabled (no admin token configured)")
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        sent = value.encode("utf-8", "surrogateescape")  # the bytes sent, UTF-8 or not
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent, token.encode()):
            return json_error(401, "Unauthorized", "admin: missing or wrong bearer token")
        return None

    async def group() -> Figures | None:
        return None if summed is None else await asyncio.to_thread(summed)

    def status(st: dict[str, Any], figures: Figures | None) -> dict[str, Any]:
        st.pop("state", None)
        return st if figures is None else summed_status(st, figures)

    async def list_experiments(request: web.Request) -> web.Response:
        if (refused := authorised(request)) is not None:
            return refused
        figures = await group()
        listed = [
            {**status(engine.status(n), figures), "waiting": False} for n in engine.experiments
        ]
        listed += [  # not started: the store has not answered yet
            {"experiment": n, "waiting": True, "reason": why}
            for n, why in engine.not_started().items()
        ]
        return web.json_response({"experiments": sorted(listed, key=lambda e: e["experiment"])})

    async def inspect(request: web.Request) -> web.Response:
        if (refused := authorised(request)) is not None:
            return refused
        name = request.match_info["name"]
        try:
            body = {**engine.status(name), "evidence": engine.evidence(name)}
        except UnknownExperimentError:
            return json_error(404, "UnknownExperimentError", f"no experiment named {name!r}")
        except StoreError as e:  # not started yet: waiting for its store
            return json_error(503, "StoreError", str(e))
        figures = await group()
        return web.json_response(body if figures is None else summed_status(body, figures))

    async def operate(request: web.Request) -> web.Response:
        if (refused := authorised(request)) is not None:
            return refused
        name, action = request.match_info["name"], request.match_info["action"]
        if (why := encoded(request)) is not None:
            return json_error(415, "RequestError", why)
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return json_error(400, "RequestError", "body: not JSON")
        if not isinstance(body, dict):
            return json_error(400, "RequestError", "body: must be a JSON object")
        alternative, reason = body.get("alternative"), body.get("reason", "")
        if action in ("promote", "roll_back") and not isinstance(alternative, str):
            return json_error(400, "RequestError", f"{action}: needs {{'alternative': name}}")
        if not isinstance(reason, str) or len(reason) > 1000:
            return json_error(400, "RequestError", "reason: a string of at most 1000 chars")
        try:
            changed = await asyncio.to_thread(
                engine.operate, name, action, alternative=alternative, reason=reason
            )
        except UnknownExperimentError as e:
            return json_error(404, "UnknownExperimentError", str(e.args[0]))
        except StateError as e:
            return json_error(409, "StateError", str(e))
        except StoreError as e:
            return json_error(503, "StoreError", str(e))
        return web.json_response(status(changed, await group()))

    app.router.add_get("/_autoexp/admin/experiments", list_experiments)
    app.router.add_get("/_autoexp/admin/experiments/{name}", inspect)
    app.router.add_post(
        "/_autoexp/admin/experiments/{name}/{action:pause|resume|promote|roll_back}", operate
    )
