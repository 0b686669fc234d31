"""MobileViT v2: a map unfolded into its patches' pixels by the patches, separable self-attention
on it, folded back (netopt.ir.separable, netopt.bridge.separable).

timm's mobilevitv2_050 (random init) and a hand-written block of the same form trace exactly,
shrink (k and v of each attention together, the one-channel query fixed), materialize, and count
parameters and MACs exactly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from torch import Tensor, nn

import netopt
from netopt.errors import UnsupportedOpError
from netopt.ir import Network, OpKind
from netopt.testing import strategies as nst
from netopt.testing.peers import import_timm
from netopt.testing.torch_checks import max_abs_diff, module_macs, module_params

DIM, PATCH = 24, 2


class SeparableSelfAttention(nn.Module):
    """LinearSelfAttention as MobileViT v2 writes it, on (B, C, P, N)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.qkv_proj = nn.Conv2d(dim, 1 + 2 * dim, 1)
        self.attn_drop = nn.Dropout(0.0)
        self.out_proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        query, key, value = self.qkv_proj(x).split([1, self.dim, self.dim], dim=1)
        scores = self.attn_drop(F.softmax(query, dim=-1))
        context = (key * scores).sum(dim=-1, keepdim=True)
        return self.out_proj(F.relu(value) * context.expand_as(value))  # type: ignore[no-any-return]


class Block(nn.Module):
    """Local conv, unfold, two pre-norm transformer blocks (GroupNorm(1, C)), fold, projection."""

    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self.conv_kxk = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.SiLU())
        self.conv_1x1 = nn.Conv2d(8, dim, 1, bias=False)
        self.norms = nn.ModuleList(nn.GroupNorm(1, dim) for _ in range(5))
        self.attns = nn.ModuleList(SeparableSelfAttention(dim) for _ in range(2))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.SiLU(), nn.Conv2d(2 * dim, dim, 1))
                                  for _ in range(2))
        self.conv_proj = nn.Sequential(nn.Conv2d(dim, 8, 1, bias=False), nn.BatchNorm2d(8))

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        x = self.conv_1x1(self.conv_kxk(x))
        c, nh, nw = x.shape[1], h // PATCH, w // PATCH
        x = x.reshape(b, c, nh, PATCH, nw, PATCH).permute(0, 1, 3, 5, 2, 4).reshape(b, c, -1, nh * nw)
        for i in range(2):
            x = x + self.attns[i](self.norms[2 * i](x))
            x = x + self.mlps[i](self.norms[2 * i + 1](x))
        x = self.norms[4](x)
        x = x.reshape(b, c, PATCH, PATCH, nh, nw).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h, w)
        return self.conv_proj(x)  # type: ignore[no-any-return]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU())
        self.block = Block()
        self.head = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))  # type: ignore[no-any-return]


def _check_exact(model: nn.Module, x: Tensor) -> netopt.Traced:
    """Full width equals the original; every group halves; sizes are exact at both widths."""
    traced = netopt.trace(model, x)
    net = traced.network
    small = net.scaled(0.5)
    small.lint()
    assert all(g.width < g.full_width for g in small.groups)
    assert max_abs_diff(traced.materialize(), model, x) <= 1e-5
    module = traced.materialize(small)
    assert module_params(model) == netopt.ir.params(net) and module_macs(model, x) == netopt.ir.macs(net)
    assert module_params(module) == netopt.ir.params(small) and module_macs(module, x) == netopt.ir.macs(small)
    assert Network.from_json(small.to_json()) == small
    with torch.no_grad():
        assert module(x).shape == model(x).shape
    return traced


def _ops(net: Network, kind: OpKind) -> int:
    return sum(n.op is kind for n in net.nodes)


def test_a_separable_attention_block_is_exact_and_shrinks_k_and_v_with_the_query_fixed() -> None:
    torch.manual_seed(0)
    traced = _check_exact(Net().eval(), torch.randn(2, 3, 8, 12))
    net = traced.network
    assert (_ops(net, OpKind.UNFOLD_PATCHES), _ops(net, OpKind.FOLD_PATCHES), _ops(net, OpKind.SEPARABLE_ATTENTION)) \
        == (1, 1, 2)
    qkv = "block.attns.0.qkv_proj"
    assert net.layout(qkv)[0].group == f"{qkv}@0" and net.analysis.info[f"{qkv}@0"].fixed  # the query's channel
    assert net.group(qkv).full_width == DIM and net.group(qkv).producers == (qkv,)
    assert net.group(qkv).consumers == ("block.attns.0.out_proj",)


def test_a_key_and_value_channel_that_contributes_nothing_is_the_one_removed() -> None:
    """Channel c of separable attention's output reads channel c of k and v alone: with its k and v
    filters zero, the L2 selector drops it and the outputs do not change."""
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 3, 8, 8)
    attn = model.block.attns[1]
    assert isinstance(attn, SeparableSelfAttention)
    qkv = attn.qkv_proj
    with torch.no_grad():
        for row in (1 + 5, 1 + DIM + 5):  # k and v of channel 5
            qkv.weight[row].zero_()
            qkv.get_parameter("bias")[row] = 0.0
    traced = netopt.trace(model, x, step=1)
    small = traced.network.with_widths({"block.attns.1.qkv_proj": DIM - 1})
    assert 5 not in netopt.bridge.kept_channels(traced, small)["block.attns.1.qkv_proj"].tolist()
    assert max_abs_diff(traced.materialize(small), model, x) <= 1e-5


def test_timm_mobilevitv2_unfolds_attends_separably_and_shrinks() -> None:
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model("mobilevitv2_050", pretrained=False).eval()
    traced = _check_exact(model, torch.randn(1, 3, 128, 128))
    net = traced.network
    assert _ops(net, OpKind.SEPARABLE_ATTENTION) == 9 and _ops(net, OpKind.UNFOLD_PATCHES) == 3
    assert {n.attrs.patch for n in net.nodes if n.op is OpKind.FOLD_PATCHES} == {(2, 2)}
    assert net.group("stages.3.1.transformer.0.attn.qkv_proj").full_width == 96


def test_a_softmax_over_another_axis_is_refused_in_one_line() -> None:
    class Other(SeparableSelfAttention):
        def forward(self, x: Tensor) -> Tensor:
            query, key, value = self.qkv_proj(x).split([1, self.dim, self.dim], dim=1)
            context = (key * F.softmax(query, dim=-1)).sum(dim=-1)  # no keepdim
            return value * context.unsqueeze(-1)

    with pytest.raises(UnsupportedOpError, match=r"^node '\w+': .*separable attention.*opaque=\['attn'\]") as info:
        netopt.trace(_Wrap(Other(8)), torch.randn(1, 8, 4, 6))
    assert "\n" not in str(info.value)


class _Wrap(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x)  # type: ignore[no-any-return]


@settings(max_examples=8, deadline=None, database=None)
@given(nst.networks(max_blocks=2, blocks=("separable", "residual", "conv")))
def test_random_separable_networks_round_trip_and_materialize_at_the_ir_sizes(net: Network) -> None:
    torch.manual_seed(0)
    model, x = netopt.bridge.build(net).eval(), torch.randn(1, *net.input_shape)
    traced = netopt.trace(model, x)
    assert traced.network == net
    small = net.scaled(0.5)
    module = traced.materialize(small)
    assert module_params(module) == netopt.ir.params(small) and module_macs(module, x) == netopt.ir.macs(small)
