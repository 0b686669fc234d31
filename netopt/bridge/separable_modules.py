"""Torch modules for MobileViT v2's patch layout and separable attention (netopt.ir.separable).

They compute what timm's `MobileVitV2Block` and `LinearSelfAttention` write inline, in the same
order of operations, so a network netopt builds gives the original's outputs bit for bit.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UnfoldPatches", "FoldPatches", "SeparableAttention", "SEPARABLE_MODULES"]


class UnfoldPatches(nn.Module):
    """(B, C, H, W) -> (B, C, ph * pw, patches): each patch's pixels by the patches, channels first.

    >>> import torch
    >>> UnfoldPatches((2, 2), (8, 6))(torch.randn(1, 3, 8, 6)).shape
    torch.Size([1, 3, 4, 12])
    """

    def __init__(self, patch: tuple[int, int], grid: tuple[int, int]) -> None:
        super().__init__()
        self.patch, self.grid = tuple(patch), tuple(grid)

    def forward(self, x: Tensor) -> Tensor:
        (ph, pw), (h, w) = self.patch, self.grid
        b, c = x.shape[:2]
        x = x.reshape(b, c, h // ph, ph, w // pw, pw).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, c, ph * pw, h // ph * (w // pw))


class FoldPatches(nn.Module):
    """(B, C, ph * pw, patches) -> (B, C, H, W): the inverse of `UnfoldPatches`."""

    def __init__(self, patch: tuple[int, int], grid: tuple[int, int]) -> None:
        super().__init__()
        self.patch, self.grid = tuple(patch), tuple(grid)

    def forward(self, x: Tensor) -> Tensor:
        (ph, pw), (h, w) = self.patch, self.grid
        b, c = x.shape[:2]
        x = x.reshape(b, c, ph, pw, h // ph, w // pw).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c, h, w)


class SeparableAttention(nn.Module):
    """v * sum(k * softmax(q)) over the last axis (MobileViT v2): q of one channel (or one per
    channel of k) weighs the positions, each channel of k is pooled by those weights, and the
    context scales v's channel.

    >>> import torch
    >>> q, k = torch.randn(1, 1, 4, 9), torch.randn(1, 6, 4, 9)
    >>> SeparableAttention()(q, k, k.relu()).shape
    torch.Size([1, 6, 4, 9])
    """

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        context = (k * F.softmax(q, dim=-1)).sum(dim=-1, keepdim=True)
        return v * context.expand_as(v)


SEPARABLE_MODULES: tuple[type[nn.Module], ...] = (UnfoldPatches, FoldPatches, SeparableAttention)
