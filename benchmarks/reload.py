"""Requests that fail while ``autoexp proxy --workers 2`` reloads its config (SIGHUP).

    python benchmarks/reload.py [--clients 16] [--reloads 5] [--repeats 1] [--out FILE]

Not a speed figure: what a config reload costs the clients of a busy proxy. The real CLI,
two workers on one SQLite file, the API's ``POST /_autoexp/decide`` on one experiment.
``--clients`` threads send requests as fast as they are answered, never retried, in two
settings, each its own proxy:

``new``         every request on a new connection (``Connection: close``)
``keep-alive``  each client keeps its connection, and opens a new one when an answer
                says ``Connection: close`` (counted as ``told to close``) or when one
                fails (counted as failed)

Every 2 s, SIGHUP, and once the supervisor says it reloaded, 3 s for the old workers to
drain, ``--reloads`` times. A failed request is a connection reset, or closed with no
answer, or an answer other than 200. About 1 minute.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = ("new", "keep-alive")
CONFIG = """store = "sqlite:///{db}"
secret = "a-benchmark-secret-of-32-bytes-at-least"

[experiments.ranker]
alternatives = ["v1", "v2"]
policy = {{ name = "thompson-beta" }}
"""
BODY = b'{"experiment": "ranker"}'
PROXY = [sys.executable, "-m", "autoexp.cli", "proxy"]


def answered(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/_autoexp/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def client(port: int, keep_alive: bool, done: threading.Event, counts: dict[str, int]) -> None:
    """Requests until ``done``; ``counts`` gets this client's ok, failed and told."""
    headers = {} if keep_alive else {"Connection": "close"}
    conn = None
    while not done.is_set():
        conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", "/_autoexp/decide", BODY, headers)
            got = conn.getresponse()
            got.read()
            counts["ok" if got.status == 200 else "failed"] += 1
            if keep_alive and got.getheader("Connection", "").lower() != "close":
                continue
            counts["told"] += keep_alive
        except OSError:
            counts["failed"] += 1
        conn.close()
        conn = None
    if conn is not None:
        conn.close()


def run(setting: str, clients: int, reloads: int, folder: Path, progress: Any) -> dict[str, Any]:
    from tests.autoexp.conftest import free_port

    folder.mkdir()
    config = folder / "autoexp.toml"
    config.write_text(CONFIG.format(db=folder / "state.db"))
    port = free_port()
    out = folder / "proxy.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [*PROXY, "--config", str(config), "--port", str(port), "--workers", "2"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    done = threading.Event()
    counts = [{"ok": 0, "failed": 0, "told": 0} for _ in range(clients)]
    threads = [
        threading.Thread(target=client, args=(port, setting == "keep-alive", done, counts[n]))
        for n in range(clients)
    ]
    started = time.perf_counter()
    try:
        deadline = time.monotonic() + 120
        while not answered(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the proxy did not start: {out.read_text()}")
            time.sleep(0.2)
        for thread in threads:
            thread.start()
        for n in range(reloads):
            time.sleep(2.0)
            progress(f"{setting}: reload {n + 1} of {reloads}")
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 120
            while out.read_text().count("autoexp proxy: reloaded") <= n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no reload in 120 s: {out.read_text()}")
                time.sleep(0.1)
            time.sleep(3.0)  # the old workers drain and stop
    finally:
        done.set()
        for thread in threads:
            if thread.is_alive():
                thread.join(timeout=60)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    total = {k: sum(c[k] for c in counts) for k in ("ok", "failed", "told")}
    return {
        "setting": setting,
        "clients": clients,
        "reloads": reloads,
        "seconds": round(time.perf_counter() - started, 1),
        "requests": total["ok"] + total["failed"],
        "failed": total["failed"],
        "told_to_close": total["told"] if setting == "keep-alive" else None,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| connections | clients | reloads | requests | failed | told to close |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        told = "" if r["told_to_close"] is None else f"{r['told_to_close']:,}"
        lines.append(
            f"| {r['setting']} | {r['clients']} | {r['reloads']} | {r['requests']:,} "
            f"| {r['failed']:,} | {told} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.policies import bench_parser, clock, report_head, source, write_report

    parser = bench_parser(__doc__, "reload", "2 reloads per setting")
    parser.set_defaults(repeats=1)
    parser.add_argument("--clients", type=int, default=16, help="client threads (16)")
    parser.add_argument("--reloads", type=int, help="reloads per setting (5; quick: 2)")
    args = parser.parse_args(argv)
    reloads = args.reloads or (2 if args.quick else 5)
    progress = clock()
    load_start = os.getloadavg()
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="autoexp-reload-")))
        rows = [
            run(setting, args.clients, reloads, folder / f"{setting}-{n}", progress)
            for n in range(args.repeats)
            for setting in SETTINGS
        ]
    print(table(rows))
    write_report(
        args.out,
        {
            **report_head("reload", load_start, os.getloadavg()),
            "source": source(),
            "rows": rows,
        },
    )
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
