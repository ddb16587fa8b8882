"""The proxy's cost per request in instructions, which the machine's load does not change.

    python benchmarks/proxy_instructions.py [--requests 1000] [--out FILE]

``benchmarks/proxy.py`` measures requests per second, which on a shared 2-core machine
swing by 20% between runs. This counts instructions instead (``valgrind
--tool=callgrind``, every thread of the proxy process): one autoexp proxy (the real CLI,
one worker, SQLite store) in front of an nginx answering ``200 ok``, in three settings
of the same experiment as ``proxy.py``'s:

``forwarded``  the route matches no request: every request is passed through, no decision
``decided``    every request decided and logged, no reward (``reward_from = "none"``)
``rewarded``   decided, logged and rewarded from its status (``proxy.py``'s setting)

Each setting: the proxy starts under callgrind with instrumentation off, answers 200
requests (warm-up), then instrumentation is switched on for ``--requests`` sequential
requests on one keep-alive connection (``http.client``, outside valgrind), then off; the
count divided by the requests is the cost of one, background threads (the log writer,
the reward applier, ``expire``) included. Under valgrind the process runs about 50 times
slower, so timers fire relatively more often than at full speed; the differences
between settings are the decision's and the reward's cost. Needs ``valgrind``
(``callgrind_control``) and ``nginx``; about 5 minutes.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = ("forwarded", "decided", "rewarded")
WARMUP = 200


def config(setting: str, upstream_port: int, store: str) -> str:
    from benchmarks.proxy import autoexp_config

    text = autoexp_config(upstream_port, store)
    if setting == "forwarded":
        return text.replace('path_prefix = "/search"', 'path_prefix = "/nothing-matches"')
    if setting == "decided":
        return text.replace('reward_from = "status"', 'reward_from = "none"')
    return text


def requests(port: int, n: int) -> None:
    """``n`` GETs one after the other on one connection; each must be a 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        for _ in range(n):
            conn.request("GET", "/search?q=bench")
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"the proxy answered {answer.status}")
    finally:
        conn.close()


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def count(setting: str, upstream_port: int, folder: Path, n: int) -> dict[str, Any]:
    """Instructions of ``n`` requests through a proxy in ``setting``."""
    from benchmarks.proxy import start, wait_ready
    from tests.autoexp.conftest import free_port

    conf = folder / f"{setting}.toml"
    conf.write_text(config(setting, upstream_port, f"sqlite:///{folder / setting}.db"))
    port = free_port()
    out = folder / f"callgrind.{setting}"
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "autoexp.cli",
        "proxy",
        "--config",
        str(conf),
        "--port",
        str(port),
    ]
    proxy = start(f"autoexp {setting}", argv, folder)
    try:
        wait_ready([proxy], f"http://127.0.0.1:{port}/_autoexp/readyz", timeout_s=900)
        requests(port, WARMUP)
        pid = str(proxy.proc.pid)  # valgrind runs the program in its own process
        callgrind_control("-i", "on", pid)
        started = time.perf_counter()
        requests(port, n)
        seconds = time.perf_counter() - started
        callgrind_control("-i", "off", pid)
        callgrind_control("-d", pid)  # write the counts now
    finally:
        proxy.stop()
    total = 0
    for part in folder.glob(f"callgrind.{setting}*"):
        found = re.search(r"^totals:\s+(\d+)", part.read_text(errors="replace"), re.M)
        total += int(found.group(1)) if found else 0
    return {"setting": setting, "requests": n, "instructions": total, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.policies import bench_parser, report_head, source, write_report
    from benchmarks.proxy import start_nginx, upstream_server, wait_ready
    from tests.autoexp.conftest import free_port

    parser = bench_parser(__doc__, "proxy_instructions", "200 requests per setting")
    parser.add_argument("--requests", type=int, default=1_000, help="counted per setting")
    args = parser.parse_args(argv)
    n = 200 if args.quick else args.requests
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (apt-get install valgrind nginx)", file=sys.stderr)
            return 2
    load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="autoexp-instructions-") as tmp:
        folder = Path(tmp)
        upstream_port = free_port()
        app = start_nginx("application", folder, 1, [upstream_server(upstream_port)])
        try:
            wait_ready([app], f"http://127.0.0.1:{upstream_port}/")
            for setting in SETTINGS:
                print(f"{setting}: {n} requests under callgrind ...", flush=True)
                rows.append(count(setting, upstream_port, folder, n))
        finally:
            app.stop()
    base = rows[0]["instructions"] / n
    print(f"\n{'setting':<10} {'instructions/request':>21} {'over forwarded':>15} {'ratio':>6}")
    for row in rows:
        per = row["instructions"] / n
        row["per_request"] = per
        row["over_forwarded"] = per - base
        print(f"{row['setting']:<10} {per:>21,.0f} {per - base:>15,.0f} {base / per:>6.0%}")
    print(
        "\nratio: forwarded's instructions over the setting's, the throughput a CPU-bound "
        "proxy would keep (the issue's target: >= 90%)"
    )
    write_report(
        args.out,
        {
            **report_head("proxy_instructions", load_start, os.getloadavg()),
            "source": source(),
            "config": {"requests": n, "warmup": WARMUP, "settings": list(SETTINGS)},
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
