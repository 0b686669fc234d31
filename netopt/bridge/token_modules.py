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
           "TOKEN_MODULES", "shift_mask", "position_bias", "SpaceToDepth",
           "TokenBatchNorm"]


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
    >>> Attention(qk_dim=4, v_dim=4, scale=0.5, talking=2)(q, k, v).shape  # scores mixed across the heads
    torch.Size([1, 5, 8])
    """

    def __init__(self, qk_dim: int, v_dim: int, scale: float, bias: tuple[int, int, int, int] | None = None, *,
                 window: tuple[int, int] = (0, 0), grid: tuple[int, int] = (0, 0),
                 shift: tuple[int, int] = (0, 0), linear: bool = False, eps: float = 0.0,
                 patch: tuple[int, int] = (0, 0), talking: int = 0) -> None:
        """`bias`: (heads, positions, N, M) of a relative position bias `attention_biases[:, attention_bias_idxs]`;
        `window`, `grid`, `shift`: attention within windows of the token grid (netopt.ir.tokens.AttentionAttrs);
        `talking`: the heads of talking heads, two 1x1 convs across the heads of the scores (0: none)."""
        super().__init__()
        self.qk_dim, self.v_dim, self.scale = qk_dim, v_dim, scale
        self.window, self.grid, self.shift = tuple(window), tuple(grid), tuple(shift)
        self.linear, self.eps, self.patch = linear, eps, tuple(patch)
        if bias is not None:
            heads, positions, n, m = bias
            self.attention_biases = nn.Parameter(torch.zeros(heads, positions))
            self.register_buffer("attention_bias_idxs", torch.zeros(n, m, dtype=torch.long))
        if any(self.shift):
            self.register_buffer("shift_mask", shift_mask(self.grid, self.window, self.shift), persistent=False)
        if talking:  # named as timm's EfficientFormerV2 names them, so materialize slices either alike
            self.talking_head1, self.talking_head2 = nn.Conv2d(talking, talking, 1), nn.Conv2d(talking, talking, 1)

    def _heads(self, x: Tensor, dim: int) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, c // dim, dim).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if q.dim() == 4:
            qt, kt, vt = (x.flatten(2).transpose(1, 2) for x in (q, k, v))
            out = self.forward(qt, kt, vt)  # the map's tokens (in windows of it, with a window)
            return out.transpose(1, 2).reshape(q.shape[0], -1, *q.shape[2:])
        if self.window[0]:
            out = self._attend(*(self._windows(x) for x in (q, k, v)))
            return self._merge(out, q.shape[0])
        if self.patch[0]:
            out = self._attend(*(self._offsets(x) for x in (q, k, v)))
            return self._unoffsets(out, q.shape[0])
        return self._attend(q, k, v)

    def _windows(self, x: Tensor) -> Tensor:
        """(B, H*W, C) tokens of the grid, rolled by -shift, as (B * windows, wh * ww, C)."""
        (h, w), (wh, ww), c = self.grid, self.window, x.shape[-1]
        x = x.reshape(x.shape[0], h, w, c)
        if any(self.shift):
            x = torch.roll(x, (-self.shift[0], -self.shift[1]), (1, 2))
        return x.view(x.shape[0], h // wh, wh, w // ww, ww, c).transpose(2, 3).reshape(-1, wh * ww, c)

    def _offsets(self, x: Tensor) -> Tensor:
        """(B, H*W, C) tokens of the grid as (B * ph * pw, patches, C): the tokens at each patch offset."""
        (h, w), (ph, pw), c = self.grid, self.patch, x.shape[-1]
        x = x.reshape(x.shape[0], h // ph, ph, w // pw, pw, c).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(-1, h // ph * (w // pw), c)

    def _unoffsets(self, x: Tensor, batch: int) -> Tensor:
        (h, w), (ph, pw), c = self.grid, self.patch, x.shape[-1]
        x = x.reshape(batch, ph, pw, h // ph, w // pw, c).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(batch, h * w, c)

    def _merge(self, x: Tensor, batch: int) -> Tensor:
        """Windows back to the grid's (B, H*W, C) tokens, rolled back."""
        (h, w), (wh, ww), c = self.grid, self.window, x.shape[-1]
        x = x.view(batch, h // wh, w // ww, wh, ww, c).transpose(2, 3).reshape(batch, h, w, c)
        if any(self.shift):
            x = torch.roll(x, self.shift, (1, 2))
        return x.reshape(batch, h * w, c)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        qh, kh, vh = self._heads(q, self.qk_dim), self._heads(k, self.qk_dim), self._heads(v, self.v_dim)
        if self.linear:
            out = qh @ (kh.transpose(-1, -2) @ F.pad(vh, (0, 1), mode="constant", value=1.0))
            out = out[..., :-1] / (out[..., -1:] + self.eps)
            return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)
        biases = getattr(self, "attention_biases", None)
        mask = None if biases is None else biases[:, self.attention_bias_idxs]
        if any(self.shift):  # (windows, N, N), repeated for every image of the batch
            windows = self.get_buffer("shift_mask")
            shifted = windows.repeat(q.shape[0] // windows.shape[0], 1, 1).unsqueeze(1)
            mask = shifted if mask is None else mask + shifted
        if hasattr(self, "talking_head1"):
            out = self._talk(qh, kh, vh, mask)
        else:
            out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=self.scale)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)

    def _talk(self, qh: Tensor, kh: Tensor, vh: Tensor, bias: Tensor | None) -> Tensor:
        """Talking heads: the scores (B, heads, N, M) mixed across the heads before and after the softmax."""
        scores = qh @ kh.transpose(-2, -1) * self.scale
        scores = scores if bias is None else scores + bias
        return self.talking_head2(self.talking_head1(scores).softmax(dim=-1)) @ vh  # type: ignore[no-any-return]


def shift_mask(grid: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...]) -> Tensor:
    """Swin's mask of shifted windows, (windows, N, N): -100 between tokens of regions that the
    cyclic shift brought together, 0 within one region.

    >>> shift_mask((8, 8), (4, 4), (2, 2)).shape  # 4 windows of 16 tokens
    torch.Size([4, 16, 16])
    """
    (h, w), (wh, ww), (sh, sw) = grid, window, shift
    regions = torch.zeros(h, w)
    cuts_h, cuts_w = ((0, -wh), (-wh, -sh), (-sh, None)), ((0, -ww), (-ww, -sw), (-sw, None))
    for i, (h0, h1) in enumerate(cuts_h):
        for j, (w0, w1) in enumerate(cuts_w):
            regions[h0:h1, w0:w1] = 3 * i + j
    windows = regions.view(h // wh, wh, w // ww, ww).transpose(1, 2).reshape(-1, wh * ww)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def position_bias(src: nn.Module) -> tuple[Tensor, Tensor]:
    """A module's relative position bias as a (heads, R) table and its (N, M) index: LeViT's
    `attention_biases[:, attention_bias_idxs]`, or Swin's `relative_position_bias_table` (R, heads)
    read at `relative_position_index`."""
    if hasattr(src, "attention_biases"):
        return src.get_parameter("attention_biases"), src.get_buffer("attention_bias_idxs")
    return src.get_parameter("relative_position_bias_table").t(), src.get_buffer("relative_position_index")


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of (B, N, C) tokens, as LeViT writes it: `bn(x.flatten(0, 1)).reshape_as(x)`."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.flatten(0, 1)).reshape_as(x)


class SpaceToDepth(nn.Module):
    """Each block x block patch of a (B, C, H, W) map as one position of block^2 * C channels, the
    patch offset (j, i) outer and the channel inner, as Swin's patch merging orders them.

    >>> SpaceToDepth(2)(torch.randn(1, 8, 6, 4)).shape
    torch.Size([1, 32, 3, 2])
    """

    def __init__(self, block: int = 2) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w, k = *x.shape, self.block
        x = x.view(b, c, h // k, k, w // k, k).permute(0, 5, 3, 1, 2, 4)
        return x.reshape(b, k * k * c, h // k, w // k)


TOKEN_MODULES: tuple[type[nn.Module], ...] = (Tokens, ToMap, ClassToken, PositionEmbedding, TokenSelect, Attention,
                                               HeadSlice, SpaceToDepth, TokenBatchNorm)
