"""Constants: a feature map a model computes in forward from shapes and constants alone (EdgeNeXt's
Fourier position encoding: sin/cos of a position grid), which the IR holds as an op of its own.

`CONSTANT` makes a (C, H, W) map whose values the traced model holds as a buffer (not a parameter:
nothing trains it). Its C channels are a fixed group of their own: they are no layer's filters,
so nothing ranks them for removal; the layers that read the map (EdgeNeXt's 1x1 `token_projection`)
shrink their output channels as usual. Its one input only says which batch it is made for: no
channel of it is read. `netopt.ir.ops.RULES` declares it; nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from netopt.errors import IRError

__all__ = ["ConstantAttrs", "constant_spatial"]

Spatial = tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class ConstantAttrs:
    """A constant (C, H, W) map, the same for every image of the batch.

    >>> ConstantAttrs(shape=(64, 32, 32)).shape[0]
    64
    """

    shape: tuple[int, int, int]


def constant_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    """The constant's own (H, W), whatever its input's (that input only gives the batch)."""
    if len(attrs.shape) != 3 or any(d < 1 for d in attrs.shape):
        raise IRError(f"constant node {name!r} has shape {attrs.shape}; it must be a (C, H, W) map with positive "
                      "sizes, without the batch dimension")
    return tuple(attrs.shape[1:])
