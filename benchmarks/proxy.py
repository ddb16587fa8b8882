"""Speed of the proxy: autoexp in front of an application, against nginx and bare aiohttp.

Run from the repository root (``wrk``, ``nginx`` and, for the Redis rows,
``redis-server`` on the PATH; everything is started here on free loopback ports in a
temporary folder and stopped at the end; nothing touches port 6379)::

    python benchmarks/proxy.py [--quick] [--duration-s 10] [--rows direct,autoexp-sqlite]
                               [--py-spy DIR] [--out benchmarks/results/proxy.json]

The application (the upstream of every row) is one nginx answering ``200 ok`` to any path,
so it is never the bottleneck. Rows, all measured with wrk in this run:

* ``direct``: wrk straight at the upstream (the floor);
* ``nginx proxy``: nginx as a reverse proxy, a keep-alive pool to the upstream;
* ``bare aiohttp`` (``x2``: two processes on one port with SO_REUSEPORT): the same job as
  autoexp's forwarder minus autoexp, written here (:func:`bare_app`): pooled
  ``ClientSession``, method, path, headers and body forwarded, ``X-Forwarded-*`` set,
  status, headers and body streamed back; uvloop when installed;
* ``bare http1`` (``x2`` as above): the same proxy, but a request without a body is sent
  through autoexp's own client (:mod:`autoexp.proxy.http1`), as autoexp's forwarder
  sends it. ``bare aiohttp`` is the issue's reference for the targets; this row is the
  one that tells what the experiment costs over autoexp's own forwarding (``vs http1``);
* ``autoexp sqlite``, ``autoexp redis`` (``x2``: ``--workers 2``): ``autoexp proxy`` from
  its CLI, one live experiment (Thompson sampling in a 10% traffic cap, two alternatives:
  control and a parameter alternative on the same upstream) whose route matches the
  benchmarked path, rewards from the status;
* ``autoexp sqlite units``, ``autoexp redis units``: the same with sticky units, as a
  service whose requests carry a user id would run it: every request sends
  ``X-User-Id`` (the default unit header), one of 10,000 returning users drawn at
  random, so each user's first request reads and writes the store and the later ones
  are served from the assignments the engine holds;
* ``autoexp sqlite stub``: a reference, not a target: ``autoexp sqlite`` with every
  request given the experiment's first decision again (``benchmarks/parts_hook``, with
  ``BENCH_STUB_DECISIONS``): no draw, token, log record or refresh, and every reward but
  the first a duplicate the store refuses. Its distance to bare aiohttp is what the proxy
  costs apart from making, recording and rewarding decisions.

Each row: warm-up, then ``wrk -t2 -c64 --latency`` (throughput, p50 and p99 under load) and
``wrk -t1 -c1 --latency`` (p50 of one request at a time). Errors are wrk's non-2xx/3xx
responses and socket errors, plus the autoexp proxy's own failure counters from
``/_autoexp/metrics``. Targets (reported, never asserted): the autoexp proxy reaches >= 90%
of bare aiohttp's requests/s at the same worker count and adds <= 50 us p50 at c1 over it;
two workers give >= 1.7x one worker, with SQLite and with Redis.

CPU under load, read from ``/proc`` around the c64 run: ``cpu us/req``, the row's proxy
processes' per request; ``busy``, the share of the machine's CPUs busy (everything: wrk,
nginx, the store, the proxy); ``all us/req``, that busy time per request; for the Redis
rows, ``redis-server``'s per request. wrk, nginx and the proxies share the machine, so an
x2 row's ``x2/x1`` is about the machine's headroom (its busy share over the x1 row's)
times the x1 row's ``all us/req`` over its own: printed under the table for each x2 row.
The first factor is the machine's, the second says whether two workers spend more per
request than one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
HOOK = Path(__file__).resolve().parent / "parts_hook"  # loaded into a proxy to measure it

THROUGHPUT_VS_BARE = 0.90  # autoexp requests/s over bare aiohttp's, same worker count
ADDED_P50_US = 50.0  # autoexp p50 at c1 minus bare aiohttp's
SPEEDUP_X2 = 1.7  # two workers over one
ROWS = (
    "direct",
    "nginx proxy",
    "bare aiohttp",
    "bare aiohttp x2",
    "bare http1",
    "bare http1 x2",
    "autoexp sqlite",
    "autoexp sqlite x2",
    "autoexp redis",
    "autoexp redis x2",
    "autoexp sqlite units",
    "autoexp redis units",
    "autoexp sqlite stub",
)
UNITS = 10_000  # the units rows' returning users (X-User-Id), drawn uniformly per request
# wrk's request for the units rows: each a user of the pool, in the default unit header
UNITS_LUA = f"""\
request = function()
  return wrk.format(nil, nil, {{["X-User-Id"] = "user-" .. math.random(1, {UNITS})}})
end
"""
PATH = "/search?q=bench"  # the experiment's route matches it (path_prefix "/search")
SECRET = "p" * 32
PROBES = 20  # requests sent one by one before the load, each checked
CHUNK = 64 * 1024
# the forwarder's failure counters: any of them above 0 is an error of the proxy's
FAILURE_EVENTS = (
    "fail_open",
    "retried",
    "upstream_error",
    "upstream_timeout",
    "rewards_refused",
    "rewards_dropped",
    "reward_store_errors",
)


# --- wrk's output -----------------------------------------------------------------------

_TIME_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def time_us(text: str) -> float:
    """wrk's printed duration (``61.00us``, ``1.38ms``, ``2.00s``, ``1.00m``) in us."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if match is None:
        raise ValueError(f"time_us: not a wrk duration (got {text!r})")
    return float(match[1]) * _TIME_US[match[2]]


def parse_wrk(text: str) -> dict[str, Any]:
    """The figures of one ``wrk --latency`` run's output.

    Latencies in microseconds; ``errors`` is non-2xx/3xx responses plus socket errors
    (connect, read, write, timeout), each 0 when wrk printed no such line.
    """
    out: dict[str, Any] = {}
    requests = re.search(r"^\s*(\d+) requests in ([\d.]+\w+),", text, re.M)
    rps = re.search(r"^Requests/sec:\s*([\d.]+)", text, re.M)
    if requests is None or rps is None:
        raise ValueError(f"parse_wrk: no request count in wrk's output:\n{text}")
    out["requests"] = int(requests[1])
    out["seconds"] = time_us(requests[2]) / 1e6
    out["requests_per_s"] = float(rps[1])
    latency = re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", text, re.M)
    if latency is not None:
        out["latency_avg_us"] = time_us(latency[1])
        out["latency_max_us"] = time_us(latency[3])
    for pct, value in re.findall(r"^\s*(50|75|90|99)%\s+(\S+)", text, re.M):
        out[f"p{pct}_us"] = time_us(value)
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    names = ("connect", "read", "write", "timeout")
    out["socket_errors"] = {n: int(socket[i + 1]) if socket else 0 for i, n in enumerate(names)}
    status = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx_3xx"] = int(status[1]) if status else 0
    out["errors"] = out["non_2xx_3xx"] + sum(out["socket_errors"].values())
    return out


# --- nginx ------------------------------------------------------------------------------


def nginx_conf(prefix: Path, *, workers: int, servers: list[str], user: str | None) -> str:
    """A self-contained nginx config: pid, logs and temp paths under ``prefix``.

    ``user``: ``"name group"`` when the master runs as root (its workers would otherwise
    drop to nobody and lose the temp folder), ``None`` otherwise.
    """
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / 'temp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return "\n".join(
        [
            "daemon off;",
            *([f"user {user};"] if user else []),
            f"worker_processes {workers};",
            f"pid {prefix / 'nginx.pid'};",
            f"error_log {prefix / 'error.log'} warn;",
            "events { worker_connections 4096; multi_accept on; }",
            "http {",
            "    access_log off;",
            temp,
            "    keepalive_requests 1000000;",
            "    keepalive_timeout 75s;",
            *servers,
            "}",
            "",
        ]
    )


def upstream_server(port: int) -> str:
    """The application: ``200 ok`` for any method and path."""
    return (
        f"    server {{ listen 127.0.0.1:{port} reuseport backlog=4096; "
        'default_type text/plain; location / { return 200 "ok"; } }'
    )


def proxy_server(port: int, upstream_port: int) -> str:
    """nginx as a reverse proxy, HTTP/1.1 keep-alive pool to the upstream."""
    return "\n".join(
        [
            f"    upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}",
            f"    server {{ listen 127.0.0.1:{port} reuseport backlog=4096; location / {{",
            "        proxy_pass http://app;",
            "        proxy_http_version 1.1;",
            '        proxy_set_header Connection "";',
            "        proxy_set_header Host $host;",
            "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "        proxy_set_header X-Forwarded-Proto $scheme;",
            "    } }",
        ]
    )


def _nginx_user() -> str | None:
    if os.geteuid() != 0:
        return None  # nginx ignores `user` then: it runs as whoever started it
    import grp
    import pwd

    return f"{pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name}"


# --- the bare aiohttp proxy -------------------------------------------------------------


def bare_app(upstream: str, max_body_bytes: int = 10 * 1024 * 1024, client: str = "aiohttp") -> Any:
    """A pass-through proxy: autoexp's forwarder without the experiment (same session
    settings, header handling, streaming both ways and body cap); with ``client="http1"``
    a request without a body goes through autoexp's own client, as in the forwarder."""
    import aiohttp
    from aiohttp import web
    from multidict import CIMultiDict

    from autoexp.proxy.http1 import Pool
    from autoexp.proxy.upstream import HOP_BY_HOP

    key = web.AppKey("session", aiohttp.ClientSession)
    pools: list[Pool] = []

    async def session(app: web.Application) -> AsyncIterator[None]:
        app[key] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=1.0, sock_read=30.0),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        if client == "http1":
            pools.append(Pool(upstream, connect_timeout_s=1.0, read_timeout_s=30.0))
        yield
        await app[key].close()
        for pool in pools:
            pool.close()

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > max_body_bytes:
            return web.json_response({"error": "body: too large"}, status=413)
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        headers.popall("Host", None)
        peer = request.remote or ""
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host
        body = request.content.iter_chunked(CHUNK) if request.body_exists else None
        if pools and body is None and request.method not in ("HEAD", "CONNECT"):
            headers.popall("Content-Length", None)
            try:
                answer = await pools[0].request(
                    request.method, request.rel_url.raw_path_qs, list(headers.items())
                )
                try:
                    response = web.StreamResponse(status=answer.status, reason=answer.reason)
                    for k, v in answer.headers:
                        if k.lower() not in HOP_BY_HOP:
                            response.headers.add(k, v)
                    await response.prepare(request)
                    async for chunk in answer.chunks():
                        await response.write(chunk)
                    await response.write_eof()
                    return response
                finally:
                    answer.close()
            except TimeoutError:
                return web.json_response({"error": "upstream: timed out"}, status=504)
            except aiohttp.ClientError as e:
                return web.json_response({"error": f"upstream: {e!r}"}, status=502)
        try:
            async with request.app[key].request(
                request.method,
                upstream + request.rel_url.raw_path_qs,
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as up:
                response = web.StreamResponse(status=up.status, reason=up.reason)
                for k, v in up.headers.items():
                    if k.lower() not in HOP_BY_HOP:
                        response.headers.add(k, v)
                await response.prepare(request)
                async for chunk in up.content.iter_chunked(CHUNK):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except TimeoutError:
            return web.json_response({"error": "upstream: timed out"}, status=504)
        except aiohttp.ClientError as e:
            return web.json_response({"error": f"upstream: {e.__class__.__name__}"}, status=502)

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def serve_bare(port: int, upstream: str, loop: str, client: str = "aiohttp") -> None:
    """One bare proxy process on 127.0.0.1:``port`` (SO_REUSEPORT), no access log."""
    import asyncio

    from aiohttp import web

    event_loop: asyncio.AbstractEventLoop
    if loop == "uvloop":
        import uvloop

        event_loop = uvloop.new_event_loop()
    else:
        event_loop = asyncio.new_event_loop()
    web.run_app(
        bare_app(upstream, client=client),
        host="127.0.0.1",
        port=port,
        reuse_port=True,
        access_log=None,
        print=None,
        loop=event_loop,
    )


# --- processes --------------------------------------------------------------------------


@dataclass
class Service:
    """A server process started here, in a session of its own, and its workers."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """SIGTERM to the leader (which stops its workers), SIGKILL after 15 s; then any
        worker of its group still alive."""
        children = self.pids()[1:]
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pid in children:
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[2]) == self.proc.pid:  # still in our group: ours
                    os.kill(pid, signal.SIGKILL)

    def pids(self) -> list[int]:
        """The process and its children (workers)."""
        out = [self.proc.pid]
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                out += [int(p) for p in task.read_text().split()]
        return out

    def loaded(self, library: str) -> bool:
        """Whether a shared object of ``library`` is mapped in the process or a child."""
        for pid in self.pids():
            with contextlib.suppress(OSError):
                if f"/{library}/" in Path(f"/proc/{pid}/maps").read_text():
                    return True
        return False


def stat_cpu_s(stat: Path) -> float:
    """CPU seconds (user + system) in a ``/proc`` ``stat`` file (a process's or a
    thread's); 0 if it is gone or unreadable."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # fields 14, 15
    return 0.0


def machine_ticks() -> tuple[int, int]:
    """Clock ticks of all the machine's CPUs since boot, ``(busy, all)`` (``/proc/stat``'s
    first line: idle and iowait are not busy; guest time is already in user)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def cpu_s(services: list[Service]) -> float:
    """CPU seconds (user + system) the services' processes and their workers have used."""
    return sum(stat_cpu_s(Path(f"/proc/{pid}/stat")) for x in services for pid in x.pids())


def listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:``port`` (one per process with SO_REUSEPORT)."""
    local = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError):
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
        return sum(1 for x in lines if x.split()[1] == local and x.split()[3] == "0A")
    return 0


def start(name: str, argv: list[str], folder: Path, env: dict[str, str] | None = None) -> Service:
    log = folder / f"{name.replace(' ', '-')}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only us: we stop them, in order
        )
    return Service(name, proc, log)


def wait_ready(services: list[Service], url: str, sockets: int = 1, timeout_s: float = 60) -> None:
    """Until ``url`` answers 200 and ``sockets`` listen on its port (every worker bound);
    for ``autoexp proxy``, whose supervisor binds the sockets before its workers start,
    until that many workers said they serve them."""
    port = int(url.split(":")[2].split("/")[0])
    autoexp = "/_autoexp/" in url

    def serving() -> int:
        if not autoexp:
            return listeners(port)
        return sum(x.log.read_text(errors="replace").count("======== Running on") for x in services)

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for service in services:
            if service.proc.poll() is not None:
                tail = service.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{service.name} exited ({service.proc.returncode}):\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200 and serving() >= sockets:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    names = ", ".join(x.name for x in services)
    raise RuntimeError(f"{names}: not ready at {url} ({sockets} sockets) in {timeout_s:g} s")


def start_nginx(name: str, folder: Path, workers: int, servers: list[str]) -> Service:
    prefix = folder / name.replace(" ", "-")
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "temp" / kind).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, workers=workers, servers=servers, user=_nginx_user()))
    argv = ["nginx", "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log")]
    return start(name, argv, folder)


def start_upstream(stack: contextlib.ExitStack, folder: Path) -> int:
    """The application behind every row (an nginx answering ``200 ok``, a worker per core),
    stopped when ``stack`` closes; its port, once every worker listens."""
    from tests.autoexp.conftest import free_port

    port = free_port()
    cores = os.cpu_count() or 1
    upstream = start_nginx("upstream", folder, cores, [upstream_server(port)])
    stack.callback(upstream.stop)
    wait_ready([upstream], f"http://127.0.0.1:{port}/", sockets=cores)
    return port


def autoexp_config(upstream_port: int, store: str) -> str:
    return f"""\
store = "{store}"
secret = "{SECRET}"

[proxy]
upstream = "http://127.0.0.1:{upstream_port}"

[experiments.bench]
alternatives = ["control", {{ name = "deeper", params = {{ depth = 3 }} }}]
policy = {{ name = "thompson-beta" }}
safety = {{ explore_share = 0.1 }}
test = {{ name = "off-policy-cs", n_expected = 10_000 }}
reward = {{ low = 0.0, high = 1.0, join_window_s = 86_400, default = 0.0 }}
route = {{ path_prefix = "/search", method = "GET", reward_from = "status" }}
"""


def has_workers_option() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "autoexp.cli", "proxy", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    return "--workers" in done.stdout


@functools.cache
def sums_workers() -> bool:
    """Whether a scrape of the proxy answers for all its workers (``autoexp.proxy.group``,
    since ``03f7ef6``) rather than for the one it reached."""
    done = subprocess.run(
        [sys.executable, "-c", "import autoexp.proxy.group"],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
    )
    return done.returncode == 0


def metrics(port: int, workers: int) -> tuple[dict[str, float], int]:
    """The forwarder's event counters (``autoexp_proxy_events_total``), summed over the
    workers, and how many workers they are of.

    A scrape reaches one worker (SO_REUSEPORT picks by connection). Since the workers
    share their counts, it answers for all of them: one scrape. Before, each answered
    for its own, so with several workers it scrapes on fresh connections, after the load,
    until it saw as many different sets of counters as workers (or gave up after 12).
    """
    if workers > 1 and sums_workers():
        return _events(port), workers
    seen: dict[tuple[tuple[str, float], ...], None] = {}
    for _ in range(1 if workers == 1 else 12):
        seen[tuple(sorted(_events(port).items()))] = None
        if len(seen) >= workers:
            break
    total: Counter[str] = Counter()
    for counters in seen:
        total.update(dict(counters))
    return dict(total), len(seen)


def _events(port: int) -> dict[str, float]:
    """``autoexp_proxy_events_total`` of one scrape, on a fresh connection."""
    url = f"http://127.0.0.1:{port}/_autoexp/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    found = re.findall(r'^autoexp_proxy_events_total\{event="(\w+)"\} (\S+)$', text, re.M)
    return {event: float(value) for event, value in found}


def probe(port: int, *, decided: bool, n: int = PROBES) -> list[str]:
    """What is wrong with ``n`` requests through the row (an empty list: nothing)."""
    problems = []
    for _ in range(n):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                body = answer.read()
                token = answer.headers.get("X-Autoexp-Decision")
                if answer.status != 200 or body != b"ok":
                    problems.append(f"answer {answer.status} {body[:40]!r}")
                elif decided and not token:
                    problems.append("no X-Autoexp-Decision: the experiment did not decide")
        except (OSError, urllib.error.URLError) as e:
            problems.append(repr(e))
    return sorted(set(problems))


# --- measuring --------------------------------------------------------------------------


def wrk(
    url: str, *, connections: int, threads: int, duration_s: float, script: Path | None = None
) -> dict[str, Any]:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", "--latency", url]
    if script is not None:
        argv[-1:-1] = ["-s", str(script)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr}")
    return parse_wrk(done.stdout)


@dataclass
class Setting:
    folder: Path
    upstream_port: int
    duration_s: float
    warmup_s: float
    connections: int
    threads: int
    bare_loop: str
    redis_url: str | None
    py_spy: Path | None
    redis_pid: int | None = None  # the Redis rows' store: its CPU is read too


@contextlib.contextmanager
def serving(row: str, s: Setting) -> Iterator[tuple[int, list[Service], dict[str, Any]]]:
    """Start the row's proxy; yield its port, its processes and what describes it."""
    from tests.autoexp.conftest import free_port

    if row == "direct":
        yield s.upstream_port, [], {"workers": None, "loop": "-"}
        return
    port = free_port()
    workers = 2 if row.endswith("x2") else 1
    services: list[Service] = []
    info: dict[str, Any] = {"workers": workers}
    try:
        if row == "nginx proxy":
            workers = info["workers"] = os.cpu_count() or 1
            services.append(
                start_nginx(row, s.folder, workers, [proxy_server(port, s.upstream_port)])
            )
            info["loop"] = "-"
            ready = f"http://127.0.0.1:{port}/"
        elif row.startswith("bare"):
            client = row.split()[1]
            code = (
                "from benchmarks.proxy import serve_bare; "
                f"serve_bare({port}, 'http://127.0.0.1:{s.upstream_port}', {s.bare_loop!r}, "
                f"{client!r})"
            )
            for i in range(workers):
                services.append(start(f"{row} {i}", [sys.executable, "-c", code], s.folder))
            info["loop"] = s.bare_loop
            ready = f"http://127.0.0.1:{port}/"
        else:
            store = row.split()[1]
            tag = row.replace(" ", "-")
            url = f"sqlite:///{s.folder / tag}.db"
            if store == "redis":
                assert s.redis_url is not None
                db = workers + (2 if row.endswith(" units") else 0)  # one database per row
                url = f"{s.redis_url.rsplit('/', 1)[0]}/{db}"
            config = s.folder / f"{tag}.toml"
            config.write_text(autoexp_config(s.upstream_port, url))
            env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOEXP_")}
            env |= {"AUTOEXP_STORE": url, "AUTOEXP_SECRET": SECRET}
            if row.endswith(" stub"):
                path = [str(HOOK), *filter(None, [env.get("PYTHONPATH")])]
                env |= {"PYTHONPATH": os.pathsep.join(path), "BENCH_STUB_DECISIONS": "1"}
            argv = [sys.executable, "-m", "autoexp.cli", "proxy", "--config", str(config)]
            argv += ["--host", "127.0.0.1", "--port", str(port), "--shutdown-timeout-s", "2"]
            if workers > 1:
                argv += ["--workers", str(workers)]
            services.append(start(row, argv, s.folder, env))
            ready = f"http://127.0.0.1:{port}/_autoexp/readyz"
        wait_ready(services, ready, sockets=workers)
        if row.startswith("autoexp"):
            info["loop"] = "uvloop" if any(x.loaded("uvloop") for x in services) else "asyncio"
        yield port, services, info
    finally:
        for service in reversed(services):
            service.stop()


def profile(
    services: list[Service], folder: Path, seconds: float
) -> tuple[list[Path], list[subprocess.Popen[bytes]]]:
    """py-spy recordings of the row's workers (a supervisor's children, else the process
    itself) for ``seconds``: one raw file per process, started now, waited for."""
    pids = [pid for x in services for pid in x.pids()[1:] or x.pids()]
    spies = []
    for pid in pids:
        argv = ["py-spy", "record", "--pid", str(pid), "--threads", "--nonblocking"]
        argv += ["--duration", str(max(1, round(seconds))), "--rate", "200"]
        argv += ["--format", "raw", "--output", str(folder / f"{pid}.txt")]
        spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return [folder / f"{pid}.txt" for pid in pids], spies


def top_frames(raws: list[Path], n: int = 12) -> dict[str, Any]:
    """Where the samples of py-spy's raw outputs (``--threads``) went, summed over files.

    Per thread kind (``MainThread``: the event loop; ``other``: the offload and reward
    threads, the engine's writer): its share of all samples, and its ``n`` leaf lines
    with the most samples: (line, share of the kind's samples on the line itself, share
    with its function anywhere on the stack).
    """
    own: dict[str, Counter[str]] = {"MainThread": Counter(), "other": Counter()}
    total: dict[str, Counter[str]] = {"MainThread": Counter(), "other": Counter()}
    lines = [x for raw in raws if raw.exists() for x in raw.read_text().splitlines()]
    for line in lines:
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if frames and frames[0].startswith("process "):  # recorded with --subprocesses
            frames = frames[1:]
        if not count.isdigit() or len(frames) < 2 or not frames[0].startswith("thread "):
            continue
        kind = "MainThread" if frames[0].endswith("MainThread") else "other"
        own[kind][frames[-1]] += int(count)
        for function in {re.sub(r":\d+\)$", ")", f) for f in frames[1:]}:
            total[kind][function] += int(count)
    samples = sum(sum(c.values()) for c in own.values())
    out: dict[str, Any] = {"samples": samples}
    for kind, counts in own.items():
        n_kind = sum(counts.values()) or 1
        out[kind] = {
            "share": sum(counts.values()) / (samples or 1),
            "top": [
                (f, c / n_kind, total[kind][re.sub(r":\d+\)$", ")", f)] / n_kind)
                for f, c in counts.most_common(n)
            ],
        }
    return out


def measure(row: str, s: Setting, progress: Any) -> dict[str, Any]:
    """One pass of one row: warm-up, c64, c1, then what went wrong."""
    with serving(row, s) as (port, services, info):
        url = f"http://127.0.0.1:{port}{PATH}"
        autoexp = row.startswith("autoexp")
        problems = probe(port, decided=autoexp)
        script = None
        if row.endswith(" units"):
            script = s.folder / "units.lua"
            script.write_text(UNITS_LUA)
        load_options: dict[str, Any] = {
            "connections": s.connections,
            "threads": s.threads,
            "script": script,
        }
        warm = wrk(url, duration_s=s.warmup_s, **load_options)
        progress(f"{row}: c{s.connections}")
        raws: list[Path] = []
        spies: list[subprocess.Popen[bytes]] = []
        if s.py_spy is not None and autoexp:
            folder = s.py_spy / row.replace(" ", "-")
            folder.mkdir(parents=True, exist_ok=True)
            raws, spies = profile(services, folder, s.duration_s)
        store = Path(f"/proc/{s.redis_pid}/stat") if "redis" in row and s.redis_pid else None
        store_before = None if store is None else stat_cpu_s(store)
        cpu_before, machine_before = cpu_s(services), machine_ticks()
        load = wrk(url, duration_s=s.duration_s, **load_options)
        cpu, machine = cpu_s(services) - cpu_before, machine_ticks()
        for spy in spies:
            spy.wait(timeout=60)
        progress(f"{row}: c1")
        one = wrk(url, connections=1, threads=1, duration_s=s.duration_s, script=script)
        out = info | {"warmup": warm, "load": load, "c1": one, "probe_problems": problems}
        if services and load["requests"]:  # the proxy's CPU per request under load
            out["cpu_us_per_request"] = cpu / load["requests"] * 1e6
        busy, ticks = machine[0] - machine_before[0], machine[1] - machine_before[1]
        if ticks and load["requests"]:  # everything's: wrk, nginx, the store, the proxy
            out["machine_busy"] = busy / ticks
            tick_s = 1 / os.sysconf("SC_CLK_TCK")
            out["machine_us_per_request"] = busy * tick_s / load["requests"] * 1e6
        if store is not None and store_before is not None and load["requests"]:
            out["store_cpu_us_per_request"] = (
                (stat_cpu_s(store) - store_before) / load["requests"] * 1e6
            )
        if raws:
            out["py_spy"] = top_frames(raws) | {"files": [str(x) for x in raws]}
        if autoexp:
            time.sleep(0.5)  # the forwarder applies its queued rewards every 50 ms
            out["events"], out["workers_scraped"] = metrics(port, info["workers"])
            # every request took the route: each should have earned one reward
            out["routed_requests"] = PROBES + warm["requests"] + load["requests"]
            out["routed_requests"] += one["requests"]
            out["log_bytes"] = sum(x.log.stat().st_size for x in services)
        return out


def summarise(row: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A row's figures: medians over the repeats; errors and counters summed."""

    def median(part: str, key: str) -> float | None:
        values = [r[part][key] for r in runs if key in r[part]]
        return statistics.median(values) if values else None

    out = {
        "row": row,
        "available": True,
        "workers": runs[0]["workers"],
        "loop": runs[0]["loop"],
        "requests_per_s": median("load", "requests_per_s"),
        "p50_us": median("load", "p50_us"),
        "p99_us": median("load", "p99_us"),
        "c1_p50_us": median("c1", "p50_us"),
        "c1_p99_us": median("c1", "p99_us"),
        "cpu_us_per_request": _median_of([r.get("cpu_us_per_request") for r in runs]),
        "machine_busy": _median_of([r.get("machine_busy") for r in runs]),
        "machine_us_per_request": _median_of([r.get("machine_us_per_request") for r in runs]),
        "store_cpu_us_per_request": _median_of([r.get("store_cpu_us_per_request") for r in runs]),
        "errors": sum(r[k]["errors"] for r in runs for k in ("warmup", "load", "c1")),
        "probe_problems": sorted({p for r in runs for p in r["probe_problems"]}),
        "proxy_failures": None,
        "rewarded_share": None,
    }
    if "events" in runs[0]:
        events: Counter[str] = Counter()
        for r in runs:
            events.update(r["events"])
        out["events"] = dict(events)
        out["proxy_failures"] = int(sum(events[e] for e in FAILURE_EVENTS))
        if all(r["workers_scraped"] == r["workers"] for r in runs):  # else a part of them
            out["rewarded_share"] = events["rewards"] / sum(r["routed_requests"] for r in runs)
    return out | {"runs": runs}


def _median_of(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def compare(rows: dict[str, dict[str, Any]]) -> None:
    """Add each row's comparisons: to direct, to bare aiohttp, two workers to one."""
    direct = rows.get("direct", {}).get("c1_p50_us")
    for name, r in rows.items():
        if not r["available"]:
            continue
        r["c1_added_us"] = None if direct is None else r["c1_p50_us"] - direct
        r["vs_bare"] = r["c1_added_vs_bare_us"] = r["x2_over_x1"] = r["cpu_vs_bare"] = None
        r["vs_http1"] = r["x2_headroom"] = r["x2_cpu_ratio"] = None
        if name.startswith("autoexp"):
            x2 = " x2" if name.endswith("x2") else ""
            http1 = rows.get("bare http1" + x2)
            if http1 and http1["available"]:  # the experiment's cost over the same client
                r["vs_http1"] = r["requests_per_s"] / http1["requests_per_s"]
            bare = rows.get("bare aiohttp" + x2)
            if bare and bare["available"]:
                r["vs_bare"] = r["requests_per_s"] / bare["requests_per_s"]
                r["c1_added_vs_bare_us"] = r["c1_p50_us"] - bare["c1_p50_us"]
                if r["cpu_us_per_request"] and bare["cpu_us_per_request"]:
                    # the share of bare's rate a proxy bound by its CPU would keep
                    r["cpu_vs_bare"] = bare["cpu_us_per_request"] / r["cpu_us_per_request"]
        one = rows.get(name.removesuffix(" x2"))
        if name.endswith(" x2") and one and one["available"]:
            r["x2_over_x1"] = r["requests_per_s"] / one["requests_per_s"]
            # requests/s = busy share x cores / machine CPU per request, so x2/x1 is the
            # product of the machine's headroom (x2's busy share over x1's) and how much
            # less CPU a request takes with two workers: workers that scale keep the
            # second near 1, and the first is the machine's, not the proxy's
            if r.get("machine_busy") and one.get("machine_busy"):
                r["x2_headroom"] = r["machine_busy"] / one["machine_busy"]
            if r.get("machine_us_per_request") and one.get("machine_us_per_request"):
                r["x2_cpu_ratio"] = one["machine_us_per_request"] / r["machine_us_per_request"]


def checks(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def check(target: str, value: float | None, ok: bool) -> None:
        status = "n/a" if value is None else ("PASS" if ok else "FAIL")
        out.append({"target": target, "value": value, "status": status})

    autoexp = [n for n in ROWS if n.startswith("autoexp") and not n.endswith(" stub")]
    for name in autoexp:
        value = rows.get(name, {}).get("vs_bare")
        check(
            f"{name}: requests/s >= {THROUGHPUT_VS_BARE:.0%} of bare aiohttp's (same workers)",
            value,
            value is not None and value >= THROUGHPUT_VS_BARE,
        )
    for name in autoexp:
        value = rows.get(name, {}).get("c1_added_vs_bare_us")
        check(
            f"{name}: p50 at c1 <= bare aiohttp's + {ADDED_P50_US:g} us (us added)",
            value,
            value is not None and value <= ADDED_P50_US,
        )
    for name in ("autoexp sqlite x2", "autoexp redis x2"):
        value = rows.get(name, {}).get("x2_over_x1")
        check(
            f"{name}: >= {SPEEDUP_X2:g}x one worker",
            value,
            value is not None and value >= SPEEDUP_X2,
        )
    measured = [r for r in rows.values() if r["available"]]
    failed = sum(r["errors"] + len(r["probe_problems"]) for r in measured)
    check(
        "every request answered 200 ok: wrk's errors and failed probes (count)",
        failed if measured else None,
        failed == 0,
    )
    return out


def _us(value: float | None, scale: float = 1.0, digits: int = 0) -> str:
    return "-" if value is None else f"{value / scale:,.{digits}f}"


def table(rows: dict[str, dict[str, Any]], connections: int) -> str:
    head = [
        "row",
        "workers",
        "loop",
        f"req/s c{connections}",
        "p50 ms",
        "p99 ms",
        "c1 p50 us",
        "+direct us",
        "+bare us",
        "vs bare",
        "vs http1",
        "x2/x1",
        "cpu us/req",
        "cpu vs bare",
        "busy",
        "all us/req",
        "errors",
        "proxy fails",
        "rewards/req",
    ]
    body = []
    for name, r in rows.items():
        if not r["available"]:
            body.append([name, "-", "-", "not available", *["-"] * (len(head) - 4)])
            continue
        errors = f"{r['errors']}" + (" + probe" if r["probe_problems"] else "")
        body.append(
            [
                name,
                "-" if r["workers"] is None else str(r["workers"]),
                r["loop"],
                _us(r["requests_per_s"]),
                _us(r["p50_us"], 1e3, 2),
                _us(r["p99_us"], 1e3, 2),
                _us(r["c1_p50_us"]),
                _us(r["c1_added_us"]),
                _us(r["c1_added_vs_bare_us"]),
                "-" if r["vs_bare"] is None else f"{r['vs_bare']:.0%}",
                "-" if r["vs_http1"] is None else f"{r['vs_http1']:.0%}",
                "-" if r["x2_over_x1"] is None else f"{r['x2_over_x1']:.2f}x",
                _us(r["cpu_us_per_request"]),
                "-" if r["cpu_vs_bare"] is None else f"{r['cpu_vs_bare']:.0%}",
                "-" if r.get("machine_busy") is None else f"{r['machine_busy']:.0%}",
                _us(r.get("machine_us_per_request")),
                errors,
                _us(r["proxy_failures"]),
                "-" if r["rewarded_share"] is None else f"{r['rewarded_share']:.1%}",
            ]
        )
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in (0, 2) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), rule, *(line(b) for b in body)])


def scaling(rows: dict[str, dict[str, Any]]) -> list[str]:
    """What sets each x2 row's ``x2/x1`` (see :func:`compare`), and the Redis rows' store
    CPU: one line each."""
    out = []
    for name, r in rows.items():
        if r.get("x2_headroom") is not None and r.get("x2_cpu_ratio") is not None:
            one = rows[name.removesuffix(" x2")]
            out.append(
                f"{name}: x2/x1 {r['x2_over_x1']:.2f}x, about the machine's headroom "
                f"{r['x2_headroom']:.2f} (busy {r['machine_busy']:.0%} with two workers, "
                f"{one['machine_busy']:.0%} with one) x {r['x2_cpu_ratio']:.2f} (all "
                "processes' CPU per request with one worker over with two)"
            )
        if r.get("store_cpu_us_per_request") is not None:
            out.append(f"{name}: redis-server {r['store_cpu_us_per_request']:.0f} us CPU/req")
    return out


def reference_us() -> float:
    """Microseconds of ``sum(range(1000))`` (best of 5 x 2,000): the machine's speed now."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(2_000):
            sum(range(1000))
        best = min(best, (time.perf_counter() - started) / 2_000 * 1e6)
    return best


def _row_names(text: str) -> list[str]:
    names = [n.strip().replace("-", " ") for n in text.split(",") if n.strip()]
    for n in names:
        if n not in ROWS:
            raise SystemExit(f"--rows: unknown row {n!r}; one of {', '.join(ROWS)}")
    return [n for n in ROWS if n in names]


def main(argv: list[str] | None = None) -> int:
    from benchmarks.policies import (
        bench_parser,
        clock,
        print_checks,
        report_head,
        source,
        write_report,
    )
    from tests.autoexp.conftest import RedisServer

    parser = bench_parser(__doc__, "proxy", "2 s per wrk run, 1 s warm-up (a smoke run)")
    parser.set_defaults(repeats=1)
    parser.add_argument("--duration-s", type=float, help="seconds per wrk run (10; quick: 2)")
    parser.add_argument("--warmup-s", type=float, help="seconds of warm-up per row (3; quick: 1)")
    parser.add_argument("--connections", type=int, default=64, help="wrk's load (64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads under load (2)")
    parser.add_argument("--rows", type=_row_names, default=list(ROWS), help="comma-separated")
    parser.add_argument(
        "--bare-loop",
        choices=("uvloop", "asyncio"),
        help="event loop of the bare aiohttp proxy (uvloop when installed)",
    )
    parser.add_argument(
        "--py-spy", type=Path, metavar="DIR", help="record the autoexp rows with py-spy into DIR"
    )
    args = parser.parse_args(argv)
    duration = args.duration_s or (2.0 if args.quick else 10.0)
    warmup = args.warmup_s or (1.0 if args.quick else 3.0)
    try:
        import uvloop  # noqa: F401

        bare_loop = args.bare_loop or "uvloop"
    except ImportError:
        bare_loop = args.bare_loop or "asyncio"
    if args.py_spy is not None and shutil.which("py-spy") is None:
        parser.error("--py-spy: py-spy is not installed (pip install py-spy)")
    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers as Ctrl-C does
    progress = clock()
    started = time.perf_counter()
    load_start = os.getloadavg()
    reference = [reference_us()]
    autoexp_workers = has_workers_option()
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in args.rows}
    unavailable: dict[str, str] = {}
    if not autoexp_workers:
        for n in args.rows:
            if n.startswith("autoexp") and n.endswith("x2"):
                unavailable[n] = "autoexp proxy has no --workers option"
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="autoexp-proxy-")))
        redis_url, redis_pid = None, None
        if any("redis" in n for n in args.rows):
            try:
                redis = RedisServer(folder)
                stack.callback(redis.stop)
                redis_url = redis.url
                redis_pid = None if redis.proc is None else redis.proc.pid
            except RuntimeError as e:
                unavailable |= {n: str(e) for n in args.rows if "redis" in n}
        upstream_port = start_upstream(stack, folder)
        setting = Setting(
            folder=folder,
            upstream_port=upstream_port,
            duration_s=duration,
            warmup_s=warmup,
            connections=args.connections,
            threads=args.threads,
            bare_loop=bare_loop,
            redis_url=redis_url,
            py_spy=args.py_spy,
            redis_pid=redis_pid,
        )
        for repeat in range(args.repeats):  # interleaved: every row once, then again
            for name in args.rows:
                if name not in unavailable:
                    progress(f"{name} (run {repeat + 1} of {args.repeats})")
                    runs[name].append(measure(name, setting, progress))
    rows = {
        n: {"row": n, "available": False, "note": unavailable[n]}
        if n in unavailable
        else summarise(n, runs[n])
        for n in args.rows
    }
    compare(rows)
    reference.append(reference_us())
    print(table(rows, args.connections))
    print(
        f"\nreference: sum(range(1000)) {reference[0]:.1f} us at start, {reference[1]:.1f} us "
        "at end (the machine's speed in this run; compare runs through it)"
    )
    for line in scaling(rows):
        print(line)
    for name, r in rows.items():
        if not r["available"]:
            print(f"{name}: not available: {r['note']}")
        elif r["probe_problems"]:
            print(f"{name}: probe: {'; '.join(r['probe_problems'])}")
        elif r["proxy_failures"]:
            print(f"{name}: proxy counters: {r['events']}")
    for name, r in rows.items():
        for n, run in enumerate(r.get("runs", [])):
            if "py_spy" not in run:
                continue
            found = run["py_spy"]
            for kind in ("MainThread", "other"):
                print(
                    f"\npy-spy {name} (run {n + 1}), {kind}: {found[kind]['share']:.0%} of "
                    f"{found['samples']} samples; own, function on the stack, line"
                )
                for line, own, total in found[kind]["top"]:
                    print(f"  {own:6.1%} {total:6.1%}  {line}")
    verdicts = checks(rows)
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()
    print_checks(verdicts, load_start, load_end, elapsed)
    write_report(
        args.out,
        {
            **report_head("proxy", load_start, load_end),
            "source": source() | {"autoexp_dirty": _dirty("autoexp")},
            "config": {
                "duration_s": duration,
                "warmup_s": warmup,
                "connections": args.connections,
                "threads": args.threads,
                "repeats": args.repeats,
                "quick": args.quick,
                "path": PATH,
                "units": UNITS,
                "upstream_workers": os.cpu_count(),
                "bare_loop": bare_loop,
                "autoexp_workers_option": autoexp_workers,
                "wrk": _version(["wrk", "-v"]),
                "nginx": _version(["nginx", "-v"]),
                "autoexp_config": autoexp_config(0, "STORE"),
            },
            "reference_us": reference,
            "rows": list(rows.values()),
            "targets": verdicts,
            "elapsed_s": elapsed,
        },
    )
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _dirty(folder: str) -> bool | None:
    """Whether ``folder`` had uncommitted edits (the proxy benchmarked is the working tree)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        argv = ["git", "status", "--porcelain", "--", folder]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=10)
        return bool(done.stdout.strip()) if done.returncode == 0 else None
    return None


def _version(argv: list[str]) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (done.stdout + done.stderr).strip().splitlines()[0]
    return None


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # every server was stopped on the way out
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
