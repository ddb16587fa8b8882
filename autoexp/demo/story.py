"""The demo's story: its three versions, the experiment's config, what a run saw."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXPERIMENT = "shop"
TAIL = 300  # requests served after the story concluded, to show where traffic goes then
# Distinct shoppers (sticky units) the load draws from. A returning shopper keeps the
# version first shown, with the propensity of that first exposure; its visits are then
# not independent draws, so the tests' intervals are an approximation here (a good one:
# most of the demo's 1,000 to 2,000 requests come from shoppers seen a few times at most)
SHOPPERS = 1_000
STUCK_S = 1.0  # a promotion with harmful still exploring: its late outcomes may yet roll it back
PLOTS = ("allocation", "evidence", "reward")
COLOURS = {"control": "#7f7f7f", "better": "#2ca02c", "harmful": "#d62728"}


@dataclass(frozen=True)
class Version:
    """One demo upstream: the share of its visits that buy, the share of its requests it
    answers with 503, and how long it takes to answer."""

    name: str
    conversion: float
    fail_share: float
    latency_ms: float
    story: str

    @property
    def value(self) -> float:
        """The expected reward of a decision for it (a 503 is retried and rewarded 0)."""
        return (1.0 - self.fail_share) * self.conversion


VERSIONS = (
    Version("control", 0.30, 0.0, 5.0, "the current page: 30% of visits buy"),
    Version("better", 0.45, 0.0, 5.0, "a better page: 45% of visits buy"),
    Version(
        "harmful", 0.10, 0.5, 40.0, "a broken release: 503 for half its requests, 10% buy, +35 ms"
    ),
)

CONFIG = """\
# The experiment `autoexp demo` ran (written by the demo, read back by autoexp's config
# loader). To reuse it, point the upstreams at your own services, set AUTOEXP_SECRET (32+
# bytes) and run:  autoexp proxy --config {path}
# The demo's upstreams on these ports lived only as long as the demo.
store = {store}

[proxy]
upstream = "{control}"  # control, and every request outside the route
unit_header = "X-User-Id"  # sticky: a shopper keeps the version first shown

[experiments.{name}]
alternatives = [
    "control",
    {{ name = "better", upstream = "{better}" }},
    {{ name = "harmful", upstream = "{harmful}" }},
]
route = {{ path_prefix = "/shop" }}  # outcomes come to POST /_autoexp/rewards
# 60% of decisions explore uniformly, so every version keeps getting evidence; the rest
# go to the best so far; the alternatives together get at most 60% of the traffic
policy = {{ name = "epsilon-greedy", epsilon = 0.6 }}
safety = {{ explore_share = 0.6 }}
# promotion and rollback: alternative minus control, an anytime-valid off-policy
# confidence sequence; promoted only when better than control by more than the margin
test = {{ name = "off-policy-cs", n_expected = 3_000 }}
rule = {{ margin = 0.08 }}
reward = {{ low = 0.0, high = 1.0 }}  # every visit's outcome is reported: 1 bought, 0 not
refresh_every = 20

# a guardrail tuned to catch a large loss early: a breach rolls back at once
[[experiments.{name}.guardrails]]
name = "conversion"
harm = "decrease"
test = {{ name = "off-policy-cs", n_expected = 100 }}
"""


@dataclass
class DemoResult:
    """What a run saw: its looks over time, the changes, the counts, where the files are."""

    out: Path
    seed: int
    seconds: float = 0.0
    requests: int = 0
    answered: int = 0
    failed: int = 0  # answers other than 200 that shoppers got
    purchases: int = 0
    reported: int = 0
    concluded: bool = False
    why_stopped: str = ""
    started: float = 0.0  # epoch time of the first look
    alpha: float = 0.05
    margin: float = 0.0
    # each look: (epoch time, requests sent, allocation, status, evidence)
    looks: list[tuple[float, int, list[float], list[str], dict[str, Any]]] = field(
        default_factory=list
    )
    history: list[dict[str, Any]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)  # the joined decision log

    @property
    def config(self) -> Path:
        return self.out / "demo.toml"

    @property
    def db(self) -> Path:
        return self.out / "demo.db"

    @property
    def report(self) -> Path:
        return self.out / "report.html"

    @property
    def log(self) -> Path:
        return self.out / "decisions.jsonl"

    def at(self, epoch: float) -> tuple[int, float]:
        """(requests sent, seconds since the start) at an epoch time."""
        import numpy as np

        times = [look[0] for look in self.looks] or [self.started]
        sent = [look[1] for look in self.looks] or [0]
        return round(float(np.interp(epoch, times, sent))), epoch - self.started
