"""The ``autoexp`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ._simulate import _bar, add_commands
from ._version import __version__
from .arguments import PORT, bounded
from .demo import add_demo_command
from .errors import ConfigError, StoreError

__all__ = ["main"]


def _cmd_policies(args: argparse.Namespace) -> int:
    from policies import CONTEXTUAL, REGISTRY, SAFETY, TESTS

    groups = {**REGISTRY, **SAFETY, **CONTEXTUAL}
    rows = [(name, cls.example()) for name, cls in groups.items()]
    width = max(len(name) for name in [*groups, *TESTS])
    print(f"{'policy':<{width}}  additive  regret bound")
    for name, policy in rows:
        kind = "yes" if policy.additive else "no "
        # contextual: decides on a context (a learner that is not additive trains in
        # `autoexp learn`)
        tag = "[context] " if name in CONTEXTUAL else ""
        print(f"{name:<{width}}  {kind}       {tag}{policy.regret_bound()}")
    print()
    print(f"{'sequential test':<{width}}  adaptive  what it is")
    for name, cls in TESTS.items():
        kind = "yes" if cls.adaptive else "no "
        summary = (cls.__doc__ or "").strip().splitlines()[0].rstrip(".")
        print(f"{name:<{width}}  {kind}       {summary}")
    return 0


def _cmd_log_export(args: argparse.Namespace) -> int:
    from .log import export
    from .store import open_store

    store = open_store(args.store, create=False)  # a mistyped path: said, not created
    try:
        with _bar(None, f"reading {args.experiment}'s log", "record", args.quiet) as bar:
            n = export(store, args.experiment, args.out, args.format, progress=bar.update)
    finally:
        store.close()
    print(f"{n} decisions of {args.experiment!r} written to {args.out} ({args.format})")
    return 0


def _fds(text: str) -> list[int]:
    """``--listen-fds 5,6``: the listening sockets a supervised worker serves."""
    return [int(fd) for fd in text.split(",")]


def _cmd_proxy(args: argparse.Namespace) -> int:
    import logging

    from .proxy.serve import STORE_UNAVAILABLE, ServeOptions, check_not_itself, serve, supervise

    if args.check:
        from .config import load_config
        from .proxy.check import check

        ok, lines = check(args.config)
        # the address it would listen on: refused as serving refuses it
        check_not_itself(load_config(args.config), args.config, args.host, args.port)
        print("\n".join(lines))
        return 0 if ok else 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.workers < 1:
        raise ConfigError(f"--workers: must be >= 1 (got {args.workers})")
    options = ServeOptions(
        config=args.config,
        host=args.host,
        port=args.port,
        workers=args.workers,
        expire_every_s=args.expire_every_s,
        shutdown_timeout_s=args.shutdown_timeout_s,
        access_log=args.access_log,
        workers_dir=args.workers_dir,
    )
    if args.workers > 1:
        return supervise(options)
    try:
        serve(options, listen_fds=args.listen_fds, ready_fd=args.ready_fd)
    except StoreError as e:
        if args.listen_fds is None:
            raise
        # a supervised worker: a store it could not open (a SQLite file locked past its
        # timeout) is not a refused config: replaced with pauses (a Redis down waits: serve)
        print(f"autoexp proxy: error: {e}", file=sys.stderr)
        return STORE_UNAVAILABLE
    return 0


def _cmd_learn(args: argparse.Namespace) -> int:
    import logging
    import time

    from policies.build import find_in_stack
    from policies.gate import Gate

    from .config import load_config
    from .errors import UnknownExperimentError
    from .learn import Learner, is_learner
    from .store import open_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = load_config(args.config)
    spec = next((e for e in config.experiments if e.name == args.experiment), None)
    if spec is None:
        raise ConfigError(
            f"--experiment: {args.experiment!r} is not in {args.config}; defined: "
            f"{', '.join(e.name for e in config.experiments)}"
        )
    policy: Any = find_in_stack(spec.policy, is_learner)  # inside safety wrappers
    if policy is None:
        raise ConfigError(
            f"experiments.{spec.name}.policy: {spec.policy.name!r} is not a learner; "
            "accepted: vw-cb, river-ts"
        )
    try:
        gate = Gate(
            alpha=args.alpha,
            margin=args.margin,
            max_weight=args.max_weight,
            n_expected=args.n_expected,
            low=policy.low,
            high=policy.high,
        )
    except ValueError as e:  # a flag out of range, named as the gate's parameter
        raise ConfigError(str(e)) from None
    store = open_store(config.store, create=False)  # its log to learn from: there already
    try:
        try:
            learner = Learner(
                store,
                spec.name,
                policy,
                gate=gate,
                publish_every=args.publish_every,
                join_window_s=spec.join_window_s,
            )
        except UnknownExperimentError as e:
            raise ConfigError(f"--experiment: {e.args[0]}") from None

        def progress(s: dict[str, object]) -> None:
            print(
                f"{time.strftime('%H:%M:%S')} {s['experiment']}: {s['rewards']} rewards "
                f"learned (log position {s['position']}), {s['proposed']} proposed, "
                f"deployed version {s['deployed']}, {len(s['pending'])} pending",  # type: ignore[arg-type]
                flush=True,
            )

        if args.once:
            learner.step()
            progress(learner.status())
        else:
            progress(learner.status())
            learner.run(poll_s=args.poll_s, progress=progress)
    finally:
        store.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoexp",
        description="Autonomous experimentation: safe bandits, anytime-valid tests, simulators.",
    )
    parser.add_argument("--version", action="version", version=f"autoexp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser(
        "policies",
        help="list the registered policies (with their regret bounds) and sequential tests",
    )
    p.set_defaults(func=_cmd_policies)
    add_commands(sub)
    add_demo_command(sub)
    p = sub.add_parser(
        "proxy",
        help="the sidecar: decide and reward over HTTP for the config's experiments",
        description="Serve the sidecar's API (POST /_autoexp/decide, POST /_autoexp/rewards, "
        "GET /_autoexp/healthz and readyz, /_autoexp/metrics, the status page at "
        "/_autoexp/ui, the admin API with AUTOEXP_ADMIN_TOKEN) for the experiments of a "
        "config file; with a [proxy] table, also forward every other request to the "
        "application, deciding and rewarding those the routes match. SIGINT/SIGTERM drain "
        "requests in flight and write the pending log; with --workers 2 or more, SIGHUP "
        "reloads the config (new workers on it, then the old ones drain and stop). A store "
        "that does not answer as it starts is said, not fatal: requests go to control "
        "until it answers, then the experiments start.",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="the TOML config")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=PORT, default=8700, help="port to listen on (8700)")
    p.add_argument(
        "--expire-every-s",
        type=bounded(float, 0.001, "seconds >= 0.001"),
        default=10.0,
        help="how often default rewards are applied to closed join windows (10)",
    )
    p.add_argument(
        "--shutdown-timeout-s",
        type=bounded(float, 0.0, "seconds >= 0"),
        default=10.0,
        help="how long requests in flight may take to finish on shutdown (10)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port and, through the store, the state (1)",
    )
    p.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (aiohttp's access log, at INFO); off by default: it costs "
        "a few percent of throughput, and /_autoexp/metrics counts what happened",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="check the config and exit, serving nothing: validated as serving would, "
        "routes that take each other's requests, the signing key, whether the store "
        "answers (a SQLite file not there yet is not created) and holds none of the "
        "experiments with other shapes, and the upstreams; exit 0 ready, 1 the store does "
        "not answer, 2 the config is refused",
    )
    p.add_argument("--listen-fds", type=_fds, default=None, help=argparse.SUPPRESS)
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workers-dir", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_proxy)
    p = sub.add_parser(
        "learn",
        help="train a learner (vw-cb, river-ts) on an experiment's log; deploy through a gate",
        description="Read the experiment's decision log from the learner's cursor (kept in "
        "the store: a restarted learner resumes), train its policy in log order, propose a "
        "snapshot every --publish-every rewards, and deploy a snapshot only when an "
        "anytime-valid off-policy lower bound, on rows it was not trained on, shows it at "
        "least as good as the deployed one (autoexp.learn). Runs until interrupted.",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="the TOML config")
    p.add_argument("--experiment", required=True, metavar="NAME", help="the experiment")
    p.add_argument("--once", action="store_true", help="process what the log holds and exit")
    p.add_argument(
        "--publish-every", type=int, default=1000, help="rewards between proposals (1000)"
    )
    p.add_argument(
        "--alpha", type=float, default=0.05, help="P(ever deploying a worse model) (0.05)"
    )
    p.add_argument("--margin", type=float, default=0.0, help="lower bound needed to deploy (0)")
    p.add_argument(
        "--max-weight",
        type=float,
        default=20.0,
        help="bound on |pi_new - pi_current| / logged propensity (20)",
    )
    p.add_argument(
        "--n-expected", type=float, default=5000.0, help="rows where the gate is tightest"
    )
    p.add_argument(
        "--poll-s",
        type=bounded(float, 0.001, "seconds >= 0.001"),
        default=1.0,
        help="seconds between log reads (1)",
    )
    p.set_defaults(func=_cmd_learn)
    p = sub.add_parser("log", help="the decision log")
    logs = p.add_subparsers(dest="log_command", metavar="ACTION", required=True)
    e = logs.add_parser("export", help="export an experiment's decisions joined with rewards")
    e.add_argument("experiment")
    e.add_argument("--store", help="store URL (default: $AUTOEXP_STORE or sqlite:///autoexp.db)")
    e.add_argument("--format", choices=("jsonl", "parquet", "obp"), default="jsonl")
    e.add_argument("--out", required=True, metavar="PATH", help="file to write")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_log_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except (ConfigError, StoreError) as e:
        print(f"autoexp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autoexp {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `autoexp policies | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
