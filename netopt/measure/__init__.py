"""Measurement backends: the numbers NetAdapt's direct metrics stand on.

Only what a measuring device needs is imported eagerly (the agent runs where torch is not
installed); the rest loads on first use. Every backend is registered once, by name, in
`netopt.measure.registry` (`BACKENDS`).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from netopt.measure.base import (
    Backend,
    Estimator,
    Fingerprint,
    Measurement,
    MeasureSettings,
    MeasuringEstimator,
    ModelAware,
    NoisyMeasurementWarning,
)

if TYPE_CHECKING:
    from netopt.measure.eager import TorchEager
    from netopt.measure.energy import EnergyModel, RaplEnergy
    from netopt.measure.executorch import ExecuTorch
    from netopt.measure.memory import MemoryModel
    from netopt.measure.onnxrt import OnnxRuntimeCPU, export_onnx
    from netopt.measure.openvino import OpenVINO
    from netopt.measure.registry import BACKENDS, BackendEntry
    from netopt.measure.remote import RemoteBackend

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendEntry",
    "EnergyModel",
    "Estimator",
    "ExecuTorch",
    "MeasuringEstimator",
    "ModelAware",
    "Fingerprint",
    "MeasureSettings",
    "Measurement",
    "MemoryModel",
    "NoisyMeasurementWarning",
    "OnnxRuntimeCPU",
    "OpenVINO",
    "RaplEnergy",
    "RemoteBackend",
    "TorchEager",
    "export_onnx",
]

_LAZY = {
    "BACKENDS": "netopt.measure.registry",
    "BackendEntry": "netopt.measure.registry",
    "TorchEager": "netopt.measure.eager",
    "OnnxRuntimeCPU": "netopt.measure.onnxrt",
    "OpenVINO": "netopt.measure.openvino",
    "ExecuTorch": "netopt.measure.executorch",
    "export_onnx": "netopt.measure.onnxrt",
    "RemoteBackend": "netopt.measure.remote",
    "EnergyModel": "netopt.measure.energy",
    "RaplEnergy": "netopt.measure.energy",
    "MemoryModel": "netopt.measure.memory",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'netopt.measure' has no attribute {name!r}")
    return getattr(import_module(module), name)
