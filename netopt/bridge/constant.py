"""fx -> IR -> torch for constants: a feature map a model computes in forward from shapes alone.

netopt's tracer runs every op on the example input, so code that makes a tensor from shapes and
constants only (EdgeNeXt's `PositionalEncodingFourier`: `torch.zeros(shape)`, cumsum, sin and cos)
runs eagerly and fx keeps its result as a `_tensor_constant` on the root. Read as the input of a
traced op (its 1x1 `token_projection`), such a (B, C, H, W) map becomes a CONSTANT node holding
it as a buffer (`Constant`), so the layers that read it stay layers that shrink. No tensor that
depends on the input's values can be one: those are proxies, never constants.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, fx, nn

from netopt.bridge.fxmeta import SHAPE
from netopt.ir.constant import ConstantAttrs

__all__ = ["Constant", "constant_attrs", "constant_value", "constant_name"]

_PREFIX = "_tensor_constant"


class Constant(nn.Module):
    """A constant (1, C, H, W) map (a buffer), repeated for every image of its input's batch.

    >>> Constant((4, 2, 2))(torch.randn(3, 8, 5, 5)).shape
    torch.Size([3, 4, 2, 2])
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("value", torch.randn(1, *shape))

    def forward(self, x: Tensor) -> Tensor:
        value: Tensor = self.get_buffer("value")
        return value.expand(x.shape[0], *value.shape[1:])


def constant_attrs(x: Any) -> ConstantAttrs | None:
    """The CONSTANT an fx constant read as an op's input makes: a float (B, C, H, W) map the
    same for every image of the batch; else None (the tracer then refuses it)."""
    if not isinstance(x, fx.Node) or x.op != "get_attr" or not str(x.target).startswith(_PREFIX):
        return None
    value = getattr(x.graph.owning_module, str(x.target), None)
    if not isinstance(value, Tensor) or value.dim() != 4 or not value.is_floating_point() \
            or tuple(value.shape) != tuple(x.meta.get(SHAPE, ())) or not bool((value == value[:1]).all()):
        return None
    return ConstantAttrs(shape=tuple(value.shape[1:]))  # type: ignore[arg-type]


def constant_name(index: int) -> str:
    """The IR name of a model's `index`-th constant: by order, not fx's counter, which goes on
    counting when the same model is traced again (each trace leaves its constants on the root)."""
    return f"constant{index}"


def constant_value(src: Any) -> Tensor:
    """The (1, C, H, W) values a materialized `Constant` holds: from fx's constant (seen as a
    `weight`) or from a `Constant` of a network netopt built."""
    value: Tensor = src.get_buffer("value") if isinstance(src, Constant) else src.weight
    return value[:1].detach().clone()
