"""Small torch modules for the IR ops that torch has only as functions.

A built network is made of modules only, one per IR node, registered under the node's name:
so tracing a built network gives back the same IR, names included.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Add", "Mul", "Concat", "Flatten", "Mean", "OPS_MODULES"]


class Add(nn.Module):
    """Elementwise sum of its inputs, or of one input and a constant."""

    def __init__(self, scalar: float | None = None) -> None:
        super().__init__()
        self.scalar = scalar

    def forward(self, *xs: Tensor) -> Tensor:
        out = xs[0] + self.scalar if self.scalar is not None else xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Mul(nn.Module):
    """Elementwise product (squeeze-and-excitation scaling), or by a constant."""

    def __init__(self, scalar: float | None = None) -> None:
        super().__init__()
        self.scalar = scalar

    def forward(self, *xs: Tensor) -> Tensor:
        out = xs[0] * self.scalar if self.scalar is not None else xs[0]
        for x in xs[1:]:
            out = out * x
        return out


class Concat(nn.Module):
    """Concatenation along channels (dim 1)."""

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=1)


class Flatten(nn.Module):
    """(N, C, H, W) -> (N, C*H*W), channel-major like `torch.flatten(x, 1)`."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(x, 1)


class Mean(nn.Module):
    """Mean over the spatial dims, like `x.mean((2, 3))`."""

    def __init__(self, keepdim: bool = False) -> None:
        super().__init__()
        self.keepdim = keepdim

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3), keepdim=self.keepdim)


OPS_MODULES: tuple[type[nn.Module], ...] = (Add, Mul, Concat, Flatten, Mean)
