"""The torch module of the IR's additive attention (`OpKind.ADDITIVE_ATTENTION`, SwiftFormer).

It repeats timm's `EfficientAdditiveAttention` arithmetic step for step, so a traced model is equal
at full width; its weight is a (D,) vector named `weight`, which materialize slices like any
per-channel parameter. Imports only torch (netopt.bridge.modules lists it among its own modules).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AdditiveAttention"]


class AdditiveAttention(nn.Module):
    """Additive attention of query and key tokens (B, N, D): the query pooled over the tokens by
    weights normalize_tokens(q @ w * scale), times k.

    >>> m = AdditiveAttention(4, scale=0.5)
    >>> m(torch.randn(2, 3, 4), torch.randn(2, 3, 4)).shape
    torch.Size([2, 3, 4])
    """

    def __init__(self, channels: int, scale: float, eps: float = 1e-12) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels))
        self.scale, self.eps = scale, eps

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        attn = F.normalize(q @ self.weight[:, None] * self.scale, dim=1, eps=self.eps)
        return torch.sum(attn * q, dim=1, keepdim=True) * k
