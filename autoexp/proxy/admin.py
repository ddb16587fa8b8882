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
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
from typing import Any

from aiohttp import web

from ..engine import Engine
from ..errors import ConfigError, StateError, StoreError, UnknownExperimentError
from .errors import encoded, json_error

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


def add_admin_routes(app: web.Application, engine: Engine, token: str | None) -> None:
    """Mount the admin API on ``app`` (refusing every call when ``token`` is ``None``)."""
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

    def summary(name: str) -> dict[str, Any]:
        st = engine.status(name)
        st.pop("state", None)
        return {**st, "waiting": False}

    async def list_experiments(request: web.Request) -> web.Response:
        if (refused := authorised(request)) is not None:
            return refused
        listed = [summary(n) for n in engine.experiments]
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
        return web.json_response(body)

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
            status = await asyncio.to_thread(
                engine.operate, name, action, alternative=alternative, reason=reason
            )
        except UnknownExperimentError as e:
            return json_error(404, "UnknownExperimentError", str(e.args[0]))
        except StateError as e:
            return json_error(409, "StateError", str(e))
        except StoreError as e:
            return json_error(503, "StoreError", str(e))
        status.pop("state", None)
        return web.json_response(status)

    app.router.add_get("/_autoexp/admin/experiments", list_experiments)
    app.router.add_get("/_autoexp/admin/experiments/{name}", inspect)
    app.router.add_post(
        "/_autoexp/admin/experiments/{name}/{action:pause|resume|promote|roll_back}", operate
    )
