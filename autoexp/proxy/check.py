"""``autoexp proxy --config FILE --check``: what serving the config would do, without
serving it (as ``nginx -t`` does for nginx's).

The config is loaded and validated as the proxy loads it (a mistake is refused the same
way, naming its dotted path), then checked for what loading cannot refuse but a user
would want to hear of before deploying:

- a route listed after another that takes every request it matches (the proxy gives a
  request to the first route that matches: the later experiment would see none of them),
  or some of them;
- the signing key, which must be there (``AUTOEXP_SECRET`` or the file's ``secret``),
  and the admin token, which may be absent (no admin API) but not short;
- the store, which must answer: opened and asked which experiments it holds (a SQLite
  file not there yet is not created: its directory must be one the proxy can write in),
  and whether it holds the state of one of the config's experiments with other shapes
  (another arm count, another policy under the same name), which serving would refuse,
  or under other alternative names (whose evidence would carry over: a warning);
- each upstream, connected to over TCP with the config's connect timeout: reported, not
  failed, since an application may start after its sidecar.

:func:`check` returns the report's lines and whether the proxy could serve.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from policies import ConservativeBudget, TrafficCap

from ..config import Config, load_config
from ..errors import ConfigError, StoreError
from ..experiment import ExperimentSpec, renamed, state_shapes
from ..store import missing_file, open_store, redacted, store_url
from ..store.base import check_declared
from ..tokens import keys_from
from .admin import TOKEN_VARIABLE, admin_token
from .routes import Route

__all__ = ["check", "check_stored", "overlaps", "store_answers"]


def _compatible(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b


def _covers(a: str | None, b: str | None) -> bool:
    """Condition ``a`` (``None``: any) holds for every request condition ``b`` admits."""
    return a is None or a == b


def overlaps(routes: Sequence[Route]) -> list[str]:
    """Warnings for the routes that an earlier route takes requests from: all of them
    (the experiment would get no traffic) or some."""
    out = []
    for j, late in enumerate(routes):
        for early in routes[:j]:
            a, b = early, late
            if not (
                b.path_prefix.startswith(a.path_prefix) or a.path_prefix.startswith(b.path_prefix)
            ):
                continue
            if not (_compatible(a.method, b.method) and _compatible(a.host, b.host)):
                continue
            ah = None if a.header is None else (a.header[0].lower(), a.header[1])
            bh = None if b.header is None else (b.header[0].lower(), b.header[1])
            if ah is not None and bh is not None and ah[0] == bh[0] and ah[1] != bh[1]:
                continue  # one header, two values: never both
            where = f"experiments.{b.experiment}.route"
            if (
                b.path_prefix.startswith(a.path_prefix)
                and _covers(a.method, b.method)
                and _covers(a.host, b.host)
                and (ah is None or ah == bh)
            ):
                out.append(
                    f"{where}: every request it matches goes to experiments.{a.experiment}, "
                    "listed before it: this experiment gets no traffic"
                )
                break  # what else takes some of its requests no longer matters
            else:
                out.append(
                    f"{where}: some requests it matches go to experiments.{a.experiment}, "
                    "listed before it (the first route that matches takes a request)"
                )
    return out


def store_answers(url: str) -> tuple[bool, str]:
    """Whether the store answers, and what it said (a SQLite file not there yet is not
    created, only its directory checked)."""
    path = missing_file(url)
    if path is not None:
        folder = path.parent
        if not folder.is_dir():
            return False, f"{redacted(url)}: directory {folder} does not exist"
        if not os.access(folder, os.W_OK | os.X_OK):
            return False, f"{redacted(url)}: directory {folder} is not writable"
        return True, f"{redacted(url)}: not there yet; serving creates it"
    try:
        store = open_store(url)
        try:
            held = store.experiments()
        finally:
            store.close()
    except StoreError as e:  # a ConfigError (a URL no store could answer at) is raised,
        # as serving raises it: a refused config (exit 2), not a store down (exit 1)
        return False, f"{redacted(url)}: does not answer ({e})"
    return True, f"{redacted(url)}: answers; holds {', '.join(held) or 'no experiment yet'}"


def check_stored(url: str, experiments: Sequence[ExperimentSpec]) -> list[str]:
    """What the store at ``url`` holds of ``experiments``, reading only: a
    :class:`ConfigError` if it holds one's state with other shapes than it declares, as
    serving would refuse it (the same check as the store's ``declare``); a warning for
    each it holds under other alternative names (as serving logs it)."""
    from ..snapshot import serving_policy

    warnings = []
    store = open_store(url)
    try:
        held = set(store.experiments())
        for spec in experiments:
            if spec.name not in held:
                continue
            policy, _ = serving_policy(spec.policy, store, spec.name)  # as the engine does
            wanted = state_shapes(dataclasses.replace(spec, policy=policy))
            have = {k: tuple(v.shape) for k, v in store.read(spec.name).items()}
            try:
                check_declared(spec.name, have, wanted)
            except StoreError as e:
                raise ConfigError(f"experiments.{spec.name}: {e}") from None
            said = renamed(spec, store.get(spec.name, "alternatives"))
            if said is not None:
                warnings.append(said)
    finally:
        store.close()
    return warnings


def _upstream(url: str, timeout_s: float) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return f"{url}: answers"
    except OSError as e:
        return f"{url}: does not answer yet ({e.__class__.__name__}: {e})"


def _route(route: Route) -> str:
    parts = [f"path_prefix {route.path_prefix}"]
    if route.method is not None:
        parts.append(f"method {route.method}")
    if route.host is not None:
        parts.append(f"host {route.host}")
    if route.header is not None:
        parts.append(f"header {route.header[0]}: {route.header[1]}")
    if route.alternative_timeout_s is not None:
        limit = route.alternative_timeout_s
        parts.append(f"an alternative's idempotent request to control after {limit:g} s")
    reward = route.reward_from
    if reward == "none":
        return f"{', '.join(parts)}; no reward read from the answer (POST /_autoexp/rewards)"
    if reward == "latency":
        reward = f"latency (SLO {route.slo_ms:g} ms)"
    elif reward == "header":
        reward = f"header {route.reward_header}"
    return f"{', '.join(parts)}; reward from {reward}"


def _policy(policy: object) -> str:
    """A policy stack, outermost last: ``thompson-beta, conservative budget (alpha 0.05),
    traffic cap (explore_share 0.1)``."""
    parts = []
    while policy is not None:
        name = str(getattr(policy, "name", type(policy).__name__))
        if isinstance(policy, TrafficCap):
            name = f"traffic cap (explore_share {policy.explore_share:g})"
        elif isinstance(policy, ConservativeBudget):
            name = f"conservative budget (alpha {policy.alpha:g})"
        parts.append(name)
        policy = getattr(policy, "policy", None)
    return ", ".join(reversed(parts))


def check(path: str) -> tuple[bool, list[str]]:
    """Check the config at ``path`` as the proxy would load it; ``(ok, report lines)``.
    A config the proxy refuses raises its :class:`~autoexp.errors.ConfigError`; a store
    that does not answer is ``ok`` false."""
    config: Config = load_config(path)
    keys_from(config.secret)  # refused as serving would refuse them
    token = admin_token()
    lines = [f"{path}: valid"]
    warnings = overlaps(config.routes)
    if os.environ.get("AUTOEXP_SECRET") is None and config.secret is not None:
        warnings.append("secret: read from the config file; AUTOEXP_SECRET keeps it out of it")
    url = store_url(config.store)
    ok, said = store_answers(url)
    if ok and missing_file(url) is None:  # a store that holds something
        warnings += check_stored(url, config.experiments)
    lines.append(f"  store     {said}")
    admin = "on" if token else f"off (no {TOKEN_VARIABLE})"
    lines.append(f"  admin     {admin}")
    routes = {r.experiment: r for r in config.routes}
    if config.proxy is not None:
        s = config.proxy
        units = [f"header {s.unit_header}"] if s.unit_header else []
        cookie = f"cookie {s.unit_cookie}"
        if s.set_unit_cookie:
            days = s.unit_cookie_max_age_s / 86_400
            cookie += f", set for {days:g} days where a routed request has no unit"
        units += [cookie] if s.unit_cookie else []
        host = "; the client's Host passed on" if s.preserve_host else ""
        if not s.rewrite_redirects:
            host += "; redirects to an upstream's address passed on as sent"
        if s.trusted_proxies:
            nets = ", ".join(map(str, s.trusted_proxies))
            host += f"; X-Forwarded-Proto and -Host passed on from {nets}"
        lines.append(
            f"  upstream  {_upstream(s.upstream, s.connect_timeout_s)} (connect timeout "
            f"{s.connect_timeout_s:g} s, read {s.read_timeout_s:g} s, an idle client "
            f"{s.client_idle_timeout_s:g} s, a quiet WebSocket "
            f"{s.websocket_idle_timeout_s:g} s; units from "
            f"{' or '.join(units) or 'nothing: every request decided afresh'}{host})"
        )
    for spec in config.experiments:
        route = routes.get(spec.name)
        names = [f"{spec.alternatives[0]} (control)", *spec.alternatives[1:]]
        test = "no test (never promotes or rolls back)" if spec.test is None else spec.test.name
        lines.append(f"  {spec.name}: {', '.join(names)}; {_policy(spec.policy)}; {test}")
        if route is None:
            lines.append("      no route: decided through POST /_autoexp/decide only")
            continue
        lines.append(f"      route: {_route(route)}")
        for name, up in zip(spec.alternatives, route.upstreams, strict=False):
            if up is not None and config.proxy is not None:
                timeout_s = config.proxy.connect_timeout_s
                lines.append(f"      {name} upstream: {_upstream(up, timeout_s)}")
    lines += [f"warning: {w}" for w in warnings]
    lines.append(
        "ready to serve"
        if ok
        else "not ready: the store does not answer (served anyway, the proxy would send "
        "every request to control until it does)"
    )
    return ok, lines
