"""The small ops that stopped today's edge models, each in a hand-written module that does what
the real one does: traced into IR ops (not opaque), equal at full width, halved, materialized,
with exact parameters and MACs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import netopt
from netopt.bridge import build
from netopt.bridge.traced import Traced
from netopt.errors import UnsupportedOpError, WidthError
from netopt.ir import ChannelGroup, Network, OpKind, macs, params
from netopt.testing import strategies as nst
from netopt.testing.peers import import_timm
from netopt.testing.torch_checks import max_abs_diff, module_macs, module_params

ATOL = 1e-5


def checked(model: nn.Module, x: Tensor, *kinds: OpKind) -> Traced:
    """Trace `model`; its ops are `kinds` (no opaque block), it is equal at full width, and every
    group halved lints, round-trips and materializes with the IR's parameters and MACs."""
    model.eval()
    traced = netopt.trace(model, x)
    assert params(traced.network) == module_params(model)
    ops = {n.op for n in traced.network.nodes}
    assert set(kinds) <= ops and OpKind.OPAQUE not in ops
    assert max_abs_diff(traced.materialize(), model, x) <= ATOL
    small = traced.network.scaled(0.5)
    small.lint()
    assert Network.from_json(small.to_json()) == small
    assert macs(small) < macs(traced.network)
    module = traced.materialize(small)
    assert module_params(module) == params(small)
    assert module_macs(module, x) == macs(small)
    with torch.no_grad():
        assert module(x).shape == model(x).shape
    return traced


def image(channels: int = 3, size: int = 12) -> Tensor:
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))


class GroupNorm1(nn.GroupNorm):
    """timm's GroupNorm1: an nn.GroupNorm subclass whose forward calls F.group_norm."""

    def __init__(self, channels: int, bias: bool = True) -> None:
        super().__init__(1, channels)
        if not bias:  # timm's GroupNorm1NoBias
            self.bias = None  # type: ignore[assignment]

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class PoolFormerBlock(nn.Module):
    """PoolFormer's token mixer `pool(y) - y` on a GroupNorm, in a residual block."""

    def __init__(self, norm: nn.Module, channels: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.norm = norm
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.head = nn.Conv2d(channels, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = self.norm(x)
        return self.head(x + (self.pool(y) - y))


def _affine(norm: nn.GroupNorm) -> nn.GroupNorm:
    with torch.no_grad():
        norm.weight.normal_()
        if norm.bias is not None:
            norm.bias.normal_()
    return norm


@pytest.mark.parametrize("norm", [GroupNorm1(16), GroupNorm1(16, bias=False), nn.GroupNorm(1, 16),
                                  nn.GroupNorm(4, 16), nn.GroupNorm(16, 16)],
                         ids=["timm-GroupNorm1", "no-bias", "1-group", "4-groups", "a-group-a-channel"])
def test_a_poolformer_block_with_group_norm_and_sub_shrinks(norm: nn.GroupNorm) -> None:
    traced = checked(PoolFormerBlock(_affine(norm)), image(), OpKind.GROUP_NORM, OpKind.SUB)
    stem = traced.network.group("stem")
    assert stem.blocks == (norm.num_groups if 1 < norm.num_groups < 16 else 1)
    module = traced.materialize(traced.network.with_widths({"stem": 8}))
    built = next(m for m in module.modules() if isinstance(m, nn.GroupNorm))
    assert built.num_channels == 8 and built.num_groups == {1: 1, 4: 4, 16: 8}[norm.num_groups]


def test_a_group_norm_keeps_its_groups_equal_when_its_channels_shrink() -> None:
    def group(groups: int) -> ChannelGroup:
        return netopt.trace(PoolFormerBlock(nn.GroupNorm(groups, 16)).eval(), image(), step=4).network.group("stem")

    assert group(1).valid_widths() == (4, 8, 12, 16)
    assert group(8).valid_widths() == (8, 16)  # 8 equal blocks: a multiple of 8 channels
    with pytest.raises(WidthError, match="width 12 is invalid for group 'stem'"):
        netopt.trace(PoolFormerBlock(nn.GroupNorm(8, 16)).eval(), image(), step=4).network.with_widths({"stem": 12})


class Silenced(nn.Module):
    """conv -> pool(y) - y -> neg -> / 3 -> conv: with a channel's filter zeroed and its readers'
    weights too, cutting it changes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.b = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.a(x)
        return self.b(-(self.pool(y) - y) / 3)


def test_removing_channels_that_contribute_nothing_through_sub_neg_and_div_changes_nothing() -> None:
    model, x = Silenced().eval(), image()
    checked(model, x, OpKind.SUB, OpKind.NEG, OpKind.DIV)
    dropped = torch.arange(8, 16)
    with torch.no_grad():
        model.a.weight[dropped] = 0
        model.a.bias[dropped] = 0  # type: ignore[index]
        model.b.weight[:, dropped] = 0
    traced = netopt.trace(model, x)
    assert max_abs_diff(traced.materialize(traced.network.with_widths({"a": 8})), model, x) <= ATOL


class RepVitHead(nn.Module):
    """RepViT's distilled head: the mean of two classifiers, `(a + b) / 2`; and `1 - x`, `torch.rsub`."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head, self.head_dist = nn.Linear(16, 5), nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        gate = 1 - torch.sigmoid(x)
        x = x * gate + torch.rsub(x, 0.5) / gate.add(1.0)
        return (self.head(x) + self.head_dist(x)) / 2


def test_division_by_a_constant_or_a_tensor_and_reversed_subtraction_are_ops() -> None:
    traced = checked(RepVitHead(), image(), OpKind.DIV, OpKind.SUB)
    subs = [n.attrs for n in traced.network.nodes if n.op is OpKind.SUB]
    assert [(a.scalar, a.reverse) for a in subs] == [(1.0, True), (0.5, True)]


def test_division_with_a_rounding_mode_is_refused_naming_the_node() -> None:
    class Floor(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.div(x, 2, rounding_mode="floor")

    with pytest.raises(UnsupportedOpError, match=r"node 'div'.*rounding_mode"):
        netopt.trace(Floor(), image())


class ConvNeXtV2Block(nn.Module):
    """ConvNeXt-V2: depthwise conv, channels-last LayerNorm, Linear, GELU, timm's GRN, Linear."""

    def __init__(self, grn: nn.Module, channels: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.dw = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.fc1, self.act, self.grn, self.fc2 = nn.Linear(channels, 32), nn.GELU(), grn, nn.Linear(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(self.grn(self.act(self.fc1(y))))
        return x + y.permute(0, 3, 1, 2)


def _grn() -> nn.Module:
    grn = import_timm().layers.grn.GlobalResponseNorm(32)
    with torch.no_grad():
        grn.weight.normal_()
        grn.bias.normal_()
    return grn


def test_convnextv2s_global_response_norm_is_one_op_that_shrinks() -> None:
    traced = checked(ConvNeXtV2Block(_grn()), image(), OpKind.GRN)
    assert traced.network.group("fc1").width == 32 and "fc1" in traced.network.widths


def test_a_global_response_norm_on_an_nchw_map_is_the_same_op() -> None:
    grn = import_timm().layers.grn.GlobalResponseNorm(16, channels_last=False)
    with torch.no_grad():
        grn.weight.normal_()
    model = nn.Sequential(nn.Conv2d(3, 16, 3), grn, nn.Conv2d(16, 4, 1))
    checked(model, image(), OpKind.GRN)


class HGNetStem(nn.Module):
    """HGNetV2's conv-BN-ReLU followed by timm's LearnableAffineBlock (`scale * x + bias`)."""

    def __init__(self) -> None:
        super().__init__()
        lab = import_timm().models.hgnet.LearnableAffineBlock
        self.conv, self.bn, self.act = nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU()
        self.lab = lab(scale_value=1.5, bias_value=-0.25)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.lab(self.act(self.bn(self.conv(x)))))


def test_hgnetv2s_learnable_scalar_affine_keeps_its_two_parameters() -> None:
    traced = checked(HGNetStem(), image(), OpKind.SCALAR_AFFINE)
    module = traced.materialize(traced.network.scaled(0.5))
    lab: Any = module.get_submodule("lab")
    assert (lab.scale.item(), lab.bias.item()) == (1.5, -0.25)


class GatedConv(nn.Module):
    """MambaOut's gated conv block: channels-last Linear, `torch.split` along the last dim, a
    depthwise conv on one piece in NCHW, `cat` along the last dim, a gated product."""

    def __init__(self, channels: int = 16, hidden: int = 24, conv: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.fc1 = nn.Linear(channels, 2 * hidden)
        self.split_indices = [hidden, hidden - conv, conv]
        self.conv = nn.Conv2d(conv, conv, 3, padding=1, groups=conv)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)
        self.head = nn.Conv2d(channels, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = self.fc1(x.permute(0, 2, 3, 1))
        g, i, c = torch.split(y, self.split_indices, dim=-1)
        c = self.conv(c.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        y = self.fc2(self.act(g) * torch.cat((i, c), dim=-1))
        return self.head(x + y.permute(0, 3, 1, 2))


def test_a_split_along_the_channels_of_a_channels_last_map_is_sliced() -> None:
    traced = checked(GatedConv(), image(), OpKind.SLICE, OpKind.CONCAT)
    assert sum(n.op is OpKind.SLICE for n in traced.network.nodes) == 3
    assert "stem" in traced.network.widths  # the residual's width shrinks; the split's pieces keep theirs


class PaddedWindows(nn.Module):
    """Swin / EfficientViT: an NHWC map padded to whole windows, here by nothing; then a cast to
    the dtype it has and a move to the device it is on."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc, self.head = nn.Conv2d(3, 16, 3), nn.Linear(16, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F.pad(self.conv(x).permute(0, 2, 3, 1), (0, 0, 0, 0, 0, 0))
        y = self.fc(y.to(torch.float32).to(x.device).float()).permute(0, 3, 1, 2)
        return self.head(y)


def test_a_pad_by_nothing_and_casts_to_the_same_dtype_are_identities() -> None:
    traced = checked(PaddedWindows(), image(), OpKind.IDENTITY)
    assert OpKind.PAD not in {n.op for n in traced.network.nodes}


def test_a_cast_to_another_dtype_is_refused_naming_both() -> None:
    class Double(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.to(torch.float64)

    with pytest.raises(UnsupportedOpError, match=r"node 'to'.*float32 to torch\.float64"):
        netopt.trace(Double(), image())


class MetaFormerMlp(nn.Module):
    """PoolFormerV2's MLP: 1x1 convs around timm's StarReLU (`scale * relu(x) ** 2 + bias`)."""

    def __init__(self) -> None:
        super().__init__()
        star = import_timm().models.metaformer.StarReLU
        self.fc1, self.act, self.fc2 = nn.Conv2d(3, 16, 3), star(scale_value=0.8, bias_value=-0.1), nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def test_metaformers_star_relu_keeps_its_two_parameters() -> None:
    traced = checked(MetaFormerMlp(), image(), OpKind.STAR_RELU)
    act: Any = traced.materialize(traced.network.scaled(0.5)).get_submodule("act")
    assert torch.allclose(act.scale, torch.tensor([0.8])) and torch.allclose(act.bias, torch.tensor([-0.1]))


class ChannelsLastHead(nn.Module):
    """MambaOut's head: the spatial mean of a channels-last map, a LayerNorm, a Linear."""

    def __init__(self, keepdim: bool) -> None:
        super().__init__()
        self.keepdim = keepdim
        self.stem, self.norm, self.fc = nn.Conv2d(3, 16, 3), nn.LayerNorm(16), nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor:
        y = self.stem(x).permute(0, 2, 3, 1).mean((1, 2), keepdim=self.keepdim)
        y = self.fc(self.norm(y))
        return y.permute(0, 3, 1, 2).flatten(1) if self.keepdim else y


@pytest.mark.parametrize("keepdim", [False, True])
def test_the_spatial_mean_of_a_channels_last_map_is_a_mean(keepdim: bool) -> None:
    checked(ChannelsLastHead(keepdim), image(), OpKind.MEAN)


SMALL_OPS = ("poolformer", "convnextv2", "arith")


@settings(max_examples=30, deadline=None)
@given(nst.networks(max_blocks=3, blocks=SMALL_OPS), st.data())
def test_random_networks_of_the_small_ops_round_trip_and_materialize_at_the_ir_sizes(
        net: Network, data: st.DataObject) -> None:
    smaller = net.with_widths(data.draw(nst.widths(net)))
    smaller.lint()
    assert Network.from_json(smaller.to_json()) == smaller
    torch.manual_seed(0)
    model, x = build(net).eval(), torch.randn(2, *net.input_shape)
    traced = netopt.trace(model, x)
    assert traced.network == net
    assert max_abs_diff(traced.materialize(), model, x) <= ATOL
    module = traced.materialize(smaller)
    assert module_params(module) == params(smaller) and module_macs(module, x) == macs(smaller)

