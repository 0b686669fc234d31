"""examples/vit_digits.py: timm's VisionTransformer trained on the bundled digits and adapted under
a latency and an energy budget, its attention heads and MLP widths shrinking."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "vit_digits.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    """examples/vit_digits.py as a module; skipped where timm (a test-only peer) is not installed."""
    if importlib.util.find_spec("timm") is None:
        pytest.skip("examples/vit_digits.py needs timm (a test-only peer), which is not installed")
    spec = importlib.util.spec_from_file_location("vit_digits", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shrunk(result: object) -> list[str]:
    """The attention groups (heads) and MLP hidden widths that the final network narrowed."""
    final = result.final.network  # type: ignore[attr-defined]
    start = result.family[0].network  # type: ignore[attr-defined]
    return [g.id for g in start.groups if (start.analysis.info[g.id].unit > 1 or g.id.endswith("mlp.fc1"))
            and final.widths[g.id] < g.width]


def _scored(result: object) -> list[str]:
    """The attention groups (heads) and MLP hidden widths that some scored proposal narrowed."""
    start = result.family[0].network  # type: ignore[attr-defined]
    ids = {g.id for g in start.groups if start.analysis.info[g.id].unit > 1 or g.id.endswith("mlp.fc1")}
    return sorted({g for p in result.history if p.score is not None  # type: ignore[attr-defined]
                   for g in ids if p.widths.get(g, start.group(g).width) < start.group(g).width})


def _check(example: ModuleType, argv: list[str], final_shrinks: bool = True) -> None:
    """The example's run meets both budgets as measured; its final narrowed heads or MLP widths
    (`final_shrinks`), else at least some scored proposal did (which one wins a tiny run is the
    machine's noise: one step can meet both budgets by narrowing the embedding alone)."""
    result, start_test = example.adapt(example.arguments(argv))
    assert start_test is not None and 0.0 <= start_test <= 1.0
    for resource, budget in result.budgets.items():
        figure = result.final.measured.get(resource, result.final.resources[resource])
        assert figure <= budget, f"{resource}: {figure} over its budget {budget}"
    assert {"latency", "energy"} <= set(result.budgets)
    kept = example.widths_kept(result.family[0].network, result.final.network)
    assert _shrunk(result) if final_shrinks else _scored(result), kept
    assert result.final.test_accuracy is not None


def test_the_report_names_every_blocks_heads_and_mlp_width(example: ModuleType) -> None:
    import torch

    import netopt

    model = example.vit(dim=48, depth=2, heads=2).eval()
    net = netopt.trace(model, torch.randn(1, 1, 28, 28)).network
    heads = next(g.id for g in net.groups if net.analysis.info[g.id].unit > 1)
    lines = example.widths_kept(net, net.with_widths({heads: 1, "blocks.1.mlp.fc1": 48}))
    assert f"  {heads}: 1 of 2 heads (of 24 channels each)" in lines
    assert "  blocks.1.mlp.fc1: MLP hidden width 48 of 96" in lines
    assert sum("heads" in line for line in lines) == 2 and sum("MLP" in line for line in lines) == 2


def test_a_tiny_vit_is_adapted_under_both_budgets_and_its_heads_or_mlp_are_shrunk_and_scored(
        example: ModuleType, tmp_path: Path) -> None:
    _check(example, ["--run", str(tmp_path / "run"), "--depth", "1", "--dim", "48", "--heads", "2", "--steps", "20",
                     "--short", "2", "--long", "2", "--latency", "80%", "--energy", "70%", "--reduction", "15%",
                     "--calibration", "4"],
           final_shrinks=False)


@pytest.mark.slow
def test_the_default_run_adapts_the_vit_under_both_budgets(example: ModuleType, tmp_path: Path) -> None:
    _check(example, ["--run", str(tmp_path / "run")])
