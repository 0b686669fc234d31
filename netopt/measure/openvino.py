"""OpenVINO: the network exported to ONNX (int8: the shared static QDQ model), compiled for one device."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from netopt.errors import ConfigError, MeasurementError, first_line
from netopt.frozen import Frozen
from netopt.measure.base import Backend, Fingerprint, Measurement, MeasureSettings, settings_from
from netopt.measure.onnxrt import export_onnx, export_qdq, torch_version
from netopt.measure.platform import cpu_model
from netopt.measure.precision import Precision, check_representative
from netopt.measure.qdq import QDQ_SCHEME, quantizer_version
from netopt.measure.timing import time_calls

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["OpenVINO", "OpenVINOSettings", "kernel_precisions"]


class OpenVINOSettings(Frozen):
    """Where and how OpenVINO runs: the device, the precision, the inference threads, the exporter."""

    device: str = Field("CPU", min_length=1)
    precision: Precision = "fp32"
    threads: int = Field(1, ge=1, le=256)
    exporter: Literal["legacy", "dynamo"] = "legacy"


class OpenVINO(Backend):
    """Latency (ms) of the module exported to ONNX and run by OpenVINO on `device`.

    One stream under the latency hint, `threads` inference threads, and fp32 inference precision
    (OpenVINO would run bf16 on a CPU with AMX otherwise). `precision="int8"` compiles the static
    QDQ model ONNX Runtime's int8 runs too (`netopt.measure.qdq`), which OpenVINO executes with
    int8 kernels; it is quantized on `representative` inputs, and refused without them.

    >>> from netopt.measure.registry import QUICK
    >>> from netopt.testing.backends import small_model
    >>> backend = OpenVINO(device="CPU", threads=1, settings=QUICK)
    >>> m = backend.measure(*small_model())
    >>> m.unit, len(m.samples) >= 10, backend.fingerprint.fields["backend"]
    ('ms', True, 'openvino')
    """

    unit = "ms"

    def __init__(self, device: str = "CPU", precision: Precision = "fp32", threads: int = 1,
                 settings: MeasureSettings | None = None, representative: Sequence[torch.Tensor] | None = None,
                 **openvino: Any) -> None:
        check_representative("OpenVINO", precision, representative)
        self.ov: OpenVINOSettings = settings_from(
            OpenVINOSettings, {"device": device, "precision": precision, "threads": threads, **openvino}, "OpenVINO")
        self.settings = settings or MeasureSettings()
        self.representative = list(representative or ())
        devices = _core().available_devices
        if self.ov.device not in devices:
            raise ConfigError(f"OpenVINO(device={self.ov.device!r}): no such device here; OpenVINO sees "
                              f"{', '.join(devices)}: give one of them")

    @property
    def fingerprint(self) -> Fingerprint:
        fields: dict[str, Any] = {
            "backend": "openvino", "openvino": version("openvino"), "device": self.ov.device,
            "precision": self.ov.precision, "threads": self.ov.threads, "cpu": cpu_model(),
            "torch": torch_version(), "exporter": self.ov.exporter,
        }
        if self.ov.device != "CPU":
            fields["device_name"] = str(_core().get_property(self.ov.device, "FULL_DEVICE_NAME"))
        if self.ov.precision == "int8":
            fields.update(quantization=QDQ_SCHEME, quantizer=quantizer_version())
        return Fingerprint(fields)

    def config(self) -> dict[str, Any]:
        """The compile properties: threads, one stream, the latency hint, fp32 arithmetic."""
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if self.ov.device == "CPU":
            config.update(INFERENCE_NUM_THREADS=self.ov.threads, INFERENCE_PRECISION_HINT="f32")
        return config

    def compile(self, model: bytes, what: str = "onnx model") -> Any:
        """The ONNX `model` (bytes) read and compiled for the device: an `openvino.CompiledModel`."""
        core = _core()
        try:
            return core.compile_model(core.read_model(model), self.ov.device, self.config())
        except Exception as exc:
            raise MeasurementError(f"OpenVINO could not compile {what} for {self.ov.device}: {_reason(exc)}; "
                                   "replace that op in the module, or measure it with OnnxRuntimeCPU") from exc

    def prepared(self, model: bytes, input_shape: tuple[int, ...], what: str = "onnx model") -> Callable[[], object]:
        """One inference of the ONNX `model` (bytes) on a random input of `input_shape`, run once already."""
        import openvino

        request = self.compile(model, what).create_infer_request()
        feed = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
        try:
            request.set_input_tensor(openvino.Tensor(feed))
            request.infer()
        except Exception as exc:
            raise MeasurementError(f"OpenVINO could not run {what} on an input of shape {input_shape}: "
                                   f"{_reason(exc)}; check the shape of its example input") from exc
        return lambda: request.infer(share_outputs=True)

    def onnx(self, module: nn.Module, example_input: torch.Tensor) -> bytes:
        """`module` as the ONNX model this backend compiles: exported, and at int8 quantized (QDQ)."""
        if self.ov.precision == "int8":
            return export_qdq(module, example_input, self.representative, self.ov.exporter)
        return export_onnx(module, example_input, self.ov.exporter)

    def measure_onnx(self, model: bytes, input_shape: tuple[int, ...], what: str = "onnx model") -> Measurement:
        """Time an ONNX model (bytes) as given (at int8, give it quantized) on `input_shape`."""
        return time_calls(self.prepared(model, input_shape, what), self.settings, self.fingerprint.key, what)

    def runner(self, module: nn.Module, example_input: torch.Tensor) -> Callable[[], object]:
        return self.prepared(self.onnx(module, example_input), tuple(example_input.shape), type(module).__name__)

    def measure(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        return self.measure_onnx(self.onnx(module, example_input), tuple(example_input.shape), type(module).__name__)


def kernel_precisions(compiled: Any, layer: str = "Convolution") -> set[str]:
    """The precisions OpenVINO runs the `layer` nodes of a compiled model at ("u8", "i8", "f32"...),
    from its execution graph: how to tell that an int8 model really runs int8."""
    found = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == layer:
            found.add(info["runtimePrecision"].astype(str))
    return found


def _core() -> Any:
    """A new OpenVINO `Core` (about a millisecond: nothing of it is kept between calls)."""
    import openvino

    return openvino.Core()


_UNCONVERTED = re.compile(r"No conversion rule found for operations?: (.+)")
_BOILERPLATE = ("Exception from", "Check '", "FrontEnd API failed", "Model wasn't fully converted", "Summary:")


def _reason(exc: Exception) -> str:
    """OpenVINO's error in one line: the ops it has no rule for, else its first line that is not
    the location of the check that failed."""
    text = str(exc)
    unconverted = _UNCONVERTED.search(text)
    if unconverted:
        return f"it has no conversion rule for the ONNX op {unconverted.group(1).strip()}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith(_BOILERPLATE)]
    return meaningful[0] if meaningful else first_line(exc)
