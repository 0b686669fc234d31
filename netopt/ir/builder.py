"""`Builder`: write an IR network by hand, one op a call, with names made for you.

    b = Builder((3, 32, 32))
    x = b.conv(b.input, 16, 3, stride=2)
    x = b.relu(b.bn(x))
    x = b.linear(b.flatten(b.adaptive_avgpool(x)), 10)
    net = b.build(x)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from netopt.ir.groups import INPUT
from netopt.ir.network import Network, Node
from netopt.ir.ops import (
    AdaptivePoolAttrs,
    BatchNormAttrs,
    Conv2dAttrs,
    ConvTranspose2dAttrs,
    DropoutAttrs,
    DropPathAttrs,
    EcaAttrs,
    LayerNormAttrs,
    LinearAttrs,
    MeanAttrs,
    OpKind,
    PadAttrs,
    PoolAttrs,
    ScalarAttrs,
    ShuffleAttrs,
    SliceAttrs,
    UpsampleAttrs,
)

__all__ = ["Builder"]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Builder:
    """Accumulates nodes in execution order; `build` freezes them into a `Network`."""

    input = INPUT

    def __init__(self, input_shape: Sequence[int], step: int = 8) -> None:
        self.input_shape = tuple(input_shape)
        self.step = step
        self.nodes: list[Node] = []
        self._counts: dict[str, int] = {}

    def add(self, op: OpKind, inputs: Sequence[str], attrs: Any = None, name: str | None = None) -> str:
        if name is None:
            k = self._counts.get(op.value, 0)
            self._counts[op.value] = k + 1
            name = f"{op.value}{k}"
        self.nodes.append(Node(name, op, tuple(inputs), attrs))
        return name

    def conv(self, x: str, out: int, kernel: int | tuple[int, int] = 1, *, stride: int = 1,
             padding: int | None = None, groups: int = 1, bias: bool = False) -> str:
        k = _pair(kernel)
        pad = _pair(padding) if padding is not None else (k[0] // 2, k[1] // 2)
        attrs = Conv2dAttrs(out_channels=out, kernel_size=k, stride=_pair(stride), padding=pad,
                            groups=groups, bias=bias)
        return self.add(OpKind.CONV2D, [x], attrs)

    def conv_transpose(self, x: str, out: int, kernel: int = 2, *, stride: int = 2, padding: int = 0,
                       output_padding: int = 0, groups: int = 1, bias: bool = False) -> str:
        attrs = ConvTranspose2dAttrs(out_channels=out, kernel_size=_pair(kernel), stride=_pair(stride),
                                     padding=_pair(padding), output_padding=_pair(output_padding), groups=groups,
                                     bias=bias)
        return self.add(OpKind.CONV_TRANSPOSE2D, [x], attrs)

    def linear(self, x: str, out: int, *, bias: bool = True) -> str:
        return self.add(OpKind.LINEAR, [x], LinearAttrs(out_features=out, bias=bias))

    def bn(self, x: str) -> str:
        return self.add(OpKind.BATCHNORM, [x], BatchNormAttrs())

    def act(self, x: str, kind: OpKind = OpKind.RELU) -> str:
        return self.add(kind, [x])

    def relu(self, x: str) -> str:
        return self.act(x, OpKind.RELU)

    def maxpool(self, x: str, kernel: int, stride: int | None = None, padding: int = 0) -> str:
        attrs = PoolAttrs(kernel_size=_pair(kernel), stride=_pair(stride or kernel), padding=_pair(padding))
        return self.add(OpKind.MAXPOOL2D, [x], attrs)

    def avgpool(self, x: str, kernel: int, stride: int | None = None) -> str:
        attrs = PoolAttrs(kernel_size=_pair(kernel), stride=_pair(stride or kernel))
        return self.add(OpKind.AVGPOOL2D, [x], attrs)

    def adaptive_avgpool(self, x: str, size: int = 1) -> str:
        return self.add(OpKind.ADAPTIVE_AVGPOOL2D, [x], AdaptivePoolAttrs(output_size=(size, size)))

    def mean(self, x: str, keepdim: bool = False) -> str:
        return self.add(OpKind.MEAN, [x], MeanAttrs(keepdim=keepdim))

    def add_(self, *xs: str) -> str:
        return self.add(OpKind.ADD, xs, ScalarAttrs())

    def mul(self, *xs: str) -> str:
        return self.add(OpKind.MUL, xs, ScalarAttrs())

    def concat(self, *xs: str) -> str:
        return self.add(OpKind.CONCAT, xs)

    def flatten(self, x: str) -> str:
        return self.add(OpKind.FLATTEN, [x])

    def dropout(self, x: str, p: float = 0.2) -> str:
        return self.add(OpKind.DROPOUT, [x], DropoutAttrs(p=p))

    def layernorm(self, x: str, eps: float = 1e-6) -> str:
        return self.add(OpKind.LAYERNORM, [x], LayerNormAttrs(eps=eps))

    def scale(self, x: str) -> str:
        return self.add(OpKind.SCALE, [x])

    def droppath(self, x: str, p: float = 0.1) -> str:
        return self.add(OpKind.DROPPATH, [x], DropPathAttrs(p=p))

    def pad(self, x: str, pad: tuple[int, int, int, int]) -> str:
        return self.add(OpKind.PAD, [x], PadAttrs(pad=pad))

    def upsample(self, x: str, scale: float = 2.0, mode: str = "nearest") -> str:
        corners = None if mode == "nearest" else False
        attrs = UpsampleAttrs(mode=mode, scale_factor=(scale, scale), align_corners=corners)
        return self.add(OpKind.UPSAMPLE, [x], attrs)

    def slice(self, x: str, start: int, stop: int) -> str:
        return self.add(OpKind.SLICE, [x], SliceAttrs(start=start, stop=stop))

    def shuffle(self, x: str, groups: int) -> str:
        return self.add(OpKind.CHANNEL_SHUFFLE, [x], ShuffleAttrs(groups=groups))

    def eca(self, x: str, kernel_size: int = 3) -> str:
        return self.add(OpKind.ECA, [x], EcaAttrs(kernel_size=kernel_size))

    def build(self, *outputs: str) -> Network:
        return Network(tuple(self.nodes), self.input_shape, outputs, step=self.step)
