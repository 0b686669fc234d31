"""torch eager execution: on the CPU, or on CUDA (synchronized) where a GPU is present."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from netopt.errors import MeasurementError
from netopt.frozen import Frozen
from netopt.measure.base import Backend, Fingerprint, Measurement, MeasureSettings, settings_from
from netopt.measure.platform import cpu_model
from netopt.measure.timing import time_calls

__all__ = ["TorchEager", "EagerSettings"]


class EagerSettings(Frozen):

    threads: int = Field(1, ge=1, le=256)
    device: Literal["cpu", "cuda"] = "cpu"


class TorchEager(Backend):
    """Latency (ms) of the module run by torch itself, under `torch.no_grad()` in eval mode."""

    unit = "ms"

    def __init__(self, threads: int = 1, settings: MeasureSettings | None = None, **eager: Any) -> None:
        self.eager = settings_from(EagerSettings, {"threads": threads, **eager}, "TorchEager")
        self.settings = settings or MeasureSettings()
        if self.eager.device == "cuda" and not torch.cuda.is_available():
            raise MeasurementError("TorchEager(device='cuda'): no CUDA device is available here; use device='cpu'")

    @property
    def fingerprint(self) -> Fingerprint:
        fields: dict[str, Any] = {"backend": f"torch-eager-{self.eager.device}",
                                  "torch": torch.__version__.split("+")[0], "threads": self.eager.threads}
        if self.eager.device == "cuda":
            fields["gpu"] = torch.cuda.get_device_name()
            fields["cuda"] = torch.version.cuda
        else:
            fields["cpu"] = cpu_model()
        return Fingerprint(fields)

    def measure(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        device = torch.device(self.eager.device)
        was_training, previous_threads = module.training, torch.get_num_threads()
        model, x = module.eval().to(device), example_input.to(device)
        sync = torch.cuda.synchronize if device.type == "cuda" else None
        torch.set_num_threads(self.eager.threads)
        try:
            with torch.no_grad():
                return time_calls(lambda: model(x), self.settings, self.fingerprint.key,
                                  type(module).__name__, sync=sync)
        finally:
            torch.set_num_threads(previous_threads)
            module.train(was_training)
