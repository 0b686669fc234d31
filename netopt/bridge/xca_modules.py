"""The torch module of cross-covariance attention (XCA: XCiT, EdgeNeXt), an ATTENTION node with `channels`.

Per head it attends across channels, not tokens: q and k, each channel L2-normalized over the
tokens, make a (d x d) map per head, scaled by a learned per-head temperature; its softmax mixes
v's channels of the head. Heads are independent, so a removed head takes its temperature along
(`keep_temperatures`) and the rest compute what they did.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CrossCovarianceAttention", "keep_temperatures"]


class CrossCovarianceAttention(nn.Module):
    """XCA of (B, N, h * dim) tokens q, k, v: as many heads as q's channels hold now.

    >>> q = k = v = torch.randn(2, 5, 8)  # 5 tokens, two heads of 4 channels
    >>> CrossCovarianceAttention(dim=4, heads=2)(q, k, v).shape
    torch.Size([2, 5, 8])
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        b, n, c = q.shape
        qh, kh, vh = (x.reshape(b, n, -1, self.dim).permute(0, 2, 3, 1) for x in (q, k, v))  # (B, h, dim, N)
        attn = (F.normalize(qh, dim=-1) @ F.normalize(kh, dim=-1).transpose(-2, -1)) * self.temperature
        return (attn.softmax(dim=-1) @ vh).permute(0, 3, 1, 2).reshape(b, n, c)


def keep_temperatures(layer: CrossCovarianceAttention, src: Any, heads: Tensor) -> None:
    """Give `layer` the temperatures of the kept `heads` of `src` (timm's module, or netopt's)."""
    t = src.temperature
    layer.temperature = nn.Parameter(t.detach().index_select(0, heads).clone(), t.requires_grad)
