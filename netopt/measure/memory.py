"""Memory as an estimator: weight bytes plus peak activation bytes, exact from the IR.

Weights are the trainable parameters (`netopt.ir.params`: BatchNorm affine included, running
statistics not, as they fold into the convolution at inference). Activations are the peak of
live tensors for batch 1 running the nodes in order (`netopt.ir.activation_bytes`). Both at
`bytes_per_element` (4: float32; 1 for int8, 2 for fp16).
"""

from __future__ import annotations

from pydantic import Field

from netopt.frozen import Frozen
from netopt.ir import Network, activation_bytes, params
from netopt.measure.base import Fingerprint, settings_from

__all__ = ["MemoryModel", "MemorySettings"]


class MemorySettings(Frozen):

    bytes_per_element: int = Field(4, ge=1, le=16, description="bytes of one weight or activation")


class MemoryModel:
    """Bytes a network needs to run: its weights plus its peak live activations."""

    unit = "bytes"

    def __init__(self, bytes_per_element: int = 4) -> None:
        self.settings: MemorySettings = settings_from(
            MemorySettings, {"bytes_per_element": bytes_per_element}, "MemoryModel")

    def __repr__(self) -> str:
        return f"MemoryModel(bytes_per_element={self.settings.bytes_per_element})"

    @property
    def bytes_per_element(self) -> int:
        return self.settings.bytes_per_element

    @property
    def fingerprint(self) -> Fingerprint:
        """The estimator and its element size: equal fingerprints give equal estimates."""
        return Fingerprint({"estimator": "memory-model", "unit": self.unit,
                            "bytes_per_element": self.bytes_per_element})

    def breakdown(self, network: Network) -> dict[str, int]:
        """Weight bytes and peak activation bytes, apart."""
        return {"weights": params(network) * self.bytes_per_element,
                "activations": activation_bytes(network, self.bytes_per_element)}

    def estimate(self, network: Network) -> float:
        """Total bytes at the network's current widths: weights plus peak activations."""
        return float(sum(self.breakdown(network).values()))
