"""Fixtures for the runtime's tests: a real ``redis-server`` on a free loopback port (never
6379's data), SQLite files in a temporary directory, and one ``store`` fixture over every
backend."""

from __future__ import annotations

import functools
import shutil
import socket
import subprocess
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoexp.engine import Engine
from autoexp.store import open_store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A ``redis-server`` process of the test session's own, on 127.0.0.1."""

    def __init__(self, directory: Path, *options: str) -> None:
        self.port = free_port()
        self.directory = directory
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (CI installs it: .ci/run)")
        persistence = self.options or ("--appendonly", "no")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *persistence,
                "--dir",
                str(self.directory),
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 10 s")

    def stop(self, *, crash: bool = False) -> None:
        """Shut down (SIGTERM), or with ``crash`` kill it (SIGKILL, no goodbye)."""
        if self.proc is not None:
            self.proc.kill() if crash else self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def flush(self) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        client.flushall()
        client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _engines_stopped(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every engine a test made has its background writer stopped when the test ends.
    Left running until garbage collection, one went on writing into the next test's
    store: Redis is the session's, flushed between tests, and a writer that finds its
    experiment's fields gone declares them again (as after a Redis restart), so the
    next test's engine of that name found another policy's fields there."""
    made: list[weakref.ref[Engine]] = []
    init = Engine.__init__

    @functools.wraps(init)
    def tracked(self: Engine, *args: Any, **kwargs: Any) -> None:
        made.append(weakref.ref(self))
        init(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "__init__", tracked)
    yield
    for ref in made:
        engine = ref()
        flusher = getattr(engine, "_flusher", None)  # None too if its __init__ refused
        if engine is not None and flusher is not None:
            engine._stop.set()
            engine._wake.set()
            flusher.join(timeout=5)


def _store_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'autoexp.db'}"
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    return server.url


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    s = open_store(_store_url(request.param, request, tmp_path))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(params=["sqlite", "redis"])
def durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    s = open_store(_store_url(request.param, request, tmp_path))
    try:
        yield s
    finally:
        s.close()


class Served:
    """An aiohttp application served on 127.0.0.1 from a thread of its own (its own event
    loop), so synchronous clients can call it from the test."""

    def __init__(self, app: Any, ssl_context: Any = None, *, uvloop: bool = False) -> None:
        import asyncio
        import threading

        from aiohttp import web

        if uvloop:  # as the proxy's workers run
            import uvloop as _uvloop

            self.loop = _uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class Sidecar(Served):
    """The sidecar's app around ``engine`` (and forwarding, given ``proxy``), served."""

    def __init__(self, engine: Any, *, uvloop: bool = False, **options: Any) -> None:
        from autoexp.proxy import make_app

        self.engine = engine
        self.app = make_app(engine, close_engine=False, **options)
        super().__init__(self.app, uvloop=uvloop)

    def close(self) -> None:
        super().close()
        self.engine.close()
