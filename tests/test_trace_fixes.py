"""What fx alone cannot trace and netopt's tracer does (netopt/bridge/trace.py): values computed from
shapes, dtypes and devices are concrete Python values, tensors made from them are constants, a
forward's extra parameters take their defaults. What reads tensor *values* stays refused."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netopt
from netopt.errors import TraceError, UnsupportedOpError
from netopt.ir import OpKind

X = torch.randn(2, 8, 6, 6)


class Block(nn.Module):
    """A conv and its BN: the groups each test shrinks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.out = nn.Conv2d(16, 4, 1)


class VarArgs(Block):
    """Ultralytics' models: `forward(self, x, *args, **kwargs)`."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.out(F.relu(self.bn(self.conv(x))))


class Flags(Block):
    """timm's ViT: `forward(self, x, attn_mask=None, is_causal=False)`, the flag read as a bool."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if is_causal:
            y = -y
        if mask is not None:
            y = y * mask
        return self.out(F.relu(y))


class DeviceAndDtype(Block):
    """EfficientViT's `v.device.type != 'meta'`, EdgeNeXt's casts to the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if y.device.type != "meta" and y.dtype == x.dtype and y.is_floating_point():
            y = F.relu(y.to(x.dtype))
        return self.out(y)


class ShapeArithmetic(Block):
    """Control flow on numbers read off shapes: `numel()`, `size()` comparisons, `!=` on ints."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if y.numel() != 0 and y.size(1) % 2 == 0 and y.shape[-1] == x.shape[-1]:
            y = F.relu(y)
        return self.out(y)


class Factories(Block):
    """Tensors made from concrete sizes in forward (XCiT's arange, Segformer's empty): constants
    that only decide Python values here."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        steps = torch.arange(y.shape[-1], device=y.device)
        scratch = torch.empty(0, dtype=y.dtype, device=y.device)
        if len(steps) == y.shape[-1] and scratch.numel() == 0:
            y = F.relu(y)
        return self.out(y)


class ConstantScale(Block):
    """timm's CSATv2: a per-channel constant made in forward multiplies a feature map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return self.out(F.relu(y * torch.ones(1, 16, 1, 1)))


@pytest.mark.parametrize("cls", [VarArgs, Flags, DeviceAndDtype, ShapeArithmetic, Factories])
def test_a_model_fx_cannot_trace_is_traced_shrunk_and_equal_at_full_width(cls: type[nn.Module]) -> None:
    model = cls().eval()
    traced = netopt.trace(model, X)
    with torch.no_grad():
        torch.testing.assert_close(traced.materialize().eval()(X), model(X))
        small = traced.materialize(traced.network.with_widths({"conv": 8})).eval()
        assert small(X).shape == (2, 4, 6, 6)
    assert small.get_submodule("conv").out_channels == 8


def test_a_flag_the_forward_takes_keeps_its_default_while_tracing() -> None:
    model = Flags().eval()
    traced = netopt.trace(model, X)
    with torch.no_grad():
        assert not torch.allclose(traced.materialize().eval()(X), model(X, is_causal=True))


def test_a_constant_made_in_forward_has_a_shape_the_converter_reads() -> None:
    model = ConstantScale().eval()
    try:
        traced = netopt.trace(model, X)
    except UnsupportedOpError as exc:  # refused in one line, naming the node: not a KeyError
        assert "\n" not in str(exc) and "mul" in str(exc)
        return
    with torch.no_grad():
        torch.testing.assert_close(traced.materialize().eval()(X), model(X))


class Grid(nn.Module):
    """XCiT's Fourier position encoding: a conv applied to a grid made from sizes in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(2, 16, 1)

    def grid(self, b: int, h: int, w: int) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        return self.proj(torch.stack([ys, xs])[None].expand(b, -1, -1, -1))


class SizesOnly(Grid):
    def forward(self, b: int, h: int, w: int) -> torch.Tensor:
        return self.grid(b, h, w)


class Added(Grid):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.grid(x.shape[0], x.shape[2], x.shape[3])


class Ramp(nn.Module):
    """A ramp made in forward that is no map (one value a column): no constant the IR holds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.arange(x.shape[3], dtype=torch.float32)


class Positions(Block):
    def __init__(self, pos: nn.Module) -> None:
        super().__init__()
        self.pos = pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = self.pos(y) if isinstance(self.pos, (Added, Ramp)) else y + self.pos(y.shape[0], y.shape[2], y.shape[3])
        return self.out(F.relu(y))


def test_a_map_made_in_forward_from_sizes_is_a_constant_its_conv_shrinks() -> None:
    for pos in (SizesOnly(), Added()):
        model = Positions(pos).eval()
        traced = netopt.trace(model, X)
        assert [n.op for n in traced.network.nodes].count(OpKind.CONSTANT) == 1
        with torch.no_grad():
            torch.testing.assert_close(traced.materialize().eval()(X), model(X))
            assert traced.materialize(traced.network.scaled(0.5)).eval()(X).shape == model(X).shape


def test_another_constant_fed_to_a_layer_is_refused_naming_a_block_that_can_be_kept_whole() -> None:
    model = Positions(Ramp()).eval()
    with pytest.raises(UnsupportedOpError, match=r"opaque=\['pos'\]"):
        netopt.trace(model, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = netopt.trace(model, X, opaque=["pos"])
    with torch.no_grad():
        torch.testing.assert_close(traced.materialize().eval()(X), model(X))


class DataDependent(Block):
    """Control flow on tensor values: it cannot be specialized to one input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if y.max().item() > 0:
            y = F.relu(y)
        return self.out(y)


def test_control_flow_on_tensor_values_is_still_refused_naming_the_rule() -> None:
    with pytest.raises(TraceError, match="Control flow that depends on tensor values"):
        netopt.trace(DataDependent().eval(), X)


class ZeroFirst(nn.Module):
    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = y.clone()
        y[:, :4] = 0.0
        return y


class Assigns(Block):
    """An in-place assignment into a traced tensor: skipping it would change the outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.zero = ZeroFirst()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.zero(self.bn(self.conv(x))))


def test_an_assignment_into_a_traced_tensor_is_refused_naming_the_module_to_keep_whole() -> None:
    model = Assigns().eval()
    with pytest.raises(UnsupportedOpError, match=r"assigns into a tensor in place .*opaque=\['zero'\]"):
        netopt.trace(model, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = netopt.trace(model, X, opaque=["zero"])
    with torch.no_grad():
        torch.testing.assert_close(traced.materialize().eval()(X), model(X))


class Required(Block):
    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.out(self.bn(self.conv(x)) * scale)


def test_a_forward_that_needs_a_second_input_is_refused() -> None:
    with pytest.raises(UnsupportedOpError, match="more than one input"):
        netopt.trace(Required().eval(), X)


@pytest.fixture(scope="module")
def timm() -> Any:
    from netopt.testing.peers import import_timm

    try:
        return import_timm()
    except ImportError as exc:
        pytest.skip(f"timm (a test-only peer) is not importable: {exc}")


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "efficientvit_b0", "edgenext_xx_small",
                                  pytest.param("xcit_nano_12_p16_224", marks=pytest.mark.slow),
                                  pytest.param("csatv2", marks=pytest.mark.slow)])
def test_real_timm_models_that_failed_while_tracing_now_get_past_it(timm: Any, name: str) -> None:
    model = timm.create_model(name, pretrained=False).eval()
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            netopt.trace(model, torch.randn(1, 3, size, size))
        except UnsupportedOpError as exc:  # an op the IR does not model yet: one line, naming the fix
            assert "\n" not in str(exc) and "opaque=[" in str(exc)
