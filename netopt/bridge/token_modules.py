"""Torch modules for the IR's token and attention ops (netopt.ir.tokens).

Token tensors are (B, N, C). Each module computes what its op means at the current widths:
`Attention` splits q, k and v into as many heads as their channels hold now, so a network that
lost heads runs with fewer. The parameters (`ClassToken`, `PositionEmbedding`) are named
`weight`, so materialize slices them like any per-channel parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Tokens", "ToMap", "ClassToken", "PositionEmbedding", "TokenSelect", "Attention", "HeadSlice",
           "TOKEN_MODULES"]


class Tokens(nn.Module):
    """A feature map as tokens: (B, C, H, W) -> (B, H*W, C)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2)


class ToMap(nn.Module):
    """Tokens back to a feature map: (B, H*W, C) -> (B, C, H, W)."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.height, self.width = height, width

    def forward(self, x: Tensor) -> Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.height, self.width)


class ClassToken(nn.Module):
    """`tokens` learned tokens put before the others (ViT's class token, DeiT's distillation token)."""

    def __init__(self, channels: int, tokens: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, tokens, channels))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.weight.expand(x.shape[0], -1, -1), x], dim=1)


class PositionEmbedding(nn.Module):
    """A learned (1, N, C) position embedding added to the tokens."""

    def __init__(self, tokens: int, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, tokens, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.weight


class TokenSelect(nn.Module):
    """Tokens [start, stop), or with `stop` None the one token `start` as a (B, C) vector."""

    def __init__(self, start: int, stop: int | None = None) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: Tensor) -> Tensor:
        return x[:, self.start] if self.stop is None else x[:, self.start:self.stop]


class HeadSlice(nn.Module):
    """Channels [start, stop) of every head of `unit` channels of a (B, C, H, W) map or of
    (B, N, C) tokens."""

    def __init__(self, unit: int, start: int, stop: int) -> None:
        super().__init__()
        self.unit, self.start, self.stop = unit, start, stop

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            b, n, c = x.shape
            return x.view(b, n, c // self.unit, self.unit)[..., self.start:self.stop].reshape(b, n, -1)
        b, c, *rest = x.shape
        return x.view(b, c // self.unit, self.unit, *rest)[:, :, self.start:self.stop].reshape(b, -1, *rest)


class Attention(nn.Module):
    """Softmax attention of q, k (h*qk_dim channels) and v (h*v_dim): h heads, as many as the
    channels hold. On tokens (B, N, C) the output is (B, N, h*v_dim); on maps (B, C, H, W), where
    1x1 convs made q, k and v, it is the map (B, h*v_dim, H, W) of q's positions.

    >>> q = k = v = torch.randn(1, 5, 8)  # 5 tokens, two heads of 4 channels
    >>> Attention(qk_dim=4, v_dim=4, scale=0.5)(q, k, v).shape
    torch.Size([1, 5, 8])
    >>> Attention(qk_dim=4, v_dim=4, scale=0.5)(q[..., :4], k[..., :4], v[..., :4]).shape  # one head left
    torch.Size([1, 5, 4])
    """

    def __init__(self, qk_dim: int, v_dim: int, scale: float, bias: tuple[int, int, int, int] | None = None) -> None:
        """`bias`: (heads, positions, N, M) of a relative position bias `attention_biases[:, attention_bias_idxs]`."""
        super().__init__()
        self.qk_dim, self.v_dim, self.scale = qk_dim, v_dim, scale
        if bias is not None:
            heads, positions, n, m = bias
            self.attention_biases = nn.Parameter(torch.zeros(heads, positions))
            self.register_buffer("attention_bias_idxs", torch.zeros(n, m, dtype=torch.long))

    def _heads(self, x: Tensor, dim: int) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, c // dim, dim).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if q.dim() == 4:
            qt, kt, vt = (x.flatten(2).transpose(1, 2) for x in (q, k, v))
            return self._attend(qt, kt, vt).transpose(1, 2).reshape(q.shape[0], -1, *q.shape[2:])
        return self._attend(q, k, v)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        qh, kh, vh = self._heads(q, self.qk_dim), self._heads(k, self.qk_dim), self._heads(v, self.v_dim)
        biases = getattr(self, "attention_biases", None)
        mask = None if biases is None else biases[:, self.attention_bias_idxs]
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=self.scale)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


TOKEN_MODULES: tuple[type[nn.Module], ...] = (Tokens, ToMap, ClassToken, PositionEmbedding, TokenSelect, Attention,
                                               HeadSlice)
