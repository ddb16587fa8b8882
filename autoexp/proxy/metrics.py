"""Prometheus metrics at ``GET /_autoexp/metrics``, read from the engine when scraped.

Per experiment and alternative: the allocation (``autoexp_allocation``), the lifecycle
state (``autoexp_state``, 1 for the current one), the rewarded decisions and reward sums
in this replica's snapshot of the shared state (``autoexp_rewarded``,
``autoexp_reward_sum``), the confidence sequence of its difference against control per
test and guardrail (``autoexp_difference_lower``, ``_upper``; absent while unbounded);
per experiment: whether it is paused, the conservative budget left
(``autoexp_budget_remaining``, in reward units), the last lifecycle change of each
alternative with who made it and why (``autoexp_last_change_time_seconds``, labelled with
the new state, ``by`` rule or operator, the test or guardrail and its reason), the
allocation version, late rewards refused, decisions not yet logged, the default rewards
this replica applied (``autoexp_defaults_applied_total``) and whether it holds the
experiment's expire lease (``autoexp_expire_holder``: 1 on exactly one replica of those
sharing the store; absent before the first pass) and whether it waits for its store to
start (``autoexp_waiting``); the store's health (``autoexp_store_up``); and the proxy's own events
(``autoexp_proxy_events_total{event=...}``: ``fail_open``, ``retried``, ``rewards``,
``rewards_refused``, ``reward_store_errors``, ``upstream_error``, ``upstream_timeout``,
``client_gone``, ``websockets`` opened, ``websockets_broken`` by their upstream,
``websockets_idle`` closed for quiet...) and
the WebSockets open now (``autoexp_proxy_websockets_open``). With ``--workers N``, the
figures each process counts on its own (``OWN``: the events, WebSockets, late and default
rewards, unwritten decisions, the lease) are every worker's summed, whichever worker the
scrape reaches (:mod:`autoexp.proxy.group`). The snapshot is refreshed on
the engine's cadence, every ``refresh_every`` events of this replica and at least every
``refresh_s`` seconds, so the figures, summed over every replica, move in steps and lag
the store by at most that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..engine import Engine
from ..errors import StoreError
from .group import Figures, Group
from .upstream import Forwarder

__all__ = ["figures", "metrics_handler", "replica_figures"]


# The figures each process counts on its own (its events, the rewards it refused or
# defaulted, its unwritten decisions, its lease, its WebSockets): with --workers N,
# summed over the workers (autoexp.proxy.group). metric: (its label, its help)
OWN: dict[str, dict[str, tuple[str, str]]] = {
    "counters": {
        "autoexp_late_rewards": ("experiment", "Rewards refused after the join window"),
        "autoexp_defaults_applied": (
            "experiment",
            "Default rewards applied to decisions whose join window closed",
        ),
        "autoexp_proxy_events": ("event", "What the proxy did, by event"),
    },
    "gauges": {
        "autoexp_unlogged_decisions": ("experiment", "Decisions not yet written"),
        "autoexp_expire_holder": (
            "experiment",
            "1 while this replica holds the experiment's expire lease (applies the defaults)",
        ),
        "autoexp_proxy_websockets_open": ("", "WebSocket tunnels open through the proxy"),
    },
}


def replica_figures(engine: Engine, forwarder: Forwarder | None) -> Figures:
    """This process's own figures (``OWN``), as they are now."""
    late: dict[str, float] = {}
    defaults: dict[str, float] = {}
    unlogged: dict[str, float] = {}
    holder: dict[str, float] = {}
    for name in engine.experiments:
        st = engine.status(name)
        late[name] = float(st["late_rewards"])
        defaults[name] = float(st["defaults_applied"])
        unlogged[name] = float(st["unlogged"])
        if st["expire_held"] is not None:  # before its first pass: absent
            holder[name] = 1.0 if st["expire_held"] else 0.0
    counters = {"autoexp_late_rewards": late, "autoexp_defaults_applied": defaults}
    gauges = {"autoexp_unlogged_decisions": unlogged, "autoexp_expire_holder": holder}
    if forwarder is not None:
        counters["autoexp_proxy_events"] = {k: float(v) for k, v in forwarder.counts.items()}
        gauges["autoexp_proxy_websockets_open"] = {"": float(forwarder.websockets_open)}
    return {"counters": counters, "gauges": gauges}


def figures(engine: Engine, forwarder: Forwarder | None, group: Group | None) -> Figures:
    """This process's own figures (``OWN``) or, with a ``group``, every worker's summed
    (its own if the group's directory is gone: removed by hand). Reads files: call it
    in a thread."""
    if group is not None:
        try:
            return group.total()
        except OSError:
            pass
    return replica_figures(engine, forwarder)


class _EngineCollector(Collector):
    def __init__(
        self,
        engine: Engine,
        forwarder: Forwarder | None,
        config_sha256: str | None = None,
        group: Group | None = None,
    ) -> None:
        self.engine = engine
        self.forwarder = forwarder
        self.config_sha256 = config_sha256
        self.group = group

    def collect(self) -> Iterator[Metric]:
        labels = ["experiment", "alternative"]
        allocation = GaugeMetricFamily(
            "autoexp_allocation", "Share of traffic each alternative gets now", labels=labels
        )
        state = GaugeMetricFamily(
            "autoexp_state",
            "Lifecycle state of each alternative (1 for the current one)",
            labels=[*labels, "state"],
        )
        rewarded = GaugeMetricFamily(
            "autoexp_rewarded", "Rewarded decisions in the shared state", labels=labels
        )
        reward_sum = GaugeMetricFamily(
            "autoexp_reward_sum", "Sum of rewards in the shared state", labels=labels
        )
        version = GaugeMetricFamily(
            "autoexp_allocation_version", "Allocation version", labels=["experiment"]
        )
        store_up = GaugeMetricFamily("autoexp_store_up", "1 while the store answers")
        waits = GaugeMetricFamily(
            "autoexp_waiting",
            "1 while the experiment waits for its store to start (it has not answered since "
            "the proxy started; requests go to control meanwhile)",
            labels=["experiment"],
        )
        bounds = {
            side: GaugeMetricFamily(
                f"autoexp_difference_{side}",
                f"{side.capitalize()} confidence bound of the difference against control",
                labels=[*labels, "test"],
            )
            for side in ("lower", "upper")
        }
        paused = GaugeMetricFamily("autoexp_paused", "1 while paused", labels=["experiment"])
        changed = GaugeMetricFamily(
            "autoexp_last_change_time_seconds",
            "When each alternative last changed state (and the experiment was last paused "
            "or resumed: alternative empty), with who changed it and why",
            labels=[*labels, "state", "by", "source", "reason"],
        )
        budget = GaugeMetricFamily(
            "autoexp_budget_remaining",
            "Conservative budget left, in reward units (lower bound of served reward minus "
            "(1 - alpha) times control's)",
            labels=["experiment"],
        )
        epoch = GaugeMetricFamily(
            "autoexp_epoch",
            "Times drift reopened the experiment (exploration on fresh evidence)",
            labels=["experiment"],
        )
        drift = GaugeMetricFamily(
            "autoexp_drift_statistic",
            "The drift detector's statistic on the promoted alternative's reward (it reopens "
            "the experiment above the threshold label)",
            labels=["experiment", "alternative", "detector", "threshold"],
        )
        model = GaugeMetricFamily(
            "autoexp_model_version",
            "The learner's deployed snapshot this replica serves (0: none yet, exploring)",
            labels=["experiment"],
        )
        waiting = self.engine.waiting
        ok = self.engine.store_ok  # with no experiment started too
        for name in waiting:
            waits.add_metric([name], 1.0)
        for name in self.engine.experiments:
            waits.add_metric([name], 0.0)
            st: dict[str, Any] = self.engine.status(name)
            n = st["state"].get("n")
            sums = st["state"].get("sum_reward")
            for i, alt in enumerate(st["alternatives"]):
                allocation.add_metric([name, alt], st["allocation"][i])
                state.add_metric([name, alt, st["status"][i]], 1.0)
                if n is not None:
                    rewarded.add_metric([name, alt], float(n[0][i]))
                if sums is not None:
                    reward_sum.add_metric([name, alt], float(sums[0][i]))
            for test, ev in self.engine.evidence(name).items():
                for side, family in bounds.items():
                    for i, value in enumerate(ev[side]):
                        if i and value is not None:  # column 0 is control itself
                            family.add_metric([name, st["alternatives"][i], test], value)
            paused.add_metric([name], 1.0 if st["paused"] else 0.0)
            try:
                last = self.engine.changes(name)
            except StoreError:  # said by autoexp_store_up; the rest is in memory
                last, ok = [], False
            for c in last:
                state_label = c.get("new") or {"pause": "paused"}.get(c["action"], "resumed")
                changed.add_metric(
                    [
                        name,
                        c.get("alternative") or "",
                        state_label,
                        c.get("by", "rule"),
                        c.get("source", ""),
                        c.get("reason", ""),
                    ],
                    float(c["time"]),
                )
            if st["budget"] is not None:
                budget.add_metric([name], st["budget"]["remaining"])
            epoch.add_metric([name], st["epoch"])
            if st["model_version"] is not None:
                model.add_metric([name], st["model_version"])
            if st["drift"] is not None:
                d = st["drift"]
                labels = [name, d["alternative"], d["detector"], f"{d['threshold']:g}"]
                drift.add_metric(labels, d["statistic"])
            version.add_metric([name], st["version"])
        store_up.add_metric([], 1.0 if ok else 0.0)
        yield from (allocation, state, rewarded, reward_sum, version, store_up, waits)
        yield from (bounds["lower"], bounds["upper"], paused, budget, changed, epoch, drift, model)
        # this process's own counts, or every worker's summed (autoexp.proxy.group)
        summed = figures(self.engine, self.forwarder, self.group)
        for kind, family_type in (("counters", CounterMetricFamily), ("gauges", GaugeMetricFamily)):
            for metric, (label, text) in OWN[kind].items():
                values = summed[kind].get(metric)
                if values is None:
                    continue
                own: CounterMetricFamily | GaugeMetricFamily
                own = family_type(metric, text, labels=[label] if label else [])
                for value_label, value in sorted(values.items()):
                    own.add_metric([value_label] if label else [], value)
                yield own
        if self.config_sha256 is not None:
            info = GaugeMetricFamily(
                "autoexp_config_info",
                "1, labelled with the served config file's SHA-256",
                labels=["sha256"],
            )
            info.add_metric([self.config_sha256], 1.0)
            yield info


def metrics_handler(
    engine: Engine,
    forwarder: Forwarder | None,
    config_sha256: str | None = None,
    group: Group | None = None,
) -> Any:
    """The ``GET /_autoexp/metrics`` handler (the Prometheus text format); with a
    ``group``, each worker's own figures summed."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_EngineCollector(engine, forwarder, config_sha256, group))

    async def handler(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, registry)  # it reads the store
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handler
