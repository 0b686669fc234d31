"""Static int8 QDQ quantization of an ONNX model: the one int8 form ONNX Runtime and OpenVINO both run.

ONNX Runtime's quantization tool makes it (`quantize_static`, QDQ format, after its
pre-processing): weights int8, per output channel, symmetric; activations uint8 on the ranges
observed on representative inputs (min-max). ONNX Runtime runs the QDQ model as it is;
OpenVINO reads the same model and turns each QuantizeLinear/DequantizeLinear pair into its own
int8 form, so both runtimes measure one quantized network (docs/decisions.md).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from netopt.errors import MeasurementError, first_line
from netopt.measure.precision import representative_for

if TYPE_CHECKING:
    import torch

__all__ = ["QDQ_SCHEME", "representative_arrays", "quantizer_version", "quantize_qdq"]

QDQ_SCHEME = "qdq-minmax-u8-activations-s8-per-channel-symmetric-weights"
"""The quantization an int8 fingerprint names: another scheme is another platform."""


def quantizer_version() -> str:
    """The version of the tool that quantizes (ONNX Runtime's): part of an int8 fingerprint."""
    return f"onnxruntime-{version('onnxruntime')}"


def quantize_qdq(model: bytes, inputs: Sequence[np.ndarray], what: str = "onnx model") -> bytes:
    """The ONNX `model` (bytes) as a static int8 QDQ model, activations observed on `inputs`
    (arrays for its first input). `netopt.measure.onnxrt.export_qdq` exports and quantizes a module.

    >>> import onnx
    >>> from netopt.measure.onnxrt import export_onnx
    >>> from netopt.testing.backends import small_model
    >>> model, x = small_model()
    >>> int8 = onnx.load_model_from_string(quantize_qdq(export_onnx(model, x), representative_arrays([x], x)))
    >>> sorted({n.op_type for n in int8.graph.node} & {"QuantizeLinear", "DequantizeLinear"})
    ['DequantizeLinear', 'QuantizeLinear']
    """
    if not inputs:
        raise MeasurementError(f"quantizing {what} to int8 needs representative inputs, got none: pass a few "
                               "batches shaped like its input")
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="netopt-qdq-") as tmp:
        source, prepared, quantized = (Path(tmp) / f for f in ("model.onnx", "pre.onnx", "int8.onnx"))
        source.write_bytes(model)
        try:
            quant_pre_process(source, prepared, skip_symbolic_shape=True)
            quantize_static(prepared, quantized, _reader(_input_name(model), inputs), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        except Exception as exc:
            raise MeasurementError(f"quantizing {what} to int8 (static QDQ, ONNX Runtime's quantization tool) "
                                   f"failed: {first_line(exc)}; measure it with precision='fp32', or replace "
                                   "the op it names") from exc
        return quantized.read_bytes()


def _reader(name: str, inputs: Sequence[np.ndarray]) -> Any:
    """A `CalibrationDataReader` that feeds `inputs`, one batch a call, to the input `name`."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {name: np.ascontiguousarray(batch, dtype=np.float32)}

    return Batches()


def representative_arrays(representative: Sequence[torch.Tensor] | None,
                          example_input: torch.Tensor) -> list[np.ndarray]:
    """The arrays to observe a module's activation ranges on: `representative_for(representative,
    example_input)` (training inputs, or seeded normal ones for a lookup table's unit)."""
    return [b.detach().cpu().numpy().astype(np.float32) for b in representative_for(representative, example_input)]


def _input_name(model: bytes) -> str:
    """The name of the model's first graph input that is not an initializer."""
    import onnx

    graph = onnx.load_model_from_string(model).graph
    initializers = {t.name for t in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)
