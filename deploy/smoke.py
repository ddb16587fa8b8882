"""Build the sidecar's image and run ``deploy/compose.yaml`` end to end, in Docker.

    python deploy/smoke.py [--port PORT] [--requests N] [--keep]

Needs Docker with the compose plugin (``docker compose``); compose pulls ``redis:7`` and
``python:3.11-slim`` unless they are there. Python's standard library only, so any
``python3`` runs it. Each step prints what it measured; the first that does not hold
stops the run with exit 1 (the stack is taken down unless ``--keep``):

1. ``docker compose build``: the image, its size and build time.
2. The image: runs as uid 10001, entrypoint ``autoexp proxy``; its ``--check`` says the
   example config is ready, and refuses a secret too short (exit 2); given a store folder
   it may not write in (owned by root), it stops at the start and says so.
3. ``docker compose up --wait``: Redis, the stand-in application and the sidecar healthy.
4. The application's traffic through the sidecar: every request answered by the
   application with a decision token; the admin API (401 without the token), the rewards
   counted in its state, metrics naming the config's SHA-256, the status page.
5. The image's own command and HEALTHCHECK: a second sidecar from the image alone (its
   default SQLite store; a read-only root filesystem and a writable ``/tmp``, as
   ``kubernetes.yaml`` runs it) turns ``healthy``, having compiled no numba kernel (it
   loads those the image compiled), and stops with exit 0.
6. Redis stopped: every request still answered, each sent to control and counted as
   ``fail_open`` or decided (before the sidecar saw the store fail, a returning user's
   alternative held in memory); readyz 200, saying the store is down; Redis started:
   decisions again.
7. ``docker compose stop``: the sidecar drains and exits 0.

Between 5 and 6, a sidecar with ``--workers 2`` is sent SIGHUP after its config changed:
new workers serve the new config (healthz's ``config_sha256``), the port answering
throughout, and it stops with exit 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
IMAGE = "autoexp:latest"  # as compose.yaml names it
PROJECT = "autoexp-smoke"
CONFIG = "/etc/autoexp/autoexp.toml"


class Failed(Exception):
    pass


def run(*args: str, check: bool = True, timeout: float = 600, **kw: Any) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode != 0:
        raise Failed(f"{' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return str(done.stdout)


def compose(*args: str, **kw: Any) -> str:
    return run(
        "docker",
        "compose",
        "--ansi",
        "never",
        "-p",
        PROJECT,
        "-f",
        str(DEPLOY / "compose.yaml"),
        *args,
        **kw,
    )


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise Failed(what)


def step(title: str, started: float, said: str) -> None:
    print(f"ok  {title:<12} {time.monotonic() - started:6.1f} s  {said}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fail_open(base: str) -> float:
    return metric(
        get(f"{base}/_autoexp/metrics")[2], 'autoexp_proxy_events_total{event="fail_open"}'
    )


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def until(what: str, seconds: float, probe: Any) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {seconds:.0f} s")
        time.sleep(0.5)


def exited_cleanly(container: str, what: str) -> None:
    code = run("docker", "inspect", "-f", "{{.State.ExitCode}}", container).strip()
    expect(code == "0", f"{what} exited {code} on SIGTERM")


def stop(container: str, what: str) -> None:
    """``docker stop`` (SIGTERM, 30 s to drain); it must exit 0."""
    run("docker", "stop", "-t", "30", container)
    exited_cleanly(container, what)


def reload_in_place(config_file: Path) -> str:
    """``--workers 2`` in a container, SIGHUP to it (``docker kill -s HUP``, as the README
    says for ``kill -HUP 1``): new workers serve the changed config, the port answering
    throughout, and it stops with exit 0."""
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "autoexp.toml"
        text = config_file.read_text()
        config.write_text(text)
        os.chmod(folder, 0o755)  # read by the container's user
        os.chmod(config, 0o644)
        box = run(
            *("docker", "run", "-d", "--read-only", "--tmpfs", "/tmp", "-p", "127.0.0.1::8700"),
            *("-v", f"{folder}:/etc/autoexp:ro", "-e", "AUTOEXP_SECRET", IMAGE),
            *("--config", CONFIG, "--host", "0.0.0.0", "--port", "8700", "--workers", "2"),
        ).strip()
        try:
            host_port = run("docker", "port", box, "8700/tcp").split()[0].rsplit(":", 1)[1]
            url = f"http://127.0.0.1:{host_port}/_autoexp/healthz"

            def served() -> dict[str, set[Any]]:  # the answering workers' pids and configs
                seen: dict[str, set[Any]] = {"pid": set(), "config_sha256": set()}
                for _ in range(20):
                    try:
                        status, _, body = get(url)
                    except OSError:  # not listening yet (before the first start only)
                        return {}
                    expect(status == 200, f"healthz: {status}")
                    for key in seen:
                        seen[key].add(json.loads(body)[key])
                return seen

            until("two workers answering", 60, lambda: len(served().get("pid", ())) == 2)
            before = served()
            expect(len(before["config_sha256"]) == 1, f"before: {before}")
            config.write_text(text.replace("explore_share = 0.1", "explore_share = 0.2"))
            sha = hashlib.sha256(config.read_bytes()).hexdigest()
            expect(sha not in before["config_sha256"], "the config did not change")
            run("docker", "kill", "-s", "HUP", box)

            def reloaded() -> bool:  # every answer from a new worker with the new config
                seen = served()
                expect(bool(seen), "the port stopped answering during the reload")
                return seen["config_sha256"] == {sha} and not seen["pid"] & before["pid"]

            until("the new config served by new workers", 60, reloaded)
            stop(box, "the reloaded sidecar")
        finally:
            run("docker", "rm", "-f", box, check=False)
    return f"--workers 2: SIGHUP, new workers serve config {sha[:12]}, the port answering; exit 0"


def smoke(port: int, requests: int) -> None:
    base = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {os.environ['AUTOEXP_ADMIN_TOKEN']}"}

    t = time.monotonic()
    compose("build", "autoexp", timeout=3600)
    (info,) = json.loads(run("docker", "image", "inspect", IMAGE))
    step("build", t, f"{IMAGE}, {info['Size'] / 1e6:.0f} MB")

    t = time.monotonic()
    config = info["Config"]
    expect(config["User"] == "10001:10001", f"image user {config['User']!r}")
    expect(config["Entrypoint"] == ["autoexp", "proxy"], f"entrypoint {config['Entrypoint']}")
    uid = run("docker", "run", "--rm", "--entrypoint", "id", IMAGE, "-u").strip()
    expect(uid == "10001", f"the image runs as uid {uid}")
    mount = f"{DEPLOY / 'autoexp.toml'}:{CONFIG}:ro"
    check = ["docker", "run", "--rm", "-v", mount, "-e", "AUTOEXP_SECRET", IMAGE]
    said = run(*check, "--config", CONFIG, "--check")
    expect(said.rstrip().endswith("ready to serve"), f"--check said:\n{said}")
    short = subprocess.run(
        [*check, "--config", CONFIG, "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AUTOEXP_SECRET": "short"},
    )
    expect(short.returncode == 2, f"--check with a short secret: exit {short.returncode}")
    # a store folder the image's user may not write in (a root-owned bind mount): refused
    # at the start, saying so
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        locked = subprocess.run(
            [*check[:3], "-v", f"{folder}:/var/lib/autoexp", *check[3:], "--config", CONFIG],
            capture_output=True,
            text=True,
            timeout=120,
        )
    said = "is not writable by this process (uid 10001)"
    expect(locked.returncode != 0 and said in locked.stderr, f"locked store: {locked}")
    step("image", t, f"uid {uid}; --check ready, short secret: 2; store unwritable: said")

    t = time.monotonic()
    compose("up", "-d", "--no-build", "--wait", timeout=300)
    step("up", t, "redis, app and autoexp healthy")

    t = time.monotonic()
    for i in range(requests):
        status, headers, body = get(f"{base}/", {"X-User-Id": f"user-{i % 50}"})
        expect(status == 200 and "the application" in body, f"request {i}: {status} {body!r}")
        expect("X-Autoexp-Decision" in headers, f"request {i}: no decision token")
    expect(get(f"{base}/_autoexp/admin/experiments")[0] == 401, "admin without the token")
    status, _, body = get(f"{base}/_autoexp/admin/experiments", admin)
    listed = [e["experiment"] for e in json.loads(body)["experiments"]]
    expect(status == 200 and listed == ["ranker"], f"admin list: {status} {body}")

    def rewarded() -> float:  # in the sidecar's snapshot, refreshed every 10 s at least
        body = get(f"{base}/_autoexp/admin/experiments/ranker", admin)[2]
        return float(sum(json.loads(body)["state"]["n"][0]))

    # each request rewarded from its status, once
    until(f"{requests} rewards in the sidecar's state", 30, lambda: rewarded() == requests)
    text = get(f"{base}/_autoexp/metrics")[2]
    sha = hashlib.sha256((DEPLOY / "autoexp.toml").read_bytes()).hexdigest()
    expect(f'autoexp_config_info{{sha256="{sha}"}} 1.0' in text, "metrics: config sha256")
    status, _, page = get(f"{base}/_autoexp/ui")
    expect(status == 200 and "ranker" in page, f"status page: {status}")
    step("traffic", t, f"{requests} requests decided, answered and rewarded; admin, ui, metrics")

    t = time.monotonic()
    # the image's own command and HEALTHCHECK (port 8700 in its own network; nothing at
    # its upstream, which healthz does not need), on a read-only root filesystem with a
    # writable /tmp, as kubernetes.yaml runs it
    # numba says what it loads and compiles (NUMBA_DEBUG_CACHE): a fresh container loads
    # the kernels the image compiled, and compiles none (built and run on one machine)
    second = run(
        *("docker", "run", "-d", "--read-only", "--tmpfs", "/tmp", "-e", "NUMBA_DEBUG_CACHE=1"),
        *("-v", mount, "-e", "AUTOEXP_SECRET", IMAGE),
    ).strip()
    try:

        def healthy() -> bool:
            state = run("docker", "inspect", "-f", "{{.State.Health.Status}}", second).strip()
            expect(state in ("starting", "healthy"), f"the image's HEALTHCHECK: {state}")
            return state == "healthy"

        until("the image's own HEALTHCHECK healthy", 90, healthy)
        logs = subprocess.run(["docker", "logs", second], capture_output=True, text=True)
        said = logs.stdout + logs.stderr
        loaded, saved = said.count("[cache] data loaded"), said.count("[cache] data saved")
        expect(loaded > 0 and saved == 0, f"kernels loaded {loaded}, compiled {saved}")
        stop(second, "the second sidecar")
    finally:
        run("docker", "rm", "-f", second, check=False)
    said = f"a sidecar alone (SQLite, root read-only) healthy, {loaded} kernels loaded, 0 compiled"
    step("healthcheck", t, said + "; stopped: exit 0")

    t = time.monotonic()
    said = reload_in_place(DEPLOY / "autoexp.toml")
    step("reload", t, said)

    t = time.monotonic()
    before = fail_open(base)
    compose("stop", "redis")
    down = max(10, requests // 4)
    tokens = 0  # decided before the sidecar saw the store fail (a returning user's
    for i in range(down):  # alternative is held in memory): logged once Redis is back
        status, headers, body = get(f"{base}/", {"X-User-Id": f"user-{i % 50}"})
        expect(status == 200 and "the application" in body, f"Redis down, request {i}: {status}")
        tokens += "X-Autoexp-Decision" in headers
    status, _, body = get(f"{base}/_autoexp/readyz")
    expect(status == 200 and json.loads(body)["store_ok"] is False, f"readyz: {status} {body}")
    after = fail_open(base)
    opened = after - before
    expect(opened + tokens == down, f"fail_open {opened:.0f} + decided {tokens} != {down}")
    expect(opened > 0, "no request failed open with Redis stopped")
    compose("start", "redis")

    probes = [0]

    def decided() -> bool:
        status, headers, _ = get(f"{base}/", {"X-User-Id": "user-0"})
        expect(status == 200, f"Redis starting: {status}")
        probes[0] += "X-Autoexp-Decision" in headers
        return bool(probes[0])

    until("decisions after Redis started again", 30, decided)
    expect(get(f"{base}/_autoexp/readyz?store=required")[0] == 200, "readyz?store=required")
    # every decision served, the outage's included, rewarded once in the shared state
    total = requests + tokens + probes[0]
    until(f"{total} rewards in the sidecar's state", 30, lambda: rewarded() == total)
    said = (
        f"{down} requests answered: {opened:.0f} to control (fail_open), {tokens} decided;"
        f" after: {total:.0f} rewarded"
    )
    step("redis down", t, said)

    t = time.monotonic()
    compose("stop", "autoexp", timeout=120)
    exited_cleanly(compose("ps", "-a", "-q", "autoexp").strip(), "the sidecar")
    step("stop", t, "drained, exit 0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="published port (default: free)")
    parser.add_argument("--requests", type=int, default=200, help="requests sent (200)")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args(argv)
    port = args.port or free_port()
    os.environ["AUTOEXP_PORT"] = str(port)
    os.environ.setdefault("AUTOEXP_SECRET", secrets.token_hex(32))
    os.environ.setdefault("AUTOEXP_ADMIN_TOKEN", secrets.token_hex(32))
    os.chdir(ROOT)
    started = time.monotonic()
    try:
        smoke(port, args.requests)
    except (Failed, subprocess.TimeoutExpired, OSError) as e:
        logs = compose("logs", "--no-color", "--tail", "20", check=False)
        print(re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", logs), file=sys.stderr)
        print(f"FAILED: {e}", file=sys.stderr)  # last, under the stack's last log lines
        return 1
    finally:
        if not args.keep:
            compose("down", "-v", check=False)
    print(f"all steps held in {time.monotonic() - started:.0f} s (port {port})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
