"""Small torch modules for the IR ops that torch has only as functions.

A built network is made of modules only, one per IR node, registered under the node's name:
so tracing a built network gives back the same IR, names included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netopt.bridge.additive_modules import AdditiveAttention
from netopt.bridge.constant import Constant
from netopt.bridge.separable_modules import SEPARABLE_MODULES
from netopt.bridge.token_modules import TOKEN_MODULES
from netopt.bridge.xca_modules import CrossCovarianceAttention

__all__ = ["Add", "Mul", "Concat", "Flatten", "Mean", "ChannelNorm", "ChannelScale", "DropPath", "Pad", "Slice",
           "ChannelShuffle", "Eca", "Sub", "Div", "Neg", "Grn", "ScalarAffine", "StarRelu", "Normalize",
           "OPS_MODULES"]


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


class Sub(nn.Module):
    """`a - b`, or with a constant: `x - scalar` (`scalar - x` when `reverse`)."""

    def __init__(self, scalar: float | None = None, reverse: bool = False) -> None:
        super().__init__()
        self.scalar, self.reverse = scalar, reverse

    def forward(self, *xs: Tensor) -> Tensor:
        if self.scalar is None:
            return xs[0] - xs[1]
        return self.scalar - xs[0] if self.reverse else xs[0] - self.scalar


class Div(nn.Module):
    """`a / b`, or with a constant: `x / scalar` (`scalar / x` when `reverse`)."""

    def __init__(self, scalar: float | None = None, reverse: bool = False) -> None:
        super().__init__()
        self.scalar, self.reverse = scalar, reverse

    def forward(self, *xs: Tensor) -> Tensor:
        if self.scalar is None:
            return xs[0] / xs[1]
        return self.scalar / xs[0] if self.reverse else xs[0] / self.scalar


class Neg(nn.Module):
    """`-x`."""

    def forward(self, x: Tensor) -> Tensor:
        return -x


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
        if x.dim() == 3:  # tokens (B, N, C): the mean over the tokens
            return x.mean(1, keepdim=self.keepdim)
        return x.mean((2, 3), keepdim=self.keepdim)


def _per_channel(x: Tensor, v: Tensor) -> Tensor:
    """`v` (C,) shaped to broadcast over the channels (dim 1) of `x`."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class ChannelNorm(nn.Module):
    """LayerNorm across the channels of every position of an NCHW map (or of a vector)."""

    def __init__(self, channels: int, eps: float = 1e-6, affine: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.channels, self.eps = channels, eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine and bias else None

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:  # a vector, or tokens (B, N, C): the channels are the last dim
            return F.layer_norm(x, (self.channels,), self.weight, self.bias, self.eps)
        y = F.layer_norm(x.permute(0, 2, 3, 1), (self.channels,), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class ChannelScale(nn.Module):
    """A learned factor per channel (layer scale)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * (self.weight if x.dim() == 3 else _per_channel(x, self.weight))  # tokens: channels last


class DropPath(nn.Module):
    """Stochastic depth: drops whole samples ("row") or the batch ("batch") in training."""

    def __init__(self, p: float = 0.0, mode: str = "row", scale_by_keep: bool = True) -> None:
        super().__init__()
        self.p, self.mode, self.scale_by_keep = p, mode, scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1) if self.mode == "row" else (1,) * x.dim()
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * (mask / keep if self.scale_by_keep and keep > 0 else mask)


class Pad(nn.Module):
    """Constant padding (left, right, top, bottom) of the spatial dims."""

    def __init__(self, pad: tuple[int, int, int, int], value: float = 0.0) -> None:
        super().__init__()
        self.pad, self.value = tuple(pad), value

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, self.pad, value=self.value)


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle across `groups`."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Eca(nn.Module):
    """Efficient channel attention (ECA-Net): a k-tap conv across the pooled channels gates them."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x.mean((2, 3)).unsqueeze(1))
        return x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1)


class Grn(nn.Module):
    """ConvNeXt-V2's global response norm on an NCHW map: each channel's spatial L2 norm over the
    mean of those norms across channels gates the channel, plus a learned weight and bias."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        g = x.norm(p=2, dim=(2, 3), keepdim=True)
        n = g / (g.mean(dim=1, keepdim=True) + self.eps)
        return x + torch.addcmul(_per_channel(x, self.bias), _per_channel(x, self.weight), x * n)


class Normalize(nn.Module):
    """`F.normalize` across the channels: dim 1 of a map or vector, the last dim of tokens (B, N, C)."""

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1 if x.dim() == 3 else 1, eps=self.eps)


class ScalarAffine(nn.Module):
    """`scale * x + bias` with one learned scale and bias for the whole tensor (HGNetV2's
    LearnableAffineBlock): its two parameters do not depend on the width."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x + self.bias


class StarRelu(nn.Module):
    """`scale * relu(x) ** 2 + bias` with one scale and bias for the whole tensor (MetaFormer's
    StarReLU, PoolFormerV2's activation)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.relu(x) ** 2 + self.bias


class Slice(nn.Module):
    """Channels [start, stop) of the input."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:  # tokens (B, N, C): the channels are the last dim
            return x[:, :, self.start:self.stop]
        return x[:, self.start:self.stop]


OPS_MODULES: tuple[type[nn.Module], ...] = (Add, Mul, Concat, Flatten, Mean, ChannelNorm, ChannelScale, DropPath,
                                            Pad, Slice, ChannelShuffle, Eca, Sub, Div, Neg, Grn, ScalarAffine, StarRelu,
                                            Normalize, AdditiveAttention, Constant, CrossCovarianceAttention,
                                            *TOKEN_MODULES, *SEPARABLE_MODULES)
