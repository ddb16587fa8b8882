"""Scenario files against generated mistakes (hypothesis, derandomized): the examples'
scenarios and the README's, each with one value replaced, one key removed or one key
added, either build or are refused with a ScenarioError naming where; never another
exception from deep inside."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings

from simulators.config import ScenarioError, scenario
from tests.autoexp.test_config_fuzz import accepted_or_refused, mistakes
from tests.test_readme import toml_blocks

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 400


def scenarios() -> list[dict[str, Any]]:
    """Every scenario the project ships: examples/*.toml but the sweep and the tuning
    file (other kinds of file), and the README's."""
    other = {"sweep.toml", "tuning.toml"}
    files = sorted(p for p in (ROOT / "examples").glob("*.toml") if p.name not in other)
    return [tomllib.loads(p.read_text()) for p in files] + [tomllib.loads(toml_blocks()[0])]


def test_the_shipped_scenarios_build_as_they_are() -> None:
    raws = scenarios()
    assert len(raws) == 6
    for raw in raws:
        assert scenario(raw, base_dir=ROOT / "examples").arm_names


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mistakes(scenarios()))
def test_a_scenario_with_a_mistake_is_accepted_or_refused_by_name(case: Any) -> None:
    accepted_or_refused(lambda raw: scenario(raw, base_dir=ROOT / "examples"), case, ScenarioError)
