"""The README's scenario, sweep and runtime config snippets are real files: they parse
and build."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from autoexp.config import parse_config
from simulators.config import load_sweep, scenario

ROOT = Path(__file__).resolve().parents[1]


def toml_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```toml\n(.*?)```", text, flags=re.S)


def test_readme_scenario_and_sweep_snippets_build(tmp_path: Path) -> None:
    blocks = toml_blocks()
    assert len(blocks) == 6
    spec = scenario(tomllib.loads(blocks[0]))
    assert spec.arm_names == ("control", "better", "harmful")
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        blocks[1].replace('"three-arms.toml"', f'"{ROOT / "examples" / "three-arms.toml"}"')
    )
    assert len(load_sweep(sweep).cells) == 24
    config = parse_config(tomllib.loads(blocks[2]))
    assert [e.name for e in config.experiments] == ["ranker"]
    proxied = parse_config(tomllib.loads(blocks[3]))
    assert proxied.proxy is not None and proxied.proxy.upstream == "http://127.0.0.1:8080"
    (route,) = proxied.routes
    assert route.upstreams == (None, "http://127.0.0.1:8081", None)


def test_readme_autonomous_loop_snippets_build() -> None:
    blocks = toml_blocks()
    contextual = parse_config(tomllib.loads(blocks[4]))
    (spec,) = contextual.experiments
    assert spec.context is not None and spec.policy.context_dim == spec.context.dim == 11
    assert len(contextual.routes) == 1
    (tune,) = parse_config(tomllib.loads(blocks[5])).experiments
    assert tune.generate is not None and tune.generate.challengers == 3
    assert tune.alternatives[1:] == tune.generate.slot_names()
