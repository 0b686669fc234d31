"""Lookup tables price opaque blocks: a unit headed by a block kept whole is measured with the
traced model's module for it, and signed with what that module computes, so that two models
sharing one table share an entry only for the same computation."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

import netopt
from netopt.errors import LookupTableError
from netopt.ir import Builder
from netopt.lut import LookupTable, units
from netopt.lut.probe import describe_block, unit_module
from netopt.measure import MeasureSettings, NoisyMeasurementWarning, OnnxRuntimeCPU, TorchEager

QUICK = MeasureSettings(warmup=1, runs=5, min_seconds=0.0)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore", NoisyMeasurementWarning)
    warnings.filterwarnings("ignore", message=".*opaque block")


class Gate(nn.Module):
    """A block the user keeps whole: a squeeze gate whose activation and scale are settings."""

    def __init__(self, channels: int, act: type[nn.Module] = nn.ReLU, scale: float = 1.0) -> None:
        super().__init__()
        self.conv, self.act, self.scale = nn.Conv2d(channels, channels, 1), act(), scale
        self.cache: torch.Size | None = None  # filled by forward, as Ultralytics' Detect fills its shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.cache = x.shape
        return x * torch.sigmoid(self.act(self.conv(x)).mean((2, 3), keepdim=True)) * self.scale


class GatedNet(nn.Module):
    def __init__(self, act: type[nn.Module] = nn.ReLU, scale: float = 1.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.gate = Gate(16, act, scale)
        self.body = nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(64, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.gate(self.stem(x))).mean((2, 3)))


def gated(act: type[nn.Module] = nn.ReLU, scale: float = 1.0, seed: int = 0) -> netopt.Traced:
    torch.manual_seed(seed)
    return netopt.trace(GatedNet(act, scale).eval(), torch.randn(1, 3, 24, 24), opaque=["gate"])


def opaque_unit(traced: netopt.Traced) -> netopt.lut.Unit:
    (unit,) = [u for u in units(traced.network) if u.opaque]
    return unit


def eager(tmp_path: Path, name: str = "lut.sqlite", traced: netopt.Traced | None = None) -> LookupTable:
    backend = TorchEager(settings=QUICK)
    return LookupTable.open(tmp_path / name, backend, opaque=traced.opaque if traced is not None else None)


# --- signatures -------------------------------------------------------------------------------


def test_the_unit_of_an_opaque_block_runs_the_traced_models_module() -> None:
    traced = gated()
    unit = opaque_unit(traced)
    module, x = unit_module(traced.network, unit, traced.opaque)
    with torch.no_grad():
        assert torch.equal(module(x), traced.opaque["gate"](x))
    assert module.layers[0] is not traced.opaque["gate"]  # type: ignore[index]  # a copy: measuring leaves it


def test_an_opaque_units_signature_says_which_block_it_is(tmp_path: Path) -> None:
    same, other_weights = gated(), gated(seed=1)
    relu = eager(tmp_path, "a.sqlite", same).signature(opaque_unit(same))
    assert eager(tmp_path, "b.sqlite", other_weights).signature(opaque_unit(other_weights)) == relu
    for act, scale in ((nn.GELU, 1.0), (nn.ReLU, 2.0)):
        other = gated(act, scale)
        assert opaque_unit(other).describe() == opaque_unit(same).describe()  # the IR alone cannot tell
        assert eager(tmp_path, f"{act.__name__}{scale}.sqlite", other).signature(opaque_unit(other)) != relu


def test_running_a_block_leaves_its_description_as_it_was() -> None:
    traced = gated()
    before = describe_block(traced.opaque["gate"])
    traced.opaque["gate"](torch.randn(2, 16, 5, 5))
    assert describe_block(traced.opaque["gate"]) == before


def test_units_without_an_opaque_block_keep_the_signatures_stored_tables_hold(tmp_path: Path) -> None:
    b = Builder((3, 8, 8))
    net = b.build(b.linear(b.flatten(b.adaptive_avgpool(b.relu(b.bn(b.conv(b.input, 16, 3))))), 4))
    lut = eager(tmp_path)
    assert [lut.signature(u) for u in units(net)] == [u.signature for u in units(net)] == [
        "9144a8888a6474cf544a4107", "c0be068484716d429ab02dc7", "3a6ab459cb7c2f43ce54bc56"]  # as before issue 31


# --- what a table needs -----------------------------------------------------------------------


def test_a_table_without_the_blocks_module_refuses_in_one_line_naming_what_to_pass(tmp_path: Path) -> None:
    traced = gated()
    lut = eager(tmp_path)
    with pytest.raises(LookupTableError, match=r"opaque block 'gate' \(Gate\).*opaque=traced.opaque") as refused:
        lut.layer_sum(traced.network)
    assert "\n" not in str(refused.value)


def test_a_module_that_is_not_the_traced_block_is_refused(tmp_path: Path) -> None:
    traced = gated()
    lut = eager(tmp_path, traced=gated(nn.GELU))  # a Gate of the same size: the IR cannot tell
    lut.costs.blocks["gate"] = nn.Conv2d(16, 16, 1)
    with pytest.raises(LookupTableError, match=r"traced from a Gate of 272 parameters.*given a Conv2d"):
        lut.signature(opaque_unit(traced))
    with pytest.raises(LookupTableError, match=r"'gate' was given as two different modules.*once per model"):
        LookupTable(lut.store, lut.backend, opaque={"gate": gated().opaque["gate"]}).costs.add_blocks(
            gated(nn.GELU).opaque)


def test_two_models_sharing_a_table_file_measure_their_own_blocks(tmp_path: Path) -> None:
    first, second = gated(), gated(nn.GELU)
    a = eager(tmp_path, traced=first)
    a.layer_sum(first.network)
    a.close()
    b = eager(tmp_path, traced=second)
    b.layer_sum(second.network)
    assert b.measurements == 1  # the other Gate only: every other unit is the first model's
    c = eager(tmp_path, traced=gated(seed=3))
    c.layer_sum(first.network)
    assert c.measurements == 0  # the same computation, other weights


def test_calibrating_gives_the_table_the_traced_blocks(tmp_path: Path) -> None:
    traced = gated()
    lut = eager(tmp_path)  # opened without them
    lut.calibrate(traced, max_networks=2)
    assert lut.estimate(traced.network) > 0
    lut.close()
    warm = eager(tmp_path, traced=traced)
    warm.estimate(traced.network)
    assert warm.measurements == 0


def test_binding_a_constraint_hands_a_warm_table_the_traced_blocks(tmp_path: Path) -> None:
    from netopt.constraints import LatencyConstraint as Latency

    traced = gated()
    first = eager(tmp_path)
    Latency("80%", first).bind(traced.network, traced)  # calibrates, so it is given the blocks
    first.close()
    warm = eager(tmp_path)  # a later run: opened without them, its calibration stored
    with pytest.raises(LookupTableError, match="opaque"):
        warm.estimate(traced.network.scaled(0.5))
    bound = Latency("80%", warm).bind(traced.network, traced)
    assert warm.estimate(traced.network.scaled(0.5)) < bound.initial
    warm.close()


def test_the_estimator_factory_hands_the_table_the_traced_blocks(tmp_path: Path) -> None:
    from netopt.constraints import ReductionSchedule
    from netopt.constraints.registry import CONSTRAINTS, EstimatorSources

    traced = gated()
    sources = EstimatorSources(lut_path=str(tmp_path / "lut.sqlite"), opaque=traced.opaque)
    lut = CONSTRAINTS["latency"].make("50%", ReductionSchedule("2%"), sources).estimator
    assert isinstance(lut, LookupTable) and lut.costs.blocks == dict(traced.opaque)
    lut.close()


# --- priced and measured ----------------------------------------------------------------------


def test_a_calibrated_table_prices_a_network_with_an_opaque_block_close_to_its_measurement(tmp_path: Path) -> None:
    traced = gated()
    backend = OnnxRuntimeCPU(threads=1, settings=MeasureSettings(warmup=3, runs=20, min_seconds=0.0))
    lut = LookupTable.open(tmp_path / "ort.sqlite", backend, opaque=traced.opaque)
    lut.calibrate(traced, max_networks=4)
    body = {g.id: g.min_width for g in traced.network.groups}
    half = traced.network.with_widths({g.id: max(g.min_width, g.width // 2) for g in traced.network.groups})
    for net in (traced.network, half, traced.network.with_widths(body)):
        (measured,) = lut.measured(traced, [net])
        assert lut.estimate(net) == pytest.approx(measured.median, rel=0.3)
    lut.close()


# --- YOLO's decoder ---------------------------------------------------------------------------


def _ultralytics() -> ModuleType:
    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("needs ultralytics (a test-only peer), which is not installed")
    return sys.modules.get("ultralytics") or importlib.import_module("ultralytics")


def test_the_yolo_decoders_unit_is_measured_with_its_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo-config"))
    _ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    traced = netopt.trace(DetectionModel("yolov8n.yaml", nc=10, verbose=False).eval(), torch.rand(1, 3, 32, 32))
    (unit,) = [u for u in units(traced.network) if u.opaque]
    assert unit.head.attrs.module_type == "DetectDecode"
    module, x = unit_module(traced.network, unit, traced.opaque)
    others = [getattr(module, f"operand{i}") for i in range(len(unit.input_shapes) - 1)]
    with torch.no_grad():
        assert torch.equal(module(x), traced.opaque[unit.head.name](x, *others))
    lut = eager(tmp_path, traced=traced)
    lut.ensure([traced.network.scaled(0.5)])
    assert lut.store.get(lut.signature(unit)) is not None
    assert lut.costs.describe(unit)["block"]["class"] == "netopt.bridge.heads.DetectDecode"  # type: ignore[index]
