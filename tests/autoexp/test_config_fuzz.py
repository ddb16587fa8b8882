"""The config file against generated mistakes (hypothesis, derandomized): the README's
runtime configs, each with one value replaced, one key removed or one unknown key added,
are either accepted or refused with a ConfigError naming where; never another exception
(a TypeError, an OverflowError) from deep inside."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoexp.config import parse_config
from autoexp.errors import ConfigError
from tests.test_readme import toml_blocks

EXAMPLES = 400

# what a TOML file can hold: its scalars (integers of any size, inf and nan, dates are
# left out), arrays and tables
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from([10**400, -(10**400), 0, -1, 1, 2]),
    st.floats(),
    st.text(max_size=10),
    st.sampled_from(["", "control", "thompson-beta", "http://127.0.0.1:1", "/x", "GET"]),
)
toml_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def runtime_configs() -> list[dict[str, Any]]:
    """The README's configs that ``parse_config`` reads (blocks 0 and 1 are a scenario
    and a sweep for the simulators)."""
    return [tomllib.loads(block) for block in toml_blocks()[2:]]


def places(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path and list index in a parsed config."""
    out = [path] if path else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += places(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += places(v, (*path, i))
    return out


@st.composite
def mistakes(draw: Any, bases: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """One of ``bases`` with one value replaced, one key removed or one key (or list
    item) added; and what was done, for the failure message."""
    raw = copy.deepcopy(draw(st.sampled_from(bases)))
    path = draw(st.sampled_from(places(raw)))
    parent = raw
    for key in path[:-1]:
        parent = parent[key]
    how = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
    if how == "replace":
        parent[path[-1]] = draw(toml_values)
    elif how == "remove":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=8))] = draw(toml_values)
    else:
        parent.append(draw(toml_values))
    return raw, f"{how} {'.'.join(map(str, path))}"


def test_the_readme_configs_parse_as_they_are() -> None:
    configs = runtime_configs()
    assert len(configs) == 4
    for raw in configs:
        assert parse_config(raw).experiments


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mistakes(runtime_configs()))
def test_a_config_with_a_mistake_is_accepted_or_refused_by_name(case: Any) -> None:
    accepted_or_refused(parse_config, case, ConfigError)


def accepted_or_refused(parse: Any, case: tuple[dict[str, Any], str], error: type) -> None:
    """``parse(raw)`` returns, or raises ``error`` of the form ``"<where>: <what is
    wrong>"`` (the dotted path, a key as it was written even if odd, then the reason);
    any other exception fails the test: the user would get no path."""
    raw, what = case
    try:
        parse(raw)
    except error as e:
        assert str(e).partition(": ")[2].strip(), (what, str(e))
    except Exception as e:
        pytest.fail(f"{what}: {type(e).__name__}: {e}")
