"""Fixes found while landing the edge-model work (issue 31): each test fails without its fix."""

from __future__ import annotations

import json
import math
from importlib import import_module
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_netadaptv2 import _first_k_property
from test_transformers import TinyViT
from torch import nn

import netopt
from netopt.bridge import trace
from netopt.bridge.modules import ChannelNorm
from netopt.constraints import MACsConstraint, ReductionSchedule
from netopt.data import mnist
from netopt.errors import LintError
from netopt.ir import Network, Node, OpKind
from netopt.ir.ops import Conv2dAttrs, LayerNormAttrs, attrs_from_dict, attrs_to_dict
from netopt.lut.units import units
from netopt.objectives import Accuracy, Trainer
from netopt.strategies import NetAdaptV2, Problem
from netopt.strategies.supernet import OrderedDropout, ordered, sub_network
from netopt.testing import strategies as nst
from netopt.testing.peers import import_timm
from netopt.testing.torch_checks import max_abs_diff, module_macs, module_params


def _layer_norm_groups(net: netopt.ir.Network) -> set[str]:
    """Groups whose channels a LayerNorm mixes: first-k is only approximate there (see supernet)."""
    return {s.group for n in net.nodes if n.op is OpKind.LAYERNORM for s in net.layout(n.name)}


def test_ordered_dropout_masks_the_channels_of_token_tensors() -> None:
    """A ViT's masked super-network is its first-k sub-network: heads and MLP widths masked over C."""
    torch.manual_seed(0)
    model, x = TinyViT().eval(), torch.randn(3, 3, 32, 32)
    reordered = ordered(trace(model, x[:1]))
    net = reordered.network
    mixed = _layer_norm_groups(net)
    widths = {g.id: g.full_width if g.id in mixed else max(g.min_width, g.full_width // 2) for g in net.groups}
    assert any(widths[g.id] < g.full_width for g in net.groups)
    supernet = reordered.materialize()
    dropout = OrderedDropout(supernet, net, seed=0, sandwich=False)
    dropout.grids = {g: torch.tensor([w]) for g, w in widths.items()}
    supernet.train()
    masked = supernet(x)
    dropout.remove()
    sub = sub_network(trace(supernet.eval(), x[:1], step=net.step), widths).eval()
    torch.testing.assert_close(sub(x), masked, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(supernet(x), masked, atol=1e-3)  # the masks did something


class _Quotients(nn.Module):
    """`x / (sigmoid(x) + 1)` and `1 / (relu(x) + 1)`: divisors in the group being masked."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = x / (torch.sigmoid(x) + 1) + 1 / (torch.relu(x) + 1)
        return self.head(self.conv2(x).mean((2, 3)))


def test_ordered_dropout_never_divides_by_a_masked_channel() -> None:
    """A masked divisor would make 0 / 0 = NaN (in the output and the gradients), not the sub-network."""
    torch.manual_seed(0)
    model, x = _Quotients().eval(), torch.randn(3, 3, 8, 8)
    reordered = ordered(trace(model, x[:1], step=8))
    net = reordered.network
    widths = {g.id: g.min_width for g in net.groups}
    supernet = reordered.materialize()
    dropout = OrderedDropout(supernet, net, seed=0, sandwich=False)
    dropout.grids = {g: torch.tensor([w]) for g, w in widths.items()}
    supernet.train()
    masked = supernet(x)
    masked.sum().backward()
    dropout.remove()
    assert all(torch.isfinite(p.grad).all() for p in supernet.parameters() if p.grad is not None)
    sub = sub_network(trace(supernet.eval(), x[:1], step=net.step), widths).eval()
    torch.testing.assert_close(sub(x), masked, atol=1e-4, rtol=1e-4)


class _NoBiasNorms(nn.Module):
    """timm's LayerNorm2dNoBias (PoolFormerV2) on a map and nn.LayerNorm(bias=False) on a vector."""

    def __init__(self) -> None:
        super().__init__()
        import_timm()
        no_bias = import_module("timm.models.metaformer").LayerNorm2dNoBias
        self.conv, self.norm = nn.Conv2d(3, 16, 3, padding=1), no_bias(16)
        self.fc, self.norm2, self.head = nn.Linear(16, 24), nn.LayerNorm(24, bias=False), nn.Linear(24, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x)).mean((2, 3))
        return self.head(self.norm2(self.fc(x)))


def test_a_layer_norm_without_a_bias_counts_and_materializes_none() -> None:
    torch.manual_seed(0)
    model, x = _NoBiasNorms().eval(), torch.randn(2, 3, 8, 8)
    traced = netopt.trace(model, x)
    norms = [n for n in traced.network.nodes if n.op is OpKind.LAYERNORM]
    assert len(norms) == 2 and all(not n.attrs.bias for n in norms)
    small = traced.network.scaled(0.5)
    assert module_params(model) == netopt.ir.params(traced.network)
    module = traced.materialize(small)
    assert module_params(module) == netopt.ir.params(small)
    assert all(m.bias is None for m in module.modules() if isinstance(m, ChannelNorm))
    assert max_abs_diff(traced.materialize(), model, x) <= 1e-5
    assert Network.from_json(small.to_json()) == small


def test_a_layer_norm_with_a_bias_writes_the_json_it_always_wrote() -> None:
    """The new `bias` is left out at its default: documents and identity hashes stay as they were."""
    net = trace(TinyViT().eval(), torch.randn(1, 3, 32, 32)).network
    written = json.loads(net.to_json())
    norms = [n["attrs"] for n in written["nodes"] if n["op"] == OpKind.LAYERNORM.value]
    assert norms and all(set(attrs) == {"eps", "affine"} for attrs in norms)
    assert Network.from_json(net.to_json()) == net
    described = [attrs for u in units(net) for op, attrs in u.describe()["ops"]  # type: ignore[attr-defined]
                 if op == OpKind.LAYERNORM.value]
    assert described and all("bias" not in attrs for attrs in described)  # lookup-table unit keys stay too
    no_bias = LayerNormAttrs(affine=True, bias=False)
    assert attrs_from_dict(LayerNormAttrs, attrs_to_dict(no_bias)) == no_bias


class _Merge(nn.Module):
    """Three branches summed as smp FPN merges them (`torch.stack(xs).sum(0)`) or by Python's `sum`."""

    def __init__(self, stacked: bool) -> None:
        super().__init__()
        self.stacked = stacked
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.branches = nn.ModuleList(nn.Conv2d(16, 8, 3, padding=1) for _ in range(3))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        xs = [b(x) for b in self.branches]
        return self.head(torch.stack(xs).sum(dim=0) if self.stacked else sum(xs))


@pytest.mark.parametrize("stacked", [True, False], ids=["stack_sum", "python_sum"])
def test_a_sum_of_several_tensors_is_one_n_ary_add(stacked: bool) -> None:
    torch.manual_seed(0)
    model, x = _Merge(stacked).eval(), torch.randn(2, 3, 8, 8)
    traced = netopt.trace(model, x)
    adds = [n for n in traced.network.nodes if n.op is OpKind.ADD]
    assert len(adds) == 1 and len(adds[0].inputs) == 3
    small = traced.network.scaled(0.5)
    small.lint()
    assert max_abs_diff(traced.materialize(), model, x) <= 1e-5
    module = traced.materialize(small)
    assert module_params(module) == netopt.ir.params(small) and module_macs(module, x) == netopt.ir.macs(small)
    assert Network.from_json(small.to_json()) == small


def test_a_plain_add_or_mul_takes_two_or_more_inputs() -> None:
    conv = Conv2dAttrs(out_channels=8, kernel_size=(1, 1))
    nodes = [Node(n, OpKind.CONV2D, ("input",), conv) for n in "abc"]
    for op in (OpKind.ADD, OpKind.MUL):
        Network((*nodes, Node("s", op, ("a", "b", "c"))), (3, 4, 4), ("s",)).lint()
        with pytest.raises(LintError, match="takes 2 input"):
            Network((*nodes, Node("s", op, ("a",))), (3, 4, 4), ("s",))


def test_netadaptv2_trains_a_vit_super_network_and_shrinks_its_heads(tmp_path: Path) -> None:
    """The tiny ViT on the bundled digits (1x16 px: 16 patches and a class token) under a MACs budget."""
    torch.manual_seed(0)
    model = TinyViT()
    model.patch = nn.Conv2d(1, model.patch.out_channels, 4, stride=4)
    model.pos_embed = nn.Parameter(torch.randn(1, 17, model.patch.out_channels) * 0.02)
    data = mnist(size=16, holdout_per_class=10, test_fraction=0.1)
    traced = netopt.trace(model.eval(), data.train_x[:1])
    problem = Problem(traced, [MACsConstraint("70%", schedule=ReductionSchedule("15%"))],
                      Accuracy(data, Trainer(lr=0.01)))
    result = NetAdaptV2(supernet_steps=10, samples=4, long_term_steps=2, seed=0, progress=False).run(
        problem, run_dir=tmp_path / "run")
    assert all(b.met(result.final.resources[b.resource]) for b in problem.bind())
    final = result.final.network
    assert any(g.width < g.full_width for g in final.groups if final.analysis.info[g.id].unit > 1)  # heads went
    assert math.isfinite(result.final.accuracy)


class _Normalized(nn.Module):
    """F.normalize across the channels of a map (dim 1) and of its tokens (dim -1, SwiftFormer's q)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.q, self.proj = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 24), nn.Linear(24, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(torch.relu(self.conv(x)), dim=1)
        t = x.flatten(2).transpose(1, 2)
        t = t + self.proj(F.normalize(self.q(t), dim=-1))
        return self.head(t.mean(1))


def test_an_l2_normalization_across_the_channels_is_an_op_that_shrinks() -> None:
    torch.manual_seed(0)
    model, x = _Normalized().eval(), torch.randn(2, 3, 8, 8)
    traced = netopt.trace(model, x)
    assert sum(n.op is OpKind.NORMALIZE for n in traced.network.nodes) == 2
    small = traced.network.scaled(0.5)
    small.lint()
    assert all(g.width < g.full_width for g in small.groups)
    assert max_abs_diff(traced.materialize(), model, x) <= 1e-5
    module = traced.materialize(small)
    assert module_params(module) == netopt.ir.params(small) and module_macs(module, x) == netopt.ir.macs(small)
    assert Network.from_json(small.to_json()) == small


@settings(max_examples=15)
@given(nst.networks(blocks=("normalize", "conv")), st.data())
def test_a_normalized_sub_network_is_the_masked_super_network(network: Network, data: st.DataObject) -> None:
    """A masked channel adds nothing to the L2 norm: first-k is exact through F.normalize."""
    _first_k_property(network, network.with_widths(data.draw(nst.widths(network))).widths)
