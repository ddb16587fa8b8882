"""Running the sidecar: one worker process, or ``--workers N`` of them on one port.

One worker is an aiohttp server with its own engine on the config's store (on uvloop where
it is installed). Several workers are separate processes, started and watched by a
supervisor, and share the experiments' state through the store, exactly as replicas on
separate machines do, so the store must be one they can share: SQLite (one machine) or
Redis, not ``memory://``.

The supervisor binds the port, not the workers: one listening socket per worker slot, all
on the same address with ``SO_REUSEPORT`` (the kernel spreads connections across them),
each passed to its slot's worker (:func:`_listen`). A worker that stops closes only its
copy, so the connections waiting in its slot's queue are accepted by the worker that takes
its place after a reload, where a socket of its own would have been closed with them in
it, each reset. A worker stopping closes its connections gently (:func:`_serve_app`).
``benchmarks/reload.py`` (16 clients, five reloads): 34 of 64,983 requests on new
connections and 85 of 107,611 on keep-alive ones failed before, none after.

The supervisor forwards SIGTERM and SIGINT to the workers, which drain their requests and
write their pending logs (and on Linux they are sent SIGTERM if it is killed:
:func:`_start_worker`); it restarts a worker that dies (after a pause that doubles up to
10 s), and stops everything if a worker refuses its config (exit code 2). A store that does
not answer at the start is said, not refused: each worker forwards to control until it
answers (:func:`serve`). SIGHUP reloads the config: new workers on it, then the old ones
drain and stop (:func:`_reload`). The workers share what each counts on its own through a
directory the supervisor makes, so that the metrics any of them answers are all of theirs
(:mod:`autoexp.proxy.group`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..errors import ConfigError, StoreError
from . import group

if TYPE_CHECKING:
    from aiohttp import web

    from ..config import Config

__all__ = ["ServeOptions", "serve", "supervise"]

log = logging.getLogger("autoexp.proxy")

CONFIG_ERROR = 2  # a worker's exit code for a config it refuses: the supervisor stops
STORE_UNAVAILABLE = 3  # a worker's, for a store it could not open (SQLite): replaced
RESTART_PAUSE_S = (0.5, 10.0)  # first and longest pause before restarting a dead worker


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """How to serve (the ``autoexp proxy`` options)."""

    config: str
    host: str = "127.0.0.1"
    port: int = 8700
    workers: int = 1
    expire_every_s: float = 10.0
    shutdown_timeout_s: float = 10.0
    access_log: bool = False
    workers_dir: str | None = None  # where a group's workers share their own figures

    def worker_argv(self, listen_fds: Sequence[int]) -> list[str]:
        """The command line of one worker of a supervised group, serving the listening
        sockets ``listen_fds`` (passed to it open)."""
        return [
            sys.executable,
            "-m",
            "autoexp.cli",
            "proxy",
            "--config",
            self.config,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--expire-every-s",
            str(self.expire_every_s),
            "--shutdown-timeout-s",
            str(self.shutdown_timeout_s),
            "--listen-fds",
            ",".join(str(fd) for fd in listen_fds),
            *(["--access-log"] if self.access_log else []),
            *(["--workers-dir", self.workers_dir] if self.workers_dir else []),
        ]


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (about twice the requests per second), else
    asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


GC_THRESHOLD = 100_000


def serve(
    options: ServeOptions,
    *,
    listen_fds: Sequence[int] | None = None,
    ready_fd: int | None = None,
) -> None:
    """Serve the config's experiments in this process until SIGINT or SIGTERM.

    ``listen_fds``: a supervised worker, serving the listening sockets its supervisor
    bound (:func:`_listen`; SIGHUP is the supervisor's, ignored here) rather than binding
    ``options.host`` and ``options.port``; ``ready_fd``: a pipe told one byte once the
    port is served, then closed (the supervisor's reload waits for it)."""
    from ..config import load_config
    from ..engine import Engine
    from ..precompile import seed
    from ..store import open_store, redacted, store_url
    from .admin import admin_token
    from .app import make_app
    from .check import overlaps

    if listen_fds is not None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a terminal's hangup: the supervisor's
    else:
        signal.signal(signal.SIGHUP, _hangup_alone)  # not the default: exit without draining
    digest = _sha256(options.config)
    config = load_config(options.config)
    check_not_itself(config, options.config, options.host, options.port)
    token = admin_token()  # refused before anything is built
    if _sha256(options.config) != digest:  # the digest names what was loaded, exactly
        raise ConfigError(f"{options.config}: changed while it was read; try again")
    store = open_store(config.store)  # StoreError if it cannot be opened (SQLite)
    seed()  # an image's kernels, compiled as it was built, before the warm-up needs them
    try:
        # a store down as it starts (a Redis restarting with the pod, say) does not keep
        # the proxy down with it: the experiments start once it answers, control meanwhile
        engine = Engine(store, config.experiments, secret=config.secret, defer_start=True)
    except StoreError as e:  # so the store answered, and refused the experiments (state
        # of other shapes stored under their names): the config's fault, not an outage
        store.close()
        raise ConfigError(str(e)) from e
    engine.warm_up()  # compiled code loaded now, not during the first reward
    names = ", ".join(engine.experiments + engine.waiting)
    where = redacted(store_url(config.store))
    print(
        f"autoexp proxy [{os.getpid()}]: experiments {names} on {where} (config sha256 {digest})",
        flush=True,
    )
    for name, why in engine.not_started().items():
        print(
            f"autoexp proxy [{os.getpid()}]: experiment {name} not started yet, {why}; "
            "its requests go to control (counted as fail_open) until it starts",
            file=sys.stderr,
            flush=True,
        )
    for warning in overlaps(config.routes):
        log.warning("autoexp proxy: %s", warning)
    app = make_app(
        engine,
        proxy=config.proxy,
        routes=config.routes,
        expire_every_s=options.expire_every_s,
        admin_token=token,
        config_sha256=digest,
        workers_dir=options.workers_dir,
    )
    # Everything loaded so far (numpy, scipy, numba's compiled code, the app) lives as
    # long as the process: out of the collector's generations, so a collection walks only
    # what requests allocate (measured in benchmarks/proxy.py: about a fifth more requests/s)
    gc.collect()
    gc.freeze()
    # A request allocates a few hundred objects, nearly all freed when it ends; the
    # default first threshold (700) ran a collection every few requests, which walked the
    # decisions waiting for their rewards each time. 100,000 collects about once a
    # second at full load (a few MB of young objects): 5-8% more requests/s measured
    # here, the same as with the collector off.
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    with asyncio.Runner(loop_factory=_event_loop) as runner:
        runner.run(
            _serve_app(
                app,
                options,
                [socket.socket(fileno=fd) for fd in listen_fds] if listen_fds else None,
                ready_fd,
            )
        )


STOP_GRACE_S = 0.25  # between closing the listening sockets and closing idle connections


async def _serve_app(
    app: web.Application,
    options: ServeOptions,
    socks: list[socket.socket] | None,
    ready_fd: int | None,
) -> None:
    """Serve ``app`` on ``socks`` (or ``options.host`` and ``options.port``) until SIGINT
    or SIGTERM, then stop as ``web.run_app`` does, but gently: the listening sockets are
    closed at once; for ``STOP_GRACE_S`` what comes on open connections is served, each
    answer with ``Connection: close`` (:class:`~autoexp.proxy.upstream.Drain`); then the
    connections with no request in progress are closed and the others drained. So a
    connection accepted just before the stop has its request served rather than closed
    unanswered (aiohttp's run_app closes it one loop pass later: 2 of 65,092 requests on
    new connections failed so through five reloads), and a keep-alive client sends its
    next request on a new connection rather than one about to close under it."""
    from aiohttp import web

    from .app import DRAIN, FORWARDER, ServerLog

    forwarder = app.get(FORWARDER)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=logging.getLogger("aiohttp.access") if options.access_log else None,
        shutdown_timeout=options.shutdown_timeout_s,
        logger=ServerLog(forwarder.events if forwarder is not None else Counter()),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):  # before the app starts, as run_app
        loop.add_signal_handler(signum, stop.set)
    await runner.setup()
    try:
        sites: list[web.BaseSite] = (
            [web.TCPSite(runner, options.host, options.port)]
            if socks is None
            else [web.SockSite(runner, sock) for sock in socks]
        )
        for site in sites:
            try:
                await site.start()
            except OSError as e:  # the port taken, an address not this host's, a name
                raise _cannot_listen(options.host, options.port, e) from None
        names = ", ".join(sorted(str(site.name) for site in sites))
        _running(f"======== Running on {names} ========", ready_fd)
        await stop.wait()
        app[DRAIN].begin()  # answers from here on close their connection; WebSockets close
        for site in sites:
            await site.stop()
        await asyncio.sleep(STOP_GRACE_S)
    finally:
        await runner.cleanup()  # drains the requests in progress, then the app's cleanup


def _sha256(path: str) -> str | None:
    """The file's SHA-256 (hex); ``None`` if it cannot be read (load_config says why)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _running(text: str, ready_fd: int | None) -> None:
    """aiohttp's word that the port is served: printed, and told to the supervisor."""
    print(f"autoexp proxy [{os.getpid()}]: {text}", flush=True)
    if ready_fd is not None:
        with contextlib.suppress(OSError):  # a supervisor that gave up waiting
            os.write(ready_fd, b"1")
        os.close(ready_fd)


def _hangup_alone(signum: int, frame: FrameType | None) -> None:
    log.warning(
        "autoexp proxy: SIGHUP ignored: reloading the config takes the supervisor "
        "(--workers 2 or more); SIGTERM and a restart reload one worker"
    )


def check_shareable(store: str | None, workers: int) -> None:
    """Refuse a store that several workers cannot share."""
    from ..store import store_url

    url = store_url(store)
    if workers > 1 and urlsplit(url).scheme == "memory":
        raise ConfigError(
            f"store: {url!r} lives inside one process, so {workers} workers would each "
            "have their own; use sqlite:///path or redis://host:port/db"
        )


def supervise(options: ServeOptions) -> int:
    """Run ``options.workers`` worker processes on one port until SIGINT or SIGTERM; the
    exit code (0 after a clean stop, 2 when a worker refused the config). SIGHUP reloads
    the config (:func:`_reload`)."""
    from ..config import load_config
    from ..store import store_url
    from .admin import admin_token
    from .check import store_answers

    if options.port == 0:
        raise ConfigError("--port: several workers need a fixed port to share (not 0)")
    config = load_config(options.config)
    # said here once, not by each worker
    check_not_itself(config, options.config, options.host, options.port)
    store = config.store
    check_shareable(store, options.workers)  # fail early
    admin_token()  # the workers' environment is this one: refused here, not N times
    # a store down at the first start is said here once; the workers start anyway and
    # forward to control until it answers (see serve)
    answers, said = store_answers(store_url(store))
    if not answers:
        print(f"autoexp proxy: store: {said}; starting anyway", file=sys.stderr, flush=True)
    # what each worker counts on its own, shared so that the metrics sum the workers'
    try:
        shared = group.make_directory()
    except OSError as e:  # no writable temporary directory: each worker says its own
        print(
            f"autoexp proxy: no directory for the workers' figures ({e}); each worker's "
            "metrics say its own counts (set TMPDIR to a writable directory)",
            file=sys.stderr,
            flush=True,
        )
        return _supervise(options)
    try:
        return _supervise(dataclasses.replace(options, workers_dir=shared))
    finally:
        group.remove_directory(shared)


def _supervise(options: ServeOptions) -> int:
    stopping: list[int] = []
    hangups: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    def hangup(signum: int, frame: FrameType | None) -> None:
        hangups.append(signum)

    # each worker slot's listening sockets (None while its worker waits to restart);
    # refused here, exit 2, if the port is taken
    listening: list[list[socket.socket] | None] = []
    try:
        for _ in range(options.workers):
            listening.append(_listen(options.host, options.port))
    except ConfigError:
        for socks in listening:
            _close(socks)
        raise
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    procs: list[subprocess.Popen[bytes] | None] = [None] * options.workers

    reloading: list[bool] = []  # [True] while a reload starts workers on the sockets

    def child_exited(signum: int, frame: FrameType | None) -> None:
        # A dead worker's sockets closed at once, not at the loop's next pass (up to 50 ms
        # later): held here, they would take connections no one accepts, then reset them.
        # Not during a reload: its new worker takes (or has taken) them and serves what
        # waits there, and closed here they would be lost to the slot, which the next
        # reload would give a new socket, resetting the queue of the old one as it stops
        if reloading:
            return
        for i, proc in enumerate(procs):
            if proc is not None and proc.poll() is not None:
                _close(listening[i])
                listening[i] = None

    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hangup)
    previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, child_exited)
    pauses = [RESTART_PAUSE_S[0]] * options.workers
    due = [0.0] * options.workers
    started = [0.0] * options.workers
    retiring: list[tuple[subprocess.Popen[bytes], float]] = []  # draining, and until when
    code = 0
    try:
        while not stopping:
            now = time.monotonic()
            if hangups:
                hangups.clear()
                reloading.append(True)
                try:  # until the new workers replace the old in procs
                    fresh = _reload(options, stopping, listening)
                    if fresh is not None:  # serving: the old workers drain and stop
                        until = now + options.shutdown_timeout_s + 15.0
                        for old in procs:
                            if old is not None and old.poll() is None:
                                old.send_signal(signal.SIGTERM)
                                retiring.append((old, until))
                        procs[:] = fresh
                        pauses = [RESTART_PAUSE_S[0]] * options.workers
                        started = [time.monotonic()] * options.workers
                finally:
                    reloading.clear()
                continue
            for old, until in retiring:
                if old.poll() is None and now > until:
                    old.kill()  # did not drain in time
            exited = [old for old, _ in retiring if old.poll() is not None]
            _fold(options, exited)
            retiring = [(old, until) for old, until in retiring if old not in exited]
            for i, proc in enumerate(procs):
                if proc is None and now >= due[i]:
                    try:
                        socks = listening[i] = listening[i] or _listen(options.host, options.port)
                    except ConfigError as e:  # the port taken meanwhile: tried again later
                        print(f"autoexp proxy: worker {i}: {e}", file=sys.stderr, flush=True)
                        due[i] = now + pauses[i]
                        continue
                    fds = [sock.fileno() for sock in socks]
                    proc = procs[i] = _start_worker(options.worker_argv(fds), fds)
                    started[i] = now
                    print(f"autoexp proxy: worker {i} started (pid {proc.pid})", flush=True)
                elif proc is not None and proc.poll() is not None:
                    if proc.returncode == CONFIG_ERROR:
                        print(f"autoexp proxy: worker {i} refused the config", file=sys.stderr)
                        code = CONFIG_ERROR
                        stopping.append(signal.SIGTERM)
                        break
                    why = f"exited with {_exit_code(proc.returncode)}"
                    print(
                        f"autoexp proxy: worker {i} (pid {proc.pid}) {why}; "
                        f"restarting in {pauses[i]:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                    # its sockets closed until it restarts, so new connections go to the
                    # other workers' meanwhile rather than wait for it (those waiting in
                    # its queue are reset, as they would be with the process's own socket)
                    _close(listening[i])
                    listening[i] = None
                    if now - started[i] > 60.0:  # it had been serving: no crash loop
                        pauses[i] = RESTART_PAUSE_S[0]
                    _fold(options, [proc])
                    procs[i], due[i] = None, now + pauses[i]
                    pauses[i] = min(2 * pauses[i], RESTART_PAUSE_S[1])
            time.sleep(0.05)
        draining = [*procs, *(old for old, _ in retiring)]
        _stop_all(draining, signal.SIGTERM, options.shutdown_timeout_s + 15.0)
    finally:
        _stop_all([*procs, *(old for old, _ in retiring)], signal.SIGKILL, 5.0)
        for socks in listening:
            _close(socks)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _start_worker(argv: list[str], fds: Sequence[int]) -> subprocess.Popen[bytes]:
    """A worker process, given the open ``fds``; on Linux it is sent SIGTERM if this
    supervisor dies (``PR_SET_PDEATHSIG``, set between fork and exec, and kept across
    exec), so a supervisor killed outright (SIGKILL, the OOM killer) leaves no worker
    serving on, orphaned, on a port and a config nobody manages: each drains and writes
    its log as at any stop."""
    if not sys.platform.startswith("linux"):
        return subprocess.Popen(argv, pass_fds=fds)
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    supervisor = os.getpid()

    def stop_with_supervisor() -> None:  # in the child, before exec
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != supervisor:  # it died before the line above: no worker
            os._exit(1)

    return subprocess.Popen(argv, pass_fds=fds, preexec_fn=stop_with_supervisor)


LISTEN_BACKLOG = 128  # as aiohttp's own sites (the kernel caps it at net.core.somaxconn)


# a listening address, and the upstream names that reach it beside its own: a wildcard
# takes the loopback address of its family, "localhost" (resolved to either) both
_SAME_AS = {
    "": ("127.0.0.1", "::1", "localhost"),
    "0.0.0.0": ("127.0.0.1", "localhost"),
    "::": ("::1", "localhost"),
    "127.0.0.1": ("localhost",),
    "::1": ("localhost",),
    "localhost": ("127.0.0.1", "::1"),
}


def check_not_itself(config: Config, path: str, host: str, port: int) -> None:
    """A :class:`ConfigError` if an upstream of ``config`` (the file ``path``) is the
    address the proxy listens on (``host``, ``port``): every request would come back to
    it, hop after hop, until its ``X-Forwarded-For`` passed 8 KiB and the client got a
    400 (about 800 hops, measured). Names are compared as written (``_SAME_AS``); none is
    looked up."""
    if config.proxy is None:
        return
    upstreams = [("proxy.upstream", config.proxy.upstream)]
    for route in config.routes:
        where = f"experiments.{route.experiment}.alternatives"
        upstreams += [(f"{where}[{i}].upstream", u) for i, u in enumerate(route.upstreams) if u]
    listen = host.strip("[]").lower()
    for where, url in upstreams:
        parts = urlsplit(url)
        if (parts.port or (443 if parts.scheme == "https" else 80)) != port:
            continue
        name = (parts.hostname or "").lower()
        if name == listen or name in _SAME_AS.get(listen, ()):
            raise ConfigError(
                f"{path}: {where}: {url} is this proxy's own address (--host {host} "
                f"--port {port}): every request would come back to it; give the "
                "application's address"
            )


def _cannot_listen(host: str, port: int, error: OSError) -> ConfigError:
    return ConfigError(f"--host {host} --port {port}: cannot listen there ({error})")


def _listen(host: str, port: int) -> list[socket.socket]:
    """One worker slot's listening sockets, one per address ``host`` resolves to (as
    aiohttp binds them: IPv6 ones IPv6 only), each with ``SO_REUSEPORT`` so that every
    slot binds the same port; :class:`ConfigError` if the port cannot be bound."""
    socks: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        _close(socks)
        raise _cannot_listen(host, port, e) from None
    return socks


def _close(socks: Sequence[socket.socket] | None) -> None:
    for sock in socks or ():
        sock.close()


READY_S = 120.0  # how long a reload waits for its new workers to serve (numba's first load)


class _NotReady(Exception):
    pass


def _reload(
    options: ServeOptions,
    stopping: list[int],
    listening: list[list[socket.socket] | None],
) -> list[subprocess.Popen[bytes]] | None:
    """SIGHUP: the config read again and, if it loads, a new set of workers started on
    it, each on its slot's sockets (``listening``, bound for a slot whose worker is
    waiting to restart); once every one of them serves the port, they are returned (the
    caller stops the old ones, which drain their requests and write their logs: the port
    is served throughout, and what waits in a slot's queue is the new worker's). A config
    that does not load, or a new worker that exits or does not serve within ``READY_S``:
    ``None``, said, and the old workers go on as they were."""
    from ..config import load_config

    try:
        check_shareable(load_config(options.config).store, options.workers)
    except ConfigError as e:
        print(f"autoexp proxy: reload refused: {e}; the workers keep their config", flush=True)
        return None
    fresh: list[subprocess.Popen[bytes]] = []
    pipes: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for i in range(options.workers):
            socks = listening[i] = listening[i] or _listen(options.host, options.port)
            fds = [sock.fileno() for sock in socks]
            r, w = os.pipe()
            try:
                argv = [*options.worker_argv(fds), "--ready-fd", str(w)]
                proc = _start_worker(argv, (*fds, w))
            except BaseException:
                os.close(r)
                raise
            finally:
                os.close(w)
            pipes[r] = proc
            fresh.append(proc)
        pids = ", ".join(str(p.pid) for p in fresh)
        print(f"autoexp proxy: reloading {options.config}: workers {pids} start", flush=True)
        deadline = time.monotonic() + READY_S
        waiting = set(pipes)
        while waiting:
            left = deadline - time.monotonic()
            if stopping:
                raise _NotReady("stopping")
            if left <= 0:
                raise _NotReady(f"new workers not serving within {READY_S:.0f} s")
            readable, _, _ = select.select(list(waiting), [], [], min(left, 0.2))
            for r in readable:
                if not os.read(r, 1):  # closed without a word: it exited
                    proc = pipes[r]
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=5)
                    code = _exit_code(proc.poll())
                    raise _NotReady(f"a new worker (pid {proc.pid}) exited with {code}")
                waiting.discard(r)
    except (_NotReady, OSError, ConfigError) as e:
        _stop_all(fresh, signal.SIGTERM, options.shutdown_timeout_s + 15.0)
        _stop_all(fresh, signal.SIGKILL, 5.0)
        _fold(options, fresh)
        if stopping:
            print("autoexp proxy: reload given up: stopping", flush=True)
        else:
            print(f"autoexp proxy: reload failed: {e}; the workers keep their config", flush=True)
        return None
    finally:
        for r in pipes:
            os.close(r)
    print(f"autoexp proxy: reloaded {options.config}: workers {pids} serve it", flush=True)
    return fresh


def _fold(options: ServeOptions, exited: Sequence[subprocess.Popen[bytes]]) -> None:
    """The counts of these workers, which exited, kept with the retired ones
    (:func:`autoexp.proxy.group.fold`), so the directory does not grow with reloads."""
    if options.workers_dir is not None and exited:
        try:
            group.fold(options.workers_dir, [p.pid for p in exited])
        except OSError as e:  # the metrics keep their files: summed all the same
            print(f"autoexp proxy: workers' figures not folded: {e}", file=sys.stderr)


def _exit_code(code: int | None) -> str:
    """A worker's exit code, with what it means when it is one of ours."""
    said = {CONFIG_ERROR: "its config refused", STORE_UNAVAILABLE: "its store not opened"}
    return f"{code} ({said[code]})" if code in said else str(code)


def _stop_all(procs: Sequence[subprocess.Popen[bytes] | None], sig: int, wait_s: float) -> None:
    """Send ``sig`` to the running workers and wait up to ``wait_s`` for them to exit."""
    running = [p for p in procs if p is not None and p.poll() is None]
    for p in running:
        p.send_signal(sig)
    deadline = time.monotonic() + wait_s
    for p in running:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
