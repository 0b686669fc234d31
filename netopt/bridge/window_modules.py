"""The torch side of maps cut into windows that are the batch (EfficientViT-M's local window
attention): a convolution that runs on each window apart, padded at the window's edges.

The IR sees the whole map (netopt.bridge.window_maps); only the ops that look across positions
need the windows: this conv, and the `Attention` of netopt.bridge.token_modules with its window.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["WindowConv2d", "to_windows", "from_windows"]


def to_windows(x: Tensor, window: tuple[int, int]) -> Tensor:
    """A map (B, C, H, W) as its windows (B * H/wh * W/ww, C, wh, ww), row-major.

    >>> import torch
    >>> to_windows(torch.arange(16.0).view(1, 1, 4, 4), (2, 2))[1, 0].tolist()
    [[2.0, 3.0], [6.0, 7.0]]
    """
    b, c, h, w = x.shape
    wh, ww = window
    x = x.view(b, c, h // wh, wh, w // ww, ww).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, c, wh, ww)


def from_windows(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """Windows (B * windows, C, wh, ww) back into the map (B, C, H, W) of `grid` (H, W).

    >>> import torch
    >>> x = torch.randn(2, 3, 4, 6)
    >>> torch.equal(from_windows(to_windows(x, (2, 3)), (4, 6)), x)
    True
    """
    n, c, wh, ww = x.shape
    (h, w) = grid
    b = n // (h // wh * (w // ww))
    x = x.view(b, h // wh, w // ww, c, wh, ww).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


class WindowConv2d(nn.Conv2d):
    """nn.Conv2d run on each `window` of the map apart (zero padding at every window's edge), as
    a conv inside windows that are the batch computes; its parameters are nn.Conv2d's.

    >>> import torch
    >>> conv = WindowConv2d(2, 2, 3, padding=1, groups=2, window=(2, 2))
    >>> x = torch.randn(1, 2, 4, 4)
    >>> inside = nn.functional.conv2d(x[..., :2, :2], conv.weight, conv.bias, padding=1, groups=2)
    >>> torch.allclose(conv(x)[..., :2, :2], inside)
    True
    """

    def __init__(self, *args: Any, window: tuple[int, int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.window = tuple(window)

    def forward(self, x: Tensor) -> Tensor:
        windows = to_windows(x, self.window)  # type: ignore[arg-type]
        return from_windows(super().forward(windows), (x.shape[2], x.shape[3]))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}"
