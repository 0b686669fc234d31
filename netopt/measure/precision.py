"""Numeric precision of a measured network, and the inputs an int8 network is quantized on.

A backend that measures int8 quantizes every module it is given the way its runtime deploys
it (ExecuTorch: PT2E with the XNNPACK quantizer; ONNX Runtime and OpenVINO: a static QDQ
model), observing activation ranges on representative inputs: batches of training inputs for
a whole network (an objective's `training_inputs`), seeded normal inputs of the right shape for
a lookup table's unit, whose real inputs are another layer's activations. The kernels' speed
does not depend on the ranges observed, only on what is quantized, so a unit quantized on such
inputs runs as it does inside the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from netopt.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["Precision", "PRECISIONS", "REPRESENTATIVE_BATCHES", "check_representative", "representative_for"]

Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8")
REPRESENTATIVE_BATCHES = 4
"""Batches an int8 backend observes per module: ranges settle within a few, and each costs a run."""


def check_representative(backend: str, precision: str, inputs: Sequence[torch.Tensor] | None) -> None:
    """Refuse, in one line saying where they come from, int8 without representative inputs."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{backend}: precision={precision!r} is not one of {', '.join(PRECISIONS)}; "
                          "give fp32 or int8")
    if precision == "int8" and not inputs:
        raise ConfigError(f"{backend}(precision='int8') needs representative inputs to quantize with: pass "
                          "representative=<a few batches of training inputs> (e.g. objective.training_inputs(4, 0), "
                          "or data.train_x[:64]); a config file's [lut] precision = \"int8\" takes them from the "
                          "objective")


def representative_for(inputs: Sequence[torch.Tensor] | None, example: torch.Tensor,
                       batches: int = REPRESENTATIVE_BATCHES, seed: int = 0) -> list[torch.Tensor]:
    """Batches shaped like `example` to observe ranges on: the representative inputs where their
    shape (after the batch dimension) is the example's, cut to its batch size; else seeded normal
    ones (a unit of a lookup table)."""
    import torch

    fitting = [x for x in inputs or () if tuple(x.shape[1:]) == tuple(example.shape[1:])]
    if fitting:
        rows = torch.cat(list(fitting))
        n = example.shape[0]
        return [rows[k * n:(k + 1) * n].to(example.dtype) for k in range(min(batches, len(rows) // n))] or [example]
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(example.shape, generator=generator, dtype=example.dtype) for _ in range(batches)]
