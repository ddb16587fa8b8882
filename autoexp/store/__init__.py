"""Stores: one protocol (:class:`~autoexp.store.base.Store`), three backends.

``open_store(url)``: ``memory://``, ``sqlite:///path/to/file.db`` (the embedded default)
or ``redis://host:port/db``. Without a URL, ``AUTOEXP_STORE`` or the default
``sqlite:///autoexp.db`` (in the working directory).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from ..errors import ConfigError
from .base import Store, redacted

__all__ = ["DEFAULT_URL", "Store", "open_store", "redacted", "store_url"]

DEFAULT_URL = "sqlite:///autoexp.db"
SCHEMES = ("memory", "sqlite", "redis")


def store_url(url: str | None = None) -> str:
    """The store's URL in force: ``url``, or ``$AUTOEXP_STORE``, or :data:`DEFAULT_URL`."""
    return url or os.environ.get("AUTOEXP_STORE") or DEFAULT_URL


def open_store(url: str | None = None) -> Store:
    """The store at ``url`` (or ``$AUTOEXP_STORE``, or :data:`DEFAULT_URL`)."""
    url = store_url(url)
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from .memory import MemoryStore

        return MemoryStore(url)
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme in ("redis", "rediss"):
        from .redis import RedisStore

        return RedisStore(url)
    raise ConfigError(
        f"store: unknown URL scheme {scheme!r} in {redacted(url)!r}; accepted: memory://, "
        "sqlite:///path, redis://host:port/db"
    )
