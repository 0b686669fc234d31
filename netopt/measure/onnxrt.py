"""ONNX Runtime on the CPU: the default backend, the embedded engine most like a deployment."""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

if TYPE_CHECKING:  # torch is needed to export, not to measure: an agent on a device has no torch
    import torch
    from torch import nn

from netopt.errors import MeasurementError, first_line
from netopt.frozen import Frozen
from netopt.measure.base import (
    Backend,
    Fingerprint,
    Measurement,
    MeasureSettings,
    NoisyMeasurementWarning,
    settings_from,
)
from netopt.measure.platform import cores, cpu_model
from netopt.measure.precision import Precision, check_representative
from netopt.measure.qdq import QDQ_SCHEME, quantize_qdq, representative_arrays
from netopt.measure.timing import time_calls

__all__ = ["OnnxRuntimeCPU", "OrtSettings", "export_onnx", "export_qdq", "settings_from", "torch_version"]

OptLevel = Literal["disable", "basic", "extended", "all"]


class OrtSettings(Frozen):
    """How ONNX Runtime runs: threads, whether they spin while they wait, and graph optimization
    level (ORT's default: all).

    `spinning=None` (the default) spins, as ORT does, unless there are more threads than cores
    this process may use: then a thread that spins waiting for a descheduled one holds the core
    that one needs, and a network measures bimodally (figures: docs/decisions.md)."""


    threads: int = Field(1, ge=1, le=256)
    spinning: bool | None = None
    optimization: OptLevel = "all"
    exporter: Literal["legacy", "dynamo"] = "legacy"

    @property
    def spins(self) -> bool:
        """Whether the threads spin while they wait (`spinning`, resolved on this machine)."""
        return self.threads <= cores() if self.spinning is None else self.spinning


_EXPORT_LOCK = threading.Lock()  # torch.onnx.export keeps global state: one export at a time


def export_onnx(module: nn.Module, example_input: torch.Tensor, exporter: str = "legacy") -> bytes:
    """The module as ONNX bytes; the legacy exporter by default: it needs no onnxscript and is the faster."""
    import torch

    buffer = io.BytesIO()
    was_training = module.training
    module.eval()
    try:
        with _EXPORT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example_input,), buffer, dynamo=exporter == "dynamo",  # type: ignore[arg-type]
                              input_names=["x"], output_names=["y"])
    except Exception as exc:
        first = first_line(exc)
        raise MeasurementError(
            f"exporting {type(module).__name__} to ONNX failed: {first}; the model must be exportable "
            "with torch.onnx.export (or measure it with TorchEager)"
        ) from exc
    finally:
        module.train(was_training)
    return buffer.getvalue()


def export_qdq(module: nn.Module, example_input: torch.Tensor, representative: Sequence[torch.Tensor] | None,
               exporter: str = "legacy") -> bytes:
    """`module` exported to ONNX and quantized to static int8 QDQ (`netopt.measure.qdq`), its
    activation ranges observed on `representative` inputs (seeded normal ones where none fit)."""
    model = export_onnx(module, example_input, exporter)
    return quantize_qdq(model, representative_arrays(representative, example_input), type(module).__name__)


class OnnxRuntimeCPU(Backend):
    """Latency (ms) of the model exported to ONNX and run by ONNX Runtime's CPU provider.

    `precision="int8"` runs each module as a static QDQ int8 model (`netopt.measure.qdq`),
    quantized on `representative` inputs (a few batches of training inputs; a lookup table's
    units get seeded normal ones of their shape): refused without them.

    >>> import torch
    >>> int8 = OnnxRuntimeCPU(precision="int8", representative=[torch.randn(4, 3, 16, 16)])
    >>> int8.fingerprint.fields["precision"], "precision" in OnnxRuntimeCPU().fingerprint.fields
    ('int8', False)
    """

    unit = "ms"

    def __init__(self, threads: int = 1, settings: MeasureSettings | None = None, precision: Precision = "fp32",
                 representative: Sequence[torch.Tensor] | None = None, **ort: Any) -> None:
        check_representative("OnnxRuntimeCPU", precision, representative)
        self.ort = settings_from(OrtSettings, {"threads": threads, **ort}, "OnnxRuntimeCPU")
        self.settings = settings or MeasureSettings()
        self.precision: Precision = precision
        self.representative = list(representative or ())
        if self.ort.threads > cores():
            warnings.warn(f"OnnxRuntimeCPU(threads={self.ort.threads}) on {cores()} cores: with more threads than "
                          "cores a network's figure varies by 40% and more from one minute to the next, even side by "
                          f"side (4 threads on 2 cores, waiting without spinning); measure with at most {cores()} "
                          "threads here, or on a machine with the cores", NoisyMeasurementWarning, stacklevel=2)

    @property
    def fingerprint(self) -> Fingerprint:
        import onnxruntime

        quiet = {"spinning": False} if self.ort.threads > 1 and not self.ort.spins else {}
        int8 = {"precision": "int8", "quantization": QDQ_SCHEME} if self.precision == "int8" else {}
        return Fingerprint({  # spinning and precision only where not the default: older tables keep their key
            "backend": "onnxruntime-cpu", "onnxruntime": onnxruntime.__version__,
            "torch": torch_version(), "cpu": cpu_model(), "threads": self.ort.threads,
            "optimization": self.ort.optimization, "exporter": self.ort.exporter, **quiet, **int8,
        })

    def session(self, model: bytes) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.ort.threads
        options.inter_op_num_threads = 1
        if not self.ort.spins:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.ort.optimization]
        try:
            return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = first_line(exc)
            raise MeasurementError(f"ONNX Runtime refused the model: {first}") from exc

    def prepared(self, model: bytes, input_shape: tuple[int, ...], what: str = "onnx model") -> Callable[[], object]:
        """One call of an ONNX model (bytes) on a random input of `input_shape`, run once already."""
        session = self.session(model)
        name = session.get_inputs()[0].name
        feed = {name: np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)}
        try:
            session.run(None, feed)
        except Exception as exc:
            first = first_line(exc)
            raise MeasurementError(
                f"ONNX Runtime could not run {what} on an input of shape {input_shape}: {first}"
            ) from exc
        return lambda: session.run(None, feed)

    def measure_onnx(self, model: bytes, input_shape: tuple[int, ...], what: str = "onnx model") -> Measurement:
        """Time an ONNX model (bytes) on a random input of `input_shape`, as given: at int8, give
        it quantized (`netopt.measure.qdq.quantize_qdq`)."""
        return time_calls(self.prepared(model, input_shape, what), self.settings, self.fingerprint.key, what)

    def onnx(self, module: nn.Module, example_input: torch.Tensor) -> bytes:
        """`module` as the ONNX model this backend runs: exported, and at int8 quantized (QDQ)."""
        if self.precision == "int8":
            return export_qdq(module, example_input, self.representative, self.ort.exporter)
        return export_onnx(module, example_input, self.ort.exporter)

    def runner(self, module: nn.Module, example_input: torch.Tensor) -> Callable[[], object]:
        return self.prepared(self.onnx(module, example_input), tuple(example_input.shape), type(module).__name__)

    def measure(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        return self.measure_onnx(self.onnx(module, example_input), tuple(example_input.shape), type(module).__name__)


def torch_version() -> str:
    """The installed torch's version without its local tag ("none" where torch is absent: an agent)."""
    try:
        return version("torch").split("+")[0]
    except PackageNotFoundError:
        return "none"
