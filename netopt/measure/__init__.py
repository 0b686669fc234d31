"""Measurement backends: the numbers NetAdapt's direct metrics stand on."""

from netopt.measure.base import Backend, Estimator, Fingerprint, Measurement, MeasureSettings, NoisyMeasurementWarning
from netopt.measure.eager import TorchEager
from netopt.measure.onnxrt import OnnxRuntimeCPU, export_onnx

__all__ = [
    "Backend",
    "Estimator",
    "Fingerprint",
    "MeasureSettings",
    "Measurement",
    "NoisyMeasurementWarning",
    "OnnxRuntimeCPU",
    "TorchEager",
    "export_onnx",
]
