"""The sidecar's error answers: JSON ``{"error": "<where>: <what>", "kind": "<class>"}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

__all__ = ["json_error"]


def json_error(status: int, kind: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, "kind": kind, **extra}, status=status)
