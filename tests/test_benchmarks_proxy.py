"""The pure parts of ``benchmarks/proxy.py``: reading wrk's output, the nginx configs, the
autoexp config, the py-spy summary, the CPU reading and the comparisons. The benchmark
itself (servers, wrk) never runs here."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from autoexp.config import parse_config
from benchmarks.proxy import (
    PATH,
    ROWS,
    Service,
    autoexp_config,
    checks,
    compare,
    cpu_s,
    machine_ticks,
    metrics,
    nginx_conf,
    parse_wrk,
    proxy_server,
    scaling,
    table,
    time_us,
    top_frames,
    upstream_server,
)

# wrk 4.1.0 against an nginx answering 503, 2000 connections, --timeout 1: every line
# parse_wrk reads, the error lines included.
WRK_ERRORS = """\
Running 2s test @ http://127.0.0.1:18555/x
  2 threads and 2000 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    33.28ms   35.74ms 994.64ms   96.28%
    Req/Sec    24.48k    11.84k   47.26k    62.16%
  Latency Distribution
     50%   25.82ms
     75%   40.95ms
     90%   54.36ms
     99%  107.39ms
  93756 requests in 2.10s, 15.92MB read
  Socket errors: connect 0, read 0, write 0, timeout 42
  Non-2xx or 3xx responses: 93756
Requests/sec:  44680.20
Transfer/sec:      7.58MB
"""

# wrk 4.1.0, one connection, no errors: wrk prints no error lines at all then.
WRK_CLEAN = """\
Running 1s test @ http://127.0.0.1:18555/search?q=1
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    69.38us  140.28us   3.72ms   99.34%
    Req/Sec    16.35k     2.68k   24.08k    90.91%
  Latency Distribution
     50%   61.00us
     75%   66.00us
     90%   72.00us
     99%  129.00us
  17867 requests in 1.10s, 2.54MB read
Requests/sec:  16253.00
Transfer/sec:      2.31MB
"""


def test_wrk_durations_in_microseconds() -> None:
    assert time_us("61.00us") == 61.0
    assert time_us("1.38ms") == 1380.0
    assert time_us("2.10s") == 2_100_000.0
    assert time_us("1.00m") == 60_000_000.0
    with pytest.raises(ValueError, match="not a wrk duration"):
        time_us("12 ms")


def test_parse_wrk_reads_rate_percentiles_and_errors() -> None:
    out = parse_wrk(WRK_ERRORS)
    assert out["requests"] == 93756
    assert out["seconds"] == pytest.approx(2.10)
    assert out["requests_per_s"] == 44680.20
    assert out["latency_avg_us"] == pytest.approx(33_280.0)
    assert out["latency_max_us"] == pytest.approx(994_640.0)
    assert out["p50_us"] == pytest.approx(25_820.0)
    assert out["p75_us"] == pytest.approx(40_950.0)
    assert out["p90_us"] == pytest.approx(54_360.0)
    assert out["p99_us"] == pytest.approx(107_390.0)
    assert out["socket_errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 42}
    assert out["non_2xx_3xx"] == 93756
    assert out["errors"] == 93756 + 42


def test_parse_wrk_without_error_lines_counts_none() -> None:
    out = parse_wrk(WRK_CLEAN)
    assert out["requests"] == 17867
    assert out["requests_per_s"] == 16253.00
    assert out["p50_us"] == 61.0
    assert out["p99_us"] == 129.0
    assert out["socket_errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    assert out["non_2xx_3xx"] == 0
    assert out["errors"] == 0


def test_parse_wrk_refuses_output_without_a_count() -> None:
    with pytest.raises(ValueError, match="no request count"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_nginx_conf_keeps_everything_under_its_prefix(tmp_path: Path) -> None:
    conf = nginx_conf(tmp_path, workers=2, servers=[upstream_server(8080)], user=None)
    lines = [x.strip() for x in conf.splitlines()]
    assert "daemon off;" in lines
    assert "worker_processes 2;" in lines
    assert f"pid {tmp_path / 'nginx.pid'};" in lines
    assert f"error_log {tmp_path / 'error.log'} warn;" in lines
    assert "access_log off;" in lines
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert f"{kind}_temp_path {tmp_path / 'temp' / kind};" in lines
    assert not any(x.startswith("user ") for x in lines)  # not root: nginx ignores it
    assert conf.count("{") == conf.count("}")
    assert "listen 127.0.0.1:8080 reuseport" in conf
    assert 'return 200 "ok";' in conf
    # every absolute path nginx opens is inside the prefix (none of /var/log, /run, ...)
    words = [w.rstrip(";") for x in lines for w in x.split()]
    paths = [w for w in words if w.startswith("/") and w != "/"]  # not `location /`
    assert paths and all(p.startswith(str(tmp_path)) for p in paths)


def test_nginx_conf_as_root_names_the_user(tmp_path: Path) -> None:
    conf = nginx_conf(tmp_path, workers=1, servers=[], user="root root")
    assert "user root root;" in conf.splitlines()


def test_nginx_reverse_proxy_keeps_connections_to_the_upstream() -> None:
    conf = proxy_server(9000, 8080)
    assert "server 127.0.0.1:8080; keepalive" in conf
    assert "listen 127.0.0.1:9000" in conf
    assert "proxy_http_version 1.1;" in conf
    assert 'proxy_set_header Connection "";' in conf  # else nginx closes each connection
    assert conf.count("{") == conf.count("}")


def test_autoexp_config_routes_the_benchmarked_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOEXP_STORE", raising=False)
    monkeypatch.delenv("AUTOEXP_SECRET", raising=False)
    config = parse_config(tomllib.loads(autoexp_config(8080, "sqlite:///bench.db")))
    assert config.store == "sqlite:///bench.db"
    assert config.proxy is not None and config.proxy.upstream == "http://127.0.0.1:8080"
    (spec,) = config.experiments
    assert len(spec.alternatives) == 2
    (route,) = config.routes
    assert route.reward_from == "status"
    path = PATH.split("?")[0]
    assert route.matches("GET", "127.0.0.1", path, {})


def test_instruction_settings_differ_only_in_what_they_measure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # benchmarks/proxy_instructions.py: "forwarded" routes no request, "decided" decides
    # but rewards nothing, "rewarded" is proxy.py's setting; otherwise the same config.
    from benchmarks.proxy_instructions import SETTINGS, config

    monkeypatch.delenv("AUTOEXP_STORE", raising=False)
    monkeypatch.delenv("AUTOEXP_SECRET", raising=False)
    path = PATH.split("?")[0]
    routes = {}
    for setting in SETTINGS:
        parsed = parse_config(tomllib.loads(config(setting, 8080, "sqlite:///x.db")))
        (routes[setting],) = parsed.routes
        assert (
            parsed.experiments == parse_config(tomllib.loads(autoexp_config(8080, "s"))).experiments
        )
    assert not routes["forwarded"].matches("GET", "127.0.0.1", path, {})
    assert routes["decided"].matches("GET", "127.0.0.1", path, {})
    assert routes["decided"].reward_from == "none"
    assert config("rewarded", 8080, "sqlite:///x.db") == autoexp_config(8080, "sqlite:///x.db")


def test_top_frames_splits_the_event_loop_from_other_threads(tmp_path: Path) -> None:
    raw = tmp_path / "1.txt"
    raw.write_text(
        "thread (1): MainThread;run (a.py:1);decide (e.py:10) 6\n"
        "thread (1): MainThread;run (a.py:1);write (w.py:5) 2\n"
        "thread (2): asyncio_0;work (t.py:3);add (s.py:7) 2\n"
    )
    other = tmp_path / "2.txt"  # --subprocesses prefixes the process
    other.write_text('process 9:"python x";thread (9): MainThread;run (a.py:1) 10\n')
    found = top_frames([raw, other])
    assert found["samples"] == 20
    assert found["MainThread"]["share"] == pytest.approx(18 / 20)
    top = found["MainThread"]["top"]
    assert top[0] == ("run (a.py:1)", pytest.approx(10 / 18), pytest.approx(1.0))
    assert top[1] == ("decide (e.py:10)", pytest.approx(6 / 18), pytest.approx(6 / 18))
    assert found["other"]["top"] == [("add (s.py:7)", 1.0, 1.0)]


SPINNER = """\
import subprocess, sys, time

def spin(seconds):
    started = time.process_time()
    while time.process_time() - started < seconds:
        pass

if sys.argv[1] == "parent":
    subprocess.Popen([sys.executable, __file__, "child"])
spin(0.3)
time.sleep(30)
"""


def test_cpu_s_counts_a_service_and_its_children(tmp_path: Path) -> None:
    # A parent that starts a child, each spinning for 0.3 s of CPU: the reading over the
    # service covers both (the x2 rows' workers are children of the supervisor). /proc
    # counts in clock ticks (10 ms) and each interpreter's start costs some CPU too, so
    # the bounds are 0.6 s (both spins) and 0.6 s plus a second of starts.
    script = tmp_path / "spinner.py"
    script.write_text(SPINNER)
    proc = subprocess.Popen([sys.executable, str(script), "parent"])
    service = Service("spinner", proc, tmp_path / "log")
    try:
        for _ in range(100):  # at most 10 s
            if len(service.pids()) == 2 and cpu_s([service]) >= 0.6:
                break
            time.sleep(0.1)
        assert len(service.pids()) == 2, service.pids()
        assert 0.6 <= cpu_s([service]) <= 1.6
    finally:
        service.stop()


def test_cpu_per_request_compared_with_bare_aiohttp() -> None:
    # cpu vs bare: bare's CPU per request over the row's, the share of bare's rate a
    # proxy bound by its CPU would keep (both measured over the same wrk run's requests)
    def row(name: str, rate: float, cpu: float | None) -> dict[str, object]:
        return {
            "row": name,
            "available": True,
            "workers": 1,
            "loop": "uvloop",
            "requests_per_s": rate,
            "p50_us": 1e4,
            "p99_us": 5e4,
            "c1_p50_us": 400.0,
            "cpu_us_per_request": cpu,
            "errors": 0,
            "probe_problems": [],
            "proxy_failures": 0,
            "rewarded_share": 1.0,
        }

    rows = {
        "direct": row("direct", 1e5, None),
        "bare aiohttp": row("bare aiohttp", 5000.0, 180.0),
        "bare http1": row("bare http1", 6000.0, 150.0),
        "autoexp sqlite": row("autoexp sqlite", 3000.0, 240.0),
    }
    compare(rows)
    assert rows["autoexp sqlite"]["cpu_vs_bare"] == 0.75
    assert rows["autoexp sqlite"]["vs_bare"] == 0.6
    # the experiment's cost over the same client: a column, no target
    assert rows["autoexp sqlite"]["vs_http1"] == 0.5 and rows["bare http1"]["vs_http1"] is None
    assert not [c for c in checks(rows) if "http1" in c["target"]]
    del rows["bare http1"]
    assert rows["bare aiohttp"]["cpu_vs_bare"] is None and rows["direct"]["cpu_vs_bare"] is None
    text = table(rows, 64)
    head, _, _, bare, autoexp = text.splitlines()
    assert "cpu us/req" in head and "cpu vs bare" in head
    assert " 240 " in autoexp and " 75% " in autoexp and " 180 " in bare


def test_the_stub_row_is_compared_with_bare_but_is_no_target() -> None:
    # the stub row (every request given the same decision) says how far the proxy is
    # from bare apart from its decisions; a target checked on it would be met by a proxy
    # that does not decide
    rows = {
        name: {
            "row": name,
            "available": True,
            "requests_per_s": rate,
            "c1_p50_us": 400.0,
            "cpu_us_per_request": None,
            "errors": 0,
            "probe_problems": [],
        }
        for name, rate in (("bare aiohttp", 5000.0), ("autoexp sqlite stub", 4600.0))
    }
    compare(rows)
    assert rows["autoexp sqlite stub"]["vs_bare"] == 0.92
    assert "autoexp sqlite stub" in ROWS
    assert not [c for c in checks(rows) if "stub" in c["target"]]


def test_machine_ticks_count_every_cpu_and_a_spin_as_busy() -> None:
    # Over about 0.5 s of wall time with this process spinning for 0.3 s of it: the
    # machine's ticks cover every CPU for the wall time (kernel ticks are 10 ms and
    # /proc/stat's per-CPU accounting is sampled, hence the 20% band), and its busy ticks
    # at least the spin (other processes can only add to them).
    tick = os.sysconf("SC_CLK_TCK")
    busy0, all0 = machine_ticks()
    started = time.monotonic()
    spin_until = time.thread_time() + 0.3
    while time.thread_time() < spin_until:
        pass
    time.sleep(max(0.0, 0.5 - (time.monotonic() - started)))
    busy1, all1 = machine_ticks()
    wall = time.monotonic() - started
    cpus = os.cpu_count() or 1
    assert 0.8 * cpus * wall <= (all1 - all0) / tick <= 1.2 * cpus * wall + 0.05
    assert 0.25 <= (busy1 - busy0) / tick <= (all1 - all0) / tick


def test_x2_over_x1_splits_into_the_machines_headroom_and_cpu_per_request() -> None:
    # requests/s = busy share x CPUs / all processes' CPU per request: with one worker
    # 60% of 2 CPUs at 300 us a request (4,000/s), with two 99% at 297 us (6,667/s):
    # x2/x1 1.667 = headroom 1.65 x 300/297
    def row(name: str, workers: int, busy: float, machine_us: float) -> dict[str, object]:
        return {
            "row": name,
            "available": True,
            "workers": workers,
            "loop": "uvloop",
            "requests_per_s": busy * 2 / (machine_us * 1e-6),
            "p50_us": 1e4,
            "p99_us": 5e4,
            "c1_p50_us": 400.0,
            "cpu_us_per_request": 200.0,
            "machine_busy": busy,
            "machine_us_per_request": machine_us,
            "store_cpu_us_per_request": 20.0 if "redis" in name else None,
            "errors": 0,
            "probe_problems": [],
            "proxy_failures": 0,
            "rewarded_share": 1.0,
        }

    rows = {
        "autoexp redis": row("autoexp redis", 1, 0.6, 300.0),
        "autoexp redis x2": row("autoexp redis x2", 2, 0.99, 297.0),
    }
    compare(rows)
    two = rows["autoexp redis x2"]
    assert two["x2_over_x1"] == pytest.approx(1.6667, abs=1e-4)
    assert two["x2_headroom"] == pytest.approx(1.65)
    assert two["x2_cpu_ratio"] == pytest.approx(300 / 297)
    assert two["x2_headroom"] * two["x2_cpu_ratio"] == pytest.approx(two["x2_over_x1"])
    assert rows["autoexp redis"]["x2_headroom"] is None
    lines = scaling(rows)
    assert lines[0] == "autoexp redis: redis-server 20 us CPU/req"
    assert lines[1].startswith("autoexp redis x2: x2/x1 1.67x, about the machine's headroom 1.65")
    assert "busy 99% with two workers, 60% with one" in lines[1] and "x 1.01" in lines[1]
    head, _, one, _ = table(rows, 64).splitlines()
    assert " busy " in head and "all us/req" in head
    assert " 60% " in one and " 300 " in one


def test_metrics_take_one_scrape_for_workers_that_share_their_counts() -> None:
    # Since the workers share their counts (autoexp.proxy.group), any scrape is all of
    # them: one scrape, summed by the proxy, not 12 searched for each worker's set (which
    # found one set, and left the x2 rows without rewards/req). A page that answers two
    # different sets would be summed by the old search: here the first is taken alone.
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    pages = iter(
        [
            'autoexp_proxy_events_total{event="rewards"} 300.0\n',
            'autoexp_proxy_events_total{event="rewards"} 157.0\n',
        ]
    )

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = next(pages).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        assert metrics(server.server_address[1], 2) == ({"rewards": 300.0}, 2)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
