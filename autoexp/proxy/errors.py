"""The sidecar's error answers: JSON ``{"error": "<where>: <what>", "kind": "<class>"}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

__all__ = ["encoded", "json_error"]


def json_error(status: int, kind: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, "kind": kind, **extra}, status=status)


def encoded(request: web.Request) -> str | None:
    """Why a JSON body sent with a ``Content-Encoding`` is refused (a 415), or ``None``.
    The server does not decompress bodies: the proxy passes them upstream as they came."""
    coding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if coding == "identity":
        return None
    return f"body: Content-Encoding {coding[:40]!r} is not accepted here; send the JSON as it is"
