"""The demo's run: upstreams and the proxy on 127.0.0.1, the shoppers, the command."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..arguments import SEED, bounded
from ..outputs import output_directory
from .report import narrative, write_report
from .story import CONFIG, EXPERIMENT, SHOPPERS, STUCK_S, TAIL, VERSIONS, DemoResult, Version

# --- the servers -------------------------------------------------------------------------


def _upstream(version: Version, seed: int) -> Any:
    import numpy as np
    from aiohttp import web

    rng = np.random.default_rng(seed)

    async def page(request: web.Request) -> web.Response:
        await asyncio.sleep(version.latency_ms / 1000.0)
        if rng.random() < version.fail_share:
            return web.Response(status=503, text=f"{version.name}: unavailable")
        text = f"<h1>shop</h1><p>version {version.name}</p>"
        return web.Response(text=text, content_type="text/html", headers={"X-Shop": version.name})

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    return app


async def _serve(app: Any) -> tuple[Any, str]:
    """Serve ``app`` on a free loopback port: its runner and base URL."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


# --- the load ----------------------------------------------------------------------------


@dataclass
class _Load:
    """The shoppers' shared state (one event loop: no locks)."""

    limit: int
    rate: float  # requests per second (0: as fast as they go)
    t0: float = field(default_factory=time.monotonic)
    sent: int = 0
    outbox: list[dict[str, Any]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def _shopper(session: Any, base: str, load: _Load, rng: Any, result: DemoResult) -> None:
    """One shopper at a time: a page through the proxy, a purchase or not, its outcome
    queued for the shop's report (with the decision's token)."""
    rates = {v.name: v.conversion for v in VERSIONS}
    while not load.stop.is_set() and load.sent < load.limit:
        load.sent += 1
        if load.rate > 0:  # the n-th request leaves at n / rate seconds
            await asyncio.sleep(max(0.0, load.t0 + load.sent / load.rate - time.monotonic()))
        user = f"shopper-{int(rng.integers(SHOPPERS))}"
        url = f"{base}/shop/item/{int(rng.integers(100))}"
        async with session.get(url, headers={"X-User-Id": user}) as r:
            await r.read()
            shown, token = r.headers.get("X-Shop"), r.headers.get("X-Autoexp-Decision")
            status = r.status
        result.answered += 1
        if status != 200 or shown not in rates:
            result.failed += 1
            continue
        bought = bool(rng.random() < rates[shown])
        result.purchases += bought
        if token is not None:  # None: the proxy served control after the alternative failed
            load.outbox.append({"token": token, "value": 1.0 if bought else 0.0})


async def _reporter(session: Any, base: str, load: _Load, result: DemoResult) -> None:
    """The shop's backend: every visit's outcome to the sidecar, in batches."""
    while True:
        last = load.stop.is_set()
        while load.outbox:
            batch, load.outbox = load.outbox[:1_000], load.outbox[1_000:]
            async with session.post(f"{base}/_autoexp/rewards", json={"rewards": batch}) as r:
                if r.status != 202:
                    raise RuntimeError(f"POST /_autoexp/rewards: {r.status} {await r.text()}")
            result.reported += len(batch)
        if last:
            return
        await asyncio.sleep(0.1)


def _look(engine: Any, result: DemoResult, load: _Load) -> list[str]:
    """Record the experiment's allocation, states and evidence now; the states."""
    status = engine.status(EXPERIMENT)
    evidence = engine.evidence(EXPERIMENT)
    result.looks.append((time.time(), load.sent, status["allocation"], status["status"], evidence))
    return list(status["status"])


def _postfix(allocation: list[float], status: list[str]) -> str:
    """The progress bar's tail: each version's share, and its state once it changed."""
    short = {"rolled_back": "rolled back", "promoted": "PROMOTED", "inconclusive": "inconclusive"}
    return "  ".join(
        f"{v.name} {a:.0%}" + (f" ({short[s]})" if s in short else "")
        for v, a, s in zip(VERSIONS, allocation, status, strict=True)
    )


def _verdict(status: list[str]) -> str | None:
    """``"story"`` when harmful is rolled back and better promoted; ``"stuck"`` when that
    can no longer happen (or only by a late outcome: ``"waiting"``); else None."""
    better, harmful = status[1:]
    if better == "promoted" and harmful == "rolled_back":
        return "story"
    if better in ("rolled_back", "inconclusive") or harmful in ("promoted", "inconclusive"):
        return "stuck"
    return "waiting" if better == "promoted" else None


# --- the run -----------------------------------------------------------------------------


async def _start(result: DemoResult, seeds: list[Any], runners: list[Any]) -> tuple[Any, Any, str]:
    """The upstreams, the config (written, then loaded), the engine and the proxy: the
    engine, the proxy's app and its URL; every runner started is in ``runners``."""
    from ..config import load_config
    from ..proxy import make_app

    urls = {}
    for version, s in zip(VERSIONS, seeds, strict=False):
        runner, urls[version.name] = await _serve(_upstream(version, s.generate_state(1)[0]))
        runners.append(runner)
    store = f"sqlite:///{result.db.resolve()}"
    text = CONFIG.format(path=result.config, store=json.dumps(store), name=EXPERIMENT, **urls)
    result.config.write_text(text, encoding="utf-8")
    config = load_config(result.config)
    # the demo's own store (not AUTOEXP_STORE's) and, unless one is set, a key of its own
    secret = config.secret or os.urandom(32).hex()
    config = dataclasses.replace(config, store=store, secret=secret)
    spec = config.experiments[0]
    result.alpha = float(spec.test.alpha)
    result.margin = 0.0 if spec.rule is None else float(spec.rule.margin)
    engine = config.engine(seed=int(seeds[-1].generate_state(1)[0]))
    engine.warm_up()
    app = make_app(engine, proxy=config.proxy, routes=config.routes, close_engine=False)
    runner, base = await _serve(app)
    runners.append(runner)
    return engine, app, base


async def _watch(
    engine: Any,
    load: _Load,
    shoppers: list[asyncio.Task[None]],
    reporter: asyncio.Task[None],
    result: DemoResult,
    bar: Any,
    timeout_s: float,
) -> None:
    """Look every 0.1 s until the shoppers are done: on the story, ``TAIL`` more requests;
    stop when it cannot happen any more, at the timeout, or when the reporter failed."""
    waiting_since = None
    while not all(t.done() for t in shoppers):
        await asyncio.sleep(0.1)
        status = _look(engine, result, load)
        bar.set_postfix_str(_postfix(result.looks[-1][2], status), refresh=False)
        bar.update(load.sent - bar.n)
        verdict, now = _verdict(status), time.monotonic()
        if verdict == "story" and not result.concluded:
            result.concluded = True
            load.limit = min(load.limit, load.sent + TAIL)
        waiting_since = (waiting_since or now) if verdict == "waiting" else None
        if verdict == "stuck" or (waiting_since and now - waiting_since > STUCK_S):
            result.why_stopped = f"the experiment ended in states {status}"
        elif now - load.t0 > timeout_s:
            result.why_stopped = f"--timeout-s {timeout_s:g} reached"
        if result.why_stopped or reporter.done():
            return


async def _drive(
    engine: Any,
    base: str,
    load: _Load,
    rngs: list[Any],
    result: DemoResult,
    bar: Any,
    *,
    concurrency: int,
    timeout_s: float,
) -> None:
    """The shoppers and the shop's reports, looking at the experiment every 0.1 s until
    the story concluded (then ``TAIL`` more requests), cannot, or a bound is reached."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency + 2)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        result.started, load.t0 = time.time(), time.monotonic()
        _look(engine, result, load)
        shoppers = [asyncio.create_task(_shopper(session, base, load, g, result)) for g in rngs]
        reporter = asyncio.create_task(_reporter(session, base, load, result))
        try:
            await _watch(engine, load, shoppers, reporter, result, bar, timeout_s)
            load.stop.set()
            await asyncio.gather(*shoppers, reporter)
        finally:  # interrupted or failed: nothing left running on a closed session
            for task in [*shoppers, reporter]:
                task.cancel()
            await asyncio.gather(*shoppers, reporter, return_exceptions=True)
        bar.update(load.sent - bar.n)
        result.seconds, result.requests = time.monotonic() - load.t0, load.sent
    if not (result.concluded or result.why_stopped):
        result.why_stopped = f"--max-requests {load.limit:,} reached"


async def _run(
    result: DemoResult,
    *,
    max_requests: int,
    timeout_s: float,
    concurrency: int,
    rate: float,
    quiet: bool,
) -> None:
    import numpy as np
    from tqdm import tqdm

    from ..log import export, rows
    from ..proxy.app import FORWARDER

    seeds = np.random.SeedSequence(result.seed).spawn(len(VERSIONS) + concurrency + 1)
    rngs = [np.random.default_rng(s) for s in seeds[len(VERSIONS) : -1]]
    runners: list[Any] = []
    engine = None
    bar = tqdm(desc="requests", unit="req", disable=quiet, file=sys.stderr, dynamic_ncols=True)
    try:
        engine, app, base = await _start(result, seeds, runners)
        load = _Load(limit=max_requests, rate=rate)
        await _drive(
            engine,
            base,
            load,
            rngs,
            result,
            bar,
            concurrency=concurrency,
            timeout_s=timeout_s,
        )
        bar.close()
        await asyncio.sleep(0.2)  # the proxy applies its last rewards every 50 ms
        result.counts = dict(app[FORWARDER].counts)
        await runners.pop().cleanup()  # the proxy: its last rewards, its chores stopped
        engine.close()  # the pending log written
        engine.refresh(EXPERIMENT)
        _look(engine, result, load)
        result.history = engine.history(EXPERIMENT)
        result.changes = engine.changes(EXPERIMENT)
        result.rows = rows(engine.store, EXPERIMENT)
        export(engine.store, EXPERIMENT, result.log)
    finally:
        bar.close()
        for runner in reversed(runners):
            await runner.cleanup()
        if engine is not None:
            engine.close()
            engine.store.close()


def run_demo(
    out: str | Path,
    *,
    seed: int = 3,
    max_requests: int = 30_000,
    timeout_s: float = 110.0,
    concurrency: int = 32,
    rate: float = 300.0,
    quiet: bool = False,
) -> DemoResult:
    """Run the demo in ``out`` (created; a previous run's store removed), print what
    happened and write the report.

    Parameters
    ----------
    out : the directory of the config, the store, the report and the decision log
    seed : seeds the upstreams, the shoppers and the engine (the load is concurrent, so
        two runs with one seed agree closely, not to the request)
    max_requests, timeout_s : bounds of the run
    concurrency : shoppers requesting at a time
    rate : requests per second (0: as fast as the machine goes)
    quiet : no progress bar

    Returns
    -------
    DemoResult : ``concluded`` when ``harmful`` was rolled back and ``better`` promoted

    Raises
    ------
    ConfigError : ``out`` is not a directory that can be written
    """
    result = DemoResult(out=output_directory(out), seed=seed)
    old = [p for p in (result.db, Path(f"{result.db}-wal"), Path(f"{result.db}-shm")) if p.exists()]
    for p in old:
        p.unlink()
    print(_intro(result, concurrency, rate, removed=bool(old)), file=sys.stderr)
    proxy_log = logging.getLogger("autoexp.proxy")
    level = proxy_log.level
    proxy_log.setLevel(logging.ERROR)  # retries are counted, and told at the end
    try:
        asyncio.run(
            _run(
                result,
                max_requests=max_requests,
                timeout_s=timeout_s,
                concurrency=concurrency,
                rate=rate,
                quiet=quiet,
            )
        )
    finally:
        proxy_log.setLevel(level)
    write_report(result)
    print(narrative(result))
    return result


def _intro(result: DemoResult, concurrency: int, rate: float, *, removed: bool) -> str:
    """What is about to run, and where its files go."""
    pace = f"at up to {rate:g} requests/s" if rate > 0 else "as fast as they go"
    lines = [
        f"autoexp demo: {len(VERSIONS)} versions of a shop page behind the autoexp proxy, "
        f"{concurrency} shoppers at a time {pace}, seed {result.seed}"
    ]
    lines += [f"  {v.name:<8} {v.story}" for v in VERSIONS]
    fresh = "started fresh: removed the previous run's" if removed else "a new"
    lines.append(f"  config   {result.config}\n  store    {result.db} ({fresh} SQLite store)")
    return "\n".join(lines)


# --- the command -------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    """``autoexp demo``: 0 when the story concluded, 1 when it did not."""
    result = run_demo(
        args.out,
        seed=args.seed,
        max_requests=args.max_requests,
        timeout_s=args.timeout_s,
        concurrency=args.concurrency,
        rate=args.rate,
        quiet=args.quiet,
    )
    return 0 if result.concluded else 1


def add_demo_command(sub: Any) -> None:
    """Register ``demo`` on the CLI's subparsers."""
    p = sub.add_parser(
        "demo",
        help="the whole loop on this machine: upstreams, the proxy, shoppers, a report",
        description="Start three versions of a shop page on 127.0.0.1 (control, a better "
        "one, a harmful one), the autoexp proxy in front of them with an SQLite store, and "
        "simulated shoppers; stop when the harmful version is rolled back and the better "
        "one promoted; print what happened and why, and write the report. Exit code 1 if "
        "the run ends before both changes.",
    )
    p.add_argument(
        "--out",
        default="autoexp-demo",
        metavar="DIR",
        help="where the config, store, report and log go (autoexp-demo)",
    )
    p.add_argument("--seed", type=SEED, default=3, help="seeds the whole run (3)")
    p.add_argument(
        "--max-requests",
        type=bounded(int, 100, "an integer >= 100"),
        default=30_000,
        metavar="N",
        help="stop after N requests (30000)",
    )
    p.add_argument(
        "--timeout-s",
        type=bounded(float, 1.0, "a number of seconds >= 1"),
        default=110.0,
        help="stop after this long (110)",
    )
    p.add_argument(
        "--concurrency",
        type=bounded(int, 1, "an integer >= 1"),
        default=32,
        help="shoppers requesting at a time (32)",
    )
    p.add_argument(
        "--rate",
        type=bounded(float, 0.0, "a number >= 0"),
        default=300.0,
        help="requests per second; 0: as fast as the machine goes (300)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_demo)
