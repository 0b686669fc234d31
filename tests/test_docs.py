"""The documentation keeps its promises: entry points carry a runnable example, the README stays
short, the config reference is a config netopt accepts, and the site renders doctests as code."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

ENTRY_POINTS = (
    "netopt.trace",
    "netopt.ir.Network.with_widths",
    "netopt.LookupTable",
    "netopt.Problem",
    "netopt.ProgressiveBarrier",
    "netopt.NetAdaptV2",
    "netopt.UniformWidth",
    "netopt.RandomSearch",
    "netopt.OptunaSearch",
    "netopt.GeometricProgram",
)
"""The public entry points a user starts from (issue 29): each shows itself in a doctest."""


def resolve(dotted: str) -> Any:
    """`netopt.ir.Network.with_widths` -> the object, through netopt's lazy attributes."""
    module, *rest = dotted.split(".")
    found: Any = importlib.import_module(module)
    for part in rest:
        found = getattr(found, part)
    return found


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_a_public_entry_point_carries_a_runnable_example(name: str) -> None:
    tests = doctest.DocTestFinder(recurse=False).find(resolve(name), name)
    examples = sum(len(t.examples) for t in tests)
    assert examples > 0, f"{name}'s docstring has no example: add a short '>>>' one that runs (STYLE.md)"


def test_doctests_run_with_the_test_suite() -> None:
    pytest_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--doctest-modules" in pytest_config["addopts"].split()
    assert "netopt" in pytest_config["testpaths"]


def test_the_readme_reads_in_five_minutes() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move the depth to a page of docs/"
    for command in ("make demo", "make test"):
        assert command in "\n".join(lines)


def toml_blocks(page: str) -> list[dict[str, Any]]:
    text = (ROOT / page).read_text()
    return [tomllib.loads(block.split("```")[0]) for block in text.split("```toml\n")[1:]]


def test_the_config_reference_is_a_config_netopt_accepts() -> None:
    from netopt.app.config import AdaptConfig, CompareConfig

    adapt, compare = toml_blocks("docs/cli.md")
    assert AdaptConfig(**adapt).model_dump(exclude={"strategy"}) == AdaptConfig().model_dump(exclude={"strategy"})
    assert CompareConfig(**adapt, **compare).compare.budgets == ["70%", "50%", "35%"]


def extension() -> ModuleType:
    spec = importlib.util.spec_from_file_location("doctest_blocks", ROOT / "docs" / "_griffe" / "doctest_blocks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_renders_a_bare_doctest_as_code() -> None:
    pytest.importorskip("griffe")
    text = "Shrink a group.\n\n>>> net.with_widths({'0': 8})\nNetwork(...)\n\nThen measure."
    fenced = extension().fence_doctests(text)
    assert fenced == ("Shrink a group.\n\n```pycon\n>>> net.with_widths({'0': 8})\nNetwork(...)\n```\n\n"
                      "Then measure.")


def test_the_site_leaves_fenced_code_and_closes_a_final_doctest() -> None:
    pytest.importorskip("griffe")
    fence = extension().fence_doctests
    assert fence("```python\n>>> x\n```") == "```python\n>>> x\n```"
    assert fence("Ends with:\n>>> 1 + 1\n2") == "Ends with:\n```pycon\n>>> 1 + 1\n2\n```"
