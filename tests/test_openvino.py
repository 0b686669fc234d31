"""The OpenVINO backend against the real runtime: fp32 and int8, its compile settings, its refusals."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from onnx import TensorProto, helper

import netopt
from netopt.errors import ConfigError, MeasurementError
from netopt.lut import LookupTable
from netopt.measure.base import NoisyMeasurementWarning
from netopt.measure.platform import cores
from netopt.measure.registry import BACKENDS, QUICK
from netopt.testing.backends import check_measurement, small_model
from netopt.zoo import MobileNetV1

pytest.importorskip("openvino", reason="the OpenVINO runtime is not installed: pip install 'netopt[openvino]'")

from netopt.measure.openvino import OpenVINO, kernel_precisions

REPRESENTATIVE = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))]


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore", NoisyMeasurementWarning)


def _backend(precision: str = "fp32", threads: int = 1) -> OpenVINO:
    return OpenVINO(precision=precision, threads=threads, settings=QUICK, representative=REPRESENTATIVE)  # type: ignore[arg-type]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_fp32_and_int8_measure_the_small_model_and_mobilenet_side_by_side(precision: str) -> None:
    backend = _backend(precision)
    assert backend.interleaves
    mobilenet = MobileNetV1(0.25, 32, num_classes=10).eval()
    small, big = backend.measure_together([small_model(), (mobilenet, torch.randn(1, 3, 32, 32))])
    for m in (small, big):
        check_measurement(m, "ms")
        assert m.fingerprint == backend.fingerprint.key and len(m.samples) >= QUICK.runs
    check_measurement(backend.measure(mobilenet, torch.randn(1, 3, 32, 32)), "ms")


def test_int8_runs_the_convolutions_with_int8_kernels_and_fp32_with_fp32_ones() -> None:
    model, x = small_model()
    int8, fp32 = _backend("int8"), _backend("fp32")
    assert kernel_precisions(int8.compile(int8.onnx(model, x))) <= {"u8", "i8"}
    assert kernel_precisions(fp32.compile(fp32.onnx(model, x))) == {"f32"}


def test_it_compiles_with_the_threads_one_stream_the_latency_hint_and_fp32_arithmetic() -> None:
    threads = min(2, cores())  # OpenVINO caps its threads at the cores this process may use
    backend = _backend(threads=threads)
    compiled = backend.compile(backend.onnx(*small_model()))
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == threads
    assert int(compiled.get_property("NUM_STREAMS")) == 1
    assert str(compiled.get_property("PERFORMANCE_HINT")).endswith("LATENCY")
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"


def test_the_fingerprint_names_runtime_version_device_precision_threads_and_cpu() -> None:
    fields = _backend("int8").fingerprint.fields
    assert {"backend", "openvino", "device", "precision", "threads", "cpu", "quantizer"} <= set(fields)
    assert (fields["backend"], fields["device"], fields["precision"], fields["threads"]) == ("openvino", "CPU",
                                                                                              "int8", 1)
    assert len({b.fingerprint.key for b in (_backend(), _backend("int8"), _backend(threads=2))}) == 3


def _onnx_with(op: str) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_model_openvino_cannot_read_is_one_line_naming_the_op_and_the_fix() -> None:
    rule = r"^OpenVINO could not compile odd for CPU: it has no conversion rule for the ONNX op NoSuchOp"
    with pytest.raises(MeasurementError, match=rule + r".*; replace that op .* OnnxRuntimeCPU$") as info:
        _backend().measure_onnx(_onnx_with("NoSuchOp"), (1, 4), "odd")
    assert "\n" not in str(info.value)
    with pytest.raises(MeasurementError, match=r"could not compile garbage for CPU: Unable to read the model"):
        _backend().measure_onnx(b"garbage", (1, 4), "garbage")


def test_bad_settings_and_an_absent_device_are_one_config_error_line() -> None:
    with pytest.raises(ConfigError, match=r"^OpenVINO: setting threads=0 is invalid"):
        OpenVINO(threads=0)
    with pytest.raises(ConfigError, match=r"^OpenVINO\(device='NO_SUCH_DEVICE'\): no such device here; OpenVINO "
                                          r"sees .*CPU.*: give one of them$"):
        OpenVINO(device="NO_SUCH_DEVICE")


def test_the_registry_builds_it_by_name() -> None:
    backend = BACKENDS["openvino"].make(threads=1, settings=QUICK, precision="int8", representative=REPRESENTATIVE)
    assert isinstance(backend, OpenVINO) and backend.ov.precision == "int8"
    assert BACKENDS["openvino"].extra == "openvino" and BACKENDS["openvino"].requires == ("openvino",)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_lookup_table_on_openvino_estimates_a_network_after_calibration(tmp_path: Path, precision: str) -> None:
    model, x = small_model()
    traced = netopt.trace(model, x)
    lut = LookupTable.open(tmp_path / "lut.sqlite", _backend(precision))
    lut.calibrate(traced, max_networks=2)
    estimate = lut.estimate(traced.network)
    assert 0 < estimate < float("inf")
    assert LookupTable.open(tmp_path / "lut.sqlite", _backend(precision)).estimate(traced.network) == estimate
