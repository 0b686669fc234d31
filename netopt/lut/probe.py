"""Turn a unit into a small torch module that a backend can measure on its own.

A unit headed by an opaque block runs a copy of the traced model's module for it: the IR node
holds no weights. `describe_block` says what such a module computes, for the unit's signature.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from netopt.bridge.build import FACTORIES, make_layer
from netopt.ir import Network, OpKind
from netopt.lut.units import FREE, Unit

__all__ = ["unit_module", "overhead_module", "yardstick_module", "describe_block"]


class UnitModule(nn.Module):
    """head(x, *others) then the fused ops; extra operands are constants of the right shape."""

    def __init__(self, layers: list[nn.Module], others: list[Tensor]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        for i, t in enumerate(others):
            self.register_buffer(f"operand{i}", t)
        self.n_others = len(others)

    def forward(self, x: Tensor) -> Tensor:
        others = [getattr(self, f"operand{i}") for i in range(self.n_others)]
        y = self.layers[0](x, *others)
        for layer in self.layers[1:]:
            y = layer(y)
        return y


def unmeasurable_ops() -> list[OpKind]:
    """Op kinds a unit could contain that no layer factory builds (must be empty)."""
    return [k for k in OpKind if k not in FACTORIES and k not in FREE and k is not OpKind.OPAQUE]


def unit_module(net: Network, unit: Unit, opaque: Mapping[str, nn.Module] | None = None) -> tuple[nn.Module, Tensor]:
    """A module computing `unit` at `net`'s widths, and an input for it (batch 1); an opaque
    block's layer is a copy of its module in `opaque` (the traced model's, by node name)."""
    torch.manual_seed(0)
    copies = {n.name: copy.deepcopy(opaque[n.name]) for n in unit.nodes if opaque and n.name in opaque}
    layers = [make_layer(net, node, copies) for node in unit.nodes]
    others = [_example(shape) for shape in unit.input_shapes[1:]]
    module = UnitModule(layers, others).eval()
    return module, _example(unit.input_shapes[0])


_SETTINGS = (bool, int, float, str)
"""The types of a module's plain attributes that describe its computation (flags, sizes, modes);
caches a forward fills (a torch.Size, tensors) and None are left out, so that running the block
does not change its description."""


def describe_block(module: nn.Module) -> dict[str, object]:
    """What an opaque block computes, beyond its IR node: its class, its layers (their reprs),
    the shapes of its weights and buffers, and its plain settings, each of its submodules'
    too. Weight values are not in it: a fine-tuned copy costs the same.

    >>> a, b = describe_block(nn.Conv2d(8, 8, 3)), describe_block(nn.Conv2d(8, 8, 3, padding=1))
    >>> a["class"], a["state"] == b["state"], a["layers"] == b["layers"]
    ('torch.nn.modules.conv.Conv2d', True, False)
    """
    cls = type(module)
    state = [[name, list(t.shape), str(t.dtype)] for name, t in (*module.named_parameters(), *module.named_buffers())]
    settings = sorted([name, key, value] for name, m in module.named_modules() for key, value in vars(m).items()
                      if type(value) in _SETTINGS and not key.startswith("_") and key != "training")
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "layers": _digest(repr(module)),
            "state": _digest(repr(state)), "settings": _digest(repr(settings))}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _example(shape: tuple[int, ...]) -> Tensor:
    """A batch-1 tensor of an IR shape: (C, N) tokens are (1, N, C) in torch, channels last."""
    return torch.randn(1, *(shape[1:] + shape[:1] if len(shape) == 2 else shape))


class _Tiny(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)


def overhead_module() -> tuple[nn.Module, Tensor]:
    """The cheapest model a runtime still has to run: its latency is the per-call overhead."""
    return _Tiny().eval(), torch.randn(1, 1)


class _Yardstick(nn.Module):
    """A small inverted-residual block (1x1, depthwise 3x3, 1x1): the fixed unit every other
    unit is measured beside."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(16, 48, 1), nn.ReLU(), nn.Conv2d(48, 48, 3, padding=1, groups=48),
                                  nn.ReLU(), nn.Conv2d(48, 16, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def yardstick_module() -> tuple[nn.Module, Tensor]:
    """The lookup table's yardstick (the same weights and input in every process)."""
    torch.manual_seed(0)
    return _Yardstick().eval(), torch.randn(1, 16, 28, 28)
