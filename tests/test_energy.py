"""Energy and memory estimators against hand calculations; RAPL against a fake powercap tree."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from hypothesis import given
from torch import nn

import netopt
from netopt.errors import ConfigError, MeasurementError
from netopt.ir import Builder, Network, OpKind, activation_bytes
from netopt.ir.ops import OpaqueAttrs
from netopt.measure.base import Estimator, MeasureSettings
from netopt.measure.energy import (
    Accesses,
    EnergyCosts,
    EnergyModel,
    LayerEnergy,
    RaplEnergy,
    counter_delta,
    find_rapl_domains,
    total_by_level,
)
from netopt.measure.memory import MemoryModel
from netopt.testing import strategies as nst
from netopt.testing.torch_checks import module_params
from netopt.zoo import MobileNetV1

# --- EnergyModel: hand calculations ---------------------------------------------------------


def conv_linear() -> Network:
    """(3, 16, 16) -> conv 3x3, 8 filters, pad 1 -> flatten -> linear 2048 -> 10 (bias)."""
    b = Builder((3, 16, 16))
    x = b.conv(b.input, 8, 3)
    return b.build(b.linear(b.flatten(x), 10))


def test_conv_and_linear_match_the_documented_formulas() -> None:
    # conv: M = 8*16*16*3*3*3 = 55296, I = 768, W = 216, O = 2048; M/16 = 3456, M/256 = 216.
    conv = Accesses(compute=55296, rf=4 * 55296, noc=3 * 3456, buffer=768 + 216 + 2048,
                    dram=216 + 768)  # weights once + the network input; O (4 KiB) stays on chip
    # linear: M = 2048*10 = 20480, I = 2048, W = 20490 (bias), O = 10; M/16 = 1280, M/256 = 80.
    linear = Accesses(compute=20480, rf=4 * 20480, noc=2048 + 20490 + 1280, buffer=2048 + 20490 + 80,
                      dram=20490 + 10)  # weights once + the network output written once
    model = EnergyModel()
    assert model.accesses(conv_linear()) == {"conv2d0": conv, "flatten0": Accesses(), "linear0": linear}
    breakdown = model.breakdown(conv_linear())
    assert breakdown["conv2d0"] == LayerEnergy(55296, 221184, 2 * 10368, 6 * 3032, 200 * 984)
    assert breakdown["linear0"] == LayerEnergy(20480, 81920, 2 * 23818, 6 * 22618, 200 * 20500)
    assert breakdown["conv2d0"].total == 512208
    assert model.estimate(conv_linear()) == 512208 + 4385744
    assert model.unit == "E_MAC"


def test_a_tensor_bigger_than_the_buffer_goes_through_dram() -> None:
    small = EnergyModel(accelerator={"buffer_kib": 1})  # the conv output, 4 KiB, no longer fits
    accesses, default = small.accesses(conv_linear()), EnergyModel().accesses(conv_linear())
    assert accesses["conv2d0"].dram == default["conv2d0"].dram + 2048  # written once
    assert accesses["linear0"].dram == default["linear0"].dram + 2048  # read once through the flatten view


def test_depthwise_conv_reuse() -> None:
    b = Builder((8, 8, 8))
    net = b.build(b.conv(b.input, 8, 3, groups=8))
    # M = 8*8*8*9 = 4608, I = 512, W = 72, O = 512; M/16 = 288, M/256 = 18
    expected = Accesses(4608, 4 * 4608, 512 + 288 + 512, 512 + 72 + 512, 72 + 512 + 512)
    assert EnergyModel().accesses(net)["conv2d0"] == expected


def conv_bn_relu_pool() -> Network:
    b = Builder((3, 8, 8))
    x = b.maxpool(b.relu(b.bn(b.conv(b.input, 8, 1))), 2)
    return b.build(b.linear(b.flatten(x), 4, bias=False))


def test_vector_ops_and_batchnorm_folding() -> None:
    o = 8 * 8 * 8  # conv, BN and ReLU outputs; the pool makes 8*4*4 = 128
    folded = EnergyModel().accesses(conv_bn_relu_pool())
    assert folded["batchnorm0"] == Accesses()
    assert folded["relu0"] == Accesses(o, 3 * o, 2 * o, 2 * o, 0)
    assert folded["maxpool2d0"] == Accesses(128 * 4, 3 * 128 * 4, o + 128, o + 128, 0)
    unfolded = EnergyModel(accelerator={"fold_bn": False}).accesses(conv_bn_relu_pool())
    assert unfolded["batchnorm0"] == Accesses(o, 3 * o, 2 * o, 2 * o, 0)
    assert unfolded["conv2d0"] == folded["conv2d0"]


def test_an_opaque_block_moves_its_inputs_output_and_parameters_once() -> None:
    b = Builder((4, 4, 4))
    x = b.add(OpKind.OPAQUE, [b.input], OpaqueAttrs(module_type="Mystery", out_shape=(8, 2, 2), params=100, macs=1000))
    moved = 64 + 32 + 100
    dram = 100 + 64 + 32  # parameters, the network input read, the network output written
    assert EnergyModel().accesses(b.build(x))[x] == Accesses(1000, 4000, moved, moved, dram)


def test_a_custom_cost_table_reprices_the_same_accesses() -> None:
    net = conv_linear()
    total = total_by_level({k: LayerEnergy(a.compute, a.rf, a.noc, a.buffer, a.dram)
                            for k, a in EnergyModel().accesses(net).items()})
    custom = EnergyModel(costs={"mac": 2, "dram": 100})
    expected = 2 * total.compute + total.rf + 2 * total.noc + 6 * total.buffer + 100 * total.dram
    assert custom.estimate(net) == pytest.approx(expected, rel=1e-12)
    assert EnergyModel().estimate(net) - custom.estimate(net) == pytest.approx(100 * total.dram - total.compute)
    assert EnergyModel(costs=EnergyCosts(mac=2, dram=100)).estimate(net) == custom.estimate(net)


def test_fingerprint_keys_by_cost_table_and_hardware() -> None:
    assert EnergyModel().fingerprint.key == EnergyModel(costs=EnergyCosts()).fingerprint.key
    assert EnergyModel().fingerprint.key != EnergyModel(costs={"dram": 100}).fingerprint.key
    assert EnergyModel().fingerprint.key != EnergyModel(accelerator={"buffer_kib": 64}).fingerprint.key
    assert EnergyModel().fingerprint.diff(EnergyModel(costs={"dram": 100}).fingerprint) == [
        "cost_dram: 200.0 != 100.0"]
    assert isinstance(EnergyModel(), Estimator) and isinstance(MemoryModel(), Estimator)


@pytest.mark.parametrize(("costs", "field"), [
    ({"dram": -1.0}, "dram"), ({"noc": math.nan}, "noc"), ({"rf": math.inf}, "rf"),
    ({"mac": 0}, "mac"), ({"sram": 3.0}, "sram"),
])
def test_invalid_cost_tables_name_the_field(costs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError, match=f"setting {field}="):
        EnergyModel(costs=costs)


@pytest.mark.parametrize(("accelerator", "field"), [
    ({"buffer_kib": 0}, "buffer_kib"), ({"array_reuse": 8}, "array_reuse"), ({"bank": 2}, "bank"),
])
def test_invalid_accelerators_name_the_field(accelerator: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError, match=f"setting {field}="):
        EnergyModel(accelerator=accelerator)


MODELS = (EnergyModel(), EnergyModel(accelerator={"buffer_kib": 0.25, "fold_bn": False, "rf_reuse": 1}))


@given(nst.networks_with_widths())
def test_shrinking_never_increases_energy_or_memory(pair: tuple[Network, Network]) -> None:
    net, smaller = pair
    for model in MODELS:
        big, small = total_by_level(model.breakdown(net)), total_by_level(model.breakdown(smaller))
        for level in fields(LayerEnergy):
            assert getattr(small, level.name) <= getattr(big, level.name), level.name
        assert model.estimate(smaller) <= model.estimate(net)
    assert MemoryModel().estimate(smaller) <= MemoryModel().estimate(net)


# --- MemoryModel ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet() -> tuple[nn.Module, Network]:
    model = MobileNetV1(0.5, 128).eval()
    return model, netopt.trace(model, torch.randn(1, 3, 128, 128)).network


def test_memory_is_weights_plus_peak_activations(mobilenet: tuple[nn.Module, Network]) -> None:
    model, net = mobilenet
    assert MemoryModel().breakdown(net) == {"weights": module_params(model) * 4,
                                            "activations": activation_bytes(net)}
    assert MemoryModel().estimate(net) == module_params(model) * 4 + activation_bytes(net)
    assert MemoryModel(bytes_per_element=1).estimate(net) == module_params(model) + activation_bytes(net, 1)
    assert MemoryModel().unit == "bytes"
    assert MemoryModel().fingerprint.key != MemoryModel(bytes_per_element=2).fingerprint.key


def test_memory_refuses_a_bad_element_size() -> None:
    with pytest.raises(ConfigError, match="bytes_per_element=0"):
        MemoryModel(bytes_per_element=0)


def test_energy_model_on_mobilenet_is_dominated_by_data_movement(mobilenet: tuple[nn.Module, Network]) -> None:
    _, net = mobilenet
    total = total_by_level(EnergyModel().breakdown(net))
    relus = sum(math.prod(net.shape(n.name)) for n in net.nodes if n.op is OpKind.RELU)
    pooled = sum(math.prod(net.shape(n.inputs[0])) for n in net.nodes if n.op is OpKind.ADAPTIVE_AVGPOOL2D)
    assert total.compute == netopt.ir.macs(net) + relus + pooled  # BN folded: it costs nothing
    assert total.data > 5 * total.compute  # Yang et al.: data movement dominates


# --- RaplEnergy -------------------------------------------------------------------------------


def write_atomically(path: Path, value: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)


def make_zone(root: Path, zone: str, name: str, energy: int, max_range: int) -> Path:
    folder = root / zone
    folder.mkdir(parents=True)
    (folder / "name").write_text(name + "\n")
    (folder / "max_energy_range_uj").write_text(f"{max_range}\n")
    write_atomically(folder / "energy_uj", energy)
    return folder


def test_no_rapl_says_so_and_points_to_the_energy_model(tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match=r"no RAPL package domain.*EnergyModel"):
        RaplEnergy(root=tmp_path / "powercap")
    if not any(Path("/sys/class/powercap").glob("intel-rapl:*")):  # this development machine
        with pytest.raises(MeasurementError, match=r"no RAPL package domain.*EnergyModel"):
            RaplEnergy()


def test_counter_delta_handles_wrap_around() -> None:
    assert counter_delta(1_000, 5_500, 10_000) == 4_500
    assert counter_delta(7_000, 7_000, 10_000) == 0
    assert counter_delta(9_000, 500, 10_000) == 1_500  # 1,000 to the top, then 500 past zero


def test_reads_package_domains_and_sums_deltas_across_a_wrap(tmp_path: Path) -> None:
    p0 = make_zone(tmp_path, "intel-rapl:0", "package-0", 9_000, 10_000)
    p1 = make_zone(tmp_path, "intel-rapl:1", "package-1", 100, 10_000)
    make_zone(tmp_path, "intel-rapl:0:0", "core", 5, 10_000)  # a sub-zone: inside package-0
    make_zone(tmp_path, "intel-rapl:2", "psys", 5, 10_000)  # the platform: overlaps the packages
    assert [d.name for d in find_rapl_domains(tmp_path)] == ["package-0", "package-1"]
    rapl = RaplEnergy(root=tmp_path)
    before = rapl.read()
    write_atomically(p0 / "energy_uj", 500)
    write_atomically(p1 / "energy_uj", 2_100)
    assert before == (9_000, 100)
    assert rapl.energy_uj(before, rapl.read()) == 1_500 + 2_000
    assert "package-0,package-1" in rapl.fingerprint.describe()
    assert rapl.unit == "mJ"


def test_an_unreadable_counter_is_refused_at_construction(tmp_path: Path) -> None:
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0", 0, 10_000)
    os.remove(zone / "energy_uj")
    (zone / "energy_uj").mkdir()  # exists, but cannot be read as a counter
    with pytest.raises(MeasurementError, match=r"cannot be read.*EnergyModel"):
        RaplEnergy(root=tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_root_only_counter_says_how_to_grant_access(tmp_path: Path) -> None:
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0", 0, 10_000)
    (zone / "energy_uj").chmod(0)
    with pytest.raises(MeasurementError, match="not readable"):
        RaplEnergy(root=tmp_path)


@pytest.fixture
def running_counter(tmp_path: Path) -> Iterator[tuple[Path, float]]:
    """A package counter that a thread advances at 10 W (1e7 uJ/s), wrapping at 2**32 mid-test."""
    watts, max_range, start = 10.0, 2**32, 2**32 - 200_000
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0", start, max_range)
    stop, t0 = threading.Event(), time.perf_counter()

    def advance() -> None:
        while not stop.is_set():
            value = (start + int(watts * 1e6 * (time.perf_counter() - t0))) % max_range
            write_atomically(zone / "energy_uj", value)
            time.sleep(0.0005)

    thread = threading.Thread(target=advance, daemon=True)
    thread.start()
    yield tmp_path, watts
    stop.set()
    thread.join()


@pytest.mark.filterwarnings("ignore::netopt.measure.base.NoisyMeasurementWarning")
def test_measures_energy_per_run_from_a_running_counter(running_counter: tuple[Path, float]) -> None:
    root, watts = running_counter
    settings = MeasureSettings(warmup=1, runs=5, min_seconds=0.03, max_runs=100_000)
    rapl = RaplEnergy(root=root, settings=settings, samples=3)
    start = time.perf_counter()
    m = rapl.measure(nn.Sequential(nn.Linear(8, 16), nn.ReLU()).eval(), torch.randn(1, 8))
    elapsed = time.perf_counter() - start
    assert m.unit == "mJ" and len(m.samples) == 3 and m.fingerprint == rapl.fingerprint.key
    assert all(0 < s <= watts * elapsed * 1e3 / settings.runs for s in m.samples)
