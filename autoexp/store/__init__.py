"""Stores: one protocol (:class:`~autoexp.store.base.Store`), three backends.

``open_store(url)``: ``memory://``, ``sqlite:///path/to/file.db`` (the embedded default)
or ``redis://host:port/db``. Without a URL, ``AUTOEXP_STORE`` or the default
``sqlite:///autoexp.db`` (in the working directory).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ConfigError
from .base import Store, redacted

__all__ = ["DEFAULT_URL", "Store", "missing_file", "open_store", "redacted", "store_url"]

DEFAULT_URL = "sqlite:///autoexp.db"
SCHEMES = ("memory", "sqlite", "redis")


def store_url(url: str | None = None) -> str:
    """The store's URL in force: ``url``, or ``$AUTOEXP_STORE``, or :data:`DEFAULT_URL`."""
    return url or os.environ.get("AUTOEXP_STORE") or DEFAULT_URL


def missing_file(url: str) -> Path | None:
    """The file of a SQLite store that does not exist (opening it would create it);
    ``None`` for one that does, or another kind of store."""
    if urlsplit(url).scheme == "sqlite" and url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :].split("?", 1)[0])
        if not path.exists():
            return path
    return None


_WHERE = "--store, the config's store or AUTOEXP_STORE"  # where a command takes its URL


def open_store(url: str | None = None, *, create: bool = True) -> Store:
    """The store at ``url`` (or ``$AUTOEXP_STORE``, or :data:`DEFAULT_URL`).
    ``create=False``: a SQLite file that does not exist is a :class:`ConfigError` rather
    than created empty, and so is ``memory://``, empty in any new process (for commands
    that only read what a store holds)."""
    url = store_url(url)
    if not create and (path := missing_file(url)) is not None:
        raise ConfigError(
            f"store: {redacted(url)}: no such file {path} (give the store that holds the "
            f"experiments: {_WHERE})"
        )
    scheme = urlsplit(url).scheme
    if not create and scheme == "memory":
        raise ConfigError(
            "store: memory:// lives inside one process, so this one's is empty (give the "
            f"store that holds the experiments, sqlite:///path or redis://host:port/db: {_WHERE})"
        )
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
