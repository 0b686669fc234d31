"""int8 as a static QDQ model: what the shared quantizer makes, and ONNX Runtime measuring it (nothing mocked)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from netopt.errors import ConfigError, MeasurementError
from netopt.measure import Backend, Fingerprint, OnnxRuntimeCPU
from netopt.measure.base import NoisyMeasurementWarning
from netopt.measure.onnxrt import export_qdq
from netopt.measure.platform import cpu_model
from netopt.measure.qdq import QDQ_SCHEME, quantize_qdq
from netopt.measure.registry import BACKENDS, QUICK
from netopt.testing.backends import BackendContract, check_measurement, small_model
from netopt.zoo import MobileNetV1

REPRESENTATIVE = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))]


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore", NoisyMeasurementWarning)


def _int8(name: str) -> Backend:
    """The registered backend's contract example at int8, on a small representative batch."""
    entry = BACKENDS[name]
    if entry.missing() is not None:
        pytest.skip(str(entry.missing()))
    return entry.make(**{**(entry.example or {}), "precision": "int8",  # type: ignore[no-any-return]
                         "representative": REPRESENTATIVE})


class TestInt8Backends(BackendContract):
    runs_at_least = QUICK.runs

    @pytest.fixture(params=["onnxruntime", "openvino"])
    def backend(self, request: pytest.FixtureRequest) -> Backend:
        return _int8(request.param)


def test_the_qdq_model_quantizes_weights_per_channel_symmetric_and_activations_to_uint8() -> None:
    model, x = small_model()
    graph = onnx.load_model_from_string(export_qdq(model, x, REPRESENTATIVE)).graph
    kinds = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in kinds and "DequantizeLinear" in kinds
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    conv = next(n for n in graph.node if n.op_type == "Conv")
    weight = next(n for n in graph.node if n.output[0] == conv.input[1])
    assert weight.op_type == "DequantizeLinear"
    w, scale, zero = (values[i] for i in weight.input)
    assert w.dtype == np.int8 and scale.shape == (w.shape[0],) and not zero.any()  # per channel, symmetric
    activation = next(n for n in graph.node if n.op_type == "QuantizeLinear")
    assert values[activation.input[2]].dtype == np.uint8


def test_the_int8_model_computes_what_the_module_computes_within_quantization_error() -> None:
    model, x = small_model()
    session = OnnxRuntimeCPU().session(export_qdq(model, x, REPRESENTATIVE))
    for batch in REPRESENTATIVE[0].split(1):
        got, want = session.run(None, {"x": batch.numpy()})[0], model(batch).detach().numpy()
        assert np.abs(got - want).max() <= 0.05 * np.abs(want).max() + 1e-3


def test_ort_int8_has_its_own_fingerprint_and_fp32_keeps_todays() -> None:
    import onnxruntime

    fp32 = OnnxRuntimeCPU(threads=1)
    today = Fingerprint({"backend": "onnxruntime-cpu", "onnxruntime": onnxruntime.__version__,
                         "torch": torch.__version__.split("+")[0], "cpu": cpu_model(), "threads": 1,
                         "optimization": "all", "exporter": "legacy"})
    assert fp32.fingerprint.key == today.key and fp32.precision == "fp32"
    int8 = OnnxRuntimeCPU(threads=1, precision="int8", representative=REPRESENTATIVE)
    assert int8.fingerprint.key != today.key
    assert int8.fingerprint.diff(today) == ["precision: 'int8' != None", f"quantization: {QDQ_SCHEME!r} != None"]


@pytest.mark.parametrize("backend", ["OnnxRuntimeCPU", "OpenVINO"])
@pytest.mark.parametrize("representative", [None, []])
def test_int8_without_representative_inputs_is_one_config_error_line(backend: str, representative: list[int]) -> None:
    import netopt.measure.openvino as ov

    cls = {"OnnxRuntimeCPU": OnnxRuntimeCPU, "OpenVINO": ov.OpenVINO}[backend]
    with pytest.raises(ConfigError, match=rf"^{backend}\(precision='int8'\) needs representative inputs .*"
                                          r"pass representative=") as info:
        cls(precision="int8", representative=representative)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"precision='int4' is not one of fp32, int8"):
        cls(precision="int4")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_ort_measures_the_small_model_and_mobilenet_side_by_side(precision: str) -> None:
    backend = OnnxRuntimeCPU(settings=QUICK, precision=precision, representative=REPRESENTATIVE)  # type: ignore[arg-type]
    mobilenet = MobileNetV1(0.25, 32, num_classes=10).eval()
    small, big = backend.measure_together([small_model(), (mobilenet, torch.randn(1, 3, 32, 32))])
    for m in (small, big):
        check_measurement(m, "ms")
        assert m.fingerprint == backend.fingerprint.key and len(m.samples) >= QUICK.runs


def test_a_model_that_cannot_be_quantized_is_one_measurement_error_line() -> None:
    with pytest.raises(MeasurementError, match=r"^quantizing garbage to int8 \(static QDQ.* failed: .*; measure it "
                                               r"with precision='fp32'") as info:
        quantize_qdq(b"not an onnx model", [np.zeros((1, 3), np.float32)], "garbage")
    assert "\n" not in str(info.value)
    with pytest.raises(MeasurementError, match="needs representative inputs, got none"):
        quantize_qdq(b"", [], "nothing")
